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
use tokio::net::TcpStream;
use tracing::Instrument;

use super::tlsconn::TlsConn;
use crate::gateway::{BackendSide, TunnelStart, Upgrade};
use crate::routing::registry::ConnGuard;
use crate::routing::Routing;
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
    if let Some(cause) = now.close_on_arrival(ctx.conns.key(), ctx.key_hash, listener) {
        signal.request(cause);
    }
    drop(now);
    let end = End {
        routing: ctx.routing,
        _client: ctx.client,
        _stream_slot: ctx.stream_slot,
        _guard: guard,
        signal,
    };
    if let Err(e) = spawn_tunnel(client, backend, ctx.cfg, end) {
        tracing::error!(error = e, "cannot splice the upgraded connections");
    }
}

/// Keeps the tunnel registered while it runs, and records how it ended.
struct End {
    routing: Arc<Routing>,
    /// The client connection's slot under the connection limits.
    _client: Arc<crate::gateway::ClientInfo>,
    /// A WebSocket over HTTP/2's own slot (`gateway::TunnelStart`).
    _stream_slot: Option<crate::routing::admission::Slot>,
    _guard: ConnGuard,
    signal: Arc<CloseSignal>,
}

impl End {
    fn finish(&self, report: TunnelReport) {
        if let Some(cause) = report.cause {
            self.routing.registry.closes.record(cause);
        }
        tracing::debug!(
            cause = ?report.cause,
            bytes_to_backend = report.bytes_to_backend,
            bytes_to_client = report.bytes_to_client,
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
    let mut rest = Rest {
        backend_early: Early::new(backend.early),
        backend_tcp: backend.socket,
        cfg,
        end,
    };
    let client = match client.downcast::<TokioIo<TcpStream>>() {
        Ok(plain) => {
            let client_early = Early::new(plain.read_buf);
            let mut client_tcp = plain.io.into_inner();
            spawn_in_current_span(async move {
                let (read, write) = client_tcp.split();
                let mut client = Side::new(read, write, client_early);
                run_to_end(&mut client, &mut rest).await;
            });
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
            spawn_in_current_span(async move {
                let mut client = Side::new(read, write, Early::default());
                run_to_end(&mut client, &mut rest).await;
            });
            return Ok(());
        }
    };
    let client_early = Early::new(tls.read_buf);
    // A TLS session reads and writes through one state; this split takes an
    // uncontended lock per operation (both halves run in one task). Split
    // here, not in the task: a session moved inside the task would leave
    // its state behind in the task's own.
    let (read, write) = tokio::io::split(tls.io.into_inner());
    spawn_in_current_span(async move {
        let mut client = Side::new(read, write, client_early);
        run_to_end(&mut client, &mut rest).await;
    });
    Ok(())
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
