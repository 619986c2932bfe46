//! Metrics through a real Prometheus, traces and metrics through a real OTLP receiver.

use std::process::{Child, Stdio};

use serde_json::Value;

use crate::harness::{Origin, Service, client, eventually, free_port, tool_command};
use crate::otlp::Receiver;

/// A real Prometheus scraping `target` every second.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cache-layer\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = tool_command("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus must be installed (scripts/test.sh installs it)");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The result vector of an instant query (empty when it has no data yet).
    async fn query(&self, promql: &str) -> Option<Vec<Value>> {
        let r = client()
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", promql)])
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        assert_eq!(v["status"], "success", "{promql}: {v}");
        v["data"]["result"].as_array().cloned()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_memory_tier_reports_its_window_share_and_moves_it_where_recency_pays() {
    // 512 KiB hold about 950 entries; the policy's small simulations see about one key in seven,
    // so an epoch (after which the share may change) is about ten thousand reads.
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "0"), ("MEMORY_CACHE_MAX_BYTES", "524288")]).await;
    assert_eq!(s.metric("memory_cache_window_ratio").await, 0.25);
    assert_eq!(s.metric("memory_cache_window_epoch_progress").await, 0.0);
    // Every key is read twice, 600 reads apart, and never again: only recency pays, and a window
    // of a quarter (about 240 entries) is too small to keep the 300 keys read in between.
    let reads: Vec<String> = (0..40_000u64)
        .map(|t| {
            format!(
                "r{}",
                if t % 2 == 0 {
                    t / 2
                } else {
                    (t / 2).saturating_sub(300)
                }
            )
        })
        .collect();
    // 500 at a time: a key's two reads are never in one batch (a batch reads a key once).
    // The epoch's progress climbs with the reads and starts again from 0 when an epoch ends.
    let (mut progress, mut rises, mut restarts) = (0.0, 0, 0);
    for chunk in reads.chunks(500) {
        let (status, body) = s.batch(chunk).await;
        assert_eq!(status, 200, "{body}");
        let now = s.metric("memory_cache_window_epoch_progress").await;
        assert!((0.0..1.0).contains(&now), "epoch progress {now}");
        if now > progress {
            rises += 1;
        } else if now < progress {
            restarts += 1;
        }
        progress = now;
    }
    let share = s.metric("memory_cache_window_ratio").await;
    assert!(share >= 0.5, "window share {share} after a recency-only workload");
    assert!(
        rises > 20 && restarts >= 1,
        "epoch progress rose {rises} times and restarted {restarts} times over 80 batches"
    );
}

#[tokio::test]
async fn prometheus_scrapes_exact_counts_and_the_seed_dashboard_queries_return_data() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "5")]).await;
    let c = client();
    // 3 misses and 7 hits.
    for key in ["a", "b", "c"] {
        c.get(s.item_url(key)).send().await.unwrap();
    }
    for i in 0..7 {
        c.get(s.item_url(["a", "b", "c"][i % 3])).send().await.unwrap();
    }
    let prom = Prometheus::start(&format!("127.0.0.1:{}", s.port)).await;
    let value = |q: &'static str| {
        let prom = &prom;
        async move {
            let result = prom.query(q).await?;
            result.first()?["value"][1].as_str()?.parse::<f64>().ok()
        }
    };
    let hits = eventually("Prometheus to scrape the service", || {
        value("sum(cache_hits_total)")
    })
    .await;
    assert_eq!(hits, 7.0);
    assert_eq!(value("sum(cache_misses_total)").await, Some(3.0));
    assert_eq!(value("sum(cache_hits_total{tier=\"memory\"})").await, Some(7.0));
    assert_eq!(value("sum(request_latency_seconds_count)").await, Some(10.0));
    // The seed dashboard's three queries (rate() needs two scrapes).
    for q in ["cache_hits_total", "cache_misses_total"] {
        assert!(!prom.query(q).await.unwrap().is_empty(), "{q}");
    }
    let p95 = "histogram_quantile(0.95, sum(rate(request_latency_seconds_bucket[5m])) by (le))";
    eventually("the seed's latency panel query to return data", || async {
        // Traffic between scrapes gives rate() something to see.
        c.get(s.item_url("a")).send().await.ok()?;
        let result = prom.query(p95).await?;
        let v = result.first()?["value"][1].as_str()?.to_owned();
        (v != "NaN").then_some(())
    })
    .await;
}

