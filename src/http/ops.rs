//! Operational endpoints: `/health`, `/livez`, `/readyz`, `/metrics`, and the JSON 404/405.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};
use serde_json::json;

use super::AppState;
use crate::error::AppError;
use crate::origin::BreakerState;
use crate::telemetry::Route;

/// `GET /health`: the seed's check; `degraded` names the tier that is down.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let memory = if state.cache.memory().is_some() {
        "ok"
    } else {
        "disabled"
    };
    let nodes = state.cache.redis().map(|r| r.health());
    let redis = match (state.cache.redis(), nodes) {
        (Some(r), Some(h)) if h.as_str() == "ok" && r.writes_failing() => "write_failing",
        (Some(_), Some(h)) => h.as_str(),
        _ => "disabled",
    };
    let circuit = match state.cache.breaker_state() {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
    };
    let status = if matches!(redis, "down" | "partial" | "write_failing") || circuit == "open" {
        "degraded"
    } else {
        "ok"
    };
    let mut body = json!({
        "status": status,
        "tiers": { "memory": memory, "redis": redis },
        "origin": { "circuit": circuit },
    });
    if let Some(h) = nodes {
        body["redis_nodes"] = json!({ "total": h.nodes, "down": h.down });
    }
    state.metrics.request(Route::Health, 200, Duration::ZERO);
    Json(body).into_response()
}

/// `GET /livez`: the process answers.
pub async fn livez(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.request(Route::Livez, 200, Duration::ZERO);
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
    state
        .metrics
        .request(Route::Readyz, status.as_u16(), Duration::ZERO);
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.request(Route::Metrics, 200, Duration::ZERO);
    let mut buffer = Vec::with_capacity(16 * 1024);
    if let Err(e) = TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        return AppError::Internal(format!("metrics encoding failed: {e}")).into_response();
    }
    ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buffer).into_response()
}

/// Any other path.
pub async fn not_found(State(state): State<Arc<AppState>>) -> Response {
    state.metrics.request(Route::Unmatched, 404, Duration::ZERO);
    AppError::NotFound("no such endpoint".to_owned()).into_response()
}

/// A known path with another method.
pub async fn method_not_allowed(State(state): State<Arc<AppState>>, uri: axum::http::Uri) -> Response {
    state.metrics.count_request(Route::of_path(uri.path()), 405);
    AppError::MethodNotAllowed.into_response()
}
