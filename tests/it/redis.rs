//! The Redis tier against a real `redis-server`: sharing, auth, the seed's variables, outages.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use std::process::Stdio;

use crate::harness::{
    Redis, Service, cache_status, client, entry_key, eventually, free_port, service_command, services_on,
    with_redis, with_redis_and_origin,
};

#[tokio::test]
async fn a_value_fetched_through_one_process_is_a_redis_hit_for_another() {
    let (redis, origin, [a, b]) = with_redis_and_origin(&[], &[]).await;
    let c = client();
    let r = c.get(a.item_url("shared")).send().await.unwrap();
    assert_eq!(cache_status(&r), "cache-layer; fwd=miss; stored");
    // a answered once its memory tier held it; Redis is written just after.
    redis.eventually_cli(&["EXISTS", &entry_key("shared")], "1").await;
    let r = c.get(b.item_url("shared")).send().await.unwrap();
    let status = cache_status(&r);
    assert!(
        status.starts_with("cache-layer; hit; ttl=") && status.ends_with("; detail=redis"),
        "{status}"
    );
    assert_eq!(r.json::<Value>().await.unwrap()["source"], "cache");
    // The Redis hit filled b's memory tier.
    let r = c.get(b.item_url("shared")).send().await.unwrap();
    assert!(cache_status(&r).ends_with("; detail=memory"));
    assert_eq!(origin.served().await, 1);
    assert_eq!(b.metric("cache_hits_total{tier=\"redis\"").await, 1.0);
    // Stored under the prefix and format version, kept for TTL + stale window.
    let ttl_ms: i64 = redis.cli(&["PTTL", &entry_key("shared")]).parse().unwrap();
    assert!(ttl_ms > 300_000 && ttl_ms <= 360_000, "PTTL {ttl_ms}");
}

#[tokio::test]
async fn memory_tier_off_gives_a_redis_only_service() {
    let (_redis, [s]) = with_redis(&[("MEMORY_CACHE_ENABLED", "false"), ("ORIGIN_LATENCY_MS", "1")]).await;
    let c = client();
    c.get(s.item_url("k")).send().await.unwrap();
    for _ in 0..3 {
        let r = c.get(s.item_url("k")).send().await.unwrap();
        assert!(
            cache_status(&r).ends_with("; detail=redis"),
            "{}",
            cache_status(&r)
        );
    }
    let health = s.json("/health").await;
    assert_eq!(health["tiers"]["memory"], "disabled");
    assert_eq!(health["tiers"]["redis"], "ok");
}

#[tokio::test]
async fn password_auth_and_the_seeds_redis_variables_work() {
    let redis = Redis::start_with(&["--requirepass", "s3cret"]).await;
    let with_password = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let [s] = services_on(&with_password, &[("ORIGIN_LATENCY_MS", "1")]).await;
    client().get(s.item_url("a")).send().await.unwrap();
    redis
        .eventually_cli(
            &["-a", "s3cret", "--no-auth-warning", "EXISTS", &entry_key("a")],
            "1",
        )
        .await;

    // The seed's REDIS_HOST / REDIS_PORT / REDIS_DB, with the password from REDIS_PASSWORD.
    let port = redis.port.to_string();
    let seed = Service::start(&[
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", &port),
        ("REDIS_DB", "3"),
        ("REDIS_PASSWORD", "s3cret"),
        ("ORIGIN_LATENCY_MS", "1"),
    ])
    .await;
    seed.wait_redis_up().await;
    client().get(seed.item_url("b")).send().await.unwrap();
    redis
        .eventually_cli(
            &[
                "-a",
                "s3cret",
                "--no-auth-warning",
                "-n",
                "3",
                "EXISTS",
                &entry_key("b"),
            ],
            "1",
        )
        .await;

    // A wrong password degrades the service; it still answers.
    let wrong = format!("redis://:nope@127.0.0.1:{}", redis.port);
    let bad = Service::start(&[("REDIS_URL", &wrong), ("ORIGIN_LATENCY_MS", "1")]).await;
    let r = client().get(bad.item_url("c")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let health = bad.json("/health").await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["tiers"]["redis"], "down");
}

