//! Stale serving, the circuit breaker, purges across replicas, fleet-wide coalescing, Redis
//! Cluster, a key fuzz and a flood of unique keys.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;
use tokio::sync::Barrier;

use crate::harness::{
    Origin, RedisCluster, Service, cache_status, client, entry_key, eventually, raw_get, services_on,
    with_redis_and_origin,
};

/// Waits until `key` is answered stale by `s`; returns that answer.
async fn wait_stale(s: &Service, key: &str, reason: &str) -> (u16, String, Value) {
    eventually("the entry to go stale", || async {
        let answer = s.get(key).await;
        answer.1.ends_with(&format!("detail={reason}")).then_some(answer)
    })
    .await
}

#[tokio::test]
async fn a_stale_hit_is_answered_at_once_and_refreshed_once_in_the_background() {
    // A slow refresh (1 s) and a TTL (3 s) longer than the rest of the test takes, so the refreshed
    // value cannot go stale again before the test reads it.
    let origin = Origin::start(&[("STUB_LATENCY_MS", "1000")]).await;
    let s = origin
        .service(&[
            ("CACHE_TTL_SECS", "3"),
            ("CACHE_STALE_SECS", "60"),
            ("CACHE_TTL_JITTER_PERCENT", "0"),
        ])
        .await;
    assert_eq!(s.get("k").await.2["value"]["n"], 1);
    let (code, _, body) = wait_stale(&s, "k", "stale-while-revalidate").await;
    assert_eq!(code, 200);
    assert_eq!(body["source"], "cache");
    assert_eq!(body["value"]["n"], 1);
    // Fifty more stale hits while the refresh is in flight: still one refresh.
    let barrier = Arc::new(Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (c, url, barrier) = (client(), s.item_url("k"), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                c.get(url).send().await.unwrap().json::<Value>().await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap()["source"], "cache");
    }
    let fresh = eventually("the refreshed value", || async {
        let (_, status, body) = s.get("k").await;
        status.ends_with("detail=memory").then_some(body)
    })
    .await;
    assert_eq!(fresh["value"]["n"], 2);
    assert_eq!(origin.served().await, 2);
    assert!(
        s.metric("cache_stale_total{reason=\"stale-while-revalidate\"")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_failing_origin_opens_the_circuit_stale_is_served_and_the_circuit_closes_again() {
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[
            ("CACHE_TTL_SECS", "1"),
            ("CACHE_STALE_SECS", "120"),
            ("CACHE_TTL_JITTER_PERCENT", "0"),
            ("ORIGIN_BREAKER_MIN_REQUESTS", "2"),
            // Long enough that the checks of the open circuit run before it half-opens.
            ("ORIGIN_BREAKER_COOLDOWN_SECS", "6"),
        ])
        .await;
    assert_eq!(s.get("k").await.0, 200);
    origin.set("status:500", 0).await;
    // Stale answers keep coming while background refreshes fail, until the circuit opens.
    let (code, status, body) = wait_stale(&s, "k", "stale-if-error").await;
    assert_eq!((code, body["value"]["n"].as_u64()), (200, Some(1)));
    assert!(status.starts_with("cache-layer; hit; ttl=-") || status.starts_with("cache-layer; hit; ttl=0"));
    assert_eq!(s.metric("origin_breaker_state").await, 1.0);
    let health = s.json("/health").await;
    assert_eq!(
        (health["status"].as_str(), health["origin"]["circuit"].as_str()),
        (Some("degraded"), Some("open"))
    );
    // Nothing stale for a cold key: fail fast with 503 and Retry-After, no origin call.
    let served = origin.served().await;
    let r = client().get(s.item_url("cold")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=6).contains(&retry));
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "origin_unavailable");
    assert_eq!(origin.served().await, served);
    assert!(s.metric("origin_requests_total{outcome=\"rejected\"").await >= 1.0);
    assert!(s.metric("cache_stale_total{reason=\"stale-if-error\"").await >= 1.0);
    // The origin recovers: after the cool-down one probe goes through and closes the circuit.
    origin.set("ok", 0).await;
    eventually("the circuit to close and the value to refresh", || async {
        let (_, status, body) = s.get("k").await;
        (status.ends_with("detail=memory") && body["value"]["n"].as_u64() > Some(1)).then_some(())
    })
    .await;
    assert_eq!(s.metric("origin_breaker_state").await, 0.0);
}

