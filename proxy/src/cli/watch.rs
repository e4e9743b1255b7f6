//! `wsgate status --watch`: the status table redrawn in place every
//! `--interval` until Ctrl-C, for one replica or a fleet. A replica that
//! does not answer shows its error in the frame instead of ending the
//! watch: during an incident is when a replica restarts.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use super::adminclient::{fleet_status_table, status_table, Fleet};
use crate::control::api::Status;

/// Clear the screen and go home: each frame replaces the last.
pub const CLEAR: &str = "\x1b[H\x1b[2J";

/// One frame: a heading with the time and interval, then the table.
/// Pure but for the clock, so the layout is unit-tested.
pub fn frame(
    now_unix: u64,
    interval: Duration,
    replicas: &[(String, Result<Status, String>)],
) -> String {
    let mut out = String::from(CLEAR);
    let (h, m, s) = (now_unix / 3600 % 24, now_unix / 60 % 60, now_unix % 60);
    let _ = writeln!(
        out,
        "wsgate status, every {:?}, {h:02}:{m:02}:{s:02} UTC (Ctrl-C to stop)\n",
        interval
    );
    match replicas {
        [(_, Ok(status))] => out.push_str(&status_table(status)),
        [(name, Err(e))] => {
            let _ = writeln!(out, "{name}: {e}");
        }
        _ => {
            out.push_str(&fleet_status_table(replicas));
            for (name, r) in replicas {
                if let Err(e) = r {
                    let _ = writeln!(out, "{name}: {e}");
                }
            }
        }
    }
    out
}

/// Redraws until Ctrl-C (or SIGTERM), then exits 0.
pub async fn watch(fleet: &Fleet, interval: Duration) -> ExitCode {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        let mut replicas: Vec<(String, Result<Status, String>)> = Vec::new();
        for (member, answer) in fleet.each(|c| c.status()).await {
            replicas.push((member.name.clone(), answer.map_err(|e| e.to_string())));
        }
        for (name, e) in &fleet.unresolved {
            replicas.push((name.clone(), Err(e.to_string())));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(frame(now, interval, &replicas).as_bytes());
        let _ = stdout.flush();
        drop(stdout);
        let terminated = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = terminated => break,
            () = tokio::time::sleep(interval) => {}
        }
    }
    println!();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_clears_the_screen_and_shows_each_replica() {
        use crate::control::api::{BackendState, BackendStatus, PoolStatus};
        let status = Status {
            pools: vec![PoolStatus {
                name: "chat".into(),
                rebalance: "keep".into(),
                backends: vec![BackendStatus {
                    id: "b1".into(),
                    address: None,
                    weight: None,
                    state: BackendState::Active,
                    connections: 3,
                    pending_closes: 0,
                }],
                discovery: None,
                balance: None,
            }],
            reload: None,
            shutting_down: false,
            certificates: Vec::new(),
        };
        let one = frame(
            3_723,
            Duration::from_secs(2),
            &[("a".into(), Ok(status.clone()))],
        );
        assert!(one.starts_with(CLEAR));
        assert!(one.contains("01:02:03 UTC"), "{one}");
        assert!(one.contains("b1"), "{one}");
        let two = frame(
            0,
            Duration::from_secs(1),
            &[
                ("a".into(), Ok(status)),
                ("b".into(), Err("refused".into())),
            ],
        );
        assert!(two.contains("REPLICA"), "{two}");
        assert!(two.contains("b: refused"), "{two}");
    }
}
