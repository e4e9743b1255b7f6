//! The control plane: one task that owns every piece of control state, and
//! the handle through which everything else asks it for changes.
//!
//! Operator calls (admin API), signals and the config file watcher, active
//! health probes, DNS answers for pools with discovery, and passive
//! failures reported by the data path all become messages to the [`task`]; nothing else can change routing, and
//! there is no lock around control state. After each change the task
//! publishes a new routing [`Snapshot`](crate::routing::Snapshot) and, for
//! drains, removals, rebalances and shutdown, starts a paced close job.
//! The data path only reads what it publishes (`crate::routing`).
//!
//! The rules (ARCHITECTURE.md, "The path of a drain" and "The path of a
//! reload"):
//! - a draining, down or removed backend gets no new connections, at once;
//!   its keys fall to their next rendezvous choice and no one else moves;
//! - its existing connections get their Close spread over the drain window;
//! - `undrain` cancels the closes not yet sent;
//! - an operator's drain survives reloads: only the operator undoes it;
//! - a reload is parse → validate → [`diff`] → apply, through the same
//!   handler as an operator's add or remove; an invalid config is rejected
//!   with its error and the old one keeps serving.
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | [`task`] | the control state and the handler of every [`Command`] | reads the config file |
//! | [`diff`] | what changed between two configs | none |
//! | [`drain`] | the close schedule (pure) and the job that runs it | timers |
//! | [`health`] | active probes, and the rise/fall rule | network |
//! | [`discovery`] | what a DNS answer means: backend ids, next resolution, the pool's new list | none |
//! | [`resolver`] | one DNS resolver task per pool with discovery | network |
//! | [`admin`] | the admin HTTP API, and the status page's files and login | network |
//! | [`session`] | status page logins: session ids, their cookie, the login form | none |
//! | [`history`] | the bounded rings of reloads and of closes per interval | none |
//! | [`api`] | the admin API's bodies, shared with the CLI | none |
//! | [`metrics`] | Prometheus text for `/metrics` | none |
//! | [`certificates`] | each TLS listener's certificate handle, what it serves, its last error | reads certificate files |
//! | [`acceptloop`] | the admin accept loop's back-off and rate-limited error log | none |
//! | [`plane`] | the control thread: the task, admin server, signals, file watch | signals |

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::{Backend, Config, ConfigError};
use crate::routing::{reports, BackendKey, Report, Reporter, Routing};

mod acceptloop;
pub(crate) mod admin;
pub mod api;
pub(crate) mod certificates;
mod diff;
mod discovery;
mod drain;
mod health;
mod history;
mod metrics;
pub(crate) mod plane;
mod resolver;
mod session;
mod task;
#[cfg(test)]
mod tests;

pub(crate) use admin::{load_token, AdminError};
use api::{ReloadOutcome, Status};
pub(crate) use certificates::CertificateBook;
use metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no pool named `{0}`")]
    UnknownPool(String),
    #[error("no backend `{0}` in the config")]
    UnknownBackend(BackendKey),
    #[error("backend `{0}` already exists")]
    AlreadyExists(BackendKey),
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The new config was rejected; the old one keeps serving.
    #[error("config rejected, still serving the previous one:\n{0}")]
    InvalidConfig(ConfigError),
    /// A listener the new config adds could not start; nothing changed.
    #[error("config rejected, still serving the previous one: {0}")]
    Listener(crate::edge::listeners::ListenerError),
    #[error("wsgate was started without a config file, so there is nothing to reload")]
    NoConfigFile,
    /// The control task is gone (the process is stopping).
    #[error("the control plane has stopped")]
    Stopped,
}

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

/// Everything that can change routing, as a message to the control task.
/// Callers that need an answer send a oneshot with it.
pub(crate) enum Command {
    Drain {
        backend: BackendKey,
        window: Option<Duration>,
        close_code: Option<u16>,
        reply: Reply<usize>,
    },
    Undrain {
        backend: BackendKey,
        reply: Reply<usize>,
    },
    AddBackend {
        backend: BackendKey,
        address: String,
        weight: u32,
        reply: Reply<()>,
    },
    RemoveBackend {
        backend: BackendKey,
        reply: Reply<usize>,
    },
    /// Re-read the config file. Signals and the file watcher send no reply
    /// channel: the outcome is logged and kept for status.
    Reload {
        reply: Option<Reply<ReloadOutcome>>,
    },
    /// Close every connection with 1001, paced over the shutdown window.
    Shutdown,
    /// SIGUSR1: reopen the access log (after a rotation moved it).
    ReopenLogs,
    /// One active probe's result. A result for an address the backend no
    /// longer has (its checker was replaced) is ignored.
    Probe {
        backend: BackendKey,
        address: String,
        healthy: bool,
    },
    /// One resolution of a pool's `discovery`: the backends the answer
    /// names, or why there are none (the pool then keeps its last good
    /// set). A result from a resolver that was since restarted is ignored.
    Discovered {
        pool: String,
        generation: u64,
        result: Result<Vec<Backend>, discovery::DiscoveryError>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// Reload and close history and drain progress (the status page).
    Activity {
        reply: oneshot::Sender<api::Activity>,
    },
    Metrics {
        reply: oneshot::Sender<Metrics>,
    },
    /// The files whose change means a reload: the config file, and the
    /// certificate and key files of the running TLS listeners.
    WatchedFiles {
        reply: oneshot::Sender<Vec<PathBuf>>,
    },
}

/// How many commands may wait for the control task. Senders are on the
/// control runtime (admin, signals, probes), so waiting for room there
/// slows only the control plane, never a worker thread.
const COMMAND_CAPACITY: usize = 256;

/// A cheap, cloneable way to talk to the control task.
#[derive(Clone)]
pub(crate) struct ControlHandle {
    tx: mpsc::Sender<Command>,
}

impl ControlHandle {
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ControlError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(command(reply))
            .await
            .map_err(|_| ControlError::Stopped)?;
        answer.await.map_err(|_| ControlError::Stopped)
    }

