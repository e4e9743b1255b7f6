//! `chat-backend`: the example chat backend that runs behind wsgate.
//!
//! This file only parses flags, initialises tracing and hands over to
//! [`server::run`]. Modules:
//! - `config`: flags and their typed settings;
//! - `server`: HTTP accept loop and routing; `ws`: the WebSocket handshake;
//! - `echo`: the echo handler the proxy's tests use;
//! - `chat`: the chat service on `/ws`; `page`: the browser page;
//! - `shutdown`: signals and draining.

#![forbid(unsafe_code)]

mod chat;
mod config;
mod echo;
mod page;
mod server;
mod shutdown;
mod ws;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = config::Cli::parse();
    // Logs go to stderr: stdout carries only the "listening on" line.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    server::run(server::Config {
        chat: cli.settings(),
        storage: cli.storage(),
        max_message_bytes: cli.max_message_bytes.max(1024),
        listen: cli.listen,
        id: cli.id,
    })
    .await
}
