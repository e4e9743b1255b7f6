//! Storage and cross-backend delivery for rooms: history with offsets and
//! epochs, de-duplication of resent messages, presence, and live delivery of
//! events into the local [`Hub`](super::hub::Hub).
//!
//! Two engines implement the same operations:
//! - [`memory`]: in-process, for a single backend with nothing installed.
//!   Rooms are not shared between backends.
//! - [`redis`]: Redis Streams for history (capped, with explicit ids equal to
//!   offsets), Pub/Sub for live fan-out (sharded Pub/Sub on a Redis
//!   Cluster), sorted sets for presence. Every write is one Lua script, so
//!   offsets, de-duplication and the publish order agree across backends.
//!
//! The engine is an enum rather than a trait object: there are exactly two,
//! and their methods are `async`.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use super::event::Event;
use super::hub::Member;
use super::protocol::Position;

/// A message a client asked to store.
#[derive(Debug, Clone)]
pub struct Draft {
    pub room: String,
    pub from: String,
    pub id: String,
    pub text: String,
    pub ts: u64,
}

/// Where a message was stored. `duplicate` means the same `(from, id)` was
/// stored before, at this position, and nothing was stored or delivered now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub epoch: String,
    pub offset: u64,
    pub duplicate: bool,
}

/// Failures of the storage layer; the client gets an `unavailable` error and
/// may retry (resends are de-duplicated).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis sent a reply this server does not understand: {0}")]
    Reply(String),
    #[error("live delivery is reconnecting to redis")]
    Reconnecting,
    #[error("bad redis url: {0}")]
    Url(String),
}

/// The room engine in use.
pub enum Engine {
    Memory(memory::MemoryEngine),
    Redis(redis::RedisEngine),
}

impl Engine {
    /// `"memory"` or `"redis"`, as announced in `hello`.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Memory(_) => "memory",
            Engine::Redis(_) => "redis",
        }
    }

    /// The room's current epoch and newest offset (creating the epoch for a
    /// new room).
    pub async fn position(&self, room: &str) -> Result<Position, EngineError> {
        match self {
            Engine::Memory(e) => Ok(e.position(room)),
            Engine::Redis(e) => e.position(room).await,
        }
    }

    /// Retained messages with offset `>= from`, oldest first.
    pub async fn range(&self, room: &str, from: u64) -> Result<Vec<Arc<Event>>, EngineError> {
        match self {
            Engine::Memory(e) => Ok(e.range(room, from)),
            Engine::Redis(e) => e.range(room, from).await,
        }
    }

    /// Stores a message (once per `(from, id)`) and delivers it live.
    pub async fn publish(&self, draft: &Draft) -> Result<Published, EngineError> {
        match self {
            Engine::Memory(e) => Ok(e.publish(draft)),
            Engine::Redis(e) => e.publish(draft).await,
        }
    }

    /// Makes sure live events of `room` reach the hub (call after attaching
    /// to the hub, before reading history).
    pub async fn watch(&self, room: &str) -> Result<(), EngineError> {
        match self {
            Engine::Memory(_) => Ok(()),
            Engine::Redis(e) => e.watch(room).await,
        }
    }

    /// Stops live delivery of `room` if it has no local members left.
    pub fn unwatch(&self, room: &str) {
        if let Engine::Redis(e) = self {
            e.unwatch(room);
        }
    }

    /// Adds a connection to the room's presence and returns the users
    /// present (sorted); announces `joined` if the user was not present.
    pub async fn presence_join(
        &self,
        room: &str,
        member: &Member,
    ) -> Result<Vec<String>, EngineError> {
        match self {
            Engine::Memory(e) => Ok(e.presence_join(room, member)),
            Engine::Redis(e) => e.presence_join(room, member).await,
        }
    }

    /// Removes a connection from presence; announces `left` if it was the
    /// user's last one.
    pub async fn presence_leave(&self, room: &str, member: &Member) -> Result<(), EngineError> {
        match self {
            Engine::Memory(e) => {
                e.presence_leave(room, member);
                Ok(())
            }
            Engine::Redis(e) => e.presence_leave(room, member).await,
        }
    }

    /// The users present in a room (sorted).
    pub async fn presence(&self, room: &str) -> Result<Vec<String>, EngineError> {
        match self {
            Engine::Memory(e) => Ok(e.presence(room)),
            Engine::Redis(e) => e.presence(room).await,
        }
    }

    /// Periodic upkeep: refresh this backend's presence entries and expire
    /// those of backends that died.
    pub async fn maintain(&self) -> Result<(), EngineError> {
        match self {
            Engine::Memory(_) => Ok(()),
            Engine::Redis(e) => e.maintain().await,
        }
    }
}

/// A fresh random epoch (16 hex digits).
pub fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
