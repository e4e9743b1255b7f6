//! Graceful-shutdown coordination: SIGTERM/SIGINT handling, broadcasting the
//! "stopping" flag to every task, and draining. Each task the drain must wait
//! for holds a [`Shutdown`] handle; [`Controller::drain`] returns once all
//! handles are dropped or the grace period runs out.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// Cloneable handle held by connection and WebSocket tasks; dropping the last
/// one completes the drain.
#[derive(Clone)]
pub struct Shutdown {
    stopping: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Shutdown {
    /// Resolves once shutdown has been triggered (at once if it already was).
    pub async fn triggered(&self) {
        let _ = self.stopping.clone().wait_for(|stopping| *stopping).await;
    }
}

/// Owned by the accept loop: hands out [`Shutdown`] handles and drains them.
pub struct Controller {
    trigger: watch::Sender<bool>,
    all_done: mpsc::Receiver<()>,
    handle: Shutdown,
}

impl Controller {
    pub fn new() -> Self {
        let (trigger, stopping) = watch::channel(false);
        let (alive, all_done) = mpsc::channel(1);
        let handle = Shutdown {
            stopping,
            _alive: alive,
        };
        Self {
            trigger,
            all_done,
            handle,
        }
    }

    pub fn handle(&self) -> Shutdown {
        self.handle.clone()
    }

    /// Signals every task to stop, then waits up to `grace` for all handles to
    /// be dropped. Returns `true` if everything finished in time.
    pub async fn drain(mut self, grace: Duration) -> bool {
        self.trigger.send_replace(true);
        drop(self.handle);
        // Nobody sends, so `recv` returns only when every sender is gone.
        tokio::time::timeout(grace, self.all_done.recv())
            .await
            .is_ok()
    }
}

/// SIGTERM/SIGINT listeners. Installed before the listening line is printed
/// so that a signal sent right after start-up is never missed.
pub struct Signals(Signal, Signal);

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Self(
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    }

    /// Waits for the next signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.0.recv() => "SIGTERM",
            _ = self.1.recv() => "SIGINT",
        }
    }
}
