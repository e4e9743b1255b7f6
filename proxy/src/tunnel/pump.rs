//! The tunnel: after the 101, splice client and backend in both directions,
//! knowing where every frame starts, and close with a WebSocket Close frame
//! whenever wsgate itself ends the session.
//!
//! One task per connection runs two pumps (client→backend, backend→client)
//! joined together, plus the idle and close timers. Each pump copies bytes
//! unchanged and feeds them to a [`FrameTracker`], so it always knows whether
//! the stream it writes is at a frame boundary. When wsgate decides to close
//! (backend died, client vanished, idle, shutdown, drain, bad framing) each
//! pump finishes the frame in flight, writes its Close at the boundary, then
//! discards data until the peer's Close arrives. The close is bounded by
//! `close_timeout`, counted from when wsgate's Close was sent (not from the
//! decision: a drain during a large upload waits for that frame to end);
//! while a frame is still being finished the bound is `close_timeout`
//! without progress. Past it the TCP connections are dropped. A frame is
//! never cut: if a peer vanishes mid-frame, the other side gets a TCP
//! shutdown rather than a corrupt frame.
//!
//! A half-close after a peer's own Close is passed through as a TCP
//! shutdown of the other side's write half.
//!
//! With a route's `heartbeat`, a client silent for `interval` gets a Ping
//! from wsgate at a frame boundary (payload [`HEARTBEAT_PAYLOAD`]); its
//! Pong is taken out of the stream before the backend sees it, and a
//! client still silent `timeout` after the Ping is gone
//! ([`CloseCause::Heartbeat`]: the backend gets 1001). Any bytes from the
//! client count as life, so a client that is talking is never pinged.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::bufpool;
use super::closesignal::{CloseCause, CloseSignal};
use super::frame::{encode_close, encode_ping, find_pong, Broken, FrameTracker, PeerClose, Sender};

/// One tunnel's timeouts and limit. Every idle tunnel's task holds it for
/// the tunnel's whole life, so it is stored compactly: times as whole
/// milliseconds (rounded up) in a `u32`, 24 bytes instead of 72. Times
/// longer than 49 days saturate there, far above any sane timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelConfig {
    idle_ms: u32,
    close_ms: u32,
    /// 0: the route has no heartbeat.
    heartbeat_interval_ms: u32,
    heartbeat_timeout_ms: u32,
    max_message_bytes: u64,
}

impl TunnelConfig {
    pub fn new(
        idle: Duration,
        close_timeout: Duration,
        max_message_bytes: u64,
        heartbeat: Option<Heartbeat>,
    ) -> Self {
        TunnelConfig {
            idle_ms: millis(idle),
            close_ms: millis(close_timeout),
            heartbeat_interval_ms: heartbeat.map_or(0, |hb| millis(hb.interval).max(1)),
            heartbeat_timeout_ms: heartbeat.map_or(0, |hb| millis(hb.timeout)),
            max_message_bytes,
        }
    }

    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms.into())
    }

    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_ms.into())
    }

    pub fn max_message_bytes(&self) -> u64 {
        self.max_message_bytes
    }

    pub fn heartbeat(&self) -> Option<Heartbeat> {
        (self.heartbeat_interval_ms != 0).then(|| Heartbeat {
            interval: Duration::from_millis(self.heartbeat_interval_ms.into()),
            timeout: Duration::from_millis(self.heartbeat_timeout_ms.into()),
        })
    }
}

/// Whole milliseconds, rounded up so that a nonzero time stays nonzero.
fn millis(d: Duration) -> u32 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u32::try_from(ms).unwrap_or(u32::MAX)
}

/// Proxy-level heartbeats toward the client (`routes[].heartbeat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Client silence before wsgate sends a Ping.
    pub interval: Duration,
    /// Further silence after the Ping before the client counts as gone.
    pub timeout: Duration,
}

/// The payload of wsgate's own Pings, by which their Pongs are told from
/// the answers to the backend's.
pub const HEARTBEAT_PAYLOAD: &[u8] = b"wsgate-heartbeat";

/// `Shared::ping` values besides a send time: none outstanding, or one
/// asked of the client-bound pump and not written yet.
const PING_NONE: u64 = 0;
const PING_WANTED: u64 = 1;

/// What the heartbeat rule says when the timer fires.
enum Beat {
    /// Check again at this time.
    At(Instant),
    /// The client is gone.
    Dead,
}

/// What happened, for the connection's log line and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct TunnelReport {
    pub cause: Option<CloseCause>,
    /// Who started the close: a peer's Close frame, or wsgate's decision
    /// (`cause`), whichever came first. `None` when the session ended with
    /// neither (both TCP connections ended at once, cleanly).
    pub first: Option<First>,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// Complete data messages forwarded each way (those discarded after
    /// wsgate's Close included; they are in `discarded_frames` too).
    pub messages_to_backend: u64,
    pub messages_to_client: u64,
    /// The Close frame each peer sent, as it passed through.
    pub client_close: Option<PeerClose>,
    pub backend_close: Option<PeerClose>,
    /// The code of the Close wsgate itself wrote to each side, if any.
    pub wsgate_to_client: Option<u16>,
    pub wsgate_to_backend: Option<u16>,
    /// Data frames dropped after wsgate sent its Close.
    pub discarded_frames: u64,
    /// The close handshake did not finish within `close_timeout`.
    pub timed_out: bool,
    /// From the start of the tunnel (the 101) to its end.
    pub duration: Duration,
}

/// Who began the end of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// The client sent its Close frame first.
    Client,
    /// The backend sent its Close frame first.
    Backend,
    /// wsgate decided to close first (the report's `cause` says why; a
    /// peer that vanished without a Close is a cause too).
    Wsgate,
}

