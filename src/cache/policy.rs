//! How long an entry lives, decided once when the origin answers: from the origin's own
//! `Cache-Control` and `Expires` (RFC 9111 §4.2, RFC 5861) when it sends them and
//! `ORIGIN_CACHE_CONTROL=honor`, else from the configured lifetimes (the heuristic), and whether
//! a shared cache may store the answer at all (RFC 9111 §3).
//!
//! The crate `http-cache-semantics` makes the same decisions, but as a policy object that
//! answers "fresh now?" for a stored request/response pair; the cache needs the windows as
//! numbers, stored in the entry and carried through Redis, with the configured clamps and
//! caps applied, so the rules are written out here (about as long as the glue would be).

pub use super::labels::Uncacheable;

use std::time::Duration;

use crate::origin::{CacheHeaders, Stated};

/// How long entries live: the configured lifetimes and what the origin may say about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// `CACHE_TTL_SECS`: freshness of a value whose origin said nothing (the heuristic).
    pub ttl: Duration,
    /// `CACHE_STALE_SECS`: how long after freshness an entry is kept, and at most served stale.
    pub stale: Duration,
    /// `CACHE_NEGATIVE_TTL_SECS`: freshness of a remembered 404 whose origin said nothing; 0 =
    /// 404s are never remembered, whatever the origin says.
    pub negative_ttl: Duration,
    /// `CACHE_TTL_JITTER_PERCENT`: up to this share of the heuristic `ttl` is taken off, at
    /// random, per entry, so keys cached together do not expire together.
    pub jitter_percent: u8,
    /// `ORIGIN_CACHE_CONTROL=honor`: the origin's directives decide (else they are ignored).
    pub honor_origin: bool,
    /// `CACHE_TTL_MIN_SECS`: a positive lifetime the origin states is raised to at least this.
    pub ttl_min: Duration,
    /// `CACHE_TTL_MAX_SECS`: a lifetime the origin states is cut to at most this.
    pub ttl_max: Option<Duration>,
}

impl Lifetimes {
    /// The configured lifetimes alone (no origin policy, no clamps): tests and tools.
    pub fn fixed(ttl: Duration, stale: Duration, negative_ttl: Duration) -> Self {
        Lifetimes {
            ttl,
            stale,
            negative_ttl,
            jitter_percent: 0,
            honor_origin: true,
            ttl_min: Duration::ZERO,
            ttl_max: None,
        }
    }
}

/// The times an entry gets (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    /// When the origin generated the answer: now, less the origin's `Age` (so `Age` stays
    /// truthful: the origin's age plus the time held here).
    pub stored_at_ms: u64,
    /// Served as a hit until then.
    pub fresh_until_ms: u64,
    /// Served stale while one refresh runs until then (`stale-while-revalidate`).
    pub revalidate_until_ms: u64,
    /// Served stale when the origin fails until then (`stale-if-error`).
    pub if_error_until_ms: u64,
    /// Kept until then (for the stale windows, and to revalidate with its validators); the
    /// tiers drop it after.
    pub stale_until_ms: u64,
    /// Never served stale, and revalidated before reuse once not fresh (`must-revalidate`,
    /// `proxy-revalidate`, `s-maxage`, `no-cache`).
    pub must_revalidate: bool,
}

/// Statuses a shared cache may store without explicit freshness (RFC 9110 §15.1, the ones this
/// service keeps: values and 404/410).
fn heuristically_cacheable(status: u16) -> bool {
    matches!(status, 200 | 203 | 204 | 206 | 404 | 410)
}

