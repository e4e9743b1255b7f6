//! Command-line flags (each also readable from a `CHAT_*` environment
//! variable) and their conversion into the typed settings of the server and
//! the chat service.

use std::time::Duration;

use clap::Parser;
use wsgate_units::DurationSyntax;

use crate::chat::{Settings, Storage};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "chat-backend",
    version,
    about = "Example chat backend for wsgate"
)]
pub struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: String,
    /// Backend identifier reported in responses and the hello message.
    #[arg(long, env = "CHAT_BACKEND_ID", default_value = "chat-1")]
    pub id: String,
    /// Redis URL (e.g. redis://127.0.0.1:6379). Without it rooms live in
    /// this process only and are not shared with other backends.
    #[arg(long, env = "CHAT_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Interval between server pings (e.g. 25s, 500ms).
    #[arg(long, env = "CHAT_PING_INTERVAL", default_value = "25s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the client is closed.
    #[arg(long, env = "CHAT_PONG_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub pong_timeout: Duration,
    /// On SIGTERM, clients are closed with 1012 spread over this window.
    #[arg(long, env = "CHAT_DRAIN_WINDOW", default_value = "5s", value_parser = parse_duration)]
    pub drain_window: Duration,
    /// Messages kept per room for resume.
    #[arg(long, env = "CHAT_HISTORY_SIZE", default_value_t = 1000)]
    pub history_size: usize,
    /// Idle time after which a room's history expires (Redis only).
    #[arg(long, env = "CHAT_HISTORY_TTL", default_value = "24h", value_parser = parse_duration)]
    pub history_ttl: Duration,
    /// How long a client message id is remembered for de-duplication (Redis only).
    #[arg(long, env = "CHAT_DEDUP_TTL", default_value = "10m", value_parser = parse_duration)]
    pub dedup_ttl: Duration,
    /// Presence entries of a dead backend expire after this (Redis only).
    #[arg(long, env = "CHAT_PRESENCE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub presence_ttl: Duration,
    /// Largest WebSocket message on /ws; bigger ones close with 1009.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024)]
    pub max_message_bytes: usize,
    /// Largest chat text, in bytes.
    #[arg(long, env = "CHAT_MAX_TEXT_BYTES", default_value_t = 4000)]
    pub max_text_bytes: usize,
    /// Most rooms one connection may be in.
    #[arg(long, env = "CHAT_MAX_ROOMS", default_value_t = 16)]
    pub max_rooms: usize,
    /// Inbound messages per second allowed per connection, on average.
    #[arg(long, env = "CHAT_RATE", default_value_t = 20.0)]
    pub rate: f64,
    /// Inbound messages allowed in a burst per connection.
    #[arg(long, env = "CHAT_BURST", default_value_t = 40.0)]
    pub burst: f64,
}

impl Cli {
    pub fn settings(&self) -> Settings {
        Settings {
            ping_interval: self.ping_interval.max(Duration::from_millis(10)),
            pong_timeout: self.pong_timeout,
            drain_window: self.drain_window,
            max_text_bytes: self.max_text_bytes,
            max_rooms: self.max_rooms.max(1),
            rate: self.rate,
            burst: self.burst,
        }
    }

    pub fn storage(&self) -> Storage {
        Storage {
            redis_url: self.redis_url.clone().filter(|u| !u.is_empty()),
            history_size: self.history_size.max(1),
            history_ttl: self.history_ttl.max(Duration::from_secs(1)),
            dedup_ttl: self.dedup_ttl.max(Duration::from_secs(1)),
            presence_ttl: self.presence_ttl.max(Duration::from_millis(300)),
        }
    }
}

/// Parses `500ms`, `25s`, `5m`, `24h` (a bare number is seconds): the
/// workspace's duration rule (`wsgate-units`) with bare seconds allowed.
fn parse_duration(text: &str) -> Result<Duration, String> {
    DurationSyntax::STRICT.bare_seconds().parse(text)
}
