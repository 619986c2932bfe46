//! `POST /items:batch`: many keys in one request. Each key is answered as `GET /items/{key}`
//! would answer it (same lookup, coalescing, breaker, stale rules and counters), in one JSON
//! document in the request's order, or (`Accept: application/x-ndjson`) one line per key as soon
//! as it is ready. One key's failure never fails the batch; only the request as a whole (its
//! body, its size, its media type) can.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::AppState;
use super::items::check_key;
use crate::cache::{Answer, AnswerKind, BatchSink, CacheError};
use crate::error::AppError;
use crate::telemetry::{self, TRACE_TARGET};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const NDJSON: &str = "application/x-ndjson";

/// The request body: `{"keys": ["a", "b", …]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// The keys, in the order the answers come back; duplicates are answered in each position.
    keys: Vec<String>,
}

/// A key that could not be answered with a value, as its element says so: the `error` code and
/// message `GET /items/{key}` would have answered with.
#[derive(Serialize)]
struct Failed<'a> {
    key: &'a str,
    error: &'static str,
    message: String,
    /// The `Cache-Status` `GET` would send (a remembered or fetched 404 has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    cache: Option<&'a str>,
    /// What `GET` would send as `Retry-After` (`origin_unavailable`).
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_secs: Option<u64>,
}

/// Frames (a separator, an entry's bytes, a key's status) that may wait between a batch's work
/// and its connection. A client that stops reading holds at most these plus the connection's
/// write buffer: the batch waits for it instead of building its answer whole, and each frame
/// that carries a value is a slice of the entry's shared bytes, never a copy.
const FRAMES_IN_FLIGHT: usize = 16;

/// `POST /items:batch`.
pub async fn get_batch(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let started = Instant::now();
    let span = tracing::info_span!(target: TRACE_TARGET, "POST /items:batch",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/items:batch",
        http.response.status_code = tracing::field::Empty,
        batch.keys = tracing::field::Empty);
    let (parts, body) = request.into_parts();
    telemetry::continue_trace(&span, &parts.headers);
    let keys = match read_keys(&state, &parts.headers, body)
        .instrument(span.clone())
        .await
    {
        Ok(keys) => keys,
        Err(e) => {
            let response = e.into_response();
            span.record("http.response.status_code", response.status().as_u16());
            return response;
        }
    };
    // As i64: tracing-opentelemetry exports a u64 as a string.
    span.record("batch.keys", keys.len() as i64);
    span.record("http.response.status_code", 200);
    let deadline = tokio::time::Instant::from_std(started) + state.request_timeout;
    let ndjson = wants_ndjson(&parts.headers);
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(FRAMES_IN_FLIGHT);
    // The work runs as a task of its own, so the answer leaves while later keys are still being
    // fetched, at the pace the client reads it.
    let cache = state.cache.clone();
    cache.spawn(
        async move {
            let mut out = Writer::new(tx, ndjson);
            if out
                .send(Bytes::from_static(if ndjson { b"" } else { b"{\"items\":[" }))
                .await
            {
                answer_all(&state, &keys, deadline, &mut out).await;
                if !ndjson {
                    out.send(Bytes::from_static(b"]}")).await;
                }
                out.flush().await;
            }
            state.metrics.batch(keys.len(), started.elapsed());
        }
        .instrument(span),
    );
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|frame| (Ok::<_, std::convert::Infallible>(frame), rx))
    });
    let mut response = Response::new(Body::from_stream(frames));
    let headers = response.headers_mut();
    if ndjson {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
        // Proxies that buffer (nginx, ingress-nginx) would hold the lines back until the end.
        headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    } else {
        headers.insert(header::CONTENT_TYPE, JSON);
    }
    response
}

/// One key's answer as it is written: `head` starts with `{`, and `head` + `tail` is the JSON
/// object. For a value, `head` is the entry's own body bytes (shared, not copied).
#[derive(Clone)]
struct Element {
    head: Bytes,
    tail: Bytes,
}

/// Writes elements to the connection: JSON in the request's order (an element answered before
/// its turn waits, as shared bytes, until the ones before it are written), or NDJSON lines as
/// they come, each opened with `{"index":N,`.
struct Writer {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    ndjson: bool,
    /// JSON: the next position to write.
    next: usize,
    /// JSON: elements answered before their turn.
    early: BTreeMap<usize, Element>,
    /// Small pieces gathered into one frame (at most [`GATHER_BYTES`]): a batch of small values
    /// costs a frame per 16 KiB, not three per key.
    gathered: BytesMut,
}

