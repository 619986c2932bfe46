//! The HTTP origin: key encoding, bodies, failures and their status codes, limits, credentials.

use serde_json::{Value, json};

use crate::harness::{Origin, Service, client, eventually};

#[tokio::test]
async fn keys_cannot_change_the_path_or_query_the_origin_receives() {
    let origin = Origin::start(&[]).await;
    let template = format!("{}/v1/items/{{key}}/detail?id={{key}}&x=1", origin.base);
    let s = Service::start(&[("ORIGIN_URL", &template)]).await;
    let c = client();
    // (key as the client percent-encodes it, the key, how the origin must receive it)
    let cases = [
        ("..%2Fadmin", "../admin", "..%2Fadmin"),
        ("a%2Fb", "a/b", "a%2Fb"),
        ("x%3Fy%3D1", "x?y=1", "x%3Fy%3D1"),
        ("a%26b%3Dc", "a&b=c", "a%26b%3Dc"),
        ("%252F", "%2F", "%252F"),
        ("%23frag", "#frag", "%23frag"),
        ("sp%20ace%2B", "sp ace+", "sp%20ace%2B"),
        ("%C3%A9~._-", "é~._-", "%C3%A9~._-"),
    ];
    for (sent, key, encoded) in cases {
        let r = c.get(s.item_url(sent)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{key}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["key"], key);
        let target = format!("/v1/items/{encoded}/detail?id={encoded}&x=1");
        assert_eq!(body["value"]["path"], target.as_str(), "{key}");
    }
    let stats = origin.stats().await;
    assert_eq!(stats["served"], cases.len());
}

#[tokio::test]
async fn json_bodies_are_parsed_and_other_bodies_become_strings() {
    let origin = Origin::start(&[("STUB_CONTENT_TYPE", "text")]).await;
    let s = origin.service(&[]).await;
    let body: Value = client()
        .get(s.item_url("t"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["value"], json!(r#"{"n":1,"path":"/items/t"}"#));
}

#[tokio::test]
async fn origin_404_is_our_404_and_is_remembered_for_the_negative_ttl() {
    let origin = Origin::start(&[]).await;
    let s = origin.service(&[("CACHE_NEGATIVE_TTL_SECS", "1")]).await;
    let c = client();
    let r = c.get(s.item_url("missing-1")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["cache-status"], "cache-layer; fwd=miss; stored");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let r = c.get(s.item_url("missing-1")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["cache-status"], "cache-layer; hit; detail=negative");
    assert_eq!(origin.served().await, 1);
    assert_eq!(s.metric("cache_hits_total{tier=\"negative\"").await, 1.0);
    s.wait_refetched("missing-1").await;
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn cache_status_says_stored_only_when_a_tier_kept_the_answer() {
    // A memory tier of 64 KiB and 100 KB answers: each is fetched, answered, and kept by no
    // tier, so every request goes to the origin and none is told `stored`.
    let origin = Origin::start(&[("STUB_MODE", "bytes:100000")]).await;
    let s = origin
        .service(&[
            ("MEMORY_CACHE_MAX_BYTES", "65536"),
            ("CACHE_NEGATIVE_TTL_SECS", "0"),
        ])
        .await;
    for _ in 0..2 {
        let (code, status, body) = s.get("big").await;
        assert_eq!(
            (code, status.as_str()),
            (200, "cache-layer; fwd=miss; detail=declined")
        );
        assert_eq!(body["value"]["padding"].as_str().map(str::len), Some(100_000));
    }
    assert_eq!(origin.served().await, 2);
    // A 404 while CACHE_NEGATIVE_TTL_SECS is 0 is never remembered: not `stored` either.
    let (code, status, _) = s.get("missing-1").await;
    assert_eq!(
        (code, status.as_str()),
        (404, "cache-layer; fwd=miss; detail=declined")
    );
    assert_eq!(s.metric("cache_not_stored_total{reason=\"declined\"").await, 3.0);
    assert_eq!(s.metric("cache_not_stored_total{reason=\"purged\"").await, 0.0);
    // An answer that fits is stored, and said to be.
    origin.set("ok", 0).await;
    assert_eq!(s.get("small").await.1, "cache-layer; fwd=miss; stored");
    assert!(s.get("small").await.1.ends_with("detail=memory"));
    assert_eq!(origin.served().await, 4);
    assert_eq!(s.metric("cache_not_stored_total{reason=\"declined\"").await, 3.0);
}

#[tokio::test]
async fn origin_failures_map_to_502_and_504_and_are_not_cached() {
    let origin = Origin::start(&[("STUB_MODE", "status:503")]).await;
    let s = origin
        .service(&[
            ("ORIGIN_TIMEOUT_MS", "300"),
            ("ORIGIN_MAX_BODY_BYTES", "1000"),
            ("ORIGIN_BREAKER_MIN_REQUESTS", "100"),
        ])
        .await;
    let c = client();
    let check = |mode: &'static str, code: u16, error: &'static str| {
        let (c, url, origin) = (c.clone(), s.item_url(mode), &origin);
        async move {
            origin.set(mode, 0).await;
            for _ in 0..2 {
                let r = c.get(&url).send().await.unwrap();
                assert_eq!(r.status(), code, "{mode}");
                assert_eq!(r.json::<Value>().await.unwrap()["error"], error, "{mode}");
            }
        }
    };
    check("status:503", 502, "origin_error").await;
    check("status:400", 502, "origin_error").await;
    check("big", 502, "origin_error").await;
    check("hang", 504, "origin_timeout").await;
    // Each failure was fetched twice: nothing was cached.
    assert_eq!(origin.served().await, 8);
    assert_eq!(s.metric("origin_requests_total{outcome=\"error\"").await, 6.0);
    assert_eq!(s.metric("origin_requests_total{outcome=\"timeout\"").await, 2.0);
}

#[tokio::test]
async fn the_origin_sees_the_configured_authorization() {
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[("ORIGIN_AUTHORIZATION", "Bearer origin-secret")])
        .await;
    assert_eq!(client().get(s.item_url("a")).send().await.unwrap().status(), 200);
    let stats = origin.stats().await;
    assert_eq!(stats["requests"][0]["authorization"], "Bearer origin-secret");
}

#[tokio::test]
async fn origin_concurrency_is_bounded_and_the_excess_gets_503_with_retry_after() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "3000")]).await;
    let s = origin
        .service(&[("ORIGIN_MAX_CONCURRENCY", "2"), ("ORIGIN_TIMEOUT_MS", "10000")])
        .await;
    let c = client();
    let first: Vec<_> = (0..2)
        .map(|i| {
            let (c, url) = (c.clone(), s.item_url(&format!("slow{i}")));
            tokio::spawn(async move { c.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    eventually("two fetches in flight", || async {
        (origin.served().await == 2).then_some(())
    })
    .await;
    let r = c.get(s.item_url("third")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "origin_unavailable");
    for t in first {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(origin.served().await, 2);
}
