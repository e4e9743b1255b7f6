//! The control task fed by a scripted DNS (a lookup that reads a table,
//! no network), under paused time: answers add and drain backends through
//! the reload path, failures and empty answers keep the pool, operator
//! drains survive re-resolution, and a reload that changes `discovery`
//! restarts the resolver without emptying the pool meanwhile.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use super::*;
use crate::control::discovery::{Answer, DiscoveryError, Records};
use crate::routing::snapshot::PickError;

/// What the fake DNS answers for each name. A name it has no entry for
/// fails, as an unreachable server would.
#[derive(Clone, Default)]
struct FakeDns(Arc<Mutex<HashMap<String, Result<Answer, DiscoveryError>>>>);

impl FakeDns {
    fn answer(&self, name: &str, answer: Result<Answer, DiscoveryError>) {
        self.0.lock().unwrap().insert(name.to_string(), answer);
    }

    /// A records (TTL 0, as dnsmasq answers for its own hosts).
    fn set_a(&self, name: &str, ips: &[&str]) {
        let ips: Vec<IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.answer(
            name,
            Ok(Answer {
                records: Records::A(ips),
                ttl: Some(0),
            }),
        );
    }

    fn fail(&self, name: &str) {
        self.answer(
            name,
            Err(DiscoveryError::Lookup {
                name: name.to_string(),
                reason: "connection refused".into(),
            }),
        );
    }

    fn lookup(&self) -> resolver::Lookup {
        let dns = self.clone();
        Arc::new(move |d| {
            let answer = dns.0.lock().unwrap().get(&d.name).cloned();
            let answer = answer.unwrap_or_else(|| {
                Err(DiscoveryError::Lookup {
                    name: d.name.clone(),
                    reason: "no server".into(),
                })
            });
            Box::pin(async move { answer })
        })
    }
}

/// A pool `chat` from `name`'s A records on port 9000, resolved every
/// second (TTL 0 is clamped to `min_interval`).
fn dns_yaml(name: &str, pool_extra: &str) -> String {
    format!(
        "listeners: [{{name: a, address: \"127.0.0.1:0\"}}]\nroutes: [{{pool: chat}}]\n\
         pools: {{chat: {{discovery: {{dns: {name}, port: 9000, interval: 1s, min_interval: 1s, max_interval: 1s}}, drain: {{window: 10s}}{pool_extra}}}}}\n"
    )
}

fn ids(c: &Harness) -> Vec<String> {
    let snap = c.routing.snapshot.load();
    let mut ids: Vec<String> = snap.config.pools[0]
        .backends
        .iter()
        .map(|b| b.id.clone())
        .collect();
    ids.sort();
    ids
}

/// Lets the resolver (period 1 s) run one more round.
async fn next_round() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

async fn discovery_status(c: &Harness) -> api::DiscoveryStatus {
    let status = c.control.status().await.unwrap();
    status.pools[0].discovery.clone().unwrap()
}

/// Whether the latest resolution failed with an error saying `text`.
fn failing_with(status: &api::DiscoveryStatus, text: &str) -> bool {
    status.error.as_deref().is_some_and(|e| e.contains(text))
}