/// Pieces at most this long are copied into the frame being gathered; longer ones (large values)
/// go as frames of their own, slices of the entry's shared bytes.
const COPY_BYTES: usize = 1024;

/// A gathered frame is handed to the connection once it holds this much.
const GATHER_BYTES: usize = 16 * 1024;

impl Writer {
    fn new(tx: tokio::sync::mpsc::Sender<Bytes>, ndjson: bool) -> Self {
        Writer {
            tx,
            ndjson,
            next: 0,
            early: BTreeMap::new(),
            gathered: BytesMut::new(),
        }
    }

    /// Writes one piece: a small one is gathered, a large one goes as a frame of its own after
    /// what was gathered; waits while the connection is full; `false` once the client is gone.
    async fn send(&mut self, piece: Bytes) -> bool {
        if piece.len() <= COPY_BYTES {
            self.gathered.extend_from_slice(&piece);
            return self.gathered.len() < GATHER_BYTES || self.flush().await;
        }
        self.flush().await && self.tx.send(piece).await.is_ok()
    }

    /// Hands what was gathered to the connection (before the batch waits on a fetch, and at its
    /// end); `false` once the client is gone.
    async fn flush(&mut self) -> bool {
        if self.gathered.is_empty() {
            return !self.tx.is_closed();
        }
        let frame = self.gathered.split().freeze();
        self.tx.send(frame).await.is_ok()
    }

    /// Writes (or keeps for its turn) the element of position `at`; `false` once the client is
    /// gone.
    async fn put(&mut self, at: usize, element: &Element) -> bool {
        if self.ndjson {
            // The line's opening is written where it is gathered: no string of its own.
            let _ = write!(self.gathered, "{{\"index\":{at},");
            return self.send(element.head.slice(1..)).await
                && self.send(element.tail.clone()).await
                && self.send(Bytes::from_static(b"\n")).await;
        }
        if at != self.next {
            self.early.insert(at, element.clone());
            return true;
        }
        let mut element = element.clone();
        loop {
            let separator = Bytes::from_static(if self.next == 0 { b"" } else { b"," });
            if !(self.send(separator).await && self.send(element.head).await && self.send(element.tail).await)
            {
                return false;
            }
            self.next += 1;
            match self.early.remove(&self.next) {
                Some(later) => element = later,
                None => return true,
            }
        }
    }

    /// Resolves when the client is gone.
    async fn closed(&self) {
        self.tx.closed().await
    }
}

/// The answers of the distinct keys, written at every position that asked for them.
struct Answers<'a> {
    state: &'a AppState,
    distinct: &'a [&'a str],
    positions: &'a [Vec<usize>],
    out: &'a mut Writer,
}

impl BatchSink for Answers<'_> {
    async fn answer(&mut self, d: usize, result: Result<Answer, CacheError>) -> bool {
        let element = render(self.state, self.distinct[d], result);
        for &at in &self.positions[d] {
            if !self.out.put(at, &element).await {
                return false;
            }
        }
        true
    }

    async fn closed(&self) {
        self.out.closed().await
    }

    async fn flush(&mut self) -> bool {
        self.out.flush().await
    }
}

/// Answers every position of `keys` through `out`, as each answer is known: bad keys at once,
/// then each distinct key once (duplicates get the same element, the same shared bytes, in
/// each of their positions) through [`crate::cache::ReadThrough::get_many`]. Stops early when
/// the client is gone.
async fn answer_all(state: &AppState, keys: &[String], deadline: tokio::time::Instant, out: &mut Writer) {
    let mut distinct: Vec<&str> = Vec::new();
    let mut positions: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    for (at, key) in keys.iter().enumerate() {
        if let Err(e) = check_key(key, state.max_key_bytes) {
            if !out.put(at, &failed(key, &e, None)).await {
                return;
            }
            continue;
        }
        let d = *seen.entry(key.as_str()).or_insert_with(|| {
            distinct.push(key);
            positions.push(Vec::new());
            distinct.len() - 1
        });
        positions[d].push(at);
    }
    let mut answers = Answers {
        state,
        distinct: &distinct,
        positions: &positions,
        out,
    };
    let concurrency = state.batch.origin_concurrency;
    state
        .cache
        .get_many(&distinct, deadline, concurrency, &mut answers)
        .await;
}