#[tokio::test]
async fn an_origin_failing_every_other_fetch_opens_the_circuit_by_failure_rate() {
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[
            ("ORIGIN_BREAKER_MIN_REQUESTS", "10"),
            ("ORIGIN_BREAKER_WINDOW_SECS", "600"),
            ("ORIGIN_BREAKER_FAILURE_RATE", "50"),
            ("ORIGIN_BREAKER_COOLDOWN_SECS", "60"),
        ])
        .await;
    // Ten cold keys, the origin failing every other one: never two failures in a row.
    for i in 0..10 {
        origin.set(if i % 2 == 0 { "status:500" } else { "ok" }, 0).await;
        let expected = if i % 2 == 0 { 502 } else { 200 };
        assert_eq!(s.get(&format!("k{i}")).await.0, expected, "key k{i}");
        if i < 9 {
            assert_eq!(s.metric("origin_breaker_state").await, 0.0, "after k{i}");
        }
    }
    // 5 of the 10 fetches of the window failed: the circuit is open, though the origin is fine now.
    assert_eq!(s.metric("origin_breaker_state").await, 1.0);
    let served = origin.served().await;
    let (code, _, body) = s.get("k10").await;
    assert_eq!((code, body["error"].as_str()), (503, Some("origin_unavailable")));
    assert_eq!(origin.served().await, served, "no call while the circuit is open");
}

#[tokio::test]
async fn an_origin_timeout_serves_stale_instead_of_504() {
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[
            ("ORIGIN_TIMEOUT_MS", "200"),
            ("CACHE_TTL_SECS", "1"),
            ("CACHE_TTL_JITTER_PERCENT", "0"),
            ("ORIGIN_BREAKER_MIN_REQUESTS", "1"),
        ])
        .await;
    assert_eq!(s.get("k").await.0, 200);
    origin.set("hang", 0).await;
    let (code, _, body) = wait_stale(&s, "k", "stale-if-error").await;
    assert_eq!((code, body["value"]["n"].as_u64()), (200, Some(1)));
    assert!(s.metric("origin_requests_total{outcome=\"timeout\"").await >= 1.0);
}

