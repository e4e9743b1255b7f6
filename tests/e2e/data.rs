//! Data passes intact: messages of every size, fragments with pings between
//! them, close codes both ways, and raw frame bytes byte for byte.

use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

fn random_text(n: usize) -> String {
    // Mixed 1-, 2- and 3-byte characters, cut to about n bytes.
    let alphabet = ['a', 'Z', '7', 'é', 'ß', '€', '中', ' '];
    let mut s = String::with_capacity(n + 3);
    while s.len() < n {
        s.push(alphabet[rand::random::<usize>() % alphabet.len()]);
    }
    s
}

async fn gate_with_one_backend() -> (Backend, Gate) {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ""), 1).unwrap();
    (b, gate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_binary_messages_of_every_size_echo_intact() {
    let (_b, gate) = gate_with_one_backend().await;
    let mut ws = wss(&gate, "/echo?user=alice").await.unwrap();
    assert_eq!(hello(&mut ws).await.unwrap(), "b1");
    for size in [0, 1, 125, 126, 127, 65_535, 65_536, 1 << 20, 16 << 20] {
        let bin = random_bytes(size);
        ws.send(Message::binary(bin.clone())).await.unwrap();
        match next(&mut ws).await.unwrap() {
            Message::Binary(got) => assert!(got[..] == bin[..], "binary of {size} bytes corrupted"),
            other => panic!("expected binary echo of {size}, got {other:?}"),
        }
        let text = random_text(size);
        ws.send(Message::text(text.clone())).await.unwrap();
        match next(&mut ws).await.unwrap() {
            Message::Text(got) => assert!(got.as_str() == text, "text of {size} bytes corrupted"),
            other => panic!("expected text echo of {size}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_message_with_pings_between_fragments() {
    let (_b, gate) = gate_with_one_backend().await;
    let mut ws = wss(&gate, "/echo?user=bob").await.unwrap();
    hello(&mut ws).await.unwrap();
    let parts: Vec<Vec<u8>> = [1000, 70_000, 0, 5]
        .iter()
        .map(|&n| random_bytes(n))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        ws.send(fragment(part, i, parts.len())).await.unwrap();
        if !last {
            ws.send(Message::Ping(format!("p{i}").into_bytes().into()))
                .await
                .unwrap();
        }
    }
    let mut pongs = Vec::new();
    loop {
        match next(&mut ws).await.unwrap() {
            Message::Pong(p) => pongs.push(String::from_utf8_lossy(&p).into_owned()),
            Message::Binary(got) => {
                assert_eq!(got[..], parts.concat()[..], "reassembled message differs");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs, ["p0", "p1", "p2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_pass_in_both_directions() {
    let (_b, gate) = gate_with_one_backend().await;
    // Client-initiated: the backend echoes our code back.
    let mut ws = wss(&gate, "/echo?user=carol").await.unwrap();
    hello(&mut ws).await.unwrap();
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4000),
        reason: "client bye".into(),
    }))
    .await
    .unwrap();
    match next(&mut ws).await.unwrap() {
        Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4000, "client bye"))
        }
        other => panic!("expected close 4000, got {other:?}"),
    }
    // Server-initiated: the backend closes with the code we ask for.
    let mut ws = wss(&gate, "/echo?user=dave").await.unwrap();
    hello(&mut ws).await.unwrap();
    ws.send(Message::text("close:4001")).await.unwrap();
    match next(&mut ws).await.unwrap() {
        Message::Close(Some(f)) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4001, "bye"))
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
}

