//! Bounded load (`pools.NAME.balance_factor`): with one backend holding
//! three times its share of live connections, new users whose first
//! choice it is reach their second choice while the factor is on, and
//! their first choice while it is off; everybody else is unaffected.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use wsgate::routing::ring::{key_hash, Ring};
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";
/// `migrate`, so a tunnel the bound placed on its second choice would be
/// closed on arrival were that judged against the pure ring.
const POOL: &str = "    rebalance: migrate\n";

async fn status(gate: &Gate) -> Value {
    let (code, resp) = admin_call(gate, "GET", "/v1/status").await.unwrap();
    assert_eq!(code, 200, "{resp}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("status is not JSON ({e}): {body}"))
}

/// Each backend's live connections, in b1, b2, b3 order.
fn counts(s: &Value) -> Vec<u64> {
    ["b1", "b2", "b3"]
        .iter()
        .map(|id| {
            s["pools"][0]["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| b["id"] == *id)
                .and_then(|b| b["connections"].as_u64())
                .unwrap_or(0)
        })
        .collect()
}

/// Polls status until the live counts are `want`.
async fn counts_become(gate: &Gate, want: &[u64]) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let s = status(gate).await;
        if counts(&s) == want {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "counts never became {want:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Opens a connection for `user`, returns it with the backend that greeted it.
async fn open(gate: &Gate, user: &str) -> (Ws, String) {
    let mut ws = wss(gate, &format!("/echo?user={user}")).await.unwrap();
    let id = hello(&mut ws).await.unwrap();
    (ws, id)
}

/// The connection still carries messages (it was not closed on arrival).
async fn echoes(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let got = next(ws).await.unwrap();
    assert_eq!(got, Message::text(text), "expected the echo");
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_bound_new_users_go_to_their_second_choice_and_off_they_do_not() {
    let backends = start_backends(&["b1", "b2", "b3"]);
    let spec = weight_one(&backends);
    let off = tls_config(&spec, &format!("{POOL}{ADMIN}"));
    let on = tls_config(&spec, &format!("{POOL}    balance_factor: 1.25\n{ADMIN}"));
    // The users, picked on purpose with the proxy's own ring: 9 whose first
    // choice is b1 (to fill it), 4 more such (the probes), and 3 that
    // hash elsewhere (3, so none of them reaches a bound either).
    let ring = Ring::new([("b1", 1), ("b2", 1), ("b3", 1)]);
    let first = |u: &str| ring.pick(key_hash(u.as_bytes())).unwrap();
    let second = |u: &str| {
        let h = key_hash(u.as_bytes());
        let f = ring.pick(h).unwrap();
        ring.pick_eligible(h, |i| i != f).unwrap()
    };
    let users: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let on_b1: Vec<&str> = users
        .iter()
        .map(String::as_str)
        .filter(|u| first(u) == 0)
        .collect();
    let (heavy, probes) = (&on_b1[..9], &on_b1[9..13]);
    let others: Vec<&str> = users
        .iter()
        .map(String::as_str)
        .filter(|u| first(u) != 0)
        .take(3)
        .collect();
    let id = |i: usize| ring.id(i).unwrap().to_string();

    let gate = Gate::start(&off, 1).unwrap();
    let mut held = Vec::new();
    for u in heavy {
        let (ws, got) = open(&gate, u).await;
        assert_eq!(got, "b1", "{u}");
        held.push(ws);
    }
    // b1 holds 9 of 9: three times its share of a 3-backend pool.
    let s = counts_become(&gate, &[9, 0, 0]).await;
    assert!(s["pools"][0].get("balance").is_none(), "off: no bound: {s}");

    // Off: the mapping is the pure ring's, whatever the load.
    for u in probes {
        assert_eq!(
            backend_of(&gate, u).await.unwrap(),
            "b1",
            "{u} with the factor off"
        );
    }
    counts_become(&gate, &[9, 0, 0]).await;

    // On (a reload, nothing restarts): b1 is over ceil(1.25 * 10 / 3) = 5.
    std::fs::write(gate.dir.join("wsgate.yaml"), &on).unwrap();
    let (code, out, err) = gate.cli(&["reload"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let s = status(&gate).await;
    let balance = &s["pools"][0]["balance"];
    assert_eq!(balance["factor"], "1.25", "{s}");
    assert_eq!(balance["routable_connections"], 9, "{s}");
    for b in ["b1", "b2", "b3"] {
        assert_eq!(balance["bounds"][b], 5, "{s}");
    }
    assert_eq!(balance["overflow_total"], 0, "{s}");

    let mut moved = Vec::new();
    for u in probes {
        let (mut ws, got) = open(&gate, u).await;
        assert_eq!(
            got,
            id(second(u)),
            "{u} over the bound goes to its second choice"
        );
        echoes(&mut ws, u).await;
        moved.push(ws);
    }
    // Users whose first choice is not full are not moved.
    for u in &others {
        let (mut ws, got) = open(&gate, u).await;
        assert_eq!(got, id(first(u)), "{u}");
        echoes(&mut ws, u).await;
        held.push(ws);
    }
    // The moved ones stay: not closed on arrival, still echoing.
    for (ws, u) in moved.iter_mut().zip(probes) {
        echoes(ws, &format!("{u} again")).await;
    }
    let s = status(&gate).await;
    assert_eq!(s["pools"][0]["balance"]["overflow_total"], 4, "{s}");
    assert_eq!(counts(&s)[0], 9, "b1 took no new user: {s}");
    let (code, metrics) = admin_call(&gate, "GET", "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        metric(&metrics, "wsgate_balance_overflow_total{pool=\"chat\"}"),
        Some(4),
        "{metrics}"
    );
    let (code, table, err) = gate.cli(&["status"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        table.contains("bounded load chat (factor 1.25)")
            && table.contains("4 sent past their first choice"),
        "{table}"
    );

    // `wsgate route` works from the file: it names the pure choice, says
    // the bound is not reflected, and its runner-up is where the bound sent
    // the probe.
    let config = gate.dir.join("wsgate.yaml").display().to_string();
    let url = format!("wss://localhost/echo?user={}", probes[0]);
    let (code, out, err) = wsgate(&["route", "-c", &config, "--url", &url]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("backend    b1 ("), "{out}");
    assert!(
        out.contains(&format!("runner-up  {} (", id(second(probes[0])))),
        "{out}"
    );
    assert!(
        out.contains("balance_factor 1.25: not reflected here"),
        "{out}"
    );
    let (code, out, err) = wsgate(&["route", "-c", &config, "--url", &url, "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["balance_factor"], "1.25", "{out}");

    // Off again: the probes' next connections reach b1 once more.
    drop(moved);
    std::fs::write(gate.dir.join("wsgate.yaml"), &off).unwrap();
    let (code, out, err) = gate.cli(&["reload"]).unwrap();
    assert_eq!(code, 0, "{out}{err}");
    for u in probes {
        assert_eq!(backend_of(&gate, u).await.unwrap(), "b1", "{u} off again");
    }
    let (_, metrics) = admin_call(&gate, "GET", "/metrics").await.unwrap();
    assert_eq!(
        metric(&metrics, "wsgate_balance_overflow_total{pool=\"chat\"}"),
        None,
        "off: no series"
    );
    drop(held);
}
