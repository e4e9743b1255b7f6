//! One module per mode, and the helpers they share.
//!
//! | mode | loop | main figures |
//! |---|---|---|
//! | [`rate`] | open (fixed schedule) | RTT percentiles at a given rate, CPU per message |
//! | [`saturate`] | closed (window per connection) | highest echo throughput |
//! | [`idle`] | none (held connections) | memory per connection, closes per second, still-working check |
//! | [`handshake`] | churn | handshakes per second, per-step latency, CPU per handshake |
//! | [`sticky`] | reconnects | users that stayed on one backend |
//! | [`h2`] | churn, then held | CPU per handshake and memory per idle WebSocket, over HTTP/2 against HTTP/1.1 |

pub mod h2;
pub mod handshake;
pub mod idle;
pub mod rate;
pub mod saturate;
pub mod sticky;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::chart::Panel;
use crate::client::Connected;
use crate::echo::STAMP_LEN;
use crate::summary::{round, Errors, ProcReport, Report, Summary};
use crate::{BenchError, Ctx};

/// What a mode returns: the summary and the chart it would draw.
pub struct Outcome {
    pub report: Report,
    pub title: String,
    pub panels: Vec<Panel>,
}

/// Locks a mutex; a panic elsewhere must not hide the measurements.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Nanoseconds since `origin`.
fn elapsed_ns(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Wraps a mode's detail in the common summary envelope.
fn report<T: serde::Serialize>(
    ctx: &Ctx,
    mode: &'static str,
    ok: bool,
    detail: T,
    errors: Errors,
    proc: Option<ProcReport>,
) -> Report {
    Summary {
        mode,
        ok,
        url: ctx.target.url().to_string(),
        elapsed_s: secs(ctx.started.elapsed()),
        stopped_early: ctx.stop.is_set(),
        generator_cpu_s: crate::procstat::own_cpu_seconds().map(|s| round(s, 2)),
        detail,
        errors,
        proc,
    }
    .into_report()
}

fn secs(d: Duration) -> f64 {
    crate::summary::round(d.as_secs_f64(), 3)
}

fn check_size(size: usize) -> Result<(), BenchError> {
    if size < STAMP_LEN {
        return Err(BenchError::BadArgs(format!(
            "--size must be at least {STAMP_LEN} bytes (each message carries a 24-byte timestamp)"
        )));
    }
    Ok(())
}

fn check_positive(name: &str, value: usize) -> Result<(), BenchError> {
    if value == 0 {
        return Err(BenchError::BadArgs(format!("{name} must be at least 1")));
    }
    Ok(())
}

/// Opens `count` connections (users 0..count), `concurrency` at a time,
/// with a progress bar. Failures are counted, not fatal; none at all is.
async fn connect_many(
    ctx: &Ctx,
    count: usize,
    concurrency: usize,
) -> Result<(Vec<Connected>, Errors), BenchError> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for user in 0..count as u64 {
        let (target, gate) = (ctx.target.clone(), gate.clone());
        set.spawn(async move {
            // The semaphore is never closed, so acquire cannot fail.
            let _permit = gate.acquire_owned().await;
            target.connect(user).await
        });
    }
    ctx.progress.phase("connect", count as u64);
    let (mut open, mut errors) = (Vec::with_capacity(count), Errors::default());
    let mut stop = ctx.stop.clone();
    loop {
        let joined = tokio::select! {
            joined = set.join_next() => joined,
            () = stop.wait() => { set.abort_all(); break; }
        };
        match joined {
            None => break,
            Some(Ok(Ok(conn))) => open.push(conn),
            Some(Ok(Err(e))) => errors.add(&e.kind(), || e.to_string()),
            Some(Err(e)) => errors.add("task", || e.to_string()),
        }
        ctx.progress.set((open.len() as u64) + errors.total);
    }
    if open.is_empty() {
        return Err(BenchError::NoConnection {
            tried: count as u64,
            first: errors.first.unwrap_or_else(|| "stopped".into()),
        });
    }
    if errors.total > 0 {
        ctx.progress.note(&format!(
            "wsgate-bench: {} of {count} connections failed; first: {}",
            errors.total,
            errors.first.as_deref().unwrap_or("?")
        ));
    }
    Ok((open, errors))
}

/// Joins connection tasks, aborting those still running after `limit`.
async fn join_all(tasks: &mut JoinSet<Errors>, limit: Duration, errors: &mut Errors) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(e))) => errors.merge(e),
            Ok(Some(Err(e))) => errors.add("task", || e.to_string()),
            Ok(None) => return,
            Err(_) => {
                let left = tasks.len();
                errors.add("timeout_close", || {
                    format!("{left} connections did not close in time")
                });
                tasks.abort_all();
                return;
            }
        }
    }
}
