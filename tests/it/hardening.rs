//! What an attacker or a bad day tried (issue 12): redirects, stalled and idle connections, the
//! connection cap, oversized Redis values, error bodies, purge bodies, refused Redis writes.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    Origin, Service, cache_status, client, entry_key, eventually, free_port, service_command, with_redis,
    with_redis_and_origin,
};

/// Reads until the server closes the connection (or it resets), returning what arrived.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(crate::harness::DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the connection was not closed within the deadline"),
        }
    }
}

async fn connect(s: &Service) -> TcpStream {
    TcpStream::connect(("127.0.0.1", s.port)).await.unwrap()
}

#[tokio::test]
async fn redirects_are_never_followed() {
    let elsewhere = Origin::start(&[]).await;
    let origin = Origin::start(&[]).await;
    let s = origin
        .service(&[
            ("ORIGIN_AUTHORIZATION", "Bearer origin-secret"),
            ("ORIGIN_BREAKER_MIN_REQUESTS", "100"),
        ])
        .await;
    let c = client();
    for code in [301, 302, 307, 308] {
        let target = format!("{}/secret", elsewhere.base);
        origin.set(&format!("redirect:{code}:{target}"), 0).await;
        let key = format!("r{code}");
        let r = c.get(s.item_url(&key)).send().await.unwrap();
        assert_eq!(r.status(), 502, "{code}");
        assert_eq!(cache_status(&r), "");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "origin_error");
        let message = body["message"].as_str().unwrap();
        assert_eq!(
            message,
            format!("the origin answered {code}; redirects are not followed")
        );
        // Not cached: asking again goes to the origin again.
        assert_eq!(c.get(s.item_url(&key)).send().await.unwrap().status(), 502);
    }
    // A redirect to itself (a loop) is one request, not eleven.
    origin
        .set(&format!("redirect:302:{}/items/loop", origin.base), 0)
        .await;
    assert_eq!(c.get(s.item_url("loop")).send().await.unwrap().status(), 502);
    assert_eq!(elsewhere.served().await, 0, "the redirect target was contacted");
    assert_eq!(origin.served().await, 9);
    assert_eq!(s.metric("origin_requests_total{outcome=\"error\"").await, 9.0);
}

#[tokio::test]
async fn error_bodies_never_name_the_origin() {
    // An origin address nobody listens on.
    let template = format!("http://127.0.0.1:{}/private/{{key}}", free_port());
    let s = Service::start(&[("ORIGIN_URL", &template)]).await;
    let r = client().get(s.item_url("k")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert_eq!(
        body,
        r#"{"error":"origin_error","message":"the origin could not be reached"}"#
    );
}

#[tokio::test]
async fn a_request_head_that_does_not_arrive_in_time_closes_the_connection() {
    let s = Service::start(&[("HTTP_HEADER_TIMEOUT_SECS", "1")]).await;
    // Nothing at all.
    let mut silent = connect(&s).await;
    // Half a head, one byte at a time (slowloris).
    let mut slow = connect(&s).await;
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickle = async {
        for b in b"X-Slow: 1" {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
        }
        read_until_closed(&mut slow).await
    };
    let (a, b) = tokio::join!(read_until_closed(&mut silent), trickle);
    assert_eq!(a, "", "no answer to a connection that sent nothing");
    assert_eq!(b, "", "no answer to a head that never completed");
    // The service still answers.
    s.wait_status("/livez", 200).await;
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            if out.len() >= end + 4 + length {
                return text;
            }
        }
        match tokio::time::timeout(crate::harness::DEADLINE, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => panic!("the connection closed mid-answer: {text:?}"),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("no answer within the deadline: {text:?}"),
        }
    }
}

