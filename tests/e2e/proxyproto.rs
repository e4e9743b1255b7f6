//! Behind an L4 balancer (issue 12, item 1): a real HAProxy sends PROXY
//! protocol v2 (`send-proxy-v2`) and v1 (`send-proxy`) in front of wsgate;
//! the backend sees the original client address and `client_ip` hashing
//! uses it. Headers from a disallowed peer, or garbled ones, are refused
//! while everyone else is served.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wsgate::routing::ring::{key_hash, Ring};
use wsgate_tests::peers::{self, RawBackend, Script};
use wsgate_tests::*;

struct HaProxy(Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// HAProxy in TCP mode with a v2 and a v1 frontend, both to `wsgate`.
fn haproxy(wsgate: SocketAddr) -> (HaProxy, SocketAddr, SocketAddr) {
    let (v2, v1) = (free_port(), free_port());
    let dir = scratch("haproxy");
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend w2\n\
             frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend w1\n\
             backend w2\n  server w {wsgate} send-proxy-v2\n\
             backend w1\n  server w {wsgate} send-proxy\n"
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .spawn()
        .expect("haproxy is installed by scripts/setup.sh --test");
    let proc = HaProxy(child);
    let (a2, a1): (SocketAddr, SocketAddr) = (
        format!("127.0.0.1:{v2}").parse().unwrap(),
        format!("127.0.0.1:{v1}").parse().unwrap(),
    );
    let deadline = Instant::now() + STEP;
    while std::net::TcpStream::connect(a2).is_err() || std::net::TcpStream::connect(a1).is_err() {
        assert!(Instant::now() < deadline, "haproxy never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, a2, a1)
}

/// `GET /whoami` from the local address `from` to `to`; the JSON answer,
/// or None when the connection was closed without one.
async fn whoami_from(from: IpAddr, to: SocketAddr, prefix: &[u8]) -> Option<serde_json::Value> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s: TcpStream = tokio::time::timeout(STEP, socket.connect(to))
        .await
        .unwrap()
        .unwrap();
    let mut req = prefix.to_vec();
    req.extend_from_slice(b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(&req).await.ok()?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let body = text.split("\r\n\r\n").nth(1)?;
    serde_json::from_str(body).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_in_front_passes_the_client_address_through() {
    let (b1, b2) = (Backend::start("b1").unwrap(), Backend::start("b2").unwrap());
    let yaml = plain_config(&[("b1", b1.addr, 1), ("b2", b2.addr, 1)], "").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    proxy_protocol: { accept_from: [127.0.0.1/32] }\n",
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    let (_haproxy, v2, v1) = haproxy(gate.addr());

    // Two client addresses that hash (client_ip: no ?user=) to different backends.
    let ring = Ring::new([("b1", 1), ("b2", 1)]);
    let ids = ["b1", "b2"];
    let on = |ip: &IpAddr| ring.pick(key_hash(ip.to_string().as_bytes()));
    let clients: Vec<IpAddr> = (2..50u8).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let first = clients[0];
    let other = *clients
        .iter()
        .find(|ip| on(ip) != on(&first))
        .expect("some address maps to the other backend");
    for front in [v2, v1] {
        for ip in [first, other] {
            let seen = whoami_from(ip, front, b"").await.expect("an answer");
            assert_eq!(seen["headers"]["x-forwarded-for"], ip.to_string(), "{seen}");
            let want = ids[on(&ip).unwrap()];
            assert_eq!(seen["backend"], want, "{ip} through {front}: {seen}");
        }
    }

    // A v2 header straight from a peer that is not the balancer: refused.
    let forged = wsgate::proxyproto::encode_v2("203.0.113.9:4000".parse().unwrap(), gate.addr());
    let spoofer: IpAddr = [127, 0, 0, 5].into();
    assert!(whoami_from(spoofer, gate.addr(), &forged).await.is_none());
    // A garbled header from an allowed peer: refused.
    let localhost: IpAddr = [127, 0, 0, 1].into();
    assert!(
        whoami_from(localhost, gate.addr(), b"PROXY TCP4 nonsense\r\n")
            .await
            .is_none()
    );
    // No header at all from an allowed peer: refused too.
    assert!(whoami_from(localhost, gate.addr(), b"").await.is_none());
    // Everyone behind the balancer is still served.
    let seen = whoami_from(first, v2, b"").await.expect("still served");
    assert_eq!(seen["headers"]["x-forwarded-for"], first.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_can_send_the_client_address_on_with_proxy_protocol_v2() {
    let b = RawBackend::start(Script::ProxiedSource).await.unwrap();
    let yaml = plain_config(
        &[("b1", b.addr, 1)],
        "    send_proxy_protocol: v2\n    health_check: { path: /healthz, interval: 200ms }\n",
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    let client: IpAddr = [127, 0, 0, 7].into();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(client, 0)).unwrap();
    let mut s = tokio::time::timeout(STEP, socket.connect(gate.addr()))
        .await
        .unwrap()
        .unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(STEP, s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = String::from_utf8_lossy(&b.received()).into_owned();
    assert!(
        seen.lines().any(|l| l.starts_with("127.0.0.7:")),
        "the backend saw {seen:?}"
    );
    // Health checks announce themselves with a LOCAL header.
    peers::eventually("a health check with a LOCAL header", || {
        String::from_utf8_lossy(&b.received())
            .lines()
            .any(|l| l == "LOCAL")
            .then_some(())
    })
    .await;
}
