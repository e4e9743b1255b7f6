//! The edges of a session (issue 11, items 7 and 8): a close never cuts a
//! frame or doubles a Close, a framing error keeps what came before it,
//! an oversize backend message is 1009, and plain HTTP connections cannot
//! be held by a client that stops reading.

use std::time::{Duration, Instant};

use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use wsgate_tests::peers::{self, close_frames, eventually, RawBackend, Script};
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";
const MASK: [u8; 4] = [9, 8, 7, 6];

/// A raw wss upgrade of `path` through `gate`; the backend's 101 is read,
/// nothing after it.
async fn upgraded(
    gate: &Gate,
    path: &str,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = tls_stream(gate).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await.unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// Drains `chat/b1` with a 10 ms window through the CLI.
async fn drain_now(gate: &Gate) {
    let handle = gate.cli_handle();
    tokio::task::spawn_blocking(move || {
        let (code, out, err) = handle
            .run(&["drain", "chat/b1", "--window", "10ms"])
            .unwrap();
        assert_eq!(code, 0, "{out}{err}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_during_a_large_upload_waits_for_the_frame_to_end() {
    let b = Backend::start("b1").unwrap();
    let extra = format!("timeouts: {{ close: 1s }}\n{ADMIN}");
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], &extra), 1).unwrap();
    let mut s = raw_ws(&gate, "/echo?user=uploader").await.unwrap();
    // 1 MiB in one frame, sent over about 3 s: three close timeouts.
    let frame = encode_frame(0x2, true, &vec![5u8; 1 << 20], Some(MASK));
    let pieces: Vec<&[u8]> = frame.chunks(frame.len() / 30 + 1).collect();
    let started = Instant::now();
    for (i, piece) in pieces.iter().enumerate() {
        if i == 3 {
            drain_now(&gate).await;
        }
        // The close deadline used to run from the drain: the tunnel was
        // dropped a second later, mid-frame, and these writes failed.
        tokio::time::timeout(STEP, s.write_all(piece))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("write {i} after {:?}: {e}", started.elapsed()));
        s.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    // The client was told at once (nothing was in flight towards it).
    assert_eq!(read_close_code(&mut s).await.unwrap(), Some(1012));
    s.write_all(&encode_frame(0x8, true, &1000u16.to_be_bytes(), Some(MASK)))
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, s.read_to_end(&mut rest)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_split_across_reads_during_a_drain_is_not_answered_twice() {
    let b = RawBackend::start(Script::Record).await.unwrap();
    let extra = format!("timeouts: {{ close: 5s }}\n{ADMIN}");
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], &extra), 1).unwrap();
    let mut s = upgraded(&gate, "/ws").await;
    let close = encode_frame(0x8, true, b"\x03\xe8bye", Some(MASK));
    s.write_all(&close[..3]).await.unwrap();
    s.flush().await.unwrap();
    eventually("the first bytes to reach the backend", || {
        (b.received().len() >= 3).then_some(())
    })
    .await;
    drain_now(&gate).await;
    assert_eq!(read_close_code(&mut s).await.unwrap(), Some(1012));
    s.write_all(&close[3..]).await.unwrap();
    s.flush().await.unwrap();
    // The backend answers the client's Close; the tunnel then ends.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(STEP, s.read_to_end(&mut rest)).await;
    eventually("the backend connection to end", || {
        (b.ended.load(Relaxed) > 0).then_some(())
    })
    .await;
    // wsgate used to finish the client's Close and then send its own.
    assert_eq!(close_frames(&b.received()), 1, "{:?}", b.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_framing_error_still_delivers_the_messages_before_it() {
    let b = RawBackend::start(Script::Record).await.unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ""), 1).unwrap();
    let mut s = upgraded(&gate, "/ws").await;
    let mut chunk = encode_frame(0x1, true, b"before", Some(MASK));
    chunk.extend(encode_frame(0x3, true, b"reserved opcode", Some(MASK)));
    s.write_all(&chunk).await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(read_close_code(&mut s).await.unwrap(), Some(1002));
    // The backend gets "before", then wsgate's Close at that boundary. It
    // used to get only the Close: the whole chunk was dropped.
    let got = eventually("a Close to reach the backend", || {
        let bytes = b.received();
        (close_frames(&bytes) > 0).then_some(bytes)
    })
    .await;
    let frames = peers::frames(&got);
    assert_eq!(frames.first(), Some(&(0x1, 6)), "{frames:?}");
    assert_eq!(frames.get(1).map(|f| f.0), Some(0x8), "{frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_backend_message_is_1009_for_the_client() {
    let big = encode_frame(0x2, true, &[1u8; 2000], None);
    let b = RawBackend::start(Script::SendThenRecord(big))
        .await
        .unwrap();
    let extra = "limits: { max_message_bytes: 1000 }\n";
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], extra), 1).unwrap();
    let mut s = upgraded(&gate, "/ws").await;
    // It used to be 1014, as for a broken backend.
    assert_eq!(read_close_code(&mut s).await.unwrap(), Some(1009));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_a_response_is_cut_at_the_write_timeout() {
    let b = RawBackend::start(Script::BigBody(200 << 20)).await.unwrap();
    let extra = "timeouts: { write: 1s }\n";
    let gate = Gate::start(&plain_config(&[("b1", b.addr, 1)], extra), 1).unwrap();
    let mut s = peers::tcp(gate.addr()).await.unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    // Never read. wsgate used to hold both connections for ever.
    eventually("wsgate to let the backend connection go", || {
        (b.ended.load(Relaxed) > 0).then_some(())
    })
    .await;
    let sent = b.written.load(Relaxed);
    assert!(sent < 100 << 20, "stopped early, after {sent} bytes");
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_at_the_handshake_timeout() {
    let b = Backend::start("b1").unwrap();
    let extra = "timeouts: { handshake: 1s }\n";
    let gate = Gate::start(&plain_config(&[("b1", b.addr, 1)], extra), 1).unwrap();
    let mut s = peers::tcp(gate.addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await.unwrap();
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let started = Instant::now();
    assert!(peers::closed_within(&mut s, STEP).await);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}
