//! After the 101: take both connections back out of hyper, register the
//! tunnel so the control plane can close it, and run it on its own task.
//!
//! Both connections were opened by wsgate (the client's by `server`, the
//! backend's by `upstream`), so their concrete types are known. Taking
//! them back out of hyper's `Upgraded` removes a boxed trait object from
//! every read and write, and a bare TCP socket splits into halves without
//! the lock `tokio::io::split` takes. The tunnel gets a task of its own,
//! spawned once the types are known, so that task holds exactly one
//! tunnel's state and nothing of the handshake.
//!
//! A WebSocket over HTTP/2 is one stream of a connection hyper keeps
//! serving, so it cannot be taken out: its tunnel runs on the `Upgraded`
//! stream itself, split into halves.

use std::future::Future;
use std::sync::Arc;

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::tlsconn::TlsConn;
use crate::gateway::{BackendSide, TunnelStart, Upgrade};
use crate::observe::accesslog::Entry;
use crate::observe::record::{version_name, WsSession};
use crate::routing::registry::ConnGuard;
use crate::tunnel::{self, CloseSignal, Early, Side, TunnelConfig, TunnelReport};

/// Spawns the task that waits for both upgrades, then the tunnel.
pub fn spawn(upgrade: Upgrade) {
    let Upgrade {
        client,
        backend,
        tunnel,
        span,
    } = upgrade;
    tokio::spawn(Box::pin(start(client, backend, tunnel).instrument(span)));
}

/// Waits for the client's upgrade to complete (hyper has written the 101),
/// then spawns the tunnel.
async fn start(client: OnUpgrade, backend: BackendSide, ctx: TunnelStart) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "the client's upgrade did not complete");
            return;
        }
    };
    // A rename's last connections register with the successor.
    let listener = ctx.client.listener_id.current();
    let (guard, signal) = ctx.conns.register(ctx.key_hash, listener);
    // The backend may have stopped taking connections between routing and
    // now; such a late arrival is closed at once rather than stranded.
    let now = ctx.routing.snapshot.load();
    let first = ctx.overflowed_from.as_ref().map(|f| f.key());
    if let Some(cause) = now.close_on_arrival(ctx.conns.key(), ctx.key_hash, listener, first) {
        signal.request(cause);
    }
    drop(now);
    ctx.routing
        .observe
        .stats
        .started(&ctx.client.listener.name, version_name(ctx.version));
    let end = End {
        client: ctx.hold,
        guard,
        signal,
        session: ctx.session,
    };
    if let Err(e) = spawn_tunnel(client, backend, ctx.cfg, end) {
        tracing::error!(error = e, "cannot splice the upgraded connections");
    }
}

/// Keeps the tunnel registered while it runs, and records how it ended.
struct End {
    /// What the tunnel keeps of its client connection: its slot under the
    /// connection limits (a WebSocket over HTTP/2 has one of its own), its
    /// listener and HTTP version (not the whole `ClientInfo`: see
    /// `gateway::ClientHold`).
    client: Arc<crate::gateway::ClientHold>,
    /// Keeps the tunnel registered; names its pool and backend.
    guard: ConnGuard,
    signal: Arc<CloseSignal>,
    /// The access line's facts from the handshake (access log on).
    session: Option<Box<WsSession>>,
}

impl End {
    fn finish(&mut self, report: TunnelReport) {
        if let Some(cause) = report.cause {
            self.client.routing.registry.closes.record(cause);
        }
        let key = self.guard.backend();
        let version = version_name(self.client.version);
        let observe = &self.client.routing.observe;
        observe.stats.ended(
            &self.client.listener.name,
            version,
            &key.pool,
            &key.id,
            &report,
        );
        if let Some(session) = self.session.take() {
            // The format in force now: a reload may have changed it, or
            // turned the log off.
            let snapshot = self.client.routing.snapshot.load();
            if let Some(log) = &snapshot.config.access_log {
                observe.access_log.send(Entry::Ws {
                    format: log.format,
                    session,
                    pool: key.pool.clone(),
                    backend: key.id.clone(),
                    report,
                });
            }
        }
        tracing::debug!(
            cause = ?report.cause,
            first = ?report.first,
            bytes_to_backend = report.bytes_to_backend,
            bytes_to_client = report.bytes_to_client,
            messages_to_backend = report.messages_to_backend,
            messages_to_client = report.messages_to_client,
            client_close = ?report.client_close,
            backend_close = ?report.backend_close,
            wsgate_to_client = ?report.wsgate_to_client,
            wsgate_to_backend = ?report.wsgate_to_backend,
            duration_ms = report.duration.as_millis() as u64,
            discarded_frames = report.discarded_frames,
            timed_out = report.timed_out,
            "tunnel closed"
        );
    }
}

