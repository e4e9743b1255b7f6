//! `rate`: open-loop echo load at a fixed total rate.
//!
//! A pacer task walks the [`Schedule`] and hands slot `i` to connection
//! `i mod N`, whatever the replies do, so a slow proxy cannot slow the
//! load down (no coordinated omission). Each connection has a writer task
//! (stamps and sends) and a reader task (records echoes).
//!
//! The pacer runs on tokio's timer, which ticks every millisecond: each
//! tick releases every slot that has come due, so messages leave at most
//! about 1 ms late (as in wrk2). A pacer on its own OS thread could be more
//! precise, but it costs two context switches per message, which on a
//! shared core made the generator the bottleneck.
//!
//! Round trips are measured from the actual send; the summary also gives
//! them from the scheduled send, and the generator's own send lag, so a
//! generator that could not keep up shows. With `--pid`, CPU is measured
//! from the end of the warm-up until the last echo, per echoed message.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::{check_positive, check_size, connect_many, elapsed_ns, join_all, lock, secs, Outcome};
use crate::chart::{percentile_curve, Panel, Series};
use crate::cli::RateArgs;
use crate::client::Ws;
use crate::echo::{
    decode, encode, per_second_points, round_trip_per_second_panel, EchoStats, SecondSummary, Stamp,
};
use crate::schedule::{connection_for, Schedule};
use crate::summary::{ratio, round, Errors, Percentiles};
use crate::{BenchError, Ctx, Stop};

/// Send lag (p99) above which the generator, not only the target, shaped
/// the results. The 1 ms timer alone accounts for up to about 2 ms.
const LAG_WARNING_US: u64 = 3000;

#[derive(Debug, Serialize)]
struct Detail {
    connections: usize,
    rate_target: f64,
    size: usize,
    duration_s: f64,
    warmup_s: f64,
    /// Slots in the schedule; fewer are sent if connections died or the
    /// run was stopped.
    scheduled: u64,
    sent: u64,
    received: u64,
    lost: u64,
    /// Echoes of messages scheduled after the warm-up, per second of the
    /// measured window.
    achieved_rate: f64,
    rtt_us: Percentiles,
    rtt_from_schedule_us: Percentiles,
    send_lag_us: Percentiles,
    unexpected_messages: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_us_per_msg: Option<f64>,
    per_second: Vec<SecondSummary>,
}

pub async fn run(ctx: &Ctx, args: &RateArgs) -> Result<Outcome, BenchError> {
    check_size(args.load.size)?;
    check_positive("--connections", args.connections)?;
    let schedule = Schedule::new(args.rate).ok_or_else(|| {
        BenchError::BadArgs("--rate must be between 0.001 and 1e9 per second".into())
    })?;
    if args.load.warmup >= args.load.duration {
        return Err(BenchError::BadArgs(
            "--warmup must be shorter than --duration".into(),
        ));
    }
    let (conns, mut errors) =
        connect_many(ctx, args.connections, args.load.connect_concurrency).await?;
    let open = conns.len();
    let stats = Arc::new(Mutex::new(EchoStats::new(args.load.warmup)));
    let (closing_tx, closing) = watch::channel(false);
    let origin = Instant::now();
    let mut tasks = JoinSet::new();
    let mut senders = Vec::with_capacity(open);
    for conn in conns {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let (sink, stream) = conn.ws.split();
        tasks.spawn(writer(
            sink,
            rx,
            closing.clone(),
            schedule,
            origin,
            args.load.size,
            stats.clone(),
        ));
        tasks.spawn(reader(stream, closing.clone(), origin, stats.clone()));
    }

    let duration_ns = u64::try_from(args.load.duration.as_nanos()).unwrap_or(u64::MAX);
    let scheduled = schedule.slots_within(duration_ns);
    let pacer = tokio::spawn(pace(schedule, scheduled, origin, senders, ctx.stop.clone()));
    let warmup = args.load.warmup;
    let warm_sample = {
        let watch = ctx.watch.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until((origin + warmup).into()).await;
            watch.sample()
        })
    };

    // Send phase: the pacer runs; show progress; pass on a stop request.
    ctx.progress
        .phase("send", args.load.duration.as_secs().max(1));
    while !pacer.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ctx.progress.set(origin.elapsed().as_secs());
        ctx.progress.message(|| {
            let s = lock(&stats);
            format!(
                "sent {} recv {} p99 {} µs",
                s.sent,
                s.received,
                s.rtt.value_at_quantile(0.99)
            )
        });
    }
    if let Err(e) = pacer.await {
        errors.add("pacer", || format!("the pacer task failed: {e}"));
    }
    let sending_ended = origin.elapsed();

    // Wait for the echoes still in flight, then measure, then close.
    let deadline = Instant::now() + ctx.target.timeout;
    while Instant::now() < deadline && !ctx.stop.is_set() {
        let done = {
            let s = lock(&stats);
            s.received >= s.sent
        };
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let end_sample = ctx.watch.sample()?;
    let start_sample = warm_sample
        .await
        .map_err(|e| BenchError::BadArgs(format!("warm-up sampler: {e}")))??;
    let _ = closing_tx.send(true);
    join_all(&mut tasks, ctx.target.timeout, &mut errors).await;

    let stats = lock(&stats);
    // The schedule ends at --duration (earlier if stopped); the pacer's
    // end is noticed up to 100 ms late, which must not dilute the rate.
    let measured_s = sending_ended
        .min(args.load.duration)
        .saturating_sub(args.load.warmup)
        .as_secs_f64();
    let lag_p99 = stats.send_lag.value_at_quantile(0.99);
    if lag_p99 > LAG_WARNING_US {
        ctx.progress.note(&format!(
            "wsgate-bench: the generator fell behind its schedule (send lag p99 {lag_p99} µs): \
             give it more CPU (--threads) or lower --rate; rtt_from_schedule_us includes this lag"
        ));
    }
    let cpu_us_per_msg = stats.cpu_us_per_msg(start_sample, end_sample);
    let lost = stats.sent.saturating_sub(stats.received);
    let detail = Detail {
        connections: open,
        rate_target: args.rate,
        size: args.load.size,
        duration_s: secs(args.load.duration),
        warmup_s: secs(args.load.warmup),
        scheduled,
        sent: stats.sent,
        received: stats.received,
        lost,
        achieved_rate: round(ratio(stats.measured_received as f64, measured_s), 1),
        rtt_us: stats.rtt_percentiles(),
        rtt_from_schedule_us: Percentiles::of(&stats.from_schedule),
        send_lag_us: Percentiles::of(&stats.send_lag),
        unexpected_messages: stats.unexpected,
        cpu_us_per_msg,
        per_second: stats.per_second(),
    };
    let panels = panels(&stats, &detail.per_second);
    let ok = errors.total == 0 && lost == 0 && open == args.connections && stats.sent == scheduled;
    let report = super::report(
        ctx,
        "rate",
        ok,
        detail,
        errors,
        ctx.watch.report(start_sample, end_sample),
    );
    Ok(Outcome {
        report,
        title: format!(
            "wsgate-bench rate: {} msg/s over {open} connections, {} B",
            args.rate, args.load.size
        ),
        panels,
    })
}

