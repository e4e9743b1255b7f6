//! Two users on different backends (behind one wsgate) in one room.

use crate::cluster::{assert_contiguous, backend, gate, user_on, Chatter, Redis};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_backends_share_order_and_presence() {
    let redis = Redis::start().unwrap();
    let a = backend("chat-a", "127.0.0.1:0", Some(&redis), &[]).unwrap();
    let b = backend("chat-b", "127.0.0.1:0", Some(&redis), &[]).unwrap();
    let gate = gate(&[&a, &b]).unwrap();
    let ids = ["chat-a", "chat-b"];
    let (alice, bob) = (
        user_on(&ids, "chat-a", "alice"),
        user_on(&ids, "chat-b", "bob"),
    );

    let mut alice = Chatter::connect(&gate, &alice).await.unwrap();
    let mut bob = Chatter::connect(&gate, &bob).await.unwrap();
    assert_eq!(alice.backend, "chat-a");
    assert_eq!(bob.backend, "chat-b");

    let joined = alice.join("general", None).await.unwrap();
    assert_eq!(joined.presence, [alice.user.clone()]);
    let joined = bob.join("general", None).await.unwrap();
    let mut both = vec![alice.user.clone(), bob.user.clone()];
    both.sort();
    assert_eq!(
        joined.presence, both,
        "presence lists both, across backends"
    );
    let seen = alice
        .expect_where("bob joined", |e| {
            e["type"] == "presence" && e["joined"] == bob.user.as_str()
        })
        .await
        .unwrap();
    assert_eq!(seen["room"], "general");

    // Both send at once, without waiting for each other.
    const EACH: usize = 25;
    for i in 0..EACH {
        let text = format!("a{i}");
        alice
            .send_json(serde_json::json!({"type":"send","room":"general","id":text,"text":text}))
            .await
            .unwrap();
        let text = format!("b{i}");
        bob.send_json(serde_json::json!({"type":"send","room":"general","id":text,"text":text}))
            .await
            .unwrap();
    }
    alice.until_messages(2 * EACH).await.unwrap();
    bob.until_messages(2 * EACH).await.unwrap();
    assert_contiguous("alice", &alice.messages, 1);
    assert_contiguous("bob", &bob.messages, 1);
    assert_eq!(
        alice.messages, bob.messages,
        "both see every message in the same order"
    );
    // Each sender's own messages keep their send order.
    let from_alice: Vec<&str> = alice
        .messages
        .iter()
        .filter(|m| m.from == alice.user)
        .map(|m| m.text.as_str())
        .collect();
    let sent: Vec<String> = (0..EACH).map(|i| format!("a{i}")).collect();
    assert_eq!(from_alice, sent);

    bob.send_json(serde_json::json!({"type":"leave","room":"general"}))
        .await
        .unwrap();
    bob.expect("left").await.unwrap();
    alice
        .expect_where("bob left", |e| {
            e["type"] == "presence" && e["left"] == bob.user.as_str()
        })
        .await
        .unwrap();
    alice.close().await;
    bob.close().await;
}
