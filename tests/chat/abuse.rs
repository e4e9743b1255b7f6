//! Untrusted input: bad JSON, unknown types, bad fields, binary frames,
//! oversized messages, floods and clients that stop answering pings each
//! get an `error` or a close with a code, and the other users carry on.

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::{encode_frame, https, raw_ws, read_close_code, STEP};

use crate::cluster::{assert_contiguous, backend, gate, Chatter, Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_or_close_codes_and_others_carry_on() {
    let flags = [
        "--rate",
        "50",
        "--burst",
        "20",
        "--max-message-bytes",
        "16384",
    ];
    let a = backend("chat-a", "127.0.0.1:0", None, &flags).unwrap();
    let gate = gate(&[&a]).unwrap();
    let mut victim = Chatter::connect(&gate, "victim").await.unwrap();
    victim.join("r", None).await.unwrap();

    // Malformed requests get an error and the connection stays usable.
    let mut rude = Chatter::connect(&gate, "rude").await.unwrap();
    rude.join("r", None).await.unwrap();
    let cases = [
        (Message::text("not json"), "bad_json"),
        (Message::text("[1,2]"), "unknown_type"),
        (Message::text(r#"{"type":"dance"}"#), "unknown_type"),
        (
            Message::text(r#"{"type":"send","room":"r"}"#),
            "bad_request",
        ),
        (Message::text(r#"{"type":"join","room":"a b"}"#), "bad_room"),
        (
            Message::text(r#"{"type":"join","room":"r"}"#),
            "already_joined",
        ),
        (
            Message::text(r#"{"type":"send","room":"elsewhere","id":"1","text":"x"}"#),
            "not_joined",
        ),
        (
            Message::text(r#"{"type":"send","room":"r","id":"","text":"x"}"#),
            "bad_id",
        ),
        (
            Message::text(
                json!({"type":"send","room":"r","id":"2","text":"x".repeat(5000)}).to_string(),
            ),
            "bad_text",
        ),
        (
            Message::text(r#"{"type":"leave","room":"nowhere"}"#),
            "not_joined",
        ),
    ];
    for (msg, code) in cases {
        rude.send_raw(msg).await.unwrap();
        let err = rude.expect("error").await.unwrap();
        assert_eq!(err["code"], code, "{err}");
    }
    let ack = rude.say("r", "ok-1", "still fine").await.unwrap();
    assert_eq!(ack["duplicate"], false);

    // Binary frames: 1003. Oversized messages: 1009.
    let mut binary = Chatter::connect(&gate, "binary").await.unwrap();
    binary
        .send_raw(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(binary.until_closed().await.unwrap(), Some(1003));
    let mut big = Chatter::connect(&gate, "big").await.unwrap();
    big.send_raw(Message::text("x".repeat(32 * 1024)))
        .await
        .unwrap();
    assert_eq!(big.until_closed().await.unwrap(), Some(1009));

    // A text frame that is not UTF-8: 1007.
    let mut raw = raw_ws(&gate, "/ws?user=mangled").await.unwrap();
    let bad = encode_frame(0x1, true, &[b'{', 0xff, 0xfe, b'}'], Some(rand::random()));
    tokio::time::timeout(STEP, raw.write_all(&bad))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_close_code(&mut raw).await.unwrap(), Some(1007));

    // A flood: rate_limited errors first, then 1008.
    let mut flood = Chatter::connect(&gate, "flood").await.unwrap();
    flood.join("r", None).await.unwrap();
    for i in 0..200 {
        let req = json!({"type":"send","room":"r","id":format!("f{i}"),"text":"spam"});
        if flood.send_json(req).await.is_err() {
            break; // the server closed already
        }
    }
    let code = flood.until_closed().await.unwrap();
    assert_eq!(code, Some(1008));
    let limited = flood
        .events
        .iter()
        .filter(|e| e["type"] == "error" && e["code"] == "rate_limited")
        .count();
    assert!(limited > 0, "the flood was told to slow down first");

    // The victim saw only well-formed traffic, in order, and still chats.
    let ack = victim.say("r", "v1", "still here").await.unwrap();
    let offset = ack["offset"].as_u64().unwrap() as usize;
    victim.until_messages(offset).await.unwrap();
    assert_contiguous("victim", &victim.messages, 1);
    assert_eq!(victim.messages.last().unwrap().id, "v1");
    assert!(victim.closed.is_none());
    victim.close().await;
    rude.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_answering_pings_is_closed_and_leaves_presence() {
    let redis = Redis::start().unwrap();
    let flags = ["--ping-interval", "200ms", "--pong-timeout", "300ms"];
    let a = backend("chat-a", "127.0.0.1:0", Some(&redis), &flags).unwrap();
    let gate = gate(&[&a]).unwrap();
    let mut watcher = Chatter::connect(&gate, "watcher").await.unwrap();
    watcher.join("r", None).await.unwrap();

    // A raw socket that joins and then never reads, so never answers a ping.
    let mut ghost = raw_ws(&gate, "/ws?user=ghost").await.unwrap();
    let join = encode_frame(
        0x1,
        true,
        br#"{"type":"join","room":"r"}"#,
        Some(rand::random()),
    );
    tokio::time::timeout(STEP, ghost.write_all(&join))
        .await
        .unwrap()
        .unwrap();
    watcher
        .expect_where("ghost joined", |e| {
            e["type"] == "presence" && e["joined"] == "ghost"
        })
        .await
        .unwrap();
    watcher
        .expect_where("ghost left", |e| {
            e["type"] == "presence" && e["left"] == "ghost"
        })
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut ghost).await.unwrap(), Some(1001));

    // The watcher answers its pings (tungstenite does while we read) and stays.
    watcher.say("r", "w1", "still here").await.unwrap();
    assert!(watcher.closed.is_none());
    watcher.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_page_and_echo_are_served_through_wsgate() {
    let a = backend("chat-a", "127.0.0.1:0", None, &[]).unwrap();
    let gate = gate(&[&a]).unwrap();
    let (status, _, body) = https(&gate, "GET", "/healthz", b"").await.unwrap();
    assert_eq!((status, body.as_slice()), (200, b"ok".as_slice()));
    let (status, head, body) = https(&gate, "GET", "/", b"").await.unwrap();
    assert_eq!(status, 200);
    assert!(head.to_ascii_lowercase().contains("text/html"));
    assert!(String::from_utf8_lossy(&body).contains("wsgate chat"));
    let (status, _, _) = https(&gate, "GET", "/app.js", b"").await.unwrap();
    assert_eq!(status, 200);
    // /ws without a valid user name is refused before the upgrade.
    let (status, _, _) = https(&gate, "GET", "/ws?user=no%20spaces", b"")
        .await
        .unwrap();
    assert_eq!(status, 400);
    // The proxy's echo endpoint is untouched.
    assert_eq!(
        wsgate_tests::backend_of(&gate, "someone").await.unwrap(),
        "chat-a"
    );
}
