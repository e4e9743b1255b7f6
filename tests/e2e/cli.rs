//! The command line: `check` validates like `nginx -t`, and `run` refuses a
//! port that is already taken instead of retrying silently.

use std::process::Command;

use wsgate_tests::*;

#[test]
fn check_accepts_the_shipped_configs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in [
        "config/wsgate.yaml",
        "config/demo.yaml",
        "deploy/docker/wsgate.yaml",
    ] {
        let out = Command::new(bin("wsgate"))
            .arg("check")
            .arg("-c")
            .arg(root.join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_rejects_unknown_key_with_its_line() {
    let dir = scratch("check");
    let file = dir.join("bad.yaml");
    let yaml = tls_config(&[("b1", "127.0.0.1:9".parse().unwrap(), 1)], "").replace(
        "routes:\n",
        "routes:\n  - path_prefix: /x\n    pool: chat\n    sticky_keys: []\n",
    );
    std::fs::write(&file, &yaml).unwrap();
    let line = yaml
        .lines()
        .position(|l| l.contains("sticky_keys"))
        .unwrap()
        + 1;
    let out = Command::new(bin("wsgate"))
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("bad.yaml:{line}:")), "{err}");
    assert!(err.contains("unknown field `sticky_keys`"), "{err}");
}

#[test]
fn run_refuses_an_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = scratch("inuse");
    let yaml = format!(
        "listeners: [{{ name: web, address: \"{addr}\" }}]\nroutes: [{{ pool: p }}]\npools: {{ p: {{ backends: [{{ id: a, address: \"127.0.0.1:9\" }}] }} }}\n"
    );
    std::fs::write(dir.join("w.yaml"), yaml).unwrap();
    let mut child = Command::new(bin("wsgate"))
        .arg("run")
        .arg("-c")
        .arg(dir.join("w.yaml"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + STEP;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "wsgate kept running on a taken port"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("already in use"), "{err}");
}

#[test]
fn version_and_help() {
    let out = Command::new(bin("wsgate"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wsgate "));
    for sub in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["gen-cert", "--help"],
    ] {
        let out = Command::new(bin("wsgate")).args(sub).output().unwrap();
        assert!(out.status.success(), "{sub:?}");
    }
}
