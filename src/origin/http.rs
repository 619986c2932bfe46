//! An HTTP origin reached through a URL template; the key can never leave its place in the URL.

use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH,
};

use super::{CacheHeaders, Fetched, Origin, OriginError, TagRules, Validators};
use crate::descriptors::Relief;

/// Everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`) is percent-encoded.
const KEY_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `ORIGIN_URL` split at each `{key}` once, at start-up, so building a fetch's URL only joins
/// strings, and the key (percent-encoded) can never leave its place in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlTemplate {
    /// The text around each `{key}`: at least two pieces, since the template holds one.
    pieces: Vec<String>,
}

impl UrlTemplate {
    /// The template, if it is an `http://` or `https://` URL with a host and at least one
    /// `{key}`; configuration names the variable when it is not.
    pub fn parse(template: &str) -> Option<Self> {
        if !template.contains("{key}") {
            return None;
        }
        let probe = url::Url::parse(&template.replace("{key}", "k")).ok()?;
        if !matches!(probe.scheme(), "http" | "https") || probe.host_str().is_none() {
            return None;
        }
        Some(UrlTemplate {
            pieces: template.split("{key}").map(str::to_owned).collect(),
        })
    }

    /// The URL for `key`: the key percent-encoded wherever `{key}` stands.
    pub fn url_for(&self, key: &str) -> String {
        let encoded = utf8_percent_encode(key, KEY_ENCODE).to_string();
        self.pieces.join(&encoded)
    }
}

/// Fetches `GET <template with {key} replaced>` from an HTTP API.
pub struct HttpOrigin {
    /// Where each key is fetched from.
    template: UrlTemplate,
    /// Sent as `Authorization` when set (`ORIGIN_AUTHORIZATION`), already marked sensitive.
    authorization: Option<HeaderValue>,
    /// Shared connection pool.
    client: reqwest::Client,
    /// Larger bodies are refused.
    max_body_bytes: usize,
    /// Where the origin's tags are read from, and their limits.
    tags: TagRules,
    /// Frees a descriptor (an idle client connection) when a connect finds none left.
    relief: Relief,
}

impl HttpOrigin {
    /// An origin for `template`. Its settings are parsed already; only the HTTP client itself
    /// can fail to build (its TLS set-up), which is not a setting.
    pub fn new(
        template: UrlTemplate,
        authorization: Option<HeaderValue>,
        max_body_bytes: usize,
        tags: TagRules,
        relief: Relief,
    ) -> Result<Self, String> {
        // Never follow redirects: a read-through cache fetches exactly the URL its template
        // names, so a 3xx cannot send it (with ORIGIN_AUTHORIZATION) to another address.
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(concat!("cache-layer/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(HttpOrigin {
            template,
            authorization,
            client,
            max_body_bytes,
            tags,
            relief,
        })
    }
}