#[tokio::test]
async fn purge_on_one_replica_evicts_on_the_other_and_needs_the_admin_token() {
    let (redis, _origin, [a, b]) = with_redis_and_origin(&[], &[("ADMIN_TOKEN", "t0ken")]).await;
    assert_eq!(a.get("k").await.2["value"]["n"], 1);
    assert!(b.get("k").await.1.ends_with("detail=redis"));
    assert!(b.get("k").await.1.ends_with("detail=memory"));

    let c = client();
    let r = c.delete(a.item_url("k")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"cache-layer\"");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unauthorized");
    let r = c
        .delete(a.item_url("k"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");
    assert_eq!(b.get("k").await.2["value"]["n"], 1);

    let purged_at = Instant::now();
    let r = c
        .delete(a.item_url("k"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually("replica b to drop the purged value", || async {
        (b.metric("cache_invalidations_total{mode=\"hard\",scope=\"key\",source=\"remote\"")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    println!(
        "purge propagation to the other replica: {:?}",
        purged_at.elapsed()
    );
    let (_, status, body) = b.get("k").await;
    assert_eq!(status, "cache-layer; fwd=miss; stored");
    assert_eq!(body["value"]["n"], 2);
    redis.eventually_cli(&["EXISTS", &entry_key("k")], "1").await;
    // Purging a key nobody holds is fine too.
    assert_eq!(
        c.delete(a.item_url("never"))
            .bearer_auth("t0ken")
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
}

#[tokio::test]
async fn purging_is_off_without_an_admin_token() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "1")]).await;
    let r = client()
        .delete(s.item_url("k"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");
}

#[tokio::test]
async fn a_soft_purge_serves_the_old_value_once_and_refreshes_in_the_background() {
    let (_redis, _origin, [a, b]) = with_redis_and_origin(&[], &[("ADMIN_TOKEN", "t0ken")]).await;
    a.get("k").await;
    b.get("k").await;
    let r = client()
        .delete(a.item_url("k") + "?soft=true")
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually("b to mark its copy stale", || async {
        (b.metric("cache_invalidations_total{mode=\"soft\",scope=\"key\",source=\"remote\"")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    let (code, status, body) = b.get("k").await;
    assert_eq!(code, 200);
    assert!(status.ends_with("detail=stale-while-revalidate"), "{status}");
    assert_eq!(body["value"]["n"], 1);
    let fresh = eventually("the background refresh", || async {
        let (_, status, body) = b.get("k").await;
        status.ends_with("detail=memory").then_some(body)
    })
    .await;
    assert_eq!(fresh["value"]["n"], 2);
}

#[tokio::test]
async fn three_replicas_sharing_redis_fetch_a_cold_key_from_the_origin_once() {
    let (_redis, origin, replicas) = with_redis_and_origin::<3>(&[("STUB_LATENCY_MS", "500")], &[]).await;
    for (code, body) in all_at_once(&replicas, "cold", 100).await {
        assert_eq!(code, 200);
        assert_eq!(body["value"]["n"], 1);
    }
    assert_eq!(origin.served().await, 1);
    assert_eq!(
        fleet_coalesced(&replicas).await,
        2.0,
        "the two replicas that did not fetch waited on the fleet lock"
    );
}

/// `GET /items/{key}` sent `each` times to every replica, all at once: (status, body) of each.
async fn all_at_once(replicas: &[Service], key: &str, each: usize) -> Vec<(u16, Value)> {
    let barrier = Arc::new(Barrier::new(replicas.len() * each));
    let mut tasks = Vec::new();
    for r in replicas {
        for _ in 0..each {
            let (c, url, barrier) = (client(), r.item_url(key), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let r = c.get(url).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            }));
        }
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// Misses the replicas answered with another replica's fetch, in all.
async fn fleet_coalesced(replicas: &[Service]) -> f64 {
    let mut fleet = 0.0;
    for r in replicas {
        fleet += r.metric("cache_coalesced_total{scope=\"fleet\"").await;
    }
    fleet
}

#[tokio::test]
async fn when_the_fetch_a_fleet_waits_for_fails_every_replica_answers_that_failure_without_fetching() {
    // The origin answers 500 after 400 ms. Five replicas miss the same cold key at once: one
    // takes the fleet lock and fetches, the others wait for it. Its failure is theirs too,
    // told in its fill message: one fetch in all, not one replica after another (each waiting
    // out the one before and then calling the failing origin itself).
    let env = [
        ("ORIGIN_BREAKER_MIN_REQUESTS", "1000"),
        ("FLEET_LOCK_POLL_MS", "60000"),
    ];
    let (_redis, origin, replicas) = with_redis_and_origin::<5>(&[], &env).await;
    origin.set("status:500", 400).await;
    for (code, body) in all_at_once(&replicas, "failing", 1).await {
        assert_eq!(
            (code, body["error"].as_str()),
            (502, Some("origin_error")),
            "{body}"
        );
    }
    assert_eq!(origin.served().await, 1, "one fetch for the fleet");
    // The four that waited count as waits on the fleet, not as misses nor origin requests.
    assert_eq!(fleet_coalesced(&replicas).await, 4.0);
    let (mut misses, mut fetches) = (0.0, 0.0);
    for r in &replicas {
        misses += r.metric("cache_misses_total").await;
        fetches += r.metric("origin_requests_total{outcome=\"error\"").await;
    }
    assert_eq!((misses, fetches), (0.0, 1.0));
    // The next request after the failure fetches again (a failure is not cached).
    assert_eq!(replicas[0].get("failing").await.0, 502);
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn a_replica_that_cannot_reach_the_origin_does_not_fail_the_replicas_waiting_on_it() {
    // A's ORIGIN_URL leads to a listener that takes connections and never answers (a
    // partition, a wrong address): its fetch times out. B and C, waiting on A's fleet lock, do
    // not take A's timeout for theirs: they compete for the lock again, and one of them
    // fetches from the origin for both.
    let redis = crate::harness::Redis::start().await;
    let origin = Origin::start(&[]).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/items/{{key}}", silent.local_addr().unwrap());
    let taken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _silent = tokio::spawn({
        let taken = taken.clone();
        async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
                taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let common = [("ORIGIN_TIMEOUT_MS", "800"), ("FLEET_LOCK_POLL_MS", "60000")];
    let [a] = services_on(
        &redis.url(),
        &[&common[..], &[("ORIGIN_URL", silent_url.as_str())]].concat(),
    )
    .await;
    let template = origin.template();
    let [b, c] = services_on(
        &redis.url(),
        &[&common[..], &[("ORIGIN_URL", template.as_str())]].concat(),
    )
    .await;
    let a_answer = tokio::spawn({
        let url = a.item_url("k");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    });
    // A holds the lock once its fetch is under way.
    eventually("A's fetch to reach its silent origin", || async {
        (taken.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let (b_answer, c_answer) = tokio::join!(b.get("k"), c.get("k"));
    assert_eq!(a_answer.await.unwrap(), 504, "A's own fetch timed out");
    for (code, _, body) in [b_answer, c_answer] {
        assert_eq!((code, body["value"]["n"].as_u64()), (200, Some(1)), "{body}");
    }
    assert_eq!(origin.served().await, 1, "B and C fetched once for both");
}

#[tokio::test]
async fn a_replica_waiting_on_another_is_woken_by_a_message_not_by_polling_redis() {
    // B would look in Redis on its own only after a minute, and gives up waiting after 10 s
    // (then it would fetch itself): only A's message can end its wait with A's value.
    let env = [("FLEET_LOCK_POLL_MS", "60000"), ("FLEET_LOCK_WAIT_MS", "10000")];
    let (redis, origin, [a, b]) = with_redis_and_origin(&[("STUB_LATENCY_MS", "1500")], &env).await;
    // A takes the fleet lock and its origin fetch takes 1.5 s; B misses while A holds the lock.
    let fetching = tokio::spawn({
        let url = a.item_url("slow");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    });
    origin.wait_served(1).await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let (code, _, body) = b.get("slow").await;
    assert_eq!(fetching.await.unwrap(), 200);
    assert_eq!((code, body["value"]["n"].as_u64()), (200, Some(1)));
    assert_eq!(origin.served().await, 1);
    assert_eq!(b.metric("cache_coalesced_total{scope=\"fleet\"").await, 1.0);
    // While B waited (over a second) it did not poll: polling every 10 ms, as replicas once did,
    // would have sent some 150 GETs and EXISTSes.
    let stats = redis.cli(&["INFO", "commandstats"]);
    let calls = |cmd: &str| -> u64 {
        stats
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{cmd}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let (gets, exists) = (calls("get"), calls("exists"));
    assert!(
        gets + exists <= 10,
        "B polled Redis: {gets} GETs, {exists} EXISTS\n{stats}"
    );
    assert!(calls("publish") >= 1, "A announced the fill\n{stats}");
}

#[tokio::test]
async fn redis_cluster_carries_the_tier_purges_and_the_fleet_lock() {
    let cluster = RedisCluster::start().await;
    let origin = Origin::start(&[("STUB_LATENCY_MS", "300")]).await;
    let template = origin.template();
    let env = [
        ("REDIS_CLUSTER", "true"),
        ("ORIGIN_URL", template.as_str()),
        ("ADMIN_TOKEN", "t0ken"),
    ];
    let [a, b] = services_on(&cluster.urls(), &env).await;
    // Keys on every shard: each is fetched once and is a Redis hit for the other replica.
    for i in 0..6 {
        let key = format!("key-{i}");
        assert_eq!(a.get(&key).await.1, "cache-layer; fwd=miss; stored");
        assert!(b.get(&key).await.1.ends_with("detail=redis"));
    }
    cluster
        .eventually_cli(&["EXISTS", &entry_key("key-0")], "1")
        .await;
    // Purge through a, seen by b.
    let r = client()
        .delete(a.item_url("key-0"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    eventually("b to drop key-0", || async {
        (b.metric("cache_invalidations_total{mode=\"hard\",scope=\"key\",source=\"remote\"")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(b.get("key-0").await.1, "cache-layer; fwd=miss; stored");
    // Fleet lock: both replicas at once, one origin fetch.
    let served = origin.served().await;
    let barrier = Arc::new(Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.item_url("cold")
            } else {
                b.item_url("cold")
            };
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                client().get(url).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(origin.served().await, served + 1);
    // Both replicas listen on the sharded channels, on the master of their slot, and the purge
    // and the fill went by SPUBLISH: no classic PUBLISH crossed the cluster bus.
    let shard = &cluster.nodes[cluster.owner_of("{cache-layer:bus}:invalidate")];
    let subscribers = shard.cli(&["PUBSUB", "SHARDNUMSUB", "{cache-layer:bus}:invalidate"]);
    assert_eq!(subscribers.lines().nth(1), Some("2"), "{subscribers}");
    for node in &cluster.nodes {
        let info = node.cli(&["CLUSTER", "INFO"]);
        let classic = info
            .lines()
            .find_map(|l| l.strip_prefix("cluster_stats_messages_publish_sent:"))
            .unwrap_or("0");
        assert_eq!(classic.trim(), "0", "no classic PUBLISH on the bus:\n{info}");
    }
}

#[tokio::test]
async fn a_fuzz_of_thousands_of_keys_gets_only_200_400_or_404() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "0"), ("MAX_KEY_BYTES", "256")]).await;
    let pieces = [
        "a",
        "é",
        "日本",
        "🦀",
        "%2F",
        "%252F",
        "%2E%2E",
        ".",
        "..",
        "%00",
        "%0A",
        "%7F",
        "%C3%28",
        "%FF",
        "%",
        "%zz",
        "+",
        "?",
        "#",
        "&x=1",
        ";",
        "~",
        "%20",
        "\\",
        "'",
        "\"",
        "<",
        "{key}",
        "%E2%80%AE",
        "%EF%BF%BF",
    ];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut counts = std::collections::BTreeMap::new();
    for i in 0..3000 {
        let len = if i % 100 == 0 {
            200
        } else {
            1 + (next() % 6) as usize
        };
        let key: String = (0..len)
            .map(|_| pieces[(next() % pieces.len() as u64) as usize])
            .collect();
        // Raw requests: exactly these bytes reach the server. Characters a request line cannot
        // carry are percent-encoded first.
        let target: String = key
            .chars()
            .map(|ch| match ch {
                ' ' | '"' | '<' | '>' | '\\' | '{' | '}' | '#' | '?' => format!("%{:02X}", ch as u32),
                c if !c.is_ascii() => c.to_string().bytes().map(|b| format!("%{b:02X}")).collect(),
                c => c.to_string(),
            })
            .collect();
        let (status, body) = raw_get(s.port, &format!("/items/{target}")).await;
        assert!(matches!(status, 200 | 400 | 404), "{target}: {status} {body}");
        assert!(
            serde_json::from_str::<Value>(&body).is_ok(),
            "{target}: non-JSON body {body}"
        );
        *counts.entry(status).or_insert(0) += 1;
    }
    println!("fuzz statuses: {counts:?}");
    assert!(counts.get(&200).copied().unwrap_or(0) > 100 && counts.get(&400).copied().unwrap_or(0) > 100);
    assert_eq!(client().get(s.url("/livez")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_flood_of_unique_keys_keeps_the_memory_tier_within_its_byte_bound() {
    let bound = 256 * 1024;
    let bound_s = bound.to_string();
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "0"), ("MEMORY_CACHE_MAX_BYTES", &bound_s)]).await;
    let c = client();
    let mut max_seen = 0.0f64;
    for i in 0..5000 {
        let r = c
            .get(s.item_url(&format!("flood-key-{i}-{}", "x".repeat(i % 64))))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        if i % 500 == 499 {
            max_seen = max_seen.max(s.metric("memory_cache_bytes").await);
        }
    }
    let bytes = s.metric("memory_cache_bytes").await;
    assert!(
        bytes <= bound as f64 && max_seen <= bound as f64,
        "bytes {bytes}, max seen {max_seen}, bound {bound}"
    );
    assert!(bytes > (bound / 2) as f64, "the tier is used: {bytes}");
    assert!(s.metric("cache_evictions_total{cause=\"size\"").await > 0.0);
    let rss = crate::harness::rss_bytes(s.pid()) >> 20;
    println!("after 5000 unique keys with MEMORY_CACHE_MAX_BYTES={bound}: RSS {rss} MiB");
}

#[tokio::test]
async fn a_purge_that_cannot_reach_redis_says_so_with_503_and_still_purges_here() {
    let (mut redis, _origin, [s]) = with_redis_and_origin(&[], &[("ADMIN_TOKEN", "t0ken")]).await;
    s.get("k").await;
    redis.stop();
    let r = client()
        .delete(s.item_url("k"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "purge_incomplete");
    // This replica dropped its copy all the same.
    let (code, status, body) = s.get("k").await;
    assert_eq!((code, status.as_str()), (200, "cache-layer; fwd=miss; stored"));
    assert_eq!(body["value"]["n"], 2);
}

#[tokio::test]
async fn a_purge_during_a_fetch_keeps_the_fetched_value_out_of_the_cache() {
    let origin = Origin::start(&[("STUB_LATENCY_MS", "1500")]).await;
    let s = origin.service(&[("ADMIN_TOKEN", "t0ken")]).await;
    let in_flight = {
        let (c, url) = (client(), s.item_url("k"));
        tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            (cache_status(&r), r.json::<Value>().await.unwrap())
        })
    };
    origin.wait_served(1).await;
    let r = client()
        .delete(s.item_url("k"))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The request that was waiting gets its answer, told it was not stored, and why...
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(body["value"]["n"], 1);
    assert_eq!(status, "cache-layer; fwd=miss; detail=purged");
    assert_eq!(s.metric("cache_not_stored_total{reason=\"purged\"").await, 1.0);
    // ...but the value fetched before the purge was not stored.
    let (_, status, body) = s.get("k").await;
    assert_eq!(status, "cache-layer; fwd=miss; stored");
    assert_eq!(body["value"]["n"], 2);
}

/// A purge on replica B while replica A's fetch of the key is at the origin: A must not store
/// the pre-purge value (in Redis, where B would serve it), with or without a memory tier.
async fn purge_from_another_replica_stops_a_fetch_in_flight(a_memory: &str) {
    let admin = ("ADMIN_TOKEN", "0123456789abcdef");
    let (redis, origin, [a]) = with_redis_and_origin(
        &[("STUB_LATENCY_MS", "1500")],
        &[admin, ("MEMORY_CACHE_ENABLED", a_memory)],
    )
    .await;
    // B, on the same Redis and origin, always has a memory tier.
    let template = origin.template();
    let b_env = [
        ("ORIGIN_URL", template.as_str()),
        admin,
        ("MEMORY_CACHE_ENABLED", "true"),
    ];
    let [b] = services_on(&redis.url(), &b_env).await;
    let fetch = tokio::spawn({
        let url = a.item_url("raced");
        async move { client().get(url).send().await.unwrap().status() }
    });
    // Ordered without sleeps: the DELETE goes once the origin has A's request.
    origin.wait_served(1).await;
    let r = client()
        .delete(b.item_url("raced"))
        .bearer_auth("0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        fetch.await.unwrap(),
        200,
        "A's request is answered with what it fetched"
    );
    // The purge is not lost: B does not find the pre-purge value in Redis.
    assert_eq!(b.get("raced").await.1, "cache-layer; fwd=miss; stored");
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn a_purge_from_another_replica_stops_a_redis_only_fetch_in_flight() {
    purge_from_another_replica_stops_a_fetch_in_flight("false").await;
}

#[tokio::test]
async fn a_purge_from_another_replica_stops_a_fetch_in_flight_with_a_memory_tier() {
    purge_from_another_replica_stops_a_fetch_in_flight("true").await;
}

#[tokio::test]
async fn a_replica_that_stood_still_while_redis_dropped_its_subscription_catches_up_on_the_whole_gap() {
    // B stands still (SIGSTOP: a paused VM, a throttled pod). Messages pile up for it until
    // Redis's output buffer for its subscription is full (made small here) and Redis closes
    // it; the purges made after that never reach B's socket. When B runs again it reads what
    // its socket still held, then the end, and catches up from the purge records: from before
    // it stopped, not from when it noticed (a check that came late must not count as heard).
    let redis =
        crate::harness::Redis::start_with(&["--client-output-buffer-limit", "pubsub 256kb 64kb 1"]).await;
    let origin = Origin::start(&[("STUB_HEADERS", "Surrogate-Key: {tags}")]).await;
    let template = origin.template();
    let env = [
        ("ORIGIN_URL", template.as_str()),
        ("ADMIN_TOKEN", "0123456789abcdef"),
    ];
    let [a, b] = services_on(&redis.url(), &env).await;
    let tagged: Vec<String> = (0..100).map(|i| format!("g{i}~gap")).collect();
    let plain: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    let all = [tagged.clone(), plain.clone()].concat();
    for s in [&a, &b] {
        assert_eq!(s.batch(&all).await.0, 200);
        for key in &all {
            assert!(s.get(key).await.1.ends_with("detail=memory"), "{key} in memory");
        }
    }
    let fetched = origin.served().await;
    crate::harness::signal(b.pid(), "STOP");
    // More than Redis and the sockets between them hold for B: its subscription is closed. (The
    // channel's other readers ignore what they cannot parse, as B would.)
    let junk = "x".repeat(100 * 1024);
    for _ in 0..300 {
        redis.cli(&["PUBLISH", "cache-layer:invalidate", &junk]);
    }
    let c = client();
    let purge = |path: String| {
        let c = c.clone();
        async move {
            let r = c
                .delete(path)
                .bearer_auth("0123456789abcdef")
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(purge(a.url("/tags/gap")).await, 200);
    for key in &plain {
        assert_eq!(purge(a.item_url(key)).await, 204);
    }
    // Longer ago than the catch-up's allowance for replicas' clocks (5 s) when B runs again.
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    crate::harness::signal(b.pid(), "CONT");
    // B applies every purge of the gap: each key is fetched anew, none served from before.
    eventually("b to have caught up on the gap's purges", || async {
        let (_, status, _) = b.get("g0~gap").await;
        (!status.contains("hit")).then_some(())
    })
    .await;
    for key in &all {
        let (code, status, body) = b.get(key).await;
        assert_eq!(code, 200);
        assert!(
            body["value"]["n"].as_u64().unwrap() > fetched as u64,
            "{key}: served from before the purge ({status}): {body}"
        );
    }
}
