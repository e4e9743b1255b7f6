//! `chat-backend`: the example backend that runs behind wsgate.
//!
//! This file only parses flags, initialises tracing and hands over to
//! [`server::run`]. The HTTP/WebSocket logic lives in the modules below so a
//! fuller chat server can reuse them.

mod echo;
mod server;
mod shutdown;
mod ws;

use clap::Parser;

/// Command-line flags (each can also come from the environment).
#[derive(Debug, Parser)]
#[command(name = "chat-backend", version, about = "Example backend for wsgate")]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:9001")]
    listen: String,
    /// Backend identifier reported in responses and the hello message.
    #[arg(long, env = "CHAT_BACKEND_ID", default_value = "chat-1")]
    id: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr: stdout carries only the "listening on" line.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    server::run(server::Config {
        listen: cli.listen,
        id: cli.id,
    })
    .await
}
