//! `POST /items:batch` (issue 17) against real processes: a real `redis-server` (single and
//! Cluster), the origin stub counting what it served, the service binary.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Origin, Redis, RedisCluster, Service, client, eventually, services_on, with_redis_and_origin,
};

/// `POST /items:batch` with `{"keys": keys}`: the status and the JSON body.
async fn batch(s: &Service, keys: &[&str]) -> (u16, Value) {
    s.batch(keys).await
}

/// `POST /items:batch` with a raw body and content type: the status and the JSON body.
async fn batch_raw(s: &Service, content_type: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let r = client()
        .post(s.url("/items:batch"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The calls of `command` in `INFO commandstats` (0 when it never ran).
fn calls(redis: &Redis, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

/// A sample of `/metrics` that may not be there yet (0 then).
async fn metric_or_zero(s: &Service, series: &str) -> f64 {
    crate::harness::metric_value(&s.metrics_text().await, series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_batch_answers_in_order_with_hits_misses_404s_502s_bad_keys_and_duplicates() {
    let (_redis, origin, [s]) = with_redis_and_origin::<1>(&[], &[]).await;
    assert_eq!(s.get("warm").await.0, 200);
    let keys = ["cold", "warm", "missing-1", "broken-1", "cold", "", "warm"];
    let (status, body) = batch(&s, &keys).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), keys.len(), "{body}");
    for (item, key) in items.iter().zip(keys) {
        assert_eq!(item["key"], key, "{body}");
    }
    let cold = &items[0];
    assert_eq!(cold["source"], "origin");
    assert_eq!(cold["value"]["path"], "/items/cold");
    assert_eq!(cold["cache"], "cache-layer; fwd=miss; stored");
    // A duplicate gets the same answer in each position, from one fetch.
    assert_eq!(items[4], items[0]);
    assert_eq!(items[1]["source"], "cache");
    assert!(
        items[1]["cache"].as_str().unwrap().ends_with("detail=memory"),
        "{body}"
    );
    assert_eq!(items[6], items[1]);
    assert_eq!(items[2]["error"], "not_found");
    assert_eq!(items[2]["cache"], "cache-layer; fwd=miss; stored");
    assert_eq!(items[3]["error"], "origin_error");
    assert!(items[3].get("cache").is_none(), "{body}");
    assert_eq!(items[5]["error"], "bad_key");
    for failed in [&items[2], &items[3], &items[5]] {
        assert!(
            failed["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
    // warm (its GET), cold, missing-1, broken-1: each once.
    assert_eq!(origin.served().await, 4);

    // Counted per key (a duplicate once), and the batch once, out of the single-key latency.
    assert_eq!(s.metric("cache_hits_total{tier=\"memory\"").await, 1.0);
    assert_eq!(s.metric("cache_misses_total").await, 3.0);
    let route = "http_requests_total{route=\"/items:batch\",status_class=\"2xx\"";
    assert_eq!(s.metric(route).await, 1.0);
    assert_eq!(s.metric("batch_keys_count").await, 1.0);
    assert_eq!(s.metric("batch_keys_sum").await, 7.0);
    assert_eq!(s.metric("batch_request_duration_seconds_count").await, 1.0);
    assert_eq!(s.metric("request_latency_seconds_count").await, 1.0);

    // The same keys again: now hits (the negative entry too); nothing more is fetched.
    let (_, again) = batch(&s, &["cold", "missing-1"]).await;
    assert_eq!(again["items"][0]["source"], "cache", "{again}");
    assert_eq!(again["items"][1]["cache"], "cache-layer; hit; detail=negative");
    assert_eq!(origin.served().await, 4);
}

#[tokio::test]
async fn redis_hits_of_a_batch_take_one_mget() {
    let (redis, origin, [s]) = with_redis_and_origin::<1>(&[], &[("MEMORY_CACHE_ENABLED", "false")]).await;
    let keys: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    for k in &keys {
        assert_eq!(s.get(k).await.0, 200);
    }
    let (getranges, mgets) = (calls(&redis, "getrange"), calls(&redis, "mget"));
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (status, body) = batch(&s, &keys).await;
    assert_eq!(status, 200);
    for item in body["items"].as_array().unwrap() {
        assert!(
            item["cache"].as_str().unwrap().ends_with("detail=redis"),
            "{item}"
        );
    }
    assert_eq!(calls(&redis, "mget"), mgets + 1, "one MGET for the whole batch");
    assert_eq!(calls(&redis, "getrange"), getranges, "no per-key reads");
    assert_eq!(origin.served().await, 20);
    assert_eq!(s.metric("cache_hits_total{tier=\"redis\"").await, 20.0);
}

#[tokio::test]
async fn an_oversized_value_read_by_mget_is_refused_and_unlinked() {
    let (redis, origin, [s]) = with_redis_and_origin::<1>(
        &[],
        &[
            ("MEMORY_CACHE_ENABLED", "false"),
            ("ORIGIN_MAX_BODY_BYTES", "1024"),
        ],
    )
    .await;
    assert_eq!(s.get("fine").await.0, 200);
    // 100 KB under an entry key: more than this service could write with a 1 KiB body limit.
    let big = "x".repeat(100_000);
    redis.cli(&["SET", &crate::harness::entry_key("big"), &big]);
    let (_, body) = batch(&s, &["fine", "big"]).await;
    assert!(
        body["items"][0]["cache"]
            .as_str()
            .unwrap()
            .ends_with("detail=redis"),
        "{body}"
    );
    assert_eq!(body["items"][1]["source"], "origin", "{body}");
    assert_eq!(s.metric("redis_errors_total{operation=\"get\"").await, 1.0);
    // The origin's value replaced it.
    let stored = redis.cli(&["STRLEN", &crate::harness::entry_key("big")]);
    assert!(stored.parse::<usize>().unwrap() < 1000, "{stored}");
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn a_batch_racing_single_gets_on_two_replicas_fetches_each_cold_key_once() {
    let (_redis, origin, [a, b]) = with_redis_and_origin::<2>(&[("STUB_LATENCY_MS", "400")], &[]).await;
    let keys: Vec<String> = (0..10).map(|i| format!("race{i}")).collect();
    let batch_task = {
        let (url, keys) = (a.url("/items:batch"), keys.clone());
        tokio::spawn(async move {
            let r = client()
                .post(url)
                .json(&json!({ "keys": keys }))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    let mut gets = Vec::new();
    for k in &keys {
        for s in [&a, &b] {
            let url = s.item_url(k);
            gets.push(tokio::spawn(async move {
                client().get(url).send().await.unwrap().status().as_u16()
            }));
        }
    }
    for g in gets {
        assert_eq!(g.await.unwrap(), 200);
    }
    let (status, body) = batch_task.await.unwrap();
    assert_eq!(status, 200);
    for (item, k) in body["items"].as_array().unwrap().iter().zip(&keys) {
        assert_eq!(item["value"]["path"], format!("/items/{k}"), "{body}");
    }
    assert_eq!(
        origin.served().await,
        10,
        "one fetch per key across the batch, the GETs and both replicas"
    );
    let coalesced = metric_or_zero(&a, "cache_coalesced_total{scope=\"process\"").await
        + metric_or_zero(&a, "cache_coalesced_total{scope=\"fleet\"").await
        + metric_or_zero(&b, "cache_coalesced_total{scope=\"process\"").await
        + metric_or_zero(&b, "cache_coalesced_total{scope=\"fleet\"").await;
    assert!(coalesced >= 20.0, "30 answers, 10 fetches: {coalesced} coalesced");
}

#[tokio::test]
async fn whole_request_errors_and_limits() {
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[("BATCH_MAX_KEYS", "3"), ("BATCH_MAX_BODY_BYTES", "1024")])
        .await;
    let (status, body) = batch(&s, &["a", "b", "c", "d"]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains('3'), "{body}");
    let long = json!({ "keys": ["x".repeat(2000)] }).to_string();
    let (status, body) = batch_raw(&s, "application/json", long.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    assert!(body["message"].as_str().unwrap().contains("1024"), "{body}");
    // The same without a Content-Length (chunked): refused as it arrives.
    let chunks = futures_util::stream::iter(
        long.into_bytes()
            .chunks(100)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let (status, _) = batch_raw(&s, "application/json", reqwest::Body::wrap_stream(chunks)).await;
    assert_eq!(status, 413);
    let (status, body) = batch_raw(&s, "text/plain", r#"{"keys":["a"]}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    for bad in [
        r#"{"keys":"a"}"#,
        r#"{"key":["a"]}"#,
        r#"{"keys":[1]}"#,
        "not json",
        r#"["a"]"#,
    ] {
        let (status, body) = batch_raw(&s, "application/json", bad).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (status, body) = batch_raw(&s, "application/json; charset=utf-8", r#"{"keys":[]}"#).await;
    assert_eq!((status, body), (200, json!({ "items": [] })));
    let r = client().get(s.url("/items:batch")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(origin.served().await, 0);
    let route = "http_requests_total{route=\"/items:batch\",status_class=\"4xx\"";
    assert!(s.metric(route).await >= 9.0);
}

#[tokio::test]
async fn ndjson_streams_hits_first_then_misses_as_they_arrive() {
    let origin = Origin::start(&[]).await;
    let s = origin.service(&[]).await;
    assert_eq!(s.get("hot").await.0, 200);
    origin.set("ok", 1500).await;
    let mut r = client()
        .post(s.url("/items:batch"))
        .header("accept", "application/x-ndjson")
        .json(&json!({ "keys": ["cold-a", "hot", "cold-b", "hot"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let sent = Instant::now();
    let mut text = String::new();
    let mut first_lines_at = None;
    while let Some(chunk) = r.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if first_lines_at.is_none() && text.lines().count() >= 2 {
            first_lines_at = Some((sent.elapsed(), origin.served().await));
        }
    }
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 4, "{text}");
    // The two hits come first, each with its position; the misses follow when fetched.
    for line in &lines[..2] {
        assert_eq!(line["key"], "hot");
        assert!(line["cache"].as_str().unwrap().ends_with("detail=memory"));
    }
    let mut indices: Vec<u64> = lines[..2].iter().map(|l| l["index"].as_u64().unwrap()).collect();
    indices.sort();
    assert_eq!(indices, [1, 3]);
    let mut rest: Vec<(u64, &str)> = lines[2..]
        .iter()
        .map(|l| (l["index"].as_u64().unwrap(), l["key"].as_str().unwrap()))
        .collect();
    rest.sort();
    assert_eq!(rest, [(0, "cold-a"), (2, "cold-b")]);
    // The hits were written before the misses' fetches (1.5 s at the origin) completed.
    let (hits_after, _) = first_lines_at.unwrap();
    assert!(
        hits_after < Duration::from_millis(1400),
        "hits took {hits_after:?}"
    );
    assert_eq!(origin.served().await, 3);
}

#[tokio::test]
async fn keys_unanswered_at_the_deadline_answer_origin_timeout_and_the_others_are_kept() {
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[("REQUEST_TIMEOUT_SECS", "1"), ("ORIGIN_TIMEOUT_MS", "20000")])
        .await;
    assert_eq!(s.get("ready").await.0, 200);
    origin.set("ok", 5000).await;
    let started = Instant::now();
    let (status, body) = batch(&s, &["slow-1", "ready", "slow-2"]).await;
    assert!(started.elapsed() < Duration::from_secs(4), "the deadline held");
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items[0]["error"], "origin_timeout", "{body}");
    assert_eq!(items[2]["error"], "origin_timeout", "{body}");
    assert_eq!(items[1]["source"], "cache", "{body}");
    // The fetches went on and were stored for the next request.
    origin.set("ok", 0).await;
    eventually("the slow keys to be cached", || async {
        let (_, again) = batch(&s, &["slow-1", "slow-2"]).await;
        again["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["source"] == "cache")
            .then_some(())
    })
    .await;
    assert_eq!(origin.served().await, 3);
}

#[tokio::test]
async fn one_big_batch_leaves_origin_permits_for_single_gets() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "600")]).await;
    // Four permits: one batch fetches at most two keys at once.
    let s = origin
        .service(&[
            ("ORIGIN_MAX_CONCURRENCY", "4"),
            ("BATCH_ORIGIN_CONCURRENCY", "16"),
        ])
        .await;
    let keys: Vec<String> = (0..12).map(|i| format!("many{i}")).collect();
    let url = s.url("/items:batch");
    let big = tokio::spawn(async move {
        let r = client()
            .post(url)
            .json(&json!({ "keys": keys }))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    });
    origin.wait_served(2).await;
    for i in 0..2 {
        let (status, _, body) = s.get(&format!("single{i}")).await;
        assert_eq!(status, 200, "a single GET during the batch: {body}");
    }
    let body = big.await.unwrap();
    let items = body["items"].as_array().unwrap();
    assert!(items.iter().all(|i| i["source"] == "origin"), "{body}");
    assert_eq!(
        metric_or_zero(&s, "origin_requests_total{outcome=\"rejected\"").await,
        0.0
    );
}

#[tokio::test]
async fn a_batch_on_redis_cluster_sends_one_mget_per_slot_to_each_master() {
    let cluster = RedisCluster::start().await;
    let origin = Origin::start(&[]).await;
    let template = origin.template();
    let [s] = services_on::<1>(
        &cluster.urls(),
        &[
            ("ORIGIN_URL", &template),
            ("REDIS_CLUSTER", "true"),
            ("MEMORY_CACHE_ENABLED", "false"),
        ],
    )
    .await;
    // Two keys share a slot through a hash tag; the others spread over the masters.
    let mut keys: Vec<String> = (0..30).map(|i| format!("c{i}")).collect();
    keys.push("{tag}a".to_owned());
    keys.push("{tag}b".to_owned());
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let (_, cold) = batch(&s, &keys).await;
    assert!(
        cold["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["source"] == "origin"),
        "{cold}"
    );
    let before: Vec<u64> = cluster.nodes.iter().map(|n| calls(n, "mget")).collect();
    let (status, body) = batch(&s, &keys).await;
    assert_eq!(status, 200);
    for (item, key) in body["items"].as_array().unwrap().iter().zip(&keys) {
        assert_eq!(item["key"], *key);
        assert!(
            item["cache"].as_str().unwrap().ends_with("detail=redis"),
            "{item}"
        );
    }
    let slots: std::collections::BTreeSet<u16> = keys
        .iter()
        .map(|k| cache_layer::cache::key_slot(crate::harness::entry_key(k).as_bytes()))
        .collect();
    let after: Vec<u64> = cluster.nodes.iter().map(|n| calls(n, "mget")).collect();
    let per_node: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(per_node.iter().sum::<u64>(), slots.len() as u64, "{per_node:?}");
    assert!(
        per_node.iter().all(|&n| n > 0),
        "every master asked: {per_node:?}"
    );
    assert_eq!(origin.served().await, keys.len() as u64);
}
