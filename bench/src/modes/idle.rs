//! `idle`: open many connections, hold them, and watch how they end.
//!
//! One small task per connection: connect (at most `--connect-concurrency`
//! at once, optionally paced by `--connect-rate`), then wait for whichever
//! comes first: the server ending the connection, or the end of the hold.
//! Server closes are recorded with their time and Close code and bucketed
//! per second from the first one (see `closes`), so a drain's close rate
//! can be checked second by second; `--reconnect` opens the user's
//! connection again. At the end, `--verify` requires an echo on every
//! connection still open, then all are closed with 1000.
//!
//! Source addresses (`--source-ips`) spread the connections over many
//! 127.0.0.x addresses so that ephemeral ports are not the limit. With
//! `--pid`, RSS is sampled before connecting and once all are open, giving
//! the target's memory per idle connection.

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use super::{check_positive, lock, secs, Outcome};
use crate::chart::{Panel, Series};
use crate::cli::IdleArgs;
use crate::client::{close, echo_once, Target, Ws};
use crate::closes::{per_second, totals, CloseEvent, CloseSecond};
use crate::schedule::Schedule;
use crate::summary::{histogram, ratio, round, Errors, Percentiles};
use crate::{BenchError, Ctx};

/// Where the run is; connection tasks watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Ramping up and holding.
    Hold,
    /// Hold over: echo once, then close.
    Verify,
    /// Hold over: close.
    Close,
}

/// State shared by the connection tasks.
struct Shared {
    origin: Instant,
    open: AtomicU64,
    /// First attempts that finished, either way.
    settled: AtomicU64,
    connected: AtomicU64,
    reconnects: AtomicU64,
    unexpected: AtomicU64,
    verify_ok: AtomicU64,
    verify_failed: AtomicU64,
    closes: Mutex<Vec<CloseEvent>>,
    errors: Mutex<Errors>,
    /// Time to open a connection (TCP to hello), µs.
    connect_us: Mutex<Histogram<u64>>,
}

#[derive(Debug, Serialize)]
struct Verify {
    ok: u64,
    failed: u64,
}

#[derive(Debug, Serialize)]
struct Detail {
    connections: usize,
    connected: u64,
    connect_failed: u64,
    /// Seconds from the start until every first attempt had finished.
    ramp_s: f64,
    connect_us: Percentiles,
    hold_s: f64,
    open_at_hold_end: u64,
    /// Connections the server ended (Close frame or not) during the run.
    closes: u64,
    close_codes: BTreeMap<String, u64>,
    /// Seconds from the start to the first close (null if none).
    first_close_at_s: Option<f64>,
    /// Second 0 starts at the first close.
    closes_per_second: Vec<CloseSecond>,
    reconnects: u64,
    unexpected_messages: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    verify: Option<Verify>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_kib_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_kib_held: Option<u64>,
    /// (RSS held - RSS before) / connections open then.
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_bytes_per_conn: Option<f64>,
}

/// Per-connection settings.
#[derive(Clone, Copy)]
struct Opts {
    reconnect: bool,
    jitter: Duration,
    limit: Duration,
}

