//! What an origin's response says about caching it (RFC 9111 §5, RFC 5861), read once from its
//! headers into plain values: the directives, `Expires`, `Date`, `Age`, and its validators.
//! Reading never fails: a malformed header is read the way RFC 9111 asks (an invalid `Expires`
//! or `max-age` means "already stale"), so an origin's mistake never becomes a client's error.

use std::time::UNIX_EPOCH;

use http::HeaderMap;
use http::header::{AGE, CACHE_CONTROL, DATE, ETAG, EXPIRES, LAST_MODIFIED, VARY};

/// Validators longer than this are not kept (an `ETag` is a short opaque string; a longer one is
/// not worth a Redis entry's bytes), so an entry's encoding stays bounded.
pub const MAX_VALIDATOR_BYTES: usize = 256;

/// An entity tag without its weakness indicator: weak comparison (RFC 9110 §8.8.3.2), and
/// telling whether a `304` names a stored representation, compare the opaque tags only.
pub fn opaque_tag(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// A lifetime as the origin stated it: a number of seconds, or present but unreadable (which
/// RFC 9111 §4.2.1 asks a cache to treat as stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stated {
    /// `directive=N`.
    Secs(u64),
    /// The directive (or header) is there but its value does not parse.
    Invalid,
}

/// The `Cache-Control` directives a shared cache acts on; every header line is read, and for a
/// directive given twice the first occurrence wins (RFC 9111 §4.2.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`: not stored anywhere (unless `must_understand`).
    pub no_store: bool,
    /// `must-understand` (RFC 9111 §5.2.2.3): a cache that knows the status code's caching
    /// rules ignores `no-store` (which the origin sends beside it for caches that do not).
    pub must_understand: bool,
    /// `no-cache` (qualified or not): stored, but validated with the origin before every reuse.
    pub no_cache: bool,
    /// `private` (qualified or not): meant for one user; a shared cache does not store it.
    pub private: bool,
    /// `must-revalidate`: never served stale.
    pub must_revalidate: bool,
    /// `proxy-revalidate` (and implied by `s-maxage`): never served stale by a shared cache.
    pub proxy_revalidate: bool,
    /// `max-age`.
    pub max_age: Option<Stated>,
    /// `s-maxage`, which a shared cache prefers to `max-age`.
    pub s_maxage: Option<Stated>,
    /// `stale-while-revalidate` (RFC 5861).
    pub stale_while_revalidate: Option<Stated>,
    /// `stale-if-error` (RFC 5861).
    pub stale_if_error: Option<Stated>,
}

/// The origin's validators, sent back on a refresh so an unchanged value costs no body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    /// The origin's `ETag`, verbatim (sent as `If-None-Match`).
    pub etag: Option<String>,
    /// The origin's `Last-Modified`, verbatim (sent as `If-Modified-Since`, shown to clients).
    pub last_modified: Option<String>,
}

impl Validators {
    /// Whether there is anything to make a request conditional with.
    pub fn any(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }
}

/// Everything caching-related an origin response said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheHeaders {
    /// The response carried headers at all (the simulated origin sends none: the configured
    /// lifetimes apply, exactly as before the origin could decide).
    pub from_http: bool,
    /// The status, for RFC 9111 §3's "heuristically cacheable" rule.
    pub status: u16,
    /// `Cache-Control`.
    pub directives: Directives,
    /// `Expires` (ms since the epoch), or invalid (already expired).
    pub expires_ms: Option<Result<u64, ()>>,
    /// `Date` (ms since the epoch), when it parses.
    pub date_ms: Option<u64>,
    /// `Age`, in seconds (0 when absent or unreadable).
    pub age_secs: u64,
    /// `Vary: *`: no request could ever match a stored answer.
    pub vary_any: bool,
    /// `ETag` and `Last-Modified`.
    pub validators: Validators,
    /// The tags of `ORIGIN_TAG_HEADER` within the limits; `None` when the header is absent.
    pub tags: Option<Vec<String>>,
    /// Tags beyond the limits (too many, or too long), ignored.
    pub tags_ignored: u32,
}

/// How an origin tags its answers (`ORIGIN_TAG_HEADER`, `TAGS_MAX_PER_ENTRY`, `TAG_MAX_BYTES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRules {
    /// The header holding the tags: space-separated (`Surrogate-Key`, Fastly's and Varnish
    /// xkey's), or comma-separated when it is `Cache-Tag` (Cloudflare's).
    pub header: http::HeaderName,
    /// Tags kept per entry; the rest are ignored (and counted).
    pub max_per_entry: usize,
    /// Longer tags are ignored (and counted).
    pub max_bytes: usize,
}

