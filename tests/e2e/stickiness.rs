//! Users stay on one backend; load spreads by weight; two wsgate processes
//! agree on every user.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};
use wsgate_tests::*;

fn three(weights: [u32; 3]) -> (Vec<Backend>, String) {
    let backends: Vec<Backend> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| Backend::start(id).unwrap())
        .collect();
    let spec: Vec<(&str, std::net::SocketAddr, u32)> = backends
        .iter()
        .zip(weights)
        .map(|(b, w)| (b.id.as_str(), b.addr, w))
        .collect();
    let yaml = tls_config(&spec, "");
    (backends, yaml)
}

/// Backend of each user, `concurrency` connections at a time.
async fn assignments(
    gate: &Gate,
    users: impl Iterator<Item = String>,
    concurrency: usize,
) -> Vec<(String, String)> {
    stream::iter(users)
        .map(|u| async move {
            let b = backend_of(gate, &u)
                .await
                .unwrap_or_else(|e| panic!("user {u}: {e:#}"));
            (u, b)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_reconnecting_always_reach_the_same_backend() {
    let (_backends, yaml) = three([1, 1, 1]);
    let gate = Gate::start(&yaml, 1).unwrap();
    let mut first: HashMap<String, String> = HashMap::new();
    for round in 0..5 {
        let users = (0..100).map(|i| format!("user-{i}"));
        for (user, backend) in assignments(&gate, users, 20).await {
            let expected = first.entry(user.clone()).or_insert(backend.clone());
            assert_eq!(*expected, backend, "round {round}: {user} moved");
        }
    }
    let distinct: std::collections::HashSet<_> = first.values().collect();
    assert_eq!(distinct.len(), 3, "100 users use all three backends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_spread_evenly_and_by_weight() {
    let (_backends, yaml) = three([1, 1, 1]);
    let gate = Gate::start(&yaml, 1).unwrap();
    let counts = count(assignments(&gate, (0..3000).map(|i| format!("u{i}")), 32).await);
    for (b, n) in &counts {
        let share = *n as f64 / 3000.0;
        assert!(
            (share - 1.0 / 3.0).abs() <= 0.15 / 3.0,
            "{b} has {n} of 3000: {counts:?}"
        );
    }
    drop(gate);

    let (_backends, yaml) = three([1, 2, 1]);
    let gate = Gate::start(&yaml, 1).unwrap();
    let counts = count(assignments(&gate, (0..2000).map(|i| format!("u{i}")), 32).await);
    let heavy = counts["b2"] as f64;
    let light = (counts["b1"] + counts["b3"]) as f64 / 2.0;
    let ratio = heavy / light;
    assert!(
        (1.7..=2.3).contains(&ratio),
        "weight 2 share ratio {ratio:.2}: {counts:?}"
    );
}

fn count(pairs: Vec<(String, String)>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (_, b) in pairs {
        *counts.entry(b).or_insert(0) += 1;
    }
    counts
}

/// The mapping is a pure function of the config: two processes agree. Uses
/// plain HTTP over keep-alive connections (`/whoami` names the backend) so
/// 10,000 users stay quick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_route_ten_thousand_users_identically() {
    let (_backends, yaml) = three([1, 1, 1]);
    let a = Gate::start(&yaml, 1).unwrap();
    let b = Gate::start(&yaml, 1).unwrap();
    let (from_a, from_b) = tokio::join!(map_users(&a), map_users(&b));
    assert_eq!(from_a.len(), 10_000);
    let differ = from_a.iter().zip(&from_b).filter(|(x, y)| x != y).count();
    assert_eq!(differ, 0, "users routed differently by two processes");
}

/// Backend of users 0..10,000 through `gate`, over 8 keep-alive connections.
async fn map_users(gate: &Gate) -> Vec<String> {
    let workers = 8;
    let parts = stream::iter(0..workers)
        .map(|w| async move {
            let mut conn = KeepAlive::open(gate).await.unwrap();
            let mut out = Vec::new();
            for i in (w..10_000).step_by(workers) {
                let (status, body) = conn.get(&format!("/whoami?user=user-{i}")).await.unwrap();
                assert_eq!(status, 200);
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                out.push((i, v["backend"].as_str().unwrap().to_string()));
            }
            out
        })
        .buffer_unordered(workers)
        .collect::<Vec<_>>()
        .await;
    let mut all: Vec<(usize, String)> = parts.into_iter().flatten().collect();
    all.sort();
    all.into_iter().map(|(_, b)| b).collect()
}
