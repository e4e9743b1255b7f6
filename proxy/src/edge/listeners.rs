//! The running listeners: which sockets accept, the ones the process starts
//! with and the ones a reload adds or removes ([`ListenerSet`]), and the
//! pingora service that runs their accept loops on the worker runtime
//! ([`EdgeService`]).
//!
//! pingora fixes its listening services when the server starts, so wsgate
//! binds and accepts itself and uses pingora for what it does well: the
//! worker runtime, the shutdown watch, and the table of listening
//! descriptors it hands to the next process on `run --upgrade`. Every
//! listener started here puts a duplicate of its socket in that table, and
//! a stopped one takes it out, so an upgrade after a reload hands over
//! exactly the listeners that run.
//!
//! A reload changes listeners in two steps around the new snapshot:
//! [`ListenerSet::prepare`] binds every new socket first (one that cannot
//! bind fails the whole reload, and nothing changes), then, once the
//! snapshot that names them is published, [`ListenerSet::commit`] stops the
//! removed listeners and starts the new ones. Stopping one sets its
//! `closing` watch: its plain HTTP connections finish their request and
//! close; its tunnels are closed by the control task, paced, through the
//! registry (they carry the listener's id). A listener whose address is
//! given to another in the same reload (a rename) hands its socket over,
//! so the port never refuses a connection in between.
//!
//! Only the control task and the service's start touch the lock here, a
//! few times per reload; no connection does.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, IntoRawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use tokio::sync::watch;

use super::accept::{accept_loop, Listening};
use super::certs::Certificates;
use super::tls;
use crate::config::{Config, Listener};
use crate::gateway::Gateway;
use crate::routing::listenerid::ListenerId;

/// The kernel caps it at `net.core.somaxconn`; a reconnect storm after a
/// deploy should queue, not be refused.
const BACKLOG: i32 = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
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
    #[error("the listeners have not started yet; reload again in a moment")]
    NotStarted,
}

/// A listener ready to start: its TLS acceptor built and, unless it is to
/// be taken over from the previous process, its socket bound.
pub struct NewListener {
    config: Listener,
    /// The stopping listener whose socket this one takes (a rename).
    takes_over: Option<String>,
    address: SocketAddr,
    /// None: take it from the descriptors the previous process handed over
    /// (`run --upgrade`), or bind it if that process did not have it.
    socket: Option<std::net::TcpListener>,
    tls: Option<Arc<rustls::ServerConfig>>,
    certificates: Option<Arc<Certificates>>,
}

impl NewListener {
    /// Builds `config`'s TLS acceptor and binds its socket (resolving port 0
    /// to a free port); with `upgrade`, the socket comes later, from the
    /// running process. Errors are reported here, before anything runs.
    pub fn bind(config: &Listener, upgrade: bool) -> Result<NewListener, ListenerError> {
        if upgrade {
            if config.address.port() == 0 {
                return Err(ListenerError::UpgradeNeedsPort {
                    name: config.name.clone(),
                });
            }
            return NewListener::with_socket(config, None);
        }
        NewListener::with_socket(config, Some(bind_socket(config)?))
    }

