//! `wsgate status --watch` (issue 15): redraws in place at the interval,
//! for one replica and for a fleet, and ends cleanly on Ctrl-C (SIGINT).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wsgate_tests::*;

const ADMIN: &str = "admin: { address: \"127.0.0.1:0\", token_file: admin.token }\n";
const CLEAR: &str = "\x1b[H\x1b[2J";

/// Runs `wsgate status --watch` against `admins`, reads until `frames`
/// frames arrived (bounded), interrupts it, and returns its output and
/// exit code.
fn watch(gate: &Gate, admins: &str, frames: usize) -> (String, Option<i32>) {
    let token = std::fs::read_to_string(gate.dir.join("admin.token")).unwrap();
    let mut child = Command::new(bin("wsgate"))
        .args([
            "status",
            "--watch",
            "--interval",
            "200ms",
            "--admin",
            admins,
        ])
        .args(["--token", token.trim()])
        .arg("-c")
        .arg(gate.dir.join("wsgate.yaml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let deadline = Instant::now() + STEP;
    while out.matches(CLEAR).count() < frames {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => out.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => {
                let _ = child.kill();
                panic!("fewer than {frames} frames:\n{out}");
            }
        }
    }
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + STEP;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (out, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_redraws_in_place_and_stops_on_ctrl_c() {
    let b = Backend::start("b1").unwrap();
    let gate = Gate::start(&tls_config(&[("b1", b.addr, 1)], ADMIN), 1).unwrap();
    let admin = gate.admin.unwrap().to_string();
    let (out, code) = watch(&gate, &admin, 3);
    assert_eq!(code, Some(0), "Ctrl-C ends the watch cleanly:\n{out}");
    let frames: Vec<&str> = out.split(CLEAR).filter(|f| !f.is_empty()).collect();
    assert!(frames.len() >= 3, "{out}");
    for f in &frames[..3] {
        assert!(f.contains("wsgate status, every 200ms"), "{f}");
        assert!(f.contains("b1"), "every frame has the table: {f}");
    }

    // A fleet: one table with a replica column, and a replica that does not
    // answer shows its error in the frame instead of ending the watch.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let (out, code) = watch(&gate, &format!("{admin},{dead_addr}"), 2);
    assert_eq!(code, Some(0), "{out}");
    let last = out.split(CLEAR).filter(|f| !f.is_empty()).nth(1).unwrap();
    assert!(last.contains("REPLICA"), "{last}");
    assert!(last.contains(&dead_addr), "{last}");
}
