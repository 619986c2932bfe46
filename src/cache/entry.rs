//! A cached answer and the times that govern it: fresh until, servable stale until.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Heap bytes a memory-tier entry costs beyond its key and body: the `Entry` and its `Arc`, the
/// key's `Arc<str>` header, and the tier's own per-entry structures (the policy's arena node,
/// 56 B, and its table slot, the expiry heap's 24 B item, frequency-sketch counters), with the C
/// allocator's per-chunk header and rounding, and room for those vectors' growth by doubling.
/// Measured, not guessed: `tests/memory_weight.rs` counts the heap bytes that inserted entries
/// really take (about 290 B each beyond key and body on average, up to about 380 B just after
/// the vectors double) and fails if this weight under-counts them.
pub const ENTRY_OVERHEAD_BYTES: usize = 384;

const CACHE_SUFFIX: &[u8] = br#","source":"cache"}"#;
const ORIGIN_SUFFIX: &[u8] = br#","source":"origin"}"#;

/// Milliseconds since the Unix epoch: entries are shared across processes through Redis, so their
/// times are wall-clock times, not `Instant`s.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One cached answer for one key: a value, or the origin's "not found".
///
/// The answer's JSON body is rendered once, when the entry is made, so a hit only clones `Bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `{"key":…,"value":…,"source":"cache"}`; empty for a negative entry.
    body: Bytes,
    /// Where the value's JSON sits inside `body`.
    value_start: usize,
    value_end: usize,
    /// When the origin answered (ms since the epoch); `Age` counts from here.
    pub stored_at_ms: u64,
    /// Until when the entry is served as a plain hit.
    pub fresh_until_ms: u64,
    /// Until when the entry may still be served stale; after that it is gone.
    pub stale_until_ms: u64,
    /// The origin said 404/410: remembered so the origin is not asked again at once.
    pub negative: bool,
}

/// Where an entry stands at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Served as a hit; `ttl_secs` of freshness left.
    Fresh {
        /// Whole seconds of freshness left.
        ttl_secs: u64,
    },
    /// Past freshness but servable; `over_secs` past it.
    Stale {
        /// Whole seconds since it stopped being fresh.
        over_secs: u64,
    },
    /// Not servable at all.
    Expired,
}

/// How long entries live: the cache policy, applied when an entry is made.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// Freshness of a value.
    pub ttl: Duration,
    /// Stale window after freshness.
    pub stale: Duration,
    /// Freshness of a remembered 404.
    pub negative_ttl: Duration,
    /// Up to this percentage of `ttl` is taken off, at random, per entry.
    pub jitter_percent: u8,
}

impl Lifetimes {
    /// Freshness for a new value: `ttl` shortened by a random jitter, never lengthened.
    fn fresh_ms(&self) -> u64 {
        let ttl = self.ttl.as_millis() as u64;
        let max_jitter = ttl * u64::from(self.jitter_percent) / 100;
        if max_jitter == 0 {
            ttl
        } else {
            ttl - rand::random_range(0..=max_jitter)
        }
    }
}

impl Entry {
    /// An entry for a value fetched now. `value` must be valid JSON.
    pub fn value(key: &str, value: &[u8], now_ms: u64, life: &Lifetimes) -> Self {
        let fresh_until_ms = now_ms + life.fresh_ms();
        // The stale window is exactly CACHE_STALE_SECS, jitter or not.
        let stale_until_ms = fresh_until_ms + life.stale.as_millis() as u64;
        Self::with_times(key, value, now_ms, fresh_until_ms, stale_until_ms)
    }

    /// An entry remembering the origin's 404 for `negative_ttl`.
    pub fn not_found(now_ms: u64, life: &Lifetimes) -> Self {
        let until = now_ms + life.negative_ttl.as_millis() as u64;
        Entry {
            body: Bytes::new(),
            value_start: 0,
            value_end: 0,
            stored_at_ms: now_ms,
            fresh_until_ms: until,
            stale_until_ms: until,
            negative: true,
        }
    }

    fn with_times(key: &str, value: &[u8], stored: u64, fresh: u64, stale: u64) -> Self {
        let key_json = serde_json::to_string(key).expect("a str always serialises");
        let mut body = BytesMut::with_capacity(key_json.len() + value.len() + 40);
        body.put_slice(b"{\"key\":");
        body.put_slice(key_json.as_bytes());
        body.put_slice(b",\"value\":");
        let value_start = body.len();
        body.put_slice(value);
        let value_end = body.len();
        body.put_slice(CACHE_SUFFIX);
        Entry {
            body: body.freeze(),
            value_start,
            value_end,
            stored_at_ms: stored,
            fresh_until_ms: fresh,
            stale_until_ms: stale.max(fresh),
            negative: false,
        }
    }

    /// The answer body of a hit (`"source":"cache"`), shared, not copied.
    pub fn cache_body(&self) -> Bytes {
        self.body.clone()
    }

    /// The answer body for the request that fetched it (`"source":"origin"`).
    pub fn origin_body(&self) -> Bytes {
        let head = &self.body[..self.body.len() - CACHE_SUFFIX.len()];
        let mut out = BytesMut::with_capacity(head.len() + ORIGIN_SUFFIX.len());
        out.put_slice(head);
        out.put_slice(ORIGIN_SUFFIX);
        out.freeze()
    }

    /// The value's JSON.
    pub fn value_json(&self) -> &[u8] {
        &self.body[self.value_start..self.value_end]
    }

