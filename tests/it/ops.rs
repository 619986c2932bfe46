//! Operations: health, probes, graceful shutdown, structured logs, the healthcheck subcommand.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Origin, Service, client, free_port, service_command};

#[tokio::test]
async fn health_and_probes_answer_json() {
    let s = Service::start(&[]).await;
    let c = client();
    let health = s.json("/health").await;
    assert_eq!(
        health,
        json!({"status": "ok", "tiers": {"memory": "ok", "disk": "disabled", "redis": "disabled"}, "origin": {"kind": "simulated", "circuit": "closed"}})
    );
    assert_eq!(c.get(s.url("/livez")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(s.url("/readyz")).send().await.unwrap().status(), 200);
    let r = c.get(s.url("/metrics")).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4");
}

#[tokio::test]
async fn sigterm_fails_readyz_then_drains_the_request_in_flight_and_exits_0() {
    // Generous windows: the test must see /readyz fail during the delay, on a loaded machine.
    let origin = Origin::start(&[("STUB_LATENCY_MS", "4000")]).await;
    let template = origin.template();
    let mut s = Service::start(&[
        ("ORIGIN_URL", &template),
        ("ORIGIN_TIMEOUT_MS", "10000"),
        ("SHUTDOWN_DELAY_SECS", "3"),
    ])
    .await;
    let c = client();
    let slow = {
        let (c, url) = (c.clone(), s.item_url("slow"));
        tokio::spawn(async move { c.get(url).send().await.unwrap() })
    };
    origin.wait_served(1).await;
    s.terminate();
    s.wait_status("/readyz", 503).await;
    let r = slow.await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["source"], "origin");
    let status = s.wait_exit().await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn json_logs_are_one_object_per_line() {
    let port = free_port();
    let mut child = service_command(&[("LOG_FORMAT", "json"), ("RUST_LOG", "info")])
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    // The first line is the simulated origin's warning (no ORIGIN_URL here).
    assert_eq!(v["level"], "WARN");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("ORIGIN_URL is not set"),
        "{v}"
    );
}

#[tokio::test]
async fn the_healthcheck_subcommand_reports_the_local_service() {
    let s = Service::start(&[]).await;
    let run = |addr: String| {
        service_command(&[("LISTEN_ADDR", &addr)])
            .arg("healthcheck")
            .status()
            .unwrap()
    };
    assert!(run(format!("0.0.0.0:{}", s.port)).success());
    assert!(!run(format!("127.0.0.1:{}", free_port())).success());
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test]
async fn every_metric_the_service_exposes_is_in_the_readme() {
    let s = Service::start(&[("ORIGIN_LATENCY_MS", "1")]).await;
    // Histograms appear with their first observation.
    assert_eq!(s.get("k").await.0, 200);
    let text = s.metrics_text().await;
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|name| *name != "target_info")
        .collect();
    assert!(families.len() >= 15, "{families:?}");
    for name in families {
        assert!(
            readme.contains(&format!("`{name}`")),
            "README.md's metrics table lacks `{name}`"
        );
    }
}
