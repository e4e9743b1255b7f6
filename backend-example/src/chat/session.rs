//! One chat connection: `hello`, then client requests (join, send, leave),
//! room events, heartbeats and shutdown, until the socket closes.
//!
//! Nothing a client sends can end anything but its own connection:
//! - malformed or unknown messages get an `error` reply;
//! - binary frames close it with 1003, oversized messages with 1009;
//! - more messages than the token bucket allows get `rate_limited` errors,
//!   and a client that keeps flooding is closed with 1008;
//! - a client that stops reading is dropped when a write times out, and one
//!   that stops answering pings is closed.
//!
//! A session that lags behind its rooms (more than the hub's buffer) resyncs
//! from history, so it never skips a message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::io::AsyncReadExt;
use tokio::time::{sleep_until, Instant};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamMap;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, info, warn, Instrument};

use super::engine::{Draft, EngineError};
use super::event::{Event, EventKind};
use super::hub::Member;
use super::limits::TokenBucket;
use super::protocol::{self, ClientMessage, InputError, Position, Presence, ServerMessage};
use super::recovery::{self, Recovery};
use super::Chat;
use crate::shutdown::Shutdown;
use crate::ws::WsStream;

/// A write that cannot complete within this means the client stopped
/// reading; the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the client's Close reply after ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed, or the connection broke.
    Gone,
    /// We closed it with this code.
    Closed(CloseCode),
}

/// The connection is over; carries how it ended.
struct Stop(End);

impl From<WsError> for Stop {
    fn from(err: WsError) -> Self {
        debug!(%err, "websocket write failed");
        Stop(End::Gone)
    }
}

type Step = Result<(), Stop>;

/// Per-room state of this connection.
struct Joined {
    /// Last position delivered to the client.
    cursor: Position,
}

struct Session {
    chat: Arc<Chat>,
    member: Member,
    rooms: HashMap<String, Joined>,
    events: StreamMap<String, BroadcastStream<Arc<Event>>>,
    bucket: TokenBucket,
    /// Messages refused by the bucket since the last accepted one.
    strikes: u32,
}

/// Serves one chat connection for `user` until it closes.
pub async fn run(ws: WsStream, chat: Arc<Chat>, user: String, shutdown: Shutdown) {
    let member = Member {
        user,
        conn: chat.conn_id(),
    };
    let span = tracing::debug_span!("chat", conn = %member.conn, user = %member.user);
    serve(ws, chat, member, shutdown).instrument(span).await;
}

async fn serve(mut ws: WsStream, chat: Arc<Chat>, member: Member, shutdown: Shutdown) {
    let settings = &chat.settings;
    let bucket = TokenBucket::new(settings.rate, settings.burst, std::time::Instant::now());
    let mut session = Session {
        chat: chat.clone(),
        member,
        rooms: HashMap::new(),
        events: StreamMap::new(),
        bucket,
        strikes: 0,
    };
    let end = match session.serve(&mut ws, &shutdown).await {
        Ok(()) => End::Gone,
        Err(Stop(end)) => end,
    };
    if let End::Closed(code) = end {
        finish_close(&mut ws).await;
        debug!(code = u16::from(code), "closed by server");
    }
    session.leave_all(end).await;
}

/// Waits (bounded) for the client's Close reply so ours is flushed. If the
/// WebSocket stream already failed (an oversized or invalid frame), reads
/// and discards raw bytes instead until the peer closes: dropping a socket
/// with unread input makes the kernel send a reset, which can destroy our
/// Close frame in flight before the peer (or wsgate) reads it.
async fn finish_close(ws: &mut WsStream) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
        let mut sink = [0u8; 4096];
        while let Ok(n) = ws.get_mut().read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn send(ws: &mut WsStream, text: impl Into<Utf8Bytes>) -> Step {
    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Text(text.into()))).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            info!("client stopped reading; dropping it");
            Err(Stop(End::Gone))
        }
    }
}

