//! The Redis engine: rooms shared by every backend that uses the same Redis.
//!
//! Keys of room `R` (the `{R}` hash tag keeps a room on one cluster slot):
//! - `chat:{R}:meta`: hash `{epoch, offset}`: the history generation and the
//!   newest offset;
//! - `chat:{R}:log`: the history, a Stream capped at `history_size` entries
//!   whose ids are `<offset>-1`, so reading from an offset is one `XRANGE`;
//! - `chat:{R}:dedup:<from>:<id>`: `"epoch offset"` of an already stored
//!   message, kept for `dedup_ttl`;
//! - `chat:{R}:presence`: sorted set of `"user conn"` scored by expiry.
//!
//! Live events go out on the Pub/Sub channel `chat:{R}:events`, published
//! by the same Lua script that stores them, so every backend receives
//! messages in offset order. One dispatcher task per backend holds the
//! subscriber connection, subscribes to the rooms that have local members,
//! and feeds the [`Hub`]. If it ever sees a hole in the offsets (after a
//! lost subscriber connection), it fills it from the stream before going on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Client, Script};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::{new_epoch, Draft, EngineError, Published};
use crate::chat::event::Event;
use crate::chat::hub::{Hub, Member};
use crate::chat::protocol::Position;

/// Upper bound for one Redis command or script.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between attempts to reconnect the subscriber.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Tuning of the Redis engine.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub history_size: usize,
    pub history_ttl: Duration,
    pub dedup_ttl: Duration,
    pub presence_ttl: Duration,
}

fn meta_key(room: &str) -> String {
    format!("chat:{{{room}}}:meta")
}
fn log_key(room: &str) -> String {
    format!("chat:{{{room}}}:log")
}
fn presence_key(room: &str) -> String {
    format!("chat:{{{room}}}:presence")
}
fn channel(room: &str) -> String {
    format!("chat:{{{room}}}:events")
}
fn room_of_channel(channel: &str) -> Option<&str> {
    channel.strip_prefix("chat:{")?.strip_suffix("}:events")
}

struct Scripts {
    position: Script,
    publish: Script,
    presence: Script,
}

enum Command {
    /// Subscribe to the room if it has local members; reply once live.
    Watch(String, oneshot::Sender<Result<(), EngineError>>),
    /// Unsubscribe if the room has no local members.
    Unwatch(String),
}

/// Handle to Redis shared by every session of this backend.
pub struct RedisEngine {
    conn: ConnectionManager,
    hub: Arc<Hub>,
    settings: RedisSettings,
    scripts: Arc<Scripts>,
    commands: mpsc::UnboundedSender<Command>,
}

async fn bounded<T>(
    fut: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(COMMAND_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(EngineError::Timeout(COMMAND_TIMEOUT)),
    }
}

fn secs(d: Duration) -> u64 {
    d.as_secs().max(1)
}

