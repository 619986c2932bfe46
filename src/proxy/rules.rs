//! What RFC 9111 says a shared cache may do with a response and a request: the directives of
//! `Cache-Control` and its targeted forms (RFC 9213), storability (§3), the freshness lifetime
//! (§4.2.1, heuristics §4.2.2), the age (§4.2.3) and the request's own limits (§5.2.1).
//!
//! Pure functions over header maps and times, so each rule is tested here without a server.

use http::{HeaderMap, HeaderName, Method, StatusCode, header};

use crate::origin::{delta_seconds, parse_directives};

/// Heuristic freshness is this share of the time since `Last-Modified` (§4.2.2's "typical
/// setting" of 10 %), in tenths.
const HEURISTIC_TENTHS: u64 = 1;
/// …and never more than a day, so a file untouched for years is not held for months.
const HEURISTIC_MAX_SECS: u64 = 24 * 3600;

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1, "heuristically
/// cacheable").
const HEURISTIC_STATUSES: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// The `Cache-Control` directives of one field value (or several, joined), names lowercased.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Directives(Vec<(String, Option<String>)>);

impl Directives {
    /// Parses every value of `name` in `headers`; `None` when the field is absent.
    pub fn of(headers: &HeaderMap, name: &HeaderName) -> Option<Self> {
        let mut all = headers.get_all(name).iter().peekable();
        all.peek()?;
        let mut out = Vec::new();
        for value in all {
            // A value that is not visible ASCII is not a directive list this cache can read.
            let Ok(text) = value.to_str() else { continue };
            parse_directives(text, &mut out);
        }
        Some(Directives(out))
    }

    /// Whether `name` is present (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// The value of `name` as delta-seconds (§1.2.2): the first occurrence; `None` when absent
    /// or not a number. A directive given twice with different values is treated as stale
    /// (`Some(0)`), as §4.2.1 advises for conflicting freshness.
    pub fn seconds(&self, name: &str) -> Option<u64> {
        let mut values = self
            .0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref());
        let first = delta(values.next()??)?;
        if values.any(|v| v.and_then(delta) != Some(first)) {
            return Some(0);
        }
        Some(first)
    }

    /// The field names a qualified directive (`no-cache="a, b"`, `private="c"`) lists,
    /// lowercased; `None` when the directive is absent or unqualified.
    pub fn fields(&self, name: &str) -> Option<Vec<String>> {
        let (_, value) = self.0.iter().find(|(n, _)| n == name)?;
        let value = value.as_ref()?;
        Some(
            value
                .split(',')
                .map(|f| f.trim().to_ascii_lowercase())
                .filter(|f| !f.is_empty())
                .collect(),
        )
    }

    /// Whether `name` is present without field names (`no-cache`, `private`).
    pub fn unqualified(&self, name: &str) -> bool {
        self.0.iter().any(|(n, v)| n == name && v.is_none())
    }
}

/// Delta-seconds, digits only (no whitespace inside the token), capped at 2^31.
fn delta(text: &str) -> Option<u64> {
    if text.bytes().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    delta_seconds(text)
}

/// `CDN-Cache-Control` (RFC 9213).
pub static CDN_CACHE_CONTROL: HeaderName = HeaderName::from_static("cdn-cache-control");
/// `Surrogate-Control` (the older targeted field of Akamai and Fastly).
pub static SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// The directives this cache obeys for a response: the first targeted field it finds
/// (`CDN-Cache-Control`, then `Surrogate-Control`), which then replaces `Cache-Control`
/// for this cache entirely (RFC 9213 §2.1), else `Cache-Control`.
pub fn response_directives(headers: &HeaderMap) -> Directives {
    Directives::of(headers, &CDN_CACHE_CONTROL)
        .filter(|d| !d.0.is_empty() && structured(headers))
        .or_else(|| Directives::of(headers, &SURROGATE_CONTROL).filter(|d| !d.0.is_empty()))
        .or_else(|| Directives::of(headers, &header::CACHE_CONTROL))
        .unwrap_or_default()
}

/// Whether `CDN-Cache-Control` is a valid Structured Field dictionary (RFC 8941 §3.2) whose
/// durations are integers (RFC 9213 §2.1): a field that is not is ignored whole.
fn structured(headers: &HeaderMap) -> bool {
    let mut text = String::new();
    for v in headers.get_all(&CDN_CACHE_CONTROL) {
        let Ok(v) = v.to_str() else { return false };
        if !text.is_empty() {
            text.push(',');
        }
        text.push_str(v);
    }
    sf_dictionary(&text).is_some_and(|members| {
        members.iter().all(|(key, item)| {
            !matches!(
                key.as_str(),
                "max-age" | "s-maxage" | "stale-while-revalidate" | "stale-if-error"
            ) || matches!(item, SfItem::Integer)
        })
    })
}

