//! One listener's accept loop and what happens to each connection it
//! accepts, up to the HTTP connection: the PROXY header from an allowed
//! balancer (`proxied`), admission under the limits (`routing::admission`),
//! TLS (`tlsconn`), then hyper: HTTP/1.1 with upgrades, or HTTP/2 (`http2`)
//! when ALPN chose `h2` or an `h2c` listener's client sent the preface.
//!
//! wsgate accepts on its own sockets (`listeners` owns them) rather than in
//! pingora's listening service, so that a reload can start and stop one
//! listener while the others run, and so that an accepted connection is a
//! bare tokio `TcpStream` from the start: no wrapper, no duplicated
//! descriptor. Plain HTTP connections are bounded at every step: the
//! request head and the idle time between requests by `timeouts.handshake`,
//! the request body by `timeouts.body` (in `gateway::upstream`), and a
//! response the client stops reading by `timeouts.write` (here, from
//! `gateway::ResponseProgress`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::Listener;
use crate::gateway::{ClientInfo, Gateway};
use crate::routing::listenerid::ListenerId;

/// After accept fails for lack of descriptors, buffers or memory, the
/// pending connection is still queued and the next accept would fail the
/// same way at once: wait this long instead of spinning a core.
const LOCAL_FAULT_PAUSE: Duration = Duration::from_millis(50);

/// How often the accept loop's timer fires while it runs, so that the
/// runtime's timer wheel always holds a deadline this close.
///
/// tokio's time driver remembers, when its thread goes to sleep, the
/// earliest deadline it holds; a timer registered before that deadline
/// wakes the driver (an eventfd write and an extra event in the next
/// `epoll_wait`), even when it is registered on the driver's own thread,
/// which is awake. Every handshake registers such timers (the backend
/// connect timeout, then the tunnel's close deadline), and between them a
/// churning proxy holds only later ones (handshake timeouts, idle
/// tunnels), so each handshake paid that wake-up: 0.89 `write` system
/// calls per plain handshake, counted by strace. With a deadline at most
/// this far ahead always in the wheel, no timer of this length or longer
/// can be the earliest; every default timeout is longer. The cost is one
/// timer firing per second per accept loop.
const TIMER_PACEMAKER: Duration = Duration::from_secs(1);

/// What every connection of one running listener shares.
pub(super) struct Listening {
    /// The listener as started. Its policies are read from the snapshot
    /// (a reload may change them), falling back to these once a reload has
    /// removed it and its last connections are still arriving.
    pub config: Arc<Listener>,
    /// Unique per started listener, so a reload that removes one (or moves
    /// it to another address) closes exactly its connections.
    pub id: Arc<ListenerId>,
    pub gateway: Arc<Gateway>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Accepts until `closing` is set (the listener was removed) or the process
/// shuts down; either way, every connection of this listener is then told
/// through `closing` to finish its request in flight and close.
pub(super) async fn accept_loop(
    listening: Arc<Listening>,
    socket: TcpListener,
    closing: Arc<watch::Sender<bool>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stop = closing.subscribe();
    let mut last_warning: Option<Instant> = None;
    let mut pacemaker = tokio::time::interval(TIMER_PACEMAKER);
    pacemaker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = shutdown.changed() => {
                closing.send_replace(true);
                break;
            }
            accepted = socket.accept() => accepted,
            _ = pacemaker.tick() => continue,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let listening = listening.clone();
                let closing = closing.subscribe();
                // Boxed: the connection's future (TLS, hyper, the gateway's
                // request) is kilobytes, and spawning moves a future by
                // value several times; a box moves once.
                tokio::spawn(Box::pin(listening.connection(tcp, peer, closing)));
            }
            Err(e) if crate::localfault::is_local_resource_error(&e) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(listener = %listening.config.name, error = %e, "cannot accept: out of a local resource; pausing accepts");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(LOCAL_FAULT_PAUSE).await;
            }
            // ECONNABORTED and the like: that one client is gone.
            Err(e) => {
                tracing::debug!(listener = %listening.config.name, error = %e, "accept failed")
            }
        }
    }
    tracing::info!(listener = %listening.config.name, "stopped accepting");
}

