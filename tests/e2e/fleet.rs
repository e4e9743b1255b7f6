//! Fleet-wide operations: `drain`, `undrain`, `status` and `reload` on
//! several replicas at once (`--admin A,B,...` or `admin.peers`), with one
//! of them unreachable. Two real wsgate processes sharing one token, real
//! backends, real clients.

use std::net::SocketAddr;

use futures_util::stream::{self, StreamExt};
use wsgate_tests::*;

const TOKEN: &str = "fleet-test-token";
const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// A loopback address nothing listens on: bound, then released.
fn dead_address() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A wsgate whose admin token is [`TOKEN`].
fn replica(yaml: &str) -> Gate {
    let dir = scratch("fleet");
    std::fs::write(dir.join("admin.token"), TOKEN).unwrap();
    Gate::start_in(dir, yaml, 1).unwrap()
}

/// `wsgate ARGS --admin LIST --token TOKEN`.
fn fleet_cli(args: &[&str], admins: &[String]) -> (i32, String, String) {
    let list = admins.join(",");
    let mut all = args.to_vec();
    all.extend(["--admin", &list, "--token", TOKEN]);
    wsgate(&all).unwrap()
}

/// `drain BACKEND --window 1s --wait` on `admins`: each of `reachable`
/// says it drains, and the one bar counts them all to 0.
fn drain_and_wait(
    backend: &str,
    config: &str,
    admins: &[String],
    reachable: &[String],
) -> (i32, String, String) {
    let args = [
        "drain",
        backend,
        "--window",
        "1s",
        "--wait",
        "--timeout",
        "60s",
        "-c",
        config,
    ];
    let (code, out, err) = fleet_cli(&args, admins);
    for name in reachable {
        let line = format!("{name}: {backend}: draining, closing ");
        assert!(out.contains(&line), "{out}");
    }
    let n = reachable.len();
    let done = format!("{backend}: no connections left on {n} replicas");
    assert!(out.contains(&done), "{out}");
    let bar = format!("{backend} on {n} replicas: 0 connections left");
    assert!(err.contains(&bar), "{err}");
    (code, out, err)
}

/// A client of `backend`, read on a task of its own until a Close arrives.
struct Watched {
    backend: String,
    close: tokio::task::JoinHandle<Option<u16>>,
}