fn attr<'a>(span: &'a opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<&'a str> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            V::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
}

/// `GET url` in the trace `trace_id` (a client span `00f067aa0ba902b7`), answered `200`.
async fn traced_get(url: &str, trace_id: &str) {
    let r = client()
        .get(url)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

async fn traces_reach_the_receiver(protocol: &str) {
    let receiver = Receiver::default();
    let endpoint = if protocol == "grpc" {
        receiver.start_grpc().await
    } else {
        receiver.start_http().await
    };
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            ("OTEL_SERVICE_NAME", "cache-layer-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ])
        .await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    traced_get(&s.item_url("traced"), trace_id).await;
    // The origin received a traceparent in the same trace.
    let stats = origin.stats().await;
    let sent = stats["requests"][0]["traceparent"]
        .as_str()
        .expect("the origin got a traceparent")
        .to_owned();
    assert_eq!(&sent[3..35], trace_id);

    let spans = eventually("the spans to arrive", || {
        let receiver = receiver.clone();
        async move {
            let spans = receiver.spans();
            let names: Vec<String> = spans.iter().map(|(_, s)| s.name.clone()).collect();
            let wanted = ["GET /items/{key}", "cache.lookup", "origin.fetch"];
            wanted
                .iter()
                .all(|w| names.iter().any(|n| n == w))
                .then_some(spans)
        }
    })
    .await;
    let find = |name: &str| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap()
            .clone()
    };
    let (server, lookup, fetch) = (
        find("GET /items/{key}"),
        find("cache.lookup"),
        find("origin.fetch"),
    );
    assert!(
        spans
            .iter()
            .all(|(service, _)| service == "cache-layer-under-test")
    );
    assert_eq!(hex(&server.trace_id), trace_id);
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.kind, 2, "server span");
    assert_eq!(lookup.parent_span_id, server.span_id);
    assert_eq!(fetch.parent_span_id, server.span_id);
    assert_eq!(fetch.trace_id, server.trace_id);
    assert_eq!(
        &sent[36..52],
        hex(&fetch.span_id),
        "the origin's traceparent names the fetch span"
    );
    assert_eq!(attr(&server, "http.route"), Some("/items/{key}"));
    assert_eq!(attr(&server, "cache.outcome"), Some("miss"));
    assert_eq!(attr(&lookup, "cache.tier"), Some("memory"));
    assert_eq!(attr(&fetch, "origin.outcome"), Some("ok"));

    receiver.wait_metric("cache_misses").await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn spans_and_metrics_are_pushed_over_otlp_grpc() {
    traces_reach_the_receiver("grpc").await;
}

#[tokio::test]
async fn spans_and_metrics_are_pushed_over_otlp_http_protobuf() {
    traces_reach_the_receiver("http/protobuf").await;
}

#[tokio::test]
async fn otel_traces_exporter_none_switches_traces_off_and_keeps_metrics() {
    let receiver = Receiver::default();
    let endpoint = receiver.start_grpc().await;
    let s = Service::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_EXPORTER", "none"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        ("ORIGIN_LATENCY_MS", "1"),
    ])
    .await;
    client().get(s.item_url("k")).send().await.unwrap();
    receiver.wait_metric("cache_misses").await;
    // Metrics arrived after the request; batched spans would have gone out by now too.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        receiver.spans().is_empty(),
        "no span may be pushed with OTEL_TRACES_EXPORTER=none"
    );
}