#[tokio::test(start_paused = true)]
async fn answers_add_and_drain_backends_like_a_reload() {
    let dns = FakeDns::default();
    dns.set_a("chat.test", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    let c = control_with(&dns_yaml("chat.test", ""), None, dns.lookup());
    assert_eq!(
        c.routing.snapshot.load().pick(0, 1).map(|b| b.id.clone()),
        Err(PickError::NoBackends),
        "before the first answer the pool is empty"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(ids(&c), ["10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000"]);
    let users = connect_users(&c, 300);
    let gone = BackendKey::new("chat", "10.0.0.2:9000");
    let on_gone = users.iter().filter(|u| u.0 == gone).count();
    assert!(
        on_gone > 50,
        "{on_gone} users on the backend that will leave"
    );

    dns.set_a("chat.test", &["10.0.0.1", "10.0.0.3", "10.0.0.4"]);
    next_round().await;
    assert_eq!(ids(&c), ["10.0.0.1:9000", "10.0.0.3:9000", "10.0.0.4:9000"]);
    let status = c.control.status().await.unwrap();
    let removed = status.pools[0].backends.iter().find(|b| b.id == gone.id);
    assert_eq!(
        removed.map(|b| (b.state, b.connections)),
        Some((BackendState::Removed, on_gone)),
        "still closing: {status:?}"
    );
    // Paced over the pool's 10 s window, and only the departed backend's.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let half = closed(&users).len();
    assert!(
        half > on_gone / 4 && half < on_gone * 3 / 4,
        "about half closed after half the window: {half}/{on_gone}"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(closed(&users).len(), on_gone);
    assert!(closed(&users).iter().all(|k| **k == gone));
    assert!(users
        .iter()
        .filter_map(|u| u.3.cause())
        .all(|cause| cause == CloseCause::Drain(1012)));
    // The newcomer takes new users (rebalance: keep moves nobody live).
    let snap = c.routing.snapshot.load();
    let to_new = (0..300)
        .filter(|i| {
            let h = key_hash(format!("user-{i}").as_bytes());
            snap.pick(0, h).is_ok_and(|b| b.id == "10.0.0.4:9000")
        })
        .count();
    assert!(to_new > 50, "{to_new} of 300 keys now map to the newcomer");
}

#[tokio::test(start_paused = true)]
async fn failures_and_empty_answers_keep_the_pool_and_show_in_status() {
    let dns = FakeDns::default();
    dns.set_a("chat.test", &["10.0.0.1", "10.0.0.2"]);
    let c = control_with(&dns_yaml("chat.test", ""), None, dns.lookup());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = ids(&c);
    assert_eq!(before.len(), 2);
    let ok = discovery_status(&c).await;
    assert_eq!((ok.backends, ok.error, ok.failures_total), (2, None, 0));
    assert!(ok.last_success_unix.is_some());

    dns.fail("chat.test");
    next_round().await;
    next_round().await;
    assert_eq!(ids(&c), before, "a failing DNS never empties the pool");
    let failing = discovery_status(&c).await;
    assert_eq!(failing.consecutive_failures, 2);
    assert!(failing_with(&failing, "connection refused"), "{failing:?}");

    dns.set_a("chat.test", &[]);
    next_round().await;
    assert_eq!(ids(&c), before, "nor does an empty answer");
    let empty = discovery_status(&c).await;
    assert!(failing_with(&empty, "no usable"), "{empty:?}");
    assert_eq!(empty.failures_total, 3);

    dns.set_a("chat.test", &["10.0.0.1", "10.0.0.2"]);
    next_round().await;
    let back = discovery_status(&c).await;
    assert_eq!((back.error, back.consecutive_failures), (None, 0));
    assert_eq!(back.failures_total, 3, "the counter only grows");
    let text = super::metrics::render(&c.control.metrics().await.unwrap());
    assert!(
        text.lines()
            .any(|l| l == "wsgate_discovery_failures_total{pool=\"chat\"} 3"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn operator_drains_of_discovered_backends_survive_re_resolution() {
    let dns = FakeDns::default();
    dns.set_a("chat.test", &["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
    let c = control_with(
        &dns_yaml(
            "chat.test",
            ", backends: [{id: static, address: \"10.9.9.9:1\"}]",
        ),
        None,
        dns.lookup(),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b2 = BackendKey::new("chat", "10.0.0.2:9000");
    c.control.drain(b2.clone(), None, None).await.unwrap();
    dns.set_a(
        "chat.test",
        &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"],
    );
    next_round().await;
    let snap = c.routing.snapshot.load();
    assert_eq!(snap.state(0, &b2.id), Some(BackendState::Draining));
    assert_eq!(snap.state(0, "10.0.0.4:9000"), Some(BackendState::Active));
    assert_eq!(snap.state(0, "static"), Some(BackendState::Active));
    // Removing a discovered backend would last until the next answer.
    assert!(matches!(
        c.control.remove_backend(b2.clone()).await,
        Err(ControlError::BadRequest(_))
    ));
    // Static backends are removed as before.
    c.control
        .remove_backend(BackendKey::new("chat", "static"))
        .await
        .unwrap();
    next_round().await;
    assert_eq!(
        ids(&c),
        [
            "10.0.0.1:9000",
            "10.0.0.2:9000",
            "10.0.0.3:9000",
            "10.0.0.4:9000"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_changes_discovery_restarts_the_resolver_and_keeps_the_pool_meanwhile() {
    let dir = std::env::temp_dir().join(format!("wsgate-control-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("w.yaml");
    let dns = FakeDns::default();
    dns.set_a("a.test", &["10.0.0.1", "10.0.0.2"]);
    dns.fail("b.test");
    std::fs::write(&file, dns_yaml("a.test", "")).unwrap();
    let c = control_with(&dns_yaml("a.test", ""), Some(&file), dns.lookup());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let b1 = BackendKey::new("chat", "10.0.0.1:9000");
    c.control.drain(b1.clone(), None, None).await.unwrap();

    // The same file again: the discovered backends stay.
    let outcome = c.control.reload().await.unwrap();
    assert_eq!((outcome.added.len(), outcome.removed.len()), (0, 0));
    assert_eq!(ids(&c), ["10.0.0.1:9000", "10.0.0.2:9000"]);

    // Another name, not answering yet: the pool keeps what it had.
    std::fs::write(&file, dns_yaml("b.test", "")).unwrap();
    let outcome = c.control.reload().await.unwrap();
    assert!(outcome.removed.is_empty(), "{outcome:?}");
    next_round().await;
    assert_eq!(ids(&c), ["10.0.0.1:9000", "10.0.0.2:9000"]);
    let status = discovery_status(&c).await;
    assert_eq!(status.dns, "b.test");
    assert!(status.error.is_some(), "{status:?}");

    // Its first answer replaces the set; the drain of 10.0.0.1 survives,
    // and the old resolver (still answering a.test) has stopped.
    dns.set_a("b.test", &["10.0.0.1", "10.0.0.3"]);
    next_round().await;
    next_round().await;
    assert_eq!(ids(&c), ["10.0.0.1:9000", "10.0.0.3:9000"]);
    assert_eq!(
        c.routing.snapshot.load().state(0, &b1.id),
        Some(BackendState::Draining)
    );

    // Discovery removed: its backends go, the static ones stay.
    std::fs::write(&file, yaml(&["s1"], "keep")).unwrap();
    let outcome = c.control.reload().await.unwrap();
    assert_eq!(outcome.added, ["chat/s1"]);
    let mut removed = outcome.removed.clone();
    removed.sort();
    assert_eq!(removed, ["chat/10.0.0.1:9000", "chat/10.0.0.3:9000"]);
    next_round().await;
    assert_eq!(ids(&c), ["s1"]);
    assert_eq!(c.control.status().await.unwrap().pools[0].discovery, None);
    let _ = std::fs::remove_dir_all(dir);
}