impl Lifetimes {
    /// The times of an answer the origin gave `now_ms` (`negative`: a 404/410), or why it is
    /// not stored.
    pub fn decide(&self, headers: &CacheHeaders, negative: bool, now_ms: u64) -> Result<Times, Uncacheable> {
        let honor = self.honor_origin && headers.from_http;
        if !honor {
            return Ok(self.heuristic(negative, now_ms));
        }
        let d = &headers.directives;
        // `must-understand`: the statuses stored here (values, 404, 410) are understood, so
        // the `no-store` beside it is for other caches (RFC 9111 §5.2.2.3).
        if d.no_store && !d.must_understand {
            return Err(Uncacheable::NoStore);
        }
        if d.private {
            return Err(Uncacheable::Private);
        }
        if headers.vary_any {
            return Err(Uncacheable::VaryAny);
        }
        let stated = |s: Stated| match s {
            Stated::Secs(n) => n.saturating_mul(1000),
            // Unreadable freshness: stale at once (RFC 9111 §4.2.1).
            Stated::Invalid => 0,
        };
        let explicit = if d.no_cache {
            Some(0)
        } else if let Some(s) = d.s_maxage.or(d.max_age) {
            Some(stated(s))
        } else {
            headers.expires_ms.map(|expires| match expires {
                Ok(at) => at.saturating_sub(headers.date_ms.unwrap_or(now_ms)),
                Err(()) => 0,
            })
        };
        let Some(lifetime) = explicit else {
            if !heuristically_cacheable(headers.status) {
                return Err(Uncacheable::Status);
            }
            return Ok(self.heuristic(negative, now_ms));
        };
        let lifetime = self.clamp(lifetime);
        let stored_at_ms = now_ms.saturating_sub(headers.age_secs.saturating_mul(1000));
        let fresh_until_ms = stored_at_ms.saturating_add(lifetime);
        let must_revalidate = d.must_revalidate || d.proxy_revalidate || d.s_maxage.is_some() || d.no_cache;
        if negative {
            return Ok(never_stale(stored_at_ms, fresh_until_ms));
        }
        let cap = self.stale.as_millis() as u64;
        let window = |w: Option<Stated>| {
            if must_revalidate {
                0
            } else {
                w.map_or(cap, stated).min(cap)
            }
        };
        // Stated as stale at once (`max-age=0`, an `Expires` not after `Date`): revalidated
        // before each reuse, unless the origin itself allows serving it while revalidating.
        let revalidate = if lifetime == 0 && d.stale_while_revalidate.is_none() {
            0
        } else {
            window(d.stale_while_revalidate)
        };
        // Kept past freshness only when it can still be of use: served stale, or revalidated.
        let keep = if must_revalidate && !headers.validators.any() {
            0
        } else {
            cap
        };
        Ok(Times {
            stored_at_ms,
            fresh_until_ms,
            revalidate_until_ms: fresh_until_ms.saturating_add(revalidate),
            if_error_until_ms: fresh_until_ms + window(d.stale_if_error),
            stale_until_ms: fresh_until_ms.saturating_add(keep),
            must_revalidate,
        })
    }

    /// The configured lifetimes: `CACHE_TTL_SECS` less a random jitter (never more), then
    /// `CACHE_STALE_SECS` of both stale windows; a 404 for `CACHE_NEGATIVE_TTL_SECS`, never
    /// stale.
    pub fn heuristic(&self, negative: bool, now_ms: u64) -> Times {
        if negative {
            return never_stale(now_ms, now_ms + self.negative_ttl.as_millis() as u64);
        }
        let ttl = self.ttl.as_millis() as u64;
        let max_jitter = ttl * u64::from(self.jitter_percent) / 100;
        let fresh = if max_jitter == 0 {
            ttl
        } else {
            ttl - rand::random_range(0..=max_jitter)
        };
        let fresh_until_ms = now_ms + fresh;
        // The stale window is exactly CACHE_STALE_SECS, jitter or not.
        let stale_until_ms = fresh_until_ms.saturating_add(self.stale.as_millis() as u64);
        Times {
            stored_at_ms: now_ms,
            fresh_until_ms,
            revalidate_until_ms: stale_until_ms,
            if_error_until_ms: stale_until_ms,
            stale_until_ms,
            must_revalidate: false,
        }
    }

    /// A positive lifetime the origin stated, within `CACHE_TTL_MIN_SECS..=CACHE_TTL_MAX_SECS`.
    fn clamp(&self, lifetime_ms: u64) -> u64 {
        if lifetime_ms == 0 {
            return 0;
        }
        let min = self.ttl_min.as_millis() as u64;
        // Never beyond what the origin may state (RFC 9111 §1.2.2), whatever `Expires` says.
        let max = self
            .ttl_max
            .map_or(MAX_LIFETIME_MS, |m| m.as_millis() as u64)
            .min(MAX_LIFETIME_MS);
        lifetime_ms.max(min).min(max)
    }
}