#[tokio::test]
async fn spans_still_queued_at_sigterm_are_flushed_before_exit() {
    let receiver = Receiver::default();
    let endpoint = receiver.start_grpc().await;
    let mut s = Service::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        // Nothing would leave before ten minutes but for the flush on shutdown.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "600000"),
        ("ORIGIN_LATENCY_MS", "1"),
    ])
    .await;
    assert_eq!(client().get(s.item_url("k")).send().await.unwrap().status(), 200);
    s.terminate();
    let status = s.wait_exit().await;
    assert_eq!(status.code(), Some(0));
    let names: Vec<String> = receiver.spans().into_iter().map(|(_, span)| span.name).collect();
    assert!(
        names.iter().any(|n| n == "GET /items/{key}"),
        "flushed spans: {names:?}"
    );
    assert!(
        receiver.metric_names().iter().any(|n| n == "cache_hits"),
        "metrics are flushed too"
    );
}

/// An OTLP endpoint that accepts connections and never answers: every export hangs until its
/// timeout. Abort the task to close it.
async fn silent_collector() -> (String, tokio::task::JoinHandle<()>) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    (endpoint, held)
}

#[tokio::test]
async fn a_collector_that_never_answers_cannot_hold_up_the_exit() {
    let (endpoint, held) = silent_collector().await;
    let port = crate::harness::free_port();
    let mut child = crate::harness::service_command(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("ORIGIN_LATENCY_MS", "1"),
        ("SHUTDOWN_DRAIN_SECS", "1"),
    ])
    .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let item = format!("http://127.0.0.1:{port}/items/k");
    crate::harness::eventually("the service to answer", || async {
        client()
            .get(&item)
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
            .map(drop)
    })
    .await;
    crate::harness::signal(child.id(), "TERM");
    // Spans and metrics both wait on the silent collector (the metrics exporter's own timeout
    // is 10 s); the exit gives up on them after FLUSH_BUDGET, says so, and still exits 0.
    let (status, logs) = tokio::task::spawn_blocking(move || {
        let status = child.wait().unwrap();
        let mut logs = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut logs).unwrap();
        (status, logs)
    })
    .await
    .unwrap();
    held.abort();
    assert_eq!(status.code(), Some(0), "{logs}");
    assert!(
        logs.contains("telemetry flush abandoned") && logs.contains("budget_secs=5"),
        "{logs}"
    );
}

#[tokio::test]
async fn a_collector_that_never_answers_fills_the_span_queue_and_drops_are_counted() {
    let (endpoint, held) = silent_collector().await;
    let s = Service::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "4"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2"),
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_METRICS_EXPORTER", "none"),
        ("ORIGIN_LATENCY_MS", "1"),
    ])
    .await;
    let c = client();
    for i in 0..100 {
        assert_eq!(
            c.get(s.item_url(&format!("k{}", i % 5)))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    // Each request makes two or three spans; the queue holds four and the exporter is stuck.
    assert!(s.metric("otel_spans_dropped_total").await >= 100.0);
    held.abort();
}

#[tokio::test]
async fn an_unreachable_otlp_endpoint_never_fails_a_request() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let s = Service::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &dead),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ("ORIGIN_LATENCY_MS", "1"),
    ])
    .await;
    let c = client();
    for i in 0..200 {
        assert_eq!(
            c.get(s.item_url(&format!("k{}", i % 20)))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

fn int_attr(span: &opentelemetry_proto::tonic::trace::v1::Span, key: &str) -> Option<i64> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
            V::IntValue(i) => Some(*i),
            other => panic!("{key} is {other:?}, not an integer"),
        })
}

