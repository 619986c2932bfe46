//! Conditional requests from clients (RFC 9110 §13): a client that holds the value already gets
//! `304 Not Modified` and no body.

use axum::http::{HeaderMap, HeaderValue, header};

use crate::origin::{http_date_ms, opaque_tag as opaque};

/// Whether a `GET`/`HEAD` with these headers may be answered `304` for a representation with
/// `etag` (weak, as every `ETag` this service sends) and the origin's `last_modified`.
/// `If-None-Match` decides when present (weak comparison, lists, `*`); otherwise
/// `If-Modified-Since`, compared with `Last-Modified` when both are dates. A request with
/// neither never gets a `304`.
pub fn not_modified(request: &HeaderMap, etag: &HeaderValue, last_modified: Option<&str>) -> bool {
    let mut conditions = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if conditions.peek().is_some() {
        let ours = opaque(etag.as_bytes());
        return conditions
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(trim)
            .any(|tag| tag == b"*" || (!tag.is_empty() && opaque(tag) == ours));
    }
    let since = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(http_date_ms);
    match (since, last_modified.and_then(http_date_ms)) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETAG: HeaderValue = HeaderValue::from_static("W/\"abc\"");
    const MODIFIED: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn if_none_match_compares_weakly_in_lists_and_star() {
        for matching in ["W/\"abc\"", "\"abc\"", "\"x\", W/\"abc\"", "*", " \"abc\" "] {
            assert!(
                not_modified(&request(&[("if-none-match", matching)]), &ETAG, None),
                "{matching}"
            );
        }
        for other in ["\"abcd\"", "W/\"x\"", "", "abc"] {
            assert!(
                !not_modified(&request(&[("if-none-match", other)]), &ETAG, None),
                "{other}"
            );
        }
        let two_lines = request(&[("if-none-match", "\"x\""), ("if-none-match", "\"abc\"")]);
        assert!(not_modified(&two_lines, &ETAG, None));
    }

    #[test]
    fn if_modified_since_counts_only_without_if_none_match() {
        let later = ("if-modified-since", "Sun, 06 Nov 1994 09:00:00 GMT");
        let earlier = ("if-modified-since", "Sun, 06 Nov 1994 08:00:00 GMT");
        assert!(not_modified(&request(&[later]), &ETAG, Some(MODIFIED)));
        assert!(!not_modified(&request(&[earlier]), &ETAG, Some(MODIFIED)));
        assert!(!not_modified(&request(&[later]), &ETAG, None));
        assert!(!not_modified(
            &request(&[later, ("if-none-match", "\"x\"")]),
            &ETAG,
            Some(MODIFIED)
        ));
        assert!(!not_modified(
            &request(&[("if-modified-since", "garbage")]),
            &ETAG,
            Some(MODIFIED)
        ));
    }

    #[test]
    fn no_condition_never_gets_a_304() {
        assert!(!not_modified(&HeaderMap::new(), &ETAG, Some(MODIFIED)));
    }
}
