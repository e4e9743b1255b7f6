//! Live delivery from a Redis Cluster: sharded Pub/Sub (`SSUBSCRIBE`,
//! Redis 7), so each room's events travel only within the shard that owns
//! the room's slot.
//!
//! The subscriber is a second cluster connection of the Redis crate, in
//! RESP3 with a push channel: the crate sends each `SSUBSCRIBE` to the node
//! owning the channel's slot and, when a node connection drops and comes
//! back or the slot map is refreshed, resubscribes what it tracks. It is
//! kept apart from the command connection so that pushes the servers send
//! on their own (below) never meet a command waiting for its reply.
//!
//! Two cases the crate does not cover, handled here:
//! - when a shard changes hands (failover of its master), the old master
//!   sends `sunsubscribe` for the room's channel, and the crate forgets the
//!   subscription;
//! - when a master dies, the crate keeps retrying that address and only
//!   moves the subscription once something refreshes its slot map.
//!
//! So a server-sent `sunsubscribe` for a room still watched marks that room
//! lost, and a lost node connection marks every room lost. Lost rooms are
//! resynced with backoff: a keyed command on the subscriber connection
//! (which meets `MOVED` or a dead node, and makes the crate refresh its
//! slot map), `SSUBSCRIBE` again (a repeat on a live subscription is
//! harmless), then the history stream fills what was published meanwhile.
//! A message that arrives twice (two subscriptions for a moment) is dropped
//! by its offset; a presence change may then be shown twice.
//!
//! A resubscribed room is only trusted once a [`probe`] published through
//! its master has come back on the subscription (the `SSUBSCRIBE` may have
//! landed on the old master, now a replica, where nothing arrives). A probe
//! that does not come back within [`PROBE_TIMEOUT`] marks the room lost
//! again; a confirmed one fills the history once more, which covers what
//! was published while the subscription was not yet proven.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::conn::bounded;
use super::delivery::{Command, Delivery, Watched};
use super::keys::{channel, meta_key, room_of_channel};
use super::probe;
use crate::chat::engine::EngineError;
use crate::chat::event::Event;

/// First wait before resyncing after a lost node connection: the crate
/// reconnects by itself within this when the node is still there.
const FIRST_RESYNC_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between resync attempts (a failover in progress).
const MAX_RESYNC_DELAY: Duration = Duration::from_secs(2);
/// How long a probe has to come back before its room is resynced again. A
/// probe normally returns in milliseconds; this only bounds a subscription
/// that is dead.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A probe on its way back.
struct Pending {
    nonce: u64,
    deadline: Instant,
}

/// Owns the sharded subscriber; see the module docs.
pub struct Sharded {
    conn: ClusterConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    delivery: Delivery,
    /// Rooms whose subscription must be re-established.
    lost: HashSet<String>,
    resync_at: Option<Instant>,
    delay: Duration,
    /// Resubscribed rooms whose probe has not come back yet.
    probes: HashMap<String, Pending>,
    next_nonce: u64,
}

fn text(v: &Value) -> Option<String> {
    redis::from_redis_value_ref::<String>(v).ok()
}

