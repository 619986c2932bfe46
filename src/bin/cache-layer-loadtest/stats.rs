//! What a run measured: per-worker tallies with latency histograms (merged at the end, so
//! workers never share a lock), and the report printed from them.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{Failure, HitKind, Served};

/// Latencies are recorded in microseconds, from 1 µs to an hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// Distinct keys are counted exactly up to this many per tally; past it the count is a lower
/// bound, so a long run over a huge key space does not grow without limit.
const MAX_TRACKED_KEYS: usize = 200_000;

/// One worker's tally (or, merged, the run's).
pub struct Stats {
    /// Every answered request, errors included.
    all: Histogram<u64>,
    hits: Histogram<u64>,
    misses: Histogram<u64>,
    /// Hits by kind, in [`HitKind::ALL`] order.
    hit_kinds: [u64; HitKind::ALL.len()],
    misses_count: u64,
    unlabelled: u64,
    errors: BTreeMap<Failure, u64>,
    /// Ids of the keys asked for (up to [`MAX_TRACKED_KEYS`]).
    keys: HashSet<u64>,
    /// More keys were asked for than `keys` holds.
    keys_capped: bool,
    /// Keys answered (one per request, or each key of a batch).
    answers: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            all: histogram(),
            hits: histogram(),
            misses: histogram(),
            hit_kinds: [0; HitKind::ALL.len()],
            misses_count: 0,
            unlabelled: 0,
            errors: BTreeMap::new(),
            keys: HashSet::new(),
            keys_capped: false,
            answers: 0,
        }
    }
}

impl Stats {
    /// Records one single-key request.
    pub fn record(&mut self, key_id: u64, outcome: &Result<Served, Failure>, latency: Duration) {
        let micros = latency.as_micros().max(1) as u64;
        self.all.saturating_record(micros);
        match outcome {
            Ok(Served::Hit(_)) => self.hits.saturating_record(micros),
            Ok(Served::Miss) => self.misses.saturating_record(micros),
            _ => {}
        }
        self.answer(key_id, outcome);
    }

    /// Records one batch request (`--batch`): its latency once (as a hit's when every key was a
    /// hit, as a miss's when any key was a miss), and each key's answer.
    pub fn record_batch(&mut self, keys: &[(u64, Result<Served, Failure>)], latency: Duration) {
        let micros = latency.as_micros().max(1) as u64;
        self.all.saturating_record(micros);
        if keys.iter().any(|(_, o)| matches!(o, Ok(Served::Miss))) {
            self.misses.saturating_record(micros);
        } else if !keys.is_empty() && keys.iter().all(|(_, o)| matches!(o, Ok(Served::Hit(_)))) {
            self.hits.saturating_record(micros);
        }
        for (key_id, outcome) in keys {
            self.answer(*key_id, outcome);
        }
    }

    /// Counts one key's answer.
    fn answer(&mut self, key_id: u64, outcome: &Result<Served, Failure>) {
        self.answers += 1;
        if self.keys.len() < MAX_TRACKED_KEYS {
            self.keys.insert(key_id);
        } else if !self.keys.contains(&key_id) {
            self.keys_capped = true;
        }
        match outcome {
            Ok(Served::Hit(kind)) => {
                self.hit_kinds[HitKind::ALL
                    .iter()
                    .position(|k| k == kind)
                    .unwrap_or(HitKind::ALL.len() - 1)] += 1;
            }
            Ok(Served::Miss) => self.misses_count += 1,
            Ok(Served::Unlabelled) => self.unlabelled += 1,
            Err(failure) => *self.errors.entry(failure.clone()).or_default() += 1,
        }
    }