fn panels(stats: &EchoStats, seconds: &[SecondSummary]) -> Vec<Panel> {
    let per_second = |f| per_second_points(seconds, f);
    vec![
        Panel::new(
            "Round trip by percentile (after warm-up)",
            "percentile, in nines (1 = p90, 2 = p99, 3 = p99.9)",
            "µs",
            vec![
                Series::line("from actual send", percentile_curve(&stats.rtt, 4.0)),
                Series::line(
                    "from scheduled send",
                    percentile_curve(&stats.from_schedule, 4.0),
                ),
            ],
        ),
        round_trip_per_second_panel("Round trip per second (by scheduled send time)", seconds),
        Panel::new(
            "Messages per second",
            "second",
            "messages",
            vec![
                Series::line("sent", per_second(|s| s.sent)),
                Series::line("echoed", per_second(|s| s.received)),
            ],
        ),
    ]
}

/// Dispatches slots `0..total` on time, or until stopped.
async fn pace(
    schedule: Schedule,
    total: u64,
    origin: Instant,
    senders: Vec<mpsc::UnboundedSender<u64>>,
    stop: Stop,
) {
    let mut next = 0;
    while next < total && !stop.is_set() {
        let due_at = origin + Duration::from_nanos(schedule.at_ns(next));
        if due_at > Instant::now() {
            tokio::time::sleep_until(due_at.into()).await;
        } else {
            // Behind schedule: let the writers run before catching up.
            tokio::task::yield_now().await;
        }
        let due = schedule.due_by(elapsed_ns(origin)).clamp(next + 1, total);
        for i in next..due {
            // A closed channel means that connection died; its error is
            // counted by its tasks and the slot shows as not sent.
            let _ = senders[connection_for(i, senders.len())].send(i);
        }
        next = due;
    }
}

async fn writer(
    mut sink: SplitSink<Ws, Message>,
    mut slots: mpsc::UnboundedReceiver<u64>,
    mut closing: watch::Receiver<bool>,
    schedule: Schedule,
    origin: Instant,
    size: usize,
    stats: Arc<Mutex<EchoStats>>,
) -> Errors {
    let mut errors = Errors::default();
    while let Some(seq) = slots.recv().await {
        let intended_ns = schedule.at_ns(seq);
        let stamp = Stamp {
            seq,
            intended_ns,
            sent_ns: elapsed_ns(origin),
        };
        if let Err(e) = sink.send(Message::binary(encode(stamp, size))).await {
            errors.add("send", || e.to_string());
            return errors;
        }
        lock(&stats).on_sent(intended_ns);
    }
    let _ = closing.wait_for(|c| *c).await;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    // The server may already be gone; the reader reports that.
    let _ = sink.send(Message::Close(Some(frame))).await;
    errors
}

async fn reader(
    mut stream: SplitStream<Ws>,
    closing: watch::Receiver<bool>,
    origin: Instant,
    stats: Arc<Mutex<EchoStats>>,
) -> Errors {
    let mut errors = Errors::default();
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Binary(bytes)) => {
                let now = elapsed_ns(origin);
                let mut s = lock(&stats);
                match decode(&bytes) {
                    Some(stamp) => s.on_echo(stamp, now),
                    None => s.unexpected += 1,
                }
            }
            Ok(Message::Text(_)) => lock(&stats).unexpected += 1,
            Ok(Message::Close(frame)) if !*closing.borrow() => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                errors.add("closed_by_server", || {
                    format!("the server closed a connection with code {code} during the run")
                });
            }
            Ok(_) => {}
            Err(e) => {
                if !*closing.borrow() {
                    errors.add("receive", || e.to_string());
                }
                break;
            }
        }
    }
    errors
}