impl Listening {
    async fn connection(
        self: Arc<Self>,
        mut tcp: TcpStream,
        peer: SocketAddr,
        closing: watch::Receiver<bool>,
    ) {
        // TCP_NODELAY and keepalive come from the listening socket
        // (`listeners::set_client_options`).
        let routing = self.gateway.routing();
        // The snapshot is held only until the client's address is known (a
        // bounded PROXY header read at most), not for the connection's life.
        let (limits, timeouts, max_header_bytes, local, addr, h2c) = {
            let snapshot = routing.snapshot.load();
            let config = &snapshot.config;
            let listener = config
                .listeners
                .iter()
                .find(|l| l.name == self.config.name)
                .unwrap_or(&self.config);
            // One getsockname, only where a PROXY header toward a backend needs it.
            let sends_proxy = config.pools.iter().any(|p| p.send_proxy_protocol);
            let local = if sends_proxy {
                tcp.local_addr().ok()
            } else {
                None
            };
            // Behind a balancer the client is who its PROXY header says, for
            // every use of the address: limits, client_ip hashing, headers, logs.
            let addr = match listener.proxy_protocol.as_deref() {
                None => peer,
                Some(accept_from) => {
                    let read = super::proxied::client_address(
                        &mut tcp,
                        peer,
                        accept_from,
                        config.timeouts.handshake,
                    );
                    match read.await {
                        Ok(client) => client,
                        Err(e) => {
                            routing
                                .admission
                                .refused_proxy_protocol
                                .fetch_add(1, Relaxed);
                            tracing::debug!(%peer, error = %e, "connection refused: PROXY protocol");
                            return;
                        }
                    }
                }
            };
            (
                config.limits,
                config.timeouts,
                config.limits.max_header_bytes,
                local,
                addr,
                listener.h2c,
            )
        };
        let slot = match routing.admission.admit(addr.ip(), &limits, Instant::now()) {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(client.addr = %addr, ?refusal, "connection refused at a limit");
                return;
            }
        };
        let span = tracing::debug_span!("accept", client.addr = %addr);
        let client = Arc::new(ClientInfo::new(
            addr,
            self.tls.is_some(),
            (self.config.clone(), self.id.clone()),
            local,
            slot,
            routing.clone(),
        ));
        let http = Http1 {
            gateway: self.gateway.clone(),
            handshake_timeout: timeouts.handshake,
            write_timeout: timeouts.write,
            max_header_bytes,
        };
        let h2 = super::http2::Http2 {
            gateway: self.gateway.clone(),
            idle_timeout: timeouts.handshake,
            max_header_bytes,
            limits: limits.http2,
        };
        async move {
            match &self.tls {
                None if h2c && super::http2::sends_preface(&tcp, timeouts.handshake).await => {
                    h2.serve_watched(tcp, client, closing, timeouts.write).await
                }
                None => http.serve(tcp, client, closing).await,
                Some(config) => {
                    let accept = super::tlsconn::accept(tcp, config.clone());
                    match tokio::time::timeout(timeouts.handshake, accept).await {
                        Ok(Ok(tls)) if tls.negotiated_h2() => {
                            h2.serve_watched(tls, client, closing, timeouts.write).await
                        }
                        Ok(Ok(tls)) => http.serve(tls, client, closing).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }
}

/// One client connection's HTTP/1.1 settings, read from the snapshot it was
/// accepted under.
struct Http1 {
    gateway: Arc<Gateway>,
    handshake_timeout: Duration,
    write_timeout: Duration,
    max_header_bytes: usize,
}

impl Http1 {
    async fn serve<I>(self, io: I, client: Arc<ClientInfo>, mut closing: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = self.gateway.clone();
        let info = client.clone();
        let service = service_fn(move |req| {
            client.request_seen.store(true, Relaxed);
            client.in_flight.store(true, Relaxed);
            let (gateway, client) = (gateway.clone(), client.clone());
            async move {
                let (response, upgrade) = gateway.handle(&client, req).await;
                if let Some(upgrade) = upgrade {
                    super::splice::spawn(upgrade);
                }
                // hyper writes the head in the same poll that sees this
                // future finish, before `serve` can act on the flag.
                client.in_flight.store(false, Relaxed);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        // hyper's header timer also runs while a kept-alive connection waits
        // for its next request, so it is the keep-alive idle timeout too.
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.handshake_timeout)
            .max_buf_size(self.max_header_bytes)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            }
            () = unread_response(&info, self.write_timeout) => {
                tracing::debug!(timeout = ?self.write_timeout, "client stopped reading the response; closed");
            }
            // The guard wait_for returns must not live into the arm's awaits.
            () = async { drop(closing.wait_for(|closing| *closing).await) } => {
                // The listener is going away (removed, or the process shuts
                // down or hands over). A connection that has not sent its
                // first request yet (accepted in the last moment) would be
                // closed by hyper as idle, and a request being answered
                // would have its 101 turned into `Connection: close` by a
                // graceful shutdown: the client would see a failure for
                // nothing it did. So first let the first request arrive and
                // the one in flight be answered; hyper's header timer bounds
                // the wait for a head, the gateway's timeouts the answer.
                let finish = async {
                    let answered = std::future::poll_fn(|cx| {
                        let polled = conn.as_mut().poll(cx);
                        let idle =
                            info.request_seen.load(Relaxed) && !info.in_flight.load(Relaxed);
                        if polled.is_ready() || idle {
                            std::task::Poll::Ready(polled.is_ready())
                        } else {
                            std::task::Poll::Pending
                        }
                    });
                    if answered.await {
                        return;
                    }
                    // Then close; an upgraded tunnel has been handed off and
                    // closes itself (with 1001, from the control plane).
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                };
                // The write timeout still holds: a client that stops reading
                // must not keep a closing listener's connection forever.
                tokio::select! {
                    () = finish => {}
                    () = unread_response(&info, self.write_timeout) => {
                        tracing::debug!("client stopped reading while closing; closed");
                    }
                }
            }
        }
    }
}

impl super::http2::Http2 {
    /// Serves the connection as HTTP/2 under the write timeout: a client
    /// that stops reading the responses in flight is cut, as on HTTP/1.1.
    async fn serve_watched<I>(
        self,
        io: I,
        client: Arc<ClientInfo>,
        closing: watch::Receiver<bool>,
        write_timeout: Duration,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        tokio::select! {
            () = self.serve(io, client.clone(), closing) => {}
            () = unread_response(&client, write_timeout) => {
                tracing::debug!(timeout = ?write_timeout, "HTTP/2 client stopped reading its responses; closed");
            }
        }
    }
}

/// Resolves once the response in flight on `client`'s connection has made
/// no progress for `timeout` while its backend had data ready: the client
/// is not reading. Checked once per `timeout`, so a stall is cut after
/// between one and two timeouts.
async fn unread_response(client: &ClientInfo, timeout: Duration) {
    client.response.first_response().await;
    let mut last = None;
    loop {
        tokio::time::sleep(timeout).await;
        let now = client.response.stall_token();
        if now.is_some() && now == last {
            return;
        }
        last = now;
    }
}
