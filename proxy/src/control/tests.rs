//! The control task driven by commands and reports alone, under paused
//! time: no sockets, no health checker ever probes (their interval is an
//! hour), and every effect is read off the published snapshot and the
//! close signals of registered fake connections.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::api::BackendState;
use super::*;
use crate::routing::registry::ConnGuard;
use crate::routing::ring::key_hash;
use crate::routing::DownReason;
use crate::tunnel::{CloseCause, CloseSignal};

mod dns;

fn yaml(backends: &[&str], rebalance: &str) -> String {
    yaml_with(backends, rebalance, "")
}

fn yaml_with(backends: &[&str], rebalance: &str, pool_extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{{id: {id}, address: \"127.0.0.1:{}\"}}", 9001 + i))
        .collect();
    format!(
        "listeners: [{{name: a, address: \"127.0.0.1:0\"}}]\nroutes: [{{pool: chat}}]\n\
         pools: {{chat: {{backends: [{}], rebalance: {rebalance}, drain: {{window: 10s}}{pool_extra}}}}}\n",
        list.join(", ")
    )
}

/// A running control task and the routing view it publishes.
struct Harness {
    control: ControlHandle,
    routing: Arc<Routing>,
}

fn control_for(src: &str, file: Option<&Path>) -> Harness {
    control_with(src, file, resolver::hickory())
}

/// [`control_for`], with DNS answered by `lookup`.
fn control_with(src: &str, file: Option<&Path>, lookup: resolver::Lookup) -> Harness {
    let config = Config::from_source(src, "t.yaml", Path::new(".")).unwrap();
    let (plane, routing) = ControlPlane::with_lookup(
        Arc::new(config),
        file.map(Path::to_path_buf),
        super::CertificateBook::default(),
        crate::edge::listeners::ListenerSet::new(Vec::new()),
        lookup,
    );
    let control = plane.handle.clone();
    tokio::spawn(plane.run());
    Harness { control, routing }
}

type User = (BackendKey, u64, ConnGuard, Arc<CloseSignal>);

/// Registers `n` fake connections with the backend the snapshot picks for
/// them; returns (key, hash, guard, close signal) for each.
fn connect_users(c: &Harness, n: usize) -> Vec<User> {
    let snap = c.routing.snapshot.load();
    (0..n)
        .map(|i| {
            let h = key_hash(format!("user-{i}").as_bytes());
            let b = snap.pick(0, h).unwrap();
            let key = BackendKey::new("chat", &b.id);
            let (g, rx) = c.routing.registry.register(&key, h);
            (key, h, g, rx)
        })
        .collect()
}

/// One active probe result, as a checker would send it.
fn probe(backend: &BackendKey, address: &str, healthy: bool) -> Command {
    Command::Probe {
        backend: backend.clone(),
        address: address.to_string(),
        healthy,
    }
}

