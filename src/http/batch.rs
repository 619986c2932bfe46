//! `POST /items:batch`: many keys in one request. Each key is answered as `GET /items/{key}`
//! would answer it (same lookup, coalescing, breaker, stale rules and counters), in one JSON
//! document in the request's order, or (`Accept: application/x-ndjson`) one line per key as soon
//! as it is ready. One key's failure never fails the batch; only the request as a whole (its
//! body, its size, its media type) can.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::AppState;
use super::items::check_key;
use crate::cache::{Answer, AnswerKind, CacheError};
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
    if wants_ndjson(&parts.headers) {
        return stream(state, keys, deadline, started, span);
    }
    let mut items: Vec<Bytes> = vec![Bytes::new(); keys.len()];
    answer_all(&state, &keys, deadline, |at, element| items[at] = element.clone())
        .instrument(span)
        .await;
    state.metrics.batch(keys.len(), started.elapsed());
    let len = items.iter().map(|e| e.len() + 1).sum::<usize>() + 12;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(b"{\"items\":[");
    for (i, element) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(element);
    }
    out.extend_from_slice(b"]}");
    let mut response = Response::new(Body::from(out));
    response.headers_mut().insert(header::CONTENT_TYPE, JSON);
    response
}

/// The NDJSON answer: one line per requested key, `{"index":…,"key":…,…}`, written as each key
/// is answered (hits first, then misses as their fetches complete). The work runs as a task of
/// its own, so lines leave while later keys are still being fetched.
fn stream(
    state: Arc<AppState>,
    keys: Vec<String>,
    deadline: tokio::time::Instant,
    started: Instant,
    span: tracing::Span,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(
        async move {
            answer_all(&state, &keys, deadline, |at, element| {
                // `{"index":N,` + the element without its `{`, then a newline.
                let mut line = Vec::with_capacity(element.len() + 24);
                line.extend_from_slice(b"{\"index\":");
                line.extend_from_slice(at.to_string().as_bytes());
                line.push(b',');
                line.extend_from_slice(&element[1..]);
                line.push(b'\n');
                // A client that went away stops reading; the fetches still complete and are
                // stored for the next request.
                let _ = tx.send(Bytes::from(line));
            })
            .await;
            state.metrics.batch(keys.len(), started.elapsed());
        }
        .instrument(span),
    );
    let lines = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    let mut response = Response::new(Body::from_stream(lines));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    // Proxies that buffer (nginx, ingress-nginx) would hold the lines back until the end.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Answers every position of `keys`, handing `element(position, json)` each answer as soon as
/// it is known: bad keys at once, then each distinct key once (duplicates get the same element
/// in each of their positions) through [`crate::cache::ReadThrough::get_many`].
async fn answer_all(
    state: &AppState,
    keys: &[String],
    deadline: tokio::time::Instant,
    mut element: impl FnMut(usize, &Bytes),
) {
    let mut distinct: Vec<&str> = Vec::new();
    let mut positions: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    for (at, key) in keys.iter().enumerate() {
        if let Err(e) = check_key(key, state.max_key_bytes) {
            element(at, &failed(key, &e, None));
            continue;
        }
        let d = *seen.entry(key.as_str()).or_insert_with(|| {
            distinct.push(key);
            positions.push(Vec::new());
            distinct.len() - 1
        });
        positions[d].push(at);
    }
    let cache = &state.cache;
    let concurrency = state.batch.origin_concurrency;
    cache
        .get_many(&distinct, deadline, concurrency, |d, result| {
            let rendered = render(state, distinct[d], result);
            for &at in &positions[d] {
                element(at, &rendered);
            }
        })
        .await;
}

/// One key's element: the body `GET /items/{key}` would answer with, plus `cache` (its
/// `Cache-Status`), or the error it would answer with.
fn render(state: &AppState, key: &str, result: Result<Answer, CacheError>) -> Bytes {
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => return failed(key, &AppError::from(e), None),
    };
    let status = state.headers.cache_status(answer.kind);
    let status = status.to_str().unwrap_or_default();
    if answer.entry.negative {
        return failed(key, &AppError::key_not_found(), Some(status));
    }
    let body = match answer.kind {
        AnswerKind::Fetched { .. } => answer.entry.origin_body(),
        _ => answer.entry.cache_body(),
    };
    // The entry's pre-rendered object, its closing brace replaced by `,"cache":"…"}`.
    let mut out = Vec::with_capacity(body.len() + status.len() + 12);
    out.extend_from_slice(&body[..body.len() - 1]);
    out.extend_from_slice(b",\"cache\":");
    let _ = serde_json::to_writer(&mut out, status);
    out.push(b'}');
    Bytes::from(out)
}

/// The element of a key answered with `error`.
fn failed(key: &str, error: &AppError, cache: Option<&str>) -> Bytes {
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
    Bytes::from(serde_json::to_vec(&element).unwrap_or_default())
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
