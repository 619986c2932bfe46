//! Which key each request asks for: the seed's fixed sequence, one key, or a key space sampled
//! with a Zipf or uniform distribution.

use std::fmt::Write as _;

use rand::Rng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Pattern {
    /// The seed's `load_test.py`: the first 70 % of the requests go to `foo`, the rest to
    /// `k{i % 10}`.
    Seed,
    /// Every request asks for the same key (`--key`).
    Single,
    /// Ranks 1..=N drawn from a Zipf distribution (`--zipf-exponent`): a few keys are hot.
    Zipf,
    /// Ranks 1..=N, each as likely as any other.
    Uniform,
    /// Ranks 1..=N in turn (request i asks for rank i mod N + 1): every key once per N
    /// requests, so a `--batch N` asks for N distinct keys.
    Cycle,
}

impl Pattern {
    /// The name on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Seed => "seed",
            Pattern::Single => "single",
            Pattern::Zipf => "zipf",
            Pattern::Uniform => "uniform",
            Pattern::Cycle => "cycle",
        }
    }
}

/// The distribution a worker samples ranks from.
#[derive(Clone, Debug)]
enum Sampler {
    /// The key follows from the request's index.
    Seed,
    Single,
    Zipf(Zipf<f64>),
    Uniform(u64),
    Cycle(u64),
}

/// Builds the request path of each request. One per worker; cheap to clone.
#[derive(Clone, Debug)]
pub struct Workload {
    sampler: Sampler,
    /// `--key` for the single pattern, `--key-prefix` for Zipf, uniform and cycle.
    key: String,
    /// `-<suffix>` appended to every key, or empty.
    suffix: String,
    /// Requests in the seed sequence (the 70 % split depends on it).
    seed_total: u64,
}

impl Workload {
    /// A workload; `key_space` and `exponent` matter for Zipf and uniform only.
    pub fn new(
        pattern: Pattern,
        key: &str,
        key_space: u64,
        exponent: f64,
        suffix: Option<&str>,
        seed_total: u64,
    ) -> Result<Self, String> {
        let sampler = match pattern {
            Pattern::Seed => Sampler::Seed,
            Pattern::Single => Sampler::Single,
            Pattern::Zipf => Sampler::Zipf(
                Zipf::new(key_space as f64, exponent)
                    .map_err(|e| format!("--zipf-exponent {exponent}: {e}"))?,
            ),
            Pattern::Uniform => Sampler::Uniform(key_space),
            Pattern::Cycle => Sampler::Cycle(key_space),
        };
        Ok(Workload {
            sampler,
            key: key.to_owned(),
            suffix: suffix.map(|s| format!("-{s}")).unwrap_or_default(),
            seed_total,
        })
    }

    /// Writes `/items/<key>` for request `index` into `path` (cleared first) and returns a
    /// number identifying the key, for counting distinct keys.
    pub fn path(&self, index: u64, rng: &mut SmallRng, path: &mut String) -> u64 {
        path.clear();
        path.push_str("/items/");
        let id = match &self.sampler {
            Sampler::Seed => {
                if index < self.seed_total * 7 / 10 {
                    path.push_str("foo");
                    0
                } else {
                    let n = index % 10;
                    let _ = write!(path, "k{n}");
                    n + 1
                }
            }
            Sampler::Single => {
                path.push_str(&self.key);
                0
            }
            Sampler::Zipf(zipf) => self.push_rank(zipf.sample(rng) as u64, path),
            Sampler::Uniform(n) => self.push_rank(rng.random_range(1..=*n), path),
            Sampler::Cycle(n) => self.push_rank(index % *n + 1, path),
        };
        path.push_str(&self.suffix);
        id
    }

    fn push_rank(&self, rank: u64, path: &mut String) -> u64 {
        let _ = write!(path, "{}{rank}", self.key);
        rank
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn paths(w: &Workload, n: u64) -> Vec<String> {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut p = String::new();
        (0..n)
            .map(|i| {
                w.path(i, &mut rng, &mut p);
                p.clone()
            })
            .collect()
    }

    #[test]
    fn the_seed_sequence_is_the_seeds() {
        let w = Workload::new(Pattern::Seed, "", 1, 1.0, None, 50).unwrap();
        let p = paths(&w, 50);
        assert!(p[..35].iter().all(|k| k == "/items/foo"));
        assert_eq!(p[35], "/items/k5");
        assert_eq!(p[49], "/items/k9");
        let distinct: std::collections::HashSet<_> = p.iter().collect();
        assert_eq!(distinct.len(), 11);
    }

    #[test]
    fn a_suffix_is_appended_to_every_key() {
        let w = Workload::new(Pattern::Seed, "", 1, 1.0, Some("run7"), 50).unwrap();
        assert_eq!(paths(&w, 1)[0], "/items/foo-run7");
        let w = Workload::new(Pattern::Uniform, "key-", 3, 1.0, Some("x"), 0).unwrap();
        assert!(
            paths(&w, 100)
                .iter()
                .all(|p| p.starts_with("/items/key-") && p.ends_with("-x"))
        );
    }

    #[test]
    fn zipf_ranks_stay_in_the_key_space_and_favour_low_ranks() {
        let w = Workload::new(Pattern::Zipf, "key-", 1000, 1.0, None, 0).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut p = String::new();
        let ids: Vec<u64> = (0..20_000).map(|i| w.path(i, &mut rng, &mut p)).collect();
        assert!(ids.iter().all(|&r| (1..=1000).contains(&r)));
        let top = ids.iter().filter(|&&r| r == 1).count();
        let tail = ids.iter().filter(|&&r| r == 1000).count();
        // P(1) ≈ 1/H(1000) ≈ 13 %; P(1000) ≈ 0.013 %.
        assert!(top > 2000 && tail < 50, "rank 1: {top}, rank 1000: {tail}");
    }

    #[test]
    fn the_cycle_asks_for_every_key_in_turn() {
        let w = Workload::new(Pattern::Cycle, "c", 3, 1.0, None, 0).unwrap();
        assert_eq!(paths(&w, 4), ["/items/c1", "/items/c2", "/items/c3", "/items/c1"]);
    }

    #[test]
    fn a_bad_exponent_is_refused() {
        assert!(Workload::new(Pattern::Zipf, "k", 10, -1.0, None, 0).is_err());
    }
}