    /// Where the entry stands at `now_ms`.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        if now_ms < self.fresh_until_ms {
            Freshness::Fresh {
                ttl_secs: (self.fresh_until_ms - now_ms) / 1000,
            }
        } else if now_ms < self.stale_until_ms {
            Freshness::Stale {
                over_secs: (now_ms - self.fresh_until_ms) / 1000,
            }
        } else {
            Freshness::Expired
        }
    }

    /// Whole seconds since the origin answered (the `Age` header).
    pub fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// The same entry, no longer fresh from `now_ms` on (a soft purge).
    pub fn marked_stale(&self, now_ms: u64) -> Self {
        let mut e = self.clone();
        e.fresh_until_ms = e.fresh_until_ms.min(now_ms);
        e
    }

    /// Heap bytes this entry costs in the memory tier, with `key`: the key's own copy, the
    /// rendered body (which holds the key again, JSON-escaped) and the per-entry overhead.
    pub fn weight(&self, key: &str) -> u32 {
        (key.len() + self.body.len() + ENTRY_OVERHEAD_BYTES).min(u32::MAX as usize) as u32
    }

    /// The entry as stored in Redis (format version 1; the version is also in the key).
    pub fn encode(&self) -> Vec<u8> {
        let stored = Stored {
            t: self.stored_at_ms,
            f: self.fresh_until_ms,
            s: self.stale_until_ms,
            n: self.negative,
            v: (!self.negative).then(|| {
                // The value is JSON by construction, so this cannot fail.
                RawValue::from_string(String::from_utf8_lossy(self.value_json()).into_owned())
                    .expect("entry values are valid JSON")
            }),
        };
        serde_json::to_vec(&stored).expect("an entry always serialises")
    }

    /// The largest encoding of an entry whose origin body was at most `max_body` bytes: a text
    /// body becomes a JSON string, where one byte can take up to six (`\u0000`); the times and
    /// flags add less than 128 bytes. Anything larger in Redis was not written by this service.
    pub fn max_encoded_len(max_body: usize) -> usize {
        max_body.saturating_mul(6).saturating_add(2 + 128)
    }

    /// Reads an entry stored by [`Entry::encode`]; `None` when the bytes are not one.
    pub fn decode(key: &str, bytes: &[u8]) -> Option<Self> {
        let s: Stored = serde_json::from_slice(bytes).ok()?;
        if s.n {
            return Some(Entry {
                body: Bytes::new(),
                value_start: 0,
                value_end: 0,
                stored_at_ms: s.t,
                fresh_until_ms: s.f,
                stale_until_ms: s.s,
                negative: true,
            });
        }
        let v = s.v?;
        Some(Self::with_times(key, v.get().as_bytes(), s.t, s.f, s.s))
    }
}

/// The Redis representation of an entry.
#[derive(Serialize, Deserialize)]
struct Stored {
    t: u64,
    f: u64,
    s: u64,
    n: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<Box<RawValue>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn life(jitter: u8) -> Lifetimes {
        Lifetimes {
            ttl: Duration::from_secs(60),
            stale: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(5),
            jitter_percent: jitter,
        }
    }

    #[test]
    fn bodies_follow_the_seed_contract() {
        let e = Entry::value("a\"b", br#""v""#, 1000, &life(0));
        assert_eq!(
            &e.cache_body()[..],
            br#"{"key":"a\"b","value":"v","source":"cache"}"#
        );
        assert_eq!(
            &e.origin_body()[..],
            br#"{"key":"a\"b","value":"v","source":"origin"}"#
        );
        assert_eq!(e.value_json(), br#""v""#);
    }

    #[test]
    fn freshness_moves_from_fresh_to_stale_to_expired() {
        let e = Entry::value("k", b"1", 0, &life(0));
        assert_eq!(e.freshness(0), Freshness::Fresh { ttl_secs: 60 });
        assert_eq!(e.freshness(61_000), Freshness::Stale { over_secs: 1 });
        assert_eq!(e.freshness(360_000), Freshness::Expired);
        assert_eq!(e.age_secs(61_500), 61);
    }

    #[test]
    fn jitter_shortens_freshness_and_never_lengthens_it() {
        let mut seen_shorter = false;
        for _ in 0..200 {
            let e = Entry::value("k", b"1", 0, &life(10));
            assert!(e.fresh_until_ms <= 60_000 && e.fresh_until_ms >= 54_000);
            seen_shorter |= e.fresh_until_ms < 60_000;
            assert_eq!(e.stale_until_ms, e.fresh_until_ms + 300_000);
        }
        assert!(seen_shorter);
    }

    #[test]
    fn redis_encoding_round_trips() {
        let e = Entry::value("k", br#"{"a":[1,2]}"#, 5, &life(0));
        assert_eq!(Entry::decode("k", &e.encode()), Some(e));
        let n = Entry::not_found(5, &life(0));
        assert_eq!(Entry::decode("k", &n.encode()), Some(n));
        assert_eq!(Entry::decode("k", b"garbage"), None);
    }

    #[test]
    fn the_encoding_bound_holds_for_the_worst_text_body() {
        let max = 1000;
        let text = vec![0x01u8; max];
        let value = serde_json::to_vec(&String::from_utf8_lossy(&text)).unwrap();
        let e = Entry::value("k", &value, u64::MAX / 4, &life(0));
        assert!(e.encode().len() <= Entry::max_encoded_len(max));
    }

    #[test]
    fn soft_purge_ends_freshness_but_keeps_the_value_servable() {
        let e = Entry::value("k", b"1", 0, &life(0)).marked_stale(1000);
        assert_eq!(e.freshness(1000), Freshness::Stale { over_secs: 0 });
    }
}