fn spawn_tunnel(
    client: Upgraded,
    backend: BackendSide,
    cfg: TunnelConfig,
    end: End,
) -> Result<(), &'static str> {
    let rest = Rest {
        backend_early: Early::new(backend.early),
        backend_tcp: backend.socket,
        cfg,
        end,
    };
    let client = match client.downcast::<TokioIo<TcpStream>>() {
        Ok(plain) => {
            let client_early = Early::new(plain.read_buf);
            spawn_in_current_span(plain_tunnel(plain.io.into_inner(), client_early, rest));
            return Ok(());
        }
        Err(other) => other,
    };
    let tls = match client.downcast::<TokioIo<TlsConn>>() {
        Ok(tls) => tls,
        // An HTTP/2 stream (RFC 8441): it stays inside hyper, whose
        // connection task carries its DATA frames.
        Err(stream) => {
            let (read, write) = tokio::io::split(TokioIo::new(stream));
            spawn_in_current_span(stream_tunnel(read, write, rest));
            return Ok(());
        }
    };
    let client_early = Early::new(tls.read_buf);
    // A TLS session reads and writes through one state; this split takes an
    // uncontended lock per operation (both halves run in one task). Split
    // here, not in the task: a session moved inside the task would leave
    // its state behind in the task's own.
    let (read, write) = tokio::io::split(tls.io.into_inner());
    spawn_in_current_span(tls_tunnel(read, write, client_early, rest));
    Ok(())
}

/// The task of a plain-ws tunnel. Its size is most of an idle connection's
/// memory: see the test `tunnel_tasks_fit_their_allocation`.
// A plain fn around an async block, as `tunnel::run` is: its size is
// measured by the test below, and an async fn may keep second copies.
#[allow(clippy::manual_async_fn)]
fn plain_tunnel(
    mut client_tcp: TcpStream,
    client_early: Early,
    mut rest: Rest,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let (read, write) = client_tcp.split();
        let mut client = Side::new(read, write, client_early);
        run_to_end(&mut client, &mut rest).await;
    }
}

/// The task of a wss tunnel.
// Not an async fn: see `plain_tunnel`.
#[allow(clippy::manual_async_fn)]
fn tls_tunnel(
    read: ReadHalf<TlsConn>,
    write: WriteHalf<TlsConn>,
    client_early: Early,
    mut rest: Rest,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let mut client = Side::new(read, write, client_early);
        run_to_end(&mut client, &mut rest).await;
    }
}

/// The task of a WebSocket over an HTTP/2 stream (RFC 8441): the stream
/// stays inside hyper, whose connection task carries its DATA frames.
// Not an async fn: see `plain_tunnel`.
#[allow(clippy::manual_async_fn)]
fn stream_tunnel(
    read: ReadHalf<TokioIo<Upgraded>>,
    write: WriteHalf<TokioIo<Upgraded>>,
    mut rest: Rest,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let mut client = Side::new(read, write, Early::default());
        run_to_end(&mut client, &mut rest).await;
    }
}

/// Spawns `tunnel` inside the request's span when that span is enabled
/// (debug logging), so the tunnel's own log lines carry the backend and key.
/// Otherwise the span is empty, and wrapping every poll of every tunnel in
/// it would cost 48 bytes per idle connection and a little CPU per message.
fn spawn_in_current_span(tunnel: impl Future<Output = ()> + Send + 'static) {
    let span = tracing::Span::current();
    if span.is_disabled() {
        tokio::spawn(tunnel);
    } else {
        tokio::spawn(tunnel.instrument(span));
    }
}

/// Everything a tunnel task owns besides its client connection.
struct Rest {
    backend_tcp: TcpStream,
    backend_early: Early,
    cfg: TunnelConfig,
    end: End,
}

/// Runs the tunnel between `client` and the backend's socket, then records
/// how it ended. Arguments are references into the spawned task's state:
/// see `tunnel::run` on why nothing is passed by value.
async fn run_to_end<CR, CW>(client: &mut Side<CR, CW>, rest: &mut Rest)
where
    CR: tokio::io::AsyncRead + Unpin,
    CW: tokio::io::AsyncWrite + Unpin,
{
    let (read, write) = rest.backend_tcp.split();
    let mut backend = Side::new(read, write, std::mem::take(&mut rest.backend_early));
    let report = tunnel::run(client, &mut backend, &rest.cfg, &rest.end.signal).await;
    rest.end.finish(report);
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    // The sizes of what the tunnel functions return, without calling them.
    fn returned3<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn returned4<A, B, C, D, F: Future>(_: fn(A, B, C, D) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An idle tunnel is its task and two socket registrations. tokio 1.x
    /// allocates a task as one cell, aligned to 128 bytes on x86-64: a
    /// 32-byte header, the scheduler handle and task id (16), the stage's
    /// tag (8), the future, and a 48-byte trailer. A plain-ws future of up
    /// to 1,176 bytes makes a 1,280-byte cell (jemalloc's size class of
    /// the same size); 1,177 makes it 1,408, which jemalloc rounds up to
    /// 1,536: 256 bytes more for every idle connection. Growing the
    /// tunnel's state past this bound is a decision to make with the
    /// idle-memory figures in BENCHMARKS.md, not an accident.
    #[test]
    fn tunnel_tasks_fit_their_allocation() {
        let plain = returned3(super::plain_tunnel);
        assert!(plain <= 1176, "plain-ws tunnel future is {plain} bytes");
        let tls = returned4(super::tls_tunnel);
        assert!(tls <= 1176, "wss tunnel future is {tls} bytes");
    }
}