impl Sharded {
    pub fn new(
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
        delivery: Delivery,
    ) -> Self {
        Sharded {
            conn,
            pushes,
            delivery,
            lost: HashSet::new(),
            resync_at: None,
            delay: FIRST_RESYNC_DELAY,
            probes: HashMap::new(),
            // Distinct from other backends' probes in the same room.
            next_nonce: rand::random(),
        }
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let first_deadline = self.probes.values().map(|p| p.deadline).min();
            let wake = self.resync_at.into_iter().chain(first_deadline).min();
            let resync = async move {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.command(cmd).await;
                }
                push = self.pushes.recv() => {
                    let Some(push) = push else { return };
                    self.push(push).await;
                }
                () = resync => {
                    self.expire_probes();
                    if self.resync_at.is_some_and(|at| at <= Instant::now()) {
                        self.resync().await;
                    }
                }
            }
        }
    }

    fn schedule(&mut self, after: Duration) {
        let at = Instant::now() + after;
        if self.resync_at.is_none_or(|t| t > at) {
            self.resync_at = Some(at);
        }
    }

    async fn command(&mut self, cmd: Command) {
        let d = &mut self.delivery;
        match cmd {
            Command::Watch(room, reply) => {
                if !d.hub.has_room(&room) || d.rooms.contains_key(&room) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                match bounded(self.conn.ssubscribe(channel(&room))).await {
                    Ok(()) => {
                        d.rooms.insert(room, Watched::default());
                        let _ = reply.send(Ok(()));
                    }
                    Err(err) => {
                        warn!(%err, room, "redis cluster: ssubscribe failed");
                        let _ = reply.send(Err(EngineError::Reconnecting));
                    }
                }
            }
            Command::Unwatch(room) => {
                if !d.hub.has_room(&room) && d.rooms.remove(&room).is_some() {
                    self.lost.remove(&room);
                    self.probes.remove(&room);
                    if let Err(err) = bounded(self.conn.sunsubscribe(channel(&room))).await {
                        debug!(%err, room, "redis cluster: sunsubscribe failed");
                    }
                }
            }
        }
    }

    async fn push(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage => {
                let (Some(chan), Some(payload)) = (
                    push.data.first().and_then(text),
                    push.data.get(1).and_then(text),
                ) else {
                    return;
                };
                if let Some((room, nonce)) = probe::parse(&payload) {
                    if room_of_channel(&chan) == Some(&*room) {
                        let room = room.into_owned();
                        self.probe_returned(room, nonce).await;
                    }
                    return;
                }
                let Some(event) = Event::from_wire(payload) else {
                    debug!(channel = chan, "ignoring malformed event");
                    return;
                };
                if room_of_channel(&chan) == Some(event.room.as_str()) {
                    self.delivery.deliver(event).await;
                }
            }
            PushKind::SUnsubscribe => {
                // Ours (an unwatch) removed the room first; any other is the
                // server dropping us because the slot moved.
                let Some(room) = push.data.first().and_then(text) else {
                    return;
                };
                let Some(room) = room_of_channel(&room).map(str::to_string) else {
                    return;
                };
                if self.delivery.rooms.contains_key(&room) {
                    info!(room, "redis cluster: shard moved; resubscribing");
                    self.probes.remove(&room);
                    self.lost.insert(room);
                    self.schedule(Duration::ZERO);
                }
            }
            PushKind::Disconnection => {
                let rooms = self.delivery.rooms.len();
                info!(rooms, "redis cluster: a node connection dropped; resyncing");
                self.lost.extend(self.delivery.rooms.keys().cloned());
                self.probes.clear();
                self.delay = FIRST_RESYNC_DELAY;
                self.schedule(FIRST_RESYNC_DELAY);
            }
            _ => {}
        }
    }

    /// Publishes a probe for `room` through its master (see [`probe`]).
    async fn send_probe(&mut self, room: &str, nonce: u64) -> Result<(), EngineError> {
        let mut eval = redis::cmd("EVAL");
        eval.arg(probe::SCRIPT)
            .arg(1)
            .arg(meta_key(room))
            .arg(channel(room))
            .arg(probe::payload(room, nonce));
        bounded(eval.query_async::<i64>(&mut self.conn)).await?;
        Ok(())
    }

    /// A probe came back: if it is the one awaited, the room's subscription
    /// is proven live; what it missed before is filled.
    async fn probe_returned(&mut self, room: String, nonce: u64) {
        if self.probes.get(&room).is_none_or(|p| p.nonce != nonce) {
            return;
        }
        self.probes.remove(&room);
        self.delivery.catch_up(&room).await;
        info!(room, "redis cluster: room resubscribed");
    }

    /// Rooms whose probe did not come back in time are lost again.
    fn expire_probes(&mut self) {
        let now = Instant::now();
        let before = self.lost.len();
        let lost = &mut self.lost;
        self.probes.retain(|room, p| {
            let alive = p.deadline > now;
            if !alive {
                warn!(
                    room,
                    "redis cluster: the subscription did not deliver a probe; resubscribing"
                );
                lost.insert(room.clone());
            }
            alive
        });
        if self.lost.len() == before {
            return;
        }
        let delay = self.delay;
        self.schedule(delay);
        self.delay = (self.delay * 2).min(MAX_RESYNC_DELAY);
    }

    /// Re-establishes the lost rooms' subscriptions and fills their gaps;
    /// retries the failures with backoff.
    async fn resync(&mut self) {
        self.resync_at = None;
        let hub = self.delivery.hub.clone();
        self.delivery.rooms.retain(|room, _| hub.has_room(room));
        let rooms = &self.delivery.rooms;
        self.lost.retain(|room| rooms.contains_key(room));
        self.probes.retain(|room, _| rooms.contains_key(room));
        let lost: Vec<String> = self.lost.iter().cloned().collect();
        let mut failed = 0;
        for room in lost {
            // Routed like the room's keys: a demoted or dead owner makes
            // the crate refresh the slot map before the SSUBSCRIBE goes out.
            let mut probe = redis::cmd("EXISTS");
            probe.arg(meta_key(&room));
            let result = match bounded(probe.query_async::<i64>(&mut self.conn)).await {
                Ok(_) => bounded(self.conn.ssubscribe(channel(&room))).await,
                Err(err) => Err(err),
            };
            let nonce = self.next_nonce;
            self.next_nonce = self.next_nonce.wrapping_add(1);
            let result = match result {
                Ok(()) => self.send_probe(&room, nonce).await,
                Err(err) => Err(err),
            };
            match result {
                Ok(()) => {
                    self.lost.remove(&room);
                    let deadline = Instant::now() + PROBE_TIMEOUT;
                    self.probes
                        .insert(room.clone(), Pending { nonce, deadline });
                    // Fill now for a fast recovery; the probe's return
                    // fills again once the subscription is proven.
                    self.delivery.catch_up(&room).await;
                    debug!(room, "redis cluster: room resubscribed; probing");
                }
                Err(err) => {
                    failed += 1;
                    debug!(%err, room, "redis cluster: resubscribe failed; will retry");
                }
            }
        }
        if failed > 0 {
            warn!(
                rooms = failed,
                retry_in = ?self.delay,
                "redis cluster: rooms not resubscribed yet"
            );
            let delay = self.delay;
            self.schedule(delay);
            self.delay = (self.delay * 2).min(MAX_RESYNC_DELAY);
        } else {
            self.delay = FIRST_RESYNC_DELAY;
        }
    }
}
