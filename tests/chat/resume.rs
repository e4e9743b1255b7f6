//! Resume with `since`: exactly the missed messages, also across a backend
//! death; resends stored once; trimmed history reported as incomplete.

use std::time::Duration;

use wsgate_tests::{tls_config, Gate, STEP};

use crate::cluster::{assert_contiguous, backend, gate, user_on, Chatter, Pos, Redis};

/// Pool health checks, so wsgate moves a dead backend's users elsewhere.
const HEALTH: &str =
    "    health_check: { path: /healthz, interval: 200ms, timeout: 200ms, fall: 1, rise: 1 }\n";

fn ids(msgs: &[crate::cluster::Msg]) -> Vec<&str> {
    msgs.iter().map(|m| m.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_gets_exactly_the_missed_messages_even_after_the_backend_dies() {
    let redis = Redis::start().unwrap();
    let a = backend("chat-a", "127.0.0.1:0", Some(&redis), &[]).unwrap();
    let mut b = backend("chat-b", "127.0.0.1:0", Some(&redis), &[]).unwrap();
    let pool = [("chat-a", a.addr, 1), ("chat-b", b.addr, 1)];
    let gate1 = Gate::start(&tls_config(&pool, HEALTH), 1).unwrap();
    let ids_ = ["chat-a", "chat-b"];
    let alice_name = user_on(&ids_, "chat-b", "alice");
    let mut bob = Chatter::connect(&gate1, &user_on(&ids_, "chat-a", "bob"))
        .await
        .unwrap();
    let mut alice = Chatter::connect(&gate1, &alice_name).await.unwrap();
    assert_eq!(
        (alice.backend.as_str(), bob.backend.as_str()),
        ("chat-b", "chat-a")
    );
    alice.join("resume", None).await.unwrap();
    bob.join("resume", None).await.unwrap();
    for i in 1..=3 {
        bob.say("resume", &format!("m{i}"), "before").await.unwrap();
    }
    alice.until_messages(3).await.unwrap();
    let cursor = alice.cursor().unwrap();
    assert_eq!(cursor.offset, 3);

    // 1. Disconnected: messages sent meanwhile arrive on resume, once.
    alice.close().await;
    for i in 4..=8 {
        bob.say("resume", &format!("m{i}"), "while away")
            .await
            .unwrap();
    }
    let mut alice = Chatter::connect(&gate1, &alice_name).await.unwrap();
    let joined = alice.join("resume", Some(&cursor)).await.unwrap();
    assert_eq!(joined.complete, Some(true));
    assert_eq!(ids(&joined.recovered), ["m4", "m5", "m6", "m7", "m8"]);
    assert_contiguous("alice", &alice.messages, 4);

    // 2. A resent message is acknowledged again but stored once.
    let first = alice.say("resume", "x1", "once").await.unwrap();
    let again = alice.say("resume", "x1", "once").await.unwrap();
    assert_eq!(first["duplicate"], false);
    assert_eq!(again["duplicate"], true);
    assert_eq!(first["offset"], again["offset"]);
    bob.say("resume", "m10", "after the resend").await.unwrap();
    alice.until_messages(7).await.unwrap();
    assert_eq!(ids(&alice.messages[5..]), ["x1", "m10"]);
    let cursor = alice.cursor().unwrap();

    // 3. Its backend is killed; once wsgate's health check marks it down,
    //    wsgate sends alice to chat-a.
    b.proc.signal("KILL");
    b.proc.wait_exit(STEP);
    // wsgate ends the session (1014); a broken stream is fine too.
    let _ = alice.until_closed().await;
    assert!(alice.closed.is_some(), "alice's connection ends");
    for i in 11..=15 {
        bob.say("resume", &format!("m{i}"), "while dead")
            .await
            .unwrap();
    }
    let mut alice = tokio::time::timeout(STEP, async {
        loop {
            // 502 until the health check notices; then chat-a answers.
            match Chatter::connect(&gate1, &alice_name).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("wsgate routes alice to a live backend");
    assert_eq!(alice.backend, "chat-a", "another backend serves alice now");
    let joined = alice.join("resume", Some(&cursor)).await.unwrap();
    assert_eq!(joined.complete, Some(true));
    assert_eq!(ids(&joined.recovered), ["m11", "m12", "m13", "m14", "m15"]);
    assert!(joined.presence.contains(&bob.user) && joined.presence.contains(&alice.user));
    // The de-duplication record lives in Redis, not in the dead backend.
    let resent = alice.say("resume", "x1", "once").await.unwrap();
    assert_eq!(resent["duplicate"], true);
    assert_eq!(resent["offset"], first["offset"]);

    bob.say("resume", "m16", "last").await.unwrap();
    bob.until_messages(16).await.unwrap();
    assert_contiguous("bob", &bob.messages, 1);
    assert_eq!(
        ids(&bob.messages).iter().filter(|id| **id == "x1").count(),
        1
    );
    alice.until_messages(6).await.unwrap();
    assert_eq!(alice.messages.last().map(|m| m.id.as_str()), Some("m16"));
    assert_contiguous("alice", &alice.messages, 11);
    alice.close().await;
    bob.close().await;
}

/// History capped at 5: a client that missed 10 gets the last 5 and
/// `complete: false`; a client from another epoch gets `complete: false`.
async fn trimmed_history_is_reported(redis: Option<&Redis>) {
    let a = backend("chat-a", "127.0.0.1:0", redis, &["--history-size", "5"]).unwrap();
    let gate = gate(&[&a]).unwrap();
    let mut writer = Chatter::connect(&gate, "writer").await.unwrap();
    writer.join("small", None).await.unwrap();
    let mut reader = Chatter::connect(&gate, "reader").await.unwrap();
    reader.join("small", None).await.unwrap();
    writer.say("small", "w1", "one").await.unwrap();
    reader.until_messages(1).await.unwrap();
    let cursor = reader.cursor().unwrap();
    reader.close().await;
    for i in 2..=11 {
        writer.say("small", &format!("w{i}"), "more").await.unwrap();
    }

    let mut reader = Chatter::connect(&gate, "reader").await.unwrap();
    let joined = reader.join("small", Some(&cursor)).await.unwrap();
    assert_eq!(
        joined.complete,
        Some(false),
        "history no longer reaches back"
    );
    assert_eq!(ids(&joined.recovered), ["w7", "w8", "w9", "w10", "w11"]);
    let up_to_date = reader.cursor().unwrap();
    reader.close().await;

    let mut reader = Chatter::connect(&gate, "reader").await.unwrap();
    let joined = reader.join("small", Some(&up_to_date)).await.unwrap();
    assert_eq!(joined.complete, Some(true));
    assert!(joined.recovered.is_empty());
    reader.close().await;

    let stranger = Pos {
        epoch: "another-epoch".into(),
        offset: 3,
    };
    let mut reader = Chatter::connect(&gate, "reader").await.unwrap();
    let joined = reader.join("small", Some(&stranger)).await.unwrap();
    assert_eq!(joined.complete, Some(false));
    assert_eq!(joined.recovered.len(), 5);
    reader.close().await;
    writer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_is_reported_with_redis() {
    let redis = Redis::start().unwrap();
    trimmed_history_is_reported(Some(&redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimmed_history_is_reported_in_memory() {
    trimmed_history_is_reported(None).await;
}
