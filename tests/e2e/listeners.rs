//! Listeners change by reload, without a restart: an added one starts, a
//! removed one stops accepting and closes its WebSockets with 1001 paced
//! over `runtime.shutdown_window`, a renamed one keeps its port without
//! refusing anyone, a port in use rejects the whole reload, and an upgrade
//! after a reload hands over exactly the listeners that run. The clients of
//! the other listeners are never touched.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;
use wsgate_tests::*;

const EXTRA: &str = "runtime: { shutdown_window: 2s, upgrade_sock: up.sock }\n\
timeouts: { close: 1s }\n\
admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// A config with these TLS listeners (name, address) in front of `b1`.
fn with_listeners(b1: SocketAddr, listeners: &[(&str, &str)]) -> String {
    let base = tls_config(&[("b1", b1, 1)], EXTRA);
    let rest = &base[base.find("routes:").unwrap_or(0)..];
    let mut yaml = String::from("listeners:\n");
    for (name, address) in listeners {
        yaml.push_str(&format!(
            "  - name: {name}\n    address: \"{address}\"\n    tls:\n      certificates:\n        - {{ cert: dev.crt, key: dev.key, generate_if_missing: true }}\n"
        ));
    }
    yaml + rest
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Writes `yaml` and reloads; returns (exit code, stdout, stderr).
fn reload(gate: &Gate, yaml: &str) -> (i32, String, String) {
    std::fs::write(gate.dir.join("wsgate.yaml"), yaml).unwrap();
    gate.cli(&["reload"]).unwrap()
}

/// The address of the listener `name`, from the readiness line the process
/// prints when it starts it. Not from the reload's notes: the file watcher
/// may have applied the saved file before `wsgate reload` ran.
fn started(gate: &Gate, name: &str) -> SocketAddr {
    let prefix = format!("wsgate: listener {name} on https://");
    let deadline = Instant::now() + STEP;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match gate.proc.lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(addr) = line
                    .strip_prefix(&prefix)
                    .and_then(|a| a.trim().parse().ok())
                {
                    return addr;
                }
            }
            Err(_) => break,
        }
    }
    panic!("listener `{name}` never said it started");
}

/// Opens `n` WebSockets on `addr`, each greeted by its backend.
async fn open(addr: SocketAddr, cert: &std::path::Path, n: usize, tag: &str) -> Vec<Ws> {
    stream::iter(0..n)
        .map(|i| async move {
            let mut ws = wss_at(addr, cert, &format!("/echo?user={tag}-{i}"))
                .await
                .unwrap();
            assert_eq!(hello(&mut ws).await.unwrap(), "b1");
            ws
        })
        .buffer_unordered(10)
        .collect()
        .await
}

/// Waits for a Close on `ws` until `until`; returns its code and arrival.
async fn close_of(mut ws: Ws, until: Instant) -> Option<(u16, Instant)> {
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(f)))) => {
                return Some((f.map_or(1005, |f| u16::from(f.code)), Instant::now()));
            }
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn echoes(ws: &mut Ws, text: &str) -> bool {
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    matches!(next(ws).await, Ok(Message::Text(t)) if t.as_str() == text)
}