/// `Shared::first` values.
const FIRST_NONE: u8 = 0;
const FIRST_CLIENT: u8 = 1;
const FIRST_BACKEND: u8 = 2;
const FIRST_WSGATE: u8 = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ToBackend,
    ToClient,
}

/// State shared by the two pumps and the timers of one tunnel. They run in
/// one task, so nothing here is contended; atomics (all `Relaxed`) are used
/// only because the task future must be `Send`. Times are nanoseconds since
/// `start`, with 0 meaning "not yet" for `closing_since`.
struct Shared<'a> {
    signal: &'a CloseSignal,
    start: Instant,
    /// When bytes last came from each side, by the [`Dir`] of the pump that
    /// read them: from the client at 0, from the backend at 1.
    seen: [AtomicU64; 2],
    /// The heartbeat: `PING_NONE`, `PING_WANTED`, or 1 + when the Ping went
    /// out.
    ping: AtomicU64,
    closing_since: AtomicU64,
    /// Bumped whenever a pump decides a cause or a close starts, so the
    /// supervisor polls both pumps again before the task sleeps: the other
    /// pump must see the news, and nothing else would wake it.
    changes: AtomicU32,
    /// When wsgate last wrote a Close frame (0: never).
    close_sent_at: AtomicU64,
    /// Per pump (by [`Dir`]), one bit each: [`AWAITING`] finishing a frame
    /// before it can send Close; [`SHUT`] its destination's write side is
    /// shut down (a half-close passed on; the end of the tunnel need not
    /// again); [`WROTE`] wsgate wrote its own Close there. Bits in one
    /// byte, with `first`, keep this struct (and every idle tunnel) as
    /// small as before the report counted closes.
    flags: AtomicU8,
    discarded: AtomicU64,
    sent: [AtomicU64; 2],
    /// Who began the close (`FIRST_*`); the first to set it wins.
    first: AtomicU8,
    /// The code of the Close wsgate wrote to the client (0: none). Kept,
    /// not derived from the cause: a backend that dies while a drain's
    /// Close waits for a boundary gets the client 1014, not the drain's.
    /// (Toward the backend the cause's code is always the one written.)
    wrote_to_client: AtomicU16,
}

/// `Shared::flags` bits, shifted by the pump's [`Dir`].
const AWAITING: u8 = 1;
const SHUT: u8 = 4;
const WROTE: u8 = 16;

impl<'a> Shared<'a> {
    fn new(signal: &'a CloseSignal) -> Self {
        Shared {
            signal,
            start: Instant::now(),
            seen: [AtomicU64::new(0), AtomicU64::new(0)],
            ping: AtomicU64::new(PING_NONE),
            closing_since: AtomicU64::new(0),
            changes: AtomicU32::new(0),
            close_sent_at: AtomicU64::new(0),
            flags: AtomicU8::new(0),
            discarded: AtomicU64::new(0),
            sent: [AtomicU64::new(0), AtomicU64::new(0)],
            first: AtomicU8::new(FIRST_NONE),
            wrote_to_client: AtomicU16::new(0),
        }
    }

    fn flag(&self, bit: u8, dir: Dir) -> bool {
        self.flags.load(Relaxed) & (bit << dir as u8) != 0
    }

    fn set_flag(&self, bit: u8, dir: Dir, on: bool) {
        if on {
            self.flags.fetch_or(bit << dir as u8, Relaxed);
        } else {
            self.flags.fetch_and(!(bit << dir as u8), Relaxed);
        }
    }

    /// Records who began the close, unless someone already did.
    fn began(&self, who: u8) {
        if self.first.load(Relaxed) == FIRST_NONE {
            self.first.store(who, Relaxed);
        }
    }

