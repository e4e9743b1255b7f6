//! Limits and overload (issue 11, item 2 and "Build"): connection limits
//! answer promptly, a full descriptor table is never blamed on a backend,
//! and a peer that never reads costs wsgate no memory.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wsgate_tests::peers::{self, closed_within, rss_kib, RawBackend, Script};
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";
const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// A plain ws:// upgrade of `path`; returns the socket and the response head.
async fn plain_upgrade(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut s = peers::tcp(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{UPGRADE}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await.unwrap_or_default();
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_at_its_limit_answers_503_with_retry_after() {
    let b = Backend::start("b1").unwrap();
    let yaml = plain_config(&[("b1", b.addr, 1)], "")
        .replace("weight: 1 }", "weight: 1, max_connections: 2 }");
    let gate = Gate::start(&yaml, 1).unwrap();
    let mut live = Vec::new();
    for user in ["a", "b"] {
        let (mut s, head) = plain_upgrade(gate.addr(), &format!("/echo?user={user}")).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The backend's hello has come through: the tunnel is registered.
        read_frame(&mut s).await.unwrap();
        live.push(s);
    }
    let (_c, head) = plain_upgrade(gate.addr(), "/echo?user=c").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_limits_close_extra_connections_at_once() {
    let b = Backend::start("b1").unwrap();
    let extra = "limits: { max_connections_per_ip: 3 }\n";
    let gate = Gate::start(&plain_config(&[("b1", b.addr, 1)], extra), 1).unwrap();
    let mut held = Vec::new();
    for user in ["a", "b", "c"] {
        let (s, head) = plain_upgrade(gate.addr(), &format!("/echo?user={user}")).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        held.push(s);
    }
    let mut fourth = peers::tcp(gate.addr()).await.unwrap();
    assert!(
        closed_within(&mut fourth, Duration::from_secs(2)).await,
        "the fourth connection from one address is closed at accept"
    );
    held.pop();
    // A closed WebSocket frees its place (the slot lives with the tunnel).
    let deadline = Instant::now() + STEP;
    loop {
        let (_s, head) = plain_upgrade(gate.addr(), "/echo?user=d").await;
        if head.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was never reused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_ip_connection_rate_refuses_beyond_its_burst() {
    let b = Backend::start("b1").unwrap();
    let extra = "limits: { new_connections_per_ip_per_second: 5 }\n";
    let gate = Gate::start(&plain_config(&[("b1", b.addr, 1)], extra), 1).unwrap();
    // All eight at once: wsgate decides at accept.
    let mut conns = Vec::new();
    for _ in 0..8 {
        conns.push(peers::tcp(gate.addr()).await.unwrap());
    }
    let mut refused = 0;
    for s in &mut conns {
        if closed_within(s, Duration::from_millis(300)).await {
            refused += 1;
        }
    }
    // Five in the burst, less the one wsgate's own readiness probe may
    // have taken moments ago, plus at most one refilled meanwhile.
    assert!((2..=4).contains(&refused), "{refused} of 8 refused");
}

/// Descriptor exhaustion: wsgate under `prlimit --nofile=1024`, 1,100
/// connections opened against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_descriptor_table_refuses_clients_and_blames_no_backend() {
    let b = Backend::start("b1").unwrap();
    let extra = format!(
        "    health_check: {{ path: /healthz, interval: 200ms, timeout: 500ms, fall: 2, rise: 1 }}\n\
         timeouts: {{ handshake: 60s }}\n{ADMIN}"
    );
    let yaml = plain_config(&[("b1", b.addr, 1)], &extra);
    let gate = Gate::launch_under(
        &["prlimit", "--nofile=1024", "--"],
        scratch("nofile"),
        &yaml,
        1,
        &[],
    )
    .unwrap();
    let mut conns = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = peers::tcp(gate.addr()).await {
            conns.push(s);
        }
    }
    // The process limit (448 with 1,024 descriptors) holds; every client
    // beyond it is closed at once instead of waiting in the backlog.
    let mut fresh = peers::tcp(gate.addr()).await.unwrap();
    let asked = Instant::now();
    assert!(closed_within(&mut fresh, Duration::from_secs(2)).await);
    let refusal = asked.elapsed();

    let cpu_before = cpu_time(gate.proc.pid()).unwrap();
    let measured = Instant::now();
    // A few health-check rounds while saturated: the backend stays up.
    let handle = gate.cli_handle();
    let status = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_secs(2));
        handle.run(&["status"]).unwrap().1
    })
    .await
    .unwrap();
    let cpu = cpu_time(gate.proc.pid()).unwrap() - cpu_before;
    let wall = measured.elapsed();
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    eprintln!(
        "saturated: {} connections held by the test, refusal in {refusal:?}, wsgate CPU {cpu:?} over {wall:?} ({:.1}%)",
        conns.len(),
        share * 100.0
    );
    assert!(
        status
            .lines()
            .any(|l| l.contains("b1") && l.contains("active")),
        "{status}"
    );
    // An accept loop spinning on EMFILE would use a whole core.
    assert!(
        share < 0.5,
        "wsgate used {:.0}% CPU while saturated",
        share * 100.0
    );

    drop(conns);
    let deadline = Instant::now() + STEP;
    loop {
        let (_s, head) = plain_upgrade(gate.addr(), "/echo?user=after").await;
        if head.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(Instant::now() < deadline, "never served again: {head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `counter` stops growing for a second: the flow is stalled.
async fn until_stalled(counter: &std::sync::atomic::AtomicU64) -> u64 {
    let mut last = counter.load(std::sync::atomic::Ordering::Relaxed);
    let mut still_since = Instant::now();
    let deadline = Instant::now() + STEP;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counter.load(std::sync::atomic::Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_secs(1) {
            return now;
        }
        assert!(Instant::now() < deadline, "the flow never stalled");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_costs_no_memory() {
    // Backend floods a client that never reads.
    let flood = RawBackend::start(Script::Flood(200 << 20)).await.unwrap();
    let gate = Gate::start(&plain_config(&[("b1", flood.addr, 1)], ""), 1).unwrap();
    let pid = gate.proc.pid();
    let before = rss_kib(pid).unwrap();
    let (_client, head) = plain_upgrade(gate.addr(), "/ws").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let sent = until_stalled(&flood.written).await;
    let grown = rss_kib(pid).unwrap().saturating_sub(before);
    eprintln!("backend → non-reading client: backend wrote {} KiB before stalling; wsgate RSS +{grown} KiB", sent >> 10);
    assert!(sent < 200 << 20, "backpressure reached the backend");
    assert!(grown < 8 << 10, "RSS grew by {grown} KiB");
    drop(gate);

    // A client floods a backend that never reads.
    let hold = RawBackend::start(Script::Hold).await.unwrap();
    let gate = Gate::start(&plain_config(&[("b1", hold.addr, 1)], ""), 1).unwrap();
    let pid = gate.proc.pid();
    let before = rss_kib(pid).unwrap();
    let (mut client, head) = plain_upgrade(gate.addr(), "/ws").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let frame = encode_frame(0x2, true, &vec![3u8; 64 << 10], Some([1, 2, 3, 4]));
    let mut sent = 0u64;
    while sent < 200 << 20 {
        match tokio::time::timeout(Duration::from_secs(1), client.write_all(&frame)).await {
            Ok(Ok(())) => sent += frame.len() as u64,
            // Blocked: wsgate stopped reading because the backend did.
            _ => break,
        }
    }
    let grown = rss_kib(pid).unwrap().saturating_sub(before);
    eprintln!("client → non-reading backend: client wrote {} KiB before stalling; wsgate RSS +{grown} KiB", sent >> 10);
    assert!(sent < 200 << 20, "backpressure reached the client");
    assert!(grown < 8 << 10, "RSS grew by {grown} KiB");
}
