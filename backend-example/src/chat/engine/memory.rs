//! The embedded in-memory engine: one process, no dependencies. History,
//! offsets, de-duplication and presence live in this backend only, so two
//! backends never share a room; use the Redis engine for a cluster.
//!
//! The epoch is chosen once per process: in-memory history is lost exactly
//! when the process restarts, which is exactly when the epoch must change.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{new_epoch, Draft, Published};
use crate::chat::event::Event;
use crate::chat::hub::{Hub, Member};
use crate::chat::protocol::{ChatMessage, Position, Presence};

/// Client message ids remembered per room for de-duplication.
const DEDUP_PER_ROOM: usize = 4096;

#[derive(Default)]
struct Room {
    top: u64,
    log: VecDeque<Arc<Event>>,
    /// `(from, id)` → offset, bounded by `dedup_order`.
    seen: HashMap<(String, String), u64>,
    dedup_order: VecDeque<(String, String)>,
    /// user → connections.
    presence: HashMap<String, HashSet<String>>,
}

/// In-process rooms.
pub struct MemoryEngine {
    hub: Arc<Hub>,
    epoch: String,
    history_size: usize,
    rooms: Mutex<HashMap<String, Room>>,
}

impl MemoryEngine {
    pub fn new(hub: Arc<Hub>, history_size: usize) -> Self {
        MemoryEngine {
            hub,
            epoch: new_epoch(),
            history_size: history_size.max(1),
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // Every critical section leaves the map consistent, so a poisoned
        // lock (a bug elsewhere) is safe to keep using.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn position(&self, room: &str) -> Position {
        let top = self.rooms().get(room).map_or(0, |r| r.top);
        Position {
            epoch: self.epoch.clone(),
            offset: top,
        }
    }

    pub fn range(&self, room: &str, from: u64) -> Vec<Arc<Event>> {
        let rooms = self.rooms();
        let Some(r) = rooms.get(room) else {
            return Vec::new();
        };
        r.log
            .iter()
            .filter(|e| e.offset().is_some_and(|o| o >= from))
            .cloned()
            .collect()
    }

    pub fn publish(&self, draft: &Draft) -> Published {
        let mut rooms = self.rooms();
        let room = rooms.entry(draft.room.clone()).or_default();
        let key = (draft.from.clone(), draft.id.clone());
        if let Some(&offset) = room.seen.get(&key) {
            return Published {
                epoch: self.epoch.clone(),
                offset,
                duplicate: true,
            };
        }
        room.top += 1;
        let msg = ChatMessage {
            room: draft.room.clone(),
            epoch: self.epoch.clone(),
            offset: room.top,
            from: draft.from.clone(),
            id: draft.id.clone(),
            text: draft.text.clone(),
            ts: draft.ts,
        };
        let event = Event::message(&msg);
        room.log.push_back(event.clone());
        while room.log.len() > self.history_size {
            room.log.pop_front();
        }
        room.seen.insert(key.clone(), room.top);
        room.dedup_order.push_back(key);
        while room.dedup_order.len() > DEDUP_PER_ROOM {
            if let Some(old) = room.dedup_order.pop_front() {
                room.seen.remove(&old);
            }
        }
        // Delivered under the lock so live order is offset order.
        self.hub.deliver(event);
        Published {
            epoch: self.epoch.clone(),
            offset: msg.offset,
            duplicate: false,
        }
    }

    pub fn presence_join(&self, room: &str, member: &Member) -> Vec<String> {
        let mut rooms = self.rooms();
        let r = rooms.entry(room.to_string()).or_default();
        let conns = r.presence.entry(member.user.clone()).or_default();
        let first = conns.is_empty();
        conns.insert(member.conn.clone());
        if first {
            self.hub.deliver(Event::presence(&Presence {
                room: room.to_string(),
                joined: Some(member.user.clone()),
                left: None,
                members: None,
            }));
        }
        sorted_users(r)
    }

    pub fn presence_leave(&self, room: &str, member: &Member) {
        let mut rooms = self.rooms();
        let Some(r) = rooms.get_mut(room) else {
            return;
        };
        let Some(conns) = r.presence.get_mut(&member.user) else {
            return;
        };
        if !conns.remove(&member.conn) || !conns.is_empty() {
            return;
        }
        r.presence.remove(&member.user);
        self.hub.deliver(Event::presence(&Presence {
            room: room.to_string(),
            joined: None,
            left: Some(member.user.clone()),
            members: None,
        }));
        // A room nobody is in and nobody wrote to holds nothing worth keeping
        // (its epoch is the process's), so it costs no memory.
        if r.presence.is_empty() && r.top == 0 {
            rooms.remove(room);
        }
    }

    pub fn presence(&self, room: &str) -> Vec<String> {
        self.rooms().get(room).map(sorted_users).unwrap_or_default()
    }
}

fn sorted_users(room: &Room) -> Vec<String> {
    let users: BTreeSet<&String> = room.presence.keys().collect();
    users.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(id: &str) -> Draft {
        Draft {
            room: "r".into(),
            from: "a".into(),
            id: id.into(),
            text: "t".into(),
            ts: 0,
        }
    }

    #[test]
    fn offsets_are_monotonic_and_resends_deduplicated() {
        let engine = MemoryEngine::new(Arc::new(Hub::default()), 2);
        assert_eq!(engine.publish(&draft("1")).offset, 1);
        assert_eq!(engine.publish(&draft("2")).offset, 2);
        let again = engine.publish(&draft("1"));
        assert!(again.duplicate);
        assert_eq!(again.offset, 1);
        assert_eq!(engine.publish(&draft("3")).offset, 3);
        // History is capped at 2.
        let offsets: Vec<_> = engine
            .range("r", 1)
            .iter()
            .filter_map(|e| e.offset())
            .collect();
        assert_eq!(offsets, [2, 3]);
        assert_eq!(engine.position("r").offset, 3);
    }

    #[test]
    fn presence_counts_users_not_connections() {
        let engine = MemoryEngine::new(Arc::new(Hub::default()), 2);
        let m = |c: &str| Member {
            user: "a".into(),
            conn: c.into(),
        };
        engine.presence_join("r", &m("1"));
        assert_eq!(engine.presence_join("r", &m("2")), ["a"]);
        engine.presence_leave("r", &m("1"));
        assert_eq!(engine.presence("r"), ["a"]);
        engine.presence_leave("r", &m("2"));
        assert!(engine.presence("r").is_empty());
    }
}
