//! The Redis engine: rooms shared by every backend that uses the same Redis
//! server or Redis Cluster.
//!
//! Keys of room `R` ([`keys`]; the `{R}` hash tag keeps a room on one
//! cluster slot):
//! - `chat:{R}:meta`: hash `{epoch, offset}`: the history generation and the
//!   newest offset;
//! - `chat:{R}:log`: the history, a Stream capped at `history_size` entries
//!   whose ids are `<offset>-1`, so reading from an offset is one `XRANGE`;
//! - `chat:{R}:dedup:<from>:<id>`: `"epoch offset"` of an already stored
//!   message, kept for `dedup_ttl`;
//! - `chat:{R}:presence`: sorted set of `"user conn"` scored by expiry.
//!
//! Live events go out on the channel `chat:{R}:events`, published by the
//! same Lua script that stores them, so every backend receives messages in
//! offset order: classic Pub/Sub on one server ([`subscriber`]), sharded
//! Pub/Sub on a cluster ([`sharded`]). One subscriber task per backend
//! subscribes to the rooms that have local members and feeds the [`Hub`]
//! ([`delivery`]); if it ever sees a hole in the offsets (after a lost
//! subscription), it fills it from the stream before going on. On a
//! cluster, a resubscribed room is trusted once a [`probe`] comes back.
//! [`target`] reads the URL, [`conn`] is the command connection.

pub mod conn;
pub mod delivery;
pub mod keys;
pub mod probe;
pub mod sharded;
pub mod subscriber;
pub mod target;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Client, ProtocolVersion, Script};
use tokio::sync::{mpsc, oneshot};

use self::conn::{bounded, cluster_builder, connect_cluster, Conn, COMMAND_TIMEOUT};
use self::delivery::{range, Command, Delivery};
use self::keys::{channel, dedup_key, log_key, meta_key, presence_key};
use self::target::Target;
use super::{new_epoch, Draft, EngineError, Published};
use crate::chat::event::Event;
use crate::chat::hub::{Hub, Member};
use crate::chat::protocol::Position;

/// Tuning of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub history_size: usize,
    pub history_ttl: Duration,
    pub dedup_ttl: Duration,
    pub presence_ttl: Duration,
}

struct Scripts {
    position: Script,
    publish: Script,
    presence: Script,
}