/// `n` users on `gate`, each with its open connection watched.
async fn clients(gate: &Gate, n: usize) -> Vec<Watched> {
    stream::iter(0..n)
        .map(|i| async move {
            let mut ws = wss(gate, &format!("/echo?user=u{i}")).await.unwrap();
            let backend = hello(&mut ws).await.unwrap();
            let close = tokio::spawn(async move { close_within(&mut ws, 3 * STEP).await });
            Watched { backend, close }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// After a drain of `backend` that waited for its last connection: each of
/// its clients got a Close 1012, and no other client got a Close.
async fn closed_exactly(backend: &str, clients: Vec<Watched>) {
    let mut closed = 0;
    for c in clients {
        if c.backend == backend {
            let code = tokio::time::timeout(STEP, c.close).await.unwrap().unwrap();
            assert_eq!(code, Some(1012), "a {backend} client");
            closed += 1;
        } else {
            assert!(
                !c.close.is_finished(),
                "a {} client was closed by the drain of {backend}",
                c.backend
            );
            c.close.abort();
        }
    }
    assert!(closed > 0, "some users were on {backend}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_drain_status_undrain_reload_on_two_replicas_and_one_unreachable() {
    let backends = start_backends(&["b1", "b2", "b3"]);
    let spec = weight_one(&backends);
    let yaml = tls_config(&spec, ADMIN);
    let (a, b) = (replica(&yaml), replica(&yaml));
    let both: Vec<String> = [&a, &b]
        .iter()
        .map(|g| g.admin.unwrap().to_string())
        .collect();
    let dead = dead_address().to_string();
    let mut with_dead = both.clone();
    with_dead.push(dead.clone());
    let on_a = clients(&a, 40).await;
    let on_b = clients(&b, 40).await;
    let config = a.dir.join("wsgate.yaml").display().to_string();

    // Every replica reachable: both drained, one bar over both, exit 0.
    let (code, out, err) = drain_and_wait("chat/b2", &config, &both, &both);
    assert_eq!(code, 0, "{out}{err}");
    closed_exactly("b2", on_a).await;
    closed_exactly("b2", on_b).await;

    // Status of all three: a row per replica and backend, the dead one named.
    let (code, out, err) = fleet_cli(&["status", "-c", &config], &with_dead);
    assert_eq!(code, 1, "an unreachable replica fails the command: {out}");
    assert!(out.starts_with("REPLICA"), "{out}");
    for name in &both {
        let rows: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(name.as_str()) && l.contains(" chat "))
            .collect();
        assert_eq!(rows.len(), 3, "{out}");
        assert!(
            rows.iter()
                .any(|r| r.contains(" b2 ") && r.contains("draining")),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!("{dead}  UNREACHABLE: cannot reach the admin API")),
        "{out}"
    );
    assert!(err.contains(&dead), "{err}");
    assert!(!out.contains("disagree"), "both replicas drained b2: {out}");

    // Undrain with one unreachable: the reachable ones still act; exit 1.
    let (code, out, err) = fleet_cli(&["undrain", "chat/b2", "-c", &config], &with_dead);
    assert_eq!(code, 1, "{out}{err}");
    for name in &both {
        assert!(out.contains(&format!("{name}: chat/b2: active")), "{out}");
    }
    assert!(
        err.contains(&format!("wsgate: {dead}: cannot reach the admin API")),
        "{err}"
    );
    // The peers from the config file, without --admin: all active again.
    let peers_file = a.dir.join("peers.yaml");
    std::fs::write(
        &peers_file,
        format!(
            "admin: {{ address: \"127.0.0.1:1\", token_file: admin.token, peers: [\"http://{}\", \"{}\"] }}\n",
            both[0], both[1]
        ),
    )
    .unwrap();
    let peers = peers_file.display().to_string();
    let (code, out, err) = wsgate(&["status", "-c", &peers, "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{out}");
    for replica in list.as_array().unwrap() {
        let pools = replica["status"]["pools"].as_array().unwrap();
        let states: Vec<&str> = pools[0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["active"; 3], "{out}");
    }

    // Drain --wait with one replica unreachable: both reachable ones are
    // drained and waited for, the missing one is named, exit 1.
    let on_a = clients(&a, 40).await;
    let on_b = clients(&b, 40).await;
    let (code, out, err) = drain_and_wait("chat/b3", &config, &with_dead, &both);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!("wsgate: {dead}: cannot reach the admin API")),
        "{err}"
    );
    closed_exactly("b3", on_a).await;
    closed_exactly("b3", on_b).await;

    // Reload both: each replica's outcome, prefixed; exit 0. A replica
    // that rejects the file fails the command.
    let (code, out, err) = fleet_cli(&["reload", "-c", &config], &both);
    assert_eq!(code, 0, "{err}");
    for name in &both {
        assert!(
            out.contains(&format!("{name}: reloaded: added none; removed none")),
            "{out}"
        );
    }
    std::fs::write(b.dir.join("wsgate.yaml"), "listeners: [}\n").unwrap();
    let (code, out, err) = fleet_cli(&["reload", "-c", &config], &both);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains(&format!("{}: reloaded", both[0])), "{out}");
    assert!(err.contains(&format!("wsgate: {}: ", both[1])), "{err}");
    // And an undrain of one replica only leaves the fleet disagreeing, which status says.
    let (code, _, err) = fleet_cli(&["undrain", "chat/b3", "-c", &config], &both[..1]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = fleet_cli(&["status", "-c", &config], &both);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!(
            "replicas disagree on chat/b3: active on {}; draining on {}",
            both[0], both[1]
        )),
        "{out}"
    );
}