/// Sends a Close with `code` and ends the session.
async fn close(ws: &mut WsStream, code: CloseCode, reason: &'static str) -> Step {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(Some(frame))).await;
    Err(Stop(End::Closed(code)))
}

fn engine_error(err: &EngineError) -> String {
    warn!(%err, "storage unavailable");
    "storage is unavailable; retry".to_string()
}

impl Session {
    async fn serve(&mut self, ws: &mut WsStream, shutdown: &Shutdown) -> Step {
        let settings = self.chat.settings.clone();
        let hello = ServerMessage::Hello {
            backend: &self.chat.backend,
            user: &self.member.user,
            engine: self.chat.engine.name(),
            ping_interval_ms: u64::try_from(settings.ping_interval.as_millis()).unwrap_or(0),
        };
        send(ws, hello.to_json()).await?;

        let mut ping = tokio::time::interval_at(
            Instant::now() + settings.ping_interval,
            settings.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pong_deadline: Option<Instant> = None;
        let mut close_at: Option<Instant> = None;
        let mut ping_count: u64 = 0;
        loop {
            tokio::select! {
                inbound = ws.next() => match inbound {
                    None => return Ok(()),
                    Some(Ok(msg)) => {
                        if matches!(msg, Message::Pong(_)) {
                            pong_deadline = None;
                        }
                        self.inbound(ws, msg).await?;
                    }
                    Some(Err(err)) => return self.read_error(ws, err).await,
                },
                Some((room, item)) = self.events.next(), if !self.events.is_empty() => {
                    self.event(ws, room, item).await?;
                }
                _ = ping.tick() => {
                    ping_count += 1;
                    let payload = ping_count.to_be_bytes().to_vec();
                    match tokio::time::timeout(WRITE_TIMEOUT, ws.send(Message::Ping(payload.into()))).await {
                        Ok(result) => result?,
                        Err(_) => return Err(Stop(End::Gone)),
                    }
                    pong_deadline.get_or_insert(Instant::now() + settings.pong_timeout);
                }
                () = sleep_until(pong_deadline.unwrap_or_else(Instant::now)), if pong_deadline.is_some() => {
                    info!("no pong in time; closing");
                    return close(ws, CloseCode::Away, "pong timeout").await;
                }
                () = shutdown.triggered(), if close_at.is_none() => {
                    // Spread closes over the window so clients reconnect paced.
                    let window = settings.drain_window.as_millis() as u64;
                    let delay = if window == 0 { 0 } else { rand::thread_rng().gen_range(0..window) };
                    close_at = Some(Instant::now() + Duration::from_millis(delay));
                }
                () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => {
                    return close(ws, CloseCode::Restart, "service restart").await;
                }
            }
        }
    }

    /// Maps a read error to the close the client should see.
    async fn read_error(&mut self, ws: &mut WsStream, err: WsError) -> Step {
        match err {
            WsError::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
                info!(size, max_size, "message too big; closing");
                close(ws, CloseCode::Size, "message too big").await
            }
            WsError::Utf8 => close(ws, CloseCode::Invalid, "invalid utf-8").await,
            err => {
                debug!(%err, "websocket read failed");
                Err(Stop(End::Gone))
            }
        }
    }

