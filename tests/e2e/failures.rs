//! Bad input and broken backends get clear answers, and nobody else notices.

use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate::routing::ring::{key_hash, Ring};
use wsgate_tests::*;

/// First user (user-0, user-1, ...) that the ring maps to backend `index`.
pub(crate) fn user_on(ids: &[&str], index: usize) -> String {
    let ring = Ring::new(ids.iter().map(|id| (*id, 1)));
    (0..)
        .map(|i| format!("user-{i}"))
        .find(|u| ring.pick(key_hash(u.as_bytes())) == Some(index))
        .expect("some user maps to every backend")
}

async fn echo_works(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next(ws).await.unwrap(), Message::text(text));
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_get_their_status_and_others_keep_working() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ""), 1).unwrap();
    let mut bystander = wss(&gate, "/echo?user=bystander").await.unwrap();
    hello(&mut bystander).await.unwrap();

    let up = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let cases: Vec<(&str, String, u16)> = vec![
        ("missing key", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{up}Sec-WebSocket-Version: 13\r\n\r\n"), 400),
        ("bad key", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{up}Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n"), 400),
        ("version 8", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{up}{KEY}Sec-WebSocket-Version: 8\r\n\r\n"), 426),
        ("POST", format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n{up}{KEY}Sec-WebSocket-Version: 13\r\n\r\n"), 400),
        ("HTTP/1.0", format!("GET /echo HTTP/1.0\r\nHost: localhost\r\n{up}{KEY}Sec-WebSocket-Version: 13\r\n\r\n"), 400),
        ("no Upgrade", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n{KEY}Sec-WebSocket-Version: 13\r\n\r\n"), 400),
        ("oversized headers", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n", "a".repeat(40_000)), 431),
    ];
    for (name, req, want) in cases {
        let mut s = tls_stream(&gate).await.unwrap();
        let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
        assert_eq!(status_of(&resp), Some(want), "{name}: {resp}");
        if want == 426 {
            assert!(
                resp.to_ascii_lowercase()
                    .contains("sec-websocket-version: 13"),
                "{resp}"
            );
        }
        if want == 400 {
            let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
            assert!(
                !body.trim().is_empty() && body.trim().lines().count() == 1,
                "{name}: one-line reason: {resp}"
            );
        }
        echo_works(&mut bystander, name).await;
    }
    // Garbage that is not HTTP at all.
    let mut s = tls_stream(&gate).await.unwrap();
    let resp = raw_request(&mut s, b"\x16\x03\x01garbage\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&resp), Some(400), "{resp}");
    echo_works(&mut bystander, "still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_backend_gives_502_without_affecting_others() {
    let b1 = Backend::start("b1").unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let gate = Gate::start(&tls_config(&[("b1", b1.addr, 1), ("b2", dead, 1)], ""), 1).unwrap();
    let alive_user = user_on(&["b1", "b2"], 0);
    let dead_user = user_on(&["b1", "b2"], 1);
    let mut ws = wss(&gate, &format!("/echo?user={alive_user}"))
        .await
        .unwrap();
    assert_eq!(hello(&mut ws).await.unwrap(), "b1");
    let (status, _, body) = https(&gate, "GET", &format!("/echo?user={dead_user}"), b"")
        .await
        .unwrap();
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    let err = wss(&gate, &format!("/echo?user={dead_user}"))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("502"), "{err:#}");
    echo_works(&mut ws, "unaffected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_backend_gives_504() {
    // Accepts TCP (the kernel's backlog does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gate = Gate::start(
        &tls_config(
            &[("s", silent.local_addr().unwrap(), 1)],
            "timeouts: { backend_response: 1s }\n",
        ),
        1,
    )
    .unwrap();
    let (status, _, _) = https(&gate, "GET", "/whoami?user=a", b"").await.unwrap();
    assert_eq!(status, 504);
}

/// Read with raw frames rather than tungstenite: tungstenite (through 0.30)
/// rejects the IANA-registered code 1014 as "Bad" and answers 1002, while
/// browsers and Python's `websockets` accept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_gives_its_clients_close_1014() {
    let b1 = Backend::start("b1").unwrap();
    let b2 = Backend::start("b2").unwrap();
    let gate = Gate::start(
        &tls_config(&[("b1", b1.addr, 1), ("b2", b2.addr, 1)], ""),
        1,
    )
    .unwrap();
    let victim_user = user_on(&["b1", "b2"], 0);
    let other_user = user_on(&["b1", "b2"], 1);
    let mut other = wss(&gate, &format!("/echo?user={other_user}"))
        .await
        .unwrap();
    assert_eq!(hello(&mut other).await.unwrap(), "b2");

    let mut victim = raw_ws(&gate, &format!("/echo?user={victim_user}"))
        .await
        .unwrap();
    b1.proc.signal("KILL");
    assert_eq!(read_close_code(&mut victim).await.unwrap(), Some(1014));
    echo_works(&mut other, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_101_answer_is_relayed_and_no_eligible_backend_is_503() {
    let b = Backend::start("b1").unwrap();
    let yaml = tls_config(
        &[("b1", b.addr, 1)],
        "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n",
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    // The backend has no WebSocket at /nowhere: its 404 reaches the client.
    let mut s = tls_stream(&gate).await.unwrap();
    let req = format!("GET /nowhere?user=a HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{KEY}Sec-WebSocket-Version: 13\r\n\r\n");
    let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
    assert_eq!(status_of(&resp), Some(404), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("x-backend-id: b1"),
        "the backend's own answer: {resp}"
    );
    // With its only backend drained, the pool has no one to take new users.
    let (code, out, err) = gate.cli(&["drain", "chat/b1", "--window", "1s"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let (status, _, body) = https(&gate, "GET", "/whoami?user=a", b"").await.unwrap();
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_client_gets_its_backend_a_close_1001() {
    let (b, closes) = Backend::start_counting("b1", &["close received", "1001"]).unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ""), 1).unwrap();
    let s = raw_ws(&gate, "/echo?user=ghost").await.unwrap();
    // Gone without a Close frame: just the TCP connection dropping.
    drop(s);
    let deadline = std::time::Instant::now() + STEP;
    while closes.get() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backend never saw a Close"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_ws_listener_works() {
    let b = Backend::start("b1").unwrap();
    let yaml = format!(
        "listeners: [{{ name: plain, address: \"127.0.0.1:0\" }}]\nroutes: [{{ pool: chat, sticky_key: [\"query:user\"] }}]\n\
         pools: {{ chat: {{ backends: [{{ id: b1, address: \"{}\" }}] }} }}\n",
        b.addr
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    let url = format!("ws://127.0.0.1:{}/echo?user=plain", gate.addr().port());
    let (mut ws, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hello(&mut ws).await.unwrap(), "b1");
    echo_works(&mut ws, "over plain ws").await;
    let mut tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(gate.addr()))
        .await
        .unwrap()
        .unwrap();
    let resp = raw_request(
        &mut tcp,
        b"GET /whoami?user=x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status_of(&resp), Some(200));
    assert!(resp.contains("\"x-forwarded-proto\":\"http\""), "{resp}");
}

/// Issue 11, item 4: an upgrade request with a body would be forwarded and
/// read by the backend as WebSocket data the frame tracker never saw;
/// doubled or missing headers let wsgate and the backend read different
/// requests. Each gets 400, and the other clients keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_with_a_body_or_ambiguous_headers_are_refused() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ""), 1).unwrap();
    let mut bystander = wss(&gate, "/echo?user=bystander").await.unwrap();
    hello(&mut bystander).await.unwrap();

    let up = "Upgrade: websocket\r\nConnection: Upgrade\r\n";
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    // A masked Text frame "hi", hidden in the body.
    let frame = encode_frame(0x1, true, b"hi", Some([1, 2, 3, 4]));
    let mut with_body = format!(
        "GET /echo HTTP/1.1\r\nHost: localhost\r\n{up}{KEY}{v13}Content-Length: {}\r\n\r\n",
        frame.len()
    )
    .into_bytes();
    with_body.extend_from_slice(&frame);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("body with Content-Length", with_body),
        ("chunked body", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{up}{KEY}{v13}Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes()),
        ("two keys", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{up}{KEY}Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n{v13}\r\n").into_bytes()),
        ("two versions", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{up}{KEY}{v13}Sec-WebSocket-Version: 8\r\n\r\n").into_bytes()),
        ("two hosts", format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nHost: admin.internal\r\n{up}{KEY}{v13}\r\n").into_bytes()),
        ("no host", format!("GET /echo HTTP/1.1\r\n{up}{KEY}{v13}\r\n").into_bytes()),
        ("absolute URI for another host", format!("GET https://admin.internal/echo HTTP/1.1\r\nHost: localhost\r\n{up}{KEY}{v13}\r\n").into_bytes()),
    ];
    for (name, req) in cases {
        let mut s = tls_stream(&gate).await.unwrap();
        let resp = raw_request(&mut s, &req).await.unwrap();
        assert_eq!(status_of(&resp), Some(400), "{name}: {resp}");
        echo_works(&mut bystander, name).await;
    }
    // `Content-Length: 0` announces no body: still a WebSocket.
    let mut s = tls_stream(&gate).await.unwrap();
    let req =
        format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{up}{KEY}{v13}Content-Length: 0\r\n\r\n");
    let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
    assert_eq!(status_of(&resp), Some(101), "{resp}");
}

/// Issue 11, item 4: a backend's 101 must answer the client's key with the
/// right Sec-WebSocket-Accept and say `Upgrade: websocket`; otherwise
/// nothing on the other side speaks WebSocket, and the client gets 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_does_not_answer_the_key_is_a_502() {
    for (name, answer) in [
        ("wrong accept", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"),
        ("no upgrade header", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"),
    ] {
        let addr = canned_backend(answer.to_string()).await.unwrap();
        let gate = Gate::start(&tls_config(&[("b1", addr, 1)], ""), 1).unwrap();
        let mut s = tls_stream(&gate).await.unwrap();
        let req = format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{KEY}Sec-WebSocket-Version: 13\r\n\r\n");
        let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
        assert_eq!(status_of(&resp), Some(502), "{name}: {resp}");
    }
}

/// What the backend may say that the lean upgrade path must read as hyper
/// did: many header lines, an interim 100 before the 101, and a refusal
/// whose chunked body contradicts its Content-Length. The refusal must reach
/// the client with the decoded body and a length that matches it, so the
/// next response on the kept-alive connection is where the client expects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_backend_answers_are_read_and_relayed_faithfully() {
    let accept = "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
    let many: String = (0..60).map(|i| format!("x-h{i}: v{i}\r\n")).collect();
    let upgrade = format!("GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{KEY}Sec-WebSocket-Version: 13\r\n\r\n");
    for (name, answer) in [
        ("60 headers", format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}{many}\r\n")),
        ("100 first", format!("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{accept}\r\n")),
    ] {
        let addr = canned_backend(answer).await.unwrap();
        let gate = Gate::start(&tls_config(&[("b1", addr, 1)], ""), 1).unwrap();
        let mut s = tls_stream(&gate).await.unwrap();
        let resp = raw_request(&mut s, upgrade.as_bytes()).await.unwrap();
        assert_eq!(status_of(&resp), Some(101), "{name}: {resp}");
        if name == "60 headers" {
            assert!(resp.contains("x-h59: v59"), "{resp}");
        }
    }

    let smuggled = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno";
    let body = format!("denied{smuggled}");
    let refusal = format!(
        "HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let addr = canned_backend(refusal).await.unwrap();
    let gate = Gate::start(&tls_config(&[("b1", addr, 1)], ""), 1).unwrap();
    let mut s = tls_stream(&gate).await.unwrap();
    for round in 0..2 {
        let resp = raw_request(&mut s, upgrade.as_bytes()).await.unwrap();
        assert_eq!(status_of(&resp), Some(403), "round {round}: {resp}");
        let lower = resp.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("content-length: {}\r\n", body.len())),
            "round {round}: the length must be the decoded body's: {resp}"
        );
        assert!(resp.ends_with(&body), "round {round}: {resp}");
        assert!(!lower.contains("transfer-encoding"), "{resp}");
    }
}