pub async fn run(ctx: &Ctx, args: &IdleArgs) -> Result<Outcome, BenchError> {
    check_positive("--connections", args.connections)?;
    let pace = match args.connect_rate {
        None => None,
        Some(rate) => Some(Schedule::new(rate).ok_or_else(|| {
            BenchError::BadArgs("--connect-rate must be between 0.001 and 1e9".into())
        })?),
    };
    let before = ctx.watch.sample()?;
    let origin = Instant::now();
    let shared = Arc::new(Shared {
        origin,
        open: AtomicU64::new(0),
        settled: AtomicU64::new(0),
        connected: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        verify_ok: AtomicU64::new(0),
        verify_failed: AtomicU64::new(0),
        closes: Mutex::new(Vec::new()),
        errors: Mutex::new(Errors::default()),
        connect_us: Mutex::new(histogram(3)),
    });
    let (stage_tx, stage) = watch::channel(Stage::Hold);
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let opts = Opts {
        reconnect: args.reconnect,
        jitter: args.reconnect_jitter,
        limit: ctx.target.timeout,
    };
    let mut tasks = JoinSet::new();
    for user in 0..args.connections as u64 {
        let start_at = pace.map(|s| origin + Duration::from_nanos(s.at_ns(user)));
        tasks.spawn(hold_one(
            user,
            start_at,
            ctx.target.clone(),
            shared.clone(),
            gate.clone(),
            stage.clone(),
            opts,
        ));
    }

    // Ramp up, sampling the open count each second for the chart.
    let mut open_series = Vec::new();
    let mut next_sample = Duration::ZERO;
    let mut sample_open = |series: &mut Vec<(f64, f64)>| {
        let t = origin.elapsed();
        if t >= next_sample {
            series.push((t.as_secs_f64(), shared.open.load(Ordering::Relaxed) as f64));
            next_sample = Duration::from_secs(t.as_secs() + 1);
        }
    };
    let total = args.connections as u64;
    ctx.progress.phase("connect", total);
    while shared.settled.load(Ordering::Relaxed) < total && !ctx.stop.is_set() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sample_open(&mut open_series);
        ctx.progress.set(shared.settled.load(Ordering::Relaxed));
        ctx.progress
            .message(|| format!("open {}", shared.open.load(Ordering::Relaxed)));
    }
    let ramp = origin.elapsed();
    let held = shared.open.load(Ordering::Relaxed);
    let connect_failed = total - shared.connected.load(Ordering::Relaxed);
    ctx.progress.note(&format!(
        "wsgate-bench: holding {held} connections ({connect_failed} failed) after {:.1} s",
        ramp.as_secs_f64()
    ));
    let held_sample = ctx.watch.sample()?;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, format!("{held}\n")).map_err(|source| BenchError::ReadyFile {
            path: path.clone(),
            source,
        })?;
    }

    // Hold.
    let hold_start = Instant::now();
    ctx.progress.phase("hold", args.hold.as_secs().max(1));
    while hold_start.elapsed() < args.hold && !ctx.stop.is_set() {
        let all_closed = args.until_closed
            && !args.reconnect
            && shared.open.load(Ordering::Relaxed) == 0
            && shared.connected.load(Ordering::Relaxed) > 0;
        if all_closed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        sample_open(&mut open_series);
        ctx.progress.set(hold_start.elapsed().as_secs());
        ctx.progress.message(|| {
            format!(
                "open {} closed by server {}",
                shared.open.load(Ordering::Relaxed),
                lock(&shared.closes).len()
            )
        });
    }
    let hold = hold_start.elapsed();
    let open_at_end = shared.open.load(Ordering::Relaxed);
    let end_sample = ctx.watch.sample()?;

    // Verify and close.
    let _ = stage_tx.send(if args.verify {
        Stage::Verify
    } else {
        Stage::Close
    });
    ctx.progress
        .phase(if args.verify { "verify" } else { "close" }, open_at_end);
    let mut left = JoinSet::new();
    std::mem::swap(&mut left, &mut tasks);
    let deadline = tokio::time::Instant::now() + ctx.target.timeout * 3;
    let mut finished = 0;
    loop {
        match tokio::time::timeout_at(deadline, left.join_next()).await {
            Ok(Some(Ok(()))) => finished += 1,
            Ok(Some(Err(e))) => lock(&shared.errors).add("task", || e.to_string()),
            Ok(None) => break,
            Err(_) => {
                let n = left.len();
                lock(&shared.errors).add("timeout_close", || {
                    format!("{n} connections did not close in time")
                });
                left.abort_all();
                break;
            }
        }
        ctx.progress.set(finished);
    }

    let events = lock(&shared.closes).clone();
    let connected = shared.connected.load(Ordering::Relaxed);
    let rss_bytes_per_conn = match (before, held_sample) {
        (Some(b), Some(h)) if held > 0 => Some(round(
            ratio(
                h.rss_kib.saturating_sub(b.rss_kib) as f64 * 1024.0,
                held as f64,
            ),
            0,
        )),
        _ => None,
    };
    let verify = args.verify.then(|| Verify {
        ok: shared.verify_ok.load(Ordering::Relaxed),
        failed: shared.verify_failed.load(Ordering::Relaxed),
    });
    let detail = Detail {
        connections: args.connections,
        connected,
        connect_failed,
        ramp_s: secs(ramp),
        connect_us: Percentiles::of(&lock(&shared.connect_us)),
        hold_s: secs(hold),
        open_at_hold_end: open_at_end,
        closes: events.len() as u64,
        close_codes: totals(&events),
        first_close_at_s: events.iter().map(|e| e.at).min().map(secs),
        closes_per_second: per_second(&events),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        unexpected_messages: shared.unexpected.load(Ordering::Relaxed),
        verify,
        rss_kib_before: before.map(|s| s.rss_kib),
        rss_kib_held: held_sample.map(|s| s.rss_kib),
        rss_bytes_per_conn,
    };
    let verify_failed = detail.verify.as_ref().is_some_and(|v| v.failed > 0);
    let errors = lock(&shared.errors).clone();
    let ok = connect_failed == 0 && !verify_failed && !errors.kinds.contains_key("timeout_close");
    let panels = panels(open_series, &detail.closes_per_second);
    let report = super::report(
        ctx,
        "idle",
        ok,
        detail,
        errors,
        ctx.watch.report(before, end_sample),
    );
    Ok(Outcome {
        report,
        title: format!("wsgate-bench idle: {} connections", args.connections),
        panels,
    })
}

