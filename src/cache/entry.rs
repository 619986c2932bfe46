//! A cached answer and the times that govern it: fresh until, servable stale until.

use std::sync::{Arc, OnceLock};

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::encoding::{Coding, Compressions};
use super::policy::{Lifetimes, Times};
use crate::origin::{MAX_VALIDATOR_BYTES, Validators};

/// Heap bytes a memory-tier entry costs beyond its key, body and `ETag`: the `Entry` (times,
/// windows, the boxes' pointers) and its `Arc`, the key's `Arc<str>` header, and the tier's own
/// per-entry structures (the policy's arena node and table slot, the expiry heap's item,
/// frequency-sketch counters), with the C allocator's per-chunk header and rounding, and room
/// for those vectors' growth by doubling. Measured, not guessed: `tests/memory_weight.rs` counts
/// the heap bytes that inserted entries really take (up to about 490 B for the smallest entries,
/// and the whole tier within its bound under a flood) and fails if this weight under-counts them.
pub const ENTRY_OVERHEAD_BYTES: usize = 480;

/// Heap bytes one tag of an entry costs in the memory tier's tag index, at worst (a tag no
/// other entry carries: its own map slot, boxed name and one-key set).
pub const TAG_INDEX_BYTES: usize = 200;

const CACHE_SUFFIX: &[u8] = br#","source":"cache"}"#;
const ORIGIN_SUFFIX: &[u8] = br#","source":"origin"}"#;

/// Milliseconds since the Unix epoch by the system clock: entries are shared across processes
/// through Redis, so their times are wall-clock times, not `Instant`s. (The read-through and the
/// memory tier read a [`Clock`](super::clock::Clock) instead, which tests may move by hand.)
pub fn now_ms() -> u64 {
    super::clock::system_now_ms()
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
    /// When the origin generated the answer (ms since the epoch); `Age` counts from here.
    pub stored_at_ms: u64,
    /// Until when the entry is served as a plain hit.
    pub fresh_until_ms: u64,
    /// Until when it may be served stale while one refresh runs (`stale-while-revalidate`).
    pub revalidate_until_ms: u64,
    /// Until when it may be served stale when the origin fails (`stale-if-error`).
    pub if_error_until_ms: u64,
    /// Until when it is kept (to be served stale, or revalidated); after that it is gone.
    pub stale_until_ms: u64,
    /// The origin said 404/410: remembered so the origin is not asked again at once.
    pub negative: bool,
    /// Never served stale; revalidated with the origin before reuse once not fresh.
    pub must_revalidate: bool,
    /// The fresh lifetime it was stored with, in whole seconds (floored): a soft purge lowers
    /// `fresh_until_ms` and not this, so a `304` that restates no freshness renews the real
    /// lifetime ([`Entry::times_again`]), not the entry's age at the purge (which made every
    /// later hit a refresh). A `u32` beside the flags: it costs the entry no byte.
    lifetime_s: u32,
    /// The origin's `ETag` and `Last-Modified`, for conditional refreshes and clients; boxed,
    /// since most origins send neither and every entry would pay for two empty strings.
    validators: Option<Box<Validators>>,
    /// The weak `ETag` clients get: derived from the value, so it is the same on every replica
    /// and tier, whichever `source` the body says. `None` for a negative entry.
    etag: Option<HeaderValue>,
    /// The origin's tags (`ORIGIN_TAG_HEADER`), by which a purge can name many entries at once;
    /// `None` when it sent none.
    tags: Option<Box<[Box<str>]>>,
    /// The hit body compressed in each [`Coding`], made on first use and kept (behind a
    /// pointer: most entries are never asked for compressed, and then cost one; shared, so a
    /// compression on the compression threads can fill it after the request that asked is answered).
    compressed: OnceLock<Arc<Compressions>>,
    /// A proxied response's status and headers (`PROXY_ROUTES`); `None` for an `/items` entry,
    /// whose body is the rendered JSON answer. Proxied entries live under keys no `/items` key
    /// can spell (they start with a control character), so neither kind is read as the other.
    head: Option<Arc<Head>>,
}

