//! The load-test binary (`cache-layer-loadtest`) against the real service and origin stub.

use serde_json::Value;

use crate::harness::{Origin, Service, eventually, signal};

/// Runs the load test with `args`; returns its exit code, stdout and stderr.
async fn loadtest(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cache-layer-loadtest"))
        .env_clear()
        .args(args)
        .arg("--no-progress")
        .output()
        .await
        .expect("run cache-layer-loadtest");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs it with `--json` and returns the report.
async fn report(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = loadtest(&all).await;
    assert_eq!(code, 0, "{err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test]
async fn by_default_it_is_the_seeds_load_test() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "5")]).await;
    let (code, text, err) = loadtest(&["--url", &s.base]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(text.lines().filter(|l| l.starts_with('[')).count(), 50);
    assert!(text.contains("[1/50] key=foo  | ORIGIN |"), "{text}");
    assert!(text.contains("[2/50] key=foo  | CACHE  |"), "{text}");
    assert!(text.contains("[36/50] key=k5   | ORIGIN |"), "{text}");
    for line in [
        "=== Summary ===",
        "Total requests:   50",
        "Distinct keys:    11",
        "Cache hits:       39",
        "Cache misses:     11",
        "Errors:           0",
        "Cache-hit rate:   78.00%",
        "Hits by tier:     memory 39 (78.00%)",
        "Errors by kind:   none",
        "Origin fetches:   11 (from the target's /metrics); saved 39 of 50 answers (78.00%)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    for prefix in ["Avg latency:", "Median latency:", "Latency (ms):     p50 "] {
        assert!(text.contains(prefix), "missing {prefix:?} in\n{text}");
    }
    // A second run finds everything cached; with --suffix it starts cold again.
    let warm = report(&["--url", &s.base]).await;
    assert_eq!(
        (warm["hits"].as_u64(), warm["origin_fetches"].as_u64()),
        (Some(50), Some(0))
    );
    let cold = report(&["--url", &s.base, "--suffix"]).await;
    assert_eq!(
        (cold["hits"].as_u64(), cold["misses"].as_u64()),
        (Some(39), Some(11))
    );
    let again = report(&["--url", &s.base, "--suffix", "fixed"]).await;
    assert_eq!(again["misses"], 11);
    let again = report(&["--url", &s.base, "--suffix", "fixed"]).await;
    assert_eq!(again["misses"], 0);
    assert_eq!(s.metric("cache_misses_total").await, 33.0);
}

#[tokio::test]
async fn a_zipf_run_counts_every_request_and_every_origin_fetch() {
    let origin = Origin::start(&[]).await;
    let s = origin.service(&[]).await;
    let r = report(&[
        "--url",
        &s.base,
        "--pattern",
        "zipf",
        "--key-space",
        "300",
        "--requests",
        "3000",
        "--concurrency",
        "8",
    ])
    .await;
    let n = |f: &str| r[f].as_u64().unwrap();
    assert_eq!(n("requests"), 3000);
    assert_eq!(n("errors"), 0);
    assert_eq!(n("hits") + n("misses"), 3000);
    assert_eq!(r["hits_by_tier"]["memory"], r["hits"]);
    // Every key was fetched once, and only once: the memory bound holds all 300.
    let fetched = origin.served().await;
    assert_eq!(n("origin_fetches"), fetched);
    assert_eq!(n("distinct_keys"), fetched);
    assert_eq!(r["origin_fetches_from"], "metrics");
    assert_eq!(n("origin_fetches_saved"), 3000 - fetched);
    // Zipf: a few keys take most requests, so most of the 300 are asked for, but hits dominate.
    assert!(n("hits") > 2 * n("misses"), "{r}");
    let l = &r["latency_ms"];
    for (a, b) in [("p50", "p90"), ("p90", "p99"), ("p99", "p999"), ("p999", "max")] {
        assert!(l[a].as_f64() <= l[b].as_f64(), "{a} > {b}: {l}");
    }
}

#[tokio::test]
async fn an_open_loop_run_sends_on_schedule_and_counts_queueing_in_latency() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "300")]).await;
    // 20 req/s for 2 s on one connection, every request a miss of 300 ms: the schedule wants a
    // request every 50 ms, the connection manages one every 300 ms. The duration is wall-clock,
    // so only about 6 of the 40 go out; the last, due at about 0.3 s and sent at about 1.8 s,
    // counts its latency from when it was due.
    let r = report(&[
        "--url",
        &s.base,
        "--pattern",
        "uniform",
        "--key-space",
        "1000000000",
        "--rate",
        "20",
        "--duration",
        "2s",
    ])
    .await;
    let sent = r["requests"].as_u64().unwrap();
    assert!((2..40).contains(&sent), "{r}");
    assert_eq!(r["target_rps"], 20.0);
    let max = r["latency_ms"]["max"].as_f64().unwrap();
    assert!(max > 1000.0, "queueing was hidden: max {max} ms\n{r}");
    // Closed loop, the same traffic shows only the service time.
    let closed = report(&[
        "--url",
        &s.base,
        "--pattern",
        "uniform",
        "--key-space",
        "1000000000",
        "--requests",
        "5",
    ])
    .await;
    let max = closed["latency_ms"]["max"].as_f64().unwrap();
    assert!(max < 4000.0, "{closed}");
}

