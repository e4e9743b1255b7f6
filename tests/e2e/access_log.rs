//! The access log (issue 15): one line per WebSocket session when it ends,
//! saying who closed first and with which codes, and how many messages
//! went each way; one line per plain HTTP request. Real wsgate, real
//! chat backends, real clients; the lines are read back from the file.

use futures_util::SinkExt;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// The access line of the session of `user` (the config logs raw keys),
/// waited for (bounded): it is written when the session ends.
fn line_of(gate: &Gate, user: &str) -> serde_json::Value {
    let path = gate.dir.join("access.log");
    let deadline = std::time::Instant::now() + STEP;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if v["type"] == "ws" && v["key"] == user {
                return v;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line for {user} in:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads until the stream ends (tungstenite answers a Close by itself).
async fn until_end(ws: &mut Ws) -> Option<u16> {
    close_within(ws, STEP).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_party_s_close_is_logged_with_its_side_codes_and_counts() {
    let backends = start_backends(&["b1", "b2"]);
    // A 1 s drain window; then the rest of the top-level config.
    let extra = format!(
        "    drain: {{ window: 1s }}\n{ADMIN}access_log: {{ to: access.log, format: json, log_raw_key: true }}\n"
    );
    let gate = Gate::start(&tls_config(&weight_one(&backends), &extra), 1).unwrap();

    // A plain HTTP request gets a line of its own, query left out.
    let (status, head, body) = https(&gate, "GET", "/whoami?user=erin&secret=1", b"")
        .await
        .unwrap();

    // 1. The client closes with 1000 after one message each way.
    let mut ws = wss(&gate, "/echo?user=alice").await.unwrap();
    hello(&mut ws).await.unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(next(&mut ws).await.unwrap(), Message::text("ping"));
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "done".into(),
    }))
    .await
    .unwrap();
    until_end(&mut ws).await;
    let a = line_of(&gate, "alice");
    assert_eq!(a["closed_by"], "client", "{a}");
    assert_eq!(a["close_cause"], "close");
    assert_eq!(a["client_close_code"], 1000);
    assert_eq!(a["client_close_reason_len"], 4);
    assert_eq!(
        a["backend_close_code"], 1000,
        "the echo backend answers in kind"
    );
    assert_eq!(a["messages_to_backend"], 1);
    assert_eq!(a["messages_to_client"], 2, "hello and the echo");
    assert!(a["wsgate_close_to_client"].is_null());
    assert_eq!(a["key_source"], "query:user");
    assert_eq!(a["listener"], "public");
    assert_eq!(a["pool"], "chat");
    assert_eq!(a["http_version"], "HTTP/1.1");
    assert!(a["bytes_to_backend"].as_u64().unwrap() > 0);
    assert!(a["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(a["handshake_ms"].as_f64().unwrap() > 0.0);

    // 2. The backend closes with 1011 (the echo backend's `close:` command).
    let mut ws = wss(&gate, "/echo?user=bob").await.unwrap();
    hello(&mut ws).await.unwrap();
    ws.send(Message::text("close:1011")).await.unwrap();
    assert_eq!(until_end(&mut ws).await, Some(1011));
    let b = line_of(&gate, "bob");
    assert_eq!(b["closed_by"], "backend", "{b}");
    assert_eq!(b["close_cause"], "close");
    assert_eq!(b["backend_close_code"], 1011);
    assert_eq!(b["backend_close_reason_len"], 3, "\"bye\"");
    assert_eq!(b["client_close_code"], 1011, "tungstenite answers in kind");
    assert_eq!(
        (
            b["messages_to_backend"].as_u64(),
            b["messages_to_client"].as_u64()
        ),
        (Some(1), Some(1))
    );

    // 3. A drain of carol's backend: wsgate closes, 1012 to her, 1001 on.
    let mut ws = wss(&gate, "/echo?user=carol").await.unwrap();
    let hers = hello(&mut ws).await.unwrap();
    let (status_drain, resp) = admin_call(
        &gate,
        "POST",
        &format!("/v1/pools/chat/backends/{hers}/drain"),
    )
    .await
    .unwrap();
    assert_eq!(status_drain, 200, "{resp}");
    assert_eq!(until_end(&mut ws).await, Some(1012));
    let c = line_of(&gate, "carol");
    assert_eq!(c["closed_by"], "wsgate", "{c}");
    assert_eq!(c["close_cause"], "drain");
    assert_eq!(c["wsgate_close_to_client"], 1012);
    assert_eq!(c["wsgate_close_to_backend"], 1001);
    assert_eq!(c["client_close_code"], 1012);
    assert_eq!(c["backend"], hers.as_str());
    assert_eq!(
        (
            c["messages_to_backend"].as_u64(),
            c["messages_to_client"].as_u64()
        ),
        (Some(0), Some(1))
    );

    // 4. The other backend is killed under dave: 1014 to him. A raw client
    // (tungstenite refuses 1014 and answers 1002, which the log would show).
    let mut raw = raw_ws(&gate, "/echo?user=dave").await.unwrap();
    let victim = backends.iter().find(|b| b.id != hers).unwrap();
    let key = [3, 1, 4, 1];
    raw.write_all(&encode_frame(0x1, true, b"one", Some(key)))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut raw).await.unwrap(), (0x1, b"one".to_vec()));
    victim.proc.signal("KILL");
    assert_eq!(read_close_code(&mut raw).await.unwrap(), Some(1014));
    raw.write_all(&encode_frame(0x8, true, &1014u16.to_be_bytes(), Some(key)))
        .await
        .unwrap();
    let d = line_of(&gate, "dave");
    assert_eq!(d["closed_by"], "backend", "{d}");
    assert_eq!(d["close_cause"], "gone");
    assert_eq!(d["backend"], victim.id.as_str());
    assert_eq!(d["wsgate_close_to_client"], 1014);
    assert_eq!(d["client_close_code"], 1014, "the client's answer");
    assert!(
        d["backend_close_code"].is_null(),
        "a killed backend sends no Close"
    );
    assert_eq!(
        (
            d["messages_to_backend"].as_u64(),
            d["messages_to_client"].as_u64()
        ),
        (Some(1), Some(2))
    );

    // The plain request's line: method, path without the query, status,
    // the bytes of the body it got.
    let text = std::fs::read_to_string(gate.dir.join("access.log")).unwrap();
    let http: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "http")
        .collect();
    assert_eq!(http.len(), 1, "{text}");
    let h = &http[0];
    assert_eq!(h["method"], "GET");
    assert_eq!(h["path"], "/whoami");
    assert_eq!(h["status"], u64::from(status));
    if head.to_ascii_lowercase().contains("content-length") {
        assert_eq!(h["bytes"], body.len() as u64, "{head}");
    } else {
        // Chunked: the line counts the data, not the chunk framing.
        assert!(h["bytes"].as_u64().unwrap() <= body.len() as u64);
    }
    assert_eq!(h["http_version"], "HTTP/1.1");
    assert!(h["duration_ms"].as_f64().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_logs_a_keyed_hash_in_logfmt_and_sigusr1_reopens_the_file() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(
        &tls_config(
            &[("b1", b.addr, 1)],
            "access_log: { to: access.log, format: logfmt }\n",
        ),
        1,
    )
    .unwrap();
    let path = gate.dir.join("access.log");
    let session = |user: &'static str| {
        let gate = &gate;
        async move {
            let mut ws = wss(gate, &format!("/echo?user={user}")).await.unwrap();
            hello(&mut ws).await.unwrap();
            ws.close(None).await.unwrap();
            until_end(&mut ws).await;
        }
    };
    let wait_lines = |n: usize| {
        let deadline = std::time::Instant::now() + STEP;
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= n {
                return text;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} lines expected:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    session("zoe").await;
    let first = wait_lines(1);
    assert!(first.starts_with("type=ws "), "{first}");
    assert!(!first.contains("zoe"), "the raw key is not logged: {first}");
    assert!(first.contains(" key_hash="), "{first}");
    // Rotation: move the file away, SIGUSR1, and the next line starts a new one.
    std::fs::rename(&path, gate.dir.join("access.log.1")).unwrap();
    gate.proc.signal("USR1");
    // The reopen happens before the writer's next line; a session started
    // right after the signal may be written before the control thread saw
    // it, so sessions are repeated (bounded) until the new file appears.
    let deadline = std::time::Instant::now() + STEP;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no new access.log after SIGUSR1"
        );
        session("zoe").await;
    }
    let second = wait_lines(1);
    assert!(second.starts_with("type=ws "), "{second}");
    let old = std::fs::read_to_string(gate.dir.join("access.log.1")).unwrap();
    let hash = |text: &str| {
        text.split(' ')
            .find_map(|f| f.strip_prefix("key_hash="))
            .map(str::to_string)
    };
    assert_eq!(
        hash(&old),
        hash(&second),
        "one key, one hash within a process"
    );
}
