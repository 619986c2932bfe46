//! The closed sets the HTTP routes are counted by (`http_requests_total{route, status_class}`).
//! A leaf: it imports nothing of the crate.

/// The routes `http_requests_total` knows; the label is the route template, never the raw path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/items/{key}` (and `/items`, `/items/`, which answer that the key is empty).
    Items,
    /// `/tags/{tag}` (and `/tags`, `/tags/`).
    Tags,
    /// `/items:batch`: many keys in one request.
    Batch,
    /// `/health`.
    Health,
    /// `/livez`.
    Livez,
    /// `/readyz`.
    Readyz,
    /// `/metrics`.
    Metrics,
    /// `/purge`: purge a proxied URL.
    Purge,
    /// Anything else (proxied requests included: `proxy_requests_total` counts those by route).
    Unmatched,
}

impl Route {
    /// Every route, for label sets registered at zero.
    pub const ALL: [Route; 9] = [
        Route::Items,
        Route::Tags,
        Route::Batch,
        Route::Health,
        Route::Livez,
        Route::Readyz,
        Route::Metrics,
        Route::Purge,
        Route::Unmatched,
    ];

    /// The path template the router registers for this route (the `route` label).
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Items => "/items/{key}",
            Route::Tags => "/tags/{tag}",
            Route::Batch => "/items:batch",
            Route::Health => "/health",
            Route::Livez => "/livez",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Purge => "/purge",
            Route::Unmatched => "unmatched",
        }
    }

    /// The route the router matches `path` to, by the same rules (one segment after
    /// `/items/` or `/tags/`, the other routes exactly), so requests are counted by route
    /// outside the router.
    pub fn of_path(path: &str) -> Route {
        let one_segment = |rest: &str| !rest.contains('/');
        if let Some(rest) = path.strip_prefix("/items/") {
            return if one_segment(rest) {
                Route::Items
            } else {
                Route::Unmatched
            };
        }
        if let Some(rest) = path.strip_prefix("/tags/") {
            return if one_segment(rest) {
                Route::Tags
            } else {
                Route::Unmatched
            };
        }
        match path {
            "/items" => Route::Items,
            "/tags" => Route::Tags,
            "/items:batch" => Route::Batch,
            "/health" => Route::Health,
            "/purge" => Route::Purge,
            "/livez" => Route::Livez,
            "/readyz" => Route::Readyz,
            "/metrics" => Route::Metrics,
            _ => Route::Unmatched,
        }
    }
}

/// The `status_class` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx.
    Success,
    /// 3xx.
    Redirection,
    /// 4xx.
    ClientError,
    /// 5xx (and anything out of range).
    ServerError,
}

impl StatusClass {
    /// Every class, for label sets registered at zero.
    pub const ALL: [StatusClass; 4] = [
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
    ];

    /// The class of `status`.
    pub fn of(status: u16) -> StatusClass {
        match status {
            200..=299 => StatusClass::Success,
            300..=399 => StatusClass::Redirection,
            400..=499 => StatusClass::ClientError,
            _ => StatusClass::ServerError,
        }
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusClass::Success => "2xx",
            StatusClass::Redirection => "3xx",
            StatusClass::ClientError => "4xx",
            StatusClass::ServerError => "5xx",
        }
    }
}
