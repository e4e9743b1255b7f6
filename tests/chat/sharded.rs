//! The chat backends on a real three-master Redis Cluster
//! (`redis+cluster://`): rooms on every shard shared across backends,
//! each room's keys and sharded channel on its own shard, resume on the
//! other backend, and a failover of a room's master during traffic.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;
use wsgate_tests::{tls_config, Gate, STEP};

use crate::cluster::{assert_contiguous, backend_at, gate, user_on, Chatter, Msg, Pos};
use crate::rediscluster::{cli, RedisCluster};

fn meta(room: &str) -> String {
    format!("chat:{{{room}}}:meta")
}

/// One room name per master, so every shard carries a room.
fn room_per_shard(rc: &RedisCluster) -> Result<Vec<String>> {
    let mut by_master: HashMap<usize, String> = HashMap::new();
    for i in 0..1000 {
        let room = format!("room-{i}");
        by_master.entry(rc.master_of(&meta(&room))?).or_insert(room);
        if by_master.len() == 3 {
            let mut rooms: Vec<String> = by_master.into_values().collect();
            rooms.sort();
            return Ok(rooms);
        }
    }
    bail!("no room name for some master")
}

fn of_room<'a>(msgs: &'a [Msg], room: &str) -> Vec<&'a Msg> {
    msgs.iter().filter(|m| m.room == room).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_rooms_on_every_shard_span_backends_and_resume_on_the_other_one() {
    let rc = RedisCluster::start().unwrap();
    let url = rc.url();
    let a = backend_at("chat-a", "127.0.0.1:0", Some(&url), &[]).unwrap();
    let b = backend_at("chat-b", "127.0.0.1:0", Some(&url), &[]).unwrap();
    let gate1 = gate(&[&a, &b]).unwrap();
    let ids = ["chat-a", "chat-b"];
    let alice_name = user_on(&ids, "chat-a", "alice");
    let mut alice = Chatter::connect(&gate1, &alice_name).await.unwrap();
    let mut bob = Chatter::connect(&gate1, &user_on(&ids, "chat-b", "bob"))
        .await
        .unwrap();
    assert_eq!(
        (alice.backend.as_str(), bob.backend.as_str()),
        ("chat-a", "chat-b")
    );

    let rooms = room_per_shard(&rc).unwrap();
    for room in &rooms {
        alice.join(room, None).await.unwrap();
        let joined = bob.join(room, None).await.unwrap();
        let mut both = vec![alice.user.clone(), bob.user.clone()];
        both.sort();
        assert_eq!(joined.presence, both, "{room}: presence across backends");
    }

    // Both send into every room at once.
    const EACH: usize = 10;
    for i in 0..EACH {
        for room in &rooms {
            for (c, who) in [(&mut alice, "a"), (&mut bob, "b")] {
                let id = format!("{who}-{room}-{i}");
                c.send_json(json!({"type":"send","room":room,"id":id,"text":id}))
                    .await
                    .unwrap();
            }
        }
    }
    let total = 2 * EACH * rooms.len();
    alice.until_messages(total).await.unwrap();
    bob.until_messages(total).await.unwrap();
    for room in &rooms {
        let (seen_a, seen_b) = (of_room(&alice.messages, room), of_room(&bob.messages, room));
        assert_eq!(seen_a.len(), 2 * EACH, "{room}: alice gets every message");
        assert_eq!(
            seen_a, seen_b,
            "{room}: same messages, same order, on both backends"
        );
        let owned: Vec<Msg> = seen_a.into_iter().cloned().collect();
        assert_contiguous(room, &owned, 1);
    }

    // Each room lives on its master: history, offsets and presence there,
    // and both backends subscribed to its sharded channel there (and to no
    // classic channel anywhere).
    for room in &rooms {
        let master = rc.nodes[rc.master_of(&meta(room)).unwrap()].port;
        let keys = [
            meta(room),
            format!("chat:{{{room}}}:log"),
            format!("chat:{{{room}}}:presence"),
        ];
        let mut args = vec!["EXISTS"];
        args.extend(keys.iter().map(String::as_str));
        assert_eq!(
            cli(master, &args).unwrap(),
            "3",
            "{room}: keys on its master"
        );
        let channel = format!("chat:{{{room}}}:events");
        let subs = cli(master, &["PUBSUB", "SHARDNUMSUB", &channel]).unwrap();
        assert_eq!(
            subs.lines().nth(1),
            Some("2"),
            "{room}: both backends use sharded Pub/Sub on the room's shard: {subs}"
        );
    }
    for node in &rc.nodes {
        assert_eq!(
            cli(node.port, &["PUBSUB", "CHANNELS"]).unwrap(),
            "",
            "no classic Pub/Sub channel on node {}",
            node.port
        );
    }

    // Resume on the other backend: alice leaves chat-a, misses five
    // messages, and comes back through a wsgate that only knows chat-b.
    let room = &rooms[0];
    let own_ack = alice
        .expect_where("ack of a first message", |e| {
            e["type"] == "ack" && e["id"] == format!("a-{room}-0")
        })
        .await
        .unwrap();
    let cursor = {
        let last = of_room(&alice.messages, room).pop().cloned().unwrap();
        Pos {
            epoch: last.epoch,
            offset: last.offset,
        }
    };
    alice.close().await;
    for i in 1..=5 {
        bob.say(room, &format!("away-{i}"), "while alice is away")
            .await
            .unwrap();
    }
    let gate2 = Gate::start(&tls_config(&[("chat-b", b.addr, 1)], ""), 1).unwrap();
    let mut alice = Chatter::connect(&gate2, &alice_name).await.unwrap();
    assert_eq!(alice.backend, "chat-b", "alice is on the other backend now");
    let joined = alice.join(room, Some(&cursor)).await.unwrap();
    assert_eq!(joined.complete, Some(true));
    let got: Vec<&str> = joined.recovered.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(got, ["away-1", "away-2", "away-3", "away-4", "away-5"]);
    assert_contiguous("alice", &joined.recovered, cursor.offset + 1);
    // Her resend through chat-b is recognised (the record is on the shard).
    let again = alice
        .say(room, &format!("a-{room}-0"), "resent")
        .await
        .unwrap();
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["offset"], own_ack["offset"]);
    // And live delivery goes on.
    bob.say(room, "live", "after the resume").await.unwrap();
    alice.until_messages(6).await.unwrap();
    assert_eq!(alice.messages.last().map(|m| m.id.as_str()), Some("live"));
    alice.close().await;
    bob.close().await;
}