/// One key's element: the body `GET /items/{key}` would answer with, plus `cache` (its
/// `Cache-Status`), or the error it would answer with.
fn render(state: &AppState, key: &str, result: Result<Answer, CacheError>) -> Element {
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => return failed(key, &AppError::from(e), None),
    };
    let status = state.headers.cache_status(answer.kind);
    let status = status.to_str().unwrap_or_default();
    if answer.entry.negative {
        return failed(key, &AppError::key_not_found(), Some(status));
    }
    let source: &[u8] = match answer.kind {
        AnswerKind::Fetched { .. } => b",\"source\":\"origin\",\"cache\":",
        _ => b",\"source\":\"cache\",\"cache\":",
    };
    let mut tail = Vec::with_capacity(source.len() + status.len() + 3);
    tail.extend_from_slice(source);
    let _ = serde_json::to_writer(&mut tail, status);
    tail.push(b'}');
    Element {
        head: answer.entry.body_head(),
        tail: Bytes::from(tail),
    }
}

/// The element of a key answered with `error`.
fn failed(key: &str, error: &AppError, cache: Option<&str>) -> Element {
    if let AppError::Internal(detail) = error {
        tracing::error!(%detail, "internal error");
    }
    let element = Failed {
        key,
        error: error.code(),
        message: error.to_string(),
        cache,
        retry_after_secs: error.retry_after_secs(),
    };
    Element {
        head: Bytes::from(serde_json::to_vec(&element).unwrap_or_else(|_| b"{}".to_vec())),
        tail: Bytes::new(),
    }
}

/// The keys of a batch request: a JSON body (`415` otherwise) of at most
/// `BATCH_MAX_BODY_BYTES` (`413`), arriving within `HTTP_BODY_TIMEOUT_SECS` (`408`), of the
/// shape `{"keys": [strings]}` (`400`), with at most `BATCH_MAX_KEYS` keys (`413`).
async fn read_keys(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Vec<String>, AppError> {
    if !is_json(headers.get(header::CONTENT_TYPE)) {
        return Err(AppError::UnsupportedMediaType(
            "the body must be JSON: send Content-Type: application/json".to_owned(),
        ));
    }
    let limits = state.batch;
    let too_large = || {
        AppError::TooLarge(format!(
            "the body is larger than {} bytes (BATCH_MAX_BODY_BYTES)",
            limits.max_body_bytes
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body_bytes as u64) {
        return Err(too_large());
    }
    let read = Limited::new(body, limits.max_body_bytes).collect();
    let bytes = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(too_large()),
        Ok(Err(_)) => {
            return Err(AppError::BadRequest(
                "the request body could not be read (malformed or cut short)".to_owned(),
            ));
        }
        Err(_) => return Err(AppError::RequestTimeout),
    };
    let batch: BatchBody = serde_json::from_slice(&bytes).map_err(|e| {
        AppError::BadRequest(format!(
            "the body must be a JSON object {{\"keys\": [\"…\", …]}} of strings: {e}"
        ))
    })?;
    if batch.keys.len() > limits.max_keys {
        return Err(AppError::TooLarge(format!(
            "a batch may ask for at most {} keys (BATCH_MAX_KEYS); this one asks for {}",
            limits.max_keys,
            batch.keys.len()
        )));
    }
    Ok(batch.keys)
}

/// `application/json` or any `application/…+json`, parameters (a charset) allowed.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Whether the client asked for NDJSON (`Accept: application/x-ndjson`, not refused with `q=0`).
fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut params = range.split(';').map(str::trim);
            let accepted = params.next().is_some_and(|m| m.eq_ignore_ascii_case(NDJSON));
            let refused = params.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            accepted && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_media_types_are_recognised() {
        let is = |v: &'static str| is_json(Some(&HeaderValue::from_static(v)));
        assert!(is("application/json"));
        assert!(is("Application/JSON; charset=utf-8"));
        assert!(is("application/vnd.api+json"));
        assert!(!is("text/plain"));
        assert!(!is("application/x-www-form-urlencoded"));
        assert!(!is_json(None));
    }

    #[test]
    fn ndjson_is_chosen_by_accept() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_static(v));
            wants_ndjson(&h)
        };
        assert!(with("application/x-ndjson"));
        assert!(with("application/json;q=0.5, application/x-ndjson"));
        assert!(!with("application/json"));
        assert!(!with("application/x-ndjson;q=0"));
        assert!(!wants_ndjson(&HeaderMap::new()));
    }
}
