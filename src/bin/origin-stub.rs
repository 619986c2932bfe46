//! `origin-stub`: a real HTTP origin for tests, benchmarks and trying the service by hand.
//!
//! It answers every path with `{"path": "<request target>", "n": <how many requests it has
//! served, this one included>}` (JSON, or plain text), after a
//! configurable delay, or fails as told, and counts what it served at `GET /_stub/stats`.
//!
//! Environment: `STUB_LISTEN_ADDR` (127.0.0.1:8080), `STUB_LATENCY_MS` (0), `STUB_MODE`
//! (`ok`, `fixed` (the same body every time: no `n`), `dir:<path>` (the file
//! `<path>/<last path segment>.json`), `status:<code>`,
//! `redirect:<code>:<location>`, `hang`, `big`, `bytes:<n>`, `encoded:<gzip|deflate|br>`, `bomb`, `badgzip`), `STUB_CONTENT_TYPE` (`json` or
//! `text`), `STUB_HEADERS` (extra response headers, `Name: value` lines; `{tags}` in a value
//! stands for the key's own tags: a key `name~tag1~tag2` gets `tag1 tag2`).
//! Control: `POST /_stub/config?mode=…&latency_ms=…&content_type=…`, `POST /_stub/headers` (a
//! JSON list of `[name, value]` pairs: the extra headers of every answer from now on, 404s and
//! 304s included), `POST /_stub/reset`.
//! A path containing `missing` always gets a 404, and one containing `broken` a 500 (so one
//! request, e.g. a batch, can mix answers). With an `ETag` (or `Last-Modified`) among its
//! headers, a request whose `If-None-Match` (or `If-Modified-Since`) matches gets `304` and no
//! body; `/_stub/stats` counts conditional requests and the 304s sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

/// What the stub does with each data request.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct Behaviour {
    mode: String,
    latency_ms: u64,
    content_type: String,
    /// Extra headers on every answer.
    headers: Vec<(String, String)>,
}

/// One data request as received.
#[derive(Clone, Debug, Serialize)]
struct Seen {
    /// The request's method.
    method: String,
    /// The request target exactly as it arrived (path and query, still percent-encoded).
    target: String,
    /// Every request header, lowercased name to value (values of a repeated name joined by
    /// `, `): what a proxy in front forwarded.
    headers: std::collections::BTreeMap<String, String>,
    traceparent: Option<String>,
    authorization: Option<String>,
    if_none_match: Option<String>,
    if_modified_since: Option<String>,
}

#[derive(Default, Serialize)]
struct Stats {
    /// Data requests answered (whatever the answer).
    served: u64,
    /// Of those, requests that carried `If-None-Match` or `If-Modified-Since`.
    conditional: u64,
    /// Of those, the ones answered `304 Not Modified`.
    not_modified: u64,
    /// The most recent requests (up to 10,000), oldest first.
    requests: std::collections::VecDeque<Seen>,
}

struct Stub {
    behaviour: Mutex<Behaviour>,
    stats: Mutex<Stats>,
    /// Data requests being answered now, and the most there have been at once.
    in_flight: std::sync::atomic::AtomicU64,
    max_in_flight: std::sync::atomic::AtomicU64,
}

