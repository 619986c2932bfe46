//! The `cache-layer` binary: `cache-layer` serves; `cache-layer healthcheck` probes a running one;
//! `--help` and `--version` answer without serving; any other argument is refused (exit 2), so a
//! mistyped flag never starts a server by accident.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use cache_layer::{Application, Config, StartError, shutdown_signal, telemetry};

/// The fewest open files the process needs to start at all (the runtime, its signal handling,
/// the listeners, the log): below it start-up stops with a message naming the limit.
const MIN_OPEN_FILES_TO_START: u64 = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => {}
        ["healthcheck"] => return healthcheck(),
        ["--help" | "-h" | "help"] => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        ["--version" | "-V"] => {
            println!("cache-layer {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        other => {
            eprintln!(
                "cache-layer: unknown argument {:?}; it is configured by environment variables only (cache-layer --help lists them)",
                other.join(" ")
            );
            return ExitCode::from(2);
        }
    }
    cache_layer::tls::install_crypto_provider();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // A RUST_LOG that silences warnings would also silence the warning about itself.
    for notice in config.notices.iter().filter(|n| n.starts_with("`RUST_LOG=")) {
        eprintln!("cache-layer: {notice}");
    }
    // Below this the runtime itself cannot start (its I/O driver and signal pipe); the full
    // check, with what the connections need, is `Application::build`'s.
    if let Some(limit) = cache_layer::http::server::open_file_limit()
        && limit < MIN_OPEN_FILES_TO_START
    {
        eprintln!(
            "the open-file limit (RLIMIT_NOFILE, {limit} here) is too low to start; raise it (`ulimit -n`, the container's `nofile`) to a few hundred at least"
        );
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) if cache_layer::descriptors::is_exhaustion(&e) => {
            eprintln!(
                "cannot start the async runtime: no file descriptor left under the open-file limit (RLIMIT_NOFILE); raise it (`ulimit -n`, the container's `nofile`)"
            );
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = match telemetry::init(config.log_json) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        let result = match Application::build(config, &telemetry).await {
            Ok(app) => app
                .run_until_stopped(shutdown_signal())
                .await
                .map_err(|e| (e.to_string(), ExitCode::FAILURE)),
            // A setting the process cannot have (a directory another one holds): exit 2.
            Err(e @ StartError::Setting(_)) => Err((e.to_string(), ExitCode::from(2))),
            Err(e) => Err((e.to_string(), ExitCode::FAILURE)),
        };
        let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err((e, code)) => {
                eprintln!("{e}");
                code
            }
        }
    })
}

/// What `--help` prints: what the service is, how it is run, and every setting with its default.
fn help() -> String {
    let mut out = format!(
        "cache-layer {}: a read-through cache service in front of a slow origin (memory, disk and Redis tiers).\n\n\
         Usage:\n  cache-layer                 serve (settings from environment variables only)\n  \
         cache-layer healthcheck     probe the local service's /livez (exit 0 when alive)\n  \
         cache-layer --help | --version\n\n\
         Settings (environment variables) and their defaults; README.md says what each does:\n",
        env!("CARGO_PKG_VERSION")
    );
    let width = cache_layer::config::SETTINGS
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0);
    for (name, default) in cache_layer::config::SETTINGS {
        out.push_str(&format!("  {name:width$}  {default}\n"));
    }
    out
}

/// Asks the local service's `/livez` (for container health checks: the image has no curl).
fn healthcheck() -> ExitCode {
    // Exit 1, not 2, on a bad LISTEN_ADDR: container runtimes reserve 2 for health checks.
    let addr = match Config::listen_addr_from_env() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let probe = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, addr.port()), Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /livez HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(&head[9..12] == b"200")
    };
    match probe() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}
