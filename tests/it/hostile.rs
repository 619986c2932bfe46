//! Batches, the breaker and streams under hostile load: a client that asks for the same large
//! value a thousand times and stops reading, one that walks away from a stream, batches that
//! crowd out single `GET`s, a few bad keys that would open the circuit for everyone, and a
//! SIGTERM in the middle of a stream.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// Sends `POST /items:batch` with `keys` on a raw connection and returns it unread.
async fn unread_batch(port: u16, keys: &[String], accept: &str) -> tokio::net::TcpStream {
    let body = serde_json::to_vec(&json!({ "keys": keys })).unwrap();
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /items:batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: {accept}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(&body).await.unwrap();
    c
}

#[tokio::test]
async fn duplicate_keys_of_a_large_value_cost_no_copies_to_a_client_that_does_not_read() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:1000000")]).await;
    let s = origin.service(&[("ORIGIN_MAX_BODY_BYTES", "2000000")]).await;
    assert_eq!(s.get("big1").await.0, 200);
    let before = rss_bytes(s.pid());
    let keys: Vec<String> = vec!["big1".to_owned(); 1000];
    // Three clients, JSON and NDJSON, each asking for ~1 GB of answer and reading none of it.
    let mut idle = Vec::new();
    for accept in ["application/json", "application/x-ndjson", "application/json"] {
        idle.push(unread_batch(s.port, &keys, accept).await);
    }
    // Give the batches time to fill whatever they would buffer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, _, _) = s.get("big1").await;
    assert_eq!(status, 200, "a GET beside the stalled batches");
    let grown = rss_bytes(s.pid()).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "RSS grew by {grown} bytes for three stalled batches"
    );
    drop(idle);
}

#[tokio::test]
async fn a_streamed_batch_read_to_the_end_is_whole_and_in_order() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:300000")]).await;
    let s = origin.service(&[]).await;
    let keys: Vec<String> = (0..50).map(|i| format!("k{}", i % 5)).collect();
    let body = s.batch(&keys).await.1;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 50);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["key"], format!("k{}", i % 5), "{i}");
        assert!(item["value"].is_object(), "{i}");
    }
    assert_eq!(origin.served().await, 5, "each distinct key fetched once");
}

#[tokio::test]
async fn an_abandoned_ndjson_batch_starts_no_new_fetches() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "200")]).await;
    let s = origin.service(&[("BATCH_ORIGIN_CONCURRENCY", "8")]).await;
    let keys: Vec<String> = (0..500).map(|i| format!("gone{i}")).collect();
    let mut c = unread_batch(s.port, &keys, "application/x-ndjson").await;
    origin.wait_served(8).await;
    let mut first = [0u8; 256];
    let _ = c.read(&mut first).await.unwrap();
    drop(c);
    // The fetches in flight at the disconnect finish; no new ones start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = origin.served().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = origin.served().await;
    assert_eq!(settled, later, "fetches went on after the client left");
    assert!(later < 100, "{later} of 500 keys fetched for a client that left");
}

#[tokio::test]
async fn batches_and_soft_purge_refreshes_together_leave_single_gets_their_permits() {
    let origin = Origin::start(&[("STUB_HEADERS", "Surrogate-Key: {tags}")]).await;
    let s = origin
        .service(&[
            ("ORIGIN_MAX_CONCURRENCY", "64"),
            ("ADMIN_TOKEN", "a-long-enough-admin-token"),
            ("REQUEST_TIMEOUT_SECS", "8"),
        ])
        .await;
    // 2,000 entries tagged `soft`, fetched quickly.
    let tagged: Vec<String> = (0..2000).map(|i| format!("t{i}~soft")).collect();
    for chunk in tagged.chunks(1000) {
        assert_eq!(s.batch(chunk).await.0, 200);
    }
    origin.set("ok", 100).await;
    let purge = client()
        .delete(s.url("/tags/soft?soft=true"))
        .bearer_auth("a-long-enough-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(purge.status(), 200);
    // 8 batches at once: one of the stale tagged keys (background refreshes), seven cold.
    let mut batches = Vec::new();
    for b in 0..8 {
        let keys: Vec<String> = if b == 0 {
            tagged[..1000].to_vec()
        } else {
            (0..300).map(|i| format!("cold{b}-{i}")).collect()
        };
        let url = s.url("/items:batch");
        batches.push(tokio::spawn(async move { batch_at(&url, &keys).await.1 }));
    }
    origin.wait_served(2100).await;
    // Single cold GETs from 16 connections while the batches run.
    let mut singles = Vec::new();
    for c in 0..16 {
        let base = s.base.clone();
        singles.push(tokio::spawn(async move {
            let client = client();
            let mut statuses = Vec::new();
            for i in 0..5 {
                let r = client
                    .get(format!("{base}/items/single{c}-{i}"))
                    .send()
                    .await
                    .unwrap();
                statuses.push(r.status().as_u16());
            }
            statuses
        }));
    }
    for single in singles {
        let statuses = single.await.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "single GETs: {statuses:?}");
    }
    for batch in batches {
        let body = batch.await.unwrap();
        for item in body["items"].as_array().unwrap() {
            assert_ne!(item["error"], "origin_unavailable", "{item}");
            if let Some(e) = item["error"].as_str() {
                assert_eq!(e, "origin_timeout", "{item}");
            }
        }
    }
}

