//! The transparent caching proxy (`PROXY_ROUTES`): requests pass through to a real origin stub
//! byte for byte, and answers are stored and reused as RFC 9111 lets a shared cache.

use serde_json::Value;

use crate::harness::{Origin, Service, cache_status, client, get_json, raw_get};

/// The service with one route, `/api`, to the stub's `/items`.
async fn proxy_to(origin: &Origin, env: &[(&str, &str)]) -> Service {
    let route = format!("/api={}/items", origin.base);
    let mut all = vec![("PROXY_ROUTES", route.as_str())];
    all.extend_from_slice(env);
    Service::start(&all).await
}

/// The data requests the stub saw, oldest first.
async fn seen(origin: &Origin) -> Vec<Value> {
    origin.stats().await["requests"].as_array().unwrap().clone()
}

#[tokio::test]
async fn answers_pass_through_and_are_stored_and_reused_as_rfc_9111_allows() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[
            ("Cache-Control", "max-age=60"),
            ("X-Custom", "a"),
            ("ETag", "\"v1\""),
        ])
        .await;
    let service = proxy_to(&origin, &[]).await;
    let url = format!("{}/api/42?b=2&a=1", service.base);
    let c = client();
    let first = c
        .get(&url)
        .header("Connection", "X-Hop")
        .header("X-Hop", "1")
        .header("X-Kept", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-custom"], "a");
    assert_eq!(first.headers()["etag"], "\"v1\"");
    assert!(
        cache_status(&first).contains("fwd=uri-miss; stored"),
        "{}",
        cache_status(&first)
    );
    let body: Value = first.json().await.unwrap();
    assert_eq!(
        body["path"], "/items/42?b=2&a=1",
        "the rest of the path and the query go to the origin"
    );
    assert_eq!(body["n"], 1);

    let again = c.get(&url).send().await.unwrap();
    assert!(cache_status(&again).ends_with("hit"), "{}", cache_status(&again));
    assert!(again.headers().contains_key("age"));
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, body, "the stored answer, byte for byte");
    assert_eq!(origin.served().await, 1);

    // What went to the origin: end-to-end headers, Via and X-Forwarded-*; hop-by-hop ones not.
    let req = &seen(&origin).await[0];
    let h = &req["headers"];
    assert_eq!(req["method"], "GET");
    assert_eq!(h["x-kept"], "k");
    assert!(
        h.get("x-hop").is_none(),
        "a header Connection names is hop-by-hop: {h}"
    );
    assert_eq!(h["via"], "1.1 cache-layer");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], format!("127.0.0.1:{}", service.port));

    // HEAD from the stored GET; a client's own validator gets a 304 from the cache.
    let head = c.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        body.to_string().len().to_string()
    );
    let cond = c
        .get(&url)
        .header("If-None-Match", "\"v1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(cond.status(), 304);
    assert_eq!(
        origin.served().await,
        1,
        "HEAD and the conditional were answered here"
    );

    // Another query is another resource.
    let other: Value = get_json(&format!("{}/api/42?a=1", service.base)).await;
    assert_eq!(other["n"], 2);

    // Counted by route and what the cache did: 2 misses; the GET, the HEAD and the 304 hits.
    let text = c
        .get(format!("{}/metrics", service.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |cache: &str, class: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("proxy_requests_total{")
                    && l.contains("route=\"/api\"")
                    && l.contains(&format!("cache=\"{cache}\""))
                    && l.contains(&format!("status_class=\"{class}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    assert_eq!(count("miss", "2xx"), 2.0, "{text}");
    assert_eq!(count("hit", "2xx"), 2.0);
    assert_eq!(count("hit", "3xx"), 1.0);
}

#[tokio::test]
async fn what_may_not_be_stored_is_fetched_every_time() {
    let origin = Origin::start(&[]).await;
    let service = proxy_to(&origin, &[]).await;
    let c = client();
    let cases: &[&[(&str, &str)]] = &[
        &[("Cache-Control", "no-store")],
        &[("Cache-Control", "private, max-age=60")],
        &[("Cache-Control", "max-age=60"), ("Vary", "*")],
        &[("Cache-Control", "max-age=60"), ("Set-Cookie", "session=1")],
        &[("Cache-Control", "max-age=0")],
    ];
    for (i, headers) in cases.iter().enumerate() {
        origin.headers(headers).await;
        let before = origin.served().await;
        let url = format!("{}/api/case-{i}", service.base);
        for _ in 0..2 {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200);
        }
        assert_eq!(
            origin.served().await - before,
            2,
            "{headers:?}: both went to the origin"
        );
    }
    // A request with Authorization is not answered from a response that did not allow it.
    origin.headers(&[("Cache-Control", "max-age=60")]).await;
    let before = origin.served().await;
    let url = format!("{}/api/private", service.base);
    for _ in 0..2 {
        c.get(&url)
            .header("Authorization", "Bearer x")
            .send()
            .await
            .unwrap();
    }
    assert_eq!(origin.served().await - before, 2);
}

#[tokio::test]
async fn vary_keeps_one_variant_per_selecting_value() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=60"), ("Vary", "X-Lang")])
        .await;
    let service = proxy_to(&origin, &[]).await;
    let url = format!("{}/api/v", service.base);
    let c = client();
    let mut bodies = Vec::new();
    for lang in ["a", "b", "a", "b"] {
        let r = c.get(&url).header("X-Lang", lang).send().await.unwrap();
        bodies.push(r.json::<Value>().await.unwrap()["n"].as_u64().unwrap());
    }
    assert_eq!(bodies, vec![1, 2, 1, 2], "each language its own stored variant");
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn unsafe_methods_are_forwarded_and_invalidate_what_they_change() {
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Cache-Control", "max-age=60")]).await;
    let service = proxy_to(&origin, &[]).await;
    let url = format!("{}/api/doc", service.base);
    let c = client();
    assert_eq!(get_json(&url).await["n"], 1);
    assert_eq!(get_json(&url).await["n"], 1, "stored");
    let post = c.post(&url).body("change").send().await.unwrap();
    assert_eq!(post.status(), 200);
    assert!(cache_status(&post).contains("fwd=method"));
    let requests = seen(&origin).await;
    assert_eq!(requests[1]["method"], "POST");
    assert_eq!(requests[1]["headers"]["content-length"], "6");
    assert_eq!(
        get_json(&url).await["n"],
        3,
        "the POST invalidated the stored answer"
    );
    assert_eq!(get_json(&url).await["n"], 3);
}

#[tokio::test]
async fn a_stale_answer_stands_in_when_the_origin_fails_and_stale_if_error_allows() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=0, stale-if-error=600")])
        .await;
    let service = proxy_to(&origin, &[]).await;
    let url = format!("{}/api/s", service.base);
    assert_eq!(get_json(&url).await["n"], 1);
    origin.set("status:503", 0).await;
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        cache_status(&r).contains("stale-if-error"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.json::<Value>().await.unwrap()["n"], 1);
}

#[tokio::test]
async fn a_body_too_long_to_store_streams_through_whole() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:3000000")]).await;
    origin.headers(&[("Cache-Control", "max-age=60")]).await;
    let service = proxy_to(&origin, &[("ORIGIN_MAX_BODY_BYTES", "1000000")]).await;
    let url = format!("{}/api/big", service.base);
    for _ in 0..2 {
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(cache_status(&r).contains("detail=size"), "{}", cache_status(&r));
        let body = r.bytes().await.unwrap();
        assert!(body.len() >= 3_000_000, "{}", body.len());
        serde_json::from_slice::<Value>(&body).expect("the whole body, in order");
    }
    assert_eq!(origin.served().await, 2, "not stored");
}

#[tokio::test]
async fn only_routes_reach_an_origin_and_the_service_keeps_its_own_paths() {
    let origin = Origin::start(&[]).await;
    let service = proxy_to(&origin, &[]).await;
    // An absolute-form target never chooses an origin: not a forward proxy.
    let (status, body) = raw_get(service.port, "http://example.com/api/x").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("absolute-form"), "{body}");
    // A path no route and no endpoint takes.
    let r = client()
        .get(format!("{}/elsewhere", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    // The service's own endpoints come first.
    let health = get_json(&format!("{}/health", service.base)).await;
    assert!(health.get("status").is_some(), "{health}");
    let item = get_json(&format!("{}/items/7", service.base)).await;
    assert_eq!(item["key"], "7");
    assert_eq!(origin.served().await, 0, "nothing went to the proxied origin");
}

/// Requests two parties could read differently (request smuggling) are refused before anything
/// reaches the origin: by the HTTP server (conflicting lengths, folded or malformed headers) or
/// by the proxy (two `Host`s).
#[tokio::test]
async fn ambiguous_requests_are_refused_before_they_reach_the_origin() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(&[]).await;
    let service = proxy_to(&origin, &[]).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "two CL",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        (
            "CL list",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
        ),
        (
            "TE chunked twice",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "TE not chunked",
            b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        ),
        (
            "TE in HTTP/1.0",
            b"POST /api/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
        ),
        (
            "control byte",
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n",
        ),
        (
            "space before colon",
            b"GET /api/x HTTP/1.1\r\nHost: a\r\nX-A : b\r\n\r\n",
        ),
        ("two Host", b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ];
    for (name, raw) in cases {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
            .await
            .unwrap();
        s.write_all(raw).await.unwrap();
        // The status line is in the first bytes back (a refused request may keep the connection).
        let mut out = vec![0; 512];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut out))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&out[..n]);
        let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((400..=501).contains(&status) && status != 404, "{name}: {head:?}");
    }
    assert_eq!(origin.served().await, 0, "nothing reached the origin");
    // Content-Length beside chunked: the server reads the chunks (RFC 9112 §6.3 lets it), drops
    // the length and closes the connection after answering; the origin gets one reading only,
    // the body with its own length.
    let raw = b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
        .await
        .unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let head = String::from_utf8_lossy(&out);
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let requests =
        crate::harness::get_json(&format!("{}/_stub/stats", origin.base)).await["requests"].clone();
    let requests = requests.as_array().unwrap();
    assert_eq!(
        requests.len(),
        1,
        "the request after the body was not read: {requests:?}"
    );
    assert_eq!(requests[0]["headers"]["content-length"], "3");
    assert!(requests[0]["headers"].get("transfer-encoding").is_none());
}

