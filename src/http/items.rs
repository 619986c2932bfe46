//! `GET /items/{key}` (the read-through) and `DELETE /items/{key}` (the purge).

use std::borrow::Cow;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use subtle::ConstantTimeEq;
use tracing::Instrument;

use super::{AppState, conditional};
use crate::cache::{Answer, Coding, Entry, FetchedBody, INLINE_COMPRESS_BYTES, PurgeMode};
use crate::error::AppError;
use crate::telemetry::{self, TRACE_TARGET};

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const CACHE_STATUS: &str = "cache-status";

/// `GET /items/{key}`: the seed's JSON contract, `Cache-Status` and `Age`.
pub async fn get_item(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let span = tracing::info_span!(target: TRACE_TARGET, "GET /items/{key}",
        otel.kind = "server",
        http.request.method = "GET",
        http.route = "/items/{key}",
        http.response.status_code = tracing::field::Empty,
        cache.outcome = tracing::field::Empty);
    // The body is not `Sync`: keep only the head across the awaits.
    let (request, _body) = request.into_parts();
    telemetry::continue_trace(&span, &request.headers);
    let deadline = tokio::time::Instant::now() + state.request_timeout;
    let response = async {
        let key = key_of(request.uri.path(), state.max_key_bytes)?;
        let answer = state.cache.get(&key, state.request_timeout).await?;
        tracing::Span::current().record("cache.outcome", answer.kind.outcome());
        let coding = coding_for(&state, &answer.entry, &request.headers);
        // A fetch's body (`"source":"origin"`) is made once for every request coalesced on
        // it, compressed off the async workers when long.
        let fetched = match (&answer.fetched, coding) {
            // A fetched 404 has no body of its own: the error answer says it.
            _ if answer.entry.negative => None,
            (Some(body), Some(coding)) => Some(fetched_in(body, &answer.entry, coding, deadline).await),
            (Some(body), None) => Some((body.identity(&answer.entry), None)),
            (None, _) => None,
        };
        Ok::<_, AppError>(render(&state, &key, answer, &request.headers, coding, fetched))
    }
    .instrument(span.clone())
    .await
    .unwrap_or_else(IntoResponse::into_response);
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// A fetch's body in `coding`, or as it is if the compressed form is not made by `deadline`
/// (`REQUEST_TIMEOUT_SECS` from the request's start): compressions queue on a few threads, and a
/// client that accepts a coding takes identity too, so it gets its answer rather than a `504`
/// or a wait behind other keys' compressions. The form is still made for whoever waits on.
async fn fetched_in(
    body: &FetchedBody,
    entry: &Entry,
    coding: Coding,
    deadline: tokio::time::Instant,
) -> (Bytes, Option<Coding>) {
    match tokio::time::timeout_at(deadline, body.compressed(entry, coding)).await {
        Ok(Some(made)) => (made, Some(coding)),
        Ok(None) | Err(_) => (body.identity(entry), None),
    }
}

/// `GET /items/{key}` answered at once when the key is fresh in the tier in front (memory),
/// without spans; `None` when the full handler must run: another method, a path the router
/// would not route to [`get_item`], a bad key (its 400 comes from the handler), a request that
/// is traced, or anything short of a fresh in-process hit.
pub fn answer_now<B>(state: &AppState, request: &http::Request<B>) -> Option<Response> {
    if request.method() != http::Method::GET || tracing::enabled!(target: TRACE_TARGET, tracing::Level::INFO)
    {
        return None;
    }
    // The router's `/items/{key}`: exactly one non-empty segment after the prefix.
    let segment = request.uri().path().strip_prefix(ITEMS_PREFIX)?;
    if segment.is_empty() || segment.contains('/') {
        return None;
    }
    let key = key_of(request.uri().path(), state.max_key_bytes).ok()?;
    let answer = state.cache.answer_now(&key)?;
    let coding = coding_for(state, &answer.entry, request.headers());
    Some(render(state, &key, answer, request.headers(), coding, None))
}

/// The coding to answer in: the client's preferred one when the body is long enough to be worth
/// compressing (`COMPRESSION_MIN_BYTES`), else identity.
fn coding_for(state: &AppState, entry: &Entry, request: &HeaderMap) -> Option<Coding> {
    if !compressible(state, entry) {
        return None;
    }
    Coding::negotiate(
        request
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// Whether `entry`'s body is long enough to go compressed (`COMPRESSION_MIN_BYTES`): then caches
/// between here and the client must key on `Accept-Encoding`.
fn compressible(state: &AppState, entry: &Entry) -> bool {
    state
        .compression_min_bytes
        .is_some_and(|min| entry.body_len() >= min)
}

/// A hit's body in `coding`: the compressed form when it is made; a short body is compressed
/// here; a long one on the blocking pool, once, while this request (and every other until it is
/// made) answers identity rather than wait. `None` as the coding: identity.
fn hit_body(
    state: &AppState,
    key: &str,
    entry: &Arc<Entry>,
    coding: Option<Coding>,
) -> (Bytes, Option<Coding>) {
    let Some(coding) = coding else {
        return (entry.cache_body(), None);
    };
    let forms = entry.compressions();
    if let Some(body) = forms.ready(coding) {
        return (body, Some(coding));
    }
    if entry.body_len() < INLINE_COMPRESS_BYTES {
        let Some(body) = forms.make_now(coding, &entry.cache_body()) else {
            return (entry.cache_body(), None);
        };
        // The memory bound weighs what the entry holds.
        state.cache.reweigh(key, entry);
        return (body, Some(coding));
    }
    let (cache, key) = (state.cache.clone(), key.to_owned());
    entry.start_compression(coding, move |entry| cache.reweigh(&key, entry));
    (entry.cache_body(), None)
}

/// The response for an answer: a value (`source` cache or origin) or a remembered 404.
/// A value answers `200` with its weak `ETag` (and the origin's `Last-Modified`), or `304` with
/// no body when the request's conditions say the client holds it already. `coding` is what the
/// client should get; `fetched`, a fetch's body already made in the coding it ended up in.
fn render(
    state: &AppState,
    key: &str,
    answer: Answer,
    request: &HeaderMap,
    coding: Option<Coding>,
    fetched: Option<(Bytes, Option<Coding>)>,
) -> Response {
    let cache_status = state.headers.cache_status(answer.kind);
    let age = state.headers.age(answer.entry.age_secs(answer.now_ms));
    let entry = &answer.entry;
    let mut response = match entry.etag() {
        None => AppError::key_not_found().into_response(),
        Some(etag) => {
            let last_modified = entry.validators().last_modified.as_deref();
            let compressible = compressible(state, entry);
            let mut r = if conditional::not_modified(request, etag, last_modified) {
                let mut r = Response::new(Body::empty());
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                let (body, coding) = fetched.unwrap_or_else(|| hit_body(state, key, entry, coding));
                let mut r = Response::new(Body::from(body));
                r.headers_mut().insert(header::CONTENT_TYPE, JSON);
                if let Some(coding) = coding {
                    r.headers_mut().insert(
                        header::CONTENT_ENCODING,
                        HeaderValue::from_static(coding.as_str()),
                    );
                }
                r
            };
            let headers = r.headers_mut();
            if compressible {
                headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            }
            headers.insert(header::ETAG, etag.clone());
            if let Some(date) = last_modified.and_then(|d| HeaderValue::from_str(d).ok()) {
                headers.insert(header::LAST_MODIFIED, date);
            }
            r
        }
    };
    let headers = response.headers_mut();
    headers.insert(CACHE_STATUS, cache_status);
    headers.insert(header::AGE, age);
    response
}

/// The path of every item, before its key.
const ITEMS_PREFIX: &str = "/items/";

/// A purge's body is read and discarded; more than this is refused.
const PURGE_MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads a whole request body within `timeout`: `400` when it is malformed (e.g. broken
/// chunking) or longer than `max`, `408` when it does not arrive in time.
async fn read_body(
    body: Body,
    max: usize,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, AppError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(AppError::BadRequest(format!(
            "the request body could not be read (malformed, cut short, or over {max} bytes)"
        ))),
        Err(_) => Err(AppError::RequestTimeout),
    }
}

/// The key of an `/items/{key}` path, percent-decoded and checked. Borrowed from the path when
/// it has no escapes, so a hit allocates no key.
fn key_of(path: &str, max_key_bytes: usize) -> Result<Cow<'_, str>, AppError> {
    // The router only sends `/items/{key}` here: one segment after the prefix.
    let raw = path.strip_prefix(ITEMS_PREFIX).unwrap_or_default();
    let key = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| AppError::BadKey("the key must be percent-encoded UTF-8".to_owned()))?;
    check_key(&key, max_key_bytes)?;
    Ok(key)
}

/// Keys are 1..=`max` bytes of UTF-8 without control characters, and not a dot segment (which
/// no URL can carry to an HTTP origin unchanged).
pub fn check_key(key: &str, max: usize) -> Result<(), AppError> {
    if key.is_empty() {
        return Err(AppError::BadKey("the key is empty".to_owned()));
    }
    if key.len() > max {
        return Err(AppError::BadKey(format!("the key is longer than {max} bytes")));
    }
    if key.chars().any(char::is_control) {
        return Err(AppError::BadKey("the key contains control characters".to_owned()));
    }
    if key == "." || key == ".." {
        return Err(AppError::BadKey("the key cannot be a dot segment".to_owned()));
    }
    Ok(())
}

/// `/items/` and `/items`: a request without a key.
pub async fn empty_key() -> Response {
    AppError::BadKey("the key is empty".to_owned()).into_response()
}

/// `DELETE /items/{key}`: purge everywhere; `?soft=true` marks stale instead.
pub async fn delete_item(State(state): State<Arc<AppState>>, request: Request) -> Response {
    purge(&state, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn purge(state: &AppState, request: Request) -> Result<Response, AppError> {
    let (mode, key) = purge_request(state, request, &[], |parts| {
        key_of(parts.uri.path(), state.max_key_bytes).map(Cow::into_owned)
    })
    .await?;
    purge_key(state, key, mode).await
}

/// Purges `key` everywhere (an `/items` key, or a proxied resource's) in a task of its own:
/// `204` once done; past `PURGE_TIMEOUT_SECS` the client is told, and the purge goes on.
pub(super) async fn purge_key(state: &AppState, key: String, mode: PurgeMode) -> Result<Response, AppError> {
    let cache = state.cache.clone();
    let purge = state.cache.spawn(async move { cache.purge(&key, mode).await });
    match tokio::time::timeout(state.purge_timeout, purge).await {
        Ok(Ok(Ok(()))) => Ok(StatusCode::NO_CONTENT.into_response()),
        Ok(Ok(Err(incomplete))) => Err(AppError::PurgeIncomplete(format!("{incomplete}; retry"))),
        Ok(Err(e)) => Err(AppError::Internal(format!("the purge task failed: {e}"))),
        Err(_) => Err(AppError::PurgeIncomplete(still_running(state.purge_timeout))),
    }
}

/// What every purge checks before anything is applied, in order: the admin token, `?soft=`
/// (and no query parameter but it and those `also` names), the name (`name_of`: the key or the
/// tag in the path, the URL in the query), and the whole body.
pub(super) async fn purge_request<T>(
    state: &AppState,
    request: Request,
    also: &[&str],
    name_of: impl FnOnce(&http::request::Parts) -> Result<T, AppError>,
) -> Result<(PurgeMode, T), AppError> {
    authorize(
        state.admin_token.as_deref(),
        request.headers().get(header::AUTHORIZATION),
    )?;
    let mode = purge_mode(request.uri().query(), also)?;
    let (parts, body) = request.into_parts();
    let name = name_of(&parts)?;
    // A purge takes no body, but one that was sent must arrive whole before anything is
    // applied: a request cut short or malformed is refused, not half-honoured.
    read_body(body, PURGE_MAX_BODY_BYTES, state.body_timeout).await?;
    Ok((mode, name))
}

/// Purging is off without `ADMIN_TOKEN`; otherwise the bearer token must match, compared in
/// constant time.
fn authorize(token: Option<&str>, given: Option<&HeaderValue>) -> Result<(), AppError> {
    let Some(token) = token else {
        return Err(AppError::Forbidden(
            "purging is off: ADMIN_TOKEN is not set".to_owned(),
        ));
    };
    let given = given.ok_or(AppError::Unauthorized)?;
    if bool::from(bearer_token(given.as_bytes()).ct_eq(token.as_bytes())) {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "the bearer token is not the admin token".to_owned(),
        ))
    }
}

/// The token of a `Bearer` credential; the scheme is case-insensitive (RFC 9110 §11.1) and
/// separated from the token by one or more spaces. Anything else yields an empty token.
fn bearer_token(credentials: &[u8]) -> &[u8] {
    let Some(space) = credentials.iter().position(|&b| b == b' ') else {
        return b"";
    };
    let (scheme, rest) = credentials.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return b"";
    }
    let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
    &rest[start..]
}