impl TagRules {
    /// The tags of `headers` (every line of the header), deduplicated, within the limits, and
    /// how many were ignored; `None` when the header is absent.
    pub fn read(&self, headers: &HeaderMap) -> (Option<Vec<String>>, u32) {
        let mut lines = headers.get_all(&self.header).iter().peekable();
        if lines.peek().is_none() {
            return (None, 0);
        }
        let commas = self.header == "cache-tag";
        let mut tags: Vec<String> = Vec::new();
        let mut ignored = 0;
        // Bytes, not `to_str`: one byte outside visible ASCII must cost only its own tag.
        let words = lines.flat_map(|v| {
            v.as_bytes()
                .split(move |b| {
                    if commas {
                        *b == b','
                    } else {
                        b.is_ascii_whitespace()
                    }
                })
                .map(<[u8]>::trim_ascii)
                .filter(|t| !t.is_empty())
        });
        for word in words {
            let Ok(tag) = std::str::from_utf8(word) else {
                ignored += 1;
                continue;
            };
            if tags.iter().any(|t| t == tag) {
                continue;
            }
            if tag.len() > self.max_bytes
                || tags.len() >= self.max_per_entry
                || tag.chars().any(char::is_control)
            {
                ignored += 1;
            } else {
                tags.push(tag.to_owned());
            }
        }
        (Some(tags), ignored)
    }
}

impl CacheHeaders {
    /// Reads the caching headers of a response with `status`.
    pub fn read(status: u16, headers: &HeaderMap) -> Self {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        CacheHeaders {
            from_http: true,
            status,
            directives: directives(headers),
            expires_ms: headers
                .get(EXPIRES)
                .map(|v| v.to_str().ok().and_then(http_date_ms).ok_or(())),
            date_ms: text(DATE).and_then(http_date_ms),
            age_secs: text(AGE).and_then(delta_seconds).unwrap_or(0),
            vary_any: headers
                .get_all(VARY)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|v| v.trim() == "*"),
            validators: Validators {
                etag: text(ETAG)
                    .filter(|e| !e.is_empty() && e.len() <= MAX_VALIDATOR_BYTES)
                    .map(str::to_owned),
                last_modified: text(LAST_MODIFIED)
                    .filter(|l| http_date_ms(l).is_some())
                    .map(str::to_owned),
            },
            // Read by the origin, which knows its tag header.
            tags: None,
            tags_ignored: 0,
        }
    }
}

impl CacheHeaders {
    /// Whether the answer states a freshness lifetime (`max-age`, `s-maxage`, `no-cache`,
    /// `Expires`): a `304` that does restates it; one that does not leaves the stored one.
    pub fn states_freshness(&self) -> bool {
        let d = &self.directives;
        d.max_age.is_some() || d.s_maxage.is_some() || d.no_cache || self.expires_ms.is_some()
    }
}

/// The directives of every `Cache-Control` line; names are case-insensitive, unknown ones
/// ignored, and the first occurrence of a directive wins.
fn directives(headers: &HeaderMap) -> Directives {
    let mut d = Directives::default();
    let mut pairs = Vec::new();
    for line in headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
    {
        parse_directives(line, &mut pairs);
    }
    for (name, value) in &pairs {
        let secs = || {
            Some(
                value
                    .as_deref()
                    .and_then(delta_seconds)
                    .map_or(Stated::Invalid, Stated::Secs),
            )
        };
        match name.as_str() {
            "no-store" => d.no_store = true,
            "must-understand" => d.must_understand = true,
            "no-cache" => d.no_cache = true,
            "private" => d.private = true,
            "must-revalidate" => d.must_revalidate = true,
            "proxy-revalidate" => d.proxy_revalidate = true,
            "max-age" if d.max_age.is_none() => d.max_age = secs(),
            "s-maxage" if d.s_maxage.is_none() => d.s_maxage = secs(),
            "stale-while-revalidate" if d.stale_while_revalidate.is_none() => {
                d.stale_while_revalidate = secs();
            }
            "stale-if-error" if d.stale_if_error.is_none() => d.stale_if_error = secs(),
            _ => {}
        }
    }
    d
}

/// Splits a `Cache-Control` value (or a targeted field's: RFC 9213) into directives, names
/// lowercased: `name`, `name=token`, `name="quoted"` (its escapes undone), whitespace around `=`
/// allowed, anything after a directive up to the next comma ignored. The one tokenizer of the
/// `/items` origin's rules and the proxy's.
pub fn parse_directives(text: &str, out: &mut Vec<(String, Option<String>)>) {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let start = i;
        while i < bytes.len() && !matches!(bytes[i], b',' | b'=' | b' ' | b'\t') {
            i += 1;
        }
        if start == i {
            // A stray `=` or similar: skip to the next comma.
            while i < bytes.len() && bytes[i] != b',' {
                i += 1;
            }
            continue;
        }
        let name = text[start..i].to_ascii_lowercase();
        while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
            i += 1;
        }
        let mut value = None;
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && (bytes[i] == b' ' || bytes[i] == b'\t') {
                i += 1;
            }
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    v.push(bytes[i] as char);
                    i += 1;
                }
                i += 1;
                value = Some(v);
            } else {
                let vs = i;
                while i < bytes.len() && bytes[i] != b',' && bytes[i] != b' ' && bytes[i] != b'\t' {
                    i += 1;
                }
                value = Some(text[vs..i].to_owned());
            }
        }
        // Anything after the directive up to the next comma is not part of it.
        while i < bytes.len() && bytes[i] != b',' {
            i += 1;
        }
        out.push((name, value));
    }
}

