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
    /// Every backend active.
    pub fn new(config: Arc<Config>) -> Snapshot {
        Snapshot::with_states(config, |_, _| BackendState::Active)
    }

    /// `state(pool name, backend id)` gives each backend's state.
    pub fn with_states(
        config: Arc<Config>,
        state: impl Fn(&str, &str) -> BackendState,
    ) -> Snapshot {
        let pools = config
            .pools
            .iter()
            .map(|p| PoolState {
                ring: Ring::new(p.backends.iter().map(|b| (b.id.as_str(), b.weight))),
                states: p.backends.iter().map(|b| state(&p.name, &b.id)).collect(),
            })
            .collect();
        Snapshot { config, pools }
    }

    /// State of a backend by id, or None if the pool has no such backend.
    pub fn state(&self, pool: usize, id: &str) -> Option<BackendState> {
        let index = self
            .config
            .pools
            .get(pool)?
            .backends
            .iter()
            .position(|b| b.id == id)?;
        self.pools.get(pool)?.states.get(index).copied()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn config() -> Arc<Config> {
        let src = "listeners: [{name: a, address: \"127.0.0.1:0\"}]\nroutes: [{pool: p}]\npools: {p: {backends: [{id: b1, address: \"h:1\"}, {id: b2, address: \"h:2\"}]}}\n";
        Arc::new(Config::from_source(src, "t", Path::new(".")).unwrap())
    }

    #[test]
    fn inactive_backends_lose_only_their_keys() {
        let all = Snapshot::new(config());
        let b2_down = Snapshot::with_states(config(), |_, id| {
            if id == "b2" {
                BackendState::Down
            } else {
                BackendState::Active
            }
        });
        for k in 0..1000u64 {
            let h = crate::ring::key_hash(&k.to_le_bytes());
            let before = &all.pick(0, h).unwrap().id;
            let after = &b2_down.pick(0, h).unwrap().id;
            assert_eq!(after, "b1");
            if before == "b1" {
                assert_eq!(after, before, "a b1 user moved");
            }
        }
        assert_eq!(b2_down.state(0, "b2"), Some(BackendState::Down));
        assert_eq!(b2_down.state(0, "b9"), None);
        let none = Snapshot::with_states(config(), |_, _| BackendState::Draining);
        assert_eq!(none.pick(0, 1), Err(PickError::NoEligibleBackend));
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
