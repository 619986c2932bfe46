//! HTTP caching done right (issue 16): the origin's `Cache-Control` decides lifetimes, validators
//! save bandwidth both ways, and bodies travel compressed. Against the real origin stub (which
//! sends the headers it is told, answers conditional requests, and counts them) and real Redis.

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Origin, cache_status, client, entry_key, eventually, with_redis_and_origin};

/// `GET` with extra request headers: status, `Cache-Status`, the response headers, the body.
async fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, String, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap();
    let (status, cache) = (r.status().as_u16(), cache_status(&r));
    let headers = r.headers().clone();
    (status, cache, headers, r.bytes().await.unwrap().to_vec())
}

fn header(headers: &reqwest::header::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| v.to_str().unwrap().to_owned())
}

fn source(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body).unwrap()["source"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn the_origins_max_age_decides_freshness_and_its_age_is_counted() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[("Cache-Control", "public, max-age=300"), ("Age", "100")])
        .await;
    // The heuristic would say 10 s: the origin's 300 − 100 wins.
    let s = origin.service(&[("CACHE_TTL_SECS", "10")]).await;
    let (status, cache, _, body) = get_with(&s.item_url("k"), &[]).await;
    assert_eq!(
        (status, cache.as_str(), source(&body).as_str()),
        (200, "cache-layer; fwd=miss; stored", "origin")
    );
    let (_, cache, headers, _) = get_with(&s.item_url("k"), &[]).await;
    let ttl: u64 = cache
        .split("ttl=")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!((190..=200).contains(&ttl), "{cache}");
    let age: u64 = header(&headers, "age").unwrap().parse().unwrap();
    assert!((100..110).contains(&age), "Age counts the origin's: {age}");
}

#[tokio::test]
async fn clamps_bound_the_origins_lifetimes_and_the_ignore_switch_turns_the_policy_off() {
    let origin = Origin::start(&[]).await;
    origin.headers(&[("Cache-Control", "max-age=86400")]).await;
    let s = origin.service(&[("CACHE_TTL_MAX_SECS", "5")]).await;
    s.get("k").await;
    let (_, cache, _) = s.get("k").await;
    assert!(cache.contains("ttl=4") || cache.contains("ttl=5"), "{cache}");

    origin.headers(&[("Cache-Control", "no-store")]).await;
    let ignoring = origin
        .service(&[("ORIGIN_CACHE_CONTROL", "ignore"), ("CACHE_TTL_SECS", "60")])
        .await;
    ignoring.get("other").await;
    let (_, cache, _) = ignoring.get("other").await;
    assert!(
        cache.starts_with("cache-layer; hit; ttl=5"),
        "stored despite no-store: {cache}"
    );
}

#[tokio::test]
async fn no_store_and_private_answers_are_never_stored_in_any_tier() {
    let (redis, origin, [s]) = with_redis_and_origin(&[], &[]).await;
    for (directive, reason) in [("no-store", "no-store"), ("private, max-age=0", "private")] {
        origin.headers(&[("Cache-Control", directive)]).await;
        let key = format!("k-{reason}");
        let before = origin.served().await;
        for _ in 0..3 {
            let (status, cache, body) = s.get(&key).await;
            assert_eq!(status, 200);
            assert_eq!(cache, format!("cache-layer; fwd=miss; detail={reason}"));
            assert_eq!(body["source"], "origin");
        }
        assert_eq!(origin.served().await - before, 3, "one origin fetch per request");
        assert_eq!(redis.cli(&["exists", &entry_key(&key)]).trim(), "0");
        let series = format!("cache_uncacheable_total{{reason=\"{reason}\"");
        assert_eq!(s.metric(&series).await, 3.0);
    }
    assert_eq!(s.metric("memory_cache_entries").await, 0.0);
}

