//! SIGTERM one backend while 20 users send 1,000 messages through wsgate:
//! its clients get 1012, reconnect (backoff with full jitter), resume, and
//! every participant ends with the same 1,010 messages (1,000 plus 10 sent
//! while the backend was down), no gap, no duplicate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::Rng;
use serde_json::json;
use tokio::sync::Barrier;
use wsgate_tests::STEP;

use crate::cluster::{backend, gate, user_on, Chatter, Msg, Pos, Redis, Target};

const SENDERS: usize = 20;
const PER_SENDER: usize = 50;
const WHILE_DOWN: usize = 10;
const TOTAL: usize = SENDERS * PER_SENDER + WHILE_DOWN;
const ROOM: &str = "load";
/// Generous limits: this test is about restarts, not flood control.
const FLAGS: &[&str] = &[
    "--rate",
    "10000",
    "--burst",
    "10000",
    "--drain-window",
    "1s",
];

/// What one participant saw.
struct Report {
    user: String,
    first_backend: String,
    /// Close codes of the connections that ended before the run did.
    closes: Vec<Option<u16>>,
    received: Vec<Msg>,
    recovered: usize,
}

/// Full jitter: uniform in [0, min(cap, base * 2^attempt)).
fn backoff(attempt: u32) -> Duration {
    let ceiling = (50u64 << attempt.min(10)).min(500);
    Duration::from_millis(rand::thread_rng().gen_range(0..ceiling))
}