/// The type of a Structured Field bare item (what `structured` checks).
#[derive(Debug, PartialEq, Eq)]
enum SfItem {
    Integer,
    Other,
}

/// Parses an RFC 8941 dictionary: its keys and the type of each value (`true` when bare).
fn sf_dictionary(text: &str) -> Option<Vec<(String, SfItem)>> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let ows = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t') {
            *i += 1;
        }
    };
    let key = |i: &mut usize| -> Option<String> {
        let start = *i;
        if *i >= b.len() || !(b[*i].is_ascii_lowercase() || b[*i] == b'*') {
            return None;
        }
        while *i < b.len()
            && (b[*i].is_ascii_lowercase() || b[*i].is_ascii_digit() || b"_-.*".contains(&b[*i]))
        {
            *i += 1;
        }
        Some(text[start..*i].to_owned())
    };
    let bare = |i: &mut usize| -> Option<SfItem> {
        let c = *b.get(*i)?;
        if c == b'-' || c.is_ascii_digit() {
            *i += usize::from(c == b'-');
            let start = *i;
            while *i < b.len() && b[*i].is_ascii_digit() {
                *i += 1;
            }
            if *i == start || *i - start > 15 {
                return None;
            }
            if *i < b.len() && b[*i] == b'.' {
                *i += 1;
                let f = *i;
                while *i < b.len() && b[*i].is_ascii_digit() {
                    *i += 1;
                }
                return (*i > f && *i - f <= 3).then_some(SfItem::Other);
            }
            return Some(SfItem::Integer);
        }
        match c {
            b'"' => {
                *i += 1;
                while *i < b.len() && b[*i] != b'"' {
                    if b[*i] == b'\\' {
                        *i += 1;
                    }
                    if *i >= b.len() || !(0x20..0x7f).contains(&b[*i]) {
                        return None;
                    }
                    *i += 1;
                }
                (*i < b.len()).then(|| *i += 1).map(|_| SfItem::Other)
            }
            b':' => {
                *i += 1;
                while *i < b.len() && b[*i] != b':' {
                    if !(b[*i].is_ascii_alphanumeric() || b"+/=".contains(&b[*i])) {
                        return None;
                    }
                    *i += 1;
                }
                (*i < b.len()).then(|| *i += 1).map(|_| SfItem::Other)
            }
            b'?' => match b.get(*i + 1) {
                Some(b'0' | b'1') => {
                    *i += 2;
                    Some(SfItem::Other)
                }
                _ => None,
            },
            c if c.is_ascii_alphabetic() || c == b'*' => {
                while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&b[*i]))
                {
                    *i += 1;
                }
                Some(SfItem::Other)
            }
            _ => None,
        }
    };
    ows(&mut i);
    while i < b.len() {
        let k = key(&mut i)?;
        let item = if i < b.len() && b[i] == b'=' {
            i += 1;
            bare(&mut i)?
        } else {
            SfItem::Other
        };
        while i < b.len() && b[i] == b';' {
            i += 1;
            ows(&mut i);
            key(&mut i)?;
            if i < b.len() && b[i] == b'=' {
                i += 1;
                bare(&mut i)?;
            }
        }
        out.push((k, item));
        ows(&mut i);
        if i >= b.len() {
            break;
        }
        if b[i] != b',' {
            return None;
        }
        i += 1;
        ows(&mut i);
        if i >= b.len() {
            return None;
        }
    }
    Some(out)
}

/// The request's directives: `Cache-Control`, or `Pragma: no-cache` when it has none (§5.4).
pub fn request_directives(headers: &HeaderMap) -> Directives {
    if let Some(d) = Directives::of(headers, &header::CACHE_CONTROL) {
        return d;
    }
    let pragma_no_cache = headers
        .get_all(header::PRAGMA)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|p| p.trim().eq_ignore_ascii_case("no-cache")));
    Directives(if pragma_no_cache {
        vec![("no-cache".to_owned(), None)]
    } else {
        Vec::new()
    })
}

