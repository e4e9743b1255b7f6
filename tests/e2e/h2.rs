//! HTTP/2 toward clients: WebSockets over HTTP/2 streams (RFC 8441) and
//! plain requests, through a real wsgate to real chat backends, from a
//! client on the `h2` crate (`wsgate_tests::h2client`).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::h2client::{H2Conn, H2Ws, Opened};
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

fn gate_of(backends: &[Backend], extra: &str) -> Gate {
    Gate::start(&tls_config(&weight_one(backends), extra), 1).unwrap()
}

async fn open_ws(conn: &H2Conn, path: &str) -> Box<H2Ws> {
    match conn.websocket(path, &[]).await.unwrap() {
        Opened::WebSocket(_, ws) => ws,
        Opened::Refused(status, _, body) => panic!("{path}: refused {status}: {body}"),
    }
}

async fn next_h2(ws: &mut H2Ws) -> Message {
    match tokio::time::timeout(STEP, ws.next()).await {
        Ok(Some(Ok(m))) => m,
        other => panic!("no message: {other:?}"),
    }
}

async fn hello_h2(ws: &mut H2Ws) -> String {
    let text = next_h2(ws).await.into_text().unwrap();
    let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
    assert_eq!(v["type"], "hello", "{text}");
    v["backend"].as_str().unwrap().to_string()
}