#[tokio::test]
async fn redis_down_at_start_degrades_and_is_used_once_it_appears() {
    let mut redis = Redis::start().await;
    redis.stop();
    let url = redis.url();
    let s = Service::start(&[("REDIS_URL", &url), ("ORIGIN_LATENCY_MS", "1")]).await;
    let c = client();
    let health = s.json("/health").await;
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["tiers"]["redis"], "down");
    for i in 0..5 {
        assert_eq!(
            c.get(s.item_url(&format!("k{i}"))).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(c.get(s.url("/readyz")).send().await.unwrap().status(), 200);
    redis.restart().await;
    s.wait_redis_up().await;
    c.get(s.item_url("after")).send().await.unwrap();
    redis.eventually_cli(&["EXISTS", &entry_key("after")], "1").await;
}

#[tokio::test]
async fn redis_killed_and_restarted_under_traffic_causes_no_5xx() {
    let (mut redis, [s]) = with_redis(&[("ORIGIN_LATENCY_MS", "2")]).await;
    let s = Arc::new(s);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (s, stop, ok, errors) = (s.clone(), stop.clone(), ok.clone(), errors.clone());
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                // A mix of repeated keys (hits) and new keys (misses that write to Redis).
                let key = if i.is_multiple_of(3) {
                    format!("new-{w}-{i}")
                } else {
                    format!("hot-{}", i % 10)
                };
                match c.get(s.item_url(&key)).send().await {
                    Ok(r) if r.status().is_server_error() => errors.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    let served_before = |n: u64| {
        let ok = ok.clone();
        async move { (ok.load(Ordering::Relaxed) > n).then_some(()) }
    };
    eventually("traffic before the kill", || served_before(200)).await;
    redis.stop();
    let mark = ok.load(Ordering::Relaxed);
    eventually("traffic while redis is down", || served_before(mark + 200)).await;
    redis.restart().await;
    s.wait_redis_up().await;
    let mark = ok.load(Ordering::Relaxed);
    eventually("traffic after the restart", || served_before(mark + 200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(
        errors.load(Ordering::Relaxed),
        0,
        "5xx or failed requests while Redis was down"
    );
    // Used again after it came back: a new key lands in Redis.
    client().get(s.item_url("after-restart")).send().await.unwrap();
    redis
        .eventually_cli(&["EXISTS", &entry_key("after-restart")], "1")
        .await;
    assert!(s.metric("redis_errors_total").await >= 1.0);
}

#[tokio::test]
async fn a_redis_that_accepts_but_never_answers_does_not_hang_requests() {
    let (redis, [s]) = with_redis(&[("ORIGIN_LATENCY_MS", "1"), ("REDIS_RESPONSE_TIMEOUT_MS", "200")]).await;
    redis.pause();
    cache_layer::tls::install_crypto_provider();
    let c = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .no_proxy()
        // Raw bodies as the service sends them: no Accept-Encoding added, nothing decoded.
        .no_gzip()
        .no_brotli()
        .no_deflate()
        .no_zstd()
        .build()
        .unwrap();
    for i in 0..10 {
        let r = c
            .get(s.item_url(&format!("p{i}")))
            .send()
            .await
            .expect("no request may hang on a frozen Redis");
        assert_eq!(r.status(), 200);
    }
    let health = s.json("/health").await;
    assert_eq!(health["tiers"]["redis"], "down");
    redis.resume();
    s.wait_redis_up().await;
}

#[tokio::test]
async fn rediss_urls_speak_tls() {
    let redis = Redis::start_tls().await;
    let [s] = services_on(&redis.url(), &[("ORIGIN_LATENCY_MS", "1")]).await;
    client().get(s.item_url("over-tls")).send().await.unwrap();
    redis
        .eventually_cli(&["EXISTS", &entry_key("over-tls")], "1")
        .await;
}

#[tokio::test]
async fn rediss_verifies_the_server_against_redis_tls_ca_file() {
    let redis = Redis::start_tls().await;
    let verified = format!("rediss://127.0.0.1:{}", redis.port);
    let ca = redis.ca_file();
    let [s] = services_on(
        &verified,
        &[("REDIS_TLS_CA_FILE", &ca), ("ORIGIN_LATENCY_MS", "1")],
    )
    .await;
    client().get(s.item_url("verified")).send().await.unwrap();
    redis
        .eventually_cli(&["EXISTS", &entry_key("verified")], "1")
        .await;
    // Without the CA the server's certificate is not trusted: degraded, still answering.
    let untrusted = Service::start(&[("REDIS_URL", &verified), ("ORIGIN_LATENCY_MS", "1")]).await;
    assert_eq!(untrusted.get("other").await.0, 200);
    let health = untrusted.json("/health").await;
    assert_eq!(health["tiers"]["redis"], "down");
}

#[tokio::test]
async fn redis_trouble_shows_in_node_up_and_ping_errors_and_the_log_names_it() {
    let mut redis = Redis::start().await;
    let s = Service::start(&[("REDIS_URL", &redis.url())]).await;
    s.wait_redis_up().await;
    let node = format!("redis_node_up{{node=\"127.0.0.1:{}\"", redis.port);
    assert_eq!(s.metric(&node).await, 1.0);
    redis.stop();
    eventually("redis_node_up to fall to 0", || async {
        (s.metric(&node).await == 0.0).then_some(())
    })
    .await;
    let before = s.metric("redis_errors_total{operation=\"ping\"").await;
    assert!(before >= 1.0);
    eventually("ping errors to keep rising while Redis is down", || async {
        (s.metric("redis_errors_total{operation=\"ping\"").await > before).then_some(())
    })
    .await;
}

/// The service's log (stdout) with `REDIS_URL=url`, once it has answered `/health` and its first
/// ping has had time to fail.
async fn log_with_redis_url(url: &str) -> String {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = service_command(&[("LISTEN_ADDR", &listen), ("REDIS_URL", url)])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let health = format!("http://{listen}/health");
    eventually("the service to report Redis down", || async {
        let v: Value = client().get(&health).send().await.ok()?.json().await.ok()?;
        (v["tiers"]["redis"] == "down").then_some(())
    })
    .await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn redis_connection_failures_are_named_for_what_they_are() {
    let redis = Redis::start_with(&["--requirepass", "right-password"]).await;
    let wrong = redis.url().replace("redis://", "redis://:wrong-password@");
    let log = log_with_redis_url(&wrong).await;
    assert!(log.contains("authentication failed"), "{log}");
    // rediss:// against a plain-text server.
    let plain = Redis::start().await;
    let tls = plain.url().replace("redis://", "rediss://") + "/#insecure";
    let log = log_with_redis_url(&tls).await;
    assert!(log.contains("TLS failed"), "{log}");
    let log = log_with_redis_url("redis://no-such-host.invalid:6379").await;
    assert!(log.contains("unknown host"), "{log}");
}

#[tokio::test]
async fn purge_records_past_their_count_leave_a_mark_where_they_were_cut() {
    let (redis, [a]) = with_redis::<1>(&[("ADMIN_TOKEN", "purge-records-admin-token")]).await;
    // 100,000 records (the most Redis keeps), made over the last 100 s.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let first = now_ms - 100_000;
    let fill =
        "for i = 0, 99999 do redis.call('zadd', KEYS[1], ARGV[1] + i, 'hard\\nkey\\nold' .. i) end return 1";
    redis.cli(&["EVAL", fill, "1", "cache-layer:v1:purges", &first.to_string()]);
    let purge = |path: &'static str| {
        let url = a.url(path);
        async move {
            let r = client()
                .delete(url)
                .bearer_auth("purge-records-admin-token")
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(purge("/items/one").await, 204);
    // The oldest went, and the mark is scored with it: a replica whose gap began before then
    // knows the records no longer cover it.
    assert_eq!(
        redis
            .cli(&["ZSCORE", "cache-layer:v1:purges", "hard\nkey\nold0"])
            .trim(),
        ""
    );
    assert_eq!(
        redis.cli(&["ZSCORE", "cache-layer:v1:purges", "!trimmed"]).trim(),
        first.to_string()
    );
    assert_eq!(purge("/items/two").await, 204);
    assert_eq!(
        redis.cli(&["ZSCORE", "cache-layer:v1:purges", "!trimmed"]).trim(),
        (first + 1).to_string(),
        "the mark moves with the cut"
    );
    assert_eq!(
        redis.cli(&["ZCARD", "cache-layer:v1:purges"]).trim(),
        "100001",
        "the records and the mark"
    );
    assert!(
        !redis
            .cli(&["ZSCORE", "cache-layer:v1:purges", "hard\nkey\ntwo"])
            .trim()
            .is_empty()
    );
}
