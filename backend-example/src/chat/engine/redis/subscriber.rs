//! Live delivery from one Redis server: a dedicated Pub/Sub connection
//! that `SUBSCRIBE`s to the rooms with local members. If the connection
//! drops, it reconnects with backoff, resubscribes, and fills what it
//! missed from the history stream.

use std::time::Duration;

use futures_util::StreamExt;
use redis::Client;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::conn::bounded;
use super::delivery::{Command, Delivery, Watched};
use super::keys::{channel, room_of_channel};
use crate::chat::engine::EngineError;
use crate::chat::event::Event;

/// Longest wait between attempts to reconnect the subscriber.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);

/// Owns the subscriber connection; see the module docs.
pub struct Subscriber {
    pub client: Client,
    pub delivery: Delivery,
}

impl Subscriber {
    pub async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
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
                let rooms = self.delivery.rooms.len();
                info!(rooms, "redis subscriber reconnected");
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
                        self.delivery.deliver(event).await;
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
                        if self.delivery.hub.has_room(&room) {
                            self.delivery.rooms.entry(room).or_insert(Watched { last: None });
                        }
                        let _ = reply.send(Err(EngineError::Reconnecting));
                    }
                    Some(Command::Unwatch(room)) => {
                        if !self.delivery.hub.has_room(&room) {
                            self.delivery.rooms.remove(&room);
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
        let d = &mut self.delivery;
        match cmd {
            Command::Watch(room, reply) => {
                let result = if !d.hub.has_room(&room) || d.rooms.contains_key(&room) {
                    Ok(())
                } else {
                    match bounded(sink.subscribe(channel(&room))).await {
                        Ok(()) => {
                            d.rooms.insert(room, Watched { last: None });
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
                if !d.hub.has_room(&room) && d.rooms.remove(&room).is_some() {
                    bounded(sink.unsubscribe(channel(&room))).await?;
                }
            }
        }
        Ok(())
    }

    /// Subscribes to every watched room after a (re)connect and delivers
    /// whatever was published while the subscriber was away.
    async fn resubscribe(&mut self, sink: &mut redis::aio::PubSubSink) -> Result<(), EngineError> {
        let hub = self.delivery.hub.clone();
        self.delivery.rooms.retain(|room, _| hub.has_room(room));
        let rooms: Vec<String> = self.delivery.rooms.keys().cloned().collect();
        for room in &rooms {
            bounded(sink.subscribe(channel(room))).await?;
        }
        self.delivery.fill_all().await;
        Ok(())
    }
}