    fn now(&self) -> u64 {
        // Saturates after 584 years.
        u64::try_from(self.start.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn at(&self, nanos: u64) -> Instant {
        self.start + Duration::from_nanos(nanos)
    }

    fn touch(&self, from: Dir) {
        self.seen[from as usize].store(self.now(), Relaxed);
    }

    fn last_activity_nanos(&self) -> u64 {
        self.seen[0].load(Relaxed).max(self.seen[1].load(Relaxed))
    }

    fn last_activity(&self) -> Instant {
        self.at(self.last_activity_nanos())
    }

    /// The heartbeat rule, applied when the timer fires (pure but for the
    /// state it advances): ask for a Ping after `interval` of client
    /// silence; forget it once the client sends anything; the client is
    /// gone if it stays silent `timeout` after the Ping went out.
    fn beat(&self, hb: Heartbeat, now: Instant) -> Beat {
        let client = self.at(self.seen[0].load(Relaxed));
        match self.ping.load(Relaxed) {
            PING_NONE => {
                let due = client + hb.interval;
                if due > now {
                    return Beat::At(due);
                }
                self.ping.store(PING_WANTED, Relaxed);
                // Wake the pumps: the client-bound one writes the Ping.
                self.changes.fetch_add(1, Relaxed);
                Beat::At(now + hb.timeout)
            }
            // Not written yet (the client-bound pump is mid-frame).
            PING_WANTED => Beat::At(now + hb.timeout),
            sent => {
                let sent_at = self.at(sent - 1);
                if client > sent_at {
                    self.ping.store(PING_NONE, Relaxed);
                    Beat::At(client + hb.interval)
                } else if sent_at + hb.timeout <= now {
                    Beat::Dead
                } else {
                    Beat::At(sent_at + hb.timeout)
                }
            }
        }
    }

    fn cause(&self) -> Option<CloseCause> {
        self.signal.cause()
    }

    /// When the close in progress times out: `close_timeout` after the
    /// last Close wsgate sent (or the decision, when there is none to
    /// send), or, while a pump is still finishing a frame before its Close,
    /// `close_timeout` after the last byte moved.
    fn close_deadline(&self, close_timeout: Duration) -> Option<Instant> {
        let since = self.closing_since.load(Relaxed);
        if since == 0 {
            return None;
        }
        let from = if self.flag(AWAITING, Dir::ToBackend) || self.flag(AWAITING, Dir::ToClient) {
            self.last_activity_nanos()
        } else {
            since.max(self.close_sent_at.load(Relaxed))
        };
        Some(self.at(from) + close_timeout)
    }

    fn changes(&self) -> u32 {
        self.changes.load(Relaxed)
    }

    fn decide(&self, cause: CloseCause) {
        self.began(FIRST_WSGATE);
        self.start_closing();
        if self.signal.set(cause) {
            self.changes.fetch_add(1, Relaxed);
        }
    }

    fn start_closing(&self) {
        if self.closing_since.load(Relaxed) == 0 {
            self.closing_since.store(self.now(), Relaxed);
            self.changes.fetch_add(1, Relaxed);
        }
    }
}

/// One side of a tunnel: its connection split into a read and a write half,
/// and the bytes the HTTP layer read past the handshake (a frame the peer
/// sent right behind its upgrade request or its 101), which go first.
pub struct Side<R, W> {
    pub read: R,
    pub write: W,
    pub early: Early,
}

impl<R, W> Side<R, W> {
    pub fn new(read: R, write: W, early: Early) -> Self {
        Side { read, write, early }
    }
}

/// Bytes read past a handshake, to forward before anything else. Boxed,
/// and only when there are any: a bare `Bytes` is 32 bytes, an idle tunnel
/// carries several of these slots for its whole life, and almost every
/// connection has nothing in them. An empty `Bytes` is dropped here for a
/// second reason: even an empty slice of hyper's read buffer would keep
/// that whole buffer (8 KiB) alive.
#[derive(Default)]
pub struct Early(Option<Box<Bytes>>);

impl Early {
    pub fn new(bytes: Bytes) -> Self {
        if bytes.is_empty() {
            Early(None)
        } else {
            Early(Some(Box::new(bytes)))
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    fn take(&mut self) -> Bytes {
        self.0.take().map(|b| *b).unwrap_or_default()
    }
}

/// Runs the tunnel to completion. `signal` carries causes set from outside
/// (shutdown, a drain) and the tunnel's own; the report says which won.
///
/// Everything is passed by reference, into a plain fn around an async
/// block: a by-value argument takes a second slot in the state machine once
/// it is moved, an async fn keeps a second copy even of its references, and
/// this state machine is most of an idle connection's memory.
// Not an async fn on purpose: see above (the lint cannot know sizes).
#[allow(clippy::manual_async_fn)]
pub fn run<'a, CR, CW, BR, BW>(
    client: &'a mut Side<CR, CW>,
    backend: &'a mut Side<BR, BW>,
    cfg: &'a TunnelConfig,
    signal: &'a CloseSignal,
) -> impl Future<Output = TunnelReport> + 'a
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    BR: AsyncRead + Unpin,
    BW: AsyncWrite + Unpin,
{
    async move {
        let shared = Shared::new(signal);
        let mut to_backend = Pump::new(
            Dir::ToBackend,
            &shared,
            cfg,
            std::mem::take(&mut client.early),
        );
        let mut to_client = Pump::new(
            Dir::ToClient,
            &shared,
            cfg,
            std::mem::take(&mut backend.early),
        );
        let timed_out = {
            let mut pumps = std::pin::pin!(futures_util::future::join(
                to_backend.run(&mut client.read, &mut backend.write),
                to_client.run(&mut backend.read, &mut client.write),
            ));
            // One timer: the idle and heartbeat checks, re-armed lazily when
            // it fires (not on every message), then the close deadline once
            // a close starts.
            let first = cfg
                .heartbeat()
                .map_or(cfg.idle(), |hb| hb.interval.min(cfg.idle()));
            let mut timer =
                std::pin::pin!(tokio::time::sleep_until(shared.last_activity() + first));
            let mut close_armed = false;
            std::future::poll_fn(|cx| loop {
                let seen = shared.changes();
                if signal.poll_cause(cx).is_ready() {
                    shared.began(FIRST_WSGATE);
                    shared.start_closing();
                }
                if pumps.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                if !close_armed {
                    if let Some(deadline) = shared.close_deadline(cfg.close_timeout()) {
                        close_armed = true;
                        timer.as_mut().reset(deadline);
                    }
                }
                if timer.as_mut().poll(cx).is_ready() {
                    if close_armed {
                        // Re-armed lazily: a deadline only moves later
                        // (a Close sent, an upload still moving).
                        match shared.close_deadline(cfg.close_timeout()) {
                            Some(deadline) if deadline > Instant::now() => {
                                timer.as_mut().reset(deadline);
                                continue;
                            }
                            _ => return Poll::Ready(true),
                        }
                    }
                    let now = Instant::now();
                    let idle_until = shared.last_activity() + cfg.idle();
                    if idle_until <= now {
                        shared.decide(CloseCause::Idle);
                        continue;
                    }
                    let next = match cfg.heartbeat().map(|hb| shared.beat(hb, now)) {
                        Some(Beat::Dead) => {
                            shared.decide(CloseCause::Heartbeat);
                            continue;
                        }
                        Some(Beat::At(at)) => at.min(idle_until),
                        None => idle_until,
                    };
                    timer.as_mut().reset(next);
                    continue;
                }
                if shared.changes() == seen {
                    return Poll::Pending;
                }
            })
            .await
        };
        // Both pumps are done (or timed out): end both TCP connections. Best
        // effort and bounded, since a peer that stopped reading can stall a
        // TLS close_notify forever.
        let bound = Duration::from_millis(500).min(cfg.close_timeout());
        // A side already shut down by its pump is skipped: a second
        // shutdown is a wasted system call (ENOTCONN once the peer closed).
        if !shared.flag(SHUT, Dir::ToClient) {
            let _ = tokio::time::timeout(bound, client.write.shutdown()).await;
        }
        if !shared.flag(SHUT, Dir::ToBackend) {
            let _ = tokio::time::timeout(bound, backend.write.shutdown()).await;
        }

        // Built only now: a report declared before the await would take a
        // slot in every idle tunnel's state.
        let cause = shared.cause();
        let wrote = |dir: Dir| match dir {
            Dir::ToClient => Some(shared.wrote_to_client.load(Relaxed)).filter(|&c| c != 0),
            Dir::ToBackend => cause?
                .to_backend()
                .filter(|_| shared.flag(WROTE, dir))
                .map(|(c, _)| c),
        };
        TunnelReport {
            cause,
            first: match shared.first.load(Relaxed) {
                FIRST_CLIENT => Some(First::Client),
                FIRST_BACKEND => Some(First::Backend),
                FIRST_WSGATE => Some(First::Wsgate),
                _ => None,
            },
            bytes_to_backend: shared.sent[0].load(Relaxed),
            bytes_to_client: shared.sent[1].load(Relaxed),
            messages_to_backend: to_backend.tracker.messages(),
            messages_to_client: to_client.tracker.messages(),
            client_close: to_backend.tracker.peer_close(),
            backend_close: to_client.tracker.peer_close(),
            wsgate_to_client: wrote(Dir::ToClient),
            wsgate_to_backend: wrote(Dir::ToBackend),
            discarded_frames: shared.discarded.load(Relaxed),
            timed_out,
            duration: shared.start.elapsed(),
        }
    }
}

/// Ready once a close cause is decided, or (when `can_ping`) a heartbeat
/// Ping is wanted. It registers no waker of its own: the pumps run in the
/// tunnel's task, whose supervisor registers for causes set from outside
/// and re-polls after causes decided (or Pings asked for) inside. One
/// waiter per tunnel instead of three keeps idle tunnels small.
fn attention<'a>(shared: &'a Shared<'_>, can_ping: bool) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |_| {
        if shared.cause().is_some() || (can_ping && shared.ping.load(Relaxed) == PING_WANTED) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Pass every byte through.
    Forward,
    /// A Close is due: pass bytes only up to the next frame boundary.
    CloseAtBoundary(u16, &'static str),
    /// Our Close is sent (or the destination is gone): drop data until the
    /// source's own Close frame or end of stream.
    Discard,
    /// A close became due after the source's own Close went through: a
    /// second Close would break the protocol, so pass bytes on until that
    /// handshake finishes (bounded by the close deadline). Unlike
    /// `Forward`, the cause is already handled and is not looked at again.
    Passing,
}

struct Pump<'a> {
    dir: Dir,
    shared: &'a Shared<'a>,
    /// Bytes read past the handshake, forwarded before the first read.
    early: Early,
    tracker: FrameTracker,
    /// The framing of the source could not be parsed; boundaries are unknown.
    broken: bool,
    /// The source already sent its Close frame (normal close in progress).
    source_closed: bool,
    /// Everything written to the destination ends at a frame boundary.
    /// Kept apart from the tracker, whose state is undefined after an error.
    dst_at_boundary: bool,
    /// The route has heartbeats: this pump writes the Pings (client-bound)
    /// or takes their Pongs out (backend-bound).
    heartbeat: bool,
}

impl<'a> Pump<'a> {
    fn new(dir: Dir, shared: &'a Shared<'a>, cfg: &TunnelConfig, early: Early) -> Self {
        let sender = match dir {
            Dir::ToBackend => Sender::Client,
            Dir::ToClient => Sender::Server,
        };
        Pump {
            dir,
            shared,
            early,
            tracker: FrameTracker::new(sender, cfg.max_message_bytes()),
            broken: false,
            source_closed: false,
            dst_at_boundary: true,
            heartbeat: cfg.heartbeat().is_some(),
        }
    }

    /// The backend-bound pump of a route with heartbeats, while wsgate's
    /// Ping is out: its chunks take the (boxed) path that looks for the
    /// Pong, so the hot path of every other chunk does not.
    fn pong_expected(&self) -> bool {
        self.heartbeat && self.dir == Dir::ToBackend && self.shared.ping.load(Relaxed) > PING_WANTED
    }

    /// A Ping may be written now: the client-bound pump of a route with
    /// heartbeats, between frames.
    fn can_ping(&self) -> bool {
        self.heartbeat && self.dir == Dir::ToClient && self.dst_at_boundary
    }

    /// The `Shared::first` value for this pump's source closing.
    fn source_first(&self) -> u8 {
        match self.dir {
            Dir::ToBackend => FIRST_CLIENT,
            Dir::ToClient => FIRST_BACKEND,
        }
    }

    /// Writes the wanted heartbeat Ping, if one is wanted and it can go now.
    async fn ping_if_wanted<W: AsyncWrite + Unpin>(&self, dst: &mut W) -> std::io::Result<()> {
        if !self.can_ping() || self.shared.ping.load(Relaxed) != PING_WANTED {
            return Ok(());
        }
        let frame = encode_ping(HEARTBEAT_PAYLOAD);
        write_flushed(dst, frame.as_bytes()).await?;
        self.shared.ping.store(self.shared.now() + 1, Relaxed);
        Ok(())
    }

    /// Close code and reason this pump must write to its destination.
    fn close_for(&self, cause: CloseCause) -> Option<(u16, &'static str)> {
        match self.dir {
            Dir::ToBackend => cause.to_backend(),
            Dir::ToClient => cause.to_client(),
        }
    }

    // Not an async fn on purpose: see the comment in the body.
    #[allow(clippy::manual_async_fn)]
    fn run<'s, R, W>(
        &'s mut self,
        src: &'s mut R,
        dst: &'s mut W,
    ) -> impl Future<Output = ()> + use<'a, 's, R, W>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        // A plain fn around an async block: an async fn would keep a second
        // copy of its three arguments in the state machine.
        async move {
            let mut mode = Mode::Forward;
            if !self.early.is_empty() {
                self.shared.touch(self.dir);
                // Boxed: only a connection's first chunk can take this path.
                match Box::pin(self.on_early(dst)).await {
                    Ok(Some(next)) => mode = next,
                    Ok(None) => return,
                    Err(_) => return self.destination_gone(),
                }
            }
            loop {
                if mode == Mode::Forward {
                    if let Some(cause) = self.shared.cause() {
                        // Boxed: closing happens once per connection, and an
                        // inline close future would enlarge every idle tunnel.
                        mode = match self.close_for(cause) {
                            Some((code, reason)) => {
                                Box::pin(self.close_now_or_later(dst, code, reason)).await
                            }
                            None => Mode::Discard,
                        };
                        self.awaiting(matches!(mode, Mode::CloseAtBoundary(..)));
                    } else if self.can_ping() && self.shared.ping.load(Relaxed) == PING_WANTED {
                        // Boxed: once per heartbeat interval at most.
                        if Box::pin(self.ping_if_wanted(dst)).await.is_err() {
                            return self.destination_gone();
                        }
                    }
                }
                let read = if mode == Mode::Forward {
                    tokio::select! {
                        biased;
                        () = attention(self.shared, self.can_ping()) => continue,
                        read = bufpool::read(src) => read,
                    }
                } else {
                    bufpool::read(src).await
                };
                let bytes = match read {
                    Ok(bytes) if !bytes.is_empty() => bytes,
                    // End of stream or a reset: the source is gone.
                    _ => {
                        self.awaiting(false);
                        return Box::pin(self.on_source_end(dst, mode)).await;
                    }
                };
                self.shared.touch(self.dir);
                let next = if mode == Mode::Forward && !self.broken && !self.pong_expected() {
                    self.forward_chunk(dst, &bytes).await
                } else {
                    // Boxed: only a closing tunnel gets here, and inline this
                    // would enlarge every idle one.
                    Box::pin(self.on_bytes(dst, &bytes, mode)).await
                };
                match next {
                    Ok(Some(next)) => mode = next,
                    Ok(None) => return self.awaiting(false),
                    Err(_) => {
                        self.awaiting(false);
                        return self.destination_gone();
                    }
                }
                if mode != Mode::Forward {
                    self.awaiting(matches!(mode, Mode::CloseAtBoundary(..)));
                }
            }
        }
    }

