//! `wsgate route` predicts, from the config file alone, the backend a real
//! client reaches through a running wsgate, and the runner-up it reaches
//! once that backend is drained.

use futures_util::stream::{self, StreamExt};
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// (backend, runner-up) that `wsgate route --json` prints for `user`.
fn predicted(config: &str, user: &str) -> (String, String) {
    let url = format!("wss://localhost/echo?user={user}");
    let (code, out, err) = wsgate(&["route", "-c", config, "--url", &url, "--json"]).unwrap();
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["key"]["source"], "query:user", "{out}");
    assert_eq!(v["key"]["bytes"], user.len(), "{out}");
    assert!(
        !out.contains(user),
        "the key itself is never printed: {out}"
    );
    let id = |k: &str| v[k]["id"].as_str().unwrap().to_string();
    (id("backend"), id("runner_up"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_predicts_the_backend_and_the_runner_up_after_a_drain() {
    let backends = start_backends(&["b1", "b2", "b3"]);
    let spec = weight_one(&backends);
    let gate = Gate::start(&tls_config(&spec, ADMIN), 1).unwrap();
    let config = gate.dir.join("wsgate.yaml").display().to_string();
    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let predictions: Vec<(String, String)> = users.iter().map(|u| predicted(&config, u)).collect();
    let reached = stream::iter(&users)
        .map(|u| backend_of(&gate, u))
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    for ((user, (backend, _)), got) in users.iter().zip(&predictions).zip(reached) {
        assert_eq!(&got.unwrap(), backend, "{user}");
    }

    // Drain alice's (user-0's) backend: every user that was on it reaches
    // its printed runner-up, everybody else stays.
    let drained = predictions[0].0.clone();
    let (code, _, err) = gate.cli(&["drain", &format!("chat/{drained}")]).unwrap();
    assert_eq!(code, 0, "{err}");
    let reached = stream::iter(&users)
        .map(|u| backend_of(&gate, u))
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    let mut moved = 0;
    for ((user, (backend, runner_up)), got) in users.iter().zip(&predictions).zip(reached) {
        let got = got.unwrap();
        if *backend == drained {
            assert_eq!(&got, runner_up, "{user} left {drained} for another backend");
            moved += 1;
        } else {
            assert_eq!(
                &got, backend,
                "{user} moved although its backend was not drained"
            );
        }
    }
    assert!(moved > 0);
    // And `route --drained` says so too, from the file alone.
    let url = "wss://localhost/echo?user=user-0";
    let drained_flag = format!("chat/{drained}");
    let args = [
        "route",
        "-c",
        &config,
        "--url",
        url,
        "--drained",
        &drained_flag,
        "--json",
    ];
    let (code, out, err) = wsgate(&args).unwrap();
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["backend"]["id"].as_str(), Some(predictions[0].1.as_str()));
}

#[test]
fn route_errors_say_what_is_wrong_with_their_exit_codes() {
    let dir = scratch("route");
    let file = dir.join("w.yaml");
    let yaml = "listeners: [{ name: web, address: \"127.0.0.1:0\" }]\n\
routes: [{ path_prefix: /ws, pool: p, sticky_key: [\"query:user\"], on_missing_key: reject }]\n\
pools: { p: { backends: [{ id: a, address: \"127.0.0.1:9\" }] } }\n";
    std::fs::write(&file, yaml).unwrap();
    let config = file.display().to_string();
    let route = |extra: &[&str]| {
        let mut args = vec!["route", "-c", &config];
        args.extend_from_slice(extra);
        wsgate(&args).unwrap()
    };
    // Human-readable answer, one backend: no runner-up.
    let (code, out, err) = route(&["--url", "ws://h/ws/x?user=alice"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("routes[0] (host *, path_prefix /ws) -> pool p"),
        "{out}"
    );
    assert!(
        out.contains("key        query:user, 5 bytes, hash 294b4a2acd45d1cb"),
        "{out}"
    );
    assert!(out.contains("backend    a (127.0.0.1:9)"), "{out}");
    assert!(out.contains("runner-up  none"), "{out}");
    let (code, _, err) = route(&["--url", "ws://h/chat?user=alice"]);
    assert_eq!(code, 2);
    assert!(err.contains("no route for this host and path"), "{err}");
    let (code, _, err) = route(&["--url", "ws://h/ws"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("missing sticky key (tried query:user)"),
        "{err}"
    );
    let (code, _, err) = route(&["--url", "ws://h/ws?user=a", "--drained", "p/a"]);
    assert_eq!(code, 2, "every backend drained: {err}");
    for bad in [
        &["--url", "not a url"][..],
        &["--url", "ftp://h/ws?user=a"],
        &["--url", "ws://h/ws?user=a", "--header", "no colon"],
        &["--url", "ws://h/ws?user=a", "--drained", "p/nope"],
        &["--url", "ws://h/ws?user=a", "--client-ip", "300.1.1.1"],
        &["--url", "ws://h/ws?user=a", "--keys-from", "/dev/null"],
    ] {
        let (code, _, err) = route(bad);
        assert_eq!(code, 64, "{bad:?}: {err}");
        assert!(
            err.starts_with("wsgate: ") || err.starts_with("error: "),
            "{err}"
        );
    }
    // An invalid config is reported like `wsgate check`: file:line:column.
    std::fs::write(
        &file,
        yaml.replace("path_prefix: /ws,", "path_prefix: /ws, sticky: 1,"),
    )
    .unwrap();
    let (code, _, err) = route(&["--url", "ws://h/ws?user=a"]);
    assert_eq!(code, 1);
    assert!(err.contains("w.yaml:2:"), "{err}");
    assert!(err.contains("unknown field `sticky`"), "{err}");
}
