//! The process: pingora's `Server` runs one listening service per
//! configured listener, each with our own [`ServerApp`] that terminates TLS
//! (`tlsconn`, rustls' unbuffered API) and serves HTTP/1.1 with upgrades (hyper).
//!
//! We use pingora for the process lifecycle (listening sockets, graceful
//! shutdown on SIGTERM, listening-socket handoff on upgrade), not its
//! `ProxyHttp`, whose upgraded-session loop cannot inject a frame or be
//! cancelled from outside. Things pingora does not do for us, done here:
//! report a port already in use (pingora retries `bind` silently), resolve
//! port 0 so tests can ask for any free port, take each accepted socket out
//! of its stream wrapper (`socket`), and derive its shutdown grace period
//! from our close timeout.
//!
//! Every accepted connection is admitted first (`routing::admission`: the
//! process and per-IP limits); one over a limit is closed at once, so a
//! flood gets a prompt answer instead of a full backlog, and the accept
//! loop never waits on it. Admitted connections hold their slot until they
//! end, tunnel included. Plain HTTP connections are bounded at every step:
//! the request head and the idle time between requests by
//! `timeouts.handshake`, the request body by `timeouts.body` (in
//! `gateway::upstream`), and a response the client stops reading by
//! `timeouts.write` (here, from `gateway::ResponseProgress`).

use std::future::Future;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora_core::apps::ServerApp;
use pingora_core::listeners::{ListenerConfig, TcpSocketOptions};
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::protocols::Stream;
use pingora_core::protocols::TcpKeepalive;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::listening::Service;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::tls;
use crate::config::Config;
use crate::gateway::{ClientInfo, Gateway};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener `{name}`: {address} is already in use (is another wsgate running?)")]
    AddressInUse { name: String, address: SocketAddr },
    #[error("listener `{name}`: cannot listen on {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener `{name}`: {source}")]
    Tls { name: String, source: tls::TlsError },
    #[error("listener `{name}`: port 0 cannot be used with --upgrade (the new process must take over a known port)")]
    UpgradeNeedsPort { name: String },
}

/// Serves one listener's connections.
struct ListenerApp {
    name: Arc<str>,
    gateway: Arc<Gateway>,
    tls: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
    max_header_bytes: usize,
}

#[async_trait]
impl ServerApp for ListenerApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let tcp = match super::socket::take_over(&stream) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::debug!(error = %e, "cannot take over an accepted connection; dropped");
                return None;
            }
        };
        // pingora's wrapper (digests, timing, tracing hooks) would cost
        // memory and CPU on every idle tunnel; the duplicate socket above
        // now owns the connection.
        drop(stream);
        let Ok(peer) = tcp.peer_addr() else {
            tracing::debug!("connection without a peer address; dropped");
            return None;
        };
        let mut tcp = tcp;
        let routing = self.gateway.routing();
        // The snapshot is held only until the client's address is known (a
        // bounded PROXY header read at most), not for the connection's life.
        let (limits, local, addr) = {
            let snapshot = routing.snapshot.load();
            let accept_from = snapshot
                .config
                .listeners
                .iter()
                .find(|l| *l.name == *self.name)
                .and_then(|l| l.proxy_protocol.as_deref());
            // One getsockname, only where a PROXY header toward a backend needs it.
            let sends_proxy = snapshot.config.pools.iter().any(|p| p.send_proxy_protocol);
            let local = if sends_proxy {
                tcp.local_addr().ok()
            } else {
                None
            };
            // Behind a balancer the client is who its PROXY header says, for
            // every use of the address: limits, client_ip hashing, headers, logs.
            let addr = match accept_from {
                None => peer,
                Some(accept_from) => {
                    let read = super::proxied::client_address(
                        &mut tcp,
                        peer,
                        accept_from,
                        self.handshake_timeout,
                    );
                    match read.await {
                        Ok(client) => client,
                        Err(e) => {
                            routing
                                .admission
                                .refused_proxy_protocol
                                .fetch_add(1, Relaxed);
                            tracing::debug!(%peer, error = %e, "connection refused: PROXY protocol");
                            return None;
                        }
                    }
                }
            };
            (snapshot.config.limits, local, addr)
        };
        let slot = match routing
            .admission
            .admit(addr.ip(), &limits, std::time::Instant::now())
        {
            Ok(slot) => slot,
            Err(refusal) => {
                tracing::debug!(client.addr = %addr, ?refusal, "connection refused at a limit");
                return None;
            }
        };
        let span = tracing::debug_span!("accept", client.addr = %addr);
        let client = Arc::new(ClientInfo::new(
            addr,
            self.tls.is_some(),
            self.name.clone(),
            local,
            slot,
        ));
        let shutdown = shutdown.clone();
        async move {
            match &self.tls {
                None => self.serve(tcp, client, shutdown).await,
                Some(config) => {
                    let accept = super::tlsconn::accept(tcp, config.clone());
                    match tokio::time::timeout(self.handshake_timeout, accept).await {
                        Ok(Ok(tls)) => self.serve(tls, client, shutdown).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
            }
        }
        .instrument(span)
        .await;
        None
    }
}