    /// Tells the supervisor whether this pump is finishing a frame before
    /// its Close, which bounds the close by progress instead of by time.
    fn awaiting(&self, yes: bool) {
        self.shared.set_flag(AWAITING, self.dir, yes);
    }

    async fn on_early<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
    ) -> std::io::Result<Option<Mode>> {
        let early = self.early.take();
        self.on_bytes(dst, &early, Mode::Forward).await
    }

    /// Writing failed: the destination is gone.
    fn destination_gone(&self) {
        self.shared.decide(match self.dir {
            Dir::ToBackend => CloseCause::BackendGone,
            Dir::ToClient => CloseCause::ClientGone,
        });
    }

    /// Forwards one chunk while no close is due: the hot path of every
    /// message. Returns the next mode, like [`Self::on_bytes`]. The frame
    /// bookkeeping is synchronous around a single small write future, so
    /// this path adds little to an idle tunnel's state.
    async fn forward_chunk<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        bytes: &[u8],
    ) -> std::io::Result<Option<Mode>> {
        let close_frame_ended = match self.tracker.advance_to_error(bytes) {
            Ok(adv) => adv.close_frame_ended,
            // Boxed: once per connection at most, and inline it would
            // enlarge every idle tunnel.
            Err(broken) => return Box::pin(self.on_broken(dst, bytes, broken)).await,
        };
        write_flushed(dst, bytes).await?;
        self.count_sent(bytes.len());
        self.dst_at_boundary = self.tracker.at_boundary();
        if close_frame_ended {
            self.source_closed = true;
            self.shared.began(self.source_first());
            self.shared.start_closing();
        }
        if self.heartbeat {
            // A Ping wanted while a frame was in flight goes out at its end.
            Box::pin(self.ping_if_wanted(dst)).await?;
        }
        Ok(Some(Mode::Forward))
    }

    /// Forwards `bytes` but `pong`, the Pong that answers wsgate's own Ping
    /// (found whole in this chunk, the usual case: it arrives as one small
    /// packet). A Pong split across reads goes through, which the backend
    /// must accept as an unsolicited Pong (RFC 6455 5.5.3). The Pong is a
    /// whole control frame starting at a boundary, so skipping it leaves the
    /// tracker where it was, between frames.
    async fn forward_around<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        bytes: &[u8],
        pong: std::ops::Range<usize>,
    ) -> std::io::Result<Option<Mode>> {
        let mut next = Some(Mode::Forward);
        for part in [&bytes[..pong.start], &bytes[pong.end..]] {
            if !part.is_empty() && next == Some(Mode::Forward) {
                next = self.forward_chunk(dst, part).await?;
            }
        }
        Ok(next)
    }

    /// The source broke the framing rules in `bytes`. The whole frames
    /// before the error still go through (valid messages the peer sent
    /// before breaking the rules); nothing after them does, so the Close
    /// that follows lands at that boundary.
    async fn on_broken<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        bytes: &[u8],
        Broken { error, boundary }: Broken,
    ) -> std::io::Result<Option<Mode>> {
        self.broken = true;
        tracing::debug!(dir = ?self.dir, %error, "invalid framing");
        if let Some(end) = boundary {
            if end > 0 {
                self.forward(dst, &bytes[..end]).await?;
            }
            self.dst_at_boundary = true;
        }
        self.shared.decide(match self.dir {
            Dir::ToBackend => CloseCause::ClientProtocol(error.close_code()),
            Dir::ToClient => CloseCause::BackendProtocol(error.close_code()),
        });
        Ok(Some(Mode::Forward))
    }

    fn count_sent(&self, n: usize) {
        self.shared.sent[self.dir as usize].fetch_add(n as u64, Relaxed);
    }

    /// Handles one chunk. Returns the next mode, or None when this pump is done.
    async fn on_bytes<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        bytes: &[u8],
        mode: Mode,
    ) -> std::io::Result<Option<Mode>> {
        if self.broken {
            return Ok(Some(Mode::Discard));
        }
        match mode {
            Mode::Forward if self.pong_expected() && self.tracker.at_boundary() => {
                match find_pong(bytes, HEARTBEAT_PAYLOAD) {
                    Some(pong) => self.forward_around(dst, bytes, pong).await,
                    None => self.forward_chunk(dst, bytes).await,
                }
            }
            Mode::Forward => self.forward_chunk(dst, bytes).await,
            Mode::Passing => {
                let next = self.forward_chunk(dst, bytes).await?;
                Ok(next.map(|_| Mode::Passing))
            }
            Mode::CloseAtBoundary(code, reason) => {
                let adv = match self.tracker.advance(bytes, true) {
                    Ok(adv) => adv,
                    Err(_) => {
                        self.broken = true;
                        return Ok(Some(Mode::Discard));
                    }
                };
                let consumed = adv.consumed;
                self.forward(dst, &bytes[..consumed]).await?;
                self.dst_at_boundary = self.tracker.at_boundary();
                if adv.close_frame_ended {
                    // The frame being finished was the source's own Close
                    // (split across reads): the close handshake is theirs
                    // now, and a second Close would break it.
                    self.source_closed = true;
                    self.shared.began(self.source_first());
                    self.shared.start_closing();
                    let rest = &bytes[consumed..];
                    if !rest.is_empty() {
                        self.forward_chunk(dst, rest).await?;
                    }
                    return Ok(Some(Mode::Passing));
                }
                if !self.dst_at_boundary {
                    return Ok(Some(mode));
                }
                Box::pin(self.write_close(dst, code, reason)).await?;
                self.discard(&bytes[consumed..])
            }
            Mode::Discard => self.discard(bytes),
        }
    }

    /// Drops data after our Close; finishes when the source's Close arrives.
    fn discard(&mut self, bytes: &[u8]) -> std::io::Result<Option<Mode>> {
        if self.broken || bytes.is_empty() {
            return Ok(Some(Mode::Discard));
        }
        match self.tracker.advance(bytes, false) {
            Ok(adv) => {
                self.shared
                    .discarded
                    .fetch_add(u64::from(adv.data_frames_ended), Relaxed);
                Ok(if adv.close_frame_ended {
                    None
                } else {
                    Some(Mode::Discard)
                })
            }
            Err(_) => {
                self.broken = true;
                Ok(Some(Mode::Discard))
            }
        }
    }

    async fn close_now_or_later<W: AsyncWrite + Unpin>(
        &mut self,
        dst: &mut W,
        code: u16,
        reason: &'static str,
    ) -> Mode {
        if self.source_closed {
            return Mode::Passing;
        }
        if self.dst_at_boundary {
            // A failed write means the destination is gone; nothing more to send.
            let _ = Box::pin(self.write_close(dst, code, reason)).await;
            return Mode::Discard;
        }
        if self.broken {
            // Mid-frame with unparseable input: no boundary will come.
            return Mode::Discard;
        }
        Mode::CloseAtBoundary(code, reason)
    }

    async fn on_source_end<W: AsyncWrite + Unpin>(&mut self, dst: &mut W, mode: Mode) {
        if self.source_closed || mode == Mode::Discard {
            // A normal close, or the end of one we started: pass the
            // half-close on so the other side sees end of stream.
            if self.source_closed && matches!(mode, Mode::Forward | Mode::Passing) {
                let _ = dst.shutdown().await;
                self.shared.set_flag(SHUT, self.dir, true);
            }
            return;
        }
        let cause = match self.dir {
            Dir::ToBackend => CloseCause::ClientGone,
            Dir::ToClient => CloseCause::BackendGone,
        };
        self.shared.decide(cause);
        if let Some((code, reason)) = self.close_for(cause) {
            if self.dst_at_boundary {
                let _ = Box::pin(self.write_close(dst, code, reason)).await;
            } else {
                tracing::warn!(dir = ?self.dir, "peer vanished mid-frame; closing without a Close frame");
            }
        }
    }

    async fn forward<W: AsyncWrite + Unpin>(
        &self,
        dst: &mut W,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        write_flushed(dst, bytes).await?;
        self.count_sent(bytes.len());
        Ok(())
    }

    async fn write_close<W: AsyncWrite + Unpin>(
        &self,
        dst: &mut W,
        code: u16,
        reason: &str,
    ) -> std::io::Result<()> {
        // Frames to a backend are masked, with a fresh key each time (RFC 6455 5.3).
        let mask = (self.dir == Dir::ToBackend).then(rand::random::<[u8; 4]>);
        let frame = encode_close(code, reason, mask);
        self.shared.start_closing();
        dst.write_all(frame.as_bytes()).await?;
        dst.flush().await?;
        // The close timeout runs from here: until now the peer had nothing
        // to answer.
        self.shared.close_sent_at.store(self.shared.now(), Relaxed);
        self.shared.set_flag(WROTE, self.dir, true);
        if self.dir == Dir::ToClient {
            self.shared.wrote_to_client.store(code, Relaxed);
        }
        Ok(())
    }
}

