//! One HTTP/1.1 keep-alive connection per worker, written straight to the socket like `wrk`'s:
//! the request bytes and the read buffer are reused, responses are parsed in place with
//! `httparse`, and nothing is shared between connections. An answer is classified as a hit, a
//! miss or a failure from what the server says.

use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where a hit was served from, as the server's headers or body say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitKind {
    /// cache-layer's memory tier.
    Memory,
    /// cache-layer's disk tier.
    Disk,
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
    pub const ALL: [HitKind; 6] = [
        HitKind::Memory,
        HitKind::Disk,
        HitKind::Redis,
        HitKind::Stale,
        HitKind::Negative,
        HitKind::Other,
    ];

    /// The label in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            HitKind::Memory => "memory",
            HitKind::Disk => "disk",
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
    /// The answer was not HTTP/1.x as this client reads it.
    Protocol,
    /// A status other than 2xx or 404, with the `error` field of a JSON body when there is one.
    Status(u16, Option<String>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect => f.write_str("connect"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Io => f.write_str("connection broken"),
            Failure::Protocol => f.write_str("malformed response"),
            Failure::Status(code, Some(error)) => write!(f, "{code} {error}"),
            Failure::Status(code, None) => write!(f, "{code}"),
        }
    }
}

/// How the end of a body is found.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Length {
    Fixed(usize),
    Chunked,
    UntilClose,
}

/// A response head, with header values as ranges of the read buffer.
#[derive(Debug)]
struct Head {
    status: u16,
    len: usize,
    length: Length,
    close: bool,
    cache_status: Option<Range<usize>>,
    x_cache: Option<Range<usize>>,
    x_varnish: Option<Range<usize>>,
}

/// One keep-alive connection to the target.
pub struct Conn {
    addr: SocketAddr,
    host: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    /// The request being sent; reused.
    request: Vec<u8>,
    /// What has been read of the current response; reused.
    buf: Vec<u8>,
    /// A chunked body, de-chunked; reused.
    chunked: Vec<u8>,
}

/// Where the current response's body is.
enum Body {
    InBuf(Range<usize>),
    Chunked,
}

impl Conn {
    /// A connection to `addr` (whose `Host` is `host`), opened on first use or by
    /// [`Conn::connect`].
    pub fn new(addr: SocketAddr, host: String, timeout: Duration) -> Self {
        Conn {
            addr,
            host,
            timeout,
            stream: None,
            request: Vec::with_capacity(256),
            buf: Vec::with_capacity(8192),
            chunked: Vec::new(),
        }
    }

    /// Drops the connection (a request was abandoned half-way); the next use opens a new one.
    pub fn reset(&mut self) {
        self.stream = None;
    }