fn closed(users: &[User]) -> Vec<&BackendKey> {
    users
        .iter()
        .filter(|u| u.3.cause().is_some())
        .map(|u| &u.0)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn drain_closes_only_that_backend_and_undrain_cancels() {
    let c = control_for(&yaml(&["b1", "b2", "b3"], "keep"), None);
    let users = connect_users(&c, 300);
    let b2 = BackendKey::new("chat", "b2");
    let on_b2 = users.iter().filter(|u| u.0 == b2).count();
    assert_eq!(
        c.control.drain(b2.clone(), None, Some(4000)).await.unwrap(),
        on_b2
    );
    // New connections avoid b2 at once; nobody else moves.
    let snap = c.routing.snapshot.load();
    for (key, h, ..) in &users {
        let now = &snap.pick(0, *h).unwrap().id;
        if key.id != "b2" {
            assert_eq!(now, &key.id);
        } else {
            assert_ne!(now, "b2");
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Counted after the undrain: a close due in the same timer tick as the
    // test's wake-up may run while the undrain is on its way.
    let cancelled = c.control.undrain(b2.clone()).await.unwrap();
    let half = closed(&users).len();
    assert!(closed(&users).iter().all(|k| **k == b2));
    assert!(
        half > on_b2 / 4 && half < on_b2 * 3 / 4,
        "about half closed after half the window: {half}/{on_b2}"
    );
    assert_eq!(cancelled, on_b2 - half);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(closed(&users).len(), half, "undrain stops further closes");
    assert!(users
        .iter()
        .filter_map(|u| u.3.cause())
        .all(|cause| cause == CloseCause::Drain(4000)));
    assert_eq!(
        c.routing.snapshot.load().state(0, "b2"),
        Some(BackendState::Active)
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_backend_and_bad_code_are_errors() {
    let c = control_for(&yaml(&["b1"], "keep"), None);
    assert!(matches!(
        c.control
            .drain(BackendKey::new("chat", "zz"), None, None)
            .await,
        Err(ControlError::UnknownBackend(_))
    ));
    assert!(matches!(
        c.control
            .drain(BackendKey::new("nope", "b1"), None, None)
            .await,
        Err(ControlError::UnknownPool(_))
    ));
    assert!(matches!(
        c.control
            .drain(BackendKey::new("chat", "b1"), None, Some(1005))
            .await,
        Err(ControlError::BadRequest(_))
    ));
    assert!(matches!(
        c.control
            .drain(
                BackendKey::new("chat", "b1"),
                Some(Duration::from_secs(u64::MAX / 4)),
                None
            )
            .await,
        Err(ControlError::BadRequest(_))
    ));
    assert!(matches!(
        c.control.reload().await,
        Err(ControlError::NoConfigFile)
    ));
}

#[tokio::test(start_paused = true)]
async fn reload_drains_removed_backends_keeps_operator_drains_and_survives_bad_files() {
    let dir = std::env::temp_dir().join(format!("wsgate-control-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w.yaml");
    std::fs::write(&file, yaml(&["b1", "b2", "b3"], "keep")).unwrap();
    let c = control_for(&yaml(&["b1", "b2", "b3"], "keep"), Some(&file));
    let users = connect_users(&c, 200);
    let b1 = BackendKey::new("chat", "b1");
    c.control
        .drain(b1, Some(Duration::from_secs(100)), None)
        .await
        .unwrap();

    // Invalid: rejected, old config keeps serving, error recorded.
    std::fs::write(&file, "listeners: [\n").unwrap();
    assert!(matches!(
        c.control.reload().await,
        Err(ControlError::InvalidConfig(_))
    ));
    assert_eq!(c.routing.snapshot.load().config.pools[0].backends.len(), 3);
    assert!(!c.control.status().await.unwrap().reload.unwrap().ok);

    // Valid without b3: b3's users are closed with 1012, b1 stays drained.
    std::fs::write(&file, yaml(&["b1", "b2"], "keep")).unwrap();
    let outcome = c.control.reload().await.unwrap();
    assert_eq!(outcome.removed, ["chat/b3"]);
    assert_eq!(
        c.routing.snapshot.load().state(0, "b1"),
        Some(BackendState::Draining),
        "operator drain survives"
    );
    tokio::time::sleep(Duration::from_secs(11)).await;
    let b3 = BackendKey::new("chat", "b3");
    for (key, _, _, rx) in &users {
        if *key == b3 {
            assert_eq!(rx.cause(), Some(CloseCause::Drain(1012)));
        } else if key.id == "b2" {
            assert_eq!(rx.cause(), None, "b2 untouched");
        }
    }
    let status = c.control.status().await.unwrap();
    let removed = status.pools[0]
        .backends
        .iter()
        .find(|b| b.id == "b3")
        .unwrap();
    assert_eq!(removed.state, BackendState::Removed);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(start_paused = true)]
async fn adding_a_backend_migrates_exactly_its_keys_or_none() {
    for policy in ["migrate", "keep"] {
        let c = control_for(&yaml(&["b1", "b2", "b3"], policy), None);
        let users = connect_users(&c, 600);
        c.control
            .add_backend(BackendKey::new("chat", "b4"), "127.0.0.1:9999".into(), 1)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(11)).await;
        let ring = crate::routing::ring::Ring::new([("b1", 1), ("b2", 1), ("b3", 1), ("b4", 1)]);
        let expected: Vec<bool> = users.iter().map(|u| ring.pick(u.1) == Some(3)).collect();
        let moved: Vec<bool> = users.iter().map(|u| u.3.cause().is_some()).collect();
        if policy == "migrate" {
            assert!(expected.iter().any(|&e| e));
            assert_eq!(moved, expected, "exactly the keys that now map to b4 move");
        } else {
            assert!(moved.iter().all(|&m| !m), "keep moves nobody");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn late_arrivals_on_an_ineligible_backend_are_closed() {
    let c = control_for(&yaml(&["b1", "b2"], "keep"), None);
    let h = key_hash(b"someone");
    let id = c.routing.snapshot.load().pick(0, h).unwrap().id.clone();
    let key = BackendKey::new("chat", &id);
    let arrival = || c.routing.snapshot.load().close_on_arrival(&key, h, 0, None);
    assert_eq!(arrival(), None);
    c.control.drain(key.clone(), None, None).await.unwrap();
    assert_eq!(arrival(), Some(CloseCause::Drain(1012)));
    c.control.tell(Command::Shutdown).await;
    // Commands are handled in order: once status answers, shutdown is done.
    assert!(c.control.status().await.unwrap().shutting_down);
    assert_eq!(arrival(), Some(CloseCause::Shutdown));
}

/// The whole life of one backend through every kind of message: probes
/// mark it down and bring it back, passive failures reported by the data
/// path mark it down too, and a reload whose diff changes its address
/// ignores results for the old one.
#[tokio::test(start_paused = true)]
async fn health_down_and_up_from_probes_and_passive_failures() {
    let dir = std::env::temp_dir().join(format!("wsgate-health-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w.yaml");
    let checked = ", health_check: {interval: 1h, fall: 2, rise: 2}";
    let src = yaml_with(&["b1", "b2"], "migrate", checked);
    std::fs::write(&file, &src).unwrap();
    let c = control_for(&src, Some(&file));
    let users = connect_users(&c, 200);
    let b2 = BackendKey::new("chat", "b2");
    let state = || c.routing.snapshot.load().state(0, "b2");
    let b2_probe = |healthy: bool, address: &str| probe(&b2, address, healthy);
    let addr = "127.0.0.1:9002";

    // fall: 2 failed probes in a row mark it down; a success in between resets.
    c.control.tell(b2_probe(false, addr)).await;
    c.control.tell(b2_probe(true, addr)).await;
    c.control.tell(b2_probe(false, addr)).await;
    c.control.status().await.unwrap();
    assert_eq!(state(), Some(BackendState::Active));
    c.control.tell(b2_probe(false, addr)).await;
    c.control.status().await.unwrap();
    let down = Some(BackendState::Down(DownReason::ActiveCheck { failures: 2 }));
    assert_eq!(state(), down);
    let snap = c.routing.snapshot.load();
    assert!(users.iter().all(|u| snap.pick(0, u.1).unwrap().id == "b1"));
    // Down is not a drain: nobody is closed, new users just go elsewhere.
    assert!(closed(&users).is_empty());
    let while_down = connect_users(&c, 200);
    assert!(while_down.iter().all(|u| u.0.id == "b1"));

    // rise: 2 successes bring it back; with migrate, the users who went to
    // b1 meanwhile and whose key maps to b2 move back, and no one else.
    c.control.tell(b2_probe(true, addr)).await;
    c.control.status().await.unwrap();
    assert_eq!(state(), down);
    c.control.tell(b2_probe(true, addr)).await;
    c.control.status().await.unwrap();
    assert_eq!(state(), Some(BackendState::Active));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(closed(&users).is_empty(), "b2's own users never left it");
    let moved: Vec<bool> = while_down.iter().map(|u| u.3.cause().is_some()).collect();
    let expected: Vec<bool> = users.iter().map(|u| u.0 == b2).collect();
    assert!(expected.iter().any(|&e| e));
    assert_eq!(moved, expected, "exactly the keys that map to b2 move back");

    // Passive: the data path reports consecutive failures; `fall` of them
    // mark the backend down without any probe.
    let report = |consecutive| Report::PassiveFailure {
        backend: b2.clone(),
        consecutive,
    };
    c.routing.reports.send(report(1));
    c.control.status().await.unwrap();
    assert_eq!(state(), Some(BackendState::Active));
    c.routing.reports.send(report(2));
    // Reports travel on their own channel; wait for the task to see it.
    let mut waited = 0;
    while state() == Some(BackendState::Active) && waited < 100 {
        tokio::task::yield_now().await;
        waited += 1;
    }
    assert_eq!(
        state(),
        Some(BackendState::Down(DownReason::PassiveFailures {
            failures: 2
        }))
    );
    assert_eq!(c.routing.reports.dropped(), 0);

    // A reload that moves b2 to another address: results for the old
    // address are ignored, the new address's count.
    let moved_src = src.replace("127.0.0.1:9002", "127.0.0.1:9102");
    std::fs::write(&file, &moved_src).unwrap();
    let outcome = c.control.reload().await.unwrap();
    assert!(outcome.added.is_empty() && outcome.removed.is_empty());
    c.control.tell(b2_probe(true, addr)).await;
    c.control.tell(b2_probe(true, addr)).await;
    c.control.status().await.unwrap();
    assert_ne!(state(), Some(BackendState::Active), "stale results ignored");
    c.control.tell(b2_probe(true, "127.0.0.1:9102")).await;
    c.control.tell(b2_probe(true, "127.0.0.1:9102")).await;
    let status = c.control.status().await.unwrap();
    assert_eq!(state(), Some(BackendState::Active));
    assert_eq!(status.pools[0].backends[1].state, BackendState::Active);
    let _ = std::fs::remove_dir_all(dir);
}

/// Runtime backend changes go through the same handler as a reload's
/// diff: an added backend in a checked pool gets a checker (its probes
/// count), a removed one is drained and its late probe results ignored.
#[tokio::test(start_paused = true)]
async fn added_backends_are_health_checked_and_removed_ones_forgotten() {
    let checked = ", health_check: {interval: 1h, fall: 1, rise: 1}";
    let c = control_for(&yaml_with(&["b1", "b2"], "keep", checked), None);
    let users = connect_users(&c, 100);
    let b3 = BackendKey::new("chat", "b3");
    c.control
        .add_backend(b3.clone(), "127.0.0.1:9003".into(), 1)
        .await
        .unwrap();
    c.control.tell(probe(&b3, "127.0.0.1:9003", false)).await;
    c.control.status().await.unwrap();
    assert_eq!(
        c.routing.snapshot.load().state(0, "b3"),
        Some(BackendState::Down(DownReason::ActiveCheck { failures: 1 }))
    );
    let b1 = BackendKey::new("chat", "b1");
    let on_b1 = users.iter().filter(|u| u.0 == b1).count();
    assert_eq!(c.control.remove_backend(b1.clone()).await.unwrap(), on_b1);
    c.control.tell(probe(&b1, "127.0.0.1:9001", false)).await;
    let status = c.control.status().await.unwrap();
    let b1_status = status.pools[0].backends.iter().find(|b| b.id == "b1");
    assert_eq!(b1_status.map(|b| b.state), Some(BackendState::Removed));
    tokio::time::sleep(Duration::from_secs(11)).await;
    for u in &users {
        let expected = (u.0 == b1).then_some(CloseCause::Drain(1012));
        assert_eq!(u.3.cause(), expected);
    }
}