/// Writes all of `bytes`, then flushes (the TLS layer holds a record until
/// flushed). One poll loop rather than `write_all` then `flush`: two nested
/// futures would each take a slot in every idle tunnel's state.
fn write_flushed<'a, W: AsyncWrite + Unpin>(
    dst: &'a mut W,
    bytes: &'a [u8],
) -> impl Future<Output = std::io::Result<()>> + 'a {
    let mut written = 0;
    std::future::poll_fn(move |cx| {
        while written < bytes.len() {
            match std::task::ready!(Pin::new(&mut *dst).poll_write(cx, &bytes[written..])) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Pin::new(&mut *dst).poll_flush(cx)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle tunnel's memory is mostly this state machine
    /// (ARCHITECTURE.md, "Performance decisions"). It was 3,168 bytes
    /// before the pumps were built in place and the close paths boxed, about 1,600 before the arguments went by
    /// reference and the write became one poll loop, and 1,040 before the
    /// early-bytes slots were boxed and `run` and `Pump::run` stopped being
    /// async fns (888 then, which put the whole plain-ws tunnel task in a
    /// 1,280-byte allocation instead of 1,536; 912 once the close deadline
    /// counted from the Close sent, 928 with per-side activity times and the
    /// heartbeat state, still within that allocation); this fails if it
    /// grows back.
    #[test]
    fn idle_tunnel_state_stays_small() {
        let (a, _b) = tokio::io::duplex(64);
        let (c, _d) = tokio::io::duplex(64);
        let cfg = TunnelConfig::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            1,
            Some(Heartbeat {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
            }),
        );
        let side = |io| {
            let (read, write) = tokio::io::split(io);
            Side {
                read,
                write,
                early: Early::default(),
            }
        };
        let signal = CloseSignal::new();
        let (mut a, mut c) = (side(a), side(c));
        let f = run(&mut a, &mut c, &cfg, &signal);
        let size = std::mem::size_of_val(&f);
        assert!(size <= 936, "tunnel future is {size} bytes");
    }

    /// The compact form keeps every time a route can configure, rounds a
    /// sub-millisecond one up (never to "no timeout"), and saturates.
    #[test]
    fn tunnel_config_round_trips_its_times() {
        let hb = Heartbeat {
            interval: Duration::from_secs(25),
            timeout: Duration::from_millis(1500),
        };
        let cfg = TunnelConfig::new(
            Duration::from_secs(3600),
            Duration::from_micros(10),
            7,
            Some(hb),
        );
        assert_eq!(cfg.idle(), Duration::from_secs(3600));
        assert_eq!(cfg.close_timeout(), Duration::from_millis(1));
        assert_eq!(cfg.max_message_bytes(), 7);
        assert_eq!(cfg.heartbeat(), Some(hb));
        let none = TunnelConfig::new(Duration::MAX, Duration::ZERO, 0, None);
        assert_eq!(none.heartbeat(), None);
        assert_eq!(none.close_timeout(), Duration::ZERO);
        assert_eq!(none.idle(), Duration::from_millis(u32::MAX.into()));
        assert!(std::mem::size_of::<TunnelConfig>() <= 24);
    }

    /// Runs a tunnel between two in-memory pipes on a runtime of its own
    /// thread, so that a tunnel that never yields fails the test (through
    /// the receive timeout) instead of hanging it.
    struct Harness {
        client: tokio::io::DuplexStream,
        backend: tokio::io::DuplexStream,
        signal: std::sync::Arc<CloseSignal>,
        done: std::sync::mpsc::Receiver<TunnelReport>,
    }

    fn start_tunnel(close_timeout: Duration) -> Harness {
        let (client, client_end) = tokio::io::duplex(4096);
        let (backend, backend_end) = tokio::io::duplex(4096);
        let signal = std::sync::Arc::new(CloseSignal::new());
        let (tx, done) = std::sync::mpsc::channel();
        let tunnel_signal = signal.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let cfg = TunnelConfig::new(Duration::from_secs(60), close_timeout, 1 << 20, None);
                let side = |io| {
                    let (read, write) = tokio::io::split(io);
                    Side::new(read, write, Early::default())
                };
                let (mut c, mut b) = (side(client_end), side(backend_end));
                let _ = tx.send(run(&mut c, &mut b, &cfg, &tunnel_signal).await);
            });
        });
        Harness {
            client,
            backend,
            signal,
            done,
        }
    }

    /// A drain that arrives after the client's own Close went through, but
    /// before the backend answered it: the client→backend pump must let
    /// that handshake finish, not send a second Close. It used to re-check
    /// the cause in a loop that never yielded, which hung the thread (and
    /// every tunnel on it) at 100% CPU.
    #[test]
    fn a_close_due_after_the_sources_own_close_lets_the_handshake_finish() {
        let mut h = start_tunnel(Duration::from_secs(30));
        let wait = Duration::from_secs(10);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use tokio::io::AsyncReadExt;
            let client_close = encode_close(1000, "bye", Some([1, 2, 3, 4]));
            h.client.write_all(client_close.as_bytes()).await.unwrap();
            let mut got = vec![0u8; client_close.as_bytes().len()];
            tokio::time::timeout(wait, h.backend.read_exact(&mut got))
                .await
                .expect("the client's Close reaches the backend")
                .unwrap();
            assert_eq!(got, client_close.as_bytes());

            h.signal.request(CloseCause::Drain(1012));
            // The client gets the drain's Close (the backend→client pump is
            // at a frame boundary); the backend gets no second Close.
            let mut got = vec![0u8; 2];
            tokio::time::timeout(wait, h.client.read_exact(&mut got))
                .await
                .expect("the client gets a Close")
                .unwrap();
            assert_eq!(got[0], 0x88, "a Close frame");
            let mut rest = vec![0u8; usize::from(got[1])];
            tokio::time::timeout(wait, h.client.read_exact(&mut rest))
                .await
                .expect("the Close's payload")
                .unwrap();
            assert_eq!(&rest[..2], &1012u16.to_be_bytes());

            // The backend answers the client's Close; the tunnel ends once
            // both sides have gone.
            let reply = encode_close(1000, "bye", None);
            h.backend.write_all(reply.as_bytes()).await.unwrap();
            drop(h.client);
            let mut tail = Vec::new();
            tokio::time::timeout(wait, h.backend.read_to_end(&mut tail))
                .await
                .expect("the backend sees end of stream")
                .unwrap();
            assert!(tail.is_empty(), "no second Close to the backend: {tail:?}");
        });
        let report = h
            .done
            .recv_timeout(wait)
            .expect("the tunnel ends instead of spinning");
        assert_eq!(report.cause, Some(CloseCause::Drain(1012)));
        assert!(!report.timed_out);
        // The client began the close; wsgate's Close went only to it.
        assert_eq!(report.first, Some(First::Client));
        assert_eq!(report.wsgate_to_client, Some(1012));
        assert_eq!(report.wsgate_to_backend, None);
        assert_eq!(report.client_close.and_then(|c| c.code), Some(1000));
        assert_eq!(report.backend_close.and_then(|c| c.code), Some(1000));
    }

    /// A data frame as a peer sends it: client frames masked.
    fn data(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut v = vec![
            0x81,
            payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 },
        ];
        if let Some(key) = mask {
            v.extend_from_slice(&key);
            v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            v.extend_from_slice(payload);
        }
        v
    }

    /// What the report says of a session the backend ends with Close 1011
    /// after a few messages each way, and of one a drain ends.
    #[test]
    fn the_report_counts_messages_and_says_who_closed_with_which_code() {
        let wait = Duration::from_secs(10);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        use tokio::io::AsyncReadExt;

        // The backend closes first.
        let mut h = start_tunnel(Duration::from_secs(30));
        rt.block_on(async {
            let up = data(b"hi", Some([9, 8, 7, 6]));
            for _ in 0..3 {
                h.client.write_all(&up).await.unwrap();
            }
            let mut got = vec![0u8; up.len() * 3];
            tokio::time::timeout(wait, h.backend.read_exact(&mut got))
                .await
                .expect("three messages reach the backend")
                .unwrap();
            let down = data(b"hello", None);
            h.backend.write_all(&down).await.unwrap();
            let close = encode_close(1011, "boom", None);
            h.backend.write_all(close.as_bytes()).await.unwrap();
            let mut got = vec![0u8; down.len() + close.as_bytes().len()];
            tokio::time::timeout(wait, h.client.read_exact(&mut got))
                .await
                .expect("the message and the Close reach the client")
                .unwrap();
            let reply = encode_close(1011, "", Some([1, 1, 1, 1]));
            h.client.write_all(reply.as_bytes()).await.unwrap();
            // The reply reaches the backend before either side goes.
            let mut got = vec![0u8; reply.as_bytes().len()];
            tokio::time::timeout(wait, h.backend.read_exact(&mut got))
                .await
                .expect("the client's reply reaches the backend")
                .unwrap();
            drop(h.client);
            drop(h.backend);
        });
        let r = h.done.recv_timeout(wait).expect("the tunnel ends");
        assert_eq!(r.first, Some(First::Backend));
        assert_eq!(r.cause, None);
        assert_eq!((r.messages_to_backend, r.messages_to_client), (3, 1));
        assert_eq!(
            r.backend_close,
            Some(PeerClose {
                code: Some(1011),
                reason_len: 4
            })
        );
        assert_eq!(r.client_close.and_then(|c| c.code), Some(1011));
        assert_eq!((r.wsgate_to_client, r.wsgate_to_backend), (None, None));

        // A drain: wsgate begins, 1012 to the client and 1001 to the backend.
        let mut h = start_tunnel(Duration::from_secs(30));
        rt.block_on(async {
            h.signal.request(CloseCause::Drain(1012));
            let mut got = [0u8; 4];
            tokio::time::timeout(wait, h.client.read_exact(&mut got))
                .await
                .expect("the client gets a Close")
                .unwrap();
            assert_eq!(&got[2..], &1012u16.to_be_bytes());
            let reply = encode_close(1012, "", Some([1, 2, 3, 4]));
            h.client.write_all(reply.as_bytes()).await.unwrap();
            let reply = encode_close(1001, "", None);
            h.backend.write_all(reply.as_bytes()).await.unwrap();
            drop(h.client);
            drop(h.backend);
        });
        let r = h.done.recv_timeout(wait).expect("the tunnel ends");
        assert_eq!(r.first, Some(First::Wsgate));
        assert_eq!(r.cause, Some(CloseCause::Drain(1012)));
        assert_eq!(
            (r.wsgate_to_client, r.wsgate_to_backend),
            (Some(1012), Some(1001))
        );
        assert_eq!(r.client_close.and_then(|c| c.code), Some(1012));
        assert_eq!(r.backend_close.and_then(|c| c.code), Some(1001));
        assert_eq!((r.messages_to_backend, r.messages_to_client), (0, 0));
    }
}