/// Joins, sends `sends` messages one at a time (each resent under the same
/// id until acknowledged), and reads until it has all `TOTAL` messages,
/// reconnecting and resuming whenever the connection ends.
async fn participant(
    target: Target,
    user: String,
    sends: usize,
    ready: Arc<Barrier>,
    progress: Arc<AtomicUsize>,
) -> Result<Report> {
    let mut report = Report {
        user: user.clone(),
        first_backend: String::new(),
        closes: Vec::new(),
        received: Vec::new(),
        recovered: 0,
    };
    let mut cursor: Option<Pos> = None;
    let mut sent = 0usize; // acknowledged sends
    let mut attempt = 0u32;
    loop {
        let mut c = match Chatter::connect_to(&target, &user).await {
            Ok(c) => c,
            Err(_) => {
                // The backend is down or draining: wsgate answers 502.
                attempt += 1;
                if attempt > 400 {
                    bail!("{user}: could not reconnect");
                }
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
        };
        let first = cursor.is_none();
        let joined = match c.join(ROOM, cursor.as_ref()).await {
            Ok(j) => j,
            Err(_) => continue, // lost again mid-join: retry
        };
        attempt = 0;
        if first {
            report.first_backend = c.backend.clone();
            cursor = Some(joined.pos.clone());
            ready.wait().await;
        } else {
            if joined.complete != Some(true) {
                bail!("{user}: resume incomplete");
            }
            report.recovered += joined.recovered.len();
        }
        let mut seen = 0; // of c.messages
        let mut in_flight = false;
        let ended = loop {
            if !in_flight && sent < sends {
                let id = format!("{user}/{sent}");
                let req = json!({"type":"send","room":ROOM,"id":id,"text":format!("n{sent}")});
                if c.send_json(req).await.is_err() {
                    break c.closed.flatten();
                }
                in_flight = true;
            }
            for m in &c.messages[seen..] {
                let want = cursor.as_ref().map_or(0, |p| p.offset) + 1;
                if m.offset != want {
                    bail!("{user}: got offset {} where {want} was due", m.offset);
                }
                cursor = Some(Pos {
                    epoch: m.epoch.clone(),
                    offset: m.offset,
                });
                report.received.push(m.clone());
                progress.fetch_add(1, Ordering::Relaxed);
            }
            seen = c.messages.len();
            while let Some(e) = c.events.pop_front() {
                if e["type"] == "ack" && e["id"] == format!("{user}/{sent}") && in_flight {
                    in_flight = false;
                    sent += 1;
                } else if e["type"] == "error" {
                    bail!("{user}: server error {e}");
                }
            }
            if sent == sends && report.received.len() == TOTAL {
                c.close().await;
                return Ok(report);
            }
            if c.pump().await.is_err() || c.closed.is_some() {
                break c.closed.flatten();
            }
        };
        report.closes.push(ended);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_restart_under_load_loses_and_duplicates_nothing() {
    let redis = Redis::start().unwrap();
    let a = backend("chat-a", "127.0.0.1:0", Some(&redis), FLAGS).unwrap();
    let b = backend("chat-b", "127.0.0.1:0", Some(&redis), FLAGS).unwrap();
    let gate = gate(&[&a, &b]).unwrap();
    let target = Target::of(&gate).unwrap();
    let ready = Arc::new(Barrier::new(SENDERS + 1));
    let progress = Arc::new(AtomicUsize::new(0));

    // A controller user on chat-a, to write while chat-b is down.
    let ids = ["chat-a", "chat-b"];
    let mut controller = Chatter::connect(&gate, &user_on(&ids, "chat-a", "ctl"))
        .await
        .unwrap();
    controller.join(ROOM, None).await.unwrap();

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SENDERS {
        let user = format!("sender-{i}");
        tasks.spawn(participant(
            target.clone(),
            user,
            PER_SENDER,
            ready.clone(),
            progress.clone(),
        ));
    }
    tokio::time::timeout(STEP, ready.wait())
        .await
        .expect("every sender joined");

    // Restart chat-b once about a quarter of the deliveries are done.
    let quarter = SENDERS * TOTAL / 4;
    tokio::time::timeout(STEP * 3, async {
        while progress.load(Ordering::Relaxed) < quarter {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the run makes progress");
    let b_addr = b.addr;
    b.proc.signal("TERM");
    let mut b = b;
    let code = tokio::task::spawn_blocking(move || b.proc.wait_exit(STEP))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "chat-b exits cleanly after its drain");
    for i in 0..WHILE_DOWN {
        controller
            .say(ROOM, &format!("ctl/{i}"), "while chat-b is down")
            .await
            .unwrap();
    }
    let b = backend("chat-b", &b_addr.to_string(), Some(&redis), FLAGS).unwrap();

    // The first participant to see a gap, a duplicate or an error fails
    // the test at once (the others would wait for its messages forever).
    let mut reports = Vec::new();
    while let Some(done) = tokio::time::timeout(STEP * 6, tasks.join_next())
        .await
        .context("participants timed out")
        .unwrap()
    {
        reports.push(done.unwrap().unwrap());
    }
    controller.until_messages(TOTAL).await.unwrap();

    let reference: Vec<&str> = controller.messages.iter().map(|m| m.id.as_str()).collect();
    let mut unique = reference.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), TOTAL, "every message stored exactly once");
    let (mut on_b, mut on_a, mut recovered) = (0, 0, 0);
    for r in &reports {
        let got: Vec<&str> = r.received.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(got, reference, "{} saw a different sequence", r.user);
        if r.first_backend == "chat-b" {
            on_b += 1;
            recovered += r.recovered;
            assert!(
                r.closes.contains(&Some(1012)),
                "{} on chat-b got 1012, got {:?}",
                r.user,
                r.closes
            );
        } else {
            on_a += 1;
            assert!(
                r.closes.is_empty(),
                "{} on chat-a was disturbed: {:?}",
                r.user,
                r.closes
            );
        }
    }
    assert!(
        on_a > 0 && on_b > 0,
        "senders on both backends ({on_a}, {on_b})"
    );
    assert!(
        recovered >= on_b * WHILE_DOWN,
        "each chat-b client recovered at least the {WHILE_DOWN} messages sent while it was down"
    );
    eprintln!(
        "restart: {TOTAL} messages x {} clients; {on_b} clients on chat-b reconnected, {recovered} messages recovered",
        reports.len() + 1
    );
    controller.close().await;
    drop(b);
}