#[tokio::test]
async fn a_kept_alive_connection_answering_cached_hits_outlives_the_header_timeout() {
    // Hits are answered without the router; the connection's head deadline must still be reset
    // by each answer, or a busy connection would be closed as a slow client.
    let s = Service::start(&[
        ("HTTP_HEADER_TIMEOUT_SECS", "1"),
        ("HTTP_KEEPALIVE_TIMEOUT_SECS", "2"),
        ("ORIGIN_LATENCY_MS", "0"),
    ])
    .await;
    let mut conn = connect(&s).await;
    for i in 0..8 {
        conn.write_all(b"GET /items/k HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_response(&mut conn).await;
        assert!(got.starts_with("HTTP/1.1 200"), "answer {i}: {got}");
        if i > 0 {
            assert!(
                got.contains("cache-status: cache-layer; hit;"),
                "answer {i}: {got}"
            );
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // And once it falls idle, it is closed like any other (no request is left in flight).
    assert_eq!(read_until_closed(&mut conn).await, "");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() {
    let s = Service::start(&[("HTTP_KEEPALIVE_TIMEOUT_SECS", "1")]).await;
    let mut conn = connect(&s).await;
    conn.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut conn).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.ends_with(r#"{"status":"alive"}"#),
        "one answer, then closed: {got}"
    );
}

#[tokio::test]
async fn at_the_connection_cap_the_oldest_idle_connection_makes_room() {
    let s = Service::start(&[("HTTP_MAX_CONNECTIONS", "20")]).await;
    let mut idle = idle_clients(s.port, 100).await;
    // A fresh client (the liveness probe) is answered while the flood stays connected.
    s.wait_status("/livez", 200).await;
    // The first of the flood were closed to make room.
    assert_closed(idle.remove(0)).await;
}

/// `n` kept-alive clients of the listener on `port` that asked once (`/livez`) and went quiet.
async fn idle_clients(port: u16, n: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        conn.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
        idle.push(conn);
    }
    idle
}

/// Waits until the server has closed `conn` (the end of its stream, or a reset).
async fn assert_closed(mut conn: TcpStream) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(crate::harness::DEADLINE, conn.read(&mut buf))
        .await
        .expect("the connection is closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn out_of_descriptors_below_the_cap_an_idle_connection_makes_room() {
    // The cap is not reached, but the process has no descriptor left (here its limit is
    // lowered under it while it runs; in production the origins' connections, Redis and files
    // share the limit): accept fails with EMFILE, and the oldest idle connection gives its up.
    let s = Service::start(&[]).await;
    let mut idle = idle_clients(s.port, 40).await;
    leave_no_descriptor(s.pid());
    // A new client is answered, and it was the oldest idle connection that made room.
    s.wait_status("/livez", 200).await;
    assert_closed(idle.remove(0)).await;
}

/// A connection to `s` that has had one answer (`/livez`), read whole: accepted, and kept alive.
async fn kept_alive(s: &Service) -> TcpStream {
    let mut conn = connect(s).await;
    conn.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut conn).await;
    conn
}

/// Asks `conn` for `/items/{key}`; the whole answer.
async fn ask(conn: &mut TcpStream, key: &str) -> String {
    conn.write_all(format!("GET /items/{key} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(conn).await
}

/// Lowers the running service's open-file soft limit to its lowest free descriptor number:
/// none left (a new descriptor takes the lowest free number, which must be under the limit), and
/// one of its open descriptors closed frees one under it.
fn leave_no_descriptor(pid: u32) {
    let open: std::collections::BTreeSet<libc::rlim_t> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !open.contains(n)).unwrap();
    set_open_file_limit(pid, lowest_free);
}

/// Sets the running service's open-file soft limit to `n` (the hard one is left: raising the
/// soft one back needs no privilege).
fn set_open_file_limit(pid: u32, n: libc::rlim_t) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit writes the old limit into `old` and reads `lim`; both live on this stack.
    let set = unsafe {
        let pid = pid as libc::pid_t;
        if libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) != 0 {
            -1
        } else {
            let lim = libc::rlimit {
                rlim_cur: n.min(old.rlim_max),
                rlim_max: old.rlim_max,
            };
            libc::prlimit(pid, libc::RLIMIT_NOFILE, &lim, std::ptr::null_mut())
        }
    };
    assert_eq!(set, 0, "{}", std::io::Error::last_os_error());
}

