use std::path::Path;

use super::*;
use crate::ring::key_hash;

fn yaml(backends: &[&str], rebalance: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{{id: {id}, address: \"127.0.0.1:{}\"}}", 9001 + i))
        .collect();
    format!(
        "listeners: [{{name: a, address: \"127.0.0.1:0\"}}]\nroutes: [{{pool: chat}}]\n\
         pools: {{chat: {{backends: [{}], rebalance: {rebalance}, drain: {{window: 10s}}}}}}\n",
        list.join(", ")
    )
}

fn control_for(src: &str, file: Option<&Path>) -> Arc<Control> {
    let config = Config::from_source(src, "t.yaml", Path::new(".")).unwrap();
    Control::new(Arc::new(config), file.map(Path::to_path_buf))
}

/// Registers `n` fake connections with the backend the snapshot picks for
/// them; returns (key, hash, guard, close receiver) for each.
#[allow(clippy::type_complexity)]
fn connect_users(
    c: &Control,
    n: usize,
) -> Vec<(
    BackendKey,
    u64,
    crate::registry::ConnGuard,
    std::sync::Arc<crate::closesignal::CloseSignal>,
)> {
    let snap = c.snapshot.load();
    (0..n)
        .map(|i| {
            let h = key_hash(format!("user-{i}").as_bytes());
            let b = snap.pick(0, h).unwrap();
            let key = BackendKey::new("chat", &b.id);
            let (g, rx) = c.registry.register(&key, h);
            (key, h, g, rx)
        })
        .collect()
}

fn closed(
    users: &[(
        BackendKey,
        u64,
        crate::registry::ConnGuard,
        std::sync::Arc<crate::closesignal::CloseSignal>,
    )],
) -> Vec<&BackendKey> {
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
    assert_eq!(c.drain(&b2, None, Some(4000)).unwrap(), on_b2);
    // New connections avoid b2 at once; nobody else moves.
    let snap = c.snapshot.load();
    for (key, h, ..) in &users {
        let now = &snap.pick(0, *h).unwrap().id;
        if key.id != "b2" {
            assert_eq!(now, &key.id);
        } else {
            assert_ne!(now, "b2");
        }
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let half = closed(&users).len();
    assert!(closed(&users).iter().all(|k| **k == b2));
    assert!(
        half > on_b2 / 4 && half < on_b2 * 3 / 4,
        "about half closed after half the window: {half}/{on_b2}"
    );
    let cancelled = c.undrain(&b2).unwrap();
    assert_eq!(cancelled, on_b2 - half);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(closed(&users).len(), half, "undrain stops further closes");
    assert!(users
        .iter()
        .filter_map(|u| u.3.cause())
        .all(|cause| cause == CloseCause::Drain(4000)));
    assert_eq!(c.snapshot.load().state(0, "b2"), Some(BackendState::Active));
}

#[tokio::test(start_paused = true)]
async fn unknown_backend_and_bad_code_are_errors() {
    let c = control_for(&yaml(&["b1"], "keep"), None);
    assert!(matches!(
        c.drain(&BackendKey::new("chat", "zz"), None, None),
        Err(ControlError::UnknownBackend(_))
    ));
    assert!(matches!(
        c.drain(&BackendKey::new("nope", "b1"), None, None),
        Err(ControlError::UnknownPool(_))
    ));
    assert!(matches!(
        c.drain(&BackendKey::new("chat", "b1"), None, Some(1005)),
        Err(ControlError::BadRequest(_))
    ));
    assert!(matches!(c.reload(), Err(ControlError::NoConfigFile)));
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
    c.drain(&b1, Some(Duration::from_secs(100)), None).unwrap();

    // Invalid: rejected, old config keeps serving, error recorded.
    std::fs::write(&file, "listeners: [\n").unwrap();
    assert!(matches!(c.reload(), Err(ControlError::InvalidConfig(_))));
    assert_eq!(c.config().pools[0].backends.len(), 3);
    assert!(!c.status().reload.unwrap().ok);

    // Valid without b3: b3's users are closed with 1012, b1 stays drained.
    std::fs::write(&file, yaml(&["b1", "b2"], "keep")).unwrap();
    let outcome = c.reload().unwrap();
    assert_eq!(outcome.removed, ["chat/b3"]);
    assert_eq!(
        c.snapshot.load().state(0, "b1"),
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
    let status = c.status();
    let removed = status.pools[0]
        .backends
        .iter()
        .find(|b| b.id == "b3")
        .unwrap();
    assert_eq!(removed.state, "removed");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(start_paused = true)]
async fn adding_a_backend_migrates_exactly_its_keys_or_none() {
    for policy in ["migrate", "keep"] {
        let c = control_for(&yaml(&["b1", "b2", "b3"], policy), None);
        let users = connect_users(&c, 600);
        c.add_backend(&BackendKey::new("chat", "b4"), "127.0.0.1:9999", 1)
            .unwrap();
        tokio::time::sleep(Duration::from_secs(11)).await;
        let ring = crate::ring::Ring::new([("b1", 1), ("b2", 1), ("b3", 1), ("b4", 1)]);
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
    let id = c.snapshot.load().pick(0, h).unwrap().id.clone();
    let key = BackendKey::new("chat", &id);
    assert_eq!(c.close_on_arrival(&key, h), None);
    c.drain(&key, None, None).unwrap();
    assert_eq!(c.close_on_arrival(&key, h), Some(CloseCause::Drain(1012)));
    c.shutdown();
    assert_eq!(c.close_on_arrival(&key, h), Some(CloseCause::Shutdown));
}
