//! Operational endpoints: `/health`, `/livez`, `/readyz`, `/metrics`, and the JSON 404/405.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use super::AppState;
use crate::cache::{Tier, TierHealth, TierName};
use crate::error::AppError;
use crate::origin::BreakerState;

/// `GET /health`: the seed's check; `degraded` names the tier that is down.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let mut tiers = serde_json::Map::new();
    for name in TierName::ALL {
        tiers.insert(name.as_str().to_owned(), json!("disabled"));
    }
    let mut degraded = false;
    let mut redis_nodes = None;
    for tier in state.cache.tiers() {
        let TierHealth { status, nodes } = tier.health();
        if let Some((total, down)) = nodes {
            redis_nodes = Some(json!({ "total": total, "down": down }));
        }
        degraded |= status != "ok";
        tiers.insert(tier.name().as_str().to_owned(), json!(status));
    }
    let circuit = state.cache.breaker_state().as_str();
    degraded |= circuit == "open";
    // Each route's circuit (its own breaker): an open one degrades, as the origin's does.
    let routes = state.proxy.as_ref().map(|proxy| {
        let mut routes = serde_json::Map::new();
        for (route, state) in proxy.circuits() {
            degraded |= state == BreakerState::Open;
            routes.insert(route.to_owned(), json!({ "circuit": state.as_str() }));
        }
        serde_json::Value::Object(routes)
    });
    let mut body = json!({
        "status": if degraded { "degraded" } else { "ok" },
        "tiers": tiers,
        "origin": { "kind": state.origin_kind, "circuit": circuit },
    });
    if let Some(nodes) = redis_nodes {
        body["redis_nodes"] = nodes;
    }
    if let Some(routes) = routes {
        body["routes"] = routes;
    }
    Json(body).into_response()
}

/// `GET /livez`: the process answers.
pub async fn livez() -> Response {
    Json(json!({ "status": "alive" })).into_response()
}

/// `GET /readyz`: ready unless shutting down (a Redis outage degrades, it does not unready).
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let (status, body) = if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, json!({ "status": "ready" }))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "shutting_down" }),
        )
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut buffer = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        return AppError::Internal(format!("metrics encoding failed: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buffer).into_response()
}

/// Any other path of the admin listener.
pub async fn not_found() -> Response {
    AppError::NotFound("no such endpoint".to_owned()).into_response()
}

/// Any other path: to the proxy when routes are configured (`PROXY_ROUTES`), else `404`.
pub async fn not_found_or_proxied(
    State(state): State<Arc<AppState>>,
    request: axum::extract::Request,
) -> Response {
    match &state.proxy {
        Some(proxy) => proxy.handle(request).await,
        None => not_found().await,
    }
}

/// A known path with another method.
pub async fn method_not_allowed() -> Response {
    AppError::MethodNotAllowed.into_response()
}