/// An HTTP-date header as seconds since the epoch; `None` when absent or not a date.
pub fn date_secs(headers: &HeaderMap, name: &HeaderName) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let text = value.to_str().ok()?;
    match httpdate::parse_http_date(text.trim()) {
        Ok(t) => t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs()),
        Err(_) => lenient_date(text),
    }
}

/// An HTTP-date in one of its three formats (RFC 9110 §5.6.7), with the leniency recipients
/// are asked for and no more: names (weekday, month, `GMT`) in any case and the weekday not
/// checked against the date; the layout, digits and zone exactly as the format has them (a
/// date with `UTC`, a two-digit year in the IMF form, doubled spaces or a one-digit hour is
/// not a date).
fn lenient_date(text: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let month = |t: &str| {
        MONTHS
            .iter()
            .position(|m| t.eq_ignore_ascii_case(m))
            .map(|m| m as u64 + 1)
    };
    let digits = |t: &str, n: usize| {
        (t.len() == n && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse::<u64>().ok())
            .flatten()
    };
    let time = |t: &str| {
        let mut p = t.split(':');
        let (h, m, s) = (
            digits(p.next()?, 2)?,
            digits(p.next()?, 2)?,
            digits(p.next()?, 2)?,
        );
        (p.next().is_none() && h < 24 && m < 60 && s < 61).then_some(h * 3600 + m * 60 + s)
    };
    let alpha = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphabetic());
    let text = text.trim();
    let tokens: Vec<&str> = text.split(' ').collect();
    let (day, mon, year, secs) = match tokens[..] {
        // IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`
        [wd, d, m, y, t, z]
            if wd.len() == 4 && wd.ends_with(',') && alpha(&wd[..3]) && z.eq_ignore_ascii_case("gmt") =>
        {
            (digits(d, 2)?, month(m)?, digits(y, 4)?, time(t)?)
        }
        // RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT`
        [wd, dmy, t, z]
            if wd.ends_with(',') && alpha(&wd[..wd.len() - 1]) && z.eq_ignore_ascii_case("gmt") =>
        {
            let mut p = dmy.split('-');
            let (d, m, y) = (digits(p.next()?, 2)?, month(p.next()?)?, digits(p.next()?, 2)?);
            p.next().is_none().then_some(())?;
            (d, m, if y < 50 { 2000 + y } else { 1900 + y }, time(t)?)
        }
        // asctime: `Sun Nov  6 08:49:37 1994`
        _ if text.len() == 24 && text.is_char_boundary(24) => {
            let b = text.as_bytes();
            (b[3] == b' ' && b[7] == b' ' && b[10] == b' ' && b[19] == b' ' && alpha(&text[..3]))
                .then_some(())?;
            let d = text[8..10].trim_start();
            (d.len() == 1 || !text[8..10].starts_with(' ')).then_some(())?;
            let d = d
                .parse::<u64>()
                .ok()
                .filter(|_| d.bytes().all(|c| c.is_ascii_digit()))?;
            (
                d,
                month(&text[4..7])?,
                digits(&text[20..24], 4)?,
                time(&text[11..19])?,
            )
        }
        _ => return None,
    };
    (1..=31).contains(&day).then_some(())?;
    // Days from the civil date (Howard Hinnant's algorithm), March-based years.
    let (y, m) = if mon <= 2 {
        (year - 1, mon + 9)
    } else {
        (year, mon - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + secs)
}

/// Why a response is not stored (for `Cache-Status`'s `detail`), or that it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storable {
    /// It may be stored.
    Yes,
    /// It may not: the reason, as `Cache-Status` says it.
    No(&'static str),
}

/// Whether a shared cache may store the response to `method` with `request` headers (§3);
/// one that sets a cookie only when `cookies` (the route's `set_cookie` stores them or strips).
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    req: &Directives,
    status: StatusCode,
    response: &HeaderMap,
    res: &Directives,
    cookies: bool,
) -> Storable {
    if method != Method::GET {
        return Storable::No("method");
    }
    let code = status.as_u16();
    if !(200..600).contains(&code) || code == 206 || code == 304 {
        return Storable::No("status");
    }
    // `must-understand` (§5.2.2.3): a status whose caching rules this cache does not know
    // (not a registered code) is never stored; for one it knows, the `no-store` beside the
    // directive is meant for caches that do not understand it, and is ignored.
    let must_understand = res.has("must-understand");
    if must_understand && status.canonical_reason().is_none() {
        return Storable::No("must-understand");
    }
    if req.has("no-store") || (res.has("no-store") && !must_understand) {
        return Storable::No("no-store");
    }
    if res.unqualified("private") {
        return Storable::No("private");
    }
    if request.contains_key(header::AUTHORIZATION)
        && !(res.has("must-revalidate") || res.has("public") || res.has("s-maxage"))
    {
        return Storable::No("authorization");
    }
    if vary_names(response).is_none() {
        return Storable::No("vary-star");
    }
    if response.contains_key(header::SET_COOKIE) && !cookies {
        // The RFC allows it; a shared cache handing one client's cookie to the next does not.
        return Storable::No("set-cookie");
    }
    let explicit = res.has("max-age") || res.has("s-maxage") || response.contains_key(header::EXPIRES);
    if !(explicit || res.has("public") || HEURISTIC_STATUSES.contains(&code)) {
        return Storable::No("status");
    }
    Storable::Yes
}

