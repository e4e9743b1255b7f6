//! `saturate`: closed-loop echo load to find the highest throughput.
//!
//! Each connection keeps `--window` messages in flight and sends the next
//! one as soon as an echo returns. Latency here is service time under
//! saturation (closed loops hide queueing delay); use `rate` for latency
//! at a given load. With `--pid`, CPU is measured over the window after the
//! warm-up, per echoed message.

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{check_positive, check_size, connect_many, elapsed_ns, join_all, lock, secs, Outcome};
use crate::chart::{percentile_curve, Panel, Series};
use crate::cli::SaturateArgs;
use crate::client::{close, Ws};
use crate::echo::{
    decode, encode, per_second_points, round_trip_per_second_panel, EchoStats, SecondSummary, Stamp,
};
use crate::summary::{ratio, round, Errors, Percentiles};
use crate::{BenchError, Ctx, Stop};

#[derive(Debug, Serialize)]
struct Detail {
    connections: usize,
    window: usize,
    size: usize,
    duration_s: f64,
    warmup_s: f64,
    sent: u64,
    received: u64,
    /// Echoes per second of messages sent after the warm-up.
    throughput: f64,
    rtt_us: Percentiles,
    unexpected_messages: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_us_per_msg: Option<f64>,
    per_second: Vec<SecondSummary>,
}

/// What every connection loop needs.
#[derive(Clone)]
struct Loop {
    window: usize,
    size: usize,
    origin: Instant,
    end_ns: u64,
    limit: Duration,
    stats: Arc<Mutex<EchoStats>>,
    stop: Stop,
}

pub async fn run(ctx: &Ctx, args: &SaturateArgs) -> Result<Outcome, BenchError> {
    check_size(args.load.size)?;
    check_positive("--connections", args.connections)?;
    check_positive("--window", args.window)?;
    if args.load.warmup >= args.load.duration {
        return Err(BenchError::BadArgs(
            "--warmup must be shorter than --duration".into(),
        ));
    }
    let (conns, mut errors) =
        connect_many(ctx, args.connections, args.load.connect_concurrency).await?;
    let open = conns.len();
    let stats = Arc::new(Mutex::new(EchoStats::new(args.load.warmup)));
    let origin = Instant::now();
    let shared = Loop {
        window: args.window,
        size: args.load.size,
        origin,
        end_ns: u64::try_from(args.load.duration.as_nanos()).unwrap_or(u64::MAX),
        limit: ctx.target.timeout,
        stats: stats.clone(),
        stop: ctx.stop.clone(),
    };
    let mut tasks = JoinSet::new();
    for conn in conns {
        tasks.spawn(echo_loop(conn.ws, shared.clone()));
    }
    let sample_at = |at: Duration| {
        let watch = ctx.watch.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((origin + at).into()).await;
            watch.sample()
        })
    };
    let (warm, end) = (sample_at(args.load.warmup), sample_at(args.load.duration));

    ctx.progress
        .phase("saturate", args.load.duration.as_secs().max(1));
    while origin.elapsed() < args.load.duration && !ctx.stop.is_set() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ctx.progress.set(origin.elapsed().as_secs());
        ctx.progress.message(|| {
            let s = lock(&stats);
            format!(
                "echoed {} p99 {} µs",
                s.received,
                s.rtt.value_at_quantile(0.99)
            )
        });
    }
    let measured = origin
        .elapsed()
        .min(args.load.duration)
        .saturating_sub(args.load.warmup);
    join_all(&mut tasks, ctx.target.timeout * 2, &mut errors).await;
    let sampler = |e: tokio::task::JoinError| BenchError::BadArgs(format!("sampler: {e}"));
    let start_sample = warm.await.map_err(sampler)??;
    // Stopped early: measure up to now rather than wait for the planned end.
    let end_sample = if end.is_finished() || !ctx.stop.is_set() {
        end.await.map_err(sampler)??
    } else {
        end.abort();
        ctx.watch.sample()?
    };

    let stats = lock(&stats);
    let cpu_us_per_msg = stats.cpu_us_per_msg(start_sample, end_sample);
    let detail = Detail {
        connections: open,
        window: args.window,
        size: args.load.size,
        duration_s: secs(args.load.duration),
        warmup_s: secs(args.load.warmup),
        sent: stats.sent,
        received: stats.received,
        throughput: round(
            ratio(stats.measured_received as f64, measured.as_secs_f64()),
            1,
        ),
        rtt_us: stats.rtt_percentiles(),
        unexpected_messages: stats.unexpected,
        cpu_us_per_msg,
        per_second: stats.per_second(),
    };
    let panels = panels(&stats, &detail.per_second);
    let ok = errors.total == 0 && open == args.connections && stats.sent == stats.received;
    let report = super::report(
        ctx,
        "saturate",
        ok,
        detail,
        errors,
        ctx.watch.report(start_sample, end_sample),
    );
    Ok(Outcome {
        report,
        title: format!(
            "wsgate-bench saturate: {open} connections x window {}, {} B",
            args.window, args.load.size
        ),
        panels,
    })
}