/// What a proxied response carries besides its body: status, headers (hop-by-hop ones already
/// removed) and what RFC 9111's freshness and age rules need of the time it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The origin's status.
    pub status: http::StatusCode,
    /// The origin's end-to-end headers, as it sent them.
    pub headers: http::HeaderMap,
    /// When the response arrived (seconds since the epoch).
    pub response_time: u64,
    /// Its age on arrival (RFC 9111 §4.2.3's `corrected_initial_age`), in seconds.
    pub initial_age: u64,
    /// Its freshness lifetime (§4.2.1), in seconds.
    pub lifetime: u64,
    /// For a response that `Vary`s: the request's values of each header it names (the
    /// variant this entry answers); for the marker stored under the plain key: the names only.
    pub vary: Vec<(http::HeaderName, Option<http::HeaderValue>)>,
    /// The marker stored under a varying resource's plain key: names the headers its variants
    /// vary on, and the generation their keys carry (a new marker hides every older variant).
    pub marker: Option<u64>,
    /// The headers a plain hit on this head answers with, made on its first such hit.
    pub served: Served,
}

/// A head's headers as a plain hit serves them (its own, and what the proxy adds to every
/// answer), made once per head so that a hit copies one map instead of growing a copy by the
/// fields it adds. A copy of a head starts without it: a head is copied to be changed.
#[derive(Debug, Default)]
pub struct Served(std::sync::OnceLock<http::HeaderMap>);

impl Clone for Served {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// Made from the rest of the head, so two heads are equal whatever they have made of it yet.
impl PartialEq for Served {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Served {}

impl Head {
    /// [`Head::served`]'s map, made by `make` from the head's headers the first time.
    pub fn served(&self, make: impl FnOnce(&http::HeaderMap) -> http::HeaderMap) -> &http::HeaderMap {
        self.served.0.get_or_init(|| make(&self.headers))
    }

    /// Heap bytes of the head, for the memory weight.
    fn bytes(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            // The map's slot and index, the value's own allocation (and a custom name's).
            .map(|(n, v)| n.as_str().len() + v.len() + 128)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, HeaderValue::len) + 48)
            .sum();
        // The map a hit serves ([`Served`]): its slots, and a few fields more; the values are
        // shared with `headers`.
        let served = (self.headers.len() + 4) * 64;
        std::mem::size_of::<Head>() + headers + vary + served + 64
    }
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

impl Entry {
    /// An entry for a value fetched now, with the configured lifetimes (an origin that said
    /// nothing). `value` must be valid JSON.
    pub fn value(key: &str, value: &[u8], now_ms: u64, life: &Lifetimes) -> Self {
        Self::new(key, value, life.heuristic(false, now_ms), Validators::default())
    }

    /// An entry remembering the origin's 404 for `negative_ttl`.
    pub fn not_found(now_ms: u64, life: &Lifetimes) -> Self {
        Self::new_not_found(life.heuristic(true, now_ms))
    }

    /// An entry for `value` (valid JSON) with `times`, as the policy decided them.
    pub fn new(key: &str, value: &[u8], times: Times, validators: Validators) -> Self {
        let key_json = serde_json::to_string(key).expect("a str always serialises");
        let mut body = BytesMut::with_capacity(key_json.len() + value.len() + 40 + ETAG_LEN);
        body.put_slice(b"{\"key\":");
        body.put_slice(key_json.as_bytes());
        body.put_slice(b",\"value\":");
        let value_start = body.len();
        body.put_slice(value);
        let value_end = body.len();
        body.put_slice(CACHE_SUFFIX);
        let body_end = body.len();
        // The ETag's text shares the body's allocation: no allocation of its own.
        body.put_slice(weak_etag(value).as_bytes());
        let storage = body.freeze();
        let etag =
            HeaderValue::from_maybe_shared(storage.slice(body_end..)).expect("hex is a valid header value");
        let mut entry = Entry {
            body: storage.slice(..body_end),
            value_start,
            value_end,
            etag: Some(etag),
            negative: false,
            validators: validators.any().then(|| Box::new(validators)),
            ..Self::new_not_found(times)
        };
        entry.stale_until_ms = times.stale_until_ms.max(times.fresh_until_ms);
        entry
    }