impl Origin for HttpOrigin {
    async fn fetch(
        &self,
        key: &str,
        traceparent: Option<String>,
        validators: Option<&Validators>,
    ) -> Result<Fetched, OriginError> {
        let mut request = self.client.get(self.template.url_for(key));
        if let Some(v) = validators {
            if let Some(etag) = &v.etag {
                request = request.header(IF_NONE_MATCH, etag.as_str());
            }
            if let Some(date) = &v.last_modified {
                request = request.header(IF_MODIFIED_SINCE, date.as_str());
            }
        }
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        if let Some(tp) = traceparent {
            request = request.header("traceparent", tp);
        }
        let mut response = self.relief.send(request).await.map_err(|failed| {
            if failed.out_of_descriptors {
                OriginError::OutOfDescriptors
            } else {
                transport(failed.error)
            }
        })?;
        let status = response.status().as_u16();
        let mut caching = CacheHeaders::read(status, response.headers());
        (caching.tags, caching.tags_ignored) = self.tags.read(response.headers());
        match status {
            200..=299 => {}
            404 | 410 => return Ok(Fetched::NotFound(caching)),
            // Only an answer to a conditional request; unasked, a 304 is the origin's mistake.
            304 if validators.is_some_and(Validators::any) => return Ok(Fetched::NotModified(caching)),
            300..=399 if status != 304 => return Err(OriginError::Redirect(status)),
            other => return Err(OriginError::Status(other)),
        }
        if response
            .content_length()
            .is_some_and(|n| n as usize > self.max_body_bytes)
        {
            return Err(OriginError::TooLarge(self.max_body_bytes));
        }
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type);
        // Left in place, the header names a coding the client did not decode: a spelling it
        // missed (`GZIP`, `x-gzip`) is decoded here; anything else (`compress`, two codings)
        // cannot be stored as identity, so it is refused.
        let undecoded = response
            .headers()
            .get(CONTENT_ENCODING)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty() && v != "identity");
        let coding = match undecoded.as_deref() {
            None => None,
            Some("gzip" | "x-gzip") => Some(Decode::Gzip),
            Some("deflate") => Some(Decode::Deflate),
            Some("br") => Some(Decode::Br),
            Some(_) => return Err(OriginError::BadEncoding),
        };
        let mut body = BytesMut::new();
        let read_error = |e: reqwest::Error| {
            if e.is_decode() {
                OriginError::BadEncoding
            } else {
                transport(e)
            }
        };
        while let Some(chunk) = response.chunk().await.map_err(read_error)? {
            if body.len() + chunk.len() > self.max_body_bytes {
                return Err(OriginError::TooLarge(self.max_body_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        let body = match coding {
            None => body.freeze(),
            Some(coding) => {
                let max = self.max_body_bytes;
                tokio::task::spawn_blocking(move || coding.decode(&body, max))
                    .await
                    .map_err(|_| OriginError::BadEncoding)??
            }
        };
        Ok(Fetched::Value(value_json(&body, is_json)?, caching))
    }
}

/// A content coding the HTTP client left undecoded (a spelling it does not know) and this
/// module decodes itself.
#[derive(Debug, Clone, Copy)]
enum Decode {
    Gzip,
    /// HTTP's `deflate`: zlib-wrapped (RFC 9110 §8.4.1.2).
    Deflate,
    Br,
}

impl Decode {
    /// `raw` decoded, at most `max` bytes of it (`TooLarge` past that: a bomb is refused).
    fn decode(self, raw: &[u8], max: usize) -> Result<Bytes, OriginError> {
        use std::io::Read;
        let reader: Box<dyn Read> = match self {
            Decode::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Decode::Deflate => Box::new(flate2::read::ZlibDecoder::new(raw)),
            Decode::Br => Box::new(brotli::Decompressor::new(raw, 4096)),
        };
        let mut out = Vec::new();
        reader
            .take(max as u64 + 1)
            .read_to_end(&mut out)
            .map_err(|_| OriginError::BadEncoding)?;
        if out.len() > max {
            return Err(OriginError::TooLarge(max));
        }
        Ok(Bytes::from(out))
    }
}

/// A transport error with its whole chain of causes, for the log.
fn transport(e: reqwest::Error) -> OriginError {
    if crate::descriptors::caused_by_exhaustion(&e) {
        return OriginError::OutOfDescriptors;
    }
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    OriginError::Transport(detail)
}

/// `application/json` and `…+json`, parameters ignored.
fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The value as JSON: the body itself when it is JSON, else the body as a JSON string.
fn value_json(body: &[u8], is_json: bool) -> Result<Bytes, OriginError> {
    if is_json {
        let raw: &serde_json::value::RawValue =
            serde_json::from_slice(body).map_err(|_| OriginError::BadJson)?;
        Ok(Bytes::copy_from_slice(raw.get().as_bytes()))
    } else {
        let text = String::from_utf8_lossy(body);
        Ok(Bytes::from(
            serde_json::to_vec(&text).expect("a string serialises"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_cannot_leave_their_place_in_the_url() {
        let o = UrlTemplate::parse("http://o/items/{key}?v=1&k={key}").unwrap();
        assert_eq!(
            o.url_for("../admin"),
            "http://o/items/..%2Fadmin?v=1&k=..%2Fadmin"
        );
        assert_eq!(o.url_for("x?y=1"), "http://o/items/x%3Fy%3D1?v=1&k=x%3Fy%3D1");
        assert_eq!(o.url_for("a&b=c"), "http://o/items/a%26b%3Dc?v=1&k=a%26b%3Dc");
        assert_eq!(o.url_for("%2F"), "http://o/items/%252F?v=1&k=%252F");
        assert_eq!(o.url_for("é ~"), "http://o/items/%C3%A9%20~?v=1&k=%C3%A9%20~");
    }

    #[test]
    fn codings_the_client_missed_are_decoded_within_the_limit() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"a\":1}").unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(&Decode::Gzip.decode(&gz, 100).unwrap()[..], b"{\"a\":1}");
        assert_eq!(Decode::Gzip.decode(&gz, 3), Err(OriginError::TooLarge(3)));
        assert_eq!(
            Decode::Br.decode(b"not brotli", 100),
            Err(OriginError::BadEncoding)
        );
    }

    #[test]
    fn json_bodies_stay_json_and_others_become_strings() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/problem+json"));
        assert!(!is_json_media_type("text/plain"));
        assert_eq!(&value_json(b" {\"a\":1} ", true).unwrap()[..], b"{\"a\":1}");
        assert_eq!(&value_json(b"hi \"x\"", false).unwrap()[..], br#""hi \"x\"""#);
        assert_eq!(value_json(b"{", true), Err(OriginError::BadJson));
    }
}