#[tokio::test]
async fn a_batch_of_failing_keys_does_not_open_the_circuit_for_everyone() {
    let origin = Origin::start(&[]).await;
    let s = origin.service(&[]).await;
    let broken: Vec<String> = (0..5).map(|i| format!("broken-x{i}")).collect();
    let body = s.batch(&broken).await.1;
    assert!(
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["error"] == "origin_error"),
        "{body}"
    );
    // Five keys the origin answers 400 (a client error about those keys): not failures at all.
    origin.set("status:400", 0).await;
    for i in 0..25 {
        assert_eq!(s.get(&format!("bad-request{i}")).await.0, 502);
    }
    origin.set("ok", 0).await;
    for i in 0..20 {
        let (status, _, body) = s.get(&format!("healthy{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(s.json("/health").await["origin"]["circuit"], "closed");
    // A 1,000-key batch answering 500 counts as one failure.
    let many: Vec<String> = (0..1000).map(|i| format!("broken-y{i}")).collect();
    s.batch(&many).await;
    assert_eq!(s.get("healthy-after").await.0, 200);
    assert_eq!(s.json("/health").await["origin"]["circuit"], "closed");
}

#[tokio::test]
async fn an_origin_failing_everything_still_opens_the_circuit() {
    let origin = Origin::start(&[("STUB_MODE", "status:500")]).await;
    let s = origin.service(&[]).await;
    for i in 0..20 {
        assert_eq!(s.get(&format!("down{i}")).await.0, 502);
    }
    let (status, _, body) = s.get("down-next").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(s.json("/health").await["origin"]["circuit"], "open");
}

#[tokio::test]
async fn sigterm_lets_an_ndjson_stream_finish() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "20")]).await;
    let mut s = origin
        .service(&[("BATCH_ORIGIN_CONCURRENCY", "4"), ("SHUTDOWN_DRAIN_SECS", "20")])
        .await;
    let keys: Vec<String> = (0..200).map(|i| format!("drain{i}")).collect();
    let mut r = client()
        .post(s.url("/items:batch"))
        .header("accept", "application/x-ndjson")
        .json(&json!({ "keys": keys }))
        .send()
        .await
        .unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&r.chunk().await.unwrap().unwrap());
    s.terminate();
    // Read to the end: an error here is a stream cut without its final chunk.
    while let Some(chunk) = r.chunk().await.expect("the stream ends with its final chunk") {
        body.extend_from_slice(&chunk);
    }
    let lines: Vec<Value> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200);
    assert!(lines.iter().all(|l| l["source"] == "origin"));
    assert!(s.wait_exit().await.success());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_after_the_write_timeout() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:1000000")]).await;
    let s = origin
        .service(&[
            ("ORIGIN_MAX_BODY_BYTES", "2000000"),
            ("HTTP_WRITE_TIMEOUT_SECS", "1"),
        ])
        .await;
    assert_eq!(s.get("big").await.0, 200);
    let keys: Vec<String> = vec!["big".to_owned(); 200];
    let mut c = unread_batch(s.port, &keys, "application/json").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The server gave up: what the socket buffers held, then the end of the connection.
    let mut got = Vec::new();
    let read = tokio::time::timeout(DEADLINE, c.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the connection was never closed");
    assert!(
        got.len() < 200_000_000,
        "{} bytes: the answer was not cut",
        got.len()
    );
}

#[tokio::test]
async fn an_origins_own_content_encoding_is_decoded_and_stored_as_identity() {
    for coding in ["gzip", "deflate", "br"] {
        let origin = Origin::start(&[("STUB_MODE", &format!("encoded:{coding}"))]).await;
        let s = origin.service(&[]).await;
        let (status, _, body) = s.get("enc").await;
        assert_eq!(status, 200, "{coding}: {body}");
        assert_eq!(body["value"]["path"], "/items/enc", "{coding}: {body}");
        let (_, cache, body) = s.get("enc").await;
        assert!(cache.contains("hit"), "{coding}: {cache}");
        assert_eq!(body["value"]["path"], "/items/enc", "{coding}");
    }
    // Text too: decoded, not a string of compressed bytes.
    let origin = Origin::start(&[("STUB_MODE", "encoded:gzip"), ("STUB_CONTENT_TYPE", "text")]).await;
    let s = origin.service(&[]).await;
    let (_, _, body) = s.get("text").await;
    assert!(body["value"].as_str().unwrap().contains("/items/text"), "{body}");
}