/// Waits until nothing accepts on `addr` (the accept loop stops just after
/// the reload answers).
async fn refused(addr: SocketAddr) -> bool {
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        match tokio::time::timeout(STEP, tokio::net::TcpStream::connect(addr)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_listeners_and_paces_the_closes() {
    let b1 = Backend::start("b1").unwrap();
    let any = "127.0.0.1:0";
    let gate = Gate::start(&with_listeners(b1.addr, &[("keep", any), ("old", any)]), 2).unwrap();
    let (keep, old) = (gate.addrs[0], gate.addrs[1]);
    let cert = gate.cert();
    let kept = open(keep, &cert, 20, "k").await;
    let leaving = open(old, &cert, 20, "o").await;

    let (code, out, err) = reload(
        &gate,
        &with_listeners(b1.addr, &[("keep", any), ("new", any)]),
    );
    let reloaded = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    let new = started(&gate, "new");

    let until = reloaded + Duration::from_secs(6);
    let watchers: Vec<_> = leaving
        .into_iter()
        .map(|ws| tokio::spawn(close_of(ws, until)))
        .collect();
    // The new port serves, the removed one refuses.
    let mut fresh = open(new, &cert, 1, "n").await;
    assert!(echoes(&mut fresh[0], "on the new listener").await);
    assert!(refused(old).await, "the removed listener still accepts");

    let mut closes = Vec::new();
    for w in watchers {
        let close = w.await.unwrap();
        let (code, at) = close.expect("a client of the removed listener was not closed");
        assert_eq!(code, 1001);
        closes.push(at);
    }
    let first = closes.iter().min().copied().unwrap_or(reloaded);
    let last = closes.iter().max().copied().unwrap_or(reloaded);
    assert!(
        last - first >= Duration::from_secs(1),
        "20 closes over a 2 s window came within {:?}",
        last - first
    );
    assert!(
        last - reloaded <= Duration::from_millis(3500),
        "{:?}",
        last - reloaded
    );

    // Nobody on the listener that stayed was touched.
    for (i, mut ws) in kept.into_iter().enumerate() {
        assert!(
            echoes(&mut ws, &format!("still here {i}")).await,
            "kept {i}"
        );
    }
    let (_, status, _) = gate.cli(&["status"]).unwrap();
    assert!(
        status.contains("new") && !status.contains("old"),
        "certificates follow the listeners: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_keeps_the_port_and_a_port_in_use_rejects_the_reload() {
    let b1 = Backend::start("b1").unwrap();
    let (p1, p2) = (free_port(), free_port());
    let (a1, a2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    let gate = Gate::start(&with_listeners(b1.addr, &[("public", &a1)]), 1).unwrap();
    let cert = gate.cert();
    let addr1 = gate.addr();
    let mut resident = open(addr1, &cert, 1, "r").await.remove(0);

    // Clients keep connecting while the listener is renamed: the socket is
    // handed over, so none is refused.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, c) = (stop.clone(), cert.clone());
    let looper = tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            match wss_at(addr1, &c, "/echo?user=loop").await {
                Ok(mut ws) => match hello(&mut ws).await {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(format!("{e:#}")),
                },
                Err(e) => failed.push(format!("{e:#}")),
            }
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out, err) = reload(&gate, &with_listeners(b1.addr, &[("renamed", &a1)]));
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(started(&gate, "renamed"), addr1);
    // The renamed listener's old clients belong to a removed listener.
    let close = close_of(resident, Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(close.map(|c| c.0), Some(1001));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = looper.await.unwrap();
    assert!(failed.is_empty(), "refused across the rename: {failed:?}");
    assert!(ok > 5, "the loop kept connecting ({ok})");
    resident = open(addr1, &cert, 1, "r2").await.remove(0);

    // A port in use: the reload is rejected and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_at = taken.local_addr().unwrap().to_string();
    let yaml = with_listeners(b1.addr, &[("renamed", &a1), ("extra", &taken_at)]);
    let (code, out, err) = reload(&gate, &yaml);
    assert_ne!(code, 0, "{out}");
    assert!(
        err.contains("listener `extra`") && err.contains("already in use"),
        "{err}"
    );
    let (_, status, _) = gate.cli(&["status"]).unwrap();
    assert!(status.contains("last reload FAILED"), "{status}");
    assert!(echoes(&mut resident, "untouched by the failed reload").await);
    drop(taken);

    // A new address: a removal plus an addition.
    let (code, out, err) = reload(&gate, &with_listeners(b1.addr, &[("renamed", &a2)]));
    assert_eq!(code, 0, "{out}{err}");
    let addr2 = started(&gate, "renamed");
    assert_eq!(addr2.port(), p2);
    let close = close_of(resident, Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(close.map(|c| c.0), Some(1001));
    assert!(refused(addr1).await);
    assert!(echoes(&mut open(addr2, &cert, 1, "moved").await[0], "moved").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_after_a_reload_takes_over_the_added_listener() {
    let b1 = Backend::start("b1").unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    let dir = scratch("listener-upgrade");
    let mut old = Gate::start_in(dir.clone(), &with_listeners(b1.addr, &[("a", &a)]), 1).unwrap();
    let both = with_listeners(b1.addr, &[("a", &a), ("b", &b)]);
    let (code, out, err) = reload(&old, &both);
    assert_eq!(code, 0, "{out}{err}");
    let addr_b = started(&old, "b");
    let cert = old.cert();
    let resident = open(addr_b, &cert, 1, "res").await.remove(0);

    // The new process finds `b` in the sockets the old one hands over; had
    // it not, binding it would fail while the old process holds it.
    let (d, y) = (dir.clone(), both.clone());
    let new = tokio::task::spawn_blocking(move || Gate::launch(d, &y, 2, &["--upgrade"]));
    let deadline = Instant::now() + STEP;
    while !dir.join("up.sock").exists() {
        assert!(Instant::now() < deadline, "no upgrade socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    old.proc.signal("QUIT");
    let new = new.await.unwrap().unwrap();
    // Ready while the old process still holds the ports (it lingers 5 s
    // after the handover, then drains): the sockets were handed over, not
    // bound again after the old process let go.
    assert_eq!(
        old.proc.wait_exit(Duration::from_millis(50)),
        None,
        "the new process only started once the old one had exited"
    );
    let close = close_of(resident, Instant::now() + Duration::from_secs(15)).await;
    assert_eq!(close.map(|c| c.0), Some(1001), "the old process drains");
    let exit = tokio::task::spawn_blocking(move || old.proc.wait_exit(STEP))
        .await
        .unwrap();
    assert_eq!(exit, Some(0));
    // With the old process gone, both ports are the new process's.
    assert!(echoes(&mut open(addr_b, &cert, 1, "b").await[0], "b").await);
    let on_a = new.addrs.iter().find(|x| x.port() == pa).copied();
    let on_a = on_a.expect("the new process listens on a");
    assert!(echoes(&mut open(on_a, &cert, 1, "a").await[0], "a").await);

    // And the new process can remove it again.
    let (code, out, err) = reload(&new, &with_listeners(b1.addr, &[("a", &a)]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(refused(addr_b).await, "b still accepts after its removal");
}