/// `?soft=true` marks stale; the default removes. Any other parameter, or `soft` twice, is
/// `400`: a purge an operator meant as soft (`?mode=soft`) must not run as a hard one.
pub(super) fn purge_mode(query: Option<&str>, also: &[&str]) -> Result<PurgeMode, AppError> {
    let mut soft = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if also.contains(&name.as_ref()) {
            continue;
        }
        if name != "soft" {
            return Err(AppError::BadRequest(format!(
                "unknown query parameter `{name}`: a purge takes only soft=true or soft=false"
            )));
        }
        let this = match value.as_ref() {
            "true" | "1" | "" => true,
            "false" | "0" => false,
            _ => return Err(AppError::BadRequest("soft must be true or false".to_owned())),
        };
        if soft.replace(this).is_some() {
            return Err(AppError::BadRequest("soft is given more than once".to_owned()));
        }
    }
    Ok(if soft == Some(true) {
        PurgeMode::Soft
    } else {
        PurgeMode::Hard
    })
}

/// The message of a purge still running past `PURGE_TIMEOUT_SECS` (it goes on in the
/// background; a retry finishes what is left).
pub(super) fn still_running(timeout: std::time::Duration) -> String {
    format!(
        "the purge is still running after PURGE_TIMEOUT_SECS ({} s); it goes on, and a retry finishes it",
        timeout.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fetched_body_not_compressed_by_the_deadline_goes_as_it_is() {
        let life = crate::cache::Lifetimes::fixed(
            std::time::Duration::from_secs(60),
            std::time::Duration::from_secs(300),
            std::time::Duration::from_secs(5),
        );
        // A JSON string brotli takes a while over.
        let value = format!("\"{}\"", crate::cache::slow_words(2 << 20));
        let entry = Entry::value("k", value.as_bytes(), 60, &life);
        let body = FetchedBody::default();
        let past = tokio::time::Instant::now();
        let (bytes, coding) = fetched_in(&body, &entry, Coding::Br, past).await;
        assert_eq!((bytes, coding), (body.identity(&entry), None));
        // The form is still made, once, for the requests that wait on.
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
        let (bytes, coding) = fetched_in(&body, &entry, Coding::Br, far).await;
        assert_eq!(coding, Some(Coding::Br));
        assert!(bytes.len() < entry.origin_body().len() / 2);
    }

    #[test]
    fn keys_are_checked() {
        assert!(check_key("foo", 8).is_ok());
        assert!(check_key("é/?&", 8).is_ok());
        assert!(check_key("", 8).is_err());
        assert!(check_key("123456789", 8).is_err());
        assert!(check_key("a\nb", 8).is_err());
        assert!(check_key("..", 8).is_err());
    }

    #[test]
    fn purge_authorization_follows_the_contract() {
        let bearer = HeaderValue::from_static("Bearer s3cret");
        let wrong = HeaderValue::from_static("Bearer nope");
        assert!(matches!(
            authorize(None, Some(&bearer)),
            Err(AppError::Forbidden(_))
        ));
        assert!(matches!(
            authorize(Some("s3cret"), None),
            Err(AppError::Unauthorized)
        ));
        assert!(matches!(
            authorize(Some("s3cret"), Some(&wrong)),
            Err(AppError::Forbidden(_))
        ));
        assert!(authorize(Some("s3cret"), Some(&bearer)).is_ok());
        for scheme in ["bearer s3cret", "BEARER s3cret", "Bearer   s3cret"] {
            let given = HeaderValue::from_static(scheme);
            assert!(authorize(Some("s3cret"), Some(&given)).is_ok(), "{scheme}");
        }
        for bad in ["Basic s3cret", "Bearers3cret", "s3cret", "Bearer "] {
            let given = HeaderValue::from_static(bad);
            assert!(authorize(Some("s3cret"), Some(&given)).is_err(), "{bad}");
        }
        assert_eq!(purge_mode(Some("soft=true"), &[]).unwrap(), PurgeMode::Soft);
        assert_eq!(purge_mode(None, &[]).unwrap(), PurgeMode::Hard);
        assert!(purge_mode(Some("soft=maybe"), &[]).is_err());
        assert!(
            purge_mode(Some("mode=soft"), &[]).is_err(),
            "an unknown parameter is refused"
        );
        assert!(
            purge_mode(Some("soft=true&soft=false"), &[]).is_err(),
            "soft twice is refused"
        );
        assert_eq!(purge_mode(Some("soft=false"), &[]).unwrap(), PurgeMode::Hard);
    }
}
