//! Rolling deploys: drain, undrain, reload, add with migrate or keep,
//! health checks, admin auth, and the zero-downtime restart. Real wsgate,
//! real backends, real clients, and the real `wsgate` CLI.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate::routing::ring::{key_hash, Ring};
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// What happened to one client while it watched its connection.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub user: String,
    pub backend: String,
    /// Close code and when it arrived.
    pub close: Option<(u16, Instant)>,
    pub error: Option<String>,
    other_messages: usize,
}

/// Connects `n` users (user-0..) and returns them with their backend.
pub(crate) async fn connect_many(gate: &Gate, n: usize, prefix: &str) -> Vec<(String, String, Ws)> {
    stream::iter(0..n)
        .map(|i| async move {
            let user = format!("{prefix}{i}");
            let mut ws = wss(gate, &format!("/echo?user={user}")).await.unwrap();
            let b = hello(&mut ws).await.unwrap();
            (user, b, ws)
        })
        .buffer_unordered(24)
        .collect()
        .await
}

/// Reads until a Close, an error, or `until`; replies to the Close (tungstenite does).
async fn watch(user: String, backend: String, mut ws: Ws, until: Instant) -> (Seen, Option<Ws>) {
    let mut seen = Seen {
        user,
        backend,
        close: None,
        error: None,
        other_messages: 0,
    };
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => return (seen, Some(ws)),
            Ok(None) => return (seen, None),
            Ok(Some(Err(e))) => {
                seen.error = Some(e.to_string());
                return (seen, None);
            }
            Ok(Some(Ok(Message::Close(f)))) => {
                seen.close = Some((f.map_or(1005, |f| u16::from(f.code)), Instant::now()));
                // Drive the close handshake to its end.
                let _ = tokio::time::timeout(STEP, ws.next()).await;
                return (seen, None);
            }
            Ok(Some(Ok(_))) => seen.other_messages += 1,
        }
    }
}

/// Backends with these ids behind one wsgate (TLS, sticky on `?user=`),
/// with `extra` YAML appended to the config.
fn cluster(ids: &[&str], extra: &str) -> (Vec<Backend>, Gate) {
    let backends: Vec<Backend> = ids.iter().map(|id| Backend::start(id).unwrap()).collect();
    let gate = Gate::start(&tls_config(&ids_of(&backends), extra), 1).unwrap();
    (backends, gate)
}

/// Watches every client until `until` (see `watch`).
pub(crate) fn watch_all(
    clients: Vec<(String, String, Ws)>,
    until: Instant,
) -> Vec<tokio::task::JoinHandle<(Seen, Option<Ws>)>> {
    clients
        .into_iter()
        .map(|(u, b, ws)| tokio::spawn(watch(u, b, ws, until)))
        .collect()
}

fn run_cli(gate: &Gate, args: &[&str]) -> (i32, String, String) {
    gate.cli(args).unwrap()
}