/// The header names `Vary` lists, lowercased; `None` for `Vary: *` (never reusable).
pub fn vary_names(headers: &HeaderMap) -> Option<Vec<HeaderName>> {
    let mut names = Vec::new();
    for value in headers.get_all(header::VARY) {
        let Ok(text) = value.to_str() else { continue };
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            if let Ok(n) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Some(names)
}

/// The freshness lifetime in seconds a shared cache gives a response (§4.2.1): `s-maxage`,
/// else `max-age`, else `Expires` − `Date`, else the heuristic of §4.2.2 (a tenth of the time
/// since `Last-Modified`, at most a day) for a heuristically cacheable status or `public`.
pub fn lifetime_secs(status: StatusCode, headers: &HeaderMap, res: &Directives, date: u64) -> u64 {
    if let Some(s) = res.seconds("s-maxage") {
        return s;
    }
    if let Some(s) = res.seconds("max-age") {
        return s;
    }
    if headers.contains_key(header::EXPIRES) {
        // An Expires that is not a date means "already expired" (§5.3).
        return date_secs(headers, &header::EXPIRES).map_or(0, |e| e.saturating_sub(date));
    }
    let heuristic = HEURISTIC_STATUSES.contains(&status.as_u16()) || res.has("public");
    match date_secs(headers, &header::LAST_MODIFIED) {
        Some(lm) if heuristic && lm < date => ((date - lm) * HEURISTIC_TENTHS / 10).min(HEURISTIC_MAX_SECS),
        _ => 0,
    }
}

/// The `Age` header's value (§5.1): delta-seconds; `None` when absent or not a number. A list
/// (`7200, 0`, or one per line) is read by its first member, as a recipient of a field sent
/// twice by mistake should.
pub fn age_value(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::AGE)?.to_str().ok()?;
    delta(value.split(',').next()?.trim())
}