/// The largest delta-seconds a cache must handle: a larger value, however many digits it has,
/// is taken as this (RFC 9111 §1.2.2), so no lifetime or age can overflow the arithmetic after it.
pub const MAX_DELTA_SECONDS: u64 = 1 << 31;

/// A delta-seconds value (RFC 9111 §1.2.2): digits only, at most [`MAX_DELTA_SECONDS`] (a longer
/// one, even past 64 bits, is that); `None` when it is not a number at all.
pub fn delta_seconds(text: &str) -> Option<u64> {
    let digits = text.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        digits
            .parse::<u64>()
            .map_or(MAX_DELTA_SECONDS, |n| n.min(MAX_DELTA_SECONDS)),
    )
}

/// An HTTP-date (RFC 9110 §5.6.7, all three formats) as ms since the epoch.
pub fn http_date_ms(text: &str) -> Option<u64> {
    let at = httpdate::parse_http_date(text.trim()).ok()?;
    Some(at.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_that_is_not_utf8_costs_only_itself() {
        let rules = TagRules {
            header: http::HeaderName::from_static("surrogate-key"),
            max_per_entry: 32,
            max_bytes: 128,
        };
        let mut h = HeaderMap::new();
        let value = http::HeaderValue::from_bytes(b"good caf\xc3\xa9 bad\xff also-good").unwrap();
        h.insert("surrogate-key", value);
        let (tags, ignored) = rules.read(&h);
        assert_eq!(tags.unwrap(), ["good", "caf\u{e9}", "also-good"]);
        assert_eq!(ignored, 1);
    }
    use http::HeaderValue;

    fn read(pairs: &[(&'static str, &'static str)]) -> CacheHeaders {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        CacheHeaders::read(200, &h)
    }

    #[test]
    fn directives_across_lines_first_occurrence_wins_and_case_is_ignored() {
        let h = read(&[
            ("cache-control", "Max-Age=60, s-maxage=\"30\""),
            (
                "cache-control",
                "max-age=5, stale-while-revalidate=10, private=\"set-cookie, x\"",
            ),
        ]);
        assert_eq!(h.directives.max_age, Some(Stated::Secs(60)));
        assert_eq!(h.directives.s_maxage, Some(Stated::Secs(30)));
        assert_eq!(h.directives.stale_while_revalidate, Some(Stated::Secs(10)));
        assert!(h.directives.private);
        assert!(!h.directives.no_store);
    }

    #[test]
    fn malformed_values_are_read_as_stale_not_as_errors() {
        let h = read(&[("cache-control", "max-age=soon"), ("expires", "0")]);
        assert_eq!(h.directives.max_age, Some(Stated::Invalid));
        assert_eq!(h.expires_ms, Some(Err(())));
        let h = read(&[(
            "cache-control",
            "max-age=9999999999999999, s-maxage=99999999999999999999999",
        )]);
        assert_eq!(h.directives.max_age, Some(Stated::Secs(MAX_DELTA_SECONDS)));
        assert_eq!(h.directives.s_maxage, Some(Stated::Secs(MAX_DELTA_SECONDS)));
        let h = read(&[("cache-control", "max-age=99999999999999999, stale-if-error=-1")]);
        assert_eq!(h.directives.max_age, Some(Stated::Secs(MAX_DELTA_SECONDS)));
        assert_eq!(h.directives.stale_if_error, Some(Stated::Invalid));
        assert_eq!(
            read(&[("age", "99999999999999999999999")]).age_secs,
            MAX_DELTA_SECONDS
        );
        assert_eq!(read(&[("age", "+5")]).age_secs, 0);
        let h = read(&[("age", "x"), ("last-modified", "yesterday"), ("etag", "\"v1\"")]);
        assert_eq!(h.age_secs, 0);
        assert_eq!(h.validators.last_modified, None);
        assert_eq!(h.validators.etag.as_deref(), Some("\"v1\""));
    }

    #[test]
    fn dates_and_vary() {
        let h = read(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sunday, 06-Nov-94 08:50:37 GMT"),
            ("vary", "accept, *"),
        ]);
        assert_eq!(h.date_ms, Some(784_111_777_000));
        assert_eq!(h.expires_ms, Some(Ok(784_111_837_000)));
        assert!(h.vary_any);
    }
}