/// `DELETE /purge?url=` purges a proxied resource, every variant of it, under the purge rules;
/// `?soft=true` makes it stale instead (revalidated with the origin before it is served again).
#[tokio::test]
async fn purge_by_url_removes_every_variant_or_makes_them_stale() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=600"), ("Vary", "X-Lang")])
        .await;
    let token = "0123456789abcdef0123";
    let service = proxy_to(&origin, &[("ADMIN_TOKEN", token)]).await;
    let url = format!("{}/api/p?x=1", service.base);
    let c = client();
    let n = |lang: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.get(&url).header("X-Lang", lang).send().await.unwrap();
            r.json::<Value>().await.unwrap()["n"].as_u64().unwrap()
        }
    };
    assert_eq!((n("a").await, n("b").await, n("a").await), (1, 2, 1));
    let purge = |query: &'static str| {
        let c = c.clone();
        let base = service.base.clone();
        async move {
            c.delete(format!("{base}/purge?{query}"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(purge("url=%2Fapi%2Fp%3Fx%3D1").await, 204);
    assert_eq!((n("a").await, n("b").await), (3, 4), "both variants were purged");
    // Soft: stale at once, so the next request goes to the origin (no validator: a new answer).
    assert_eq!(purge("url=%2Fapi%2Fp%3Fx%3D1&soft=true").await, 204);
    assert_eq!(n("a").await, 5);
    assert_eq!(n("a").await, 5, "stored again");
    // Refused: no token, no route, no url, an unknown parameter.
    let no_token = c
        .delete(format!("{}/purge?url=/api/p", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(purge("url=%2Felsewhere").await, 400);
    assert_eq!(purge("soft=true").await, 400);
    assert_eq!(purge("url=%2Fapi%2Fp&mode=x").await, 400);
}

/// An unsafe method's invalidation and a purge by URL reach every replica (through Redis).
/// Stored answers live in Redis too (entry format 2: status, headers and body), so a replica
/// that never fetched one answers it from there, variants included; invalidations and tag purges
/// reach every replica and Redis.
#[tokio::test]
async fn replicas_share_stored_answers_through_redis_and_invalidations_reach_every_one() {
    let redis = crate::harness::Redis::start().await;
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[
            ("Cache-Control", "max-age=600"),
            ("Vary", "X-Lang"),
            ("X-Custom", "caf\u{e9}"),
            ("Surrogate-Key", "docs"),
        ])
        .await;
    let route = format!("/api={}/items", origin.base);
    let token = "0123456789abcdef0123";
    let [a, b] = crate::harness::services_on::<2>(
        &redis.url(),
        &[("PROXY_ROUTES", route.as_str()), ("ADMIN_TOKEN", token)],
    )
    .await;
    let c = client();
    let get = |base: String, lang: &'static str| {
        let c = c.clone();
        async move {
            // One Host for every replica, as behind a Service (`Host` always selects).
            let r = c
                .get(format!("{base}/api/doc"))
                .header("Host", "api.example")
                .header("X-Lang", lang)
                .send()
                .await
                .unwrap();
            let (status, custom) = (cache_status(&r), r.headers()["x-custom"].clone());
            let n = r.json::<Value>().await.unwrap()["n"].as_u64().unwrap();
            (n, status, custom)
        }
    };
    let (n, status, _) = get(a.base.clone(), "en").await;
    assert_eq!(n, 1);
    assert!(status.contains("stored"), "{status}");
    // Entries (variants and their marker) in Redis, written behind the answer.
    let in_redis = |n: usize| {
        let redis = &redis;
        crate::harness::eventually("the entries in Redis", move || async move {
            let keys = redis.cli(&["KEYS", "cache-layer:v1:k:\u{1}p\u{1}*"]);
            (keys.lines().filter(|l| !l.is_empty()).count() == n).then_some(())
        })
    };
    in_redis(2).await;
    let (n, status, custom) = get(b.base.clone(), "en").await;
    assert_eq!(n, 1, "B answers what A stored, from Redis");
    assert!(status.ends_with("hit"), "{status}");
    assert_eq!(
        custom.as_bytes(),
        "caf\u{e9}".as_bytes(),
        "headers as the origin sent them"
    );
    assert_eq!(get(b.base.clone(), "fr").await.0, 2, "another variant: fetched");
    in_redis(3).await;
    assert_eq!(get(a.base.clone(), "fr").await.0, 2, "A finds B's variant");
    assert_eq!(origin.served().await, 2);

    // An unsafe method through A: every replica, and Redis, forget the resource.
    let put = c
        .put(format!("{}/api/doc", a.base))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    crate::harness::eventually("B to drop its stored answer", || {
        let b = b.base.clone();
        let get = &get;
        async move { (get(b, "en").await.0 > 2).then_some(()) }
    })
    .await;
    let fetched = origin.served().await;
    // The marker was purged; the old variants stay until they expire, unreachable.
    in_redis(4).await;
    assert_eq!(
        get(a.base.clone(), "en").await.0,
        fetched,
        "A finds B's new answer"
    );

    // A tag purge through B: gone from A's memory and from Redis.
    let purged = c
        .delete(format!("{}/tags/docs", b.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    // A hears of it through Redis pub/sub, a moment after B's answer (B does not wait for the
    // other replicas to apply it), and then refetches.
    crate::harness::eventually("A to refetch after the tag purge", || {
        let a = a.base.clone();
        let get = &get;
        async move { (get(a, "en").await.0 > fetched).then_some(()) }
    })
    .await;
}

/// Concurrent misses on one resource are one origin fetch when its answer may be stored.
#[tokio::test]
async fn a_stampede_on_one_resource_is_one_fetch() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "300")]).await;
    origin.headers(&[("Cache-Control", "max-age=60")]).await;
    let service = proxy_to(&origin, &[]).await;
    let url = format!("{}/api/hot", service.base);
    let c = client();
    let answers = futures_util::future::join_all((0..20).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.get(&url).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap()["n"].clone())
        }
    }))
    .await;
    assert!(answers.iter().all(|(s, n)| *s == 200 && n == 1), "{answers:?}");
    assert_eq!(origin.served().await, 1);
}

