//! `AppError`: the one place failures become HTTP responses (status, JSON body, headers).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::cache::CacheError;
use crate::origin::OriginError;

/// Every way a request can fail, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The key is empty, too long, not UTF-8, has control characters or is a dot segment.
    #[error("{0}")]
    BadKey(String),
    /// A purge's tag that no entry can carry: empty, longer than `TAG_MAX_BYTES`, not UTF-8,
    /// or with control characters.
    #[error("{0}")]
    BadTag(String),
    /// A malformed request other than the key (e.g. a bad query parameter).
    #[error("{0}")]
    BadRequest(String),
    /// A request larger than its limit allows (a batch with more than `BATCH_MAX_KEYS` keys,
    /// or a body over `BATCH_MAX_BODY_BYTES`); the message names the limit.
    #[error("{0}")]
    TooLarge(String),
    /// A request body in a format the endpoint does not read (a batch body that is not JSON).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The origin says the key does not exist (or no such endpoint).
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists but not for this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The origin failed.
    #[error("{0}")]
    OriginError(String),
    /// The origin did not answer in time.
    #[error("{0}")]
    OriginTimeout(String),
    /// The origin is not being called (circuit open, or too many fetches in flight).
    #[error("{message}")]
    OriginUnavailable {
        /// What happened.
        message: String,
        /// Whole seconds until a retry may succeed (`Retry-After`).
        retry_after_secs: u64,
    },
    /// The request body did not arrive within `HTTP_BODY_TIMEOUT_SECS`; the connection is closed.
    #[error("the request body did not arrive within HTTP_BODY_TIMEOUT_SECS")]
    RequestTimeout,
    /// A purge without credentials.
    #[error("a bearer token is required")]
    Unauthorized,
    /// A purge with the wrong token, or purging is off.
    #[error("{0}")]
    Forbidden(String),
    /// A purge did not complete: it was applied on this replica but did not reach Redis or
    /// the other replicas, or no record of it outlives a restart, or it is still running past
    /// `PURGE_TIMEOUT_SECS` (it goes on). The message says which. Retrying is safe.
    #[error("{0}")]
    PurgeIncomplete(String),
    /// A proxied request came through this cache too many times (`Via`): a route leads back
    /// to the service itself.
    #[error("{0}")]
    LoopDetected(String),
    /// A bug: a panic or a broken invariant.
    #[error("{0}")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
}

impl AppError {
    /// The `error` code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::BadKey(_) => "bad_key",
            AppError::BadTag(_) => "bad_tag",
            AppError::BadRequest(_) => "bad_request",
            AppError::TooLarge(_) => "too_large",
            AppError::UnsupportedMediaType(_) => "unsupported_media_type",
            AppError::NotFound(_) => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::OriginError(_) => "origin_error",
            AppError::OriginTimeout(_) => "origin_timeout",
            AppError::OriginUnavailable { .. } => "origin_unavailable",
            AppError::Unauthorized => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::PurgeIncomplete(_) => "purge_incomplete",
            AppError::RequestTimeout => "request_timeout",
            AppError::LoopDetected(_) => "loop_detected",
            AppError::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::BadKey(_) | AppError::BadTag(_) | AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::OriginError(_) => StatusCode::BAD_GATEWAY,
            AppError::OriginTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            AppError::OriginUnavailable { .. } | AppError::PurgeIncomplete(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::LoopDetected(_) => StatusCode::LOOP_DETECTED,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whole seconds until a retry may succeed, where the answer says so (`Retry-After`).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AppError::OriginUnavailable { retry_after_secs, .. } => Some(*retry_after_secs),
            AppError::PurgeIncomplete(_) => Some(1),
            _ => None,
        }
    }

    /// The origin's 404, as answered for a key.
    pub fn key_not_found() -> Self {
        AppError::NotFound("the origin has no value for this key".to_owned())
    }
}

impl From<CacheError> for AppError {
    fn from(e: CacheError) -> Self {
        match e {
            CacheError::Origin(OriginError::Timeout(_)) => AppError::OriginTimeout(e.to_string()),
            CacheError::Origin(OriginError::CircuitOpen { retry_after }) => AppError::OriginUnavailable {
                message: e.to_string(),
                retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
            },
            CacheError::Origin(OriginError::Saturated | OriginError::OutOfDescriptors) => {
                AppError::OriginUnavailable {
                    message: e.to_string(),
                    retry_after_secs: 1,
                }
            }
            CacheError::Origin(_) | CacheError::Shared(_) => AppError::OriginError(e.to_string()),
            CacheError::TimedOut => AppError::OriginTimeout(e.to_string()),
            CacheError::Abandoned(_) => {
                AppError::Internal("the origin fetch ended without a result".to_owned())
            }
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let status = self.status();
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        match &self {
            AppError::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            AppError::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"cache-layer\""),
                );
            }
            _ => {}
        }
        response
    }
}
