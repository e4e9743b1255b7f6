//! The process-local side of fan-out: which rooms have members on this
//! backend, who they are, and a broadcast channel per room that delivers
//! events to every local session in it.
//!
//! The hub never blocks: delivering to a room is a `broadcast::send`, and a
//! session that falls behind by more than the channel capacity is told it
//! lagged and resyncs from history instead of slowing anyone down.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::event::Event;

/// Events buffered per room for slow local sessions before they lag (and
/// resync from history). Allocated up front per room with local members.
pub const ROOM_CAPACITY: usize = 512;

/// One local membership: a connection and its user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub user: String,
    /// Unique per connection across the cluster (`backend:counter:random`).
    pub conn: String,
}

struct Room {
    tx: broadcast::Sender<Arc<Event>>,
    members: HashMap<String, Member>,
}

/// Rooms with at least one local member.
#[derive(Default)]
pub struct Hub {
    rooms: Mutex<HashMap<String, Room>>,
}

impl Hub {
    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // A panic while holding this lock would be a bug in this module; the
        // map is still consistent (every operation is a single insert or
        // remove), so recover the guard rather than poison every session.
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a local member and returns a receiver for the room's events.
    pub fn attach(&self, room: &str, member: Member) -> broadcast::Receiver<Arc<Event>> {
        let mut rooms = self.rooms();
        let entry = rooms.entry(room.to_string()).or_insert_with(|| Room {
            tx: broadcast::channel(ROOM_CAPACITY).0,
            members: HashMap::new(),
        });
        entry.members.insert(member.conn.clone(), member);
        entry.tx.subscribe()
    }

    /// Removes a local member; forgets the room when it was the last one.
    pub fn detach(&self, room: &str, conn: &str) {
        let mut rooms = self.rooms();
        if let Some(entry) = rooms.get_mut(room) {
            entry.members.remove(conn);
            if entry.members.is_empty() {
                rooms.remove(room);
            }
        }
    }

    /// True while the room has local members.
    pub fn has_room(&self, room: &str) -> bool {
        self.rooms().contains_key(room)
    }

    /// Delivers an event to the room's local sessions (if any).
    pub fn deliver(&self, event: Arc<Event>) {
        if let Some(entry) = self.rooms().get(&event.room) {
            // Err means no receiver right now, which is fine.
            let _ = entry.tx.send(event);
        }
    }

    /// A snapshot of every local membership, per room.
    pub fn memberships(&self) -> Vec<(String, Vec<Member>)> {
        self.rooms()
            .iter()
            .map(|(room, entry)| (room.clone(), entry.members.values().cloned().collect()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::protocol::Presence;

    fn member(conn: &str) -> Member {
        Member {
            user: "u".into(),
            conn: conn.into(),
        }
    }

    #[test]
    fn delivers_to_attached_members_and_forgets_empty_rooms() {
        let hub = Hub::default();
        let mut rx = hub.attach("r", member("c1"));
        let _rx2 = hub.attach("r", member("c2"));
        let p = Presence {
            room: "r".into(),
            joined: Some("u".into()),
            left: None,
            members: None,
        };
        hub.deliver(Event::presence(&p));
        assert_eq!(rx.try_recv().unwrap().room, "r");
        hub.detach("r", "c1");
        assert!(hub.has_room("r"));
        hub.detach("r", "c2");
        assert!(!hub.has_room("r"));
        assert!(hub.memberships().is_empty());
    }
}