/// Past `ORIGIN_MAX_CONCURRENCY` requests to the origins in flight, a request answers `503`
/// at once (each holds a connection, a descriptor), and one that streams a long body through
/// holds its place until the body has gone through.
#[tokio::test]
async fn requests_to_the_origin_past_origin_max_concurrency_answer_503_at_once() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "1500")]).await;
    let service = proxy_to(&origin, &[("ORIGIN_MAX_CONCURRENCY", "3")]).await;
    let c = client();
    // Distinct resources (no coalescing), none storable before it is answered.
    let slow = futures_util::future::join_all((0..3).map(|i| {
        let (c, url) = (c.clone(), format!("{}/api/slow-{i}", service.base));
        async move { c.get(&url).send().await.unwrap().status().as_u16() }
    }));
    let late = async {
        // Sent once the three are in flight at the origin.
        crate::harness::eventually("three requests at the origin", || async {
            (origin.stats().await["max_in_flight"].as_u64() >= Some(3)).then_some(())
        })
        .await;
        let r = c.get(format!("{}/api/late", service.base)).send().await.unwrap();
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, retry, r.json::<Value>().await.unwrap())
    };
    let (slow, (status, retry, body)) = tokio::join!(slow, late);
    assert_eq!(slow, [200, 200, 200]);
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
    assert_eq!(body["error"], "origin_unavailable", "{body}");
    // The places are given back: the next one goes through.
    let r = c.get(format!("{}/api/after", service.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// An origin on a raw socket that answers every request `200` with `chunks` pieces of 1,000
/// bytes, `gap` apart, then (unless `stall`) ends; with `stall`, it stops sending after them and
/// holds the connection. Its base URL.
async fn trickling_origin(chunks: usize, gap: std::time::Duration, stall: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let len = if stall { chunks * 1000 + 1 } else { chunks * 1000 };
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n");
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for _ in 0..chunks {
                    if conn.write_all(&[b'x'; 1000]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(gap).await;
                }
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            });
        }
    });
    base
}

/// `ORIGIN_TIMEOUT_MS` bounds the origin's head and a body read to be stored, not a body
/// streamed through for as long as it flows: it cuts one only when the origin falls silent. A
/// body that flows but is not whole within it streams through unstored (it was `504` before a
/// byte went out, though storable in size).
#[tokio::test]
async fn a_long_streamed_body_is_not_cut_at_origin_timeout_ms_while_it_flows() {
    let flowing = trickling_origin(30, std::time::Duration::from_millis(100), false).await;
    let stalled = trickling_origin(3, std::time::Duration::from_millis(10), true).await;
    let routes = format!("/f={flowing}, /s={stalled}");
    let service = Service::start(&[
        ("PROXY_ROUTES", routes.as_str()),
        ("ORIGIN_TIMEOUT_MS", "1000"),
        ("ORIGIN_MAX_BODY_BYTES", "100000"),
    ])
    .await;
    // 30 pieces over 3 s, none more than 100 ms after the last: all of it, twice (not stored).
    for _ in 0..2 {
        let r = client()
            .get(format!("{}/f/x", service.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(cache_status(&r), "cache-layer; fwd=uri-miss; detail=slow");
        assert_eq!(r.bytes().await.unwrap().len(), 30_000);
    }
    // Silent for over ORIGIN_TIMEOUT_MS after 3,000 bytes: the answer ends short, as an
    // interrupted transfer does (its length said more).
    let r = client()
        .get(format!("{}/s/x", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let started = std::time::Instant::now();
    assert!(r.bytes().await.is_err(), "a body cut short");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // An HTTP/1.0 client reads to the close: the origin's length, kept, shows it was cut.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
        .await
        .unwrap();
    conn.write_all(b"GET /s/y HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(crate::harness::DEADLINE, conn.read(&mut buf)).await {
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase().contains("content-length: 3001"),
        "{head}"
    );
    assert_eq!(body.len(), 3000);
}

/// A connection that keeps abandoning streamed bodies (each given up frees its places, so it
/// may open more) is closed once it has left 16 of them open, though a request of its own is in
/// flight: each holds a little of the server for as long as its stream stays open.
#[tokio::test]
async fn an_http2_client_that_keeps_abandoning_streams_is_disconnected() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:3000000")]).await;
    let slow = Origin::start(&[("STUB_LATENCY_MS", "8000")]).await;
    let routes = format!("/api={}/items, /slow={}/items", origin.base, slow.base);
    let service = Service::start(&[
        ("PROXY_ROUTES", routes.as_str()),
        ("ORIGIN_MAX_BODY_BYTES", "100000"),
        ("ORIGIN_TIMEOUT_MS", "15000"),
        ("HTTP_WRITE_TIMEOUT_SECS", "1"),
    ])
    .await;
    let (conn, driven) = h2_connect(service.port).await;
    let innocent = {
        let (conn, url) = (conn.clone(), format!("{}/slow/k", service.base));
        tokio::spawn(async move {
            let mut client = conn.ready().await?;
            let (answer, _) = client.send_request(http::Request::get(url).body(()).unwrap(), true)?;
            answer.await.map(|r| r.status())
        })
    };
    // Long bodies, never read, opened whenever a place is free, until the connection goes.
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    let (mut held, mut i) = (Vec::new(), 0);
    while !driven.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the connection was never closed"
        );
        i += 1;
        let url = format!("{}/api/x{i}", service.base);
        let Ok(mut client) = conn.clone().ready().await else {
            break;
        };
        let Ok((answer, _)) = client.send_request(http::Request::get(url).body(()).unwrap(), true) else {
            break;
        };
        match answer.await {
            Ok(r) if r.status() == 200 => held.push(r),
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            Err(_) => break,
        }
    }
    assert!(held.len() >= 16, "{} streams opened", held.len());
    assert!(
        !matches!(innocent.await.unwrap(), Ok(s) if s == 200),
        "closed before its own request was answered"
    );
}

/// A streamed body keeps the origin's `Content-Length` only when that framed it: one that came
/// chunked, with a length beside it (RFC 9112 §6.3: the chunks win), passes on whole without the
/// length (it was passed on, and the client read 5,000 of 100,000 bytes as if whole).
#[tokio::test]
async fn a_length_the_origins_chunks_overrule_is_not_passed_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5000\r\n\
                    connection: close\r\n\r\n"
                    .to_vec();
                for _ in 0..10 {
                    answer.extend_from_slice(b"2710\r\n");
                    answer.extend_from_slice(&[b'x'; 10_000]);
                    answer.extend_from_slice(b"\r\n");
                }
                answer.extend_from_slice(b"0\r\n\r\n");
                let _ = conn.write_all(&answer).await;
            });
        }
    });
    let routes = format!("/c={base}");
    let service = Service::start(&[
        ("PROXY_ROUTES", routes.as_str()),
        ("ORIGIN_MAX_BODY_BYTES", "1000"),
    ])
    .await;
    let r = client()
        .get(format!("{}/c/x", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("content-length"), None);
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);
}

/// Opens an HTTP/2 (prior knowledge) connection to `port` that grants each stream its first
/// 64 KiB of window and no more (its bodies are never read), with room on the connection for
/// small answers; and the task that drives it, which ends when the connection is closed.
async fn h2_connect(port: u16) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(65_535)
        .initial_connection_window_size(16 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    let driven = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, driven)
}

/// `GET` over `client`: the answer's head, and its body unread.
async fn h2_get(client: &h2::client::SendRequest<bytes::Bytes>, url: &str) -> http::Response<h2::RecvStream> {
    let mut client = client.clone().ready().await.unwrap();
    let request = http::Request::get(url).body(()).unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    answer.await.unwrap()
}