#[tokio::test]
async fn a_batch_is_one_server_span_with_one_lookup_per_tier_and_one_fetch_per_miss() {
    let receiver = Receiver::default();
    let endpoint = receiver.start_grpc().await;
    let redis = crate::harness::Redis::start().await;
    let origin = Origin::start(&[]).await;
    let [s] = crate::harness::services_on::<1>(
        &redis.url(),
        &[
            ("ORIGIN_URL", &origin.template()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await;
    assert_eq!(s.get("warm").await.0, 200);
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4737";
    let r = client()
        .post(s.url("/items:batch"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "keys": ["warm", "b1", "b2", "b3", "b1"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let in_trace = |spans: &[(String, opentelemetry_proto::tonic::trace::v1::Span)]| {
        spans
            .iter()
            .map(|(_, s)| s.clone())
            .filter(|s| hex(&s.trace_id) == trace_id)
            .collect::<Vec<_>>()
    };
    let spans = eventually("the batch's spans to arrive", || {
        let receiver = receiver.clone();
        async move {
            let spans = in_trace(&receiver.spans());
            let fetches = spans.iter().filter(|s| s.name == "origin.fetch").count();
            let server = spans.iter().any(|s| s.name == "POST /items:batch");
            (server && fetches == 3).then_some(spans)
        }
    })
    .await;
    let server = spans.iter().find(|s| s.name == "POST /items:batch").unwrap();
    assert_eq!(server.kind, 2, "server span");
    assert_eq!(int_attr(server, "batch.keys"), Some(5));
    assert_eq!(attr(server, "http.route"), Some("/items:batch"));
    let lookups: Vec<_> = spans.iter().filter(|s| s.name == "cache.lookup").collect();
    let tiers: Vec<_> = lookups.iter().map(|l| attr(l, "cache.tier").unwrap()).collect();
    assert_eq!(
        tiers,
        ["memory", "redis"],
        "one lookup per tier round trip, not per key"
    );
    assert_eq!(int_attr(lookups[0], "cache.keys"), Some(4));
    assert_eq!(int_attr(lookups[1], "cache.keys"), Some(3));
    for child in spans.iter().filter(|s| s.name != "POST /items:batch") {
        assert_eq!(child.parent_span_id, server.span_id, "{}", child.name);
    }
}

#[tokio::test]
async fn proxied_requests_are_traced_by_route() {
    let receiver = Receiver::default();
    let endpoint = receiver.start_grpc().await;
    let origin = Origin::start(&[]).await;
    let routes = format!("/api={}/items", origin.base);
    let s = crate::harness::Service::start(&[
        ("PROXY_ROUTES", routes.as_str()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let trace_id = "5bf92f3577b34da6a3ce929d0e0e4736";
    traced_get(&s.url("/api/traced"), trace_id).await;
    let sent = origin.stats().await["requests"][0]["headers"]["traceparent"]
        .as_str()
        .expect("the origin got a traceparent")
        .to_owned();
    assert_eq!(&sent[3..35], trace_id, "one trace");
    assert_ne!(
        &sent[36..52],
        "00f067aa0ba902b7",
        "the client's span is not the origin's parent"
    );
    let spans = eventually("the proxy's spans", || {
        let receiver = receiver.clone();
        async move {
            let spans = receiver.spans();
            let names: Vec<String> = spans.iter().map(|(_, s)| s.name.clone()).collect();
            (names.iter().any(|n| n == "GET /api") && names.iter().any(|n| n == "origin.fetch"))
                .then_some(spans)
        }
    })
    .await;
    let find = |name: &str| {
        spans
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap()
            .clone()
    };
    let (server, fetch) = (find("GET /api"), find("origin.fetch"));
    assert_eq!(hex(&server.trace_id), trace_id);
    assert_eq!(hex(&server.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(server.kind, 2, "server span");
    assert_eq!(attr(&server, "http.route"), Some("/api"));
    assert_eq!(attr(&server, "cache.outcome"), Some("miss"));
    assert_eq!(fetch.parent_span_id, server.span_id);
    assert_eq!(fetch.kind, 3, "client span");
    assert_eq!(attr(&fetch, "http.route"), Some("/api"));
    assert_eq!(&sent[36..52], hex(&fetch.span_id));
}
