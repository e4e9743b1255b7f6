//! What the data path tells the control plane: fire-and-forget reports on
//! a bounded channel. A worker thread never waits for the control task;
//! when the channel is full the report is dropped and counted (a dropped
//! passive failure only delays marking a backend down until the next one,
//! or the next active probe).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::sync::mpsc;

use super::registry::BackendKey;

/// How many reports may wait for the control task. Reports are failures,
/// so even an outage of every backend fills this only with what is in
/// flight at once.
pub const CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A connect or request to `backend` failed; `consecutive` failures in
    /// a row, counting this one.
    PassiveFailure {
        backend: BackendKey,
        consecutive: u32,
    },
}

/// The sending side, shared by every connection.
pub struct Reporter {
    tx: mpsc::Sender<Report>,
    dropped: AtomicU64,
}

impl Reporter {
    pub fn channel(capacity: usize) -> (Reporter, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Reporter {
                tx,
                dropped: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// Never waits: a full (or closed) channel drops the report.
    pub fn send(&self, report: Report) {
        if self.tx.try_send(report).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Reports dropped so far, for `/metrics`.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_channel_drops_and_counts_instead_of_waiting() {
        let (reporter, mut rx) = Reporter::channel(2);
        let report = |n| Report::PassiveFailure {
            backend: BackendKey::new("p", "b"),
            consecutive: n,
        };
        for n in 1..=5 {
            reporter.send(report(n));
        }
        assert_eq!(reporter.dropped(), 3);
        assert_eq!(rx.try_recv().ok(), Some(report(1)));
        assert_eq!(rx.try_recv().ok(), Some(report(2)));
        assert!(rx.try_recv().is_err());
    }
}