/// A raw backend that answers the upgrade, sends `to_client`, and returns
/// every byte it received after the handshake. With `glued`, the 101 and
/// `to_client` go out in a single write, so they reach wsgate together.
async fn raw_backend(
    to_client: Vec<u8>,
    glued: bool,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    use base64::Engine;
    use sha1::Digest;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = tokio::time::timeout(STEP, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let head = read_head(&mut s).await.unwrap();
        let head = String::from_utf8_lossy(&head).to_string();
        let key = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("sec-websocket-key: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Key: "))
            })
            .expect("key forwarded")
            .trim()
            .to_string();
        let accept = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(
            format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
        ));
        let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
        if glued {
            let mut all = resp.into_bytes();
            all.extend_from_slice(&to_client);
            s.write_all(&all).await.unwrap();
        } else {
            s.write_all(resp.as_bytes()).await.unwrap();
            // Odd-sized writes so frame headers straddle reads in the proxy.
            for chunk in to_client.chunks(7) {
                s.write_all(chunk).await.unwrap();
            }
        }
        let mut got = Vec::new();
        let _ = tokio::time::timeout(STEP, s.read_to_end(&mut got)).await;
        got
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frame_bytes_pass_unchanged_both_ways() {
    let mut to_client = Vec::new();
    to_client.extend(encode_frame(0x1, false, b"frag-one ", None));
    to_client.extend(encode_frame(0x9, true, b"ping!", None));
    to_client.extend(encode_frame(0x0, true, &random_bytes(70_000), None));
    to_client.extend(encode_frame(0x2, true, &[], None));
    let (addr, backend) = raw_backend(to_client.clone(), false).await;
    let gate = Gate::start(&tls_config(&[("raw", addr, 1)], ""), 1).unwrap();

    let mut s = tls_stream(&gate).await.unwrap();
    let req = "GET /echo?user=x HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await.unwrap();
    assert!(
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    assert!(String::from_utf8_lossy(&head).contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));

    let mut to_backend = Vec::new();
    to_backend.extend(encode_frame(
        0x2,
        false,
        &random_bytes(300),
        Some([1, 2, 3, 4]),
    ));
    to_backend.extend(encode_frame(0xA, true, b"pong", Some([9, 9, 9, 9])));
    to_backend.extend(encode_frame(
        0x0,
        true,
        &random_bytes(66_000),
        Some([0xde, 0xad, 0xbe, 0xef]),
    ));
    to_backend.extend(encode_frame(
        0x1,
        true,
        "héllo".as_bytes(),
        Some([0, 0, 0, 0]),
    ));
    for chunk in to_backend.chunks(5) {
        s.write_all(chunk).await.unwrap();
    }
    let mut got = vec![0u8; to_client.len()];
    tokio::time::timeout(STEP, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == to_client, "backend-to-client bytes changed");
    // Our own Close ends the exchange; the backend must see it verbatim too.
    let close = encode_frame(0x8, true, &1000u16.to_be_bytes(), Some([5, 6, 7, 8]));
    s.write_all(&close).await.unwrap();
    to_backend.extend(close);
    s.shutdown().await.unwrap();
    let received = tokio::time::timeout(STEP, backend).await.unwrap().unwrap();
    assert!(
        received == to_backend,
        "client-to-backend bytes changed ({} vs {} bytes)",
        received.len(),
        to_backend.len()
    );
}

/// A frame sent in the same packet as the upgrade request (client) or the
/// 101 (backend) is read by the HTTP layer along with the head; wsgate must
/// forward it first, byte for byte, on plain and TLS listeners alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_glued_to_the_handshake_are_forwarded() {
    for tls in [false, true] {
        let to_client = encode_frame(0x1, true, b"right behind the 101", None);
        let (addr, backend) = raw_backend(to_client.clone(), true).await;
        let mut yaml = tls_config(&[("raw", addr, 1)], "");
        if !tls {
            let plain = "listeners:\n  - { name: plain, address: \"127.0.0.1:0\" }\n";
            let start = yaml.find("routes:").unwrap();
            yaml.replace_range(..start, plain);
        }
        let gate = Gate::start(&yaml, 1).unwrap();
        let to_backend = encode_frame(0x2, true, &random_bytes(40), Some([7, 7, 7, 7]));
        let mut request = b"GET /echo?user=x HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec();
        request.extend_from_slice(&to_backend);
        let close = encode_frame(0x8, true, &1000u16.to_be_bytes(), Some([5, 6, 7, 8]));
        let got = if tls {
            let mut s = tls_stream(&gate).await.unwrap();
            exchange_glued(&mut s, &request, to_client.len(), &close).await
        } else {
            let connect = TcpStream::connect(gate.addr());
            let mut s = tokio::time::timeout(STEP, connect).await.unwrap().unwrap();
            exchange_glued(&mut s, &request, to_client.len(), &close).await
        };
        assert!(
            got == to_client,
            "tls={tls}: the backend's early frame changed"
        );
        let received = tokio::time::timeout(STEP, backend).await.unwrap().unwrap();
        let mut expected = to_backend.clone();
        expected.extend_from_slice(&close);
        assert!(
            received == expected,
            "tls={tls}: the client's early frame changed"
        );
    }
}

/// Sends `request` (a head with a frame glued on) in one write, checks the
/// 101, reads `n` bytes, then closes. Returns the bytes read.
async fn exchange_glued<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    request: &[u8],
    n: usize,
    close: &[u8],
) -> Vec<u8> {
    tokio::time::timeout(STEP, s.write_all(request))
        .await
        .unwrap()
        .unwrap();
    let head = read_head(s).await.unwrap();
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut got = vec![0u8; n];
    tokio::time::timeout(STEP, s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    s.write_all(close).await.unwrap();
    s.shutdown().await.unwrap();
    got
}
