//! Runs the control plane on its own thread and single-threaded runtime, so
//! nothing it does (reloads, health probes, admin calls) competes with the
//! data path's worker threads: the control task, the admin API, the config
//! file watcher, and the signals that are ours (SIGHUP reloads; SIGTERM and
//! SIGQUIT start the paced 1001 shutdown while pingora stops accepting).
//! Each of them only sends commands to the control task.

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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("wsgate-control".into())
        .spawn(move || runtime.block_on(run(plane, options)))
}

async fn run(plane: ControlPlane, options: PlaneOptions) {
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
            // The outcome is logged and kept for status by the task.
            _ = hup.recv() => control.tell(Command::Reload { reply: None }).await,
            _ = term.recv() => control.tell(Command::Shutdown).await,
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

/// Reloads when the file's modification time changes. Polling once a
/// second needs no platform watcher and catches editors that replace the
/// file instead of writing it in place.
async fn watch_file(control: ControlHandle, path: PathBuf) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = mtime(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = mtime(&path);
        if now.is_some() && now != last {
            last = now;
            tracing::info!(path = %path.display(), "config file changed; reloading");
            control.tell(Command::Reload { reply: None }).await;
        }
    }
}