/// The longest lifetime an entry can have: 2^31 s, the largest delta-seconds (RFC 9111 §1.2.2).
/// Every time computed from it stays far inside `u64` milliseconds and Redis's `PX` range.
pub const MAX_LIFETIME_MS: u64 = crate::origin::MAX_DELTA_SECONDS * 1000;

/// Times of an entry that is never served stale (a remembered 404).
fn never_stale(stored_at_ms: u64, fresh_until_ms: u64) -> Times {
    Times {
        stored_at_ms,
        fresh_until_ms,
        revalidate_until_ms: fresh_until_ms,
        if_error_until_ms: fresh_until_ms,
        stale_until_ms: fresh_until_ms,
        must_revalidate: false,
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue};

    use super::*;

    const NOW: u64 = 1_000_000_000;

    fn life() -> Lifetimes {
        Lifetimes::fixed(
            Duration::from_secs(60),
            Duration::from_secs(300),
            Duration::from_secs(5),
        )
    }

    fn answer(status: u16, pairs: &[(&'static str, &'static str)]) -> CacheHeaders {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        CacheHeaders::read(status, &h)
    }

    fn decide(pairs: &[(&'static str, &'static str)]) -> Result<Times, Uncacheable> {
        life().decide(&answer(200, pairs), false, NOW)
    }

    #[test]
    fn s_maxage_wins_over_max_age_over_expires_and_age_is_subtracted() {
        let t = decide(&[("cache-control", "max-age=100, s-maxage=20"), ("age", "5")]).unwrap();
        assert_eq!(t.stored_at_ms, NOW - 5_000);
        assert_eq!(t.fresh_until_ms, NOW + 15_000);
        // s-maxage carries proxy-revalidate: never served stale by a shared cache.
        assert!(t.must_revalidate);
        assert_eq!(t.revalidate_until_ms, t.fresh_until_ms);
        let t = decide(&[("cache-control", "max-age=100")]).unwrap();
        assert_eq!(t.fresh_until_ms, NOW + 100_000);
        assert!(!t.must_revalidate);
        let t = decide(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:50:07 GMT"),
        ])
        .unwrap();
        assert_eq!(t.fresh_until_ms, NOW + 30_000);
    }

    #[test]
    fn without_freshness_information_the_heuristic_applies() {
        let t = decide(&[]).unwrap();
        assert_eq!(t.fresh_until_ms, NOW + 60_000);
        assert_eq!(t.revalidate_until_ms, NOW + 360_000);
        assert_eq!(life().decide(&CacheHeaders::default(), false, NOW).unwrap(), t);
        // A 201 without explicit freshness is not stored; with it, it is.
        let created = life().decide(&answer(201, &[]), false, NOW);
        assert_eq!(created, Err(Uncacheable::Status));
        assert!(
            life()
                .decide(&answer(201, &[("cache-control", "max-age=9")]), false, NOW)
                .is_ok()
        );
    }

    #[test]
    fn shared_caches_do_not_store_what_rfc_9111_forbids() {
        assert_eq!(
            decide(&[("cache-control", "no-store")]),
            Err(Uncacheable::NoStore)
        );
        // The no-store beside must-understand is for caches that do not know the status.
        assert!(decide(&[("cache-control", "max-age=60, no-store, must-understand")]).is_ok());
        assert_eq!(
            decide(&[("cache-control", "private, max-age=0")]),
            Err(Uncacheable::Private)
        );
        assert_eq!(decide(&[("vary", "*")]), Err(Uncacheable::VaryAny));
        let ignoring = Lifetimes {
            honor_origin: false,
            ..life()
        };
        let t = ignoring
            .decide(&answer(200, &[("cache-control", "no-store")]), false, NOW)
            .unwrap();
        assert_eq!(t.fresh_until_ms, NOW + 60_000);
    }

    #[test]
    fn no_cache_and_max_age_0_are_stored_and_revalidated_before_reuse() {
        let t = decide(&[("cache-control", "no-cache"), ("etag", "\"a\"")]).unwrap();
        assert_eq!(t.fresh_until_ms, NOW);
        assert!(t.must_revalidate);
        assert_eq!(t.stale_until_ms, NOW + 300_000, "kept to be revalidated");
        let t = decide(&[("cache-control", "max-age=0")]).unwrap();
        assert_eq!(t.fresh_until_ms, NOW);
        assert_eq!(t.revalidate_until_ms, NOW, "revalidated in the foreground");
        assert_eq!(
            t.if_error_until_ms,
            NOW + 300_000,
            "but served stale if the origin fails"
        );
        assert!(!t.must_revalidate);
    }

    #[test]
    fn stale_windows_come_from_the_origin_capped_by_cache_stale_secs() {
        let t = decide(&[(
            "cache-control",
            "max-age=10, stale-while-revalidate=30, stale-if-error=9999",
        )])
        .unwrap();
        assert_eq!(t.revalidate_until_ms, NOW + 40_000);
        assert_eq!(t.if_error_until_ms, NOW + 310_000);
        let t = decide(&[("cache-control", "max-age=10, must-revalidate, stale-if-error=60")]).unwrap();
        assert_eq!(t.if_error_until_ms, t.fresh_until_ms);
    }

    #[test]
    fn malformed_headers_mean_stale_never_an_error() {
        assert_eq!(
            decide(&[("cache-control", "max-age=abc")])
                .unwrap()
                .fresh_until_ms,
            NOW
        );
        assert_eq!(decide(&[("expires", "not a date")]).unwrap().fresh_until_ms, NOW);
        let past = decide(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:00:00 GMT"),
        ]);
        assert_eq!(past.unwrap().fresh_until_ms, NOW);
    }

    #[test]
    fn clamps_touch_positive_stated_lifetimes_only() {
        let clamped = Lifetimes {
            ttl_min: Duration::from_secs(30),
            ttl_max: Some(Duration::from_secs(120)),
            ..life()
        };
        let at = |cc: &'static str| {
            clamped
                .decide(&answer(200, &[("cache-control", cc)]), false, NOW)
                .unwrap()
        };
        assert_eq!(at("max-age=5").fresh_until_ms, NOW + 30_000);
        let unclamped = |cc: &'static str| {
            life()
                .decide(&answer(200, &[("cache-control", cc)]), false, NOW)
                .unwrap()
        };
        for cc in [
            "max-age=9999999999999999",
            "max-age=99999999999999999",
            "max-age=999999999999999999999999",
        ] {
            let t = unclamped(cc);
            assert_eq!(t.fresh_until_ms, NOW + MAX_LIFETIME_MS, "{cc}");
            assert!(
                t.stale_until_ms >= t.fresh_until_ms && t.stale_until_ms < u64::MAX / 2,
                "{cc}"
            );
        }
        let t = life()
            .decide(
                &answer(
                    200,
                    &[
                        ("cache-control", "max-age=60"),
                        ("age", "99999999999999999999999"),
                    ],
                ),
                false,
                NOW,
            )
            .unwrap();
        assert!(t.fresh_until_ms < NOW, "an age past 64 bits is old, not 0");
        assert_eq!(at("max-age=5000").fresh_until_ms, NOW + 120_000);
        assert_eq!(at("max-age=0").fresh_until_ms, NOW);
        // The heuristic is not clamped.
        assert_eq!(
            clamped
                .decide(&answer(200, &[]), false, NOW)
                .unwrap()
                .fresh_until_ms,
            NOW + 60_000
        );
    }

    #[test]
    fn a_404_with_freshness_information_uses_it() {
        let t = life()
            .decide(&answer(404, &[("cache-control", "max-age=30")]), true, NOW)
            .unwrap();
        assert_eq!(t.fresh_until_ms, NOW + 30_000);
        assert_eq!(t.stale_until_ms, t.fresh_until_ms);
        let t = life().decide(&answer(404, &[]), true, NOW).unwrap();
        assert_eq!(t.fresh_until_ms, NOW + 5_000);
    }
}
