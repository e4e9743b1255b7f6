//! Runs the control plane on its own thread and single-threaded runtime, so
//! nothing it does (reloads, health probes, admin calls) competes with the
//! data path's worker threads: the control task, the admin API, the config
//! file watcher, and the signals that are ours (SIGHUP reloads; SIGUSR1
//! reopens the access log; SIGTERM and SIGQUIT start the paced 1001
//! shutdown while pingora stops accepting).
//! Each of them only sends commands to the control task.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use super::{Command, ControlHandle, ControlPlane};

/// How long pingora keeps accepting after sending its sockets on SIGQUIT
/// (`CLOSE_TIMEOUT` in pingora-core's server module).
const PINGORA_UPGRADE_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the control thread serves besides the control plane itself.
pub struct PlaneOptions {
    /// Bound admin listener and its token.
    pub admin: Option<(std::net::TcpListener, String)>,
    /// Config file to watch for changes.
    pub watch: Option<PathBuf>,
}

pub fn spawn(
    plane: ControlPlane,
    options: PlaneOptions,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // Taken now, before any listener says it is ready: a file saved right
    // after the readiness line is then a change, not the watcher's first
    // look at it.
    let mut seen = HashMap::new();
    if options.watch.is_some() {
        for f in plane.watched_files() {
            let t = mtime(&f);
            seen.insert(f, t);
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("wsgate-control".into())
        .spawn(move || runtime.block_on(run(plane, options, seen)))
}

async fn run(
    plane: ControlPlane,
    options: PlaneOptions,
    seen: HashMap<PathBuf, Option<SystemTime>>,
) {
    let control = plane.handle.clone();
    tokio::spawn(plane.run());
    if let Some((listener, token)) = options.admin {
        match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => {
                tokio::spawn(super::admin::serve(l, control.clone(), token));
            }
            Err(e) => tracing::error!(error = %e, "admin API could not start"),
        }
    }
    if options.watch.is_some() {
        tokio::spawn(watch_files(control.clone(), seen));
    }
    let (Ok(mut hup), Ok(mut term), Ok(mut quit), Ok(mut usr1)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::quit()),
        signal(SignalKind::user_defined1()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGHUP reload and paced shutdown are off");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            // The outcome is logged and kept for status by the task.
            _ = hup.recv() => control.tell(Command::Reload { reply: None }).await,
            _ = term.recv() => control.tell(Command::Shutdown).await,
            // Log rotation: the access log is reopened before its next line.
            _ = usr1.recv() => control.tell(Command::ReopenLogs).await,
            _ = quit.recv() => {
                // Upgrade: pingora hands the listening sockets to the new
                // process, then keeps accepting here for its CLOSE_TIMEOUT
                // (5 s in pingora-core 0.9) before it stops. Drain after
                // that, so connections accepted meanwhile are served, not
                // closed on arrival, and are drained with the rest.
                let control = control.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(PINGORA_UPGRADE_CLOSE_TIMEOUT).await;
                    control.tell(Command::Shutdown).await;
                });
            }
        }
    }
}

fn mtime(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reloads when the modification time of the config file, or of a
/// certificate or key file of a running TLS listener, changes. Polling once
/// a second needs no platform watcher, catches editors that replace a file
/// instead of writing it in place, and follows symbolic links, so a
/// Kubernetes secret volume (whose `..data` link is swapped) is seen too.
/// The list of files is asked for on every round: a reload may change it.
async fn watch_files(control: ControlHandle, mut last: HashMap<PathBuf, Option<SystemTime>>) {
    loop {
        let Ok(files) = control.watched_files().await else {
            return;
        };
        let mut changed = None;
        for f in files {
            let now = mtime(&f);
            match last.insert(f.clone(), now) {
                Some(before) if before != now && now.is_some() => changed = Some(f),
                _ => {}
            }
        }
        if let Some(f) = changed {
            tracing::info!(path = %f.display(), "file changed; reloading");
            control.tell(Command::Reload { reply: None }).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
