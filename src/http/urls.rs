//! `DELETE /purge?url=<path-and-query>`: purge a proxied resource (`PROXY_ROUTES`), every
//! stored variant of it, on every replica.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::items::{purge_key, purge_request};
use crate::error::AppError;

/// `DELETE /purge?url=/api/items/42?lang=en`: `204` once purged here and published to the
/// other replicas (`?soft=true` marks it stale instead); the same `ADMIN_TOKEN` rules as the
/// other purges. The URL is the path and query a client asks the proxy for, percent-encoded as
/// one query parameter; one no route takes is `400`.
pub async fn delete_url(State(state): State<Arc<AppState>>, request: Request) -> Response {
    purge(&state, request)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn purge(state: &AppState, request: Request) -> Result<Response, AppError> {
    let Some(proxy) = state.proxy.clone() else {
        return Err(AppError::NotFound(
            "purge by URL is for proxied routes, and PROXY_ROUTES is not set".to_owned(),
        ));
    };
    let (mode, key) = purge_request(state, request, &["url"], |parts| {
        let mut urls = url::form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
            .filter(|(n, _)| n == "url")
            .map(|(_, v)| v.into_owned());
        let (Some(url), None) = (urls.next(), urls.next()) else {
            return Err(AppError::BadRequest(
                "give the URL to purge once: ?url=<path-and-query>".to_owned(),
            ));
        };
        proxy
            .key_for(&url)
            .ok_or_else(|| AppError::BadRequest(format!("no route of PROXY_ROUTES takes `{url}`")))
    })
    .await?;
    purge_key(state, key, mode).await
}
