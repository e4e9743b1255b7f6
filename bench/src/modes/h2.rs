//! `h2`: what a WebSocket costs the target over HTTP/2 (RFC 8441, many
//! streams on few TLS connections) against wss over HTTP/1.1 (one TLS
//! connection each), measured in one run so the ratios share the machine's
//! state.
//!
//! Handshakes first: `--handshakes` of each protocol, in two alternating
//! halves (h1, h2, h1, h2) so drift in the machine's load hits both alike.
//! An h1 handshake is a new TCP and TLS connection, the Upgrade, the hello,
//! one echo and the close; an h2 one is a new stream (extended CONNECT),
//! the hello, one echo and the close, with a new TLS connection for every
//! `--streams-per-connection` of them. The target's CPU (`--pid`) over
//! each half, per completed handshake, gives the CPU ratio.
//!
//! Then idle memory: `--connections` wss WebSockets are opened and held,
//! then as many over HTTP/2 besides them; the target's RSS growth over
//! each, per WebSocket, gives the memory ratio. Both stay open to the end,
//! so the second never reuses memory the first freed.

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use std::future::Future;
use tokio_tungstenite::tungstenite::Message;

use super::{check_positive, connect_many, Outcome};
use crate::cli::H2Args;
use crate::client::{close, echo_once, ConnectError, Connected, Target};
use crate::h2::H2Conn;
use crate::procstat::{cpu_seconds, Sample};
use crate::summary::{ratio, round, Errors};
use crate::{BenchError, Ctx};

/// h2 users are numbered from here, apart from the h1 users.
const H2_USERS: u64 = 1 << 32;

/// One protocol's handshakes: completed ones and the target's CPU.
#[derive(Debug, Default)]
struct Churn {
    completed: u64,
    cpu_s: f64,
}

#[derive(Debug, Serialize)]
struct Handshakes {
    completed: u64,
    cpu_us_per_handshake: f64,
}

#[derive(Debug, Serialize)]
struct Detail {
    streams_per_connection: usize,
    concurrency: usize,
    handshake_h1: Handshakes,
    handshake_h2: Handshakes,
    /// CPU per h2 handshake over CPU per h1 handshake.
    handshake_cpu_ratio_h2_h1: f64,
    idle_connections: usize,
    idle_kib_per_ws_h1: f64,
    idle_kib_per_ws_h2: f64,
    /// Memory per idle h2 WebSocket over memory per idle wss connection.
    idle_memory_ratio_h2_h1: f64,
}

pub async fn run(ctx: &Ctx, args: &H2Args) -> Result<Outcome, BenchError> {
    check_positive(
        "--handshakes",
        usize::try_from(args.handshakes).unwrap_or(1),
    )?;
    check_positive("--connections", args.connections)?;
    check_positive("--streams-per-connection", args.streams_per_connection)?;
    check_positive("--concurrency", args.concurrency)?;
    let sample = || -> Result<Sample, BenchError> {
        ctx.watch.sample()?.ok_or_else(|| {
            BenchError::BadArgs("the h2 mode measures the target: give --pid".into())
        })
    };
    let start = sample()?;
    let mut errors = Errors::default();
    let (mut h1, mut h2) = (Churn::default(), Churn::default());
    let half = args.handshakes.div_ceil(2);
    ctx.progress.phase("handshake", 4);
    for round in 0..2u64 {
        let users = round * half..(round + 1) * half;
        let before = sample()?;
        let target = &ctx.target;
        let done = churn(
            users.clone(),
            args.concurrency,
            &mut errors,
            |user| async move {
                let conn = target.connect(user).await?;
                finish(target, conn, args.size).await
            },
        )
        .await;
        h1.add(done, before, sample()?);
        ctx.progress.set(round * 2 + 1);

        let before = sample()?;
        let mut done = 0;
        let per = args.streams_per_connection as u64;
        let mut first = users.start;
        while first < users.end && !ctx.stop.is_set() {
            let last = (first + per).min(users.end);
            match H2Conn::open(target).await {
                Err(e) => errors.add(&e.kind(), || e.to_string()),
                Ok((conn, _)) => {
                    let conn = &conn;
                    done += churn(
                        H2_USERS + first..H2_USERS + last,
                        args.concurrency,
                        &mut errors,
                        |user| async move {
                            let ws = conn.websocket(target, user).await?;
                            finish(target, ws, args.size).await
                        },
                    )
                    .await;
                }
            }
            first = last;
        }
        h2.add(done, before, sample()?);
        ctx.progress.set(round * 2 + 2);
    }

    // Idle memory: wss first, then h2 beside it.
    let before = sample()?;
    let (held_h1, e) = connect_many(ctx, args.connections, args.concurrency * 8).await?;
    errors.merge(e);
    let mid = sample()?;
    let (held_h2, e) = hold_h2(ctx, args).await;
    errors.merge(e);
    let end = sample()?;
    let per_ws = |a: Sample, b: Sample, n: usize| {
        round(
            ratio(b.rss_kib.saturating_sub(a.rss_kib) as f64, n as f64),
            2,
        )
    };
    let streams: usize = held_h2.iter().map(|(_, s)| s.len()).sum();
    let idle_h1 = per_ws(before, mid, held_h1.len());
    let idle_h2 = per_ws(mid, end, streams);
    let ok = errors.total == 0
        && held_h1.len() == args.connections
        && streams == args.connections
        && h1.completed > 0
        && h2.completed > 0;
    let detail = Detail {
        streams_per_connection: args.streams_per_connection,
        concurrency: args.concurrency,
        handshake_h1: h1.summary(),
        handshake_h2: h2.summary(),
        handshake_cpu_ratio_h2_h1: round(
            ratio(
                h2.summary().cpu_us_per_handshake,
                h1.summary().cpu_us_per_handshake,
            ),
            3,
        ),
        idle_connections: args.connections,
        idle_kib_per_ws_h1: idle_h1,
        idle_kib_per_ws_h2: idle_h2,
        idle_memory_ratio_h2_h1: round(ratio(idle_h2, idle_h1), 3),
    };
    let report = super::report(
        ctx,
        "h2",
        ok,
        detail,
        errors,
        ctx.watch.report(Some(start), Some(end)),
    );
    drop((held_h1, held_h2));
    Ok(Outcome {
        report,
        title: format!(
            "wsgate-bench h2: {} streams per connection",
            args.streams_per_connection
        ),
        panels: Vec::new(),
    })
}

