//! `GET /items/{key}` with the simulated origin: the seed's contract, headers, keys, coalescing.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::Barrier;

use crate::harness::{Origin, Service, client, raw_get};

#[tokio::test]
async fn first_request_fetches_and_second_is_a_memory_hit_with_the_seed_contract() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "20")]).await;
    let c = client();
    let r = c.get(s.item_url("foo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.headers()["cache-status"], "cache-layer; fwd=miss; stored");
    assert_eq!(r.headers()["age"], "0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"key": "foo", "value": "value_for_foo", "source": "origin"})
    );

    let r = c.get(s.item_url("foo")).send().await.unwrap();
    let status = r.headers()["cache-status"].to_str().unwrap().to_owned();
    assert!(
        status.starts_with("cache-layer; hit; ttl=5") && status.ends_with("; detail=memory"),
        "{status}"
    );
    assert!(r.headers().contains_key("age"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body,
        json!({"key": "foo", "value": "value_for_foo", "source": "cache"})
    );
}

#[tokio::test]
async fn the_seed_load_test_pattern_gives_39_hits_and_11_misses() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "5")]).await;
    let (mut hits, mut misses) = (0, 0);
    for i in 0..50 {
        let key = if i < 35 {
            "foo".to_owned()
        } else {
            format!("k{}", i % 10)
        };
        let body = s.get(&key).await.2;
        match body["source"].as_str().unwrap() {
            "cache" => hits += 1,
            _ => misses += 1,
        }
    }
    assert_eq!((hits, misses), (39, 11));
    assert_eq!(s.metric("cache_hits_total").await, 39.0);
    assert_eq!(s.metric("cache_misses_total").await, 11.0);
    assert_eq!(s.metric("request_latency_seconds_count").await, 50.0);
}

#[tokio::test]
async fn keys_are_percent_decoded_and_bad_keys_get_400_bad_key_json() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "1"), ("MAX_KEY_BYTES", "16")]).await;
    let c = client();
    let body = s.get("a%2Fb%20%C3%A9").await.2;
    assert_eq!(body["key"], "a/b é");
    assert_eq!(body["value"], "value_for_a/b é");
    for bad in ["", "a%0Ab", "%FF%FE", "x%00", "12345678901234567"] {
        let url = if bad.is_empty() {
            s.url("/items/")
        } else {
            s.item_url(bad)
        };
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 400, "key {bad:?}");
        assert!(!r.headers().contains_key("cache-status"));
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "bad_key", "key {bad:?}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for dots in ["%2E%2E", "%2e", ".%2E"] {
        let (status, body) = raw_get(s.port, &format!("/items/{dots}")).await;
        assert_eq!(status, 400, "{dots}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"], "bad_key");
    }
    assert_eq!(
        s.metric("cache_hits_total").await + s.metric("cache_misses_total").await,
        1.0
    );
    let r = c.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");
    let r = c.post(s.item_url("foo")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "method_not_allowed");
    // Counted by route: eight 400s and the 405 under /items/{key}, the unknown path as unmatched;
    // the latency histogram holds the nine answered GETs, not the 405.
    let items_4xx = "http_requests_total{route=\"/items/{key}\",status_class=\"4xx\"";
    assert_eq!(s.metric(items_4xx).await, 9.0);
    assert_eq!(
        s.metric("http_requests_total{route=\"unmatched\",status_class=\"4xx\"")
            .await,
        1.0
    );
    assert_eq!(s.metric("request_latency_seconds_count").await, 9.0);
}

#[tokio::test]
async fn redis_ttl_is_honoured_as_an_alias_of_cache_ttl_secs() {
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[("REDIS_TTL", "1"), ("CACHE_STALE_SECS", "0")])
        .await;
    let c = client();
    c.get(s.item_url("k")).send().await.unwrap();
    let r = c.get(s.item_url("k")).send().await.unwrap();
    assert_eq!(
        r.headers()["cache-status"],
        "cache-layer; hit; ttl=0; detail=memory"
    );
    s.wait_refetched("k").await;
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn two_hundred_concurrent_misses_share_one_origin_fetch() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "300")]).await;
    let s = origin.service(&[]).await;
    let c = client();
    let barrier = Arc::new(Barrier::new(200));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (c, url, barrier) = (c.clone(), s.item_url("cold"), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = c.get(url).send().await.unwrap();
            let status = r.headers()["cache-status"].to_str().unwrap().to_owned();
            (r.status().as_u16(), status, r.json::<Value>().await.unwrap())
        }));
    }
    let mut stored = 0;
    for t in tasks {
        let (code, status, body) = t.await.unwrap();
        assert_eq!(code, 200);
        assert_eq!(
            body,
            json!({"key": "cold", "value": {"path": "/items/cold", "n": 1}, "source": "origin"})
        );
        stored += usize::from(status == "cache-layer; fwd=miss; stored");
        assert!(status == "cache-layer; fwd=miss; stored" || status == "cache-layer; fwd=miss; collapsed");
    }
    assert_eq!(stored, 1);
    assert_eq!(origin.served().await, 1);
    assert_eq!(s.metric("cache_misses_total").await, 200.0);
    assert_eq!(s.metric("cache_coalesced_total{scope=\"process\"").await, 199.0);
}

#[tokio::test]
async fn requests_that_waited_on_a_failed_fetch_answer_its_failure_and_count_as_coalesced() {
    // Fifty requests for a cold key whose origin answers 500 after 300 ms: one fetch, fifty
    // 502s; the forty-nine that waited on it are coalesced (the calls coalescing saved), and
    // none is a miss (no answer came from the origin).
    let origin = Origin::start(&[("STUB_LATENCY_MS", "300"), ("STUB_MODE", "status:500")]).await;
    let s = origin.service(&[("ORIGIN_BREAKER_MIN_REQUESTS", "1000")]).await;
    let c = client();
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, url, barrier) = (c.clone(), s.item_url("failing"), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = c.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }));
    }
    for t in tasks {
        let (code, body) = t.await.unwrap();
        assert_eq!(
            (code, body["error"].as_str()),
            (502, Some("origin_error")),
            "{body}"
        );
    }
    assert_eq!(origin.served().await, 1);
    assert_eq!(s.metric("cache_coalesced_total{scope=\"process\"").await, 49.0);
    assert_eq!(s.metric("cache_misses_total").await, 0.0);
    assert_eq!(s.metric("origin_requests_total{outcome=\"error\"").await, 1.0);
}

#[tokio::test]
async fn a_failed_fetch_is_not_cached_and_does_not_wedge_the_key() {
    let origin = Origin::start(&[("STUB_MODE", "status:500")]).await;
    let s = origin.service(&[]).await;
    let c = client();
    let r = c.get(s.item_url("k")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "origin_error");
    origin.set("ok", 0).await;
    let r = c.get(s.item_url("k")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["source"], "origin");
    assert_eq!(origin.served().await, 2);
}
