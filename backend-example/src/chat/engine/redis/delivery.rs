//! What both subscriber tasks (one server: [`super::subscriber`]; cluster:
//! [`super::sharded`]) share: the requests sessions send them, the rooms
//! they watch with the last offset delivered in each, and live delivery
//! into the [`Hub`] that fills any hole in the offsets from the history
//! stream first, so live delivery never skips a message, whatever happened
//! to the subscription.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::warn;

use super::conn::{bounded, Conn};
use super::keys::log_key;
use crate::chat::engine::EngineError;
use crate::chat::event::{Event, EventKind};
use crate::chat::hub::Hub;
use crate::chat::protocol::Position;

/// A session's request to the subscriber task.
pub enum Command {
    /// Subscribe to the room if it has local members; reply once live.
    Watch(String, oneshot::Sender<Result<(), EngineError>>),
    /// Unsubscribe if the room has no local members.
    Unwatch(String),
}

/// Live state of one subscribed room.
#[derive(Default)]
pub struct Watched {
    /// Last delivered message position, to detect holes.
    pub last: Option<Position>,
}

/// Retained messages of `room` with offset `>= from`, oldest first (at most
/// `limit`).
pub async fn range(
    conn: &Conn,
    room: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<Arc<Event>>, EngineError> {
    let mut conn = conn.clone();
    let mut cmd = redis::cmd("XRANGE");
    cmd.arg(log_key(room))
        .arg(from.max(1))
        .arg("+")
        .arg("COUNT")
        .arg(limit);
    let entries: Vec<(String, Vec<String>)> = bounded(cmd.query_async(&mut conn)).await?;
    entries
        .into_iter()
        .map(|(id, fields)| {
            fields
                .into_iter()
                .nth(1)
                .and_then(Event::from_wire)
                .ok_or_else(|| EngineError::Reply(format!("malformed history entry {id}")))
        })
        .collect()
}

/// The watched rooms and in-order delivery into the hub.
pub struct Delivery {
    pub conn: Conn,
    pub hub: Arc<Hub>,
    pub history_size: usize,
    pub rooms: HashMap<String, Watched>,
}

impl Delivery {
    pub fn new(conn: Conn, hub: Arc<Hub>, history_size: usize) -> Self {
        Delivery {
            conn,
            hub,
            history_size,
            rooms: HashMap::new(),
        }
    }

    /// Delivers whatever each watched room stored since its last delivered
    /// message: after a (re)subscription, when live events may have been
    /// published while nobody here listened.
    pub async fn fill_all(&mut self) {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.catch_up(&room).await;
        }
    }

    /// Delivers what `room` stored after its last delivered message (if it
    /// has delivered one: before that, the joins' recovery covers history).
    pub async fn catch_up(&mut self, room: &str) {
        let last = self.rooms.get(room).and_then(|w| w.last.clone());
        if let Some(last) = last {
            self.fill(room, &last, u64::MAX).await;
        }
    }

    /// Delivers retained messages of `room` after `last` and before `until`.
    pub async fn fill(&mut self, room: &str, last: &Position, until: u64) {
        let missed = match range(&self.conn, room, last.offset + 1, self.history_size).await {
            Ok(events) => events,
            Err(err) => {
                warn!(%err, room, "cannot fill a gap in live delivery");
                return;
            }
        };
        for event in missed {
            if event.offset().is_some_and(|o| o < until) {
                self.record_and_deliver(event);
            }
        }
    }

    fn record_and_deliver(&mut self, event: Arc<Event>) {
        if let (Some(w), EventKind::Message { epoch, offset }) =
            (self.rooms.get_mut(&event.room), &event.kind)
        {
            w.last = Some(Position {
                epoch: epoch.clone(),
                offset: *offset,
            });
        }
        self.hub.deliver(event);
    }

    /// Delivers a live event, first filling any hole before it; drops a
    /// message already delivered (by a fill, or by a second subscription
    /// while a cluster shard changes hands).
    pub async fn deliver(&mut self, event: Arc<Event>) {
        let EventKind::Message { epoch, offset } = &event.kind else {
            self.hub.deliver(event);
            return;
        };
        let last = self.rooms.get(&event.room).and_then(|w| w.last.clone());
        if let Some(last) = last.filter(|l| &l.epoch == epoch) {
            if *offset <= last.offset {
                return;
            }
            if *offset > last.offset + 1 {
                let room = event.room.clone();
                self.fill(&room, &last, *offset).await;
            }
        }
        self.record_and_deliver(event);
    }
}
