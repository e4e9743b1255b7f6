//! Replicas agree, proven: two wsgate processes of this build and a third
//! of a build with other code generation (`-C target-cpu=native`, built by
//! `scripts/test.sh`) map 100,000 keys to the same backends, before and
//! after a drain and after a backend is added.
//!
//! 100,000 keys through WebSocket connections would take minutes, so each
//! binary maps them with `wsgate route --keys-from` (the data path's own
//! decision functions); a sample of 200 keys through real client
//! connections to each running process proves that batch answer is what
//! the proxies do.

use std::path::{Path, PathBuf};

use futures_util::stream::{self, StreamExt};
use wsgate_tests::*;

const KEYS: usize = 100_000;
/// Every SAMPLE_STEP-th key is also checked through the proxies: 200 keys.
const SAMPLE_STEP: usize = 500;
const TOKEN: &str = "replicas-test-token";
const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";

/// Every third key is 300 to 800 bytes long: xxh3 hashes inputs over 240
/// bytes with its SIMD loop, which is SSE2 in the default build and AVX2
/// (or AVX-512) in the native one, so those keys exercise code that
/// differs between the builds. (Short keys take the same scalar path in both.)
fn key(i: usize) -> String {
    if i % 3 == 0 {
        format!("session-{i}-{}", "abcdefghij".repeat(30 + i % 50))
    } else {
        format!("user-{i}")
    }
}

/// The backend of each key, as `program route --keys-from` maps it.
fn batch(program: &Path, config: &Path, keys: &Path, drained: &[&str]) -> Vec<String> {
    let (config, keys) = (config.display().to_string(), keys.display().to_string());
    let mut args = vec![
        "route",
        "-c",
        &config,
        "--url",
        "wss://localhost/echo?user={key}",
        "--keys-from",
        &keys,
    ];
    for d in drained {
        args.extend(["--drained", d]);
    }
    let (code, out, err) = run_binary(program, &args).unwrap();
    assert_eq!(code, 0, "{}: {err}", program.display());
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), KEYS, "{}", program.display());
    lines
}

/// The same mapping from both builds; returns it.
fn both_builds_agree(config: &Path, keys: &Path, drained: &[&str]) -> Vec<String> {
    let started = std::time::Instant::now();
    let this = batch(&bin("wsgate"), config, keys, drained);
    let native = batch(&native_wsgate(), config, keys, drained);
    let differ = this.iter().zip(&native).filter(|(a, b)| a != b).count();
    assert_eq!(
        differ, 0,
        "{differ} of {KEYS} keys map differently in the native build"
    );
    let mut shares: std::collections::BTreeMap<&str, usize> = Default::default();
    for b in &this {
        *shares.entry(b.as_str()).or_default() += 1;
    }
    println!(
        "drained {drained:?}: both builds agree on {KEYS} keys ({:?} for the two batches): {shares:?}",
        started.elapsed()
    );
    this
}

/// Every sampled key reaches, through each running replica, the backend
/// the batch mapping names.
async fn replicas_do_what_the_batch_says(gates: &[&Gate], mapping: &[String]) {
    for gate in gates {
        let sample: Vec<usize> = (0..KEYS).step_by(SAMPLE_STEP).collect();
        let reached = stream::iter(&sample)
            .map(|&i| async move { (i, backend_of(gate, &key(i)).await) })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        assert_eq!(reached.len(), KEYS / SAMPLE_STEP);
        for (i, got) in reached {
            let got = got.unwrap_or_else(|e| panic!("{}: {e:#}", key(i)));
            assert_eq!(
                got,
                mapping[i],
                "{} through the replica at {}",
                key(i),
                gate.addr()
            );
        }
    }
}

fn replica(program: &Path, yaml: &str) -> Gate {
    let dir = scratch("replica");
    std::fs::write(dir.join("admin.token"), TOKEN).unwrap();
    Gate::start_binary(program, dir, yaml, 1).unwrap()
}

/// `wsgate ARGS --admin A,B,C --token TOKEN`, which must succeed.
fn on_all(gates: &[&Gate], args: &[&str]) -> String {
    let admins: Vec<String> = gates.iter().map(|g| g.admin.unwrap().to_string()).collect();
    let list = admins.join(",");
    let mut all = args.to_vec();
    all.extend(["--admin", &list, "--token", TOKEN]);
    let (code, out, err) = wsgate(&all).unwrap();
    assert_eq!(code, 0, "{args:?}: {out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_of_two_builds_map_100_000_keys_identically() {
    let native = native_wsgate();
    let mut backends = start_backends(&["b1", "b2", "b3"]);
    let yaml_of = |backends: &[Backend]| tls_config(&weight_one(backends), ADMIN);
    let yaml = yaml_of(&backends);
    let a = replica(&bin("wsgate"), &yaml);
    let b = replica(&bin("wsgate"), &yaml);
    let c = replica(&native, &yaml);
    let gates = [&a, &b, &c];
    let dir = scratch("keys");
    let keys: PathBuf = dir.join("keys.txt");
    let text: String = (0..KEYS).map(|i| key(i) + "\n").collect();
    std::fs::write(&keys, text).unwrap();
    let config = a.dir.join("wsgate.yaml");

    // All backends active.
    let all = both_builds_agree(&config, &keys, &[]);
    replicas_do_what_the_batch_says(&gates, &all).await;

    // b2 drained on every replica at once: only b2's keys move.
    on_all(&gates, &["drain", "chat/b2"]);
    let drained = both_builds_agree(&config, &keys, &["chat/b2"]);
    for (before, after) in all.iter().zip(&drained) {
        assert!(
            before == after || before == "b2",
            "a key left {before} for {after}"
        );
        assert_ne!(after, "b2");
    }
    replicas_do_what_the_batch_says(&gates, &drained).await;

    // b4 added by a reload on every replica (b2 stays drained): keys move
    // only onto b4.
    backends.push(Backend::start("b4").unwrap());
    let grown = yaml_of(&backends);
    for g in gates {
        std::fs::write(g.dir.join("wsgate.yaml"), &grown).unwrap();
    }
    let out = on_all(&gates, &["reload"]);
    assert_eq!(
        out.matches("added chat/b4").count() + out.matches("added none").count(),
        3,
        "{out}"
    );
    let added = both_builds_agree(&config, &keys, &["chat/b2"]);
    for (before, after) in drained.iter().zip(&added) {
        assert!(
            before == after || after == "b4",
            "a key moved from {before} to {after}"
        );
    }
    assert!(added.iter().any(|b| b == "b4"));
    replicas_do_what_the_batch_says(&gates, &added).await;
}