    /// Adds another worker's tally to this one.
    pub fn merge(&mut self, other: Stats) {
        let _ = self.all.add(&other.all);
        let _ = self.hits.add(&other.hits);
        let _ = self.misses.add(&other.misses);
        for (mine, theirs) in self.hit_kinds.iter_mut().zip(other.hit_kinds) {
            *mine += theirs;
        }
        self.misses_count += other.misses_count;
        self.answers += other.answers;
        self.unlabelled += other.unlabelled;
        for (failure, n) in other.errors {
            *self.errors.entry(failure).or_default() += n;
        }
        self.keys_capped |= other.keys_capped;
        if self.keys.len() < MAX_TRACKED_KEYS {
            self.keys.extend(other.keys);
        } else {
            self.keys_capped |= other.keys.iter().any(|k| !self.keys.contains(k));
        }
    }

    /// Requests answered, errors included.
    pub fn requests(&self) -> u64 {
        self.all.len()
    }

    /// How the run went, for people and for machines.
    pub fn report(&self, run: RunFacts) -> Report {
        let requests = self.requests();
        let hits: u64 = self.hit_kinds.iter().sum();
        let errors: u64 = self.errors.values().sum();
        let (origin_fetches, origin_fetches_from) = match run.origin_fetches {
            Some(n) => (n, "metrics"),
            None => (self.misses_count, "answers"),
        };
        let secs = run.elapsed.as_secs_f64();
        let answers = self.answers;
        Report {
            url: run.url,
            pattern: run.pattern,
            concurrency: run.concurrency,
            target_rps: run.target_rps,
            warmup_requests: run.warmup_requests,
            requests,
            duration_s: secs,
            throughput_rps: if secs > 0.0 { requests as f64 / secs } else { 0.0 },
            batch: run.batch,
            keys_answered: answers,
            keys_per_s: if secs > 0.0 { answers as f64 / secs } else { 0.0 },
            distinct_keys: self.keys.len() as u64,
            distinct_keys_exact: !self.keys_capped,
            hits,
            misses: self.misses_count,
            unlabelled: self.unlabelled,
            errors,
            hit_rate: ratio(hits, answers),
            hits_by_tier: HitKind::ALL
                .iter()
                .zip(self.hit_kinds)
                .map(|(k, n)| (k.as_str(), n))
                .collect(),
            errors_by_kind: self.errors.iter().map(|(f, n)| (f.to_string(), *n)).collect(),
            latency_ms: Latency::of(&self.all),
            hit_latency_ms: Latency::of(&self.hits),
            miss_latency_ms: Latency::of(&self.misses),
            origin_fetches,
            origin_fetches_from,
            origin_fetches_saved: (answers - errors).saturating_sub(origin_fetches),
            interrupted: run.interrupted,
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Facts about the run that the tallies do not hold.
pub struct RunFacts {
    pub url: String,
    pub pattern: &'static str,
    pub concurrency: u32,
    pub target_rps: Option<f64>,
    pub warmup_requests: u64,
    pub elapsed: Duration,
    /// From the target's `/metrics`, when it has them.
    pub origin_fetches: Option<u64>,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Keys per request with `--batch`.
    pub batch: Option<u32>,
}

/// Latency summary in milliseconds, read from a histogram.
#[derive(Serialize, Debug)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if h.is_empty() {
            return Latency {
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        Latency {
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// The run's summary; `--json` prints it as is.
#[derive(Serialize)]
pub struct Report {
    pub url: String,
    pub pattern: &'static str,
    pub concurrency: u32,
    /// Open-loop target rate, when one was set.
    pub target_rps: Option<f64>,
    pub warmup_requests: u64,
    pub requests: u64,
    pub duration_s: f64,
    pub throughput_rps: f64,
    /// Keys per request (`POST /items:batch`), or `None` for single-key `GET`s.
    pub batch: Option<u32>,
    /// Keys answered: `requests` without `--batch`, each key of each batch with it.
    pub keys_answered: u64,
    pub keys_per_s: f64,
    pub distinct_keys: u64,
    /// False when counting stopped at the cap: then `distinct_keys` is a lower bound.
    pub distinct_keys_exact: bool,
    pub hits: u64,
    pub misses: u64,
    /// Successes the server did not label as hit or miss.
    pub unlabelled: u64,
    pub errors: u64,
    /// Hits per key answered.
    pub hit_rate: f64,
    pub hits_by_tier: BTreeMap<&'static str, u64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    pub latency_ms: Latency,
    pub hit_latency_ms: Latency,
    pub miss_latency_ms: Latency,
    /// Origin fetches during the measured run.
    pub origin_fetches: u64,
    /// `metrics` (the target's `origin_requests_total`) or `answers` (its misses).
    pub origin_fetches_from: &'static str,
    /// Answered keys (errors excluded) that did not cost an origin fetch.
    pub origin_fetches_saved: u64,
    /// Ctrl-C ended the run early; the figures cover what ran.
    pub interrupted: bool,
}

impl Report {
    /// The seed's summary lines first, so a seed user recognises them, then the rest.
    pub fn print_text(&self) {
        println!();
        println!("=== Summary ===");
        println!("Total requests:   {}", self.requests);
        let at_least = if self.distinct_keys_exact { "" } else { "at least " };
        println!("Distinct keys:    {at_least}{}", self.distinct_keys);
        println!("Cache hits:       {}", self.hits);
        println!("Cache misses:     {}", self.misses);
        println!("Errors:           {}", self.errors);
        println!("Cache-hit rate:   {:.2}%", 100.0 * self.hit_rate);
        println!("Avg latency:      {:.2} ms", self.latency_ms.mean);
        println!("Median latency:   {:.2} ms", self.latency_ms.p50);
        println!("Avg hit latency:  {:.2} ms", self.hit_latency_ms.mean);
        println!("Avg miss latency: {:.2} ms", self.miss_latency_ms.mean);
        println!();
        let rate = match self.target_rps {
            Some(r) => format!(" (target {r:.0} req/s, open loop)"),
            None => String::new(),
        };
        println!(
            "Throughput:       {:.1} req/s over {:.2} s, {} connection(s){rate}",
            self.throughput_rps, self.duration_s, self.concurrency
        );
        if let Some(n) = self.batch {
            println!(
                "Batches:          {n} keys per POST /items:batch; {} keys answered, {:.1} keys/s",
                self.keys_answered, self.keys_per_s
            );
        }
        if self.interrupted {
            println!("Interrupted:      by Ctrl-C; the figures cover the requests that ran");
        }
        if self.warmup_requests > 0 {
            println!("Warm-up:          {} requests, not counted", self.warmup_requests);
        }
        let l = &self.latency_ms;
        println!(
            "Latency (ms):     p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let tiers: Vec<String> = self
            .hits_by_tier
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(tier, n)| format!("{tier} {n} ({:.2}%)", 100.0 * ratio(*n, self.keys_answered)))
            .collect();
        println!("Hits by tier:     {}", list_or_none(&tiers));
        if self.unlabelled > 0 {
            println!(
                "Unlabelled:       {} (no cache header or `source`)",
                self.unlabelled
            );
        }
        let errors: Vec<String> = self
            .errors_by_kind
            .iter()
            .map(|(kind, n)| format!("{kind} × {n}"))
            .collect();
        println!("Errors by kind:   {}", list_or_none(&errors));
        println!(
            "Origin fetches:   {} (from {}); saved {} of {} answers ({:.2}%)",
            self.origin_fetches,
            if self.origin_fetches_from == "metrics" {
                "the target's /metrics"
            } else {
                "its misses"
            },
            self.origin_fetches_saved,
            self.keys_answered - self.errors,
            100.0 * ratio(self.origin_fetches_saved, self.keys_answered - self.errors)
        );
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_keys_stop_being_counted_at_the_cap() {
        let mut a = Stats::default();
        let hit = Ok(Served::Hit(HitKind::Memory));
        for k in 0..MAX_TRACKED_KEYS as u64 + 10 {
            a.record(k, &hit, Duration::from_micros(5));
        }
        let mut b = Stats::default();
        b.record(0, &hit, Duration::from_micros(5));
        a.merge(b);
        assert_eq!(a.keys.len(), MAX_TRACKED_KEYS);
        assert!(a.keys_capped);
    }

    #[test]
    fn merged_tallies_report_rates_percentiles_and_savings() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for i in 0..90 {
            a.record(
                i % 3,
                &Ok(Served::Hit(HitKind::Memory)),
                Duration::from_micros(100),
            );
        }
        for i in 0..9 {
            b.record(10 + i, &Ok(Served::Miss), Duration::from_millis(200));
        }
        b.record(
            99,
            &Err(Failure::Status(503, Some("origin_unavailable".into()))),
            Duration::from_millis(1),
        );
        a.merge(b);
        let r = a.report(RunFacts {
            url: "http://x".into(),
            pattern: "zipf",
            concurrency: 2,
            target_rps: None,
            warmup_requests: 0,
            elapsed: Duration::from_secs(2),
            origin_fetches: None,
            interrupted: false,
            batch: None,
        });
        assert_eq!((r.requests, r.hits, r.misses, r.errors), (100, 90, 9, 1));
        assert_eq!((r.distinct_keys, r.distinct_keys_exact), (13, true));
        assert_eq!(r.hits_by_tier["memory"], 90);
        assert_eq!(r.errors_by_kind["503 origin_unavailable"], 1);
        assert!((r.hit_rate - 0.9).abs() < 1e-9);
        assert!((r.throughput_rps - 50.0).abs() < 1e-9);
        assert!((r.latency_ms.p50 - 0.1).abs() < 0.001, "{}", r.latency_ms.p50);
        assert!((r.latency_ms.max - 200.0).abs() < 0.2, "{}", r.latency_ms.max);
        assert_eq!(
            (r.origin_fetches, r.origin_fetches_from, r.origin_fetches_saved),
            (9, "answers", 90)
        );
    }

    /// A one-second run of batches of 4 keys that made one origin fetch.
    fn batch_facts() -> RunFacts {
        RunFacts {
            url: "http://x".into(),
            pattern: "uniform",
            concurrency: 1,
            target_rps: None,
            warmup_requests: 0,
            elapsed: Duration::from_secs(1),
            origin_fetches: Some(1),
            interrupted: false,
            batch: Some(4),
        }
    }

    #[test]
    fn a_batch_counts_its_latency_once_and_each_key() {
        let mut s = Stats::default();
        let keys = [
            (1, Ok(Served::Hit(HitKind::Redis))),
            (2, Ok(Served::Miss)),
            (3, Err(Failure::Status(502, Some("origin_error".into())))),
            (1, Ok(Served::Hit(HitKind::Redis))),
        ];
        s.record_batch(&keys, Duration::from_millis(2));
        let r = s.report(batch_facts());
        assert_eq!(
            (r.requests, r.keys_answered, r.hits, r.misses, r.errors),
            (1, 4, 2, 1, 1)
        );
        assert!((r.hit_rate - 0.5).abs() < 1e-9);
        assert!((r.keys_per_s - 4.0).abs() < 1e-9);
        assert_eq!(r.origin_fetches_saved, 2);
        // A batch with a miss is a miss's latency; an all-hit batch a hit's.
        assert!(
            r.miss_latency_ms.p50 > 1.9 && r.hit_latency_ms.p50 == 0.0,
            "{:?}",
            r.miss_latency_ms
        );
        s.record_batch(&[(1, Ok(Served::Hit(HitKind::Memory)))], Duration::from_millis(1));
        let r = s.report(batch_facts());
        assert!(r.hit_latency_ms.p50 > 0.9, "{:?}", r.hit_latency_ms);
    }
}
