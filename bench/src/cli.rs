//! Command-line interface: one subcommand per mode, connection flags shared
//! by all of them, and global flags for threads, charts, progress and the
//! processes to measure.

use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::units::{parse_duration, parse_source_ips, SourceIps};

/// Load generator for WebSocket proxies.
///
/// Each mode opens WebSockets to --url, prints progress on a terminal
/// (stderr), and prints a one-line JSON summary as the last line on stdout.
/// Exit status: 0 when the mode's checks passed, 1 when they did not or the
/// run failed, 2 for bad flags.
///
/// The target is expected to echo every message back, and by default to
/// send one message first (a "hello"; see --no-hello).
#[derive(Debug, Parser)]
#[command(name = "wsgate-bench", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub mode: Mode,
    /// Worker threads for the generator; 0 = one per CPU it may run on.
    #[arg(long, global = true, default_value_t = 0, env = "WSGATE_BENCH_THREADS")]
    pub threads: usize,
    /// Draw charts of the run into this PNG file.
    #[arg(long, global = true, value_name = "FILE.png")]
    pub chart: Option<PathBuf>,
    /// Measure this process's CPU and memory (Linux /proc); repeat for
    /// several (e.g. a master and its workers). Adds per-message,
    /// per-handshake or per-connection figures to the summary.
    #[arg(long = "pid", global = true, value_name = "PID")]
    pub pids: Vec<u32>,
    /// Never draw a progress bar (it is drawn only when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub enum Mode {
    /// Open loop: send at a fixed total rate over N connections, whatever
    /// the replies do, and record round-trip latency in an HDR histogram.
    Rate(RateArgs),
    /// Closed loop: each connection keeps --window messages in flight, to
    /// find the highest echo throughput.
    Saturate(SaturateArgs),
    /// Open N connections and hold them idle; record per second the Close
    /// frames the server sends (drains), optionally reconnect, and at the
    /// end check that every connection still echoes.
    Idle(IdleArgs),
    /// Connection churn: TCP + TLS + Upgrade + hello + one echo + close,
    /// again and again; reports handshakes per second and per-step latency.
    Handshake(HandshakeArgs),
    /// Connect each user several times and check it lands on the same
    /// backend every time (backend id from the hello or a response header).
    Sticky(StickyArgs),
    /// WebSockets over HTTP/2 streams (RFC 8441) against wss over
    /// HTTP/1.1, in one run: the target's CPU per handshake and memory per
    /// idle WebSocket for each, and their ratios (needs --pid and wss://).
    H2(H2Args),
}

/// How to reach the target; shared by every mode.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// ws:// or wss:// URL; `{user}` is replaced by a user name per
    /// connection (e.g. wss://127.0.0.1:8443/ws/echo?user={user}).
    #[arg(long, short = 'u')]
    pub url: String,
    /// Prefix of generated user names (`{user}` = PREFIX + number).
    #[arg(long, default_value = "u")]
    pub user_prefix: String,
    /// PEM file of CA certificates to trust for wss:// (default: the
    /// system bundle).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// DANGER: accept any server certificate (self-signed dev certs only).
    #[arg(long = "insecure", conflicts_with = "ca")]
    pub danger_accept_any_cert: bool,
    /// Allow TLS session resumption (off by default: every handshake is a
    /// full one).
    #[arg(long)]
    pub tls_resume: bool,
    /// Source addresses to bind, round-robin, so that many connections do
    /// not run out of ephemeral ports: a comma list of addresses and IPv4
    /// ranges, e.g. 127.0.0.2-127.0.0.60.
    #[arg(long, value_parser = parse_source_ips, value_name = "LIST")]
    pub source_ips: Option<SourceIps>,
    /// Connect to this address instead of resolving the URL's host (the
    /// Host header and TLS name still come from the URL).
    #[arg(long, value_name = "ADDR:PORT")]
    pub connect_to: Option<SocketAddr>,
    /// Don't wait for a first message from the server after the upgrade.
    #[arg(long)]
    pub no_hello: bool,
    /// Time limit for each step: connect, TLS, upgrade, hello, echo, close.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RateArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Connections to spread the messages over (round-robin).
    #[arg(long, short = 'c', default_value_t = 200)]
    pub connections: usize,
    /// Total messages per second over all connections.
    #[arg(long, short = 'r', default_value_t = 1000.0)]
    pub rate: f64,
    #[command(flatten)]
    pub load: EchoLoadArgs,
}

#[derive(Debug, Args)]
pub struct SaturateArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Connections, each running its own send-receive loop.
    #[arg(long, short = 'c', default_value_t = 50)]
    pub connections: usize,
    /// Messages in flight per connection.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub window: usize,
    #[command(flatten)]
    pub load: EchoLoadArgs,
}