    /// Builds `config`'s TLS acceptor around `socket` (bound already).
    fn with_socket(
        config: &Listener,
        socket: Option<std::net::TcpListener>,
    ) -> Result<NewListener, ListenerError> {
        let (tls, certificates) = match &config.tls {
            Some(t) => {
                let (server, certs) =
                    super::certs::server_config(t).map_err(|source| ListenerError::Tls {
                        name: config.name.clone(),
                        source,
                    })?;
                (Some(server), Some(certs))
            }
            None => (None, None),
        };
        let address = match &socket {
            Some(s) => s.local_addr().map_err(|source| ListenerError::Bind {
                name: config.name.clone(),
                address: config.address,
                source,
            })?,
            None => config.address,
        };
        Ok(NewListener {
            config: config.clone(),
            takes_over: None,
            address,
            socket,
            tls,
            certificates,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The handle that replaces this listener's certificates on reload.
    pub fn certificates(&self) -> Option<Arc<Certificates>> {
        self.certificates.clone()
    }
}

/// Keepalive (a client that vanished without a FIN, a phone that lost its
/// network, is found in about two minutes rather than at the idle timeout)
/// and no Nagle delay for small WebSocket messages. Set on the listening
/// socket: Linux copies both to every socket it accepts, which saves five
/// system calls per connection (`tests::accepted_sockets_inherit_...`).
fn set_client_options(socket: socket2::SockRef<'_>) -> std::io::Result<()> {
    socket.set_tcp_nodelay(true)?;
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(std::time::Duration::from_secs(60))
            .with_interval(std::time::Duration::from_secs(15))
            .with_retries(4),
    )
}

/// `SO_REUSEADDR` (so a restart does not wait out TIME_WAIT), the client
/// options, bound, listening, non-blocking.
fn bind_socket(config: &Listener) -> Result<std::net::TcpListener, ListenerError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let address = config.address;
    let error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AddrInUse => ListenerError::AddressInUse {
            name: config.name.clone(),
            address,
        },
        _ => ListenerError::Bind {
            name: config.name.clone(),
            address,
            source,
        },
    };
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(error)?;
    socket.set_reuse_address(true).map_err(error)?;
    set_client_options(socket2::SockRef::from(&socket)).map_err(error)?;
    socket.bind(&address.into()).map_err(error)?;
    socket.listen(BACKLOG).map_err(error)?;
    socket.set_nonblocking(true).map_err(error)?;
    Ok(socket.into())
}

/// What a reload's listener changes will do, sockets already bound.
pub struct Plan {
    stop: Vec<String>,
    start: Vec<NewListener>,
}

/// What [`ListenerSet::commit`] did, for the control task and the reload's notes.
#[derive(Default)]
pub struct Committed {
    /// Name and id of each listener that stopped accepting.
    pub stopped: Vec<(String, u32)>,
    pub started: Vec<Started>,
    /// Each listener that was bound but could not start, with why.
    pub failed: Vec<String>,
}

/// A listener a reload started.
pub struct Started {
    pub name: String,
    /// `http://` or `https://` and the bound address.
    pub url: String,
    /// Its certificate handle, for rotation.
    pub certificates: Option<Arc<Certificates>>,
}

/// What the running process gives the listeners once pingora starts them.
struct Attached {
    runtime: tokio::runtime::Handle,
    shutdown: ShutdownWatch,
    fds: Option<ListenFds>,
    gateway: Arc<Gateway>,
}

struct Running {
    id: Arc<ListenerId>,
    config: Listener,
    /// A duplicate of the accept loop's socket, to hand over to a listener
    /// that takes this one's address in a reload.
    socket: std::net::TcpListener,
    /// The key of its descriptor in pingora's handover table.
    fd_key: String,
    closing: Arc<watch::Sender<bool>>,
}

#[derive(Default)]
struct Inner {
    attached: Option<Attached>,
    /// Started at attach: the listeners of the config the process began with.
    initial: Vec<NewListener>,
    running: BTreeMap<String, Running>,
    next_id: u32,
}

/// The set of running listeners, shared by the control task (reloads) and
/// the edge service (start).
#[derive(Default)]
pub struct ListenerSet {
    inner: Mutex<Inner>,
}