/// Over HTTP/2 one connection carries many requests: it streams at most 8 bodies too long to
/// store at once (a 9th is `503`), and a stream whose client takes nothing (grants no window,
/// so no socket write blocks) lets its places go after `HTTP_WRITE_TIMEOUT_SECS`; a connection
/// left with nothing but such streams is closed, one with other requests in flight is not.
/// Before, one connection held every stream place and every origin place for as long as it
/// stayed open.
#[tokio::test]
async fn an_http2_client_that_takes_nothing_holds_no_place_for_long() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:3000000")]).await;
    // (A write timeout of 3 s, not 1: on a slow machine the first of 8 streams gave its
    // places up before the 9th was asked for. The small origin answers after twice that, so
    // its request is still in flight when the streams are given up.)
    let small = Origin::start(&[("STUB_LATENCY_MS", "6000")]).await;
    let routes = format!("/api={}/items, /small={}/items", origin.base, small.base);
    let service = Service::start(&[
        ("PROXY_ROUTES", routes.as_str()),
        ("ORIGIN_MAX_BODY_BYTES", "100000"),
        ("HTTP_MAX_CONNECTIONS", "16"),
        ("ORIGIN_MAX_CONCURRENCY", "4"),
        ("ORIGIN_TIMEOUT_MS", "10000"),
        ("HTTP_WRITE_TIMEOUT_SECS", "3"),
    ])
    .await;
    let url = |conn: &str, i: usize| format!("{}/api/{conn}{i}", service.base);
    let mut held = Vec::new();
    let (a, a_driven) = h2_connect(service.port).await;
    for i in 0..8 {
        let r = h2_get(&a, &url("a", i)).await;
        assert_eq!(r.status(), 200, "a{i}");
        held.push(r);
    }
    let mut r = h2_get(&a, &url("a", 8)).await;
    assert_eq!(r.status(), 503, "a 9th stream on one connection");
    assert_eq!(r.headers()["retry-after"], "1");
    let body = r.body_mut().data().await.unwrap().unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("this connection streams as many bodies"),
        "{body:?}"
    );
    // A request of its own in flight on that connection while its streams are given up: the
    // connection stays open for it (only a connection left with nothing else is closed).
    let innocent = {
        let (a, url) = (a.clone(), format!("{}/small/a", service.base));
        tokio::spawn(async move { h2_get(&a, &url).await })
    };
    // Other clients' misses still reach the origin: the streams gave their places back.
    let c = client();
    let r = c.get(format!("{}/small/k", service.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A second connection takes the other 8 of the 16 stream places (HTTP_MAX_CONNECTIONS)...
    let (b, b_driven) = h2_connect(service.port).await;
    for i in 0..8 {
        let r = h2_get(&b, &url("b", i)).await;
        assert_eq!(r.status(), 200, "b{i}");
        held.push(r);
    }
    // ...and once they have stalled for HTTP_WRITE_TIMEOUT_SECS, the places are free again,
    // though both connections stay open.
    let (third, _) = h2_connect(service.port).await;
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    let mut refused = 0;
    loop {
        let r = h2_get(&third, &url("c", refused)).await;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        refused += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled streams kept their places"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        innocent.await.unwrap().status(),
        200,
        "answered on the same connection"
    );
    // The clients that took nothing were disconnected (so they hold no connection either).
    for driven in [a_driven, b_driven] {
        tokio::time::timeout(crate::harness::DEADLINE, driven)
            .await
            .expect("the connection is closed")
            .unwrap();
    }
    drop(held);
}

/// A client that stops reading a long streamed body keeps its origin connection, but not a
/// place among the `ORIGIN_MAX_CONCURRENCY` requests to origins: other clients' misses go on.
#[tokio::test]
async fn a_client_that_stops_reading_a_streamed_body_does_not_hold_others_misses() {
    use tokio::io::AsyncWriteExt;
    let origin = Origin::start(&[("STUB_MODE", "bytes:3000000")]).await;
    let service = proxy_to(
        &origin,
        &[("ORIGIN_MAX_CONCURRENCY", "1"), ("ORIGIN_MAX_BODY_BYTES", "1000")],
    )
    .await;
    // Two clients ask for a 3 MB body, read the start of the answer (it is streaming) and
    // never read more.
    let mut stalled = Vec::new();
    for i in 0..2 {
        use tokio::io::AsyncReadExt;
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
            .await
            .unwrap();
        let ask = format!("GET /api/stalled-{i} HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.write_all(ask.as_bytes()).await.unwrap();
        let mut start = [0u8; 12];
        conn.read_exact(&mut start).await.unwrap();
        assert_eq!(&start, b"HTTP/1.1 200");
        stalled.push(conn);
    }
    // Another client's miss still gets its whole answer.
    let r = client()
        .get(format!("{}/api/other", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > 3_000_000);
    assert_eq!(seen(&origin).await.len(), 3);
}

/// Background refreshes (`stale-while-revalidate`) take at most half of the
/// `ORIGIN_MAX_CONCURRENCY` places: a client's miss still finds one while they run.
#[tokio::test]
async fn background_refreshes_leave_clients_half_the_places() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "1500")]).await;
    origin
        .headers(&[("Cache-Control", "max-age=1, stale-while-revalidate=60")])
        .await;
    let service = proxy_to(&origin, &[("ORIGIN_MAX_CONCURRENCY", "2")]).await;
    let c = client();
    for key in ["a", "b"] {
        let r = c.get(format!("{}/api/{key}", service.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    // Both stale: each is served at once and asks for a refresh; one place is for refreshes.
    for key in ["a", "b"] {
        let r = c.get(format!("{}/api/{key}", service.base)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    }
    let r = c.get(format!("{}/api/new", service.base)).send().await.unwrap();
    assert_eq!(r.status(), 200, "a client's miss while the refreshes run");
}

/// With one place, none is for refreshes: a stale hit is served and refreshes nothing, and a
/// client's miss right after it has the place (it was 503 while the refresh held it).
#[tokio::test]
async fn with_one_origin_place_a_refresh_never_takes_it() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "1500")]).await;
    origin
        .headers(&[("Cache-Control", "max-age=1, stale-while-revalidate=60")])
        .await;
    let service = proxy_to(&origin, &[("ORIGIN_MAX_CONCURRENCY", "1")]).await;
    let c = client();
    let url = |key: &str| format!("{}/api/{key}", service.base);
    assert_eq!(c.get(url("a")).send().await.unwrap().status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let r = c.get(url("a")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    let r = c.get(url("new")).send().await.unwrap();
    assert_eq!(r.status(), 200, "a client's miss after the stale hit");
    assert_eq!(origin.served().await, 2, "no refresh went out");
}

/// Misses coalesced on a fetch whose body proves too long to store are not failed: each gets
/// the whole body, streamed (the leader's from its fetch, the waiters' from their own).
#[tokio::test]
async fn waiters_on_a_fetch_too_long_to_store_get_the_whole_body_too() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:3000000"), ("STUB_LATENCY_MS", "300")]).await;
    origin.headers(&[("Cache-Control", "max-age=60")]).await;
    let service = proxy_to(&origin, &[("ORIGIN_MAX_BODY_BYTES", "1000000")]).await;
    let url = format!("{}/api/big", service.base);
    let c = client();
    let answers = futures_util::future::join_all((0..8).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.get(&url).send().await.unwrap();
            let status = (r.status(), cache_status(&r));
            let body = r.bytes().await.unwrap();
            let whole = serde_json::from_slice::<Value>(&body).is_ok() && body.len() >= 3_000_000;
            (status, whole)
        }
    }))
    .await;
    for ((status, cache), whole) in &answers {
        assert_eq!(*status, 200, "{answers:?}");
        assert!(cache.contains("detail=size"), "{cache}");
        assert!(whole, "{answers:?}");
    }
    assert_eq!(origin.served().await, 8, "nothing stored, so every one fetched");
}

/// `stale-while-revalidate`: stale answers at once, and one background request per resource
/// however many clients were served stale meanwhile.
#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "300")]).await;
    origin
        .headers(&[("Cache-Control", "max-age=0, stale-while-revalidate=600")])
        .await;
    let service = proxy_to(&origin, &[]).await;
    let url = format!("{}/api/swr", service.base);
    assert_eq!(get_json(&url).await["n"], 1);
    let c = client();
    let answers = futures_util::future::join_all((0..10).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let r = c.get(&url).send().await.unwrap();
            let status = cache_status(&r);
            (status, r.json::<Value>().await.unwrap()["n"].clone())
        }
    }))
    .await;
    assert!(
        answers
            .iter()
            .all(|(s, n)| s.contains("stale-while-revalidate") && n == 1),
        "{answers:?}"
    );
    origin.wait_served(2).await;
    crate::harness::eventually("the refresh to be stored", || async {
        (get_json(&url).await["n"].as_u64() >= Some(2)).then_some(())
    })
    .await;
    assert!(
        origin.served().await <= 3,
        "one refresh at a time: {}",
        origin.served().await
    );
}