#[tokio::test]
async fn a_decompression_bomb_is_refused_as_too_large_and_does_not_count_against_the_breaker() {
    let origin = Origin::start(&[("STUB_MODE", "bomb")]).await;
    let s = origin.service(&[("ORIGIN_BREAKER_MIN_REQUESTS", "1")]).await;
    let (status, _, body) = s.get("boom").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("origin_error")),
        "{body}"
    );
    assert_eq!(s.json("/health").await["origin"]["circuit"], "closed");
}

#[tokio::test]
async fn a_tag_longer_than_any_entry_can_carry_is_a_bad_tag() {
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[
            ("ADMIN_TOKEN", "a-long-enough-admin-token"),
            ("TAG_MAX_BYTES", "16"),
        ])
        .await;
    let purge = |tag: String| {
        let url = s.url(&format!("/tags/{tag}"));
        async move {
            let r = client()
                .delete(url)
                .bearer_auth("a-long-enough-admin-token")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = purge("x".repeat(17)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_tag")), "{body}");
    assert_eq!(purge("x".repeat(16)).await.0, 200);
    assert_eq!(purge("%FF".to_owned()).await.1["error"], "bad_tag");
}

#[tokio::test]
async fn one_non_ascii_tag_costs_only_itself() {
    let origin = Origin::start(&[("STUB_HEADERS", "Surrogate-Key: {tags}")]).await;
    let s = origin
        .service(&[("ADMIN_TOKEN", "a-long-enough-admin-token")])
        .await;
    // `caf%C3%A9` is the key's tag `café`: valid UTF-8, kept beside the ASCII one.
    let key = "k~plain~caf%C3%A9";
    assert_eq!(s.get(key).await.0, 200);
    assert!(s.get(key).await.1.contains("hit"));
    let r = client()
        .delete(s.url("/tags/caf%C3%A9"))
        .bearer_auth("a-long-enough-admin-token")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["purged"]["memory"], 1, "{body}");
    assert_eq!(s.metric("cache_tags_ignored_total").await, 0.0);
}

#[tokio::test]
async fn a_batch_of_large_redis_values_is_read_in_bounded_chunks_and_redis_stays_up() {
    let redis = Redis::start().await;
    let origin = Origin::start(&[("STUB_MODE", "bytes:400000")]).await;
    let s = origin
        .service(&[
            ("REDIS_URL", &redis.url()),
            ("MEMORY_CACHE_ENABLED", "false"),
            ("BATCH_ORIGIN_CONCURRENCY", "32"),
        ])
        .await;
    s.wait_redis_up().await;
    let keys: Vec<String> = (0..600).map(|i| format!("large{i}")).collect();
    let ask = || async { s.batch(&keys).await.1 };
    let first = ask().await;
    assert!(
        first["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["source"] == "origin")
    );
    assert_eq!(origin.served().await, 600);
    let second = ask().await;
    let items = second["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .all(|i| i["cache"].as_str().unwrap_or_default().ends_with("detail=redis")),
        "{:?}",
        items
            .iter()
            .find(|i| !i["cache"].as_str().unwrap_or_default().ends_with("detail=redis"))
    );
    assert_eq!(origin.served().await, 600, "no key went to the origin");
    assert_eq!(s.metric("cache_hits_total{tier=\"redis\"").await, 600.0);
    assert_eq!(s.json("/health").await["tiers"]["redis"], "ok");
}

#[tokio::test]
async fn codings_in_other_spellings_are_decoded_and_unknown_ones_refused() {
    for coding in ["GZIP", "x-gzip", "Br"] {
        let origin = Origin::start(&[
            ("STUB_MODE", &format!("encoded:{coding}")),
            ("STUB_CONTENT_TYPE", "text"),
        ])
        .await;
        let s = origin.service(&[]).await;
        let (status, _, body) = s.get("spelt").await;
        assert_eq!(status, 200, "{coding}: {body}");
        assert!(
            body["value"].as_str().unwrap().contains("/items/spelt"),
            "{coding}: {body}"
        );
    }
    for coding in ["compress", "gzip, gzip"] {
        let origin = Origin::start(&[
            ("STUB_MODE", &format!("encoded:{coding}")),
            ("STUB_CONTENT_TYPE", "text"),
        ])
        .await;
        let s = origin.service(&[("ORIGIN_BREAKER_MIN_REQUESTS", "1")]).await;
        let (status, _, body) = s.get("odd").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (502, Some("origin_error")),
            "{coding}: {body}"
        );
        assert_eq!(origin.served().await, 1);
        // Not cached: asked again, fetched again; and not an origin failure.
        assert_eq!(s.get("odd").await.0, 502);
        assert_eq!(origin.served().await, 2);
        assert_eq!(s.json("/health").await["origin"]["circuit"], "closed");
    }
}

#[tokio::test]
async fn one_broken_key_asked_again_and_again_does_not_open_the_circuit() {
    let origin = Origin::start(&[]).await;
    let s = origin.service(&[]).await;
    for _ in 0..40 {
        assert_eq!(s.get("broken").await.0, 502);
    }
    assert_eq!(s.get("innocent").await.0, 200);
    assert_eq!(s.json("/health").await["origin"]["circuit"], "closed");
}