#[tokio::test]
async fn a_replica_waiting_on_an_unstorable_fetch_is_told_and_fetches_at_once() {
    let (_redis, origin, [a, b]) = with_redis_and_origin(
        &[("STUB_LATENCY_MS", "1500")],
        &[
            ("FLEET_LOCK_WAIT_MS", "30000"),
            ("FLEET_LOCK_TTL_MS", "30000"),
            ("REQUEST_TIMEOUT_SECS", "60"),
        ],
    )
    .await;
    origin.headers(&[("Cache-Control", "no-store")]).await;
    let first = tokio::spawn({
        let url = a.item_url("k");
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    });
    origin.wait_served(1).await;
    let started = Instant::now();
    let (status, cache, _) = b.get("k").await;
    assert_eq!(status, 200);
    assert!(cache.contains("detail=no-store"), "{cache}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "B waited out FLEET_LOCK_WAIT_MS (30 s) instead of fetching once told: {:?}",
        started.elapsed()
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(origin.served().await, 2);
}

#[tokio::test]
async fn after_a_soft_purge_a_304_renews_the_entrys_whole_lifetime() {
    // Soft-purged 0.2 s after it was fetched: the 304 that refreshes it restates no freshness,
    // so its lifetime (CACHE_TTL_SECS) runs again, not the 0.2 s it had lived (which made every
    // later hit a refresh, for ever).
    let origin = Origin::start(&[("STUB_MODE", "fixed")]).await;
    origin.headers(&[("ETag", "\"v1\"")]).await;
    let token = "0123456789abcdef0123";
    let s = origin
        .service(&[
            ("ADMIN_TOKEN", token),
            ("CACHE_TTL_SECS", "600"),
            ("CACHE_TTL_JITTER_PERCENT", "0"),
        ])
        .await;
    assert_eq!(s.get("k").await.1, "cache-layer; fwd=miss; stored");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let purged = client()
        .delete(s.url("/items/k?soft=true"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(purged.status(), 204);
    let conditional = || async { origin.stats().await["conditional"].as_u64().unwrap_or(0) };
    // The first hit after it refreshes (served stale meanwhile, or after the 304).
    assert_eq!(s.get("k").await.0, 200);
    eventually("the refresh to reach the origin", || async {
        (conditional().await == 1).then_some(())
    })
    .await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, cache, _) = s.get("k").await;
        assert_eq!(status, 200);
        // A fresh hit with most of its 600 s ahead (`ttl=599`), not a stale one.
        let ttl: u64 = cache
            .strip_prefix("cache-layer; hit; ttl=")
            .and_then(|rest| rest.split(';').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("not a fresh hit: {cache}"));
        assert!(ttl > 590, "{cache}");
    }
    assert_eq!(conditional().await, 1, "one refresh, then fresh for its 600 s");
}

#[tokio::test]
async fn no_cache_is_revalidated_with_the_origins_etag_and_a_304_renews_it() {
    let origin = Origin::start(&[("STUB_MODE", "fixed")]).await;
    origin
        .headers(&[("Cache-Control", "no-cache"), ("ETag", "\"v1\"")])
        .await;
    let s = origin.service(&[]).await;
    let (_, cache, _) = s.get("k").await;
    assert_eq!(cache, "cache-layer; fwd=miss; stored");
    for n in 1..=2u64 {
        let (status, cache, _, body) = get_with(&s.item_url("k"), &[]).await;
        assert_eq!(status, 200);
        assert_eq!(cache, "cache-layer; hit; fwd=stale; fwd-status=304");
        assert_eq!(source(&body), "cache");
        let stats = origin.stats().await;
        assert_eq!(
            (stats["conditional"].as_u64(), stats["not_modified"].as_u64()),
            (Some(n), Some(n))
        );
    }
    assert_eq!(
        s.metric("origin_requests_total{outcome=\"not_modified\"").await,
        2.0
    );
    assert_eq!(s.metric("cache_hits_total{tier=\"memory\"").await, 2.0);
    // The value changed at the origin: its 200 replaces the entry.
    origin
        .headers(&[("Cache-Control", "no-cache"), ("ETag", "\"v2\"")])
        .await;
    let (status, cache, body) = s.get("k").await;
    assert_eq!((status, cache.as_str()), (200, "cache-layer; fwd=stale; stored"));
    assert_eq!(body["source"], "origin");
}

#[tokio::test]
async fn must_revalidate_is_never_served_stale_but_stale_if_error_is() {
    let origin = Origin::start(&[("STUB_MODE", "fixed")]).await;
    let s = origin.service(&[("ORIGIN_BREAKER_MIN_REQUESTS", "1000")]).await;
    origin
        .headers(&[("Cache-Control", "max-age=1, must-revalidate")])
        .await;
    s.get("strict").await;
    origin
        .headers(&[(
            "Cache-Control",
            "max-age=1, stale-while-revalidate=0, stale-if-error=300",
        )])
        .await;
    s.get("lenient").await;
    origin.set("status:500", 0).await;
    // Once past freshness: the strict entry is an error, the lenient one stale-if-error.
    eventually("the strict entry to go stale and fail", || async {
        (s.get("strict").await.0 == 502).then_some(())
    })
    .await;
    // The lenient entry was stored a moment after the strict one, so it may still be fresh for
    // a few milliseconds: every answer is the cached value, and once stale it is stale-if-error.
    eventually("the lenient entry to be served stale-if-error", || async {
        let (status, cache, body) = s.get("lenient").await;
        assert_eq!(status, 200, "{cache}");
        assert_eq!(body["source"], "cache", "{cache}");
        cache.contains("detail=stale-if-error").then_some(())
    })
    .await;
}

#[tokio::test]
async fn malformed_origin_headers_never_become_client_errors() {
    let origin = Origin::start(&[]).await;
    origin
        .headers(&[
            ("Cache-Control", "max-age=soon"),
            ("Cache-Control", "max-age=60"),
            ("Expires", "not a date"),
            ("Age", "-3"),
        ])
        .await;
    let s = origin.service(&[]).await;
    // An unreadable max-age (the first occurrence wins) means stale at once: revalidated, never
    // an error.
    for _ in 0..3 {
        let (status, _, _) = s.get("k").await;
        assert_eq!(status, 200);
    }
    assert_eq!(origin.served().await, 3);
}

#[tokio::test]
async fn clients_get_304_for_a_matching_condition_and_never_without_one() {
    let origin = Origin::start(&[("STUB_MODE", "fixed")]).await;
    origin
        .headers(&[("Last-Modified", "Sun, 06 Nov 1994 08:49:37 GMT")])
        .await;
    let s = origin.service(&[]).await;
    let url = s.item_url("k");
    let (_, _, fetched, _) = get_with(&url, &[]).await;
    let etag = header(&fetched, "etag").unwrap();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(
        header(&fetched, "last-modified").as_deref(),
        Some("Sun, 06 Nov 1994 08:49:37 GMT")
    );
    let (status, cache, headers, body) = get_with(&url, &[]).await;
    assert_eq!(status, 200, "no condition, no 304");
    assert_eq!(
        header(&headers, "etag").as_deref(),
        Some(etag.as_str()),
        "the same ETag for cache and origin bodies"
    );
    assert!(cache.contains("hit"));
    assert!(!body.is_empty());
    let strong = etag.trim_start_matches("W/").to_owned();
    for condition in [etag.as_str(), strong.as_str(), "*", &format!("\"nope\", {etag}")] {
        let (status, cache, headers, body) = get_with(&url, &[("If-None-Match", condition)]).await;
        assert_eq!(status, 304, "{condition}");
        assert!(body.is_empty());
        assert_eq!(header(&headers, "etag").as_deref(), Some(etag.as_str()));
        assert!(cache.starts_with("cache-layer; hit"), "{cache}");
        assert!(headers.contains_key("age"));
    }
    let (status, ..) = get_with(&url, &[("If-None-Match", "\"nope\"")]).await;
    assert_eq!(status, 200);
    // If-Modified-Since counts only without If-None-Match.
    let later = ("If-Modified-Since", "Sun, 06 Nov 1994 09:00:00 GMT");
    assert_eq!(get_with(&url, &[later]).await.0, 304);
    assert_eq!(
        get_with(&url, &[("If-Modified-Since", "Sun, 06 Nov 1994 08:00:00 GMT")])
            .await
            .0,
        200
    );
    assert_eq!(
        get_with(&url, &[later, ("If-None-Match", "\"nope\"")]).await.0,
        200
    );
    // HEAD the same.
    let r = client()
        .head(&url)
        .header("If-None-Match", etag.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    // Counted as the hits they were.
    assert!(s.metric("cache_hits_total{tier=\"memory\"").await >= 8.0);
}

#[tokio::test]
async fn lifetimes_and_the_etag_survive_the_redis_round_trip() {
    let (_redis, origin, [a, b]) = with_redis_and_origin(&[("STUB_MODE", "fixed")], &[]).await;
    origin
        .headers(&[("Cache-Control", "max-age=30, stale-while-revalidate=7")])
        .await;
    let (_, _, from_a, _) = get_with(&a.item_url("k"), &[]).await;
    let (status, cache, from_b, body) = get_with(&b.item_url("k"), &[]).await;
    assert_eq!((status, source(&body).as_str()), (200, "cache"));
    assert!(
        cache.starts_with("cache-layer; hit; ttl=2") && cache.ends_with("detail=redis"),
        "{cache}"
    );
    assert_eq!(header(&from_a, "etag"), header(&from_b, "etag"));
    assert_eq!(origin.served().await, 1);
}

#[tokio::test]
async fn bodies_are_compressed_as_the_client_accepts_and_once_per_entry() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:8000")]).await;
    let s = origin.service(&[("COMPRESSION_MIN_BYTES", "1024")]).await;
    let url = s.item_url("big");
    let (_, _, _, plain_origin) = get_with(&url, &[]).await;
    let (_, _, headers, plain) = get_with(&url, &[]).await;
    assert_eq!(header(&headers, "content-encoding"), None);
    assert_eq!(header(&headers, "vary").as_deref(), Some("accept-encoding"));
    assert_eq!(source(&plain_origin), "origin");
    let before = s.metric("memory_cache_bytes").await;

    let (status, _, headers, gz) = get_with(&url, &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(
        (status, header(&headers, "content-encoding").as_deref()),
        (200, Some("gzip"))
    );
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain);
    assert!(
        gz.len() * 10 < plain.len() * 4,
        "at least 60 % smaller: {} of {}",
        gz.len(),
        plain.len()
    );

    let (_, _, headers, br) = get_with(&url, &[("Accept-Encoding", "gzip;q=0.5, br")]).await;
    assert_eq!(header(&headers, "content-encoding").as_deref(), Some("br"));
    let mut unbrotli = Vec::new();
    brotli::BrotliDecompress(&mut &br[..], &mut unbrotli).unwrap();
    assert_eq!(unbrotli, plain);
    // Made once and kept: the memory tier now weighs both compressed bodies.
    eventually("the memory tier to weigh the compressed bodies", || async {
        (s.metric("memory_cache_bytes").await > before).then_some(())
    })
    .await;

    for refused in ["identity", "gzip;q=0, br;q=0", "zstd, compress"] {
        let (_, _, headers, body) = get_with(&url, &[("Accept-Encoding", refused)]).await;
        assert_eq!(header(&headers, "content-encoding"), None, "{refused}");
        assert_eq!(body, plain);
    }
    // Small bodies go as they are, without Vary.
    origin.set("fixed", 0).await;
    let (_, _, headers, _) = get_with(&s.item_url("small"), &[("Accept-Encoding", "gzip")]).await;
    assert_eq!(header(&headers, "content-encoding"), None);
    assert_eq!(header(&headers, "vary"), None);
}

#[tokio::test]
async fn a_long_body_is_compressed_once_for_a_stampede_and_once_for_later_hits() {
    let origin = Origin::start(&[("STUB_MODE", "bytes:100000"), ("STUB_LATENCY_MS", "300")]).await;
    let s = origin.service(&[]).await;
    let url = s.item_url("long");
    let mut waiters = Vec::new();
    for _ in 0..50 {
        let url = url.clone();
        waiters.push(tokio::spawn(async move {
            get_with(&url, &[("Accept-Encoding", "br")]).await
        }));
    }
    for w in waiters {
        let (status, _, headers, _) = w.await.unwrap();
        assert_eq!(
            (status, header(&headers, "content-encoding").as_deref()),
            (200, Some("br"))
        );
    }
    assert_eq!(origin.served().await, 1);
    assert_eq!(
        s.metric("cache_compressions_total{coding=\"br\"").await,
        1.0,
        "one for 50 coalesced requests"
    );
    // Long bodies were compressed on the service's own threads, below the workers' priority
    // (nice 10), so a worker sharing their core preempts them.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", s.pid())).unwrap();
    let nices: Vec<i64> = tasks
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
            let (name, rest) = stat.split_once(") ")?;
            name.ends_with("(compress-0")
                .then(|| rest.split(' ').nth(16)?.parse().ok())?
        })
        .collect();
    assert_eq!(nices, [10], "one compress-0 thread at nice 10");
    // Hits: identity until the hit body's form is made on those threads, then brotli.
    eventually("a hit to be answered in brotli", || async {
        let (_, _, headers, _) = get_with(&url, &[("Accept-Encoding", "br")]).await;
        (header(&headers, "content-encoding").as_deref() == Some("br")).then_some(())
    })
    .await;
    for _ in 0..20 {
        let (_, _, headers, _) = get_with(&url, &[("Accept-Encoding", "br")]).await;
        assert_eq!(header(&headers, "content-encoding").as_deref(), Some("br"));
    }
    assert_eq!(
        s.metric("cache_compressions_total{coding=\"br\"").await,
        2.0,
        "and one for every later hit"
    );
}
