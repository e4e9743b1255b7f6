//! The admin API cannot be held or knocked over without a token (issue 11,
//! item 9): idle and slow connections are closed by its timeouts, the
//! connection cap closes the extra ones at once, and a full descriptor
//! table makes its accept loop back off instead of spinning and flooding
//! the log. Real wsgate on loopback; the constants mirror those of
//! `proxy/src/control/admin.rs`, which the README documents.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wsgate_tests::*;

/// `HEADER_TIMEOUT` and `BODY_TIMEOUT` in admin.rs.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// `MAX_CONNECTIONS` in admin.rs.
const CAP: usize = 64;
/// Slack for a timeout to be noticed on a busy test machine.
const SLACK: Duration = Duration::from_secs(5);

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

fn yaml() -> String {
    // Port 9 is never served; no test here proxies anything.
    tls_config(&[("b1", "127.0.0.1:9".parse().unwrap(), 1)], ADMIN)
}

async fn connect(gate: &Gate) -> TcpStream {
    let admin = gate.admin.expect("the config has an admin section");
    tokio::time::timeout(STEP, TcpStream::connect(admin))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Reads until the server closes (EOF or reset), at most `limit`; returns
/// what it sent and how long that took. Panics if it stays open.
async fn read_until_closed(s: &mut TcpStream, limit: Duration, what: &str) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Err(_) => panic!(
                "{what}: still open after {limit:?} (received {:?})",
                String::from_utf8_lossy(&out)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, start.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn token(gate: &Gate) -> String {
    std::fs::read_to_string(gate.dir.join("admin.token"))
        .expect("token file")
        .trim()
        .to_string()
}

/// `GET /v1/status` until it is answered 200 (a call refused at the cap
/// is closed at once, so this does not wait on any timeout); bounded.
async fn status_answered(gate: &Gate, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if let Ok(Ok((200, _))) =
            tokio::time::timeout(STEP, admin_call(gate, "GET", "/v1/status")).await
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "GET /v1/status not answered within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_half_sent_and_slow_admin_connections_are_closed_by_timeouts() {
    let gate = Gate::start(&yaml(), 1).unwrap();
    let token = token(&gate);

    // Sends nothing at all.
    let silent = async {
        let mut s = connect(&gate).await;
        let (got, took) = read_until_closed(&mut s, HEADER_TIMEOUT + SLACK, "silent").await;
        assert!(
            got.is_empty(),
            "silent: {:?}",
            String::from_utf8_lossy(&got)
        );
        took
    };
    // Half a request head, then silence.
    let half = async {
        let mut s = connect(&gate).await;
        s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: admin\r\n")
            .await
            .unwrap();
        read_until_closed(&mut s, HEADER_TIMEOUT + SLACK, "half a head")
            .await
            .1
    };
    // A valid call whose body stops after 12 of 100 bytes: 408, then closed.
    let slow_body = async {
        let mut s = connect(&gate).await;
        let req = format!(
            "PUT /v1/pools/chat/backends/b9 HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 100\r\n\r\n{{\"address\":"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let (got, took) = read_until_closed(&mut s, BODY_TIMEOUT + SLACK, "slow body").await;
        let got = String::from_utf8_lossy(&got).into_owned();
        assert_eq!(status_of(&got), Some(408), "slow body: {got}");
        took
    };
    // A keep-alive connection that is answered once, then stays quiet.
    let keep_alive = async {
        let mut s = connect(&gate).await;
        let req = format!(
            "GET /v1/status HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
        assert_eq!(status_of(&resp), Some(200), "keep-alive: {resp}");
        read_until_closed(&mut s, HEADER_TIMEOUT + SLACK, "idle keep-alive")
            .await
            .1
    };
    let (silent, half, slow_body, keep_alive) = tokio::join!(silent, half, slow_body, keep_alive);
    eprintln!(
        "closed after: silent {silent:?}, half head {half:?}, slow body {slow_body:?} (408), idle keep-alive {keep_alive:?}"
    );
    // Closed by the timeouts, not by anything earlier.
    let early = HEADER_TIMEOUT - Duration::from_secs(1);
    assert!(silent >= early && half >= early, "{silent:?} {half:?}");
    assert!(
        slow_body >= BODY_TIMEOUT - Duration::from_secs(1),
        "{slow_body:?}"
    );
    // Nothing of this changed the gate: the next call is answered.
    let (code, metrics) = admin_call(&gate, "GET", "/metrics").await.unwrap();
    assert_eq!(code, 200, "{metrics}");
    assert!(
        metrics.contains("wsgate_admin_timeouts_total{kind=\"body\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_connection_cap_closes_the_extra_connection_at_once() {
    let gate = Gate::start(&yaml(), 1).unwrap();
    // CAP idle connections: the server accepts them in order and holds each
    // until its header timeout.
    let mut idle = Vec::new();
    for _ in 0..CAP {
        idle.push(connect(&gate).await);
    }
    let opened = Instant::now();
    // One more is accepted after them, and closed at once.
    let mut extra = connect(&gate).await;
    let (_, took) = read_until_closed(
        &mut extra,
        HEADER_TIMEOUT / 2,
        "the connection over the cap",
    )
    .await;
    assert!(
        opened.elapsed() < HEADER_TIMEOUT / 2,
        "closed by a timeout, not by the cap: {took:?}"
    );
    // The idle ones are still open: the cap closed only the newest.
    let mut byte = [0u8; 1];
    let first = tokio::time::timeout(Duration::from_millis(200), idle[0].read(&mut byte)).await;
    assert!(
        first.is_err(),
        "the first idle connection was closed: {first:?}"
    );
    // Once they go, the operator is answered at once.
    drop(idle);
    let waited = status_answered(&gate, STEP).await;
    eprintln!(
        "over the cap closed after {took:?}; status answered {waited:?} after the idle ones closed"
    );
    let (code, metrics) = admin_call(&gate, "GET", "/metrics").await.unwrap();
    assert_eq!(code, 200, "{metrics}");
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("wsgate_admin_connections_refused_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no refused counter in {metrics}"));
    assert!(refused >= 1, "{metrics}");
}

/// wsgate with a descriptor limit just above what it uses, and the admin
/// port flooded until accept fails with EMFILE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_descriptor_table_does_not_make_the_admin_accept_loop_spin() {
    let (gate, log) =
        Gate::launch_tapped(scratch("admin-emfile"), &yaml(), 1, "admin accept failed").unwrap();
    let pid = gate.proc.pid();
    let spare = 16;
    let limit = open_fds(pid).unwrap() + spare;
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("prlimit (util-linux) is needed for this test");
    assert!(
        out.status.success(),
        "prlimit: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The first `spare` take the last descriptors; the rest wait in the
    // listener's backlog (128), each a failed accept for the server.
    let mut flood = Vec::new();
    for _ in 0..spare + 40 {
        flood.push(connect(&gate).await);
    }
    let first = log.wait_match(STEP).expect("the admin accept never failed");
    eprintln!("saturated: {first}");

    let (cpu0, bytes0, lines0) = (cpu_time(pid).unwrap(), log.bytes(), log.matches());
    let start = Instant::now();
    // The measurement window (not a synchronisation): the flood stays.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let wall = start.elapsed();
    let cpu = cpu_time(pid).unwrap().saturating_sub(cpu0);
    let grown = log.bytes() - bytes0;
    let lines = log.matches() - lines0;
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "while saturated for {wall:?}: CPU {:.1}% of a core, log grew {grown} bytes ({lines} accept-error lines)",
        share * 100.0
    );
    assert!(
        share < 0.2,
        "the accept loop spins: {:.1}% of a core",
        share * 100.0
    );
    assert!(grown < 16 * 1024, "the log grew {grown} bytes in {wall:?}");
    assert!(lines <= 2, "{lines} accept-error lines in {wall:?}");

    // The flood goes; the admin API answers again.
    drop(flood);
    let waited = status_answered(&gate, STEP).await;
    eprintln!("status answered {waited:?} after the flood closed");
}
