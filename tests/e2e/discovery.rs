//! Backends from DNS (issue 14, part 1) against a real DNS server: dnsmasq
//! on a loopback port serves a pool's A records from a hosts file the test
//! rewrites (SIGHUP rereads it), or SRV records (restarted to reread them).
//! Real chat backends, real wsgate, real clients; each step waits on the
//! admin API's status, never on a fixed sleep.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use wsgate::routing::ring::{key_hash, Ring};
use wsgate_tests::dns::Dnsmasq;
use wsgate_tests::*;

use crate::deploys::{connect_many, watch_all, Seen};

const DRAIN_WINDOW: Duration = Duration::from_secs(2);

/// A TLS listener, an admin API, and one pool `chat` whose backends come
/// from `discovery` (YAML flow mapping without braces), sticky on `?user=`.
fn config(discovery: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    address: \"127.0.0.1:0\"\n    tls:\n      certificates:\n        - {{ cert: dev.crt, key: dev.key, generate_if_missing: true }}\n\
routes:\n  - {{ path_prefix: /, pool: chat, sticky_key: [\"query:user\"] }}\n\
pools:\n  chat:\n    discovery: {{ {discovery}, interval: 200ms, min_interval: 200ms, max_interval: 1s }}\n    drain: {{ window: 2s }}\n\
timeouts: {{ close: 2s }}\n\
admin: {{ address: \"127.0.0.1:0\", token_file: admin.token }}\n"
    )
}