fn panels(open: Vec<(f64, f64)>, seconds: &[CloseSecond]) -> Vec<Panel> {
    let mut codes: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for s in seconds {
        for (code, n) in &s.codes {
            codes
                .entry(code.as_str())
                .or_default()
                .push((s.t as f64, *n as f64));
        }
    }
    let mut close_series: Vec<Series> = codes
        .into_iter()
        .map(|(code, points)| Series::bars(&format!("code {code}"), points))
        .collect();
    let title = if close_series.is_empty() {
        close_series.push(Series::bars("no closes", Vec::new()));
        "Closes from the server per second: none"
    } else {
        "Closes from the server per second"
    };
    vec![
        Panel::new(
            "Open connections",
            "second since start",
            "connections",
            vec![Series::line("open", open)],
        ),
        Panel::new(
            title,
            "second since the first close",
            "closes",
            close_series,
        ),
    ]
}

/// How a held connection ended.
enum End {
    /// The server closed it (Close code, or `None` without a Close frame).
    Server(Option<u16>),
    /// The hold is over.
    Stage(Stage),
}

/// One user's connection for the whole run.
async fn hold_one(
    user: u64,
    start_at: Option<Instant>,
    target: Arc<Target>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    mut stage: watch::Receiver<Stage>,
    opts: Opts,
) {
    if let Some(at) = start_at {
        tokio::time::sleep_until(at.into()).await;
    }
    let mut first = true;
    loop {
        if *stage.borrow() != Stage::Hold {
            return;
        }
        let attempt = {
            // The semaphore is never closed, so acquire cannot fail.
            let _permit = gate.acquire().await;
            let t = Instant::now();
            target.connect(user).await.map(|c| (c, t.elapsed()))
        };
        let mut ws = match attempt {
            Ok((conn, took)) => {
                lock(&shared.connect_us).saturating_record(took.as_micros().max(1) as u64);
                if first {
                    shared.connected.fetch_add(1, Ordering::Relaxed);
                }
                conn.ws
            }
            Err(e) => {
                let kind = if first {
                    e.kind()
                } else {
                    format!("reconnect_{}", e.kind())
                };
                lock(&shared.errors).add(&kind, || e.to_string());
                if first {
                    shared.settled.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        };
        shared.open.fetch_add(1, Ordering::Relaxed);
        if first {
            shared.settled.fetch_add(1, Ordering::Relaxed);
            first = false;
        }
        let end = tokio::select! {
            code = server_end(&mut ws, &shared) => End::Server(code),
            next = stage.wait_for(|s| *s != Stage::Hold) => {
                End::Stage(next.map_or(Stage::Close, |s| *s))
            }
        };
        match end {
            End::Server(code) => {
                shared.open.fetch_sub(1, Ordering::Relaxed);
                let at = shared.origin.elapsed();
                lock(&shared.closes).push(CloseEvent { at, code });
                // Let our reply to the server's Close go out.
                let _ = tokio::time::timeout(opts.limit, drain(&mut ws)).await;
                if !opts.reconnect {
                    return;
                }
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                if !opts.jitter.is_zero() {
                    let wait = rand::thread_rng().gen_range(Duration::ZERO..=opts.jitter);
                    tokio::time::sleep(wait).await;
                }
            }
            End::Stage(next) => {
                if next == Stage::Verify {
                    match echo_once(&mut ws, Message::text("verify"), opts.limit).await {
                        Ok(()) => shared.verify_ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            lock(&shared.errors)
                                .add(&format!("verify_{}", e.kind()), || e.to_string());
                            shared.verify_failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                if let Err(e) = close(&mut ws, opts.limit).await {
                    lock(&shared.errors).add(&e.kind(), || e.to_string());
                }
                shared.open.fetch_sub(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Waits until the server ends the connection; returns the Close code
/// (1005 for a Close without one), or `None` if it ended without a Close.
/// Cancel-safe: it only reads.
async fn server_end(ws: &mut Ws, shared: &Shared) -> Option<u16> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => {
                return Some(frame.map_or(1005, |f| u16::from(f.code)))
            }
            Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                shared.unexpected.fetch_add(1, Ordering::Relaxed);
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// Reads until the stream ends, which also flushes our Close reply.
async fn drain(ws: &mut Ws) {
    while let Some(Ok(_)) = ws.next().await {}
}