/// The age a response had when it arrived (§4.2.3's `corrected_initial_age`), from the times
/// the request was sent and the response received (seconds since the epoch) and its `Date`.
pub fn initial_age(headers: &HeaderMap, date: Option<u64>, request_time: u64, response_time: u64) -> u64 {
    let apparent = date.map_or(0, |d| response_time.saturating_sub(d));
    let delay = response_time.saturating_sub(request_time);
    let corrected = age_value(headers).unwrap_or(0).saturating_add(delay);
    apparent.max(corrected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn directives_parse_tokens_quoted_values_and_repeats() {
        let h = headers(&[
            (
                "cache-control",
                "Max-Age=60, no-cache=\"Set-Cookie, X-A\", public",
            ),
            ("cache-control", "s-maxage = 5"),
        ]);
        let d = Directives::of(&h, &header::CACHE_CONTROL).unwrap();
        assert_eq!(d.seconds("max-age"), Some(60));
        assert_eq!(d.seconds("s-maxage"), Some(5));
        assert_eq!(d.fields("no-cache").unwrap(), vec!["set-cookie", "x-a"]);
        assert!(!d.unqualified("no-cache"));
        assert!(d.has("public"));
        let bad = headers(&[("cache-control", "max-age=abc, max-age=-1")]);
        assert_eq!(
            Directives::of(&bad, &header::CACHE_CONTROL)
                .unwrap()
                .seconds("max-age"),
            None
        );
        let two = headers(&[("cache-control", "max-age=60, max-age=10")]);
        assert_eq!(
            Directives::of(&two, &header::CACHE_CONTROL)
                .unwrap()
                .seconds("max-age"),
            Some(0)
        );
        let huge = headers(&[("cache-control", "max-age=99999999999999999999")]);
        assert_eq!(
            Directives::of(&huge, &header::CACHE_CONTROL)
                .unwrap()
                .seconds("max-age"),
            Some(crate::origin::MAX_DELTA_SECONDS)
        );
    }

    #[test]
    fn targeted_fields_replace_cache_control() {
        let h = headers(&[("cache-control", "no-store"), ("cdn-cache-control", "max-age=30")]);
        let d = response_directives(&h);
        assert!(!d.has("no-store"));
        assert_eq!(d.seconds("max-age"), Some(30));
    }

    #[test]
    fn lifetimes_follow_the_order_of_the_rfc() {
        let ok = StatusCode::OK;
        let date = 1_000_000;
        let h = headers(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]);
        assert_eq!(lifetime_secs(ok, &h, &response_directives(&h), date), 0);
        let h = headers(&[("expires", "0")]);
        assert_eq!(lifetime_secs(ok, &h, &response_directives(&h), date), 0);
        let h = headers(&[("cache-control", "max-age=10, s-maxage=20")]);
        assert_eq!(lifetime_secs(ok, &h, &response_directives(&h), date), 20);
        let lm = httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(date - 1000));
        let h = headers(&[("last-modified", &lm)]);
        assert_eq!(lifetime_secs(ok, &h, &response_directives(&h), date), 100);
        assert_eq!(
            lifetime_secs(StatusCode::CREATED, &h, &response_directives(&h), date),
            0
        );
    }

    #[test]
    fn dates_are_read_leniently() {
        let date = |v: &str| date_secs(&headers(&[("expires", v)]), &header::EXPIRES);
        let want = Some(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        for text in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Thu Nov  6 08:49:37 1994",
            "sun, 06 NOV 1994 08:49:37 gmt",
        ] {
            assert_eq!(date(text), want, "{text}");
        }
        for bad in [
            "0",
            "tomorrow",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 94 08:49:37 GMT",
            "Sun 06 Nov 1994 08:49:37 GMT",
            "Sun, 06  Nov  1994 08:49:37 GMT",
            "Sun, 06-Nov-1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08.49.37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
        ] {
            assert_eq!(date(bad), None, "{bad}");
        }
    }

    #[test]
    fn storability_takes_the_safe_side() {
        let get = Method::GET;
        let none = HeaderMap::new();
        let check = |req: &HeaderMap, status: u16, res: &HeaderMap| {
            storable(
                &get,
                req,
                &request_directives(req),
                StatusCode::from_u16(status).unwrap(),
                res,
                &response_directives(res),
                false,
            )
        };
        assert_eq!(check(&none, 200, &none), Storable::Yes);
        assert_eq!(check(&none, 201, &none), Storable::No("status"));
        assert_eq!(
            check(&none, 201, &headers(&[("cache-control", "max-age=5")])),
            Storable::Yes
        );
        assert_eq!(
            check(&none, 200, &headers(&[("cache-control", "private")])),
            Storable::No("private")
        );
        assert_eq!(
            check(&none, 200, &headers(&[("vary", "a, *")])),
            Storable::No("vary-star")
        );
        let auth = headers(&[("authorization", "x")]);
        assert_eq!(
            check(&auth, 200, &headers(&[("cache-control", "max-age=5")])),
            Storable::No("authorization")
        );
        assert_eq!(
            check(&auth, 200, &headers(&[("cache-control", "s-maxage=5")])),
            Storable::Yes
        );
        assert_eq!(
            check(&headers(&[("cache-control", "no-store")]), 200, &none),
            Storable::No("no-store")
        );
        // must-understand: no-store is for caches that do not know the status; an unknown
        // status is never stored; a request's no-store still holds.
        let understand = headers(&[("cache-control", "max-age=60, no-store, must-understand")]);
        assert_eq!(check(&none, 200, &understand), Storable::Yes);
        assert_eq!(check(&none, 299, &understand), Storable::No("must-understand"));
        assert_eq!(
            check(&headers(&[("cache-control", "no-store")]), 200, &understand),
            Storable::No("no-store")
        );
    }

    #[test]
    fn initial_age_takes_the_larger_of_apparent_and_corrected() {
        let h = headers(&[("age", "30")]);
        assert_eq!(initial_age(&h, Some(100), 95, 100), 35);
        assert_eq!(initial_age(&HeaderMap::new(), Some(50), 99, 100), 50);
        assert_eq!(initial_age(&headers(&[("age", "-5")]), None, 100, 100), 0);
    }
}