    /// Stops new connections to a backend at once and closes its existing
    /// ones over the window. Returns how many connections will be closed.
    pub async fn drain(
        &self,
        backend: BackendKey,
        window: Option<Duration>,
        close_code: Option<u16>,
    ) -> Result<usize, ControlError> {
        self.ask(|reply| Command::Drain {
            backend,
            window,
            close_code,
            reply,
        })
        .await?
    }

    /// Lets a backend take new connections again and cancels the closes not
    /// yet sent. Returns how many were cancelled.
    pub async fn undrain(&self, backend: BackendKey) -> Result<usize, ControlError> {
        self.ask(|reply| Command::Undrain { backend, reply })
            .await?
    }

    /// Adds a backend at runtime (until a reload that does not list it).
    pub async fn add_backend(
        &self,
        backend: BackendKey,
        address: String,
        weight: u32,
    ) -> Result<(), ControlError> {
        self.ask(|reply| Command::AddBackend {
            backend,
            address,
            weight,
            reply,
        })
        .await?
    }

    /// Removes a backend from routing at once and drains its connections.
    pub async fn remove_backend(&self, backend: BackendKey) -> Result<usize, ControlError> {
        self.ask(|reply| Command::RemoveBackend { backend, reply })
            .await?
    }

    pub async fn reload(&self) -> Result<ReloadOutcome, ControlError> {
        self.ask(|reply| Command::Reload { reply: Some(reply) })
            .await?
    }

    pub(crate) async fn watched_files(&self) -> Result<Vec<PathBuf>, ControlError> {
        self.ask(|reply| Command::WatchedFiles { reply }).await
    }

    pub async fn status(&self) -> Result<Status, ControlError> {
        self.ask(|reply| Command::Status { reply }).await
    }

    pub async fn activity(&self) -> Result<api::Activity, ControlError> {
        self.ask(|reply| Command::Activity { reply }).await
    }

    pub(crate) async fn metrics(&self) -> Result<Metrics, ControlError> {
        self.ask(|reply| Command::Metrics { reply }).await
    }

    /// Sends a command that needs no answer.
    pub async fn tell(&self, command: Command) {
        // Fails only when the task is gone, and then there is no one to tell.
        let _ = self.tx.send(command).await;
    }
}

/// The control plane before it runs: the task with its two inboxes.
pub(crate) struct ControlPlane {
    task: task::ControlTask,
    commands: mpsc::Receiver<Command>,
    reports: mpsc::Receiver<Report>,
    pub handle: ControlHandle,
}

impl ControlPlane {
    /// Builds the control state for `config` and the routing view the data
    /// path reads; nothing runs until [`run`](Self::run).
    pub fn new(
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        certificates: CertificateBook,
        listeners: Arc<crate::edge::listeners::ListenerSet>,
    ) -> (ControlPlane, Arc<Routing>) {
        Self::with_lookup(
            config,
            config_path,
            certificates,
            listeners,
            resolver::hickory(),
        )
    }

    /// [`new`](Self::new), with DNS asked through `lookup`.
    fn with_lookup(
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        certificates: CertificateBook,
        listeners: Arc<crate::edge::listeners::ListenerSet>,
        lookup: resolver::Lookup,
    ) -> (ControlPlane, Arc<Routing>) {
        let (reporter, reports) = Reporter::channel(reports::CAPACITY);
        let routing = Arc::new(Routing::new(config.clone(), reporter));
        let (tx, commands) = mpsc::channel(COMMAND_CAPACITY);
        let task = task::ControlTask::new(
            config,
            config_path,
            routing.clone(),
            tx.downgrade(),
            certificates,
            listeners,
            resolver::Resolvers::new(lookup),
        );
        let plane = ControlPlane {
            task,
            commands,
            reports,
            handle: ControlHandle { tx },
        };
        (plane, routing)
    }

    /// The files the watcher polls, as of the config the process starts with.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        self.task.watched_files()
    }

    /// Runs the task until every handle is dropped. Must run on a tokio
    /// runtime (the control thread's): drain jobs, health checkers and
    /// resolvers are spawned onto it.
    pub async fn run(self) {
        let ControlPlane {
            task,
            commands,
            reports,
            handle,
        } = self;
        drop(handle);
        task.run(commands, reports).await;
    }
}