impl RedisEngine {
    /// Connects (failing fast if Redis is unreachable) and starts the
    /// subscriber task.
    pub async fn connect(
        url: &str,
        hub: Arc<Hub>,
        settings: RedisSettings,
    ) -> Result<Self, EngineError> {
        let client = Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        let conn = bounded(ConnectionManager::new_with_config(client.clone(), config)).await?;
        let scripts = Arc::new(Scripts {
            position: Script::new(include_str!("lua/position.lua")),
            publish: Script::new(include_str!("lua/publish.lua")),
            presence: Script::new(include_str!("lua/presence.lua")),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let engine = RedisEngine {
            conn,
            hub,
            settings,
            scripts,
            commands,
        };
        let dispatcher = Dispatcher {
            client,
            conn: engine.conn.clone(),
            hub: engine.hub.clone(),
            history_size: engine.settings.history_size,
            rooms: HashMap::new(),
        };
        tokio::spawn(dispatcher.run(rx));
        Ok(engine)
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
            .key(format!("chat:{{{room}}}:dedup:{}:{}", draft.from, draft.id))
            .arg(new_epoch())
            .arg(self.settings.history_size)
            .arg(secs(self.settings.history_ttl))
            .arg(secs(self.settings.dedup_ttl))
            .arg(channel(room))
            .arg(room)
            .arg(&draft.from)
            .arg(&draft.id)
            .arg(&draft.text)
            .arg(draft.ts);
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
            .arg(room);
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
    /// expired entries of the rooms this backend has members in.
    pub async fn maintain(&self) -> Result<(), EngineError> {
        for (room, members) in self.hub.memberships() {
            let refs: Vec<&Member> = members.iter().collect();
            self.presence_op("refresh", &room, &refs).await?;
        }
        Ok(())
    }
}

async fn range(
    conn: &ConnectionManager,
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

/// Live state of one subscribed room.
struct Watched {
    /// Last delivered message position, to detect holes.
    last: Option<Position>,
}

/// Owns the subscriber connection; see the module docs.
struct Dispatcher {
    client: Client,
    conn: ConnectionManager,
    hub: Arc<Hub>,
    history_size: usize,
    rooms: HashMap<String, Watched>,
}

impl Dispatcher {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut delay = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            let pubsub = match bounded(self.client.get_async_pubsub()).await {
                Ok(p) => p,
                Err(err) => {
                    warn!(%err, "redis subscriber cannot connect; retrying");
                    if !self.wait_refusing(&mut commands, delay).await {
                        return;
                    }
                    delay = (delay * 2).min(MAX_RECONNECT_DELAY);
                    continue;
                }
            };
            let (mut sink, mut stream) = pubsub.split();
            if connected_before {
                info!(rooms = self.rooms.len(), "redis subscriber reconnected");
            }
            connected_before = true;
            match self.resubscribe(&mut sink).await {
                Ok(()) => delay = Duration::from_millis(100),
                Err(err) => {
                    warn!(%err, "redis resubscribe failed; reconnecting");
                    continue;
                }
            }
            loop {
                tokio::select! {
                    cmd = commands.recv() => {
                        let Some(cmd) = cmd else { return };
                        if let Err(err) = self.command(&mut sink, cmd).await {
                            warn!(%err, "redis subscribe failed; reconnecting");
                            break;
                        }
                    }
                    msg = stream.next() => {
                        let Some(msg) = msg else {
                            warn!("redis subscriber connection lost; reconnecting");
                            break;
                        };
                        let Ok(payload) = msg.get_payload::<String>() else { continue };
                        let Some(event) = Event::from_wire(payload) else {
                            debug!(channel = msg.get_channel_name(), "ignoring malformed event");
                            continue;
                        };
                        if room_of_channel(msg.get_channel_name()) != Some(event.room.as_str()) {
                            continue;
                        }
                        self.deliver(event).await;
                    }
                }
            }
        }
    }

    /// While disconnected: answers watch requests with an error until
    /// `delay` has passed. Returns false when the engine is gone.
    async fn wait_refusing(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        delay: Duration,
    ) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                cmd = commands.recv() => match cmd {
                    None => return false,
                    Some(Command::Watch(room, reply)) => {
                        // Remember it: it is subscribed on reconnect.
                        if self.hub.has_room(&room) {
                            self.rooms.entry(room).or_insert(Watched { last: None });
                        }
                        let _ = reply.send(Err(EngineError::Reconnecting));
                    }
                    Some(Command::Unwatch(room)) => {
                        if !self.hub.has_room(&room) {
                            self.rooms.remove(&room);
                        }
                    }
                },
            }
        }
    }

    async fn command(
        &mut self,
        sink: &mut redis::aio::PubSubSink,
        cmd: Command,
    ) -> Result<(), EngineError> {
        match cmd {
            Command::Watch(room, reply) => {
                let result = if !self.hub.has_room(&room) || self.rooms.contains_key(&room) {
                    Ok(())
                } else {
                    match bounded(sink.subscribe(channel(&room))).await {
                        Ok(()) => {
                            self.rooms.insert(room, Watched { last: None });
                            Ok(())
                        }
                        Err(err) => {
                            let _ = reply.send(Err(EngineError::Reconnecting));
                            return Err(err);
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Command::Unwatch(room) => {
                if !self.hub.has_room(&room) && self.rooms.remove(&room).is_some() {
                    bounded(sink.unsubscribe(channel(&room))).await?;
                }
            }
        }
        Ok(())
    }

    /// Subscribes to every watched room after a (re)connect and delivers
    /// whatever was published while the subscriber was away.
    async fn resubscribe(&mut self, sink: &mut redis::aio::PubSubSink) -> Result<(), EngineError> {
        self.rooms.retain(|room, _| self.hub.has_room(room));
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in &rooms {
            bounded(sink.subscribe(channel(room))).await?;
        }
        for room in rooms {
            let last = self.rooms.get(&room).and_then(|w| w.last.clone());
            if let Some(last) = last {
                self.fill(&room, &last, u64::MAX).await;
            }
        }
        Ok(())
    }

    /// Delivers retained messages of `room` after `last` and before `until`.
    async fn fill(&mut self, room: &str, last: &Position, until: u64) {
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
        if let (Some(w), crate::chat::event::EventKind::Message { epoch, offset }) =
            (self.rooms.get_mut(&event.room), &event.kind)
        {
            w.last = Some(Position {
                epoch: epoch.clone(),
                offset: *offset,
            });
        }
        self.hub.deliver(event);
    }

    /// Delivers a live event, first filling any hole before it.
    async fn deliver(&mut self, event: Arc<Event>) {
        let crate::chat::event::EventKind::Message { epoch, offset } = &event.kind else {
            self.hub.deliver(event);
            return;
        };
        let last = self.rooms.get(&event.room).and_then(|w| w.last.clone());
        if let Some(last) = last.filter(|l| &l.epoch == epoch) {
            if *offset <= last.offset {
                return; // already delivered by a fill
            }
            if *offset > last.offset + 1 {
                let room = event.room.clone();
                self.fill(&room, &last, *offset).await;
            }
        }
        self.record_and_deliver(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        assert_eq!(room_of_channel(&channel("lobby")), Some("lobby"));
        assert_eq!(room_of_channel("other"), None);
    }
}
