//! `handshake`: connection churn. Each attempt is a full new client: TCP
//! connect, TLS handshake (no resumption unless `--tls-resume`), HTTP
//! Upgrade, the hello, one echo, and a clean close (1000, waiting for the
//! server's Close and the end of the stream).
//!
//! `--concurrency` workers run attempts back to back, or, with `--rate`,
//! start them on a fixed schedule (open loop, as far as the workers can
//! keep up). Each attempt uses a new user name, so attempts spread over
//! the backends. With `--pid`, the summary gives the target's CPU per
//! completed attempt.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use hdrhistogram::Histogram;

use super::{check_positive, check_size, lock, Outcome};
use crate::chart::{percentile_curve, Panel, Series};
use crate::cli::HandshakeArgs;
use crate::client::{close, echo_once, ConnectError, Target, Timings};
use crate::echo::{encode, Stamp};
use crate::procstat::cpu_seconds;
use crate::schedule::Schedule;
use crate::summary::{histogram, ratio, round, Errors, Percentiles};
use crate::{BenchError, Ctx};

/// Histograms of one run, in µs.
struct Stats {
    total: Histogram<u64>,
    tcp: Histogram<u64>,
    tls: Histogram<u64>,
    upgrade: Histogram<u64>,
    hello: Histogram<u64>,
    echo: Histogram<u64>,
    close: Histogram<u64>,
    /// Completed attempts per second since the start.
    per_second: Vec<u64>,
    errors: Errors,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// How long each step of one completed attempt took.
struct Attempt {
    connect: Timings,
    echo: Duration,
    close: Duration,
    total: Duration,
}

impl Stats {
    fn record(&mut self, a: &Attempt, at: Duration) {
        self.total.saturating_record(us(a.total));
        self.tcp.saturating_record(us(a.connect.tcp));
        if let Some(t) = a.connect.tls {
            self.tls.saturating_record(us(t));
        }
        self.upgrade.saturating_record(us(a.connect.upgrade));
        if let Some(t) = a.connect.hello {
            self.hello.saturating_record(us(t));
        }
        self.echo.saturating_record(us(a.echo));
        self.close.saturating_record(us(a.close));
        let second = usize::try_from(at.as_secs()).unwrap_or(usize::MAX);
        if self.per_second.len() <= second {
            self.per_second.resize(second + 1, 0);
        }
        self.per_second[second] += 1;
    }
}

#[derive(Debug, Serialize)]
struct Steps {
    tcp: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<Percentiles>,
    upgrade: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    hello: Option<Percentiles>,
    echo: Percentiles,
    close: Percentiles,
}

#[derive(Debug, Serialize)]
struct Detail {
    concurrency: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_target: Option<f64>,
    attempts: u64,
    completed: u64,
    failed: u64,
    /// Completed attempts per second of the run.
    handshakes_per_s: f64,
    total_us: Percentiles,
    steps_us: Steps,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_us_per_handshake: Option<f64>,
    per_second: Vec<u64>,
}

/// What the workers share.
struct Work {
    target: Arc<Target>,
    next: AtomicU64,
    count: Option<u64>,
    deadline: Instant,
    pace: Option<Schedule>,
    origin: Instant,
    size: usize,
    stats: Mutex<Stats>,
}

pub async fn run(ctx: &Ctx, args: &HandshakeArgs) -> Result<Outcome, BenchError> {
    check_size(args.size)?;
    check_positive("--concurrency", args.concurrency)?;
    let pace = match args.rate {
        None => None,
        Some(rate) => Some(Schedule::new(rate).ok_or_else(|| {
            BenchError::BadArgs("--rate must be between 0.001 and 1e9 per second".into())
        })?),
    };
    let start_sample = ctx.watch.sample()?;
    let origin = Instant::now();
    let work = Arc::new(Work {
        target: ctx.target.clone(),
        next: AtomicU64::new(0),
        count: args.count,
        // With --count, the duration does not limit the run.
        deadline: match args.count {
            Some(_) => origin + Duration::from_secs(365 * 24 * 3600),
            None => origin + args.duration,
        },
        pace,
        origin,
        size: args.size,
        stats: Mutex::new(Stats {
            total: histogram(3),
            tcp: histogram(3),
            tls: histogram(3),
            upgrade: histogram(3),
            hello: histogram(3),
            echo: histogram(3),
            close: histogram(3),
            per_second: Vec::new(),
            errors: Errors::default(),
        }),
    });
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let (work, stop) = (work.clone(), ctx.stop.clone());
        workers.spawn(async move {
            while !stop.is_set() {
                if !attempt_next(&work).await {
                    break;
                }
            }
        });
    }
    match args.count {
        Some(n) => ctx.progress.phase("handshake", n),
        None => ctx
            .progress
            .phase("handshake", args.duration.as_secs().max(1)),
    }
    while !workers.is_empty() {
        if let Ok(Some(Err(e))) =
            tokio::time::timeout(Duration::from_millis(100), workers.join_next()).await
        {
            lock(&work.stats).errors.add("task", || e.to_string());
        }
        let done = lock(&work.stats).total.len();
        ctx.progress.set(match args.count {
            Some(_) => done,
            None => origin.elapsed().as_secs(),
        });
        ctx.progress.message(|| format!("completed {done}"));
    }
    let elapsed = origin.elapsed();
    let end_sample = ctx.watch.sample()?;