/// With `ADMIN_LISTEN_ADDR`, the service's own endpoints move to that listener and the routes
/// take every other path of the main one (`/items` reads stay there).
#[tokio::test]
async fn an_admin_listener_lets_routes_take_the_service_paths() {
    let origin = Origin::start(&[]).await;
    let admin_port = crate::harness::free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let route = format!("/={}", origin.base);
    let token = "0123456789abcdef0123";
    let service = Service::start(&[
        ("PROXY_ROUTES", route.as_str()),
        ("ADMIN_LISTEN_ADDR", admin.as_str()),
        ("ADMIN_TOKEN", token),
    ])
    .await;
    let admin = format!("http://{admin}");
    let c = client();
    // Main listener: /health and /metrics are the origin's; /items reads are the service's.
    for path in ["/health", "/metrics", "/livez", "/tags/x"] {
        let body: Value = get_json(&format!("{}{path}", service.base)).await;
        assert_eq!(body["path"], path, "{path} went to the origin");
    }
    assert_eq!(get_json(&format!("{}/items/7", service.base)).await["key"], "7");
    let delete = c
        .delete(format!("{}/items/7", service.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 405, "purges are on the admin listener");
    // Admin listener: the service's endpoints, and nothing proxied.
    assert!(get_json(&format!("{admin}/health")).await.get("tiers").is_some());
    assert_eq!(
        c.get(format!("{admin}/readyz")).send().await.unwrap().status(),
        200
    );
    let metrics = c
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_requests_total"));
    assert_eq!(
        c.get(format!("{admin}/items/7")).send().await.unwrap().status(),
        405
    );
    assert_eq!(
        c.get(format!("{admin}/elsewhere")).send().await.unwrap().status(),
        404
    );
    let purge = c
        .delete(format!("{admin}/items/7"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 204);
    let purge = c
        .delete(format!("{admin}/purge?url=%2Fhealth"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 204);
    // `healthcheck` probes the admin listener's /livez.
    let status = crate::harness::service_command(&[
        ("LISTEN_ADDR", &format!("127.0.0.1:{}", service.port)),
        ("ADMIN_LISTEN_ADDR", &format!("127.0.0.1:{admin_port}")),
    ])
    .arg("healthcheck")
    .status()
    .unwrap();
    assert!(status.success());
    let n_before = origin.served().await;
    assert!(n_before >= 4);
}

/// What an attack pass found, each kept out: paths that leave the route's base, hosts that
/// share answers, bodies that never end, origins' addresses in errors, routes that loop.
#[tokio::test]
async fn hostile_requests_find_no_way_around_the_routes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Cache-Control", "max-age=60")]).await;
    let service = proxy_to(&origin, &[("HTTP_BODY_TIMEOUT_SECS", "1")]).await;
    for path in [
        "/api/../x",
        "/api/%2e%2e/x",
        "/api/.%2E/x",
        "/api/x/..%2f..%2fadmin",
        "/api/x\\\\..\\\\..\\\\admin",
        "/api/./x",
    ] {
        let (status, body) = raw_get(service.port, path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    assert_eq!(origin.served().await, 0, "no dot segment reached the origin");
    // The Host is part of what selects a stored answer (the origin is told it).
    let c = client();
    let with_host = |host: &'static str| {
        let (c, url) = (c.clone(), format!("{}/api/h", service.base));
        async move {
            let r = c.get(&url).header("Host", host).send().await.unwrap();
            r.json::<Value>().await.unwrap()["n"].as_u64().unwrap()
        }
    };
    assert_eq!(
        (with_host("a.example").await, with_host("b.example").await),
        (1, 2)
    );
    assert_eq!(with_host("A.example").await, 1, "hosts compare without case");
    // One resource, however its URL is escaped: %68 is h.
    assert_eq!(get_json(&format!("{}/api/%68", service.base)).await["n"], 3);
    // Request bodies: a declared length over the limit at once, a body that stalls in time.
    let big = c
        .post(format!("{}/api/x", service.base))
        .header("Content-Length", "2000000")
        .body(vec![b'x'; 2_000_000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", service.port))
        .await
        .unwrap();
    s.write_all(b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let mut out = vec![0; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), s.read(&mut out))
        .await
        .expect("answered within the body timeout")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out[..n]).starts_with("HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&out[..n])
    );
    // An origin that cannot be reached: no address in the message.
    let closed = crate::harness::free_port();
    let route = format!("/down=http://127.0.0.1:{closed}/x");
    let down = Service::start(&[("PROXY_ROUTES", route.as_str())]).await;
    let r = c.get(format!("{}/down/y", down.base)).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(!text.contains("127.0.0.1"), "{text}");
    // A route that leads back to the proxy itself ends, refused.
    let port = crate::harness::free_port();
    let looped = format!("/=http://127.0.0.1:{port}/");
    let mut child = crate::harness::service_command(&[("PROXY_ROUTES", looped.as_str())])
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/loop");
    let status = crate::harness::eventually("the looping service to answer", || {
        let (c, url) = (c.clone(), url.clone());
        async move { c.get(&url).send().await.ok().map(|r| r.status()) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 508);
}

#[tokio::test]
async fn route_options_normalise_the_query_bound_lifetimes_and_send_the_routes_own_headers() {
    let origin = Origin::start(&[]).await;
    // No freshness from the origin at all: the route's ttl_min makes the answer fresh.
    let routes = format!(
        "/api={}/items; query=sort; query_drop=utm_*|fbclid; ttl_min=60; \
         header_from_env=Authorization:TEST_API_TOKEN; header=X-Team:search",
        origin.base
    );
    let service = Service::start(&[
        ("PROXY_ROUTES", routes.as_str()),
        ("TEST_API_TOKEN", "Bearer t0ken"),
    ])
    .await;
    let c = client();
    let first = c
        .get(service.url("/api/1?b=2&utm_source=mail&a=1"))
        .send()
        .await
        .unwrap();
    assert!(
        cache_status(&first).contains("stored"),
        "{}",
        cache_status(&first)
    );
    let body: Value = first.json().await.unwrap();
    assert_eq!(
        body["path"], "/items/1?a=1&b=2",
        "sorted, utm_* dropped, before the origin is asked"
    );
    let h = &seen(&origin).await[0]["headers"];
    assert_eq!(h["authorization"], "Bearer t0ken");
    assert_eq!(h["x-team"], "search");

    // Another spelling of the same query, with the client's own Authorization (replaced by the
    // route's, so it neither reaches the origin nor stops the answer from being reused).
    let again = c
        .get(service.url("/api/1?fbclid=9&a=1&b=2&utm_medium=x"))
        .header("Authorization", "Bearer client")
        .header("X-Team", "other")
        .send()
        .await
        .unwrap();
    assert!(cache_status(&again).ends_with("hit"), "{}", cache_status(&again));
    assert_eq!(again.json::<Value>().await.unwrap()["n"], 1);
    assert_eq!(origin.served().await, 1);

    // A missing header_from_env variable stops start-up, naming it and never the values.
    let out = crate::harness::service_command(&[(
        "PROXY_ROUTES",
        "/a=http://127.0.0.1:9/x;header=X-Key:s3cret;header_from_env=Authorization:NOT_SET_ANYWHERE",
    )])
    .output()
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PROXY_ROUTES") && err.contains("NOT_SET_ANYWHERE"),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");

    // A variable that is not UTF-8 (the route's secret, or anything else) never panics the
    // service or shows its value: the route names a variable that is not usable.
    use std::os::unix::ffi::OsStrExt;
    let out = crate::harness::service_command(&[(
        "PROXY_ROUTES",
        "/a=http://127.0.0.1:9/x;header_from_env=Authorization:NOT_UTF8_TOKEN",
    )])
    .env("NOT_UTF8_TOKEN", std::ffi::OsStr::from_bytes(b"Bearer s3cr\xfft"))
    .env("SOMETHING_ELSE", std::ffi::OsStr::from_bytes(b"pw\xff"))
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("NOT_UTF8_TOKEN") && !err.contains("s3cr") && !err.contains("panicked"),
        "{err}"
    );
}

#[tokio::test]
async fn a_route_may_strip_cookies_to_store_an_answer_and_stale_windows_of_its_own() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=0"), ("Set-Cookie", "id=1; Path=/")])
        .await;
    let routes = format!(
        "/p={b}/items, /s={b}/items;set_cookie=strip;stale_while_revalidate=600",
        b = origin.base
    );
    let service = Service::start(&[("PROXY_ROUTES", routes.as_str())]).await;
    let c = client();
    // The default: an answer that sets a cookie is not stored.
    for n in 1..=2 {
        let r = c.get(service.url("/p/1")).send().await.unwrap();
        assert_eq!(r.headers()["set-cookie"], "id=1; Path=/");
        assert!(cache_status(&r).contains("set-cookie"), "{}", cache_status(&r));
        assert_eq!(r.json::<Value>().await.unwrap()["n"], n);
    }
    // strip: the client that fetched it gets the cookie; the stored answer has none. max-age=0,
    // but the route's stale_while_revalidate serves it at once while one refresh runs.
    let r = c.get(service.url("/s/1")).send().await.unwrap();
    assert_eq!(r.headers()["set-cookie"], "id=1; Path=/");
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    assert_eq!(r.json::<Value>().await.unwrap()["n"], 3);
    let r = c.get(service.url("/s/1")).send().await.unwrap();
    assert!(r.headers().get("set-cookie").is_none(), "{:?}", r.headers());
    assert!(
        cache_status(&r).contains("stale-while-revalidate"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.json::<Value>().await.unwrap()["n"], 3);
    origin.wait_served(4).await;
}

#[tokio::test]
async fn proxied_answers_are_purged_by_their_tags() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=600"), ("Surrogate-Key", "shelf item")])
        .await;
    let token = "0123456789abcdef0123";
    let service = proxy_to(&origin, &[("ADMIN_TOKEN", token)]).await;
    let c = client();
    for path in ["/api/1", "/api/2", "/api/1"] {
        c.get(service.url(path)).send().await.unwrap();
    }
    assert_eq!(origin.served().await, 2);
    let purged = c
        .delete(service.url("/tags/shelf"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 200);
    let purged: Value = purged.json().await.unwrap();
    assert_eq!(purged["purged"]["memory"], 2, "{purged}");
    // A fetch begun in the purge's own millisecond may have read what the purge was for, so
    // its answer is not kept (the fence is by the millisecond): begin the next one after it.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let r = c.get(service.url("/api/1")).send().await.unwrap();
    assert!(cache_status(&r).contains("fwd=uri-miss"), "{}", cache_status(&r));
    assert_eq!(r.json::<Value>().await.unwrap()["n"], 3);
    // Soft: stale at once, so the next request goes to the origin (no validators: a full fetch).
    let soft = c
        .delete(service.url("/tags/item?soft=true"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(soft.status(), 200);
    let r = c.get(service.url("/api/1")).send().await.unwrap();
    assert!(cache_status(&r).contains("fwd=stale"), "{}", cache_status(&r));
    assert_eq!(r.json::<Value>().await.unwrap()["n"], 4);
    assert_eq!(origin.served().await, 4);
}

#[tokio::test]
async fn an_origin_compressed_answer_is_stored_once_as_identity_and_compressed_per_client() {
    use std::io::Read;
    let origin = Origin::start(&[]).await;
    origin.set("encoded:gzip", 0).await;
    origin
        .headers(&[
            ("Cache-Control", "max-age=600"),
            ("Vary", "Accept-Encoding"),
            ("ETag", "\"e1\""),
        ])
        .await;
    let service = proxy_to(
        &origin,
        &[("COMPRESSION", "true"), ("COMPRESSION_MIN_BYTES", "8")],
    )
    .await;
    let c = client();
    let get = |coding: Option<&'static str>| {
        let (c, url) = (c.clone(), service.url("/api/z"));
        async move {
            let mut r = c.get(url);
            if let Some(coding) = coding {
                r = r.header("Accept-Encoding", coding);
            }
            let r = r.send().await.unwrap();
            let status = cache_status(&r);
            let h = r.headers().clone();
            let raw = r.bytes().await.unwrap();
            let mut plain = Vec::new();
            match h.get("content-encoding").map(|v| v.to_str().unwrap()) {
                Some("gzip") => {
                    flate2::read::GzDecoder::new(&raw[..])
                        .read_to_end(&mut plain)
                        .unwrap();
                }
                Some("br") => {
                    brotli::Decompressor::new(&raw[..], 4096)
                        .read_to_end(&mut plain)
                        .unwrap();
                }
                None => plain = raw.to_vec(),
                Some(other) => panic!("{other}"),
            }
            let body: Value = serde_json::from_slice(&plain).unwrap();
            (status, h, body)
        }
    };
    let (status, h, body) = get(Some("gzip")).await;
    assert!(status.contains("stored"), "{status}");
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(h["etag"], "W/\"e1\"", "another representation: weak");
    assert_eq!(body["n"], 1);
    let (status, h, body) = get(None).await;
    assert!(status.ends_with("hit"), "{status}");
    assert!(h.get("content-encoding").is_none(), "{h:?}");
    assert!(
        h.get_all("vary").iter().any(|v| v
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")),
        "{h:?}"
    );
    assert_eq!(body["n"], 1);
    let (status, h, body) = get(Some("br;q=1, gzip;q=0.5")).await;
    assert!(status.ends_with("hit"), "{status}");
    assert_eq!(h["content-encoding"], "br");
    assert_eq!(body["n"], 1);
    assert_eq!(
        origin.served().await,
        1,
        "one identity entry for every Accept-Encoding"
    );

    // What cannot be decoded within ORIGIN_MAX_BODY_BYTES passes through as sent, unstored.
    for mode in ["bomb", "badgzip"] {
        origin.set(mode, 0).await;
        let before = origin.served().await;
        for _ in 0..2 {
            let r = c
                .get(service.url(&format!("/api/{mode}")))
                .header("Accept-Encoding", "gzip")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-encoding"], "gzip");
            assert!(
                cache_status(&r).contains("detail=encoding"),
                "{}",
                cache_status(&r)
            );
        }
        assert_eq!(origin.served().await, before + 2, "{mode}");
    }
}

/// Stored answers go to the disk tier too (format 2), outlive a restart, and are stored without
/// a memory tier.
#[tokio::test]
async fn stored_answers_outlive_a_restart_on_the_disk_tier() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=600"), ("X-Custom", "kept")])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let route = format!("/api={}/items", origin.base);
    let dir_text = dir.path().display().to_string();
    for memory in ["true", "false"] {
        let env = [
            ("PROXY_ROUTES", route.as_str()),
            ("DISK_CACHE_DIR", dir_text.as_str()),
            ("DISK_CACHE_ADMIT_MIN_REQUESTS", "1"),
            ("MEMORY_CACHE_ENABLED", memory),
        ];
        let path = format!("/api/disk-{memory}");
        let mut s = Service::start(&env).await;
        // One Host before and after (the restarted service listens on another port).
        let get = |url: String| client().get(url).header("Host", "api.example").send();
        let r = get(s.url(&path)).await.unwrap();
        assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
        let n = r.json::<Value>().await.unwrap()["n"].clone();
        s.terminate();
        assert!(s.wait_exit().await.success());
        let s = Service::start(&env).await;
        let r = get(s.url(&path)).await.unwrap();
        assert!(cache_status(&r).ends_with("hit"), "{}", cache_status(&r));
        assert_eq!(r.headers()["x-custom"], "kept");
        assert_eq!(r.json::<Value>().await.unwrap()["n"], n, "memory={memory}");
    }
    assert_eq!(origin.served().await, 2);
}

/// A fresh hit is answered by the fast path (no router, no span) exactly as by the full flow:
/// same status, headers and body, counted the same; the service's own paths stay its own.
#[tokio::test]
async fn a_fast_hit_answers_exactly_as_the_full_flow_would() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[
            ("Cache-Control", "max-age=600"),
            ("ETag", "\"p1\""),
            ("Vary", "Accept-Encoding, X-Lang"),
            ("Connection", "X-Hop"),
            ("X-Hop", "1"),
        ])
        .await;
    let routes = format!("/={b}/items, /api={b}/items", b = origin.base);
    let service = Service::start(&[("PROXY_ROUTES", routes.as_str()), ("COMPRESSION_MIN_BYTES", "8")]).await;
    let c = client();
    let url = service.url("/api/fast?x=1");
    let first = c.get(&url).header("X-Lang", "en").send().await.unwrap();
    assert!(cache_status(&first).contains("stored"));
    let answer = |extra: Option<(&'static str, &'static str)>, coding: Option<&'static str>| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let mut r = c.get(&url).header("X-Lang", "en");
            if let Some((k, v)) = extra {
                r = r.header(k, v);
            }
            if let Some(coding) = coding {
                r = r.header("Accept-Encoding", coding);
            }
            let r = r.send().await.unwrap();
            let status = r.status();
            let mut headers = r.headers().clone();
            headers.remove("age");
            headers.remove("date");
            (status, headers, r.bytes().await.unwrap())
        }
    };
    // `Pragma` with no directive in it sends a request through the full flow, to the same hit.
    for coding in [None, Some("gzip"), Some("br")] {
        let fast = answer(None, coding).await;
        let full = answer(Some(("Pragma", "x-nothing")), coding).await;
        assert_eq!(fast.0, 200);
        assert_eq!(fast, full, "{coding:?}");
        assert_eq!(fast.1["cache-status"], "cache-layer; hit");
        assert!(fast.1.get("x-hop").is_none(), "hop-by-hop fields are not stored");
    }
    let fast = answer(Some(("If-None-Match", "\"p1\"")), None).await;
    assert_eq!(fast.0, 304);
    // HEAD carries the fields GET would (the coding, the weak ETag), without a body.
    let head = c
        .head(&url)
        .header("X-Lang", "en")
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["content-encoding"], "gzip");
    assert_eq!(head.headers()["etag"], "W/\"p1\"");
    let gzipped = answer(None, Some("gzip")).await;
    assert_eq!(
        head.headers()["content-length"],
        gzipped.2.len().to_string(),
        "the length GET would send"
    );
    // A 304 to a client that takes gzip names the weak tag of the form it holds.
    let not_modified = answer(Some(("If-None-Match", "W/\"p1\"")), Some("gzip")).await;
    assert_eq!(
        (not_modified.0.as_u16(), &not_modified.1["etag"]),
        (304, &"W/\"p1\"".parse().unwrap())
    );
    let future = answer(Some(("If-Modified-Since", "Fri, 31 Dec 9999 23:59:59 GMT")), None).await;
    assert_eq!(
        future.0, 200,
        "a date in the future is not a valid If-Modified-Since"
    );
    assert_eq!(origin.served().await, 1);
    // Counted alike: 6 hits, the 304s, the HEAD and the rest (hits too), 1 miss.
    let text = service.metrics_text().await;
    let hits: f64 = text
        .lines()
        .filter(|l| l.starts_with("proxy_requests_total{") && l.contains("cache=\"hit\""))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(hits, 11.0, "{text}");
    // The route `/` takes every other path, but not the service's own.
    assert_eq!(c.get(service.url("/health")).send().await.unwrap().status(), 200);
    let h: Value = get_json(&service.url("/health")).await;
    assert!(h.get("tiers").is_some(), "{h}");
}

