//! The routing snapshot: config, pools, rings and backend states as one
//! immutable value behind an `ArcSwap`.
//!
//! A connection loads the snapshot once when it routes and keeps that
//! `Arc` for its decision; the control plane builds a whole new snapshot and
//! swaps it in atomically. Readers never take a lock, so the control plane
//! can never block the data path (DESIGN invariant 6).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Backend, Config};
use crate::ring::Ring;

/// Whether a backend may take new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Active,
    /// No new connections; existing ones are being closed.
    Draining,
    /// Failing health checks.
    Down,
}

#[derive(Debug)]
pub struct PoolState {
    pub ring: Ring,
    pub states: Vec<BackendState>,
}

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    /// Parallel to `config.pools`.
    pub pools: Vec<PoolState>,
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("no backend in this pool can take new connections")]
    NoEligibleBackend,
}

impl Snapshot {
    pub fn new(config: Arc<Config>) -> Snapshot {
        let pools = config
            .pools
            .iter()
            .map(|p| PoolState {
                ring: Ring::new(p.backends.iter().map(|b| (b.id.as_str(), b.weight))),
                states: vec![BackendState::Active; p.backends.len()],
            })
            .collect();
        Snapshot { config, pools }
    }

    /// The backend for `key_hash` among the pool's active backends. Draining
    /// or down backends are skipped, so only their keys move (to each key's
    /// next rendezvous choice).
    pub fn pick(&self, pool: usize, key_hash: u64) -> Result<&Backend, PickError> {
        let state = self.pools.get(pool).ok_or(PickError::NoEligibleBackend)?;
        let index = state
            .ring
            .pick_eligible(key_hash, |i| {
                state.states.get(i) == Some(&BackendState::Active)
            })
            .ok_or(PickError::NoEligibleBackend)?;
        self.config.pools[pool]
            .backends
            .get(index)
            .ok_or(PickError::NoEligibleBackend)
    }
}

/// The process-wide handle to the current snapshot.
#[derive(Debug)]
pub struct SharedSnapshot(ArcSwap<Snapshot>);

impl SharedSnapshot {
    pub fn new(snapshot: Snapshot) -> Self {
        SharedSnapshot(ArcSwap::from_pointee(snapshot))
    }

    /// Lock-free read of the current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
    }
}