#[derive(Deserialize)]
struct ConfigQuery {
    mode: Option<String>,
    latency_ms: Option<u64>,
    content_type: Option<String>,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() {
    // Configured by STUB_* variables only: an argument is a mistake, not a request to serve.
    if let Some(arg) = std::env::args().nth(1) {
        let help = matches!(arg.as_str(), "--help" | "-h");
        let text = "origin-stub: a test origin for cache-layer, configured by STUB_LISTEN_ADDR, STUB_LATENCY_MS, STUB_MODE, STUB_CONTENT_TYPE and STUB_HEADERS (README: the origin stub)";
        if help {
            println!("{text}");
            return;
        }
        eprintln!("{text}; unknown argument {arg:?}");
        std::process::exit(2);
    }
    let addr = env_or("STUB_LISTEN_ADDR", "127.0.0.1:8080");
    let behaviour = Behaviour {
        mode: env_or("STUB_MODE", "ok"),
        latency_ms: env_or("STUB_LATENCY_MS", "0")
            .parse()
            .expect("STUB_LATENCY_MS: a whole number"),
        content_type: env_or("STUB_CONTENT_TYPE", "json"),
        headers: env_or("STUB_HEADERS", "")
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect(),
    };
    let stub = Arc::new(Stub {
        behaviour: Mutex::new(behaviour),
        stats: Mutex::default(),
        in_flight: Default::default(),
        max_in_flight: Default::default(),
    });
    let app = Router::new()
        .route("/_stub/stats", get(stats))
        .route("/_stub/config", post(configure))
        .route("/_stub/reset", post(reset))
        .route("/_stub/headers", post(set_headers))
        .fallback(serve)
        .with_state(stub);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .expect("bind STUB_LISTEN_ADDR");
    eprintln!(
        "origin-stub listening on {}",
        listener.local_addr().expect("bound")
    );
    axum::serve(listener, app).await.expect("serve");
}

async fn serve(State(stub): State<Arc<Stub>>, request: Request) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let (parts, _body) = request.into_parts();
    let header_of = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut headers = std::collections::BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let seen = Seen {
        method: parts.method.to_string(),
        headers,
        target: target.clone(),
        traceparent: header_of("traceparent"),
        authorization: header_of("authorization"),
        if_none_match: header_of("if-none-match"),
        if_modified_since: header_of("if-modified-since"),
    };
    drop(parts);
    let behaviour = stub.behaviour.lock().unwrap().clone();
    let configured = |name: &str| {
        behaviour
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let conditional = seen.if_none_match.is_some() || seen.if_modified_since.is_some();
    let unchanged = match (&seen.if_none_match, &seen.if_modified_since) {
        (Some(tags), _) => configured("etag").is_some_and(|etag| tags.split(',').any(|t| t.trim() == etag)),
        (None, Some(since)) => configured("last-modified").is_some_and(|m| &m == since),
        (None, None) => false,
    };
    let n = {
        let mut stats = stub.stats.lock().unwrap();
        stats.served += 1;
        stats.conditional += u64::from(conditional);
        stats.not_modified += u64::from(unchanged);
        // The most recent 10,000: the oldest goes first.
        if stats.requests.len() == 10_000 {
            stats.requests.pop_front();
        }
        stats.requests.push_back(seen);
        stats.served
    };
    // In flight from arrival to answer, the delay included: what the origin's concurrency is.
    let in_flight = stub.in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    stub.max_in_flight
        .fetch_max(in_flight, std::sync::atomic::Ordering::SeqCst);
    // No timer for no delay: a zero-length sleep still waits for the timer's next tick (about
    // 1 ms), which every "origin latency" figure measured against this stub would carry.
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    let mut response = answer(&behaviour, &target, n, unchanged).await;
    stub.in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    // `{tags}` in a header value: the key's own tags, `key~tag1~tag2` (percent-decoded).
    let segment = target
        .split('?')
        .next()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("");
    let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
    let tags = decoded.split('~').skip(1).collect::<Vec<_>>().join(" ");
    for (name, value) in &behaviour.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(&value.replace("{tags}", &tags)),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// The answer before the configured extra headers.
async fn answer(behaviour: &Behaviour, target: &str, n: u64, unchanged: bool) -> Response {
    if target.contains("missing") {
        return (StatusCode::NOT_FOUND, "no such item").into_response();
    }
    if unchanged {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    if target.contains("broken") {
        return (StatusCode::INTERNAL_SERVER_ERROR, "this item is broken").into_response();
    }
    let mode = behaviour.mode.as_str();
    if let Some(code) = mode.strip_prefix("status:") {
        let status = code
            .parse()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return (status, "the stub was told to fail").into_response();
    }
    if let Some(rest) = mode.strip_prefix("redirect:") {
        // `redirect:<code>:<location>`: a redirect the cache must not follow.
        let (code, location) = rest.split_once(':').unwrap_or(("302", "/"));
        let status = code.parse().ok().and_then(|c| StatusCode::from_u16(c).ok());
        return (
            status.unwrap_or(StatusCode::FOUND),
            [(header::LOCATION, location.to_owned())],
            "redirected",
        )
            .into_response();
    }
    if let Some(dir) = mode.strip_prefix("dir:") {
        // `dir:<path>`: the file `<path>/<last path segment>.json` (a fixed corpus), else 404.
        let name = target
            .rsplit('/')
            .next()
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("");
        let file = (!name.is_empty() && !name.contains(['.', '%', '\\']))
            .then(|| std::fs::read(std::path::Path::new(dir).join(format!("{name}.json"))).ok())
            .flatten();
        return match file {
            Some(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            None => (StatusCode::NOT_FOUND, "no such file").into_response(),
        };
    }
    if mode == "hang" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    if mode == "badgzip" {
        // `Content-Encoding: gzip` over bytes that are not gzip.
        return (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            b"this is not gzip at all".to_vec(),
        )
            .into_response();
    }
    if mode == "bomb" {
        // A small gzip body that inflates to 64 MiB of zeros: a decompression bomb.
        let zeros = vec![b'0'; 64 << 20];
        return (
            [
                (header::CONTENT_TYPE, "text/plain"),
                (header::CONTENT_ENCODING, "gzip"),
            ],
            encode("gzip", &zeros),
        )
            .into_response();
    }
    let body = if let Some(n) = mode.strip_prefix("bytes:") {
        // `bytes:<n>`: a JSON value padded to about n bytes.
        let n: usize = n.parse().unwrap_or(1024);
        serde_json::json!({ "path": target, "n": n, "padding": "x".repeat(n) }).to_string()
    } else if mode == "fixed" {
        serde_json::json!({ "path": target }).to_string()
    } else if mode == "big" {
        serde_json::json!({ "path": target, "n": n, "padding": "x".repeat(2 * 1024 * 1024) }).to_string()
    } else {
        serde_json::json!({ "path": target, "n": n }).to_string()
    };
    let content_type = if behaviour.content_type == "text" {
        "text/plain; charset=utf-8"
    } else {
        "application/json"
    };
    if let Some(coding) = mode.strip_prefix("encoded:") {
        // `encoded:<gzip|deflate|br>`: the ok body, compressed, with its Content-Encoding.
        return (
            [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_ENCODING, coding),
            ],
            encode(coding, body.as_bytes()),
        )
            .into_response();
    }
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `body` compressed in `coding` (`gzip` or `x-gzip`, `deflate` (zlib), `br`, in any case);
/// any other coding name (`compress`) gets the gzip bytes under that name.
fn encode(coding: &str, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match coding.to_ascii_lowercase().as_str() {
        "br" => {
            let mut out = Vec::new();
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(body).unwrap();
            drop(w);
            out
        }
        "deflate" => {
            let mut w = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            w.write_all(body).unwrap();
            w.finish().unwrap()
        }
        _ => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            w.write_all(body).unwrap();
            w.finish().unwrap()
        }
    }
}

async fn stats(State(stub): State<Arc<Stub>>) -> Response {
    let mut stats = serde_json::to_value(&*stub.stats.lock().unwrap()).expect("stats serialise");
    stats["max_in_flight"] = stub
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst)
        .into();
    axum::Json(stats).into_response()
}

async fn configure(State(stub): State<Arc<Stub>>, Query(q): Query<ConfigQuery>) -> Response {
    let mut b = stub.behaviour.lock().unwrap();
    if let Some(m) = q.mode {
        b.mode = m;
    }
    if let Some(l) = q.latency_ms {
        b.latency_ms = l;
    }
    if let Some(c) = q.content_type {
        b.content_type = c;
    }
    axum::Json(b.clone()).into_response()
}

async fn set_headers(
    State(stub): State<Arc<Stub>>,
    axum::Json(headers): axum::Json<Vec<(String, String)>>,
) -> Response {
    stub.behaviour.lock().unwrap().headers = headers;
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(State(stub): State<Arc<Stub>>) -> Response {
    *stub.stats.lock().unwrap() = Stats::default();
    stub.max_in_flight.store(0, std::sync::atomic::Ordering::SeqCst);
    StatusCode::NO_CONTENT.into_response()
}
