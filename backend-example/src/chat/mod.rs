//! The chat service behind `/ws`: rooms, presence, history with resume, and
//! fan-out across backends.
//!
//! - [`protocol`]: the JSON messages and input validation;
//! - [`session`]: one WebSocket connection, from `hello` to close;
//! - [`hub`]: rooms with members on this backend, local fan-out;
//! - [`engine`]: history, offsets, presence and cross-backend delivery
//!   (in memory, or Redis);
//! - [`recovery`]: what a resuming client receives;
//! - [`event`], [`limits`]: shared event type, flood control.

pub mod engine;
pub mod event;
pub mod hub;
pub mod limits;
pub mod protocol;
pub mod recovery;
pub mod session;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use self::engine::redis::{RedisEngine, RedisSettings};
use self::engine::{memory::MemoryEngine, Engine, EngineError};
use self::hub::Hub;

/// Per-connection behaviour.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interval between server pings.
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the client is closed.
    pub pong_timeout: Duration,
    /// On SIGTERM, clients are closed (1012) at random times within this.
    pub drain_window: Duration,
    /// Largest `text` of a chat message, in bytes.
    pub max_text_bytes: usize,
    /// Most rooms one connection may be in.
    pub max_rooms: usize,
    /// Inbound messages per second allowed on average per connection.
    pub rate: f64,
    /// Inbound messages allowed in a burst per connection.
    pub burst: f64,
}

/// Where rooms live.
#[derive(Debug, Clone)]
pub struct Storage {
    /// `None` selects the in-memory engine.
    pub redis_url: Option<String>,
    pub history_size: usize,
    pub history_ttl: Duration,
    pub dedup_ttl: Duration,
    pub presence_ttl: Duration,
}

/// Shared by every chat session of this backend.
pub struct Chat {
    pub backend: Arc<str>,
    pub engine: Engine,
    pub hub: Arc<Hub>,
    pub settings: Settings,
    presence_ttl: Duration,
    /// Random per process, so connection ids never repeat across restarts.
    instance: u32,
    next_conn: AtomicU64,
}

impl Chat {
    /// Opens the engine (connecting to Redis if configured).
    pub async fn start(
        backend: Arc<str>,
        settings: Settings,
        storage: Storage,
    ) -> Result<Arc<Chat>, EngineError> {
        let hub = Arc::new(Hub::default());
        let engine = match &storage.redis_url {
            None => {
                info!("rooms are in memory: run several backends with --redis-url to share them");
                Engine::Memory(MemoryEngine::new(hub.clone(), storage.history_size))
            }
            Some(url) => {
                let redis_settings = RedisSettings {
                    history_size: storage.history_size.max(1),
                    history_ttl: storage.history_ttl,
                    dedup_ttl: storage.dedup_ttl,
                    presence_ttl: storage.presence_ttl,
                };
                let engine = RedisEngine::connect(url, hub.clone(), redis_settings).await?;
                info!("rooms are in redis");
                Engine::Redis(engine)
            }
        };
        Ok(Arc::new(Chat {
            backend,
            engine,
            hub,
            settings,
            presence_ttl: storage.presence_ttl,
            instance: rand::random(),
            next_conn: AtomicU64::new(1),
        }))
    }

    /// A connection id unique across the cluster and across restarts.
    pub fn conn_id(&self) -> String {
        let n = self.next_conn.fetch_add(1, Ordering::Relaxed);
        format!("{}:{:08x}:{n}", self.backend, self.instance)
    }

    /// Refreshes this backend's presence entries (and sweeps those of dead
    /// backends) every third of their TTL, for as long as the process runs.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let chat = self.clone();
        let every = (self.presence_ttl / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(err) = chat.engine.maintain().await {
                    warn!(%err, "presence upkeep failed");
                }
            }
        });
    }
}
