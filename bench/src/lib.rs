//! wsgate-bench: a load generator for WebSocket proxies.
//!
//! `main.rs` only parses flags and builds the runtime; [`run`] sets up the
//! target, runs one mode from [`modes`], draws the chart and returns the
//! one-line JSON summary. Module map:
//!
//! - [`cli`]: flags; [`units`]: duration and address-list parsers;
//! - `client`: connecting (source addresses, TLS, Upgrade, hello);
//!   `h2`: WebSockets over HTTP/2 streams (RFC 8441) for the `h2` mode;
//! - `schedule`: the open-loop send schedule; `echo`: stamped messages and
//!   latency histograms; `closes`: per-second close buckets;
//! - `summary`: the JSON summary; `procstat`: CPU and RSS of `--pid`s;
//! - `progress`: the terminal progress bar; `chart`: PNG charts;
//! - [`modes`]: one module per mode.

#![forbid(unsafe_code)]

mod chart;
pub mod cli;
mod client;
mod closes;
mod echo;
pub mod h2;
pub mod modes;
mod procstat;
mod progress;
mod schedule;
mod summary;
pub mod units;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

pub use summary::{Report, Status};

use cli::{Cli, Mode};
use client::{SetupError, Target};
use procstat::{ProcError, Watch};
use progress::Progress;

/// A run that could not produce measurements.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("{0}")]
    BadArgs(String),
    #[error("no connection could be opened ({tried} tried); first error: {first}")]
    NoConnection { tried: u64, first: String },
    #[error(transparent)]
    Proc(#[from] ProcError),
    #[error("writing --ready-file {path}: {source}")]
    ReadyFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Asked to stop early (Ctrl-C or SIGTERM): modes wind down and still
/// report what they measured.
#[derive(Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once stop is requested (never, if the sender is gone).
    pub async fn wait(&mut self) {
        if self.0.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What every mode gets.
pub struct Ctx {
    pub target: Arc<Target>,
    pub watch: Watch,
    pub progress: Progress,
    pub stop: Stop,
    /// When the run started (for `elapsed_s`).
    pub started: Instant,
}

/// Runs the mode chosen on the command line and returns its summary. Never
/// fails: errors become a summary with `"ok":false` and an `error` field.
pub async fn run(cli: Cli) -> Report {
    let started = Instant::now();
    let mode = cli.mode.name();
    let url = cli.mode.conn().url.clone();
    match run_mode(&cli, started).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("wsgate-bench: {e}");
            let failure = summary::Failure {
                mode,
                ok: false,
                url: &url,
                elapsed_s: summary::round(started.elapsed().as_secs_f64(), 3),
                error: e.to_string(),
            };
            Report {
                // A struct of strings and numbers always serializes.
                line: serde_json::to_string(&failure).unwrap_or_default(),
                status: match e {
                    BenchError::BadArgs(_) => Status::BadUsage,
                    _ => Status::Failed,
                },
            }
        }
    }
}

async fn run_mode(cli: &Cli, started: Instant) -> Result<Report, BenchError> {
    let target = Arc::new(Target::new(cli.mode.conn()).await?);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("wsgate-bench: stopping early, summarising what was measured");
        let _ = stop_tx.send(true);
    });
    let ctx = Ctx {
        target,
        watch: Watch::new(cli.pids.clone()),
        progress: Progress::new(!cli.no_progress),
        stop: Stop(stop_rx),
        started,
    };
    let outcome = match &cli.mode {
        Mode::Rate(args) => modes::rate::run(&ctx, args).await,
        Mode::Saturate(args) => modes::saturate::run(&ctx, args).await,
        Mode::Idle(args) => modes::idle::run(&ctx, args).await,
        Mode::Handshake(args) => modes::handshake::run(&ctx, args).await,
        Mode::Sticky(args) => modes::sticky::run(&ctx, args).await,
        Mode::H2(args) => modes::h2::run(&ctx, args).await,
    };
    ctx.progress.finish();
    let outcome = outcome?;
    let mut report = outcome.report;
    if let Some(path) = &cli.chart {
        match chart::draw(path, &outcome.title, &outcome.panels) {
            Ok(()) => eprintln!("wsgate-bench: chart written to {}", path.display()),
            Err(e) => {
                eprintln!("wsgate-bench: {e}");
                report.status = Status::Failed;
            }
        }
    }
    Ok(report)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