    async fn inbound(&mut self, ws: &mut WsStream, msg: Message) -> Step {
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(_) => {
                return close(
                    ws,
                    CloseCode::Unsupported,
                    "binary frames are not supported",
                )
                .await
            }
            // Pings are answered by tungstenite; a Close is answered by it
            // too, and the stream then ends.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                return Ok(())
            }
        };
        let parsed = protocol::parse(text.as_str(), self.chat.settings.max_text_bytes);
        if !self.bucket.take(std::time::Instant::now()) {
            self.strikes += 1;
            if f64::from(self.strikes) > self.chat.settings.burst {
                info!("flooding; closing");
                return close(ws, CloseCode::Policy, "too many messages").await;
            }
            let (room, id) = match &parsed {
                Ok(ClientMessage::Send { room, id, .. }) => {
                    (Some(room.as_str()), Some(id.as_str()))
                }
                _ => (None, None),
            };
            return self
                .error(ws, "rate_limited", "too many messages; slow down", room, id)
                .await;
        }
        self.strikes = 0;
        match parsed {
            Err(err) => self.input_error(ws, err).await,
            Ok(ClientMessage::Join { room, since }) => self.join(ws, room, since).await,
            Ok(ClientMessage::Send { room, id, text }) => self.publish(ws, room, id, text).await,
            Ok(ClientMessage::Leave { room }) => self.leave(ws, room).await,
        }
    }

    async fn input_error(&mut self, ws: &mut WsStream, err: InputError) -> Step {
        self.error(ws, err.code(), &err.to_string(), None, None)
            .await
    }

    async fn error(
        &mut self,
        ws: &mut WsStream,
        code: &str,
        message: &str,
        room: Option<&str>,
        id: Option<&str>,
    ) -> Step {
        let msg = ServerMessage::Error {
            code,
            message,
            room,
            id,
        };
        send(ws, msg.to_json()).await
    }

    async fn join(&mut self, ws: &mut WsStream, room: String, since: Option<Position>) -> Step {
        if self.rooms.contains_key(&room) {
            return self
                .error(
                    ws,
                    "already_joined",
                    "already in this room",
                    Some(&room),
                    None,
                )
                .await;
        }
        if self.rooms.len() >= self.chat.settings.max_rooms {
            return self
                .error(
                    ws,
                    "too_many_rooms",
                    "leave a room first",
                    Some(&room),
                    None,
                )
                .await;
        }
        // Order matters for a gap-free resume: receive live events first,
        // then read history; live events already in history are skipped.
        let rx = self.chat.hub.attach(&room, self.member.clone());
        let mut present = false;
        let result = async {
            self.chat.engine.watch(&room).await?;
            let presence = self.chat.engine.presence_join(&room, &self.member).await?;
            present = true;
            let recovery = recovery::recover(&self.chat.engine, &room, since.as_ref()).await?;
            Ok::<_, EngineError>((presence, recovery))
        }
        .await;
        let (presence, recovery) = match result {
            Ok(ok) => ok,
            Err(err) => {
                self.chat.hub.detach(&room, &self.member.conn);
                self.chat.engine.unwatch(&room);
                if present {
                    // Best effort; with Redis an entry left behind expires.
                    let _ = self.chat.engine.presence_leave(&room, &self.member).await;
                }
                let message = engine_error(&err);
                return self
                    .error(ws, "unavailable", &message, Some(&room), None)
                    .await;
            }
        };
        self.events.insert(room.clone(), BroadcastStream::new(rx));
        self.rooms.insert(
            room.clone(),
            Joined {
                cursor: recovery.cursor(),
            },
        );
        let joined = ServerMessage::Joined {
            room: &room,
            epoch: &recovery.position.epoch,
            offset: recovery.position.offset,
            presence: &presence,
        };
        send(ws, joined.to_json()).await?;
        if since.is_some() {
            self.send_recovery(ws, &room, &recovery).await?;
        }
        Ok(())
    }

    async fn send_recovery(&mut self, ws: &mut WsStream, room: &str, recovery: &Recovery) -> Step {
        for event in &recovery.events {
            send(ws, event.wire.clone()).await?;
        }
        let recovered = ServerMessage::Recovered {
            room,
            count: recovery.events.len(),
            complete: recovery.complete,
        };
        send(ws, recovered.to_json()).await
    }

    async fn publish(&mut self, ws: &mut WsStream, room: String, id: String, text: String) -> Step {
        if !self.rooms.contains_key(&room) {
            return self
                .error(
                    ws,
                    "not_joined",
                    "join the room first",
                    Some(&room),
                    Some(&id),
                )
                .await;
        }
        let draft = Draft {
            room,
            from: self.member.user.clone(),
            id,
            text,
            ts: now_ms(),
        };
        match self.chat.engine.publish(&draft).await {
            Ok(published) => {
                let ack = ServerMessage::Ack {
                    room: &draft.room,
                    id: &draft.id,
                    epoch: &published.epoch,
                    offset: published.offset,
                    duplicate: published.duplicate,
                };
                send(ws, ack.to_json()).await
            }
            Err(err) => {
                let message = engine_error(&err);
                let (room, id) = (Some(draft.room.as_str()), Some(draft.id.as_str()));
                self.error(ws, "unavailable", &message, room, id).await
            }
        }
    }

    async fn leave(&mut self, ws: &mut WsStream, room: String) -> Step {
        if self.rooms.remove(&room).is_none() {
            return self
                .error(ws, "not_joined", "not in this room", Some(&room), None)
                .await;
        }
        self.events.remove(&room);
        self.chat.hub.detach(&room, &self.member.conn);
        self.chat.engine.unwatch(&room);
        if let Err(err) = self.chat.engine.presence_leave(&room, &self.member).await {
            warn!(%err, room, "presence leave failed; the entry will expire");
        }
        send(ws, ServerMessage::Left { room: &room }.to_json()).await
    }

    /// Forwards one room event, skipping messages the client already has.
    async fn event(
        &mut self,
        ws: &mut WsStream,
        room: String,
        item: Result<Arc<Event>, BroadcastStreamRecvError>,
    ) -> Step {
        let event = match item {
            Ok(event) => event,
            Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                info!(room, skipped, "session lagged; resyncing from history");
                return self.resync(ws, &room).await;
            }
        };
        let Some(joined) = self.rooms.get_mut(&room) else {
            return Ok(());
        };
        if let EventKind::Message { epoch, offset } = &event.kind {
            if *epoch == joined.cursor.epoch && *offset <= joined.cursor.offset {
                return Ok(());
            }
            joined.cursor = Position {
                epoch: epoch.clone(),
                offset: *offset,
            };
        }
        send(ws, event.wire.clone()).await
    }

    /// After lagging: sends the messages missed since the cursor and a fresh
    /// presence snapshot (presence events may have been dropped too).
    async fn resync(&mut self, ws: &mut WsStream, room: &str) -> Step {
        let Some(joined) = self.rooms.get(room) else {
            return Ok(());
        };
        let since = joined.cursor.clone();
        let result = async {
            let recovery = recovery::recover(&self.chat.engine, room, Some(&since)).await?;
            let members = self.chat.engine.presence(room).await?;
            Ok::<_, EngineError>((recovery, members))
        }
        .await;
        let (recovery, members) = match result {
            Ok(ok) => ok,
            Err(err) => {
                // Without history we cannot promise order: make the client
                // reconnect and resume instead.
                warn!(%err, room, "resync failed; closing so the client resumes");
                return close(ws, CloseCode::Again, "resync failed").await;
            }
        };
        if let Some(joined) = self.rooms.get_mut(room) {
            joined.cursor = recovery.cursor();
        }
        self.send_recovery(ws, room, &recovery).await?;
        let snapshot = Presence {
            room: room.to_string(),
            joined: None,
            left: None,
            members: Some(members),
        };
        send(ws, ServerMessage::Presence(&snapshot).to_json()).await
    }

    /// Leaves every room on the way out. After a restart close (1012) the
    /// presence entries are left to expire instead: the client is about to
    /// reconnect, and removing them would flash a leave and a join.
    async fn leave_all(&mut self, end: End) {
        let keep_presence = end == End::Closed(CloseCode::Restart);
        for (room, _) in self.rooms.drain() {
            self.chat.hub.detach(&room, &self.member.conn);
            self.chat.engine.unwatch(&room);
            if keep_presence {
                continue;
            }
            if let Err(err) = self.chat.engine.presence_leave(&room, &self.member).await {
                warn!(%err, room, "presence leave failed; the entry will expire");
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
