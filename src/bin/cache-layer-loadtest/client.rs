//! One HTTP/1.1 keep-alive connection per worker, like `wrk`: no pool, no lock, reconnected
//! after an error. Answers are classified as hit, miss or error from what the server says.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where a hit was served from, as the server's headers or body say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitKind {
    /// cache-layer's memory tier.
    Memory,
    /// cache-layer's Redis tier.
    Redis,
    /// A stale answer (while revalidating, or because the origin failed).
    Stale,
    /// A remembered "not found".
    Negative,
    /// A hit from a server that does not say where from (nginx, Varnish, the seed's `source`).
    Other,
}

impl HitKind {
    /// Every kind, in report order.
    pub const ALL: [HitKind; 5] = [
        HitKind::Memory,
        HitKind::Redis,
        HitKind::Stale,
        HitKind::Negative,
        HitKind::Other,
    ];

    /// The label in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            HitKind::Memory => "memory",
            HitKind::Redis => "redis",
            HitKind::Stale => "stale",
            HitKind::Negative => "negative",
            HitKind::Other => "other",
        }
    }
}

/// What an answer was, as far as the cache is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    Hit(HitKind),
    Miss,
    /// A success the server did not label (no `Cache-Status`, `X-Cache`, `X-Varnish`, `source`).
    Unlabelled,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    Connect,
    Timeout,
    /// The connection broke mid-request.
    Io,
    /// A status other than 2xx or 404, with the `error` field of a JSON body when there is one.
    Status(u16, Option<String>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect => f.write_str("connect"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Io => f.write_str("connection broken"),
            Failure::Status(code, Some(error)) => write!(f, "{code} {error}"),
            Failure::Status(code, None) => write!(f, "{code}"),
        }
    }
}

/// One keep-alive connection to the target.
pub struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    timeout: Duration,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl Conn {
    /// A connection to `addr`, opened on first use (or by [`Conn::connect`]).
    pub fn new(addr: SocketAddr, host: HeaderValue, timeout: Duration) -> Self {
        Conn {
            addr,
            host,
            timeout,
            sender: None,
        }
    }

    /// Opens the connection now, so that a run starts with every connection ready.
    pub async fn connect(&mut self) -> Result<(), Failure> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Failure::Connect)?;
        tokio::spawn(connection);
        self.sender = Some(sender);
        Ok(())
    }

    /// `GET path`: the status, the headers and the whole body.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, HeaderMap, Bytes), Failure> {
        let result = tokio::time::timeout(self.timeout, self.exchange(path))
            .await
            .unwrap_or(Err(Failure::Timeout));
        if result.is_err() {
            // The connection may be mid-answer or closed: start afresh next time.
            self.sender = None;
        }
        result
    }

    async fn exchange(&mut self, path: &str) -> Result<(StatusCode, HeaderMap, Bytes), Failure> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            self.connect().await?;
        }
        let sender = self.sender.as_mut().ok_or(Failure::Connect)?;
        sender.ready().await.map_err(|_| Failure::Io)?;
        let request = Request::get(path)
            .header(header::HOST, self.host.clone())
            .body(Empty::new())
            .map_err(|_| Failure::Io)?;
        let response = sender.send_request(request).await.map_err(|_| Failure::Io)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|_| Failure::Io)?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}

/// Turns an answer into a hit, a miss or a failure.
pub fn judge(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Result<Served, Failure> {
    if status.is_success() || status == StatusCode::NOT_FOUND {
        return Ok(classify(headers, body));
    }
    let error = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    Err(Failure::Status(status.as_u16(), error))
}

/// Reads, in order: `Cache-Status` (RFC 9211, cache-layer's and nginx's `$upstream_cache_status`),
/// `X-Cache`, Varnish's `X-Varnish` (two ids on a hit), then the seed's JSON `source`.
pub fn classify(headers: &HeaderMap, body: &[u8]) -> Served {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(status) = text("cache-status").and_then(cache_status) {
        return status;
    }
    if let Some(x) = text("x-cache") {
        return match x.get(..3) {
            Some(s) if s.eq_ignore_ascii_case("hit") => Served::Hit(HitKind::Other),
            _ => Served::Miss,
        };
    }
    if let Some(ids) = text("x-varnish") {
        return if ids.split_whitespace().count() >= 2 {
            Served::Hit(HitKind::Other)
        } else {
            Served::Miss
        };
    }
    #[derive(serde::Deserialize)]
    struct Source<'a> {
        #[serde(borrow)]
        source: Option<&'a str>,
    }
    match serde_json::from_slice::<Source>(body).ok().and_then(|s| s.source) {
        Some("cache") => Served::Hit(HitKind::Other),
        Some("origin") => Served::Miss,
        _ => Served::Unlabelled,
    }
}