/// Handle to Redis shared by every session of this backend.
pub struct RedisEngine {
    conn: Conn,
    hub: Arc<Hub>,
    settings: RedisSettings,
    scripts: Arc<Scripts>,
    commands: mpsc::UnboundedSender<Command>,
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl RedisEngine {
    /// Connects (failing fast if Redis is unreachable) and starts the
    /// subscriber task. `url` is a `redis://` URL for one server or a
    /// `redis+cluster://host:port,…` list of cluster seed nodes.
    pub async fn connect(
        url: &str,
        hub: Arc<Hub>,
        settings: RedisSettings,
    ) -> Result<Self, EngineError> {
        let target = Target::parse(url).map_err(|e| EngineError::Url(e.to_string()))?;
        let scripts = Arc::new(Scripts {
            position: Script::new(include_str!("lua/position.lua")),
            publish: Script::new(include_str!("lua/publish.lua")),
            presence: Script::new(include_str!("lua/presence.lua")),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let history_size = settings.history_size;
        // Each arm connects and starts its subscriber; the engine is the same.
        let conn = match target {
            Target::Single(url) => {
                let client = Client::open(url)?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(COMMAND_TIMEOUT))
                    .set_response_timeout(Some(COMMAND_TIMEOUT));
                let manager =
                    bounded(ConnectionManager::new_with_config(client.clone(), config)).await?;
                let conn = Conn::Single(manager);
                let subscriber = subscriber::Subscriber {
                    client,
                    delivery: Delivery::new(conn.clone(), hub.clone(), history_size),
                };
                tokio::spawn(subscriber.run(rx));
                conn
            }
            Target::Cluster(nodes) => {
                let conn = Conn::Cluster(connect_cluster(&nodes).await?);
                // Pushes need RESP3; see `sharded` for why this is a
                // connection of its own.
                let (tx, pushes) = mpsc::unbounded_channel();
                let client = cluster_builder(&nodes)
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()?;
                let sub = bounded(client.get_async_connection()).await?;
                let delivery = Delivery::new(conn.clone(), hub.clone(), history_size);
                tokio::spawn(sharded::Sharded::new(sub, pushes, delivery).run(rx));
                conn
            }
        };
        Ok(RedisEngine {
            conn,
            hub,
            settings,
            scripts,
            commands,
        })
    }

    pub async fn position(&self, room: &str) -> Result<Position, EngineError> {
        let mut conn = self.conn.clone();
        let mut call = self.scripts.position.prepare_invoke();
        call.key(meta_key(room))
            .arg(new_epoch())
            .arg(secs(self.settings.history_ttl));
        let (epoch, offset): (String, u64) = bounded(call.invoke_async(&mut conn)).await?;
        Ok(Position { epoch, offset })
    }

    pub async fn range(&self, room: &str, from: u64) -> Result<Vec<Arc<Event>>, EngineError> {
        range(&self.conn, room, from, self.settings.history_size).await
    }

    pub async fn publish(&self, draft: &Draft) -> Result<Published, EngineError> {
        let room = &draft.room;
        let mut conn = self.conn.clone();
        let mut call = self.scripts.publish.prepare_invoke();
        call.key(meta_key(room))
            .key(log_key(room))
            .key(dedup_key(room, &draft.from, &draft.id))
            .arg(new_epoch())
            .arg(self.settings.history_size)
            .arg(secs(self.settings.history_ttl))
            .arg(secs(self.settings.dedup_ttl))
            .arg(channel(room))
            .arg(room)
            .arg(&draft.from)
            .arg(&draft.id)
            .arg(&draft.text)
            .arg(draft.ts)
            .arg(self.conn.publish_command());
        let (epoch, offset, duplicate): (String, u64, u8) =
            bounded(call.invoke_async(&mut conn)).await?;
        Ok(Published {
            epoch,
            offset,
            duplicate: duplicate == 1,
        })
    }

    pub async fn watch(&self, room: &str) -> Result<(), EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Watch(room.to_string(), tx))
            .map_err(|_| EngineError::Reconnecting)?;
        match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(EngineError::Reconnecting),
            Err(_) => Err(EngineError::Timeout(COMMAND_TIMEOUT)),
        }
    }

    pub fn unwatch(&self, room: &str) {
        let _ = self.commands.send(Command::Unwatch(room.to_string()));
    }

    async fn presence_op(
        &self,
        op: &str,
        room: &str,
        entries: &[&Member],
    ) -> Result<Vec<String>, EngineError> {
        let mut conn = self.conn.clone();
        let mut call = self.scripts.presence.prepare_invoke();
        let ttl_ms = u64::try_from(self.settings.presence_ttl.as_millis()).unwrap_or(u64::MAX);
        call.key(presence_key(room))
            .arg(op)
            .arg(ttl_ms.max(1))
            .arg(channel(room))
            .arg(room)
            .arg(self.conn.publish_command());
        for m in entries {
            call.arg(format!("{} {}", m.user, m.conn));
        }
        let mut users: Vec<String> = bounded(call.invoke_async(&mut conn)).await?;
        users.sort();
        Ok(users)
    }

    pub async fn presence_join(
        &self,
        room: &str,
        member: &Member,
    ) -> Result<Vec<String>, EngineError> {
        self.presence_op("join", room, &[member]).await
    }

    pub async fn presence_leave(&self, room: &str, member: &Member) -> Result<(), EngineError> {
        self.presence_op("leave", room, &[member]).await.map(drop)
    }

    pub async fn presence(&self, room: &str) -> Result<Vec<String>, EngineError> {
        self.presence_op("list", room, &[]).await
    }

    /// Refreshes the expiry of every local presence entry and sweeps the
    /// expired entries of the rooms this backend has members in. A room
    /// that fails (its cluster shard is failing over) does not hold up the
    /// others; the first error is returned.
    pub async fn maintain(&self) -> Result<(), EngineError> {
        let mut first_error = None;
        for (room, members) in self.hub.memberships() {
            let refs: Vec<&Member> = members.iter().collect();
            if let Err(err) = self.presence_op("refresh", &room, &refs).await {
                first_error.get_or_insert(err);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