    /// An entry remembering the origin's 404 with `times`.
    pub fn new_not_found(times: Times) -> Self {
        Entry {
            body: Bytes::new(),
            value_start: 0,
            value_end: 0,
            stored_at_ms: times.stored_at_ms,
            fresh_until_ms: times.fresh_until_ms,
            revalidate_until_ms: times.revalidate_until_ms,
            if_error_until_ms: times.if_error_until_ms,
            stale_until_ms: times.stale_until_ms,
            negative: true,
            must_revalidate: times.must_revalidate,
            lifetime_s: lifetime_secs(&times),
            validators: None,
            etag: None,
            tags: None,
            compressed: Default::default(),
            head: None,
        }
    }

    /// A proxied response: `head` and its raw `body`, with `times` (fresh until, kept until).
    pub fn proxied(head: Head, body: Bytes, times: Times) -> Self {
        Entry {
            value_end: body.len(),
            body,
            negative: false,
            head: Some(Arc::new(head)),
            ..Self::new_not_found(times)
        }
    }

    /// A proxied response's status and headers; `None` for an `/items` entry.
    pub fn head(&self) -> Option<&Head> {
        self.head.as_deref()
    }

    /// A proxied response's body, as the origin sent it.
    pub fn raw_body(&self) -> &Bytes {
        &self.body
    }

    /// The same value with new times and validators: the origin answered `304 Not Modified`
    /// to a refresh (RFC 9111 §4.3.4: the stored answer, updated by the 304's headers).
    pub fn renewed(&self, times: Times, validators: Validators) -> Self {
        Entry {
            stored_at_ms: times.stored_at_ms,
            fresh_until_ms: times.fresh_until_ms,
            revalidate_until_ms: times.revalidate_until_ms,
            if_error_until_ms: times.if_error_until_ms,
            stale_until_ms: times.stale_until_ms.max(times.fresh_until_ms),
            must_revalidate: times.must_revalidate,
            lifetime_s: lifetime_secs(&times),
            validators: {
                let kept = self.validators();
                let merged = Validators {
                    etag: validators.etag.or_else(|| kept.etag.clone()),
                    last_modified: validators.last_modified.or_else(|| kept.last_modified.clone()),
                };
                merged.any().then(|| Box::new(merged))
            },
            compressed: self.compressed.clone(),
            ..self.clone()
        }
    }

    /// The same lifetimes again from `now_ms`: a `304` that restated no freshness renews the
    /// stored answer's own (RFC 9111 §4.3.4 keeps the stored headers the 304 does not replace).
    pub fn times_again(&self, now_ms: u64) -> Times {
        let from = |until: u64| now_ms + until.saturating_sub(self.stored_at_ms);
        // A soft purge cut `fresh_until_ms`; the lifetime it was stored with is kept apart.
        let fresh = self
            .fresh_until_ms
            .saturating_sub(self.stored_at_ms)
            .max(u64::from(self.lifetime_s) * 1000);
        Times {
            stored_at_ms: now_ms,
            fresh_until_ms: now_ms + fresh,
            revalidate_until_ms: from(self.revalidate_until_ms),
            if_error_until_ms: from(self.if_error_until_ms),
            stale_until_ms: from(self.stale_until_ms),
            must_revalidate: self.must_revalidate,
        }
    }

    /// The same entry carrying `tags` (the origin's, already within the limits).
    pub fn with_tags(mut self, tags: &[String]) -> Self {
        self.tags = (!tags.is_empty()).then(|| tags.iter().map(|t| Box::from(t.as_str())).collect());
        self
    }

    /// The origin's tags.
    pub fn tags(&self) -> &[Box<str>] {
        self.tags.as_deref().unwrap_or(&[])
    }

    /// Whether the entry carries exactly `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags().iter().any(|t| &**t == tag)
    }

    /// The origin's validators (none when it sent neither `ETag` nor `Last-Modified`).
    pub fn validators(&self) -> &Validators {
        const NONE: &Validators = &Validators {
            etag: None,
            last_modified: None,
        };
        self.validators.as_deref().unwrap_or(NONE)
    }

    /// The weak `ETag` clients get (`None` for a remembered 404).
    pub fn etag(&self) -> Option<&HeaderValue> {
        self.etag.as_ref()
    }

    /// Whether, stale at `now_ms`, it may be served while one refresh runs.
    pub fn may_serve_while_revalidating(&self, now_ms: u64) -> bool {
        !self.must_revalidate && !self.negative && now_ms < self.revalidate_until_ms
    }