    /// Opens the connection now, so that a run starts with every connection ready.
    pub async fn connect(&mut self) -> Result<(), Failure> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|_| Failure::Connect)?;
        let _ = stream.set_nodelay(true);
        self.stream = Some(stream);
        Ok(())
    }

    /// `GET path`, judged: a hit, a miss, or why it failed.
    pub async fn get(&mut self, path: &str) -> Result<Served, Failure> {
        let (status, head, body) = self.fetch(path, None).await?;
        let header =
            |r: &Option<Range<usize>>| r.clone().and_then(|r| std::str::from_utf8(&self.buf[r]).ok());
        let headers = Headers {
            cache_status: header(&head.cache_status),
            x_cache: header(&head.x_cache),
            x_varnish: header(&head.x_varnish),
        };
        judge(status, &headers, self.body(&body))
    }

    /// `GET path`: the status and the body.
    pub async fn get_body(&mut self, path: &str) -> Result<(u16, &[u8]), Failure> {
        let (status, _, body) = self.fetch(path, None).await?;
        Ok((status, self.body(&body)))
    }

    /// `POST /items:batch` with `json` (`{"keys":[…]}`), each key's answer judged into `out`
    /// (in the request's order). A batch refused as a whole is its failure.
    pub async fn batch(
        &mut self,
        json: &[u8],
        out: &mut Vec<Result<Served, Failure>>,
    ) -> Result<(), Failure> {
        let (status, _, body) = self.fetch("/items:batch", Some(json)).await?;
        let body = self.body(&body);
        if status != 200 {
            return Err(judge(status, &Headers::default(), body)
                .err()
                .unwrap_or(Failure::Protocol));
        }
        #[derive(serde::Deserialize)]
        struct Element {
            cache: Option<String>,
            error: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct Items {
            items: Vec<Element>,
        }
        let items: Items = serde_json::from_slice(body).map_err(|_| Failure::Protocol)?;
        out.clear();
        out.extend(items.items.into_iter().map(|e| match (e.cache, e.error) {
            (Some(status), _) => Ok(cache_status(&status).unwrap_or(Served::Unlabelled)),
            (None, Some(error)) => Err(Failure::Status(status_of(&error), Some(error))),
            (None, None) => Ok(Served::Unlabelled),
        }));
        Ok(())
    }

    fn body(&self, body: &Body) -> &[u8] {
        match body {
            Body::InBuf(r) => &self.buf[r.clone()],
            Body::Chunked => &self.chunked,
        }
    }

    /// One exchange under the timeout. A kept-alive connection that the server closed while
    /// idle is reopened once.
    async fn fetch(&mut self, path: &str, json: Option<&[u8]>) -> Result<(u16, Head, Body), Failure> {
        let timeout = self.timeout;
        let result = tokio::time::timeout(timeout, async {
            let reused = self.stream.is_some();
            match self.exchange(path, json).await {
                Err(Failure::Io) if reused && self.buf.is_empty() => {
                    self.stream = None;
                    self.exchange(path, json).await
                }
                other => other,
            }
        })
        .await
        .unwrap_or(Err(Failure::Timeout));
        match result {
            Ok((status, head, body)) => {
                if head.close {
                    self.stream = None;
                }
                Ok((status, head, body))
            }
            Err(e) => {
                // The connection may be mid-answer: start afresh next time.
                self.stream = None;
                Err(e)
            }
        }
    }

    /// One request (`GET path`, or `POST path` with a JSON body) and its response.
    async fn exchange(&mut self, path: &str, json: Option<&[u8]>) -> Result<(u16, Head, Body), Failure> {
        if self.stream.is_none() {
            self.connect().await?;
        }
        let Conn {
            stream,
            request,
            buf,
            chunked,
            host,
            ..
        } = self;
        let stream = stream.as_mut().ok_or(Failure::Connect)?;
        request.clear();
        request.extend_from_slice(if json.is_some() { b"POST " } else { b"GET " });
        request.extend_from_slice(path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        request.extend_from_slice(host.as_bytes());
        request.extend_from_slice(b"\r\nUser-Agent: cache-layer-loadtest\r\n");
        if let Some(json) = json {
            request.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            request.extend_from_slice(json.len().to_string().as_bytes());
            request.extend_from_slice(b"\r\n\r\n");
            request.extend_from_slice(json);
        } else {
            request.extend_from_slice(b"\r\n");
        }
        buf.clear();
        stream.write_all(request).await.map_err(|_| Failure::Io)?;
        let head = loop {
            if let Some(head) = parse_head(buf)? {
                break head;
            }
            if fill(stream, buf).await? == 0 {
                return Err(Failure::Io);
            }
        };
        let body = match head.length {
            Length::Fixed(n) => {
                while buf.len() < head.len + n {
                    if fill(stream, buf).await? == 0 {
                        return Err(Failure::Io);
                    }
                }
                Body::InBuf(head.len..head.len + n)
            }
            Length::UntilClose => {
                while fill(stream, buf).await? > 0 {}
                Body::InBuf(head.len..buf.len())
            }
            Length::Chunked => {
                chunked.clear();
                let mut at = head.len;
                loop {
                    match dechunk(&buf[at..], chunked)? {
                        Some((_, true)) => break,
                        Some((used, false)) => at += used,
                        None => {
                            if fill(stream, buf).await? == 0 {
                                return Err(Failure::Io);
                            }
                        }
                    }
                }
                Body::Chunked
            }
        };
        let close = head.close || head.length == Length::UntilClose;
        Ok((head.status, Head { close, ..head }, body))
    }
}

/// Reads what is there (at least one byte, or 0 at end of stream) onto the end of `buf`.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, Failure> {
    buf.reserve(8192);
    stream.read_buf(buf).await.map_err(|_| Failure::Io)
}

/// The head, once `buf` holds all of it.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::Protocol),
    };
    let status = response.code.ok_or(Failure::Protocol)?;
    let at = |value: &[u8]| {
        let start = value.as_ptr() as usize - buf.as_ptr() as usize;
        Some(start..start + value.len())
    };
    let mut head = Head {
        status,
        len,
        length: Length::UntilClose,
        close: response.version == Some(0),
        cache_status: None,
        x_cache: None,
        x_varnish: None,
    };
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("");
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" if head.length != Length::Chunked => {
                head.length = Length::Fixed(value.trim().parse().map_err(|_| Failure::Protocol)?);
            }
            "transfer-encoding" if value.to_ascii_lowercase().contains("chunked") => {
                head.length = Length::Chunked;
            }
            "connection" => {
                if value.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    head.close = false;
                }
            }
            "cache-status" => head.cache_status = at(h.value),
            "x-cache" => head.x_cache = at(h.value),
            "x-varnish" => head.x_varnish = at(h.value),
            _ => {}
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        head.length = Length::Fixed(0);
    }
    Ok(Some(head))
}