fn panels(stats: &EchoStats, seconds: &[SecondSummary]) -> Vec<Panel> {
    vec![
        Panel::new(
            "Echoes per second (by send time)",
            "second",
            "messages",
            vec![Series::line(
                "echoed",
                per_second_points(seconds, |s| s.received),
            )],
        ),
        round_trip_per_second_panel("Round trip per second", seconds),
        Panel::new(
            "Round trip by percentile (after warm-up)",
            "percentile, in nines (1 = p90, 2 = p99, 3 = p99.9)",
            "µs",
            vec![Series::line(
                "round trip",
                percentile_curve(&stats.rtt, 4.0),
            )],
        ),
    ]
}

/// One connection: keep `window` messages in flight until the end.
async fn echo_loop(mut ws: Ws, l: Loop) -> Errors {
    let mut errors = Errors::default();
    let mut seq = 0u64;
    let mut in_flight = 0usize;
    for _ in 0..l.window {
        if let Err(e) = send_one(&mut ws, &l, &mut seq).await {
            errors.add("send", || e.to_string());
            return errors;
        }
        in_flight += 1;
    }
    while in_flight > 0 {
        let msg = match tokio::time::timeout(l.limit, ws.next()).await {
            Err(_) => {
                errors.add("timeout_echo", || format!("no echo within {:?}", l.limit));
                break;
            }
            Ok(None) => {
                errors.add("closed", || "the connection ended during the run".into());
                return errors;
            }
            Ok(Some(Err(e))) => {
                errors.add("receive", || e.to_string());
                return errors;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        match msg {
            Message::Binary(bytes) => {
                let now = elapsed_ns(l.origin);
                match decode(&bytes) {
                    Some(stamp) => lock(&l.stats).on_echo(stamp, now),
                    None => {
                        lock(&l.stats).unexpected += 1;
                        continue;
                    }
                }
                in_flight -= 1;
                if now < l.end_ns && !l.stop.is_set() {
                    if let Err(e) = send_one(&mut ws, &l, &mut seq).await {
                        errors.add("send", || e.to_string());
                        return errors;
                    }
                    in_flight += 1;
                }
            }
            Message::Text(_) => lock(&l.stats).unexpected += 1,
            Message::Close(frame) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                errors.add("closed_by_server", || {
                    format!("the server closed a connection with code {code} during the run")
                });
                return errors;
            }
            _ => {}
        }
    }
    if let Err(e) = close(&mut ws, l.limit).await {
        errors.add(&e.kind(), || e.to_string());
    }
    errors
}

/// Sends the next stamped message.
async fn send_one(ws: &mut Ws, l: &Loop, seq: &mut u64) -> Result<(), WsError> {
    let now = elapsed_ns(l.origin);
    let stamp = Stamp {
        seq: *seq,
        intended_ns: now,
        sent_ns: now,
    };
    *seq += 1;
    lock(&l.stats).on_sent(now);
    ws.send(Message::binary(encode(stamp, l.size))).await
}