    let stats = lock(&work.stats);
    let completed = stats.total.len();
    let attempts = completed + stats.errors.total;
    let cpu_us_per_handshake = match (start_sample, end_sample) {
        (Some(a), Some(b)) => Some(round(ratio(cpu_seconds(a, b) * 1e6, completed as f64), 1)),
        _ => None,
    };
    let optional = |h: &Histogram<u64>| (!h.is_empty()).then(|| Percentiles::of(h));
    let detail = Detail {
        concurrency: args.concurrency,
        rate_target: args.rate,
        attempts,
        completed,
        failed: stats.errors.total,
        handshakes_per_s: round(ratio(completed as f64, elapsed.as_secs_f64()), 1),
        total_us: Percentiles::of(&stats.total),
        steps_us: Steps {
            tcp: Percentiles::of(&stats.tcp),
            tls: optional(&stats.tls),
            upgrade: Percentiles::of(&stats.upgrade),
            hello: optional(&stats.hello),
            echo: Percentiles::of(&stats.echo),
            close: Percentiles::of(&stats.close),
        },
        cpu_us_per_handshake,
        per_second: stats.per_second.clone(),
    };
    let panels = vec![
        Panel::new(
            "Completed connections per second",
            "second",
            "connections",
            vec![Series::bars(
                "completed",
                stats
                    .per_second
                    .iter()
                    .enumerate()
                    .map(|(t, n)| (t as f64, *n as f64))
                    .collect(),
            )],
        ),
        Panel::new(
            "Connect + upgrade + echo + close, by percentile",
            "percentile, in nines (1 = p90, 2 = p99, 3 = p99.9)",
            "µs",
            vec![
                Series::line("total", percentile_curve(&stats.total, 3.0)),
                Series::line("TLS", percentile_curve(&stats.tls, 3.0)),
                Series::line("upgrade", percentile_curve(&stats.upgrade, 3.0)),
            ],
        ),
    ];
    let report = super::report(
        ctx,
        "handshake",
        stats.errors.total == 0 && completed > 0,
        detail,
        stats.errors.clone(),
        ctx.watch.report(start_sample, end_sample),
    );
    Ok(Outcome {
        report,
        title: format!(
            "wsgate-bench handshake: concurrency {}{}",
            args.concurrency,
            args.rate.map(|r| format!(", {r}/s")).unwrap_or_default()
        ),
        panels,
    })
}

/// Runs the next attempt; `false` when the run is over.
async fn attempt_next(work: &Work) -> bool {
    let i = work.next.fetch_add(1, Ordering::Relaxed);
    if work.count.is_some_and(|n| i >= n) {
        return false;
    }
    if let Some(pace) = work.pace {
        let at = work.origin + Duration::from_nanos(pace.at_ns(i));
        if at >= work.deadline {
            return false;
        }
        tokio::time::sleep_until(at.into()).await;
    }
    if Instant::now() >= work.deadline {
        return false;
    }
    let result = attempt(&work.target, i, work.size).await;
    let at = work.origin.elapsed();
    let mut stats = lock(&work.stats);
    match result {
        Ok(a) => stats.record(&a, at),
        Err(e) => stats.errors.add(&e.kind(), || e.to_string()),
    }
    true
}

async fn attempt(target: &Target, user: u64, size: usize) -> Result<Attempt, ConnectError> {
    let start = Instant::now();
    let mut conn = target.connect(user).await?;
    let t = Instant::now();
    let stamp = Stamp {
        seq: user,
        intended_ns: 0,
        sent_ns: 0,
    };
    echo_once(
        &mut conn.ws,
        Message::binary(encode(stamp, size)),
        target.timeout,
    )
    .await?;
    let echo = t.elapsed();
    let t = Instant::now();
    close(&mut conn.ws, target.timeout).await?;
    Ok(Attempt {
        connect: conn.timings,
        echo,
        close: t.elapsed(),
        total: start.elapsed(),
    })
}