/// Takes one chunk off the front of `data` into `out`: `Some((bytes used, last chunk))`, or
/// `None` when more must be read first. Trailers are not supported.
fn dechunk(data: &[u8], out: &mut Vec<u8>) -> Result<Option<(usize, bool)>, Failure> {
    let (line, size) = match httparse::parse_chunk_size(data) {
        Ok(httparse::Status::Complete(found)) => found,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::Protocol),
    };
    let size = usize::try_from(size).map_err(|_| Failure::Protocol)?;
    let end = line + size + 2;
    if data.len() < end {
        return Ok(None);
    }
    if &data[line + size..end] != b"\r\n" {
        return Err(Failure::Protocol);
    }
    out.extend_from_slice(&data[line..line + size]);
    Ok(Some((end, size == 0)))
}

/// The response headers the classification reads.
#[derive(Default)]
pub struct Headers<'a> {
    pub cache_status: Option<&'a str>,
    pub x_cache: Option<&'a str>,
    pub x_varnish: Option<&'a str>,
}

/// Turns an answer into a hit, a miss or a failure.
pub fn judge(status: u16, headers: &Headers, body: &[u8]) -> Result<Served, Failure> {
    if (200..300).contains(&status) || status == 404 {
        return Ok(classify(headers, body));
    }
    let error = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned));
    Err(Failure::Status(status, error))
}

/// Reads, in order: `Cache-Status` (RFC 9211, cache-layer's and nginx's `$upstream_cache_status`),
/// `X-Cache`, Varnish's `X-Varnish` (two ids on a hit), then the seed's JSON `source`.
pub fn classify(headers: &Headers, body: &[u8]) -> Served {
    if let Some(status) = headers.cache_status.and_then(cache_status) {
        return status;
    }
    if let Some(x) = headers.x_cache {
        return match x.get(..3) {
            Some(s) if s.eq_ignore_ascii_case("hit") => Served::Hit(HitKind::Other),
            _ => Served::Miss,
        };
    }
    if let Some(ids) = headers.x_varnish {
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

/// The status `GET /items/{key}` answers with a batch element's `error` code.
fn status_of(error: &str) -> u16 {
    match error {
        "bad_key" => 400,
        "not_found" => 404,
        "origin_error" => 502,
        "origin_unavailable" => 503,
        "origin_timeout" => 504,
        _ => 500,
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
            "detail=disk" => kind = HitKind::Disk,
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
    let (status, body) = conn.get_body("/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    let text = std::str::from_utf8(body).ok()?;
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

    fn with(name: &str, value: &'static str) -> Headers<'static> {
        let mut h = Headers::default();
        match name {
            "cache-status" => h.cache_status = Some(value),
            "x-cache" => h.x_cache = Some(value),
            "x-varnish" => h.x_varnish = Some(value),
            _ => unreachable!(),
        }
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
            c("cache-layer; hit; ttl=3; detail=disk"),
            Served::Hit(HitKind::Disk)
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
        assert_eq!(c("cache-layer; fwd=miss; detail=declined"), Served::Miss);
        assert_eq!(c("cache-layer; fwd=miss; detail=purged"), Served::Miss);
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
        let none = Headers::default();
        assert_eq!(
            classify(&none, br#"{"key":"a","value":1,"source":"cache"}"#),
            Served::Hit(HitKind::Other)
        );
        assert_eq!(classify(&none, br#"{"source":"origin"}"#), Served::Miss);
        assert_eq!(classify(&none, b"plain"), Served::Unlabelled);
    }

    #[test]
    fn failures_carry_the_status_and_error_code() {
        let none = Headers::default();
        let body = br#"{"error":"origin_unavailable","message":"x"}"#;
        assert_eq!(
            judge(503, &none, body),
            Err(Failure::Status(503, Some("origin_unavailable".into())))
        );
        assert_eq!(judge(502, &none, b"oops").unwrap_err().to_string(), "502");
        let negative = with("cache-status", "cache-layer; hit; detail=negative");
        assert_eq!(judge(404, &negative, b""), Ok(Served::Hit(HitKind::Negative)));
    }

    #[test]
    fn heads_are_parsed_in_place() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Status: HIT\r\n\r\n{}";
        let head = parse_head(raw).unwrap().unwrap();
        assert_eq!(
            (head.status, head.length, head.close),
            (200, Length::Fixed(2), false)
        );
        assert_eq!(&raw[head.cache_status.unwrap()], b"HIT");
        assert_eq!(&raw[head.len..], b"{}");
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        assert_eq!(parse_head(b"SSH-2.0-x\r\n\r\n").unwrap_err(), Failure::Protocol);
        let close = parse_head(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((close.length, close.close), (Length::UntilClose, true));
        let chunked = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(chunked.length, Length::Chunked);
    }

    #[test]
    fn chunked_bodies_are_reassembled() {
        let mut out = Vec::new();
        let data = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(dechunk(data, &mut out), Ok(Some((8, false))));
        assert_eq!(dechunk(&data[8..], &mut out), Ok(Some((7, false))));
        assert_eq!(dechunk(&data[15..], &mut out), Ok(Some((5, true))));
        assert_eq!(out, b"abcde");
        assert_eq!(dechunk(b"3\r\nab", &mut out), Ok(None));
    }
}