impl ListenerApp {
    async fn serve<I>(&self, io: I, client: Arc<ClientInfo>, mut shutdown: ShutdownWatch)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = self.gateway.clone();
        let info = client.clone();
        let service = service_fn(move |req| {
            client.request_seen.store(true, Relaxed);
            let (gateway, client) = (gateway.clone(), client.clone());
            async move {
                let (response, upgrade) = gateway.handle(&client, req).await;
                if let Some(upgrade) = upgrade {
                    super::splice::spawn(upgrade);
                }
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
        let write_timeout = self.gateway.routing().snapshot.load().config.timeouts.write;
        tokio::select! {
            result = &mut conn => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
            }
            () = unread_response(&info, write_timeout) => {
                tracing::debug!(timeout = ?write_timeout, "client stopped reading the response; closed");
            }
            _ = shutdown.changed() => {
                // A connection accepted just before the shutdown (during an
                // upgrade handoff, say) has not sent its request yet, and
                // hyper would close it as idle: the client would see its
                // connection dropped for nothing it did. Serve that first
                // request (bounded by the handshake timeout), then close.
                if !info.request_seen.load(Relaxed) {
                    let first = std::future::poll_fn(|cx| {
                        let polled = conn.as_mut().poll(cx);
                        if polled.is_ready() || info.request_seen.load(Relaxed) {
                            std::task::Poll::Ready(polled.is_ready())
                        } else {
                            std::task::Poll::Pending
                        }
                    });
                    if let Ok(true) = tokio::time::timeout(self.handshake_timeout, first).await {
                        return;
                    }
                }
                // Finish the request in flight, then close; upgraded
                // tunnels have already been handed off and close themselves.
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
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

/// Keepalive on accepted sockets (set by pingora at accept), so a client
/// that vanished without a FIN (a phone that lost its network) is found in
/// about two minutes rather than at the idle timeout.
fn client_keepalive() -> TcpKeepalive {
    TcpKeepalive {
        idle: Duration::from_secs(60),
        interval: Duration::from_secs(15),
        count: 4,
        user_timeout: Duration::ZERO,
    }
}

/// A listener after its address is checked and port 0 resolved.
pub struct BoundListener {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The handle that replaces this listener's certificates on reload.
    pub certificates: Option<Arc<super::certs::Certificates>>,
}

/// Checks each listener's address is free (resolving port 0 to a concrete
/// free port) and builds its TLS acceptor. Done before pingora starts so that
/// errors are reported clearly and the process exits instead of retrying.
pub fn prepare_listeners(
    config: &Config,
    upgrade: bool,
) -> Result<Vec<BoundListener>, ServerError> {
    let mut out = Vec::new();
    for l in &config.listeners {
        let (tls, certificates) = match &l.tls {
            Some(t) => {
                let (config, certs) =
                    super::certs::server_config(t).map_err(|source| ServerError::Tls {
                        name: l.name.clone(),
                        source,
                    })?;
                (Some(config), Some(certs))
            }
            None => (None, None),
        };
        if upgrade {
            // The old process still holds the port and hands it over.
            if l.address.port() == 0 {
                return Err(ServerError::UpgradeNeedsPort {
                    name: l.name.clone(),
                });
            }
            out.push(BoundListener {
                name: l.name.clone(),
                address: l.address,
                tls,
                certificates,
            });
            continue;
        }
        let probe = TcpListener::bind(l.address).map_err(|source| match source.kind() {
            std::io::ErrorKind::AddrInUse => ServerError::AddressInUse {
                name: l.name.clone(),
                address: l.address,
            },
            _ => ServerError::Bind {
                name: l.name.clone(),
                address: l.address,
                source,
            },
        })?;
        let address = probe.local_addr().map_err(|source| ServerError::Bind {
            name: l.name.clone(),
            address: l.address,
            source,
        })?;
        // Released for pingora to bind; the window is a few microseconds.
        drop(probe);
        out.push(BoundListener {
            name: l.name.clone(),
            address,
            tls,
            certificates,
        });
    }
    Ok(out)
}

/// Runs pingora's server with one service per listener until the process
/// is told to stop, then exits. `announce` lines (the admin API's, say) are
/// printed with the listeners' once each accepts.
pub fn serve(
    config: &Config,
    listeners: Vec<BoundListener>,
    gateway: Arc<Gateway>,
    upgrade: bool,
    mut announce: Vec<(SocketAddr, String)>,
) -> ! {
    let mut conf = ServerConf {
        threads: config.runtime.threads,
        // On SIGTERM the control plane closes every tunnel with 1001 spread
        // over the shutdown window, and each close may take the close
        // timeout; pingora's default of 300 s would keep an idle process
        // alive for five minutes.
        grace_period_seconds: Some(
            config.runtime.shutdown_window.as_secs() + config.timeouts.close.as_secs() + 1,
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.runtime.upgrade_sock.display().to_string(),
        work_stealing: config.runtime.work_stealing,
        ..ServerConf::default()
    };
    let pid = std::process::id();
    conf.pid_file = std::env::temp_dir()
        .join(format!("wsgate-{pid}.pid"))
        .display()
        .to_string();
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    for l in listeners {
        let scheme = if l.tls.is_some() { "https" } else { "http" };
        announce.push((
            l.address,
            format!("wsgate: listener {} on {scheme}://{}", l.name, l.address),
        ));
        let app = ListenerApp {
            name: Arc::from(l.name.as_str()),
            gateway: gateway.clone(),
            tls: l.tls,
            handshake_timeout: config.timeouts.handshake,
            max_header_bytes: config.limits.max_header_bytes,
        };
        let mut service = Service::new(format!("listener {}", l.name), app);
        // No pingora-side buffering: idle connections must hold no buffers,
        // and the tunnel flushes every write itself.
        let mut options = TcpSocketOptions::default();
        options.tcp_keepalive = Some(client_keepalive());
        service.add_listener(
            ListenerConfig::tcp(l.address.to_string())
                .tcp_socket_options(options)
                .l4_buffer(L4BufferSettings::unbuffered()),
        );
        server.add_service(service);
    }
    server.bootstrap();
    std::thread::spawn(move || announce_when_accepting(announce));
    server.run_forever()
}

/// Prints each listener's line once it accepts connections. pingora binds
/// inside its own runtime with no readiness signal, and scripts and tests
/// read these lines to know when (and on which port) to connect.
fn announce_when_accepting(listeners: Vec<(SocketAddr, String)>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut stdout = std::io::stdout();
    for (address, line) in listeners {
        let mut probe = address;
        if probe.ip().is_unspecified() {
            probe.set_ip(match probe {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        while std::net::TcpStream::connect_timeout(&probe, Duration::from_millis(200)).is_err() {
            if std::time::Instant::now() > deadline {
                tracing::error!(%address, "listener is not accepting connections after 30 s");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    }
}
