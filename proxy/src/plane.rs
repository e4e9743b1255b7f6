//! Runs the control plane on its own thread and single-threaded runtime, so
//! nothing it does (reloads, health probes, admin calls) competes with the
//! data path's worker threads: the admin API, health checkers, the config
//! file watcher, and the signals that are ours (SIGHUP reloads; SIGTERM and
//! SIGQUIT start the paced 1001 shutdown while pingora stops accepting).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use crate::control::Control;

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
    control: Arc<Control>,
    options: PlaneOptions,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("wsgate-control".into())
        .spawn(move || runtime.block_on(run(control, options)))
}

async fn run(control: Arc<Control>, options: PlaneOptions) {
    control.restart_health();
    if let Some((listener, token)) = options.admin {
        match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => {
                tokio::spawn(crate::admin::serve(l, control.clone(), token));
            }
            Err(e) => tracing::error!(error = %e, "admin API could not start"),
        }
    }
    if let Some(path) = options.watch {
        tokio::spawn(watch_file(control.clone(), path));
    }
    let (Ok(mut hup), Ok(mut term), Ok(mut quit)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::quit()),
    ) else {
        tracing::error!("cannot install signal handlers; SIGHUP reload and paced shutdown are off");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Errors are logged and kept in status by reload itself.
                let _ = control.reload_and_restart_health();
            }
            _ = term.recv() => control.shutdown(),
            _ = quit.recv() => {
                // Upgrade: pingora hands the listening sockets to the new
                // process, then keeps accepting here for its CLOSE_TIMEOUT
                // (5 s in pingora-core 0.9) before it stops. Drain after
                // that, so connections accepted meanwhile are served, not
                // closed on arrival, and are drained with the rest.
                let control = control.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(PINGORA_UPGRADE_CLOSE_TIMEOUT).await;
                    control.shutdown();
                });
            }
        }
    }
}

/// Reloads when the file's modification time changes. Polling once a
/// second needs no platform watcher and catches editors that replace the
/// file instead of writing it in place.
async fn watch_file(control: Arc<Control>, path: PathBuf) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = mtime(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = mtime(&path);
        if now.is_some() && now != last {
            last = now;
            tracing::info!(path = %path.display(), "config file changed; reloading");
            let _ = control.reload_and_restart_health();
        }
    }
}