/// The cache closest to the client is the last member of the list.
fn cache_status(value: &str) -> Option<Served> {
    let member = value.rsplit(',').next()?.trim();
    let mut params = member.split(';').map(str::trim);
    let name = params.next()?;
    // nginx: a bare `HIT`, `MISS`, `EXPIRED`, `STALE`, `UPDATING`, `REVALIDATED`, `BYPASS`.
    match name.to_ascii_uppercase().as_str() {
        "HIT" | "REVALIDATED" => return Some(Served::Hit(HitKind::Other)),
        "STALE" | "UPDATING" => return Some(Served::Hit(HitKind::Stale)),
        "MISS" | "EXPIRED" | "BYPASS" => return Some(Served::Miss),
        _ => {}
    }
    let mut hit = false;
    let mut kind = HitKind::Other;
    for param in params {
        match param {
            "hit" => hit = true,
            "detail=memory" => kind = HitKind::Memory,
            "detail=redis" => kind = HitKind::Redis,
            "detail=negative" => kind = HitKind::Negative,
            p if p.starts_with("detail=stale") => kind = HitKind::Stale,
            p if p.starts_with("fwd=") => return Some(Served::Miss),
            _ => {}
        }
    }
    hit.then_some(Served::Hit(kind))
}

/// Origin fetches the target has made so far, from its `/metrics` (`origin_requests_total`,
/// every outcome but `rejected`), or `None` when it exposes no such counter.
pub async fn origin_fetches(conn: &mut Conn) -> Option<u64> {
    let (status, _, body) = conn.get("/metrics").await.ok()?;
    if !status.is_success() {
        return None;
    }
    let text = std::str::from_utf8(&body).ok()?;
    let mut found = false;
    let mut total = 0.0;
    for line in text.lines() {
        if line.starts_with("origin_requests_total{") && !line.contains("outcome=\"rejected\"") {
            found = true;
            total += line.rsplit(' ').next()?.parse::<f64>().ok()?;
        }
    }
    found.then_some(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn cache_layer_statuses() {
        let c = |v| classify(&with("cache-status", v), b"");
        assert_eq!(
            c("cache-layer; hit; ttl=59; detail=memory"),
            Served::Hit(HitKind::Memory)
        );
        assert_eq!(
            c("cache-layer; hit; ttl=3; detail=redis"),
            Served::Hit(HitKind::Redis)
        );
        assert_eq!(
            c("cache-layer; hit; ttl=-2; detail=stale-if-error"),
            Served::Hit(HitKind::Stale)
        );
        assert_eq!(
            c("cache-layer; hit; detail=negative"),
            Served::Hit(HitKind::Negative)
        );
        assert_eq!(c("cache-layer; fwd=miss; stored"), Served::Miss);
        assert_eq!(c("cache-layer; fwd=miss; collapsed"), Served::Miss);
        // The member closest to the client decides.
        assert_eq!(
            c("cdn; fwd=miss, cache-layer; hit; detail=memory"),
            Served::Hit(HitKind::Memory)
        );
    }

    #[test]
    fn peers_and_the_seed() {
        let c = |name, v| classify(&with(name, v), b"");
        assert_eq!(c("cache-status", "HIT"), Served::Hit(HitKind::Other));
        assert_eq!(c("cache-status", "UPDATING"), Served::Hit(HitKind::Stale));
        assert_eq!(c("cache-status", "MISS"), Served::Miss);
        assert_eq!(c("x-cache", "HIT from proxy"), Served::Hit(HitKind::Other));
        assert_eq!(c("x-cache", "MISS"), Served::Miss);
        assert_eq!(c("x-varnish", "32770 5"), Served::Hit(HitKind::Other));
        assert_eq!(c("x-varnish", "32770"), Served::Miss);
        let none = HeaderMap::new();
        assert_eq!(
            classify(&none, br#"{"key":"a","value":1,"source":"cache"}"#),
            Served::Hit(HitKind::Other)
        );
        assert_eq!(classify(&none, br#"{"source":"origin"}"#), Served::Miss);
        assert_eq!(classify(&none, b"plain"), Served::Unlabelled);
    }

    #[test]
    fn failures_carry_the_status_and_error_code() {
        let none = HeaderMap::new();
        let body = br#"{"error":"origin_unavailable","message":"x"}"#;
        assert_eq!(
            judge(StatusCode::SERVICE_UNAVAILABLE, &none, body),
            Err(Failure::Status(503, Some("origin_unavailable".into())))
        );
        assert_eq!(
            judge(StatusCode::BAD_GATEWAY, &none, b"oops")
                .unwrap_err()
                .to_string(),
            "502"
        );
        let negative = with("cache-status", "cache-layer; hit; detail=negative");
        assert_eq!(
            judge(StatusCode::NOT_FOUND, &negative, b""),
            Ok(Served::Hit(HitKind::Negative))
        );
    }
}