/// What one sender saw while the cluster failed over.
struct Sent {
    chatter: Chatter,
    /// id -> (offset, duplicate) of every acknowledged message.
    acks: HashMap<String, (u64, bool)>,
    /// `unavailable` answers (each followed by a resend of the same id).
    refused: usize,
    /// First refusal and first ack after it.
    outage: Option<(Instant, Option<Instant>)>,
    /// Longest time from first sending a message to its ack.
    slowest: Duration,
}

/// Sends `n` messages one after another, resending a refused one under
/// the same id (as the page does) after 50 ms; reports `at` when it has
/// had `at` messages acknowledged.
async fn send_through(
    mut c: Chatter,
    room: String,
    n: usize,
    at: usize,
    reached: tokio::sync::oneshot::Sender<()>,
) -> Result<Sent> {
    let mut acks = HashMap::new();
    let (mut refused, mut outage) = (0, None::<(Instant, Option<Instant>)>);
    let mut slowest = Duration::ZERO;
    let mut reached = Some(reached);
    let deadline = Instant::now() + 3 * STEP;
    for i in 1..=n {
        let id = format!("{}-{i}", c.user);
        let first_sent = Instant::now();
        loop {
            if Instant::now() > deadline {
                bail!("{id} was never stored");
            }
            c.send_json(json!({"type":"send","room":room,"id":id,"text":"x"}))
                .await?;
            let reply = c
                .expect_where(&format!("answer to {id}"), |e| {
                    (e["type"] == "ack" || e["type"] == "error") && e["id"] == id.as_str()
                })
                .await?;
            if reply["type"] == "ack" {
                let offset = reply["offset"].as_u64().unwrap_or_default();
                acks.insert(id.clone(), (offset, reply["duplicate"] == true));
                slowest = slowest.max(first_sent.elapsed());
                if let Some((_, ok @ None)) = &mut outage {
                    *ok = Some(Instant::now());
                }
                break;
            }
            assert_eq!(
                reply["code"], "unavailable",
                "only storage refusals: {reply}"
            );
            refused += 1;
            outage.get_or_insert((Instant::now(), None));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if i == at {
            if let Some(tx) = reached.take() {
                let _ = tx.send(());
            }
        }
    }
    Ok(Sent {
        chatter: c,
        acks,
        refused,
        outage,
        slowest,
    })
}

/// Two users on two backends send 100 messages each into one room while
/// the room's master fails over (`kill`: SIGKILL, the replica takes over
/// after the node timeout; otherwise a manual `CLUSTER FAILOVER` on the
/// replica). Every acknowledged message must be in history exactly once,
/// and both users must receive the whole history live, in order.
async fn failover_during_traffic(kill: bool) {
    let mut rc = RedisCluster::start().unwrap();
    let url = rc.url();
    // Senders go as fast as the acks come; no flood control here.
    let fast = ["--rate", "10000", "--burst", "10000"];
    let a = backend_at("chat-a", "127.0.0.1:0", Some(&url), &fast).unwrap();
    let b = backend_at("chat-b", "127.0.0.1:0", Some(&url), &fast).unwrap();
    let gate = gate(&[&a, &b]).unwrap();
    let ids = ["chat-a", "chat-b"];
    let mut alice = Chatter::connect(&gate, &user_on(&ids, "chat-a", "alice"))
        .await
        .unwrap();
    let mut bob = Chatter::connect(&gate, &user_on(&ids, "chat-b", "bob"))
        .await
        .unwrap();
    let room = "failover".to_string();
    let master = rc.master_of(&meta(&room)).unwrap();
    let replica = rc.replica_of(master).unwrap();
    alice.join(&room, None).await.unwrap();
    bob.join(&room, None).await.unwrap();

    const EACH: usize = 100;
    let (tx_a, at_a) = tokio::sync::oneshot::channel();
    let (tx_b, _at_b) = tokio::sync::oneshot::channel();
    let sender_a = tokio::spawn(send_through(alice, room.clone(), EACH, 30, tx_a));
    let sender_b = tokio::spawn(send_through(bob, room.clone(), EACH, EACH, tx_b));
    tokio::time::timeout(STEP, at_a).await.unwrap().unwrap();
    let started = Instant::now();
    let replica_port = rc.nodes[replica].port;
    if kill {
        rc.kill(master);
    } else {
        assert_eq!(cli(replica_port, &["CLUSTER", "FAILOVER"]).unwrap(), "OK");
    }
    let wait = Duration::from_secs(15);
    let _rc = tokio::task::spawn_blocking(move || rc.wait_master(replica, wait).map(|()| rc))
        .await
        .unwrap()
        .unwrap();
    let promoted = started.elapsed();
    let sent_a = tokio::time::timeout(3 * STEP, sender_a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let sent_b = tokio::time::timeout(3 * STEP, sender_b)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (mut alice, mut bob) = (sent_a.chatter, sent_b.chatter);

    // After the failover: one more message reaches both, live.
    bob.say(&room, "after", "after the failover").await.unwrap();
    let total = 2 * EACH + 1;
    alice.until_messages(total).await.unwrap();
    bob.until_messages(total).await.unwrap();

    // What the new master holds.
    let mut carol = Chatter::connect(&gate, "carol").await.unwrap();
    let since = Pos {
        epoch: String::new(),
        offset: 0,
    };
    let history = carol.join(&room, Some(&since)).await.unwrap().recovered;
    let mut acks: HashMap<String, (u64, bool)> = sent_a.acks.clone();
    acks.extend(sent_b.acks.clone());
    let lost: Vec<&String> = acks
        .iter()
        .filter(|(id, (offset, _))| !history.iter().any(|m| &m.id == *id && m.offset == *offset))
        .map(|(id, _)| id)
        .collect();
    let outage = [sent_a.outage, sent_b.outage]
        .into_iter()
        .flatten()
        .filter_map(|(from, to)| Some(to? - from))
        .max();
    eprintln!(
        "redis cluster {}: replica promoted after {promoted:?}; writes refused {} times, \
         longest outage seen by a sender {outage:?}, slowest ack {:?}; {} acks were duplicates of a resend; \
         {} acknowledged messages lost; history {} messages, alice received {}, bob {}",
        if kill { "master killed" } else { "CLUSTER FAILOVER" },
        sent_a.refused + sent_b.refused,
        sent_a.slowest.max(sent_b.slowest),
        acks.values().filter(|(_, dup)| *dup).count(),
        lost.len(),
        history.len(),
        alice.messages.len(),
        bob.messages.len(),
    );
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    assert_eq!(history.len(), total, "each message stored exactly once");
    assert_contiguous("history", &history, 1);
    assert_eq!(
        alice.messages, history,
        "alice received the whole history live"
    );
    assert_eq!(bob.messages, history, "bob received the whole history live");
    carol.close().await;
    alice.close().await;
    bob.close().await;
    // The backends go before the cluster they use.
    drop((gate, a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover_of_a_rooms_master_loses_nothing_acknowledged() {
    failover_during_traffic(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_during_traffic_backends_recover() {
    failover_during_traffic(true).await;
}
