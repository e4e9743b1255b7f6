//! What a client does is never blamed on a backend (issue 11, items 1, 5
//! and 10): aborted and slow uploads, long-polls, runtime-added backends,
//! and config values that would overflow.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wsgate_tests::peers::{RawBackend, Script};
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// A pool whose backends go down after one passive failure and are not
/// probed again during the test (so nothing but passive failures counts).
const FRAGILE: &str =
    "    health_check: { path: /healthz, interval: 1h, timeout: 1s, fall: 1, rise: 1 }\n";

/// The state word `wsgate status` prints for backend `id`.
fn state_line(gate: &Gate, id: &str) -> String {
    let (_, status, _) = gate.cli(&["status"]).unwrap();
    status
        .lines()
        .find(|l| l.contains(id))
        .map(str::to_string)
        .unwrap_or_default()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_uploads_do_not_take_the_backend_down() {
    // A backend that reads the head and takes its time, like any handler
    // that wants the whole body first.
    let b = RawBackend::start(Script::AnswerAfter(Duration::from_secs(30)))
        .await
        .unwrap();
    let extra = format!("{FRAGILE}{ADMIN}");
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], &extra), 1).unwrap();
    for i in 1..=3 {
        let mut s = tls_stream(&gate).await.unwrap();
        let head = "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&[b'x'; 1000]).await.unwrap();
        s.flush().await.unwrap();
        let heads = b.heads.clone();
        tokio::task::spawn_blocking(move || {
            wait_until("the request to reach the backend", || {
                heads.load(std::sync::atomic::Ordering::Relaxed) >= i
            })
        })
        .await
        .unwrap();
        // The client walks away mid-body.
        drop(s);
    }
    // Each abort used to count as a passive failure: with fall 1 the
    // backend was down after the first.
    let line = state_line(&gate, "b1");
    assert!(line.contains("active"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timer_starts_when_the_upload_ends() {
    let b = RawBackend::start(Script::Collect).await.unwrap();
    let extra = format!("{FRAGILE}timeouts: {{ backend_response: 1s, body: 5s }}\n");
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], &extra), 1).unwrap();
    // A slow upload: 3 s in all, longer than backend_response, with no
    // gap longer than the body timeout. It used to get a 504 after 1 s.
    let mut s = tls_stream(&gate).await.unwrap();
    let head =
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 6\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    for part in [b"sl", b"ow", b"ly"] {
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        s.write_all(part).await.unwrap();
    }
    s.flush().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(STEP, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&text), Some(200), "{text}");
    assert!(text.ends_with("slowly"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_is_408_and_not_the_backends_fault() {
    let b = RawBackend::start(Script::Collect).await.unwrap();
    let extra = format!("{FRAGILE}timeouts: {{ body: 1s }}\n");
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], &extra), 1).unwrap();
    let mut s = tls_stream(&gate).await.unwrap();
    // It used to hang until the client gave up.
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    s.flush().await.unwrap();
    let head = String::from_utf8_lossy(&read_head(&mut s).await.unwrap()).into_owned();
    assert_eq!(status_of(&head), Some(408), "{head}");
    let (status, _, body) = https(&gate, "POST", "/echo", b"whole").await.unwrap();
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"whole"[..]),
        "the backend is still up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_route_waits_longer_than_backend_response() {
    let slow = RawBackend::start(Script::AnswerAfter(Duration::from_secs(2)))
        .await
        .unwrap();
    let yaml = tls_config(
        &[("slow", slow.addr, 1)],
        &format!("{FRAGILE}timeouts: {{ backend_response: 1s }}\n"),
    )
    .replace(
        "routes:\n",
        "routes:\n  - path_prefix: /poll\n    pool: chat\n    backend_response: 5s\n",
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    let (status, _, body) = https(&gate, "GET", "/poll", b"").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, b"late");
    // Elsewhere the global timeout applies, and a timeout is the backend's.
    let (status, _, _) = https(&gate, "GET", "/other", b"").await.unwrap();
    assert_eq!(status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_backend_is_health_checked_and_comes_back() {
    let b1 = Backend::start("b1").unwrap();
    let extra = format!(
        "    health_check: {{ path: /healthz, interval: 200ms, timeout: 200ms, fall: 1, rise: 1 }}\n{ADMIN}"
    );
    let gate = Gate::start(&tls_config(&[("b1", b1.addr, 1)], &extra), 1).unwrap();
    // An address with nothing behind it yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let address = format!("127.0.0.1:{port}");
    let (code, out, err) = gate
        .cli(&["backend", "add", "chat/b2", "--address", &address])
        .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let wait_for = |gate: &Gate, word: &str| {
        wait_until(&format!("b2 {word}"), || {
            state_line(gate, "b2").contains(word)
        })
    };
    // The added backend gets a checker: it is found down...
    wait_for(&gate, "down");
    // ...and, once something listens there, back up (it used to stay down
    // for ever: nothing probed a backend added at run time).
    let _b2 = Backend::start_on("b2", &address).unwrap();
    wait_for(&gate, "active");
}

#[test]
fn durations_and_sizes_beyond_their_maximum_fail_check_with_a_position() {
    let dir = scratch("bounds");
    let config = dir.join("wsgate.yaml");
    for (yaml, key) in [
        ("timeouts: { idle: 99999999999999999h }\n", "timeouts.idle"),
        ("timeouts: { close: 169h }\n", "timeouts.close"),
        (
            "runtime: { shutdown_window: 10000h }\n",
            "runtime.shutdown_window",
        ),
        (
            "limits: { max_message_bytes: 2GiB }\n",
            "limits.max_message_bytes",
        ),
    ] {
        let text = format!(
            "listeners: [{{ name: a, address: \"127.0.0.1:0\" }}]\n\
             routes: [{{ pool: chat }}]\n\
             pools: {{ chat: {{ backends: [{{ id: b1, address: \"127.0.0.1:9\" }}] }} }}\n{yaml}"
        );
        std::fs::write(&config, text).unwrap();
        let out = std::process::Command::new(bin("wsgate"))
            .arg("check")
            .arg("-c")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key} passed check");
        assert!(
            stderr.contains("wsgate.yaml:4:") && stderr.contains(key),
            "{key}: {stderr}"
        );
    }
}
