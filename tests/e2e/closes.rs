//! Every close wsgate starts is a WebSocket Close with the right code:
//! shutdown and idle (1001), oversized message (1009), bad framing (1002).

use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_client_with_1001_and_exits_0() {
    let b = Backend::start("b1").unwrap();
    let mut gate = Gate::start(
        &tls_config(
            &[("b1", b.addr, 1)],
            "timeouts: { close: 2s }\nruntime: { shutdown_window: 1s }\n",
        ),
        1,
    )
    .unwrap();
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(
            raw_ws(&gate, &format!("/echo?user=term-{i}"))
                .await
                .unwrap(),
        );
    }
    gate.proc.signal("TERM");
    for c in &mut clients {
        assert_eq!(read_close_code(c).await.unwrap(), Some(1001));
        // Answer like a well-behaved client so the close handshake completes.
        c.write_all(&encode_frame(
            0x8,
            true,
            &1001u16.to_be_bytes(),
            Some([7, 1, 9, 3]),
        ))
        .await
        .unwrap();
    }
    let code = tokio::task::spawn_blocking(move || gate.proc.wait_exit(STEP))
        .await
        .unwrap();
    assert_eq!(
        code,
        Some(0),
        "wsgate exits cleanly after the close timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_is_closed_with_1001() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(
        &tls_config(&[("b1", b.addr, 1)], "timeouts: { idle: 1s }\n"),
        1,
    )
    .unwrap();
    let mut ws = wss(&gate, "/echo?user=sleepy").await.unwrap();
    hello(&mut ws).await.unwrap();
    match next(&mut ws).await.unwrap() {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 1001);
            assert_eq!(f.reason.as_str(), "idle timeout");
        }
        other => panic!("expected Close 1001, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_closed_with_1009() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(
        &tls_config(
            &[("b1", b.addr, 1)],
            "limits: { max_message_bytes: 1KiB }\n",
        ),
        1,
    )
    .unwrap();
    let mut ws = wss(&gate, "/echo?user=big").await.unwrap();
    hello(&mut ws).await.unwrap();
    ws.send(Message::binary(vec![1u8; 1024])).await.unwrap();
    assert_eq!(
        next(&mut ws).await.unwrap(),
        Message::binary(vec![1u8; 1024]),
        "at the limit passes"
    );
    ws.send(Message::binary(vec![2u8; 1025])).await.unwrap();
    match next(&mut ws).await.unwrap() {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected Close 1009, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmasked_client_frame_is_closed_with_1002() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ""), 1).unwrap();
    let mut bystander = wss(&gate, "/echo?user=bystander").await.unwrap();
    hello(&mut bystander).await.unwrap();
    let mut s = raw_ws(&gate, "/echo?user=rude").await.unwrap();
    // A text frame without a mask: forbidden from clients (RFC 6455 5.1).
    s.write_all(&encode_frame(0x1, true, b"hi", None))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await.unwrap(), Some(1002));
    bystander.send(Message::text("fine")).await.unwrap();
    assert_eq!(next(&mut bystander).await.unwrap(), Message::text("fine"));
}