impl Churn {
    fn add(&mut self, completed: u64, before: Sample, after: Sample) {
        self.completed += completed;
        self.cpu_s += cpu_seconds(before, after);
    }

    fn summary(&self) -> Handshakes {
        Handshakes {
            completed: self.completed,
            cpu_us_per_handshake: round(ratio(self.cpu_s * 1e6, self.completed as f64), 1),
        }
    }
}

/// Runs `attempt` for each user, `concurrency` at once; returns how many
/// completed, counting the failures in `errors`.
async fn churn<F, Fut>(
    users: std::ops::Range<u64>,
    concurrency: usize,
    errors: &mut Errors,
    attempt: F,
) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), ConnectError>>,
{
    let results: Vec<Result<(), ConnectError>> = stream::iter(users)
        .map(attempt)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut done = 0;
    for r in results {
        match r {
            Ok(()) => done += 1,
            Err(e) => errors.add(&e.kind(), || e.to_string()),
        }
    }
    done
}

/// One echo and a clean close: the rest of a handshake attempt.
async fn finish(target: &Target, mut conn: Connected, size: usize) -> Result<(), ConnectError> {
    echo_once(
        &mut conn.ws,
        Message::binary(vec![0x5a; size]),
        target.timeout,
    )
    .await?;
    close(&mut conn.ws, target.timeout).await
}

/// Opens `--connections` WebSockets over HTTP/2, `--streams-per-connection`
/// on each TLS connection, and returns them with their connections.
async fn hold_h2(ctx: &Ctx, args: &H2Args) -> (Vec<(H2Conn, Vec<Connected>)>, Errors) {
    let mut errors = Errors::default();
    let mut held = Vec::new();
    let target = &ctx.target;
    let per = args.streams_per_connection;
    let mut first = 0;
    while first < args.connections && !ctx.stop.is_set() {
        let last = (first + per).min(args.connections);
        match H2Conn::open(target).await {
            Err(e) => errors.add(&e.kind(), || e.to_string()),
            Ok((conn, _)) => {
                let opened: Vec<Result<Connected, ConnectError>> = stream::iter(first..last)
                    .map(|i| conn.websocket(target, 2 * H2_USERS + i as u64))
                    .buffer_unordered(args.concurrency * 8)
                    .collect()
                    .await;
                let mut streams = Vec::with_capacity(opened.len());
                for r in opened {
                    match r {
                        Ok(ws) => streams.push(ws),
                        Err(e) => errors.add(&e.kind(), || e.to_string()),
                    }
                }
                held.push((conn, streams));
            }
        }
        first = last;
    }
    (held, errors)
}
