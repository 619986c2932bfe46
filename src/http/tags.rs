//! `DELETE /tags/{tag}`: purge every entry the origin tagged with `tag`, on every replica.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use percent_encoding::percent_decode_str;
use serde_json::json;

use super::AppState;
use super::items::{purge_request, still_running};
use crate::error::AppError;

/// The path of every tag, before its name.
const TAGS_PREFIX: &str = "/tags/";

/// `DELETE /tags/{tag}`: `200 {"tag":…,"purged":{"memory":n,"redis":n}}` (the entries removed,
/// or marked stale with `?soft=true`, here and in the shared tiers); the other replicas apply
/// it from the Redis message.
pub async fn delete_tag(State(state): State<Arc<AppState>>, request: Request) -> Response {
    purge(&state, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn purge(state: &AppState, request: Request) -> Result<Response, AppError> {
    let max = state.tag_max_bytes;
    let (mode, tag) = purge_request(state, request, &[], |parts| {
        tag_of(parts.uri.path(), max).map(Cow::into_owned)
    })
    .await?;
    // A task of its own: past PURGE_TIMEOUT_SECS the client is told, and the purge goes on.
    let (cache, name) = (state.cache.clone(), tag.clone());
    let purge = state
        .cache
        .spawn(async move { cache.purge_tag(&name, mode).await });
    let purged = match tokio::time::timeout(state.purge_timeout, purge).await {
        Ok(Ok(Ok(purged))) => purged,
        Ok(Ok(Err(incomplete))) => return Err(AppError::PurgeIncomplete(format!("{incomplete}; retry"))),
        Ok(Err(e)) => return Err(AppError::Internal(format!("the purge task failed: {e}"))),
        Err(_) => return Err(AppError::PurgeIncomplete(still_running(state.purge_timeout))),
    };
    let purged: serde_json::Map<String, serde_json::Value> = purged
        .into_iter()
        .map(|(tier, n)| (tier.as_str().to_owned(), json!(n)))
        .collect();
    Ok(Json(json!({ "tag": tag, "purged": purged })).into_response())
}

/// The tag of a `/tags/{tag}` path, percent-decoded: a tag an entry could carry (not empty, at
/// most `max_bytes`, no control characters), else `400 bad_tag`.
fn tag_of(path: &str, max_bytes: usize) -> Result<Cow<'_, str>, AppError> {
    let raw = path.strip_prefix(TAGS_PREFIX).unwrap_or_default();
    let tag = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| AppError::BadTag("the tag must be percent-encoded UTF-8".to_owned()))?;
    if tag.is_empty() || tag.chars().any(char::is_control) {
        return Err(AppError::BadTag(
            "the tag must be 1 or more characters, none of them control characters".to_owned(),
        ));
    }
    if tag.len() > max_bytes {
        return Err(AppError::BadTag(format!(
            "the tag is {} bytes; no entry carries a tag longer than {max_bytes} bytes (TAG_MAX_BYTES)",
            tag.len()
        )));
    }
    Ok(tag)
}

/// `/tags/` and `/tags`: a purge without a tag.
pub async fn empty_tag() -> Response {
    AppError::BadTag("the tag is empty".to_owned()).into_response()
}