#[tokio::test]
async fn a_miss_without_a_descriptor_for_the_origin_answers_503_and_opens_no_circuit() {
    // Out of descriptors, the origin cannot even be tried: the service's trouble, not the
    // origin's. It answers 503 (retry in a second), and the circuit (which one failure would
    // open here) stays closed, so the origin is asked as soon as descriptors are back.
    // The origin by host name: out of descriptors, its lookup fails first, and says only
    // "name or service not known".
    let origin = Origin::start(&[("STUB_LATENCY_MS", "500")]).await;
    let template = origin.template().replace("127.0.0.1", "localhost");
    let s = Service::start(&[
        ("ORIGIN_URL", template.as_str()),
        ("ORIGIN_BREAKER_MIN_REQUESTS", "1"),
        ("ORIGIN_BREAKER_COOLDOWN_SECS", "600"),
    ])
    .await;
    // Every client connection busy, so none can be closed for a descriptor: one holds a
    // request that needs none (a body still to come, its head taken: `100 Continue` says so).
    // And one whose next request has begun to arrive: not closed for a descriptor either (its
    // request would be lost). Sent first, so that it has been read by the time the miss asks.
    let mut arriving = kept_alive(&s).await;
    arriving.write_all(b"GET /items/b HTTP/1.1\r\nHo").await.unwrap();
    let mut holder = connect(&s).await;
    holder
        .write_all(
            b"POST /items:batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Expect: 100-continue\r\nContent-Length: 100\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(crate::harness::DEADLINE, holder.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Accepted (a request answered on it) before no descriptor is left.
    let mut asking = kept_alive(&s).await;
    leave_no_descriptor(s.pid());
    let answer = ask(&mut asking, "a").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("origin_unavailable") && answer.contains("no file descriptor left"),
        "{answer}"
    );
    assert!(answer.to_ascii_lowercase().contains("retry-after: 1"), "{answer}");
    // Descriptors back: the circuit did not open (one failure would have opened it).
    set_open_file_limit(s.pid(), 4096);
    let (status, cache, _) = s.get("c").await;
    assert_eq!((status, cache.as_str()), (200, "cache-layer; fwd=miss; stored"));
    assert_eq!(origin.served().await, 1);
    // The request that was on its way is answered.
    arriving.write_all(b"st: x\r\n\r\n").await.unwrap();
    let answer = read_response(&mut arriving).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_miss_without_a_descriptor_for_the_origin_closes_an_idle_client_and_is_fetched() {
    // Out of descriptors while kept-alive clients sit idle: the miss's connect to the origin
    // gets the oldest idle client's descriptor, and the miss is fetched, not refused.
    let origin = Origin::start(&[]).await;
    let s = origin.service(&[]).await;
    let mut busy = connect(&s).await;
    let _idle = idle_clients(s.port, 3).await;
    leave_no_descriptor(s.pid());
    // (Which idle connection gave its descriptor is not asserted: the harness's own kept-alive
    // connection from start-up is the oldest.) Before, this was 503 origin_unavailable.
    let answer = ask(&mut busy, "a").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("fwd=miss; stored"), "{answer}");
    assert_eq!(origin.served().await, 1);
    // The busy connection itself was not the one closed.
    assert!(ask(&mut busy, "a").await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_proxied_miss_without_a_descriptor_closes_an_idle_client_and_is_fetched() {
    // The same for the transparent proxy's connect to a route's origin (by host name: its
    // lookup needs a descriptor too).
    let origin = Origin::start(&[]).await;
    let route = format!("/api={}/items", origin.base.replace("127.0.0.1", "localhost"));
    let s = Service::start(&[("PROXY_ROUTES", route.as_str())]).await;
    let mut busy = connect(&s).await;
    let _idle = idle_clients(s.port, 3).await;
    leave_no_descriptor(s.pid());
    busy.write_all(b"GET /api/p HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut busy).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(origin.served().await, 1);
}

#[tokio::test]
async fn the_admin_listener_has_descriptors_of_its_own_under_the_open_file_limit() {
    // 300 - 64 - 64 (ORIGIN_MAX_CONCURRENCY) - 64 (the admin listener's own cap) = 108 for
    // HTTP_MAX_CONNECTIONS; both listeners flooded with idle connections, a new client of each
    // is still answered.
    let (port, admin) = (free_port(), free_port());
    let mut cmd = service_command(&[
        ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
        ("ADMIN_LISTEN_ADDR", &format!("127.0.0.1:{admin}")),
    ]);
    limit_open_files(&mut cmd, 300);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    // `/livez` is the admin listener's alone; the public one serves items.
    let up = |p: u16| async move {
        let path = if p == admin { "/livez" } else { "/items/k" };
        let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
        loop {
            if let Ok(r) = client().get(format!("http://127.0.0.1:{p}{path}")).send().await {
                return r.status().as_u16();
            }
            assert!(std::time::Instant::now() < deadline, "port {p} never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(up(port).await, 200);
    assert_eq!(up(admin).await, 200);
    let _idle = (idle_clients(port, 160).await, idle_clients(admin, 160).await);
    assert_eq!(up(port).await, 200);
    assert_eq!(up(admin).await, 200);
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `cmd`'s child under an open-file limit of `n` (soft and hard).
fn limit_open_files(cmd: &mut std::process::Command, n: libc::rlim_t) {
    // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn an_open_file_limit_too_low_to_serve_with_stops_start_up_and_says_why() {
    // 100 - 64 - 64 (ORIGIN_MAX_CONCURRENCY) leaves no descriptor for a connection.
    let mut cmd = service_command(&[("LISTEN_ADDR", &format!("127.0.0.1:{}", free_port()))]);
    limit_open_files(&mut cmd, 100);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the open-file limit (RLIMIT_NOFILE, 100 here) leaves room for 0 connection(s)")
            && stderr.contains("ORIGIN_MAX_CONCURRENCY=64"),
        "{stderr}"
    );
    // Too low for the runtime itself: the same exit and the limit named, not a panic.
    for n in [6, 8] {
        let mut cmd = service_command(&[("LISTEN_ADDR", &format!("127.0.0.1:{}", free_port()))]);
        limit_open_files(&mut cmd, n);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{n}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "the open-file limit (RLIMIT_NOFILE, {n} here) is too low to start"
            )),
            "{stderr}"
        );
    }
    // Lowering ORIGIN_MAX_CONCURRENCY, as the message says, lets it start: 100 - 64 - 8 = 28.
    let port = free_port();
    let mut cmd = service_command(&[
        ("LISTEN_ADDR", &format!("127.0.0.1:{port}")),
        ("ORIGIN_MAX_CONCURRENCY", "8"),
    ]);
    limit_open_files(&mut cmd, 100);
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + crate::harness::DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "exited");
        assert!(std::time::Instant::now() < deadline, "never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn the_connection_cap_is_lowered_to_fit_the_open_file_limit() {
    let port = free_port();
    let mut cmd = service_command(&[("LISTEN_ADDR", &format!("127.0.0.1:{port}"))]);
    limit_open_files(&mut cmd, 400);
    // Logs go to stdout.
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut stderr = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut seen = String::new();
        let mut buf = [0u8; 1024];
        while !seen.contains("HTTP_MAX_CONNECTIONS lowered") {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        seen
    });
    let seen = tokio::time::timeout(crate::harness::DEADLINE, line)
        .await
        .expect("a log line about the lowered cap")
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("HTTP_MAX_CONNECTIONS lowered"), "{seen}");
    assert!(
        seen.contains("lowered=272"),
        "400 - 64 - 64 (ORIGIN_MAX_CONCURRENCY): {seen}"
    );
}

#[tokio::test]
async fn the_descriptor_table_is_grown_for_every_connection_at_start_up() {
    // Growing it later makes the accept that crosses each power of two wait for an RCU grace
    // period (10-20 ms) on an async worker, and every hit on that worker with it.
    let s = Service::start(&[("HTTP_MAX_CONNECTIONS", "3000")]).await;
    let proc_field = |file: &str, name: &str| -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", s.pid())).unwrap();
        let line = text.lines().find(|l| l.starts_with(name)).unwrap().to_owned();
        line[name.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let soft_limit = proc_field("limits", "Max open files");
    let table = proc_field("status", "FDSize:");
    // 3000 connections and 128 descriptors for the rest (64 + ORIGIN_MAX_CONCURRENCY 64).
    let wanted = 3000u64.min(soft_limit.saturating_sub(128)) + 128;
    assert!(
        table >= wanted.min(soft_limit),
        "descriptor table of {table} for {wanted} descriptors (open-file limit {soft_limit})"
    );
    // Far more than the handful the service has open before its first connection.
    assert!(table >= 1024.min(soft_limit), "{table}");
}

#[tokio::test]
async fn sigterm_is_not_held_by_a_connection_without_a_complete_request() {
    let mut s = Service::start(&[("SHUTDOWN_DRAIN_SECS", "600")]).await;
    let mut half = connect(&s).await;
    half.write_all(b"GET /items/foo HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = connect(&s).await;
    idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let _ = idle.read(&mut buf).await.unwrap();
    s.terminate();
    // With a 600 s drain, only closing these connections at once lets it exit within the
    // harness's deadline.
    let status = s.wait_exit().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_purge_whose_body_cannot_be_read_is_refused_and_applies_nothing() {
    let s = Service::start(&[
        ("ADMIN_TOKEN", "0123456789abcdef"),
        ("ORIGIN_LATENCY_MS", "1"),
        ("HTTP_BODY_TIMEOUT_SECS", "1"),
    ])
    .await;
    assert_eq!(s.get("k").await.0, 200);
    // Broken chunking.
    let mut conn = connect(&s).await;
    let req = "DELETE /items/k HTTP/1.1\r\nHost: x\r\nAuthorization: bearer 0123456789abcdef\r\n\
               Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nnot a chunk\r\n";
    conn.write_all(req.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut conn).await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(got.contains(r#""error":"bad_request""#), "{got}");
    // A body that never finishes arriving.
    let mut conn = connect(&s).await;
    let req = "DELETE /items/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer 0123456789abcdef\r\n\
               Content-Length: 100\r\n\r\nonly part";
    conn.write_all(req.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut conn).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains(r#""error":"request_timeout""#), "{got}");
    // Neither purge was applied: still a memory hit.
    assert!(s.get("k").await.1.ends_with("detail=memory"));
    // The lower-case scheme is accepted (RFC 9110 §11.1) with a readable body.
    let r = client()
        .delete(s.item_url("k"))
        .header("authorization", "bearer 0123456789abcdef")
        .body("ignored")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(s.get("k").await.1, "cache-layer; fwd=miss; stored");
}

#[tokio::test]
async fn an_oversized_value_in_redis_is_refused_without_reading_it_whole() {
    let (redis, _origin, [s]) = with_redis_and_origin(&[], &[("ORIGIN_MAX_BODY_BYTES", "65536")]).await;
    let url = redis.url();
    // 50 MB under an entry key, written by something else with access to Redis.
    let big = vec![b'x'; 50_000_000];
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    redis::cmd("SET")
        .arg(entry_key("big"))
        .arg(&big)
        .exec(&mut conn)
        .unwrap();
    let net_out = |conn: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(conn).unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = net_out(&mut conn);
    let (code, status, body) = s.get("big").await;
    let after = net_out(&mut conn);
    assert_eq!((code, status.as_str()), (200, "cache-layer; fwd=miss; stored"));
    assert_eq!(body["value"]["path"], "/items/big");
    assert!(after - before < 1_000_000, "Redis sent {} bytes", after - before);
    assert_eq!(s.metric("redis_errors_total{operation=\"get\"").await, 1.0);
    assert_eq!(s.json("/health").await["tiers"]["redis"], "ok");
    // The origin's value replaced the oversized one.
    let len: u64 = redis::cmd("STRLEN")
        .arg(entry_key("big"))
        .query(&mut conn)
        .unwrap();
    assert!(len < 1000, "{len}");
}

#[tokio::test]
async fn refused_redis_writes_show_in_health_and_metrics() {
    let (redis, [s]) = with_redis(&[("ORIGIN_LATENCY_MS", "1")]).await;
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    assert_eq!(s.get("w1").await.0, 200);
    let health = s.json("/health").await;
    assert_eq!(health["tiers"]["redis"], "write_failing", "{health}");
    assert_eq!(health["status"], "degraded");
    assert!(s.metric("redis_errors_total{operation=\"set\"").await >= 1.0);
    // Writes succeed again: the next successful SET clears it.
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    assert_eq!(s.get("w2").await.0, 200);
    eventually("health to be ok again", || async {
        (s.json("/health").await["tiers"]["redis"] == "ok").then_some(())
    })
    .await;
}

#[tokio::test]
async fn values_longer_than_the_first_read_still_round_trip_through_redis() {
    let (_redis, _origin, [a, b]) = with_redis_and_origin(&[("STUB_MODE", "bytes:200000")], &[]).await;
    let (code, _, fetched) = a.get("long").await;
    assert_eq!(code, 200);
    let (code, status, cached) = b.get("long").await;
    assert_eq!(code, 200);
    assert!(status.ends_with("detail=redis"), "{status}");
    assert_eq!(cached["value"], fetched["value"]);
    assert_eq!(cached["value"]["padding"].as_str().unwrap().len(), 200_000);
    assert_eq!(b.metric("redis_errors_total{operation=\"get\"").await, 0.0);
}