    /// Whether, stale at `now_ms`, it may be served because the origin is failing.
    pub fn may_serve_if_error(&self, now_ms: u64) -> bool {
        !self.must_revalidate && !self.negative && now_ms < self.if_error_until_ms
    }

    /// The answer body of a hit (`"source":"cache"`), shared, not copied.
    pub fn cache_body(&self) -> Bytes {
        self.body.clone()
    }

    /// The hit body's compressed forms, made on first use (see [`Compressions`]).
    pub fn compressions(&self) -> &Arc<Compressions> {
        self.compressed.get_or_init(Arc::default)
    }

    /// Starts making the body in `coding` on the compression threads ([`Compressions::start`]),
    /// the job holding this entry weakly: one evicted before a thread takes the job is not
    /// compressed, and the queue never keeps an entry alive beside the memory bound. `reweigh`
    /// gets the entry once its form is made (the memory tier weighs it again).
    pub fn start_compression(
        self: &Arc<Self>,
        coding: Coding,
        reweigh: impl FnOnce(&Arc<Entry>) + Send + 'static,
    ) {
        let (source, weighed) = (Arc::downgrade(self), Arc::downgrade(self));
        self.compressions().start(
            coding,
            self.body.len(),
            move || source.upgrade().map(|e| e.body.clone()),
            move || {
                if let Some(entry) = weighed.upgrade() {
                    reweigh(&entry);
                }
            },
        );
    }

    /// The length of the hit body, uncompressed.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// The answer body without its `"source"` member and closing brace (a slice of the
    /// entry's shared bytes, never a copy), for answers that write `"source"` themselves: a
    /// batch writes a 1 MB value a thousand times from one buffer.
    pub fn body_head(&self) -> Bytes {
        self.body.slice(..self.body.len() - CACHE_SUFFIX.len())
    }

    /// The answer body as an origin fetch answers it (`"source":"origin"`); a copy.
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
    /// rendered body (which holds the key again, JSON-escaped), the validators and the
    /// per-entry overhead.
    pub fn weight(&self, key: &str) -> u32 {
        // The boxes, when there are any: their structs and the allocator's chunk headers.
        const VALIDATORS_BOX: usize = 64;
        const COMPRESSED_BOX: usize = 192;
        let v = self.validators();
        let validators = self.validators.as_ref().map_or(0, |_| VALIDATORS_BOX)
            + v.etag.as_ref().map_or(0, String::len)
            + v.last_modified.as_ref().map_or(0, String::len);
        let compressed = self
            .compressed
            .get()
            .map_or(0, |forms| COMPRESSED_BOX + forms.bytes());
        let etag = self.etag.as_ref().map_or(0, HeaderValue::len);
        // A boxed slice of boxed strings: 16 bytes of pointer and length per tag, plus its text;
        // and the key's place in the memory tier's tag index, at worst a tag of its own: the
        // map's slot, the tag's boxed copy and a set of one key at its smallest allocation
        // (measured: about 240 bytes a tag with its name, `tests/memory_weight.rs`).
        let tags = self.tags.as_ref().map_or(0, |t| {
            32 + t
                .iter()
                .map(|t| 32 + 2 * t.len() + TAG_INDEX_BYTES)
                .sum::<usize>()
        });
        let head = self.head.as_ref().map_or(0, |h| h.bytes());
        (key.len() + self.body.len() + etag + validators + compressed + tags + head + ENTRY_OVERHEAD_BYTES)
            .min(u32::MAX as usize) as u32
    }