/// What `rate` and `saturate` share: the messages and the run's length.
#[derive(Debug, Args)]
pub struct EchoLoadArgs {
    /// Message size in bytes (binary frames; at least 24).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// How long to run, warm-up included.
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Leading part of --duration that is sent but not measured.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub warmup: Duration,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Connections to open and hold.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// Connection attempts in flight at once while ramping up.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Cap on new connections per second while ramping up.
    #[arg(long, value_name = "PER_SECOND")]
    pub connect_rate: Option<f64>,
    /// How long to hold once every connection is open (or has failed).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub hold: Duration,
    /// End the hold early once the server has closed every connection
    /// (a finished drain). Ignored with --reconnect.
    #[arg(long)]
    pub until_closed: bool,
    /// Reconnect (same user) after the server closes a connection during
    /// the hold.
    #[arg(long)]
    pub reconnect: bool,
    /// Wait before reconnecting: uniform random between 0 and this.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub reconnect_jitter: Duration,
    /// After the hold, send one message on every open connection and
    /// require its echo.
    #[arg(long)]
    pub verify: bool,
    /// Create this file once all connections are open (for scripts that
    /// wait to measure or to start a drain).
    #[arg(long, value_name = "FILE")]
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct HandshakeArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Connections in progress at once.
    #[arg(long, short = 'C', default_value_t = 4)]
    pub concurrency: usize,
    /// Stop after this many attempts (default: run for --duration).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Run this long when --count is not given.
    #[arg(long, short = 'd', value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Start connections at this fixed rate per second (open loop, limited
    /// by --concurrency) instead of as fast as possible.
    #[arg(long, short = 'r')]
    pub rate: Option<f64>,
    /// Size of the one message echoed per connection (bytes).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

#[derive(Debug, Args)]
pub struct H2Args {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Handshakes per protocol: connect (a new stream over h2), hello,
    /// one echo, close.
    #[arg(long, short = 'n', default_value_t = 1000)]
    pub handshakes: u64,
    /// WebSockets held idle per protocol for the memory figure.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub connections: usize,
    /// WebSockets per HTTP/2 connection, in both phases (100 is wsgate's
    /// and most servers' SETTINGS_MAX_CONCURRENT_STREAMS).
    #[arg(long, default_value_t = 100)]
    pub streams_per_connection: usize,
    /// WebSockets being opened at once.
    #[arg(long, short = 'C', default_value_t = 8)]
    pub concurrency: usize,
    /// Size of the one message echoed per handshake (bytes).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
}

#[derive(Debug, Args)]
pub struct StickyArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Distinct users (values of `{user}`).
    #[arg(long, default_value_t = 100)]
    pub users: u64,
    /// Times each user connects (one connection at a time per user).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Connections in progress at once.
    #[arg(long, short = 'C', default_value_t = 16)]
    pub concurrency: usize,
    /// JSON field of the hello message that names the backend.
    #[arg(long, default_value = "backend")]
    pub id_field: String,
    /// Read the backend id from this 101 response header instead of the hello.
    #[arg(long, value_name = "NAME")]
    pub id_header: Option<String>,
}

impl Mode {
    /// The connection flags of whichever mode this is.
    pub fn conn(&self) -> &ConnArgs {
        match self {
            Mode::Rate(a) => &a.conn,
            Mode::Saturate(a) => &a.conn,
            Mode::Idle(a) => &a.conn,
            Mode::Handshake(a) => &a.conn,
            Mode::Sticky(a) => &a.conn,
            Mode::H2(a) => &a.conn,
        }
    }

    /// The mode's name as it appears in the summary.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Rate(_) => "rate",
            Mode::Saturate(_) => "saturate",
            Mode::Idle(_) => "idle",
            Mode::Handshake(_) => "handshake",
            Mode::Sticky(_) => "sticky",
            Mode::H2(_) => "h2",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_an_h2_run() {
        let cli = Cli::try_parse_from([
            "wsgate-bench",
            "h2",
            "--url",
            "wss://127.0.0.1:8443/echo?user={user}",
            "-n",
            "400",
            "-c",
            "1000",
            "--pid",
            "7",
        ])
        .unwrap();
        assert_eq!(cli.mode.name(), "h2");
        let Mode::H2(args) = &cli.mode else {
            panic!("not h2")
        };
        assert_eq!((args.handshakes, args.connections), (400, 1000));
        assert_eq!(args.streams_per_connection, 100);
    }

    #[test]
    fn parses_a_rate_run() {
        let cli = Cli::try_parse_from([
            "wsgate-bench",
            "rate",
            "--url",
            "wss://127.0.0.1:8443/ws?user={user}",
            "--insecure",
            "-c",
            "200",
            "-r",
            "20000",
            "--source-ips",
            "127.0.0.2-127.0.0.5",
            "--pid",
            "42",
        ])
        .unwrap();
        assert_eq!(cli.pids, vec![42]);
        let Mode::Rate(args) = &cli.mode else {
            panic!("not rate")
        };
        assert_eq!(args.rate, 20000.0);
        assert!(args.conn.danger_accept_any_cert);
        assert_eq!(args.conn.source_ips.as_ref().map(|s| s.0.len()), Some(4));
        assert!(Cli::try_parse_from([
            "wsgate-bench",
            "rate",
            "--url",
            "x",
            "--ca",
            "f",
            "--insecure"
        ])
        .is_err());
    }
}