/// Sends a `size`-byte message cut into three fragments with a Ping
/// between each, and checks the echo and both Pongs.
async fn echo_fragmented(ws: &mut H2Ws, size: usize, seed: u8) {
    let message: Vec<u8> = (0..size)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect();
    let cut = [0, size / 3, 2 * size / 3, size];
    for i in 0..3 {
        ws.send(fragment(&message[cut[i]..cut[i + 1]], i, 3))
            .await
            .unwrap();
        if i < 2 {
            ws.send(Message::Ping(format!("p{i}").into_bytes().into()))
                .await
                .unwrap();
        }
    }
    let mut pongs = Vec::new();
    loop {
        match next_h2(ws).await {
            Message::Pong(p) => pongs.push(String::from_utf8_lossy(&p).into_owned()),
            Message::Binary(got) => {
                assert!(got[..] == message[..], "{size} B echoed differently");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pongs, ["p0", "p1"], "{size} B");
}

/// Live WebSocket connections per backend id, from the admin API.
async fn connections(gate: &Gate) -> HashMap<String, u64> {
    let (code, resp) = admin_call(gate, "GET", "/v1/status").await.unwrap();
    assert_eq!(code, 200, "{resp}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let mut out = HashMap::new();
    fn walk(v: &serde_json::Value, out: &mut HashMap<String, u64>) {
        match v {
            serde_json::Value::Object(m) => {
                if let (Some(id), Some(n)) = (
                    m.get("id").and_then(|i| i.as_str()),
                    m.get("connections").and_then(|n| n.as_u64()),
                ) {
                    out.insert(id.to_string(), n);
                }
                m.values().for_each(|x| walk(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&v, &mut out);
    out
}

/// Polls the admin API until `want` holds, bounded by STEP.
async fn wait_connections(gate: &Gate, want: impl Fn(&HashMap<String, u64>) -> bool) {
    let until = tokio::time::Instant::now() + STEP;
    loop {
        let now = connections(gate).await;
        if want(&now) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "connections stayed {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_websocket_streams_on_one_connection_reach_their_users_backends() {
    let backends = start_backends(&["b1", "b2", "b3"]);
    let gate = gate_of(&backends, ADMIN);
    let users: Vec<String> = (0..100).map(|i| format!("h2-user-{i}")).collect();
    // Where HTTP/1.1 sends each user.
    let over_h1: HashMap<String, String> = stream::iter(users.clone())
        .map(|u| {
            let gate = &gate;
            async move {
                let b = backend_of(gate, &u).await.unwrap();
                (u, b)
            }
        })
        .buffer_unordered(20)
        .collect()
        .await;

    let conn = H2Conn::open(&gate).await.unwrap();
    let mut streams = Vec::new();
    for u in &users {
        let mut ws = open_ws(&conn, &format!("/echo?user={u}")).await;
        let backend = hello_h2(&mut ws).await;
        assert_eq!(
            backend, over_h1[u],
            "{u} reached another backend over HTTP/2"
        );
        streams.push(ws);
    }
    let distinct: std::collections::HashSet<_> = over_h1.values().collect();
    assert_eq!(distinct.len(), 3, "100 users use all three backends");
    wait_connections(&gate, |c| c.values().sum::<u64>() == 100).await;

    // Every stream at once: 0 B to 1 MiB, fragmented, Pings between.
    let sizes = [0usize, 1, 125, 126, 65_535, 65_536, 1 << 20];
    let done: Vec<Box<H2Ws>> = stream::iter(streams.into_iter().enumerate())
        .map(|(i, mut ws)| async move {
            for size in sizes {
                echo_fragmented(&mut ws, size, i as u8).await;
            }
            ws
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let mut done = done;
    assert_eq!(done.len(), 100);

    // Ten streams close (a normal close handshake); the other ninety, on
    // the same connection, go on.
    for ws in done.iter_mut().take(10) {
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        H2Ws::close(&mut **ws, Some(normal)).await.unwrap();
        assert_eq!(close_within(ws, STEP).await, Some(1000));
    }
    for ws in done.iter_mut().skip(10) {
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(next_h2(ws).await, Message::text("still here"));
    }
    wait_connections(&gate, |c| c.values().sum::<u64>() == 90).await;
    assert!(conn.is_open());

    // Plain requests over HTTP/2 have the same stickiness. (This
    // connection is at its 100 streams' limit until the closed ones are
    // released, so they go on a second one.)
    let plain = H2Conn::open(&gate).await.unwrap();
    for u in users.iter().take(10) {
        let (status, headers, body) = plain.get(&format!("/whoami?user={u}")).await.unwrap();
        assert_eq!(status, 200, "{headers:?}");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["backend"].as_str(), Some(over_h1[u].as_str()), "{u}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocols_pass_and_bad_extended_connects_get_their_status() {
    let backends = start_backends(&["b1"]);
    let gate = gate_of(&backends, "");
    let conn = H2Conn::open(&gate).await.unwrap();
    match conn
        .websocket("/echo?user=p", &[("sec-websocket-protocol", "chat, other")])
        .await
        .unwrap()
    {
        Opened::WebSocket(resp, mut ws) => {
            assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
            assert!(!resp.headers().contains_key("sec-websocket-accept"));
            assert_eq!(hello_h2(&mut ws).await, "b1");
        }
        Opened::Refused(s, _, b) => panic!("refused {s}: {b}"),
    }
    let bad: [(&[(&str, &str)], u16); 2] = [
        (&[("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")], 400),
        (&[("sec-websocket-version", "8")], 426),
    ];
    for (headers, want) in bad {
        match conn.websocket("/echo?user=p", headers).await.unwrap() {
            Opened::Refused(status, h, body) => {
                assert_eq!(status.as_u16(), want, "{headers:?}: {body}");
                if want == 426 {
                    assert_eq!(h["sec-websocket-version"], "13");
                }
            }
            Opened::WebSocket(..) => panic!("{headers:?} was accepted"),
        }
    }
    let other = http::Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(format!("https://localhost:{}/echo", conn.port))
        .extension(::h2::ext::Protocol::from_static("webtransport"))
        .body(())
        .unwrap();
    match conn.connect(other).await.unwrap() {
        Opened::Refused(status, _, _) => assert_eq!(status.as_u16(), 501),
        Opened::WebSocket(..) => panic!("webtransport was accepted"),
    }
    // The connection that sent all of that still serves WebSockets.
    let mut ws = open_ws(&conn, "/echo?user=p").await;
    assert_eq!(hello_h2(&mut ws).await, "b1");
    echo_fragmented(&mut ws, 1000, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_policy_applies_to_websockets_over_http2() {
    let backends = start_backends(&["b1"]);
    let yaml = tls_config(&weight_one(&backends), "").replace(
        "    pool: chat\n",
        "    pool: chat\n    allowed_origins: [\"https://ok.example\"]\n",
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    let conn = H2Conn::open(&gate).await.unwrap();
    for origin in [None, Some("https://evil.example")] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        match conn.websocket("/echo?user=o", &headers).await.unwrap() {
            Opened::Refused(status, _, _) => assert_eq!(status.as_u16(), 403, "{origin:?}"),
            Opened::WebSocket(..) => panic!("origin {origin:?} was let through"),
        }
    }
    let mut ws = match conn
        .websocket("/echo?user=o", &[("origin", "https://ok.example")])
        .await
        .unwrap()
    {
        Opened::WebSocket(_, ws) => ws,
        Opened::Refused(s, _, b) => panic!("refused {s}: {b}"),
    };
    assert_eq!(hello_h2(&mut ws).await, "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_only_the_drained_backends_streams_with_1012_spread_over_the_window() {
    let backends = start_backends(&["b1", "b2", "b3"]);
    let gate = gate_of(&backends, &format!("timeouts: {{ close: 1s }}\n{ADMIN}"));
    // Two connections, each carrying streams of all three backends.
    let conns = [
        H2Conn::open(&gate).await.unwrap(),
        H2Conn::open(&gate).await.unwrap(),
    ];
    let mut on: HashMap<String, Vec<Box<H2Ws>>> = HashMap::new();
    for i in 0..150 {
        let mut ws = open_ws(&conns[i % 2], &format!("/echo?user=d{i}")).await;
        let b = hello_h2(&mut ws).await;
        on.entry(b).or_default().push(ws);
    }
    assert_eq!(on.len(), 3, "150 users use all three backends");
    let drained = on.remove("b2").unwrap();
    let n = drained.len();
    assert!(n > 20, "b2 has {n} of 150");
    let window = Duration::from_secs(2);
    let start = tokio::time::Instant::now();
    // Every drained stream is watched from before the drain begins.
    let watched = tokio::spawn(async move {
        stream::iter(drained)
            .map(|mut ws| async move {
                let code = close_within(&mut ws, Duration::from_secs(10)).await;
                (code, start.elapsed())
            })
            .buffer_unordered(usize::MAX)
            .collect::<Vec<_>>()
            .await
    });
    let (code, out, err) = gate.cli(&["drain", "chat/b2", "--window", "2s"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let closes = tokio::time::timeout(Duration::from_secs(15), watched)
        .await
        .unwrap()
        .unwrap();
    let codes: Vec<Option<u16>> = closes.iter().map(|c| c.0).collect();
    assert_eq!(codes, vec![Some(1012); n]);
    let times: Vec<Duration> = closes.iter().map(|c| c.1).collect();
    assert!(
        times.iter().all(|t| *t <= window + Duration::from_secs(2)),
        "closed within the window and the close timeout: {times:?}"
    );
    assert_spread(&times, window);
    // The others, on the same connections, were not disturbed.
    for (b, list) in on.iter_mut() {
        for ws in list.iter_mut() {
            ws.send(Message::text(format!("still {b}"))).await.unwrap();
            assert_eq!(next_h2(ws).await, Message::text(format!("still {b}")));
        }
    }
    assert!(conns.iter().all(H2Conn::is_open));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_the_connection_limit_gets_503_and_the_others_go_on() {
    let backends = start_backends(&["b1"]);
    // The TLS connection holds one slot and each WebSocket stream another,
    // as the HTTP/1.1 connection it replaces would.
    let gate = gate_of(&backends, "limits: { max_connections: 3 }\n");
    let conn = H2Conn::open(&gate).await.unwrap();
    let mut a = open_ws(&conn, "/echo?user=a").await;
    hello_h2(&mut a).await;
    let mut b = open_ws(&conn, "/echo?user=b").await;
    hello_h2(&mut b).await;
    match conn.websocket("/echo?user=c", &[]).await.unwrap() {
        Opened::Refused(status, headers, _) => {
            assert_eq!(status, 503);
            assert_eq!(headers.get("retry-after").unwrap(), "5");
        }
        Opened::WebSocket(..) => panic!("a stream over max_connections was admitted"),
    }
    // The refusal was that stream's alone.
    echo_fragmented(&mut a, 70_000, 6).await;
    echo_fragmented(&mut b, 1000, 7).await;
    assert!(conn.is_open());
    // A stream that ends frees its slot for the next one.
    b.send(Message::Close(None)).await.unwrap();
    close_within(&mut b, STEP).await;
    let until = tokio::time::Instant::now() + STEP;
    let mut c = loop {
        match conn.websocket("/echo?user=c", &[]).await.unwrap() {
            Opened::WebSocket(_, ws) => break ws,
            Opened::Refused(status, ..) => {
                assert_eq!(status, 503);
                assert!(
                    tokio::time::Instant::now() < until,
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    hello_h2(&mut c).await;
    echo_fragmented(&mut a, 1000, 8).await;
}

/// The victim's frames are read raw: tungstenite refuses 1014 (see
/// `failures::killed_backend_gives_its_clients_close_1014`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_gives_its_streams_1014_and_no_one_else() {
    let backends = start_backends(&["b1", "b2"]);
    let gate = gate_of(&backends, "");
    let conn = H2Conn::open(&gate).await.unwrap();
    let victim_user = crate::failures::user_on(&["b1", "b2"], 0);
    let mut victim = conn
        .raw_websocket(&format!("/echo?user={victim_user}"))
        .await
        .unwrap();
    let (opcode, first) = read_frame(&mut victim).await.unwrap();
    assert_eq!(opcode, 0x1);
    let v: serde_json::Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(v["backend"], "b1");
    let other_user = crate::failures::user_on(&["b1", "b2"], 1);
    let mut other = open_ws(&conn, &format!("/echo?user={other_user}")).await;
    assert_eq!(hello_h2(&mut other).await, "b2");

    backends[0].proc.signal("KILL");
    assert_eq!(read_close_code(&mut victim).await.unwrap(), Some(1014));
    echo_fragmented(&mut other, 100_000, 5).await;
    assert!(conn.is_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_stream_and_a_rapid_reset_flood_disturb_nobody_else() {
    let backends = start_backends(&["b1"]);
    let gate = gate_of(&backends, ADMIN);
    let conn = H2Conn::open(&gate).await.unwrap();
    let mut kept = open_ws(&conn, "/echo?user=kept").await;
    hello_h2(&mut kept).await;
    let mut reset = open_ws(&conn, "/echo?user=gone").await;
    hello_h2(&mut reset).await;
    wait_connections(&gate, |c| c.get("b1") == Some(&2)).await;
    // The client resets one stream: its backend connection is closed
    // (with 1001, by the tunnel), the other stream goes on.
    reset.get_mut().reset();
    wait_connections(&gate, |c| c.get("b1") == Some(&1)).await;
    echo_fragmented(&mut kept, 70_000, 2).await;

    // Another client opens streams and resets them at once, many times.
    // Only the streams reset before wsgate accepted them count, so how
    // many it takes depends on timing: up to 20 000.
    let mut flood = H2Conn::open(&gate).await.unwrap();
    let mut sent = 0;
    let mut cut = None;
    for i in 0..20_000 {
        let opened = tokio::time::timeout(STEP, async {
            let req = http::Request::builder()
                .method(http::Method::GET)
                .version(http::Version::HTTP_2)
                .uri(format!("https://localhost:{}/whoami?user=f{i}", flood.port))
                .body(())
                .unwrap();
            flood.raw_request(req).await
        })
        .await;
        match opened {
            Ok(Ok(mut stream)) => {
                stream.send_reset(::h2::Reason::CANCEL);
                sent += 1;
            }
            // wsgate sent GOAWAY: the flood is over.
            Ok(Err(e)) => {
                cut = Some(e);
                break;
            }
            Err(_) => panic!("a stream could not be opened within {STEP:?}"),
        }
    }
    // h2 (under hyper) counts streams reset before they were accepted,
    // and past `limits.http2.max_pending_accept_reset_streams` it ends the
    // connection with GOAWAY ENHANCE_YOUR_CALM ("too_many_resets") and
    // closes it. The client learns the reason from the next stream it
    // tries to open, unless its own next write meets the closed socket
    // first (a broken pipe, which hides the GOAWAY): either is the cut.
    let cut = cut.expect("the flood was never cut off");
    match cut.downcast_ref::<::h2::Error>() {
        Some(e) if e.is_go_away() => {
            assert!(e.is_remote(), "{e:?}");
            assert_eq!(e.reason(), Some(::h2::Reason::ENHANCE_YOUR_CALM), "{e:?}");
        }
        Some(e) => assert!(e.is_io(), "{e:?}"),
        None => panic!("not an h2 error: {cut:?}"),
    }
    assert!(sent < 20_000, "the flood was never cut off");
    flood.ended().await.unwrap().ok();
    assert!(!flood.is_open());
    // Everyone else is still served: the kept stream, a new connection.
    echo_fragmented(&mut kept, 1 << 16, 3).await;
    let fresh = H2Conn::open(&gate).await.unwrap();
    let (status, _, _) = fresh.get("/whoami?user=x").await.unwrap();
    assert_eq!(status, 200);
    let mut ws = wss(&gate, "/echo?user=h1").await.unwrap();
    assert_eq!(hello(&mut ws).await.unwrap(), "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_listeners_take_prior_knowledge_and_http11_alike() {
    let backends = start_backends(&["b1"]);
    let yaml = plain_config(&weight_one(&backends), "").replace(
        "    address: \"127.0.0.1:0\"\n",
        "    address: \"127.0.0.1:0\"\n    h2c: true\n",
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    let conn = H2Conn::open_plain(&gate).await.unwrap();
    let mut ws = open_ws(&conn, "/echo?user=c").await;
    assert_eq!(hello_h2(&mut ws).await, "b1");
    echo_fragmented(&mut ws, 100_000, 4).await;
    let (status, _, _) = conn.get("/whoami?user=c").await.unwrap();
    assert_eq!(status, 200);
    // HTTP/1.1 on the same listener, WebSocket and plain.
    let url = format!("ws://127.0.0.1:{}/echo?user=c", gate.addr().port());
    let (mut h1, _) = tokio::time::timeout(STEP, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(hello(&mut h1).await.unwrap(), "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_then_a_1001_on_each_stream() {
    let backends = start_backends(&["b1"]);
    let gate = gate_of(&backends, "runtime: { shutdown_window: 1s }\n");
    let conn = H2Conn::open(&gate).await.unwrap();
    let mut a = open_ws(&conn, "/echo?user=a").await;
    hello_h2(&mut a).await;
    let mut b = open_ws(&conn, "/echo?user=b").await;
    hello_h2(&mut b).await;
    gate.proc.signal("TERM");
    assert_eq!(
        close_within(&mut a, Duration::from_secs(10)).await,
        Some(1001)
    );
    assert_eq!(
        close_within(&mut b, Duration::from_secs(10)).await,
        Some(1001)
    );
    // The GOAWAY came first, on the same connection: no new stream.
    let late = conn.websocket("/echo?user=c", &[]).await;
    assert!(
        !matches!(late, Ok(Opened::WebSocket(..))),
        "a stream was opened after GOAWAY"
    );
}

/// wsgate's resident memory, from /proc.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A measurement, not a check (run by hand, `-- --ignored --nocapture`):
/// wsgate's memory per idle WebSocket over HTTP/2 streams (100 per TLS
/// connection) against one wss connection each, in one run: each in a
/// wsgate process of its own, so neither inherits the other's free memory.
#[ignore]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_memory_per_websocket_h2_against_h1() {
    let backends = start_backends(&["b1", "b2"]);
    let n = 2000;
    let gate = gate_of(&backends, "");
    let pid = gate.proc.pid();
    // Warm up both paths once, so allocator arenas and pools exist.
    let warm = H2Conn::open(&gate).await.unwrap();
    let mut w = open_ws(&warm, "/echo?user=warm").await;
    hello_h2(&mut w).await;

    let before = rss_kib(pid);
    let conns: Vec<H2Conn> = stream::iter(0..n / 100)
        .map(|_| async { H2Conn::open(&gate).await.unwrap() })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut streams = Vec::new();
    for (c, conn) in conns.iter().enumerate() {
        let opened: Vec<Box<H2Ws>> = stream::iter(0..100)
            .map(|i| async move {
                let mut ws = open_ws(conn, &format!("/echo?user=m{c}-{i}")).await;
                hello_h2(&mut ws).await;
                ws
            })
            .buffer_unordered(100)
            .collect()
            .await;
        streams.extend(opened);
    }
    let h2_kib = rss_kib(pid) - before;
    assert_eq!(streams.len(), n);

    let gate = gate_of(&backends, "");
    let pid = gate.proc.pid();
    let mut w1 = wss(&gate, "/echo?user=warm").await.unwrap();
    hello(&mut w1).await.unwrap();
    let before = rss_kib(pid);
    let h1: Vec<Ws> = stream::iter(0..n)
        .map(|i| {
            let gate = &gate;
            async move {
                let mut ws = wss(gate, &format!("/echo?user=n{i}")).await.unwrap();
                hello(&mut ws).await.unwrap();
                ws
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let h1_kib = rss_kib(pid) - before;
    assert_eq!(h1.len(), n);
    println!(
        "idle WebSocket in wsgate: h2 stream {:.2} KiB, wss connection {:.2} KiB ({n} each)",
        h2_kib as f64 / n as f64,
        h1_kib as f64 / n as f64
    );
}