#[tokio::test]
async fn a_warm_up_is_not_counted() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "5")]).await;
    let r = report(&[
        "--url",
        &s.base,
        "--pattern",
        "single",
        "--key",
        "hot",
        "--warmup",
        "300ms",
        "--requests",
        "10",
    ])
    .await;
    assert!(r["warmup_requests"].as_u64().unwrap() > 0, "{r}");
    assert_eq!((r["requests"].as_u64(), r["hits"].as_u64()), (Some(10), Some(10)));
    assert_eq!(r["origin_fetches"], 0);
    assert_eq!(r["origin_fetches_saved"], 10);
}

#[tokio::test]
async fn errors_are_counted_by_kind_and_a_run_of_only_errors_fails() {
    let origin = Origin::start(&[("STUB_MODE", "status:500")]).await;
    let s = origin.service(&[]).await;
    let (code, out, _) = loadtest(&["--url", &s.base, "--quiet"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Errors:           50"), "{out}");
    // The seed's 11 keys fail again and again: each counts one breaker failure per window, 11
    // of the 20 that could open the circuit, so every request reaches the origin.
    assert!(out.contains("Errors by kind:   502 origin_error × 50"), "{out}");
    assert!(
        out.contains("Origin fetches:   50 (from the target's /metrics); saved 0 of 0 answers"),
        "{out}"
    );

    let closed = format!("http://127.0.0.1:{}", crate::harness::free_port());
    let r = {
        let (code, out, _) = loadtest(&["--url", &closed, "--requests", "3", "--json"]).await;
        assert_eq!(code, 1);
        serde_json::from_str::<Value>(&out).unwrap()
    };
    assert_eq!(r["errors_by_kind"]["connect"], 3);
    assert_eq!(r["origin_fetches_from"], "answers");
}

#[tokio::test]
async fn it_only_sends_requests_to_the_url_it_is_given() {
    // Aimed at the stub itself, which records every request target it receives.
    let origin = Origin::start(&[]).await;
    let r = report(&[
        "--url",
        &origin.base,
        "--pattern",
        "zipf",
        "--key-space",
        "50",
        "--requests",
        "200",
        "--concurrency",
        "4",
        "--suffix",
        "s1",
    ])
    .await;
    assert_eq!(r["requests"], 200);
    // The stub's body has no `source` and it sends no cache header: unlabelled, not hits.
    assert_eq!(r["unlabelled"], 200);
    let stats = origin.stats().await;
    let targets: Vec<&str> = stats["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["target"].as_str().unwrap())
        .collect();
    // 200 items, and one look at /metrics for an origin counter (the stub has none).
    assert_eq!(targets.len(), 201);
    assert_eq!(targets[0], "/metrics");
    assert!(
        targets[1..]
            .iter()
            .all(|t| t.starts_with("/items/key-") && t.ends_with("-s1")),
        "{targets:?}"
    );
}

#[tokio::test]
async fn ctrl_c_ends_the_run_and_still_prints_the_summary() {
    let s = Service::start(&[]).await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cache-layer-loadtest"))
        .env_clear()
        .args([
            "--url",
            &s.base,
            "--pattern",
            "single",
            "--duration",
            "120s",
            "-c",
            "2",
        ])
        .arg("--no-progress")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the load test's traffic to arrive", || async {
        (s.metric("cache_hits_total").await > 100.0).then_some(())
    })
    .await;
    signal(child.id().unwrap(), "INT");
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the load test to stop well before its 120 s")
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(130), "{text}{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(text.contains("=== Summary ==="), "{text}");
    assert!(text.contains("Interrupted:      by Ctrl-C"), "{text}");
    assert!(text.contains("Errors:           0"), "{text}");
}

#[tokio::test]
async fn bad_options_stop_it_with_a_message_naming_the_option() {
    for (args, needle) in [
        (
            &["--url", "https://example.com"][..],
            "--url \"https://example.com\": only http:// is supported",
        ),
        (&["--concurrency", "0"][..], "--concurrency 0"),
        (&["--duration", "5 parsecs"][..], "--duration"),
    ] {
        let (code, out, err) = loadtest(args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[tokio::test]
async fn the_duration_is_wall_clock_even_when_answers_are_slow() {
    // An origin that never answers: every request would take the service's 60 s.
    let origin = Origin::start(&[("STUB_MODE", "hang")]).await;
    let s = origin
        .service(&[
            ("REQUEST_TIMEOUT_SECS", "60"),
            ("ORIGIN_TIMEOUT_MS", "60000"),
            ("FLEET_LOCK_TTL_MS", "60000"),
        ])
        .await;
    let started = std::time::Instant::now();
    let (_, out, err) = loadtest(&[
        "--url",
        &s.base,
        "--pattern",
        "uniform",
        "--key-space",
        "1000",
        "--warmup",
        "1s",
        "--duration",
        "1s",
        "--timeout",
        "60s",
        "--json",
    ])
    .await;
    // Two seconds of phases, not the minute an answer would take (a generous bound).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{out}{err}"
    );
}

#[tokio::test]
async fn a_json_batch_run_fills_hit_and_miss_latencies() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "1")]).await;
    let (code, out, _) = loadtest(&[
        "--url",
        &s.base,
        "--pattern",
        "cycle",
        "--key-space",
        "20",
        "--batch",
        "5",
        "--requests",
        "40",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert!(r["hit_latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["miss_latency_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
}
