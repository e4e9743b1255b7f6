//! Starting the process: the wiring of the two planes. The config is
//! loaded and every listener bound (or, on `--upgrade`, checked) before
//! anything runs, so a port in use or a broken certificate is a clear error
//! and exit; then the control plane starts on its own thread and pingora's
//! server runs the data path (`edge`) on the worker threads.

use std::net::TcpListener;
use std::sync::Arc;

use crate::config::Config;
use crate::control::{plane, ControlPlane};
use crate::edge::listeners::{ListenerError, ListenerSet, NewListener};
use crate::edge::server;
use crate::gateway::Gateway;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Admin(#[from] crate::control::AdminError),
    #[error("cannot start the control thread: {0}")]
    ControlThread(std::io::Error),
}

/// How `run` was asked to start.
pub struct RunOptions {
    /// The config file, for reloads; None when the config came from elsewhere.
    pub config_path: Option<std::path::PathBuf>,
    /// Take the listening sockets over from a running wsgate (zero-downtime
    /// restart): start this, then send the old process SIGQUIT.
    pub upgrade: bool,
}

/// Runs wsgate until it is told to stop, then exits the process.
pub fn run(config: Config, options: RunOptions) -> Result<std::convert::Infallible, StartError> {
    let listeners = config
        .listeners
        .iter()
        .map(|l| NewListener::bind(l, options.upgrade))
        .collect::<Result<Vec<_>, _>>()?;
    let admin = match &config.admin {
        Some(a) => {
            let token = crate::control::load_token(a)?;
            let listener = TcpListener::bind(a.address).map_err(|source| {
                crate::control::AdminError::Bind {
                    address: a.address,
                    source,
                }
            })?;
            Some((listener, token))
        }
        None => None,
    };
    if let Some(Ok(address)) = admin.as_ref().map(|(l, _)| l.local_addr()) {
        // Bound, so connections queue until the control thread accepts.
        crate::edge::listeners::announce(&format!("wsgate: admin API on http://{address}"));
    }
    let config = Arc::new(config);
    let certificates = crate::control::CertificateBook::new(
        listeners
            .iter()
            .filter_map(|l| Some((l.name().to_string(), l.certificates()?)))
            .collect(),
    );
    let listeners = ListenerSet::new(listeners);
    let (control, routing) = ControlPlane::new(
        config.clone(),
        options.config_path.clone(),
        certificates,
        listeners.clone(),
    );
    plane::spawn(
        control,
        plane::PlaneOptions {
            admin,
            watch: options.config_path,
        },
    )
    .map_err(StartError::ControlThread)?;
    routing
        .admission
        .set_default_max(default_max_connections(config.limits.max_connections));
    let gateway = Arc::new(Gateway::new(routing));
    server::serve(&config, listeners, gateway, options.upgrade)
}

/// Raises the soft descriptor limit to the hard one and derives the default
/// `limits.max_connections` from it (`routing::admission`), logging both so
/// an operator can see what a flood would run into.
fn default_max_connections(configured: Option<u32>) -> usize {
    let nofile = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise RLIMIT_NOFILE; assuming 1024");
            1024
        }
    };
    let derived = crate::routing::admission::default_max_connections(nofile);
    match configured {
        Some(max) if u64::from(max) * 2 > nofile => tracing::warn!(
            max_connections = max,
            nofile,
            "limits.max_connections needs two descriptors each, more than RLIMIT_NOFILE allows; \
             clients beyond it will meet EMFILE"
        ),
        Some(_) => {}
        None => tracing::info!(
            nofile,
            max_connections = derived,
            "connection limit from RLIMIT_NOFILE"
        ),
    }
    derived
}