fn ids_of(backends: &[Backend]) -> Vec<(&str, SocketAddr, u32)> {
    backends
        .iter()
        .map(|b| (b.id.as_str(), b.addr, 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_only_b2_with_1012_spread_over_the_window() {
    let b1 = Backend::start("b1").unwrap();
    let (b2, b2_closes) = Backend::start_counting("b2", &["close received", "1001"]).unwrap();
    let b3 = Backend::start("b3").unwrap();
    let backends = [b1, b2, b3];
    let yaml = tls_config(
        &ids_of(&backends),
        &format!("timeouts: {{ close: 2s }}\n{ADMIN}"),
    );
    let gate = Gate::start(&yaml, 1).unwrap();
    let clients = connect_many(&gate, 300, "user-").await;
    let on_b2 = clients.iter().filter(|c| c.1 == "b2").count();
    assert!(on_b2 > 60, "b2 has {on_b2} of 300");

    let start = Instant::now();
    let until = start + Duration::from_secs(3 + 2 + 3);
    let watchers = watch_all(clients, until);
    let handle = gate.cli_handle();
    let cli = tokio::task::spawn_blocking(move || {
        handle
            .run(&["drain", "chat/b2", "--window", "3s", "--wait"])
            .unwrap()
    });

    // While draining, b2's users land elsewhere.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ring = Ring::new([("b1", 1), ("b2", 1), ("b3", 1)]);
    let b2_user = (0..)
        .map(|i| format!("new-{i}"))
        .find(|u| ring.pick(key_hash(u.as_bytes())) == Some(1))
        .unwrap();
    let landed = backend_of(&gate, &b2_user).await.unwrap();
    assert_ne!(landed, "b2", "a draining backend takes no new users");

    let (code, out, err) = cli.await.unwrap();
    assert_eq!(code, 0, "drain --wait: {out}{err}");
    assert!(out.contains("no connections left"), "{out}");
    let mut seen = Vec::new();
    for w in watchers {
        let (s, ws) = w.await.unwrap();
        seen.push((s, ws));
    }
    let mut times = Vec::new();
    for (s, ws) in &mut seen {
        if s.backend == "b2" {
            let (code, at) = s
                .close
                .unwrap_or_else(|| panic!("{} on b2 got no Close: {s:?}", s.user));
            assert_eq!(code, 1012, "{s:?}");
            assert!(
                at - start <= Duration::from_secs(5),
                "closed within window + close timeout"
            );
            times.push(at - start);
        } else {
            assert!(
                s.close.is_none() && s.error.is_none() && s.other_messages == 0,
                "disturbed: {s:?}"
            );
            let ws = ws.as_mut().unwrap();
            ws.send(Message::text("still here")).await.unwrap();
            assert_eq!(next(ws).await.unwrap(), Message::text("still here"));
        }
    }
    assert_eq!(times.len(), on_b2);
    assert_spread(&times, Duration::from_secs(3));
    // b2 itself saw a Close (1001) for every one of its connections.
    let deadline = Instant::now() + STEP;
    while b2_closes.get() < on_b2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b2_closes.get(), on_b2);
}

/// Sends fragmented messages and checks each echo until the Close arrives.
async fn stream_until_closed(mut ws: Ws, seed: u8) -> (usize, u16) {
    let mut verified = 0;
    loop {
        let parts: Vec<Vec<u8>> = (0..3u8)
            .map(|p| vec![seed.wrapping_add(p).wrapping_add(verified as u8); 60_000])
            .collect();
        for (i, part) in parts.iter().enumerate() {
            if ws.send(fragment(part, i, parts.len())).await.is_err() {
                break;
            }
        }
        loop {
            match next(&mut ws).await {
                Ok(Message::Binary(got)) => {
                    assert!(
                        got[..] == parts.concat()[..],
                        "an echoed message arrived corrupted"
                    );
                    verified += 1;
                    break;
                }
                Ok(Message::Close(f)) => return (verified, f.map_or(1005, |f| u16::from(f.code))),
                Ok(Message::Pong(_)) => {}
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => panic!("stream broke (a cut frame?): {e:#}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_during_large_fragmented_streams_cuts_no_frame() {
    let (_backends, gate) = cluster(
        &["b1", "b2"],
        &format!("timeouts: {{ close: 3s }}\n{ADMIN}"),
    );
    let clients = connect_many(&gate, 24, "streamer-").await;
    let tasks: Vec<_> = clients
        .into_iter()
        .filter(|c| c.1 == "b2")
        .enumerate()
        .map(|(i, (_, _, ws))| tokio::spawn(stream_until_closed(ws, i as u8)))
        .collect();
    assert!(!tasks.is_empty());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let handle = gate.cli_handle();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        handle
            .run(&[
                "drain",
                "chat/b2",
                "--window",
                "2s",
                "--wait",
                "--timeout",
                "20s",
            ])
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    for t in tasks {
        let (verified, code) = t.await.unwrap();
        assert!(
            verified > 0,
            "each stream completed messages before the drain"
        );
        assert_eq!(code, 1012);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undrain_halfway_leaves_the_rest_open() {
    let (_backends, gate) = cluster(
        &["b1", "b2", "b3"],
        &format!("timeouts: {{ close: 1s }}\n{ADMIN}"),
    );
    let clients = connect_many(&gate, 150, "u-").await;
    let on_b2: Vec<_> = clients.into_iter().filter(|c| c.1 == "b2").collect();
    let n = on_b2.len();
    let until = Instant::now() + Duration::from_secs(8);
    let watchers = watch_all(on_b2, until);
    assert_eq!(run_cli(&gate, &["drain", "chat/b2", "--window", "4s"]).0, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, out, _) = run_cli(&gate, &["undrain", "chat/b2"]);
    assert_eq!(code, 0);
    assert!(out.contains("pending closes cancelled"), "{out}");
    let mut open = Vec::new();
    let mut closed = 0;
    for w in watchers {
        match w.await.unwrap() {
            (s, Some(ws)) if s.close.is_none() => open.push(ws),
            (s, _) => {
                assert_eq!(s.close.map(|c| c.0), Some(1012), "{s:?}");
                closed += 1;
            }
        }
    }
    assert!(
        closed > 0 && !open.is_empty(),
        "{closed} closed, {} open of {n}",
        open.len()
    );
    for ws in &mut open {
        ws.send(Message::text("kept")).await.unwrap();
        assert_eq!(next(ws).await.unwrap(), Message::text("kept"));
    }
    let (_, status, _) = run_cli(&gate, &["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.contains("b2") && l.contains("active")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_b2_drains_it_and_a_broken_config_changes_nothing() {
    let extra = format!("    drain: {{ window: 1s }}\ntimeouts: {{ close: 1s }}\n{ADMIN}");
    let (backends, gate) = cluster(&["b1", "b2", "b3"], &extra);
    let clients = connect_many(&gate, 90, "r-").await;
    let until = Instant::now() + Duration::from_secs(5);
    let watchers = watch_all(clients, until);

    let kept = [("b1", backends[0].addr, 1), ("b3", backends[2].addr, 1)];
    let without_b2 = tls_config(&kept, &extra);
    std::fs::write(gate.dir.join("wsgate.yaml"), without_b2).unwrap();
    let (code, out, err) = run_cli(&gate, &["reload"]);
    assert_eq!(code, 0, "{out}{err}");
    for w in watchers {
        let (s, _) = w.await.unwrap();
        if s.backend == "b2" {
            assert_eq!(s.close.map(|c| c.0), Some(1012), "{s:?}");
        } else {
            assert!(s.close.is_none() && s.error.is_none(), "{s:?}");
        }
    }

    // A broken config is rejected with its position; the old one keeps serving.
    let broken = "listeners:\n  - name: public\n    adress: \"127.0.0.1:0\"\n";
    std::fs::write(gate.dir.join("wsgate.yaml"), broken).unwrap();
    let (code, _, err) = run_cli(&gate, &["reload"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("wsgate.yaml:3:") && err.contains("adress"),
        "{err}"
    );
    let (_, status, _) = run_cli(&gate, &["status"]);
    assert!(status.contains("last reload FAILED"), "{status}");
    assert!(
        !status
            .lines()
            .any(|l| l.contains(" b2 ") && l.contains("active")),
        "{status}"
    );
    let b = backend_of(&gate, "after-bad-reload").await.unwrap();
    assert!(b == "b1" || b == "b3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_b4_migrates_exactly_its_keys_or_keeps_them() {
    for policy in ["migrate", "keep"] {
        let b4 = Backend::start("b4").unwrap();
        let extra = format!("    rebalance: {policy}\n    drain: {{ window: 1s }}\ntimeouts: {{ close: 1s }}\n{ADMIN}");
        let (_backends, gate) = cluster(&["b1", "b2", "b3"], &extra);
        let clients = connect_many(&gate, 200, "m-").await;
        let until = Instant::now() + Duration::from_secs(4);
        let watchers = watch_all(clients, until);
        let (code, out, err) = run_cli(
            &gate,
            &[
                "backend",
                "add",
                "chat/b4",
                "--address",
                &b4.addr.to_string(),
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        let ring = Ring::new([("b1", 1), ("b2", 1), ("b3", 1), ("b4", 1)]);
        for w in watchers {
            let (s, _) = w.await.unwrap();
            let belongs_to_b4 = ring.pick(key_hash(s.user.as_bytes())) == Some(3);
            let moved = s.close.is_some();
            match policy {
                "migrate" => assert_eq!(moved, belongs_to_b4, "{s:?}"),
                _ => assert!(!moved, "keep moves nobody: {s:?}"),
            }
        }
        // New connections of b4's users go to b4 either way.
        let user = (0..)
            .map(|i| format!("n-{i}"))
            .find(|u| ring.pick(key_hash(u.as_bytes())) == Some(3))
            .unwrap();
        assert_eq!(backend_of(&gate, &user).await.unwrap(), "b4");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_marked_down_and_its_users_go_elsewhere() {
    let extra = format!(
        "    health_check: {{ path: /healthz, interval: 200ms, timeout: 200ms, fall: 2, rise: 1 }}\n{ADMIN}"
    );
    let (backends, gate) = cluster(&["b1", "b2", "b3"], &extra);
    backends[2].proc.signal("KILL");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, status, _) = run_cli(&gate, &["status"]);
        if status
            .lines()
            .any(|l| l.contains("b3") && l.contains("down"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "b3 not marked down: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ring = Ring::new([("b1", 1), ("b2", 1), ("b3", 1)]);
    let users: Vec<String> = (0..)
        .map(|i| format!("h-{i}"))
        .filter(|u| ring.pick(key_hash(u.as_bytes())) == Some(2))
        .take(5)
        .collect();
    for u in users {
        let b = backend_of(&gate, &u).await.unwrap();
        assert!(b == "b1" || b == "b2", "{u} went to {b}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_without_the_token_get_401_and_change_nothing() {
    let (_backends, gate) = cluster(&["b1", "b2"], ADMIN);
    let admin = gate.admin.unwrap();
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Basic Zm9vOmJhcg==\r\n",
    ] {
        for (method, path) in [
            ("POST", "/v1/pools/chat/backends/b2/drain"),
            ("GET", "/v1/status"),
            ("POST", "/v1/reload"),
        ] {
            let mut s = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(admin))
                .await
                .unwrap()
                .unwrap();
            let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n");
            let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
            assert_eq!(
                status_of(&resp),
                Some(401),
                "{method} {path} with {auth:?}: {resp}"
            );
        }
    }
    let (code, status, _) = run_cli(&gate, &["status"]);
    assert_eq!(code, 0);
    assert!(
        status.lines().filter(|l| l.contains("active")).count() == 2,
        "{status}"
    );
    // With the token, /metrics speaks Prometheus text.
    let token = std::fs::read_to_string(gate.dir.join("admin.token")).unwrap();
    let mut s = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(admin))
        .await
        .unwrap()
        .unwrap();
    let req = format!(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    );
    let resp = raw_request(&mut s, req.as_bytes()).await.unwrap();
    assert_eq!(status_of(&resp), Some(200), "{resp}");
    assert!(
        resp.contains("# TYPE wsgate_backend_connections gauge"),
        "{resp}"
    );
    assert!(
        resp.contains("wsgate_backend_up{pool=\"chat\",backend=\"b2\",state=\"active\"} 1"),
        "{resp}"
    );
    assert!(
        resp.contains("wsgate_config_reloads_total{result=\"ok\"} 0"),
        "{resp}"
    );
    // The CLI with a wrong token fails cleanly too.
    let out = std::process::Command::new(bin("wsgate"))
        .args([
            "drain",
            "chat/b2",
            "--admin",
            &admin.to_string(),
            "--token",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bearer token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_downtime_restart_refuses_no_connection() {
    let b1 = Backend::start("b1").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = tls_config(
        &[("b1", b1.addr, 1)],
        "runtime: { shutdown_window: 1s, upgrade_sock: up.sock }\ntimeouts: { close: 1s }\n",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let dir = scratch("upgrade");
    let mut old = Gate::start_in(dir.clone(), &yaml, 1).unwrap();
    let mut resident = raw_ws(&old, "/echo?user=resident").await.unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let (addr, cert) = (old.addr(), old.cert());
    let looper = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            match raw_probe(addr, &cert).await {
                Ok(()) => ok += 1,
                Err(e) => failed.push(format!("{e:#}")),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ok, failed)
    });

    let (d, y) = (dir.clone(), yaml.clone());
    let new = tokio::task::spawn_blocking(move || Gate::launch(d, &y, 1, &["--upgrade"]));
    let deadline = Instant::now() + STEP;
    while !dir.join("up.sock").exists() {
        assert!(
            Instant::now() < deadline,
            "new process never opened the upgrade socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    old.proc.signal("QUIT");
    let new = new.await.unwrap().unwrap();
    // The old process drains its WebSockets with 1001, then exits cleanly.
    assert_eq!(read_close_code(&mut resident).await.unwrap(), Some(1001));
    let code = tokio::task::spawn_blocking(move || old.proc.wait_exit(STEP))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = looper.await.unwrap();
    assert!(
        failed.is_empty(),
        "connections failed across the handoff: {failed:?}"
    );
    assert!(ok > 20, "the loop kept connecting ({ok})");
    assert_eq!(backend_of(&new, "after").await.unwrap(), "b1");
}

/// The two other ways to reload: SIGHUP, and simply saving the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_saving_the_file_both_reload() {
    let extra = format!("    drain: {{ window: 1s }}\ntimeouts: {{ close: 1s }}\n{ADMIN}");
    let (backends, gate) = cluster(&["b1", "b2", "b3"], &extra);
    let ring = Ring::new([("b1", 1), ("b2", 1), ("b3", 1)]);
    let user_of = |index: usize| {
        (0..)
            .map(|i| format!("hup-{i}"))
            .find(|u| ring.pick(key_hash(u.as_bytes())) == Some(index))
            .unwrap()
    };
    let (b2_user, b3_user) = (user_of(1), user_of(2));
    // Saving the file: b3 removed, noticed within about a second.
    let without_b3 = [("b1", backends[0].addr, 1), ("b2", backends[1].addr, 1)];
    std::fs::write(
        gate.dir.join("wsgate.yaml"),
        tls_config(&without_b3, &extra),
    )
    .unwrap();
    let deadline = Instant::now() + STEP;
    while backend_of(&gate, &b3_user).await.unwrap() == "b3" {
        assert!(
            Instant::now() < deadline,
            "the saved file was never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGHUP: b2 removed too. If the file watcher saw this write, the test
    // would pass without SIGHUP, so the file's modification time is put
    // back after writing and the test first checks nothing changed.
    let path = gate.dir.join("wsgate.yaml");
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let only_b1 = [("b1", backends[0].addr, 1)];
    std::fs::write(&path, tls_config(&only_b1, &extra)).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(before)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        backend_of(&gate, &b2_user).await.unwrap(),
        "b2",
        "not reloaded yet"
    );
    gate.proc.signal("HUP");
    let deadline = Instant::now() + STEP;
    while backend_of(&gate, &b2_user).await.unwrap() != "b1" {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn raw_probe(addr: std::net::SocketAddr, cert: &std::path::Path) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(client_tls(cert)?);
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut s = connector.connect(name, tcp).await?;
    let req = "GET /echo?user=looper HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    s.write_all(req.as_bytes()).await?;
    let head = read_head(&mut s).await?;
    let text = String::from_utf8_lossy(&head).to_lowercase();
    if !text.starts_with("http/1.1 101") || !text.contains("upgrade") {
        anyhow::bail!("bad head: {text:?}");
    }
    Ok(())
}