    /// The entry as stored in Redis and on disk. Format 1 (`/items` entries): one JSON object,
    /// the value inside it. Format 2 (a proxied response, [`Entry::proxied`]): the same object
    /// with the status and headers in `p` and no `v`, followed by the body's raw bytes. A
    /// reader of format 1 only refuses format 2 (trailing bytes, no value), and proxied keys
    /// are a namespace it never reads.
    pub fn encode(&self) -> Vec<u8> {
        let stored = Stored {
            t: self.stored_at_ms,
            f: self.fresh_until_ms,
            s: self.stale_until_ms,
            r: Some(self.revalidate_until_ms),
            e: Some(self.if_error_until_ms),
            m: self.must_revalidate,
            l: Some(self.lifetime_s),
            et: self.validators().etag.clone(),
            lm: self.validators().last_modified.clone(),
            tg: self.tags().iter().map(|t| t.to_string()).collect(),
            n: self.negative,
            p: self.head.as_deref().map(StoredHead::from),
            v: (!self.negative && self.head.is_none()).then(|| {
                // The value is JSON by construction, so this cannot fail.
                RawValue::from_string(String::from_utf8_lossy(self.value_json()).into_owned())
                    .expect("entry values are valid JSON")
            }),
        };
        let mut out = serde_json::to_vec(&stored).expect("an entry always serialises");
        if self.head.is_some() {
            out.extend_from_slice(&self.body);
        }
        out
    }

    /// The largest encoding of an entry whose origin body was at most `max_body` bytes: a text
    /// body becomes a JSON string, where one byte can take up to six (`\u0000`); the times,
    /// flags and validators (each at most [`MAX_VALIDATOR_BYTES`], escaped) add less than
    /// 256 + 12 × that. Anything larger in Redis was not written by this service.
    pub fn max_encoded_len(max_body: usize) -> usize {
        max_body
            .saturating_mul(6)
            .saturating_add(2 + 256 + 12 * MAX_VALIDATOR_BYTES)
    }

    /// Reads an entry stored by [`Entry::encode`]; `None` when the bytes are not one. Entries
    /// written before the origin could set stale windows serve stale for their whole window.
    pub fn decode(key: &str, bytes: &[u8]) -> Option<Self> {
        let mut values = serde_json::Deserializer::from_slice(bytes).into_iter::<Stored>();
        let s: Stored = values.next()?.ok()?;
        let rest = &bytes[values.byte_offset()..];
        let times = Times {
            stored_at_ms: s.t,
            fresh_until_ms: s.f,
            revalidate_until_ms: s.r.unwrap_or(s.s),
            if_error_until_ms: s.e.unwrap_or(s.s),
            stale_until_ms: s.s,
            must_revalidate: s.m,
        };
        // Written since soft purges keep the lifetime apart (a purge in Redis lowers `f` only);
        // older entries: their `f` then.
        let lifetime = |mut e: Entry| {
            e.lifetime_s = s.l.unwrap_or(e.lifetime_s);
            e
        };
        if let Some(head) = s.p {
            let head = head.into_head()?;
            return Some(lifetime(
                Self::proxied(head, Bytes::copy_from_slice(rest), times).with_tags(&s.tg),
            ));
        }
        if !rest.trim_ascii().is_empty() {
            return None;
        }
        if s.n {
            return Some(lifetime(Self::new_not_found(times)));
        }
        let validators = Validators {
            etag: s.et,
            last_modified: s.lm,
        };
        Some(lifetime(
            Self::new(key, s.v?.get().as_bytes(), times, validators).with_tags(&s.tg),
        ))
    }
}

/// The fresh lifetime of `times` in whole seconds, floored (so that it never lengthens an
/// entry's own), at most `u32::MAX`.
fn lifetime_secs(times: &Times) -> u32 {
    (times.fresh_until_ms.saturating_sub(times.stored_at_ms) / 1000).min(u64::from(u32::MAX)) as u32
}

/// Bytes of a weak `ETag`: `W/"` + 16 hex digits + `"`.
const ETAG_LEN: usize = 21;

/// A weak `ETag` for `value`: `W/"<FNV-1a 64 of its bytes>"`, the same in every process and
/// release (a stable hash, not the standard library's, whose algorithm may change).
fn weak_etag(value: &[u8]) -> HeaderValue {
    let hash = crate::cache::sketch::fnv1a(value);
    HeaderValue::try_from(format!("W/\"{hash:016x}\"")).expect("hex is a valid header value")
}

/// The Redis representation of an entry.
#[derive(Serialize, Deserialize)]
struct Stored {
    t: u64,
    f: u64,
    s: u64,
    n: bool,
    /// Added with the origin's Cache-Control: absent in older entries (then `s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    m: bool,
    /// The fresh lifetime it was stored with (s): absent in older entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    et: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lm: Option<String>,
    /// The origin's tags; before `v`, so a purge script finds them without reading the value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    tg: Vec<String>,
    /// Format 2: a proxied response's status and headers; its body follows the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<StoredHead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<Box<RawValue>>,
}