/// Each route has a circuit breaker of its own (`ORIGIN_BREAKER_*`): a failing origin stops
/// being asked, a stored answer stands in where stale-if-error allows, and another route's
/// origin is still asked.
#[tokio::test]
async fn a_failing_routes_circuit_opens_without_closing_the_others() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=0, stale-if-error=600")])
        .await;
    let routes = format!("/api={b}/items, /other={b}/items", b = origin.base);
    let service = Service::start(&[
        ("PROXY_ROUTES", routes.as_str()),
        ("ORIGIN_BREAKER_MIN_REQUESTS", "4"),
        ("ORIGIN_BREAKER_FAILURE_RATE", "50"),
        ("ORIGIN_BREAKER_COOLDOWN_SECS", "600"),
    ])
    .await;
    let c = client();
    assert_eq!(get_json(&service.url("/api/kept")).await["n"], 1);
    origin.set("status:503", 0).await;
    // One path failing under many queries is one failure of the window (a client cannot open
    // the circuit by varying a query string).
    for i in 0..5 {
        let r = c
            .get(service.url(&format!("/api/q?cb={i}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
    }
    assert_eq!(
        service.json("/health").await["routes"]["/api"]["circuit"],
        "closed"
    );
    for i in 0..2 {
        let r = c.get(service.url(&format!("/api/f{i}"))).send().await.unwrap();
        assert_eq!(r.status(), 503);
    }
    // 3 of the window's 4 calls failed: the circuit is open, and the stored answer stands in
    // without the origin being asked.
    let health = service.json("/health").await;
    assert_eq!(health["routes"]["/api"]["circuit"], "open", "{health}");
    assert_eq!(health["routes"]["/other"]["circuit"], "closed");
    assert_eq!(health["status"], "degraded");
    let stale = c.get(service.url("/api/kept")).send().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert!(
        cache_status(&stale).contains("stale-if-error"),
        "{}",
        cache_status(&stale)
    );
    let served = origin.served().await;
    assert_eq!(served, 8);
    let open = c.get(service.url("/api/f9")).send().await.unwrap();
    assert_eq!(open.status(), 503);
    assert!(open.headers().contains_key("retry-after"));
    let body: Value = open.json().await.unwrap();
    assert_eq!(body["error"], "origin_unavailable", "{body}");
    let stale = c.get(service.url("/api/kept")).send().await.unwrap();
    assert_eq!(
        stale.status(),
        200,
        "the stored answer stands in while the circuit is open"
    );
    assert_eq!(
        origin.served().await,
        served,
        "nothing reached the failing origin"
    );
    // Another route's circuit is its own.
    origin.set("ok", 0).await;
    assert_eq!(get_json(&service.url("/other/x")).await["n"], served + 1);
}

/// Concurrent misses on one resource across replicas sharing Redis are one origin fetch: one
/// replica takes the fleet lock, the others wait for what it stores.
#[tokio::test]
async fn a_stampede_across_replicas_is_one_fetch() {
    let redis = crate::harness::Redis::start().await;
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Cache-Control", "max-age=600")]).await;
    origin.set("ok", 400).await;
    let route = format!("/api={}/items", origin.base);
    let replicas = crate::harness::services_on::<3>(&redis.url(), &[("PROXY_ROUTES", route.as_str())]).await;
    let c = client();
    let mut all = Vec::new();
    for s in &replicas {
        for _ in 0..6 {
            let (c, url) = (c.clone(), s.url("/api/stampede"));
            all.push(tokio::spawn(async move {
                let r = c.get(url).header("Host", "api.example").send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap()["n"].clone())
            }));
        }
    }
    for task in all {
        let (status, n) = task.await.unwrap();
        assert_eq!((status, n), (200, Value::from(1)));
    }
    assert_eq!(origin.served().await, 1, "one fetch for the whole fleet");
}

/// Attack pass (helper-16): variants are selected by exactly what the origin was sent. A value
/// that is not UTF-8 selects a variant of its own, a header `Connection` lists is dropped before
/// it can select one (and cannot remove this cache's `Via`), and `..;` is a dot segment.
#[tokio::test]
async fn variants_are_selected_by_what_the_origin_was_sent_whatever_the_client_spells() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=600"), ("Vary", "X-Lang")])
        .await;
    let service = proxy_to(&origin, &[]).await;
    let raw = |request: Vec<u8>| {
        let port = service.port;
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(&request).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let n_of = |answer: &str| -> u64 {
        let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
        serde_json::from_str::<Value>(body).unwrap()["n"]
            .as_u64()
            .unwrap()
    };
    // A value that is not UTF-8 is stored as its own variant...
    let bad =
        raw(b"GET /api/v HTTP/1.1\r\nHost: a\r\nX-Lang: \xff\xfe\r\nConnection: close\r\n\r\n".to_vec())
            .await;
    assert_eq!(n_of(&bad), 1);
    // ...so a client that sends no X-Lang is not given it.
    let none = raw(b"GET /api/v HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec()).await;
    assert_eq!(n_of(&none), 2, "{none}");
    // A header the client lists in Connection never reaches the origin, so it selects nothing:
    // this request is the no-X-Lang variant, and an `fr` client gets its own.
    let listed = raw(
        b"GET /api/v HTTP/1.1\r\nHost: a\r\nX-Lang: fr\r\nConnection: x-lang, via, close\r\n\r\n".to_vec(),
    )
    .await;
    assert_eq!(n_of(&listed), 2, "{listed}");
    let fr = raw(b"GET /api/v HTTP/1.1\r\nHost: a\r\nX-Lang: fr\r\nConnection: close\r\n\r\n".to_vec()).await;
    assert_eq!(n_of(&fr), 3, "{fr}");
    let seen = seen(&origin).await;
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2]["headers"]["x-lang"], "fr");
    assert!(
        seen.iter().all(|r| r["headers"]["via"] == "1.1 cache-layer"),
        "{seen:?}"
    );
    // `..;` is a dot segment to servlet containers, `..%20` and `...` to servers that trim:
    // refused like `..`.
    for target in ["/api/..;/x", "/api/..%20/x", "/api/..%00/x", "/api/.../x"] {
        let (status, _) = crate::harness::raw_get(service.port, target).await;
        assert_eq!(status, 400, "{target}");
    }
    // An HTTP/1.1 request without Host is refused (RFC 9112 §3.2).
    let no_host = raw(b"GET /api/v HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()).await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert_eq!(origin.served().await, 3);
}

/// Attack pass (helper-16): an entry in Redis under a proxied key that this proxy would never
/// store (a 1xx status, framing fields) is not served: the resource is fetched again.
#[tokio::test]
async fn a_foreign_value_in_redis_is_not_served() {
    let redis = crate::harness::Redis::start().await;
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Cache-Control", "max-age=600")]).await;
    let route = format!("/api={}/items", origin.base);
    let env = [("PROXY_ROUTES", route.as_str())];
    let [a] = crate::harness::services_on::<1>(&redis.url(), &env).await;
    let c = client();
    let get = |s: &Service| c.get(s.url("/api/f")).header("Host", "api.example").send();
    assert_eq!(get(&a).await.unwrap().status(), 200);
    let keys = crate::harness::eventually("the variant in Redis", || async {
        let keys = redis.cli(&["KEYS", "cache-layer:v1:k:\u{1}p\u{1}*\u{1}v*"]);
        (!keys.trim().is_empty()).then_some(keys)
    })
    .await;
    let variant = keys.lines().next().unwrap().to_owned();
    let stored = redis.cli(&["GET", &variant]);
    for (from, to) in [
        ("\"st\":200", "\"st\":101"),
        ("\"h\":[", "\"h\":[[\"content-length\",\"99999\"],"),
        ("\"h\":[", "\"h\":[[\"transfer-encoding\",\"chunked\"],"),
    ] {
        assert!(stored.contains(from), "{stored}");
        redis.cli(&["SET", &variant, &stored.replacen(from, to, 1)]);
        // A replica with nothing in memory reads Redis, refuses the forged entry, and fetches.
        let [fresh] = crate::harness::services_on::<1>(&redis.url(), &env).await;
        let before = origin.served().await;
        let r = get(&fresh).await.unwrap();
        assert_eq!(r.status(), 200, "{to}");
        assert!(
            r.headers().get("content-length").is_none_or(|v| v != "99999"),
            "{to}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["n"].as_u64(), Some(before + 1), "{to}: fetched again");
    }
}

/// One scripted answer: status, headers, body.
type Scripted = (u16, Vec<(&'static str, &'static str)>, &'static str);

/// An origin that answers its n-th request with `answers[n]` (the last one again once they run
/// out), and keeps each request's `If-None-Match`; for answers the origin stub cannot give
/// (a `304` whose headers differ from the `200`'s).
async fn scripted_origin(
    answers: Vec<Scripted>,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>) {
    use std::sync::{Arc, Mutex};
    let asked: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = asked.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (answers, log) = (answers.clone(), log.clone());
        async move {
            let n = {
                let mut log = log.lock().unwrap();
                log.push(
                    request
                        .headers()
                        .get("if-none-match")
                        .map(|v| v.to_str().unwrap().to_owned()),
                );
                log.len() - 1
            };
            let (status, headers, body) = answers[n.min(answers.len() - 1)].clone();
            let mut response = axum::response::Response::new(axum::body::Body::from(body));
            *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                response.headers_mut().append(name, value.parse().unwrap());
            }
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, asked)
}

/// A service routing `/api` to `origin`, whose `/api/r` is fetched once (the body `old`, fresh
/// for one second) and again once stale: the service, the URL, the client and that second answer.
async fn stored_then_revalidated(origin: &str) -> (Service, String, reqwest::Client, reqwest::Response) {
    let route = format!("/api={origin}");
    let service = Service::start(&[("PROXY_ROUTES", route.as_str())]).await;
    let url = format!("{}/api/r", service.base);
    let c = client();
    assert_eq!(c.get(&url).send().await.unwrap().text().await.unwrap(), "old");
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let r = c.get(&url).send().await.unwrap();
    (service, url, c, r)
}

/// A `304` without `Date` or `Age` (which an origin should not send, and hyper-based origins
/// cannot) still freshens the stored response: its age starts again from the 304, so it is
/// fresh for its `max-age` once more, not as old as the first response for ever.
#[tokio::test]
async fn a_304_without_date_makes_the_stored_response_fresh_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let conditional = String::from_utf8_lossy(&head)
                .to_ascii_lowercase()
                .contains("if-none-match");
            let answer = if conditional {
                // No `Date`, no `Age`.
                "HTTP/1.1 304 Not Modified\r\ncache-control: max-age=2\r\netag: \"v1\"\r\nconnection: close\r\n\r\n"
                    .to_owned()
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\ndate: {}\r\nage: 1\r\ncache-control: max-age=2\r\netag: \"v1\"\r\ncontent-length: 3\r\nconnection: close\r\n\r\nold",
                    httpdate::fmt_http_date(std::time::SystemTime::now())
                )
            };
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    // Stale after 2.1 s (an age of at least 2 s); revalidated by the 304.
    let (_service, url, c, r) = stored_then_revalidated(&origin).await;
    assert!(
        cache_status(&r).contains("fwd-status=304"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Fresh again from the 304: a hit, with the 304's age (0 or 1 s), not the first one's.
    let r = c.get(&url).send().await.unwrap();
    assert!(cache_status(&r).contains("hit"), "{}", cache_status(&r));
    let age: u64 = r.headers()["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 1, "age {age}");
    assert_eq!(r.text().await.unwrap(), "old");
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A `304` whose headers now say the response may not be shared (`private`) is not stored:
/// the stored response is dropped, and the next request goes to the origin.
#[tokio::test]
async fn a_304_that_makes_the_response_private_ends_its_storage() {
    let (origin, asked) = scripted_origin(vec![
        (
            200,
            vec![("cache-control", "max-age=1"), ("etag", "\"a\"")],
            "old",
        ),
        (
            304,
            vec![("cache-control", "private, max-age=60"), ("etag", "\"a\"")],
            "",
        ),
        (
            200,
            vec![("cache-control", "max-age=60"), ("etag", "\"c\"")],
            "new",
        ),
    ])
    .await;
    let (_service, url, c, r) = stored_then_revalidated(&origin).await;
    assert_eq!(r.headers()["cache-control"], "private, max-age=60");
    assert!(
        cache_status(&r).contains("fwd-status=304"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.text().await.unwrap(), "old", "this request's answer, updated");
    let r = c.get(&url).send().await.unwrap();
    assert!(!cache_status(&r).contains("hit"), "{}", cache_status(&r));
    assert_eq!(r.text().await.unwrap(), "new");
    assert_eq!(
        asked.lock().unwrap().len(),
        3,
        "nothing private was served from the store"
    );
}

/// A `304` naming another representation (a strong `ETag` the stored response lacks) updates
/// nothing (RFC 9111 §4.3.4): the origin is asked again without conditions.
#[tokio::test]
async fn a_304_for_another_representation_updates_nothing() {
    let (origin, asked) = scripted_origin(vec![
        (
            200,
            vec![("cache-control", "max-age=1"), ("etag", "\"a\"")],
            "old",
        ),
        (304, vec![("cache-control", "max-age=60"), ("etag", "\"b\"")], ""),
        (
            200,
            vec![("cache-control", "max-age=60"), ("etag", "\"b\"")],
            "new",
        ),
    ])
    .await;
    let (_service, url, c, r) = stored_then_revalidated(&origin).await;
    assert_eq!(r.headers()["etag"], "\"b\"");
    assert_eq!(
        r.text().await.unwrap(),
        "new",
        "never the old body under the new tag"
    );
    assert_eq!(
        *asked.lock().unwrap(),
        vec![None, Some("\"a\"".to_owned()), None],
        "stored, revalidated, then fetched plainly"
    );
    let r = c.get(&url).send().await.unwrap();
    assert_eq!(cache_status(&r), "cache-layer; hit");
    assert_eq!(r.text().await.unwrap(), "new");
}

/// An origin's (or a cache's before this one) `Cache-Status` member is kept, this cache's
/// added after it (RFC 9211 §2), on misses and hits alike.
#[tokio::test]
async fn cache_status_members_of_earlier_caches_are_kept() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=60"), ("Cache-Status", "upstream; hit")])
        .await;
    let service = proxy_to(&origin, &[]).await;
    let url = format!("{}/api/k", service.base);
    let c = client();
    let members = |r: &reqwest::Response| {
        r.headers()
            .get_all("cache-status")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let miss = c.get(&url).send().await.unwrap();
    assert_eq!(
        members(&miss),
        ["upstream; hit", "cache-layer; fwd=uri-miss; stored"]
    );
    for _ in 0..2 {
        let hit = c.get(&url).send().await.unwrap();
        assert_eq!(members(&hit), ["upstream; hit", "cache-layer; hit"]);
    }
    let m = service.metrics_text().await;
    assert!(
        m.lines().any(|l| l.starts_with("proxy_requests_total{")
            && l.contains("cache=\"hit\"")
            && l.ends_with(" 2")),
        "the outcome label reads this cache's member: {m}"
    );
}

/// An answer whose head the proxy cannot take (more header fields than its client reads) is a
/// `502` that says so, not "the origin could not be reached".
#[tokio::test]
async fn an_answer_with_too_many_header_fields_is_a_502_that_says_why() {
    let (origin, asked) = scripted_origin(vec![(200, vec![("x-many", "v"); 150], "body")]).await;
    let route = format!("/api={origin}");
    let service = Service::start(&[("PROXY_ROUTES", route.as_str())]).await;
    let r = client()
        .get(format!("{}/api/r", service.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "origin_error", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("head is too large"), "{message}");
    assert_eq!(asked.lock().unwrap().len(), 1);
}