async fn status(gate: &Gate) -> Value {
    let (code, resp) = admin_call(gate, "GET", "/v1/status").await.unwrap();
    assert_eq!(code, 200, "{resp}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("status is not JSON ({e}): {body}"))
}

/// Polls `/v1/status` every 50 ms until `check` holds, for at most STEP.
async fn status_until(gate: &Gate, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let s = status(gate).await;
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ids of the pool's backends in `state`, sorted.
fn ids_in(status: &Value, state: &str) -> Vec<String> {
    let mut ids: Vec<String> = status["pools"][0]["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["state"] == state)
        .filter_map(|b| b["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// The backend id the ring gives `user` among `ids` (all weight 1).
fn expected(ids: &[String], user: &str) -> String {
    let ring = Ring::new(ids.iter().map(|id| (id.as_str(), 1)));
    let i = ring
        .pick(key_hash(user.as_bytes()))
        .expect("a non-empty ring");
    ids[i].clone()
}

/// A user name (with `prefix`) that the ring over `ids` sends to `target`.
fn user_for(ids: &[String], target: &str, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|u| expected(ids, u) == target)
        .unwrap_or_default()
}

/// A loopback port free on 127.0.0.2 through 127.0.0.5: `type: a` has one
/// port for every address, so the backends differ by address.
fn port_free_on_four_addresses() -> u16 {
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let others: Vec<_> = (3..=5)
            .map(|i| std::net::TcpListener::bind(format!("127.0.0.{i}:{port}")))
            .collect();
        if others.iter().all(Result::is_ok) {
            return port;
        }
    }
    panic!("no port free on 127.0.0.2-5");
}

/// Chat backends on `127.0.0.N:port`, each with its wsgate id (`IP:port`)
/// as its own id, so the hello names the backend wsgate chose.
fn backends_on(port: u16, hosts: &[u8]) -> Vec<Backend> {
    hosts
        .iter()
        .map(|n| {
            let addr = format!("127.0.0.{n}:{port}");
            Backend::start_on(&addr, &addr).unwrap()
        })
        .collect()
}

/// The hosts-file lines that name `chat.test` for these backends.
fn a_records(backends: &[&Backend]) -> Vec<(String, &'static str)> {
    backends
        .iter()
        .map(|b| (b.addr.ip().to_string(), "chat.test"))
        .collect()
}

fn set_hosts(dns: &Dnsmasq, records: &[(String, &str)]) {
    let lines: Vec<(&str, &str)> = records.iter().map(|(ip, n)| (ip.as_str(), *n)).collect();
    dns.set_hosts(&lines).unwrap();
}

/// An upgrade attempt over TLS; the whole response head.
async fn upgrade_head(gate: &Gate, user: &str) -> String {
    let mut s = tls_stream(gate).await.unwrap();
    let req = format!(
        "GET /echo?user={user} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    raw_request(&mut s, req.as_bytes()).await.unwrap()
}

/// Whether a client's connection still works: a Ping gets its Pong.
async fn alive(ws: &mut Ws) -> bool {
    if ws
        .send(Message::Ping(b"still-there".to_vec().into()))
        .await
        .is_err()
    {
        return false;
    }
    let deadline = Instant::now() + STEP;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        ws.next(),
    )
    .await
    {
        if let Message::Pong(p) = m {
            return p.as_ref() == b"still-there";
        }
    }
    false
}

/// Waits for every watcher; checks that exactly `gone`'s users got 1012,
/// paced over the drain window, and that each of them lands on the
/// backend the ring over `remaining` gives it. Returns the untouched
/// clients, still connected.
async fn only_gone_users_closed(
    gate: &Gate,
    watchers: Vec<tokio::task::JoinHandle<(Seen, Option<Ws>)>>,
    gone: &str,
    remaining: &[String],
) -> Vec<Ws> {
    let mut closes = Vec::new();
    let mut untouched = Vec::new();
    for w in watchers {
        let (seen, ws) = w.await.unwrap();
        if seen.backend == gone {
            let (code, at) = seen.close.unwrap_or_else(|| panic!("no close: {seen:?}"));
            assert_eq!(code, 1012, "{seen:?}");
            closes.push(at);
            let landed = backend_of(gate, &seen.user).await.unwrap();
            assert_eq!(landed, expected(remaining, &seen.user), "{seen:?}");
        } else {
            assert!(seen.close.is_none() && seen.error.is_none(), "{seen:?}");
            untouched.extend(ws);
        }
    }
    assert!(closes.len() >= 4, "{} users were on {gone}", closes.len());
    let first = closes.iter().min().copied().unwrap_or_else(Instant::now);
    let last = closes.iter().max().copied().unwrap_or_else(Instant::now);
    assert!(
        last - first >= DRAIN_WINDOW / 2,
        "closes spread over the window, not at once: {:?}",
        last - first
    );
    untouched
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_from_dnsmasq_make_a_sticky_pool_that_follows_them() {
    let port = port_free_on_four_addresses();
    let backends = backends_on(port, &[2, 3, 4, 5]);
    let dir = scratch("discovery-a");
    let dns = Dnsmasq::start(&dir).unwrap();
    let gate = Gate::start(
        &config(&format!(
            "dns: chat.test, port: {port}, nameservers: [\"{}\"]",
            dns.addr
        )),
        1,
    )
    .unwrap();

    // Before the first answer the pool is empty: 503 with Retry-After,
    // and status says why.
    let s = status_until(&gate, "a failed first resolution", |s| {
        s["pools"][0]["discovery"]["consecutive_failures"].as_u64() >= Some(1)
    })
    .await;
    assert!(ids_in(&s, "active").is_empty(), "{s}");
    let head = upgrade_head(&gate, "early").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 5"),
        "{head}"
    );

    // (a) Three A records: three backends, every user sticky to the one
    // the ring gives it.
    set_hosts(
        &dns,
        &a_records(&[&backends[0], &backends[1], &backends[2]]),
    );
    let three: Vec<String> = backends[..3].iter().map(|b| b.id.clone()).collect();
    let s = status_until(&gate, "three discovered backends", |s| {
        ids_in(s, "active") == three
    })
    .await;
    assert_eq!(s["pools"][0]["discovery"]["backends"], 3, "{s}");
    assert_eq!(s["pools"][0]["discovery"]["error"], Value::Null, "{s}");
    let clients = connect_many(&gate, 60, "user-").await;
    for (user, backend, _) in &clients {
        assert_eq!(backend, &expected(&three, user), "{user}");
    }
    for (user, backend, _) in clients.iter().take(5) {
        assert_eq!(&backend_of(&gate, user).await.unwrap(), backend, "sticky");
    }

    // (b) One record removed: its users get 1012, paced over the window,
    // and land on their next choice; nobody else is touched.
    let gone = three[1].clone();
    let until = Instant::now() + DRAIN_WINDOW + Duration::from_secs(5);
    let watchers = watch_all(clients, until);
    set_hosts(&dns, &a_records(&[&backends[0], &backends[2]]));
    let two = vec![three[0].clone(), three[2].clone()];
    status_until(&gate, "the removed record's backend gone", |s| {
        ids_in(s, "active") == two
    })
    .await;
    let mut untouched = only_gone_users_closed(&gate, watchers, &gone, &two).await;

    // (c) One record added: it takes new users; nobody live moves (keep).
    set_hosts(
        &dns,
        &a_records(&[&backends[0], &backends[2], &backends[3]]),
    );
    let mut with_new = vec![two[0].clone(), two[1].clone(), backends[3].id.clone()];
    with_new.sort();
    status_until(&gate, "the added record's backend", |s| {
        ids_in(s, "active") == with_new
    })
    .await;
    for i in 0..3 {
        let user = user_for(&with_new, &backends[3].id, &format!("new-{i}-"));
        assert_eq!(backend_of(&gate, &user).await.unwrap(), backends[3].id);
    }
    for ws in &mut untouched {
        assert!(
            alive(ws).await,
            "a live client was disturbed by the addition"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_down_keeps_the_pool_and_status_and_metrics_say_so() {
    let port = port_free_on_four_addresses();
    let backends = backends_on(port, &[2, 3]);
    let dir = scratch("discovery-down");
    let mut dns = Dnsmasq::start(&dir).unwrap();
    set_hosts(&dns, &a_records(&[&backends[0], &backends[1]]));
    let gate = Gate::start(
        &config(&format!(
            "dns: chat.test, port: {port}, nameservers: [\"{}\"]",
            dns.addr
        )),
        1,
    )
    .unwrap();
    let ids: Vec<String> = backends.iter().map(|b| b.id.clone()).collect();
    status_until(&gate, "two discovered backends", |s| {
        ids_in(s, "active") == ids
    })
    .await;

    // (d) The DNS server goes away: the pool keeps its backends.
    dns.stop();
    let s = status_until(&gate, "resolution failing", |s| {
        s["pools"][0]["discovery"]["consecutive_failures"].as_u64() >= Some(2)
    })
    .await;
    assert_eq!(ids_in(&s, "active"), ids, "{s}");
    assert!(s["pools"][0]["discovery"]["error"].is_string(), "{s}");
    for user in ["alice", "bob", "carol"] {
        assert_eq!(
            backend_of(&gate, user).await.unwrap(),
            expected(&ids, user),
            "users are still served"
        );
    }
    let (code, text, err) = gate.cli(&["status"]).unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("FAILING") && text.contains("keeping the last good 2 backends"),
        "{text}"
    );
    let (code, metrics) = admin_call(&gate, "GET", "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let sample = |name: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{pool=\"chat\"}} ")))
            .and_then(|v| v.trim().parse().ok())
    };
    assert_eq!(sample("wsgate_discovery_up"), Some(0), "{metrics}");
    assert!(
        sample("wsgate_discovery_failures_total") >= Some(2),
        "{metrics}"
    );
    assert!(
        sample("wsgate_discovery_last_success_timestamp_seconds") > Some(0),
        "{metrics}"
    );
    assert_eq!(sample("wsgate_discovery_backends"), Some(2), "{metrics}");
    assert_eq!(sample("wsgate_pool_backends"), Some(2), "{metrics}");

    // Back on the same port: resolution works again.
    dns.restart().unwrap();
    let s = status_until(&gate, "resolution working again", |s| {
        s["pools"][0]["discovery"]["error"].is_null()
    })
    .await;
    assert_eq!(ids_in(&s, "active"), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_host_name_ids_with_their_own_ports() {
    let names = ["chat-0.chat.test", "chat-1.chat.test", "chat-2.chat.test"];
    let backends: Vec<Backend> = names.iter().map(|n| Backend::start(n).unwrap()).collect();
    let records = |with: &[&Backend]| -> Vec<String> {
        with.iter()
            .flat_map(|b| {
                [
                    format!("srv-host=_ws._tcp.chat.test,{},{}", b.id, b.addr.port()),
                    format!("host-record={},{}", b.id, b.addr.ip()),
                ]
            })
            .collect()
    };
    let dir = scratch("discovery-srv");
    let mut dns = Dnsmasq::start(&dir).unwrap();
    dns.set_records(&records(&[&backends[0], &backends[1], &backends[2]]))
        .unwrap();
    let gate = Gate::start(
        &config(&format!(
            "dns: _ws._tcp.chat.test, type: srv, nameservers: [\"{}\"]",
            dns.addr
        )),
        1,
    )
    .unwrap();

    // (e) Ids are the targets' host names; addresses their own ports.
    let ids: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let s = status_until(&gate, "three SRV backends", |s| ids_in(s, "active") == ids).await;
    for b in &backends {
        let listed = s["pools"][0]["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["id"] == b.id.as_str())
            .map(|x| x["address"].clone());
        assert_eq!(listed, Some(Value::from(b.addr.to_string())), "{s}");
    }
    assert_eq!(s["pools"][0]["discovery"]["type"], "srv");
    let clients = connect_many(&gate, 45, "srv-user-").await;
    for (user, backend, _) in &clients {
        assert_eq!(backend, &expected(&ids, user), "{user}");
    }

    // A target that leaves the SRV answer is drained like any other.
    let until = Instant::now() + DRAIN_WINDOW + Duration::from_secs(5);
    let watchers = watch_all(clients, until);
    dns.set_records(&records(&[&backends[0], &backends[2]]))
        .unwrap();
    let remaining = vec![ids[0].clone(), ids[2].clone()];
    status_until(&gate, "chat-1 gone", |s| ids_in(s, "active") == remaining).await;
    let untouched = only_gone_users_closed(&gate, watchers, &ids[1], &remaining).await;
    assert!(!untouched.is_empty());
}