/// A proxied response's [`Head`] as stored. Header values are bytes, not always UTF-8: each is
/// kept as a string of one char per byte (U+0000 to U+00FF), which reads back exactly.
#[derive(Serialize, Deserialize)]
struct StoredHead {
    st: u16,
    h: Vec<(String, String)>,
    rt: u64,
    ia: u64,
    lt: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    vy: Vec<(String, Option<String>)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mk: Option<u64>,
}

/// `bytes` as one char per byte.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// A header value from [`latin1`]'s string; `None` when it is not one, or not a header value.
fn header_value(text: &str) -> Option<HeaderValue> {
    let bytes: Option<Vec<u8>> = text.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect();
    HeaderValue::from_bytes(&bytes?).ok()
}

impl From<&Head> for StoredHead {
    fn from(h: &Head) -> Self {
        StoredHead {
            st: h.status.as_u16(),
            h: h.headers
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), latin1(v.as_bytes())))
                .collect(),
            rt: h.response_time,
            ia: h.initial_age,
            lt: h.lifetime,
            vy: h
                .vary
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_ref().map(|v| latin1(v.as_bytes()))))
                .collect(),
            mk: h.marker,
        }
    }
}

impl StoredHead {
    /// The head again; `None` when anything in it is not what [`StoredHead::from`] writes.
    fn into_head(self) -> Option<Head> {
        // Room for the fields a proxied answer adds to a copy (see the proxy's `end_to_end`).
        let mut headers = http::HeaderMap::with_capacity(self.h.len() + 4);
        for (n, v) in &self.h {
            headers.append(http::HeaderName::from_bytes(n.as_bytes()).ok()?, header_value(v)?);
        }
        let mut vary = Vec::with_capacity(self.vy.len());
        for (n, v) in &self.vy {
            let value = match v {
                Some(v) => Some(header_value(v)?),
                None => None,
            };
            vary.push((http::HeaderName::from_bytes(n.as_bytes()).ok()?, value));
        }
        Some(Head {
            status: http::StatusCode::from_u16(self.st).ok()?,
            headers,
            response_time: self.rt,
            initial_age: self.ia,
            lifetime: self.lt,
            vary,
            marker: self.mk,
            served: Served::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    fn life(jitter: u8) -> Lifetimes {
        Lifetimes {
            jitter_percent: jitter,
            ..Lifetimes::fixed(
                Duration::from_secs(60),
                Duration::from_secs(300),
                Duration::from_secs(5),
            )
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
    fn a_proxied_response_round_trips_in_format_2_and_format_1_readers_refuse_it() {
        let mut headers = http::HeaderMap::new();
        headers.append("x-bytes", HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap());
        headers.append("set-thing", HeaderValue::from_static("a"));
        headers.append("set-thing", HeaderValue::from_static("b"));
        let head = Head {
            status: http::StatusCode::NON_AUTHORITATIVE_INFORMATION,
            headers,
            response_time: 1_700_000_000,
            initial_age: 3,
            lifetime: 60,
            vary: vec![
                (http::header::HOST, Some(HeaderValue::from_static("h"))),
                (http::header::ACCEPT, None),
            ],
            marker: Some(7),
            served: Served::default(),
        };
        let body = Bytes::from_static(b"}{\"v\":1} not json \x00\xff");
        let times = Times {
            stored_at_ms: 1,
            fresh_until_ms: 2,
            revalidate_until_ms: 3,
            if_error_until_ms: 4,
            stale_until_ms: 5,
            must_revalidate: false,
        };
        let e = Entry::proxied(head, body.clone(), times).with_tags(&["t1".to_owned()]);
        let bytes = e.encode();
        let back = Entry::decode("k", &bytes).unwrap();
        assert_eq!(back.raw_body(), &body);
        assert_eq!(back.tags(), e.tags());
        assert_eq!(back.fresh_until_ms, 2);
        let (h, b) = (back.head().unwrap(), e.head().unwrap());
        assert_eq!(
            (h.status, &h.headers, &h.vary, h.marker),
            (b.status, &b.headers, &b.vary, b.marker)
        );
        assert_eq!(
            (h.response_time, h.initial_age, h.lifetime),
            (b.response_time, b.initial_age, b.lifetime)
        );
        // What a format-1 reader did with it: parse one object, then want a value.
        #[derive(Deserialize)]
        struct Format1 {
            #[allow(dead_code)]
            v: Option<Box<RawValue>>,
        }
        assert!(
            serde_json::from_slice::<Format1>(&bytes).is_err(),
            "trailing body bytes"
        );
        let empty = Entry::proxied(e.head().unwrap().clone(), Bytes::new(), times).encode();
        let old: Format1 = serde_json::from_slice(&empty).unwrap();
        assert!(old.v.is_none(), "no value: a format-1 reader finds no entry");
        // A format-1 entry with anything after it is not an entry.
        let mut items = Entry::value("k", b"1", 0, &life(0)).encode();
        assert!(Entry::decode("k", &items).is_some());
        items.extend_from_slice(b"x");
        assert!(Entry::decode("k", &items).is_none());
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
        // The origin's windows and validators travel too.
        let times = Times {
            stored_at_ms: 1,
            fresh_until_ms: 2,
            revalidate_until_ms: 3,
            if_error_until_ms: 4,
            stale_until_ms: 5,
            must_revalidate: true,
        };
        let validators = Validators {
            etag: Some("\"abc\"".to_owned()),
            last_modified: Some("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
        };
        let e = Entry::new("k", b"[1]", times, validators);
        assert_eq!(Entry::decode("k", &e.encode()), Some(e));
    }

    #[test]
    fn a_soft_purge_keeps_the_lifetime_a_304_renews() {
        let times = Times {
            stored_at_ms: 10_000,
            fresh_until_ms: 70_000,
            revalidate_until_ms: 70_000,
            if_error_until_ms: 70_000,
            stale_until_ms: 100_000,
            must_revalidate: false,
        };
        let e = Entry::new("k", b"1", times, Validators::default());
        // Soft-purged 200 ms after it was stored.
        let purged = e.marked_stale(10_200);
        assert_eq!(purged.fresh_until_ms, 10_200);
        assert_eq!(
            purged.times_again(20_000).fresh_until_ms,
            80_000,
            "its 60 s again, not the 0.2 s it had lived"
        );
        // The lifetime travels through Redis and the disk; a purge made in Redis (the script
        // lowers `f` in place) keeps it too.
        let back = Entry::decode("k", &purged.encode()).unwrap();
        assert_eq!(back.times_again(20_000).fresh_until_ms, 80_000);
        let lowered = String::from_utf8(e.encode())
            .unwrap()
            .replace("\"f\":70000", "\"f\":10200");
        let back = Entry::decode("k", lowered.as_bytes()).unwrap();
        assert_eq!(back.fresh_until_ms, 10_200);
        assert_eq!(back.times_again(20_000).fresh_until_ms, 80_000);
        // Entries written before the lifetime was kept: their `f`.
        let old = br#"{"t":1000,"f":3000,"s":9000,"n":false,"v":"x"}"#;
        assert_eq!(
            Entry::decode("k", old)
                .unwrap()
                .times_again(10_000)
                .fresh_until_ms,
            12_000
        );
    }

    #[test]
    fn entries_written_before_stale_windows_serve_stale_for_their_whole_window() {
        let old = br#"{"t":1,"f":2,"s":9,"n":false,"v":"x"}"#;
        let e = Entry::decode("k", old).unwrap();
        assert_eq!((e.revalidate_until_ms, e.if_error_until_ms), (9, 9));
        assert!(!e.must_revalidate);
    }

    #[test]
    fn the_etag_is_weak_and_depends_on_the_value_only() {
        let a = Entry::value("k1", b"{\"a\":1}", 0, &life(0));
        let b = Entry::value("k2", b"{\"a\":1}", 99, &life(10));
        assert_eq!(a.etag(), b.etag());
        assert!(a.etag().unwrap().to_str().unwrap().starts_with("W/\""));
        assert_ne!(a.etag(), Entry::value("k1", b"2", 0, &life(0)).etag());
        assert_eq!(Entry::not_found(0, &life(0)).etag(), None);
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
