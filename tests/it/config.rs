//! Start-up configuration, through the real binary.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::harness::{Service, client, free_port, service_command};

/// Runs the binary with `env` and returns (exit code, stderr) once it exits.
fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = service_command(env);
    if !env.iter().any(|(k, _)| *k == "LISTEN_ADDR") {
        cmd.env("LISTEN_ADDR", &listen);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return (status.code(), String::from_utf8_lossy(&out.stderr).into_owned());
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("the service did not stop on a bad setting: {env:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_values_stop_start_up_with_one_line_naming_variable_value_and_expectation() {
    let cases: &[(&str, &str, &str)] = &[
        ("CACHE_TTL_SECS", "abc", "whole number of seconds"),
        ("LISTEN_ADDR", "nope", "address and port"),
        ("REDIS_URL", "http://x", "redis://"),
        ("ORIGIN_URL", "http://origin/items", "{key}"),
        ("MEMORY_CACHE_MAX_BYTES", "0", "at least 1"),
        ("MEMORY_CACHE_ENABLED", "maybe", "true or false"),
        ("RUST_LOG", "cache_layer=notalevel", "tracing filter"),
        ("REDIS_TLS_CA_FILE", "/nonexistent/ca.pem", "readable PEM file"),
        ("FLEET_LOCK_TTL_MS", "100", "at least ORIGIN_TIMEOUT_MS"),
        ("ORIGIN_BREAKER_WINDOW", "65", "64"),
        ("ORIGIN_BREAKER_WINDOW_SECS", "0", "at least 1"),
        ("ORIGIN_BREAKER_FAILURE_RATE", "101", "100"),
        ("PROXY_ROUTES", "/api=ftp://x", "PATH_PREFIX=ORIGIN_BASE_URL"),
        (
            "ADMIN_LISTEN_ADDR",
            "127.0.0.1:5000",
            "another port than LISTEN_ADDR",
        ),
        ("PROXY_ROUTES", "api=http://x", "must start with /"),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "carrier-pigeon",
            "grpc or http/protobuf",
        ),
    ];
    for (var, value, expected) in cases {
        let mut env = vec![(*var, *value)];
        if *var == "REDIS_TLS_CA_FILE" {
            env.push(("REDIS_URL", "rediss://127.0.0.1:1"));
        }
        if *var == "ADMIN_LISTEN_ADDR" {
            env.push(("LISTEN_ADDR", "127.0.0.1:5000"));
        }
        if *var == "FLEET_LOCK_TTL_MS" {
            env.push(("REDIS_URL", "redis://127.0.0.1:1"));
        }
        if var.starts_with("OTEL") {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"));
        }
        let (code, stderr) = run_to_exit(&env);
        assert!(code.is_some_and(|c| c != 0), "{var}={value}: exit {code:?}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{var}={value}: one line expected, got {stderr:?}");
        assert!(
            lines[0].contains(var) && lines[0].contains(value) && lines[0].contains(expected),
            "{}",
            lines[0]
        );
    }
}

#[tokio::test]
async fn empty_variables_count_as_unset() {
    let s = Service::start(&[
        ("CACHE_TTL_SECS", ""),
        ("REDIS_URL", ""),
        ("ORIGIN_URL", ""),
        ("ORIGIN_LATENCY_MS", "1"),
    ])
    .await;
    let r = client().get(s.item_url("foo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let status = r.headers()["cache-status"].to_str().unwrap().to_owned();
    assert_eq!(status, "cache-layer; fwd=miss; stored");
    let r = client().get(s.item_url("foo")).send().await.unwrap();
    // The default TTL of 60 s applies, less at most 10 % jitter.
    let hit = r.headers()["cache-status"].to_str().unwrap();
    let ttl: u64 = hit
        .strip_prefix("cache-layer; hit; ttl=")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((53..=59).contains(&ttl), "{hit}");
}

/// Runs the binary with `args` and returns (exit code, stdout, stderr).
fn run_with_args(args: &[&str]) -> (Option<i32>, String, String) {
    let out = service_command(&[("LISTEN_ADDR", &format!("127.0.0.1:{}", free_port()))])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_binary_answers_its_own_arguments_without_serving() {
    let (code, out, _) = run_with_args(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("read-through cache") && out.contains("CACHE_TTL_SECS") && out.contains("ORIGIN_URL"),
        "{out}"
    );
    let (code, out, _) = run_with_args(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (Some(0), concat!("cache-layer ", env!("CARGO_PKG_VERSION")))
    );
    let (code, _, err) = run_with_args(&["--port", "80"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown argument"), "{err}");
}

#[test]
fn strict_mode_refuses_a_misspelt_name_and_names_the_setting_meant() {
    let (code, stderr) = run_to_exit(&[("CONFIG_STRICT", "true"), ("ORGIN_URL", "http://o/{key}")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("`ORGIN_URL` is not a setting; did you mean `ORIGIN_URL`?"),
        "{stderr}"
    );
}

#[tokio::test]
async fn without_strict_mode_a_misspelt_name_and_the_simulated_origin_are_warned_about() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = service_command(&[("LISTEN_ADDR", &listen), ("CACHE_TTL_SEC", "5")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let s = Service {
        child: std::process::Command::new("true").spawn().unwrap(),
        base: format!("http://{listen}"),
        port,
    };
    s.wait_status("/livez", 200).await;
    let health = s.json("/health").await;
    assert_eq!(health["origin"]["kind"], "simulated");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("`CACHE_TTL_SEC` is not a setting; did you mean `CACHE_TTL_SECS`?"),
        "{log}"
    );
    assert!(log.contains("ORIGIN_URL is not set"), "{log}");
}