impl ListenerSet {
    pub fn new(initial: Vec<NewListener>) -> Arc<ListenerSet> {
        Arc::new(ListenerSet {
            inner: Mutex::new(Inner {
                initial,
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the maps whole, so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The descriptor keys of the initial listeners, which pingora keeps
    /// from the previous process (it closes any other it was handed).
    fn initial_keys(&self) -> Vec<String> {
        self.lock()
            .initial
            .iter()
            .map(|l| l.address.to_string())
            .collect()
    }

    /// Starts the initial listeners on the runtime pingora gave the edge.
    /// One that cannot get its socket ends the process: it has nothing to
    /// serve with, and the previous process (on an upgrade) is still up.
    fn attach(&self, attached: Attached) {
        let mut inner = self.lock();
        let initial = std::mem::take(&mut inner.initial);
        inner.attached = Some(attached);
        for mut l in initial {
            if l.socket.is_none() {
                match inherited_or_bound(&inner, &l) {
                    Ok(socket) => l.socket = Some(socket),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a listener");
                        eprintln!("wsgate: {e}");
                        std::process::exit(1);
                    }
                }
            }
            if let Err(e) = inner.start(l) {
                tracing::error!(error = %e, "cannot start a listener");
                eprintln!("wsgate: {e}");
                std::process::exit(1);
            }
        }
    }

    /// Whether `config` names a listener that is not running (one that
    /// failed to start): the next reload starts it, listener change or not.
    pub fn missing(&self, config: &Config) -> bool {
        let inner = self.lock();
        inner.attached.is_some()
            && config
                .listeners
                .iter()
                .any(|l| !inner.running.contains_key(&l.name))
    }

    /// Binds the sockets of the listeners `new` adds or changes (address,
    /// TLS or not), so the reload can fail before anything changes.
    pub fn prepare(&self, new: &Config) -> Result<Plan, ListenerError> {
        let inner = self.lock();
        if inner.attached.is_none() {
            return Err(ListenerError::NotStarted);
        }
        let keeps = |r: &Running| {
            new.listeners
                .iter()
                .any(|l| l.name == r.config.name && r.config.same_socket(l))
        };
        let stop: Vec<String> = inner
            .running
            .values()
            .filter(|r| !keeps(r))
            .map(|r| r.config.name.clone())
            .collect();
        let mut start = Vec::new();
        for l in &new.listeners {
            if inner
                .running
                .get(&l.name)
                .is_some_and(|r| r.config.same_socket(l))
            {
                continue;
            }
            // A stopping listener's socket, when the new one takes its
            // address: bound already, so no connection is refused.
            let handover = (l.address.port() != 0)
                .then(|| {
                    inner
                        .running
                        .values()
                        .find(|r| r.config.address == l.address && stop.contains(&r.config.name))
                })
                .flatten();
            let listener = match handover {
                Some(r) => {
                    let socket = r.socket.try_clone().map_err(|source| ListenerError::Bind {
                        name: l.name.clone(),
                        address: l.address,
                        source,
                    })?;
                    NewListener {
                        takes_over: Some(r.config.name.clone()),
                        ..NewListener::with_socket(l, Some(socket))?
                    }
                }
                None => NewListener::bind(l, false)?,
            };
            start.push(listener);
        }
        Ok(Plan { stop, start })
    }

    /// Stops the listeners `plan` removes and starts the ones it adds.
    pub fn commit(&self, plan: Plan) -> Committed {
        let mut inner = self.lock();
        let mut done = Committed::default();
        let mut stopped = BTreeMap::new();
        for name in plan.stop {
            if let Some(r) = inner.running.remove(&name) {
                r.closing.send_replace(true);
                inner.forget_fd(&r.fd_key);
                tracing::info!(listener = %name, "listener removed; its connections close with 1001");
                done.stopped.push((name.clone(), r.id.own()));
                stopped.insert(name, r.id);
            }
        }
        for l in plan.start {
            let (name, certificates) = (l.config.name.clone(), l.certificates.clone());
            let predecessor = l.takes_over.as_ref().and_then(|n| stopped.get(n)).cloned();
            match inner.start(l) {
                Ok(url) => {
                    if let (Some(old), Some(new)) = (predecessor, inner.running.get(&name)) {
                        old.hand_over_to(new.id.clone());
                    }
                    done.started.push(Started {
                        name,
                        url,
                        certificates,
                    })
                }
                Err(e) => done.failed.push(format!("listener `{name}`: {e}")),
            }
        }
        done
    }
}

impl Inner {
    /// Spawns `l`'s accept loop and records it; returns its URL, also
    /// printed as the readiness line scripts and tests wait for.
    fn start(&mut self, l: NewListener) -> Result<String, String> {
        let Some(attached) = self.attached.as_ref() else {
            return Err("the listeners have not started yet".into());
        };
        let Some(socket) = l.socket else {
            return Err("no socket".into());
        };
        let name = l.config.name.clone();
        let spawn = || -> std::io::Result<(std::net::TcpListener, tokio::net::TcpListener)> {
            let spare = socket.try_clone()?;
            let _entered = attached.runtime.enter();
            Ok((spare, tokio::net::TcpListener::from_std(socket)?))
        };
        let (spare, accepting) = match spawn() {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(listener = %name, error = %e, "cannot start the listener");
                return Err(format!("cannot start: {e}"));
            }
        };
        let fd_key = l.address.to_string();
        if let Some(fds) = &attached.fds {
            // The table owns its own duplicate; pingora sends it on upgrade.
            // One handed over by the previous process is in it already.
            let mut fds = fds.lock();
            if fds.get(&fd_key).is_none() {
                match spare.try_clone() {
                    Ok(dup) => fds.add(fd_key.clone(), dup.into_raw_fd()),
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e, "cannot register the listener for upgrades")
                    }
                }
            }
        }
        self.next_id += 1;
        let id = ListenerId::new(self.next_id);
        let listening = Arc::new(Listening {
            config: Arc::new(l.config.clone()),
            id: id.clone(),
            gateway: attached.gateway.clone(),
            tls: l.tls,
        });
        let closing = Arc::new(watch::channel(false).0);
        attached.runtime.spawn(accept_loop(
            listening,
            accepting,
            closing.clone(),
            attached.shutdown.clone(),
        ));
        let scheme = if l.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", l.address);
        announce(&format!("wsgate: listener {name} on {url}"));
        self.running.insert(
            name,
            Running {
                id,
                config: l.config,
                socket: spare,
                fd_key,
                closing,
            },
        );
        Ok(url)
    }

    /// Takes a stopped listener's descriptor out of the handover table (and
    /// closes the table's duplicate), so an upgrade does not revive it.
    fn forget_fd(&self, key: &str) {
        let Some(fds) = self.attached.as_ref().and_then(|a| a.fds.as_ref()) else {
            return;
        };
        let keep: HashSet<String> = self.running.values().map(|r| r.fd_key.clone()).collect();
        let mut fds = fds.lock();
        if fds.get(key).is_some() {
            fds.close_unclaimed(&keep);
        }
    }
}

/// The socket the previous process handed over for `l`'s address, or a new
/// one if it had none there (a listener the new config adds).
fn inherited_or_bound(
    inner: &Inner,
    l: &NewListener,
) -> Result<std::net::TcpListener, ListenerError> {
    let inherited = inner
        .attached
        .as_ref()
        .and_then(|a| a.fds.as_ref())
        .and_then(|fds| fds.lock().get(&l.address.to_string()).copied());
    let Some(fd) = inherited else {
        return bind_socket(&l.config);
    };
    // SAFETY: the descriptor belongs to pingora's table, which keeps it open
    // for the life of the process (it is sent on the next upgrade); it is
    // only borrowed here to be duplicated.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    let owned = borrowed
        .try_clone_to_owned()
        .map_err(|source| ListenerError::Bind {
            name: l.config.name.clone(),
            address: l.address,
            source,
        })?;
    let socket = std::net::TcpListener::from(owned);
    // A previous version may not have set them; they are the socket's,
    // shared with the old process, which wants them too.
    set_client_options(socket2::SockRef::from(&socket))
        .and_then(|()| socket.set_nonblocking(true))
        .map_err(|source| ListenerError::Bind {
            name: l.config.name.clone(),
            address: l.address,
            source,
        })?;
    Ok(socket)
}

/// Prints a readiness line on stdout; scripts and tests wait for these.
pub(crate) fn announce(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// The pingora service that runs every listener's accept loop on its
/// worker runtime, initial ones and those reloads add.
pub(super) struct EdgeService {
    pub set: Arc<ListenerSet>,
    pub gateway: Arc<Gateway>,
}

#[async_trait]
impl Service for EdgeService {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        _listeners_per_fd: usize,
    ) {
        let mut watch = shutdown.clone();
        self.set.attach(Attached {
            runtime: tokio::runtime::Handle::current(),
            shutdown,
            fds,
            gateway: self.gateway.clone(),
        });
        let _ = watch.wait_for(|stopping| *stopping).await;
    }

    fn name(&self) -> &str {
        "listeners"
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(self.set.initial_keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accept path relies on this instead of setting the options on
    /// every accepted socket; a kernel that did not copy them would leave
    /// clients without keepalive, and this test would say so.
    #[test]
    fn accepted_sockets_inherit_nodelay_and_keepalive_from_the_listener() {
        let config = Listener {
            name: "t".into(),
            address: "127.0.0.1:0".parse().unwrap(),
            tls: None,
            allowed_origins: None,
            proxy_protocol: None,
            h2c: false,
        };
        let listener = bind_socket(&config).unwrap();
        listener.set_nonblocking(false).unwrap();
        let address = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(address).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.tcp_nodelay().unwrap());
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap().as_secs(), 60);
        assert_eq!(sock.tcp_keepalive_interval().unwrap().as_secs(), 15);
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        drop(client);
    }
}
