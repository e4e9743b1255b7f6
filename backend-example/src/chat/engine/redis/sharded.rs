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

use std::collections::HashSet;
use std::time::Duration;

use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::conn::bounded;
use super::delivery::{Command, Delivery, Watched};
use super::keys::{channel, meta_key, room_of_channel};
use crate::chat::engine::EngineError;
use crate::chat::event::Event;

/// First wait before resyncing after a lost node connection: the crate
/// reconnects by itself within this when the node is still there.
const FIRST_RESYNC_DELAY: Duration = Duration::from_millis(200);
/// Longest wait between resync attempts (a failover in progress).
const MAX_RESYNC_DELAY: Duration = Duration::from_secs(2);

/// Owns the sharded subscriber; see the module docs.
pub struct Sharded {
    conn: ClusterConnection,
    pushes: mpsc::UnboundedReceiver<PushInfo>,
    delivery: Delivery,
    /// Rooms whose subscription must be re-established.
    lost: HashSet<String>,
    resync_at: Option<Instant>,
    delay: Duration,
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
        }
    }

    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let resync_at = self.resync_at;
            let resync = async move {
                match resync_at {
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
                () = resync => self.resync().await,
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
                    self.lost.insert(room);
                    self.schedule(Duration::ZERO);
                }
            }
            PushKind::Disconnection => {
                let rooms = self.delivery.rooms.len();
                info!(rooms, "redis cluster: a node connection dropped; resyncing");
                self.lost.extend(self.delivery.rooms.keys().cloned());
                self.delay = FIRST_RESYNC_DELAY;
                self.schedule(FIRST_RESYNC_DELAY);
            }
            _ => {}
        }
    }

    /// Re-establishes the lost rooms' subscriptions and fills their gaps;
    /// retries the failures with backoff.
    async fn resync(&mut self) {
        self.resync_at = None;
        let hub = self.delivery.hub.clone();
        self.delivery.rooms.retain(|room, _| hub.has_room(room));
        let rooms = &self.delivery.rooms;
        self.lost.retain(|room| rooms.contains_key(room));
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
            match result {
                Ok(()) => {
                    self.lost.remove(&room);
                    let last = self.delivery.rooms.get(&room).and_then(|w| w.last.clone());
                    if let Some(last) = last {
                        self.delivery.fill(&room, &last, u64::MAX).await;
                    }
                    info!(room, "redis cluster: room resubscribed");
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
