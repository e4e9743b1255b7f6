//! Proxy-level heartbeats (issue 12, item 4): a client that stops
//! answering is found within `interval + timeout` and its backend gets
//! 1001; a client that answers is never closed, and its backend sees
//! neither wsgate's Pings nor their Pongs, while its own pass untouched.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use wsgate_tests::peers::{self, eventually, payloads, RawBackend, Script};
use wsgate_tests::*;

const HEARTBEAT: &str = "    heartbeat: { interval: 1s, timeout: 1s }\n";

fn with_heartbeat(b: &RawBackend, heartbeat: &str) -> String {
    plain_config(&[("b1", b.addr, 1)], "").replace(
        "    sticky_key: [\"query:user\", \"header:x-user-id\", \"cookie:session\"]\n",
        &format!("    sticky_key: [\"query:user\"]\n{heartbeat}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_is_found_and_its_backend_told() {
    let b = RawBackend::start(Script::Record).await.unwrap();
    let gate = Gate::start(&with_heartbeat(&b, HEARTBEAT), 1).unwrap();
    // Completes the handshake, then ignores everything: no reads, no FIN.
    let mut s = peers::tcp(gate.addr()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let upgraded = Instant::now();
    let (code, after) = eventually("the backend to be told", || {
        let close = payloads(&b.received(), 0x8).into_iter().next()?;
        Some((u16::from_be_bytes([close[0], close[1]]), upgraded.elapsed()))
    })
    .await;
    assert_eq!(code, 1001);
    // interval + timeout, plus a second of slack.
    assert!(after < Duration::from_secs(3), "found after {after:?}");
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_is_kept_and_the_backend_never_sees_our_pongs() {
    let theirs = encode_frame(0x9, true, b"backend-ping", None);
    let b = RawBackend::start(Script::SendThenRecord(theirs))
        .await
        .unwrap();
    let heartbeat = "    heartbeat: { interval: 200ms, timeout: 300ms }\n";
    let gate = Gate::start(&with_heartbeat(&b, heartbeat), 1).unwrap();
    let url = format!("ws://127.0.0.1:{}/ws", gate.addr().port());
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    // Idle but answering (tungstenite answers Pings as it reads) for
    // twenty-five heartbeat intervals.
    let until = Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Ok(Some(Err(e))) => panic!("closed: {e}"),
            Ok(None) => panic!("closed"),
        }
    }
    assert!(
        pings >= 10,
        "only {pings} Pings in 5 s at a 200 ms interval"
    );
    let got = b.received();
    let pongs = payloads(&got, 0xA);
    assert!(
        pongs.iter().any(|p| p == b"backend-ping"),
        "the backend's own Ping is answered: {pongs:?}"
    );
    assert!(
        !pongs.iter().any(|p| p == wsgate::tunnel::HEARTBEAT_PAYLOAD),
        "the backend saw wsgate's Pongs: {pongs:?}"
    );
    assert!(payloads(&got, 0x8).is_empty(), "nobody closed");
}
