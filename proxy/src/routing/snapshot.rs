//! The routing snapshot: config, pools, rings, backend states and each
//! backend's registry entry as one immutable value behind an `ArcSwap`.
//!
//! A connection loads the snapshot once when it routes and keeps that
//! `Arc` for its decision; the control task builds a whole new snapshot and
//! swaps it in atomically. Readers never take a lock, so the control plane
//! cannot block the data path (ARCHITECTURE.md, "The control plane never
//! blocks the data path").

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::bounded;
use super::registry::{BackendConns, BackendKey, Registry};
use super::ring::Ring;
use crate::config::{Backend, Config, Rebalance};
use crate::tunnel::CloseCause;

/// A backend's state, as routing, the control task, the admin API and the
/// CLI all see it. Serialised as `"state": "down", "reason": {...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum BackendState {
    /// Takes new connections.
    Active,
    /// An operator drained it: no new connections; existing ones are being
    /// closed. Only `undrain` ends this, never a reload.
    Draining,
    /// Failing health checks: no new connections until they pass again.
    Down(DownReason),
    /// No longer in the config; some of its connections are still open
    /// (being drained). Never in a snapshot, only in status.
    Removed,
}

/// Why a backend was marked down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum DownReason {
    /// `failures` active probes in a row failed (`health_check.fall`).
    ActiveCheck { failures: u32 },
    /// The data path failed to connect or handshake `failures` times in a row.
    PassiveFailures { failures: u32 },
}

impl BackendState {
    /// Whether new connections may go to the backend.
    pub fn takes_new_connections(self) -> bool {
        self == BackendState::Active
    }

    /// `active`, `draining`, `down` or `removed`.
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Down(_) => "down",
            BackendState::Removed => "removed",
        }
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())?;
        match self {
            BackendState::Down(DownReason::ActiveCheck { failures }) => {
                write!(f, " ({failures} failed probes)")
            }
            BackendState::Down(DownReason::PassiveFailures { failures }) => {
                write!(f, " ({failures} failed connects)")
            }
            _ => Ok(()),
        }
    }
}

pub struct PoolState {
    pub ring: Ring,
    /// Parallel to the pool's `backends`, as are `conns`.
    pub states: Vec<BackendState>,
    /// Each backend's registry entry, so the data path registers tunnels
    /// and counts passive failures without the registry's map lock.
    pub conns: Vec<Arc<BackendConns>>,
}

impl PoolState {
    /// Whether backend `index` may take new connections: the one rule of
    /// both [`Snapshot::choose`] and [`Snapshot::top2`].
    fn eligible(&self, index: usize) -> bool {
        self.states
            .get(index)
            .is_some_and(|s| s.takes_new_connections())
    }
}

pub struct Snapshot {
    pub config: Arc<Config>,
    /// Parallel to `config.pools`.
    pub pools: Vec<PoolState>,
    /// wsgate is shutting down: every arrival is closed with 1001.
    pub shutting_down: bool,
    /// Ids of running listeners a reload removed: their late arrivals are
    /// closed with 1001 like the rest of their tunnels. A few per reload
    /// that removes listeners, kept for the life of the process.
    pub closed_listeners: Vec<u32>,
}

/// The backend chosen for a key, with its registry entry.
pub struct Choice<'a> {
    pub backend: &'a Backend,
    pub conns: &'a Arc<BackendConns>,
    /// The key's first choice, when the pool's `balance_factor` sent the
    /// request past it (its entry counts the overflow, and a tunnel that
    /// registers late is judged against it: `close_on_arrival`).
    pub overflowed_from: Option<&'a Arc<BackendConns>>,
}

/// Why no backend could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("no backend in this pool can take new connections")]
    NoEligibleBackend,
    /// A pool of discovered backends only, before its first DNS answer.
    #[error("this pool has no backends yet (waiting for DNS discovery)")]
    NoBackends,
}

impl Snapshot {
    /// Every backend active.
    pub fn new(config: Arc<Config>, registry: &Registry) -> Snapshot {
        Snapshot::with_states(config, registry, |_, _| BackendState::Active)
    }

    /// `state(pool name, backend id)` gives each backend's state.
    pub fn with_states(
        config: Arc<Config>,
        registry: &Registry,
        state: impl Fn(&str, &str) -> BackendState,
    ) -> Snapshot {
        let pools = config
            .pools
            .iter()
            .map(|p| PoolState {
                ring: Ring::new(p.backends.iter().map(|b| (b.id.as_str(), b.weight))),
                states: p.backends.iter().map(|b| state(&p.name, &b.id)).collect(),
                conns: p
                    .backends
                    .iter()
                    .map(|b| registry.backend(&BackendKey::new(&p.name, &b.id)))
                    .collect(),
            })
            .collect();
        Snapshot {
            config,
            pools,
            shutting_down: false,
            closed_listeners: Vec::new(),
        }
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
    ///
    /// Always the pure ring, whatever the pool's `balance_factor`: where the
    /// key belongs, which drains, rebalances and late arrivals are judged
    /// by. Where a new request goes is [`choose`](Self::choose).
    pub fn pick(&self, pool: usize, key_hash: u64) -> Result<&Backend, PickError> {
        let state = self.pools.get(pool).ok_or(PickError::NoEligibleBackend)?;
        if state.ring.is_empty() {
            return Err(PickError::NoBackends);
        }
        state
            .ring
            .pick_eligible(key_hash, |i| state.eligible(i))
            .and_then(|i| self.config.pools.get(pool)?.backends.get(i))
            .ok_or(PickError::NoEligibleBackend)
    }

    /// Where a new request goes: [`pick`](Self::pick)'s backend, or with
    /// the pool's `balance_factor` the first of the key's rendezvous order
    /// within the bound (`routing::bounded`), with the registry entry.
    /// Without a factor no live count is read: the choice is a pure
    /// function of the key and the snapshot.
    pub fn choose(&self, pool: usize, key_hash: u64) -> Result<Choice<'_>, PickError> {
        let state = self.pools.get(pool).ok_or(PickError::NoEligibleBackend)?;
        if state.ring.is_empty() {
            return Err(PickError::NoBackends);
        }
        let backends = &self
            .config
            .pools
            .get(pool)
            .ok_or(PickError::NoEligibleBackend)?;
        let (index, first) = match backends.balance_factor {
            None => {
                let index = state.ring.pick_eligible(key_hash, |i| state.eligible(i));
                (index.ok_or(PickError::NoEligibleBackend)?, None)
            }
            Some(factor) => {
                let count = |i: usize| state.conns.get(i).map_or(0, |c| c.count() as u64);
                let b =
                    bounded::choose(&state.ring, key_hash, |i| state.eligible(i), count, factor)
                        .ok_or(PickError::NoEligibleBackend)?;
                (b.index, b.overflowed().then_some(b.first))
            }
        };
        match (backends.backends.get(index), state.conns.get(index)) {
            (Some(backend), Some(conns)) => Ok(Choice {
                backend,
                conns,
                overflowed_from: first.and_then(|f| state.conns.get(f)),
            }),
            _ => Err(PickError::NoEligibleBackend),
        }
    }

    /// The backend [`pick`](Self::pick) chooses, and its runner-up: where
    /// the key would go were that backend drained too (`wsgate route`).
    pub fn top2(
        &self,
        pool: usize,
        key_hash: u64,
    ) -> Result<(&Backend, Option<&Backend>), PickError> {
        let state = self.pools.get(pool).ok_or(PickError::NoEligibleBackend)?;
        let backends = &self
            .config
            .pools
            .get(pool)
            .ok_or(PickError::NoEligibleBackend)?
            .backends;
        let (first, second) = state.ring.top2_eligible(key_hash, |i| state.eligible(i));
        let first = first
            .and_then(|i| backends.get(i))
            .ok_or(PickError::NoEligibleBackend)?;
        Ok((first, second.and_then(|i| backends.get(i))))
    }

    /// Whether a just-registered connection to `key` should be closed again
    /// at once: wsgate is shutting down, its listener was removed, or its
    /// backend stopped taking new
    /// connections (or, with `migrate`, its key moved) between routing and
    /// registration. Read from the snapshot current at registration, which
    /// the control task publishes before it lists the connections to close,
    /// so a connection is either in that list or sees this. `overflowed_from`
    /// is the first choice the bound skipped when it routed: the key has
    /// not moved while the ring still picks that one.
    pub fn close_on_arrival(
        &self,
        key: &BackendKey,
        key_hash: u64,
        listener: u32,
        overflowed_from: Option<&BackendKey>,
    ) -> Option<CloseCause> {
        if self.shutting_down {
            return Some(CloseCause::Shutdown);
        }
        if self.closed_listeners.contains(&listener) {
            return Some(CloseCause::ListenerRemoved);
        }
        let pool_index = self.config.pool_index(&key.pool)?;
        let pool = &self.config.pools[pool_index];
        let code = pool.drain.close_code;
        let still_mapped = self.pick(pool_index, key_hash).is_ok_and(|b| {
            b.id == key.id || overflowed_from.is_some_and(|f| f.pool == key.pool && b.id == f.id)
        });
        if still_mapped {
            return None;
        }
        let eligible = self
            .state(pool_index, &key.id)
            .is_some_and(BackendState::takes_new_connections);
        (!eligible || pool.rebalance == Rebalance::Migrate).then_some(CloseCause::Drain(code))
    }
}

/// The process-wide handle to the current snapshot.
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
        let registry = Registry::default();
        let all = Snapshot::new(config(), &registry);
        let down = BackendState::Down(DownReason::ActiveCheck { failures: 3 });
        let b2_down = Snapshot::with_states(config(), &registry, |_, id| {
            if id == "b2" {
                down
            } else {
                BackendState::Active
            }
        });
        for k in 0..1000u64 {
            let h = crate::routing::ring::key_hash(&k.to_le_bytes());
            let before = &all.pick(0, h).unwrap().id;
            let after = &b2_down.pick(0, h).unwrap().id;
            assert_eq!(after, "b1");
            if before == "b1" {
                assert_eq!(after, before, "a b1 user moved");
            }
        }
        assert_eq!(b2_down.state(0, "b2"), Some(down));
        assert_eq!(b2_down.state(0, "b9"), None);
        for k in 0..1000u64 {
            let h = crate::routing::ring::key_hash(&k.to_le_bytes());
            let (first, second) = all.top2(0, h).unwrap();
            assert_eq!(first.id, all.pick(0, h).unwrap().id);
            let second = second.expect("two backends, two choices");
            assert_ne!(second.id, first.id);
            let (only, none) = b2_down.top2(0, h).unwrap();
            assert_eq!(
                (only.id.as_str(), none.map(|b| b.id.as_str())),
                ("b1", None)
            );
        }
        let none = Snapshot::with_states(config(), &registry, |_, _| BackendState::Draining);
        assert!(none.top2(0, 1).is_err());
        assert_eq!(none.pick(0, 1), Err(PickError::NoEligibleBackend));
    }

    #[test]
    fn the_bound_reads_live_counts_only_when_set_and_keeps_overflows_on_arrival() {
        let src = "listeners: [{name: a, address: \"127.0.0.1:0\"}]\nroutes: [{pool: p}]\npools: {p: {rebalance: migrate, balance_factor: 1.25, backends: [{id: b1, address: \"h:1\"}, {id: b2, address: \"h:2\"}, {id: b3, address: \"h:3\"}]}}\n";
        let on = Arc::new(Config::from_source(src, "t", Path::new(".")).unwrap());
        let off = Arc::new(
            Config::from_source(
                &src.replace("balance_factor: 1.25, ", ""),
                "t",
                Path::new("."),
            )
            .unwrap(),
        );
        let registry = Registry::default();
        let h = crate::routing::ring::key_hash(b"alice");
        let pure = Snapshot::new(off, &registry);
        let (first, second) = pure.top2(0, h).unwrap();
        let (first, second) = (first.id.clone(), second.unwrap().id.clone());
        // The first choice holds 9 of 9.
        let key = BackendKey::new("p", &first);
        let _held: Vec<_> = (0..9).map(|i| registry.register(&key, i)).collect();
        let c = pure.choose(0, h).unwrap();
        assert_eq!(c.backend.id, first, "off: the load does not matter");
        assert!(c.overflowed_from.is_none());
        let bounded = Snapshot::new(on, &registry);
        let c = bounded.choose(0, h).unwrap();
        assert_eq!(c.backend.id, second, "on: past the full first choice");
        assert_eq!(
            c.overflowed_from.map(|f| f.key().clone()),
            Some(key.clone())
        );
        // Its tunnel registers on the second choice: with `migrate`, judged
        // against the pure ring alone it would be closed on arrival.
        let at = BackendKey::new("p", &second);
        assert_eq!(bounded.close_on_arrival(&at, h, 0, Some(&key)), None);
        assert_eq!(
            bounded.close_on_arrival(&at, h, 0, None),
            Some(CloseCause::Drain(1012)),
            "what the overflow would have got"
        );
        // `pick` and the top-2 stay pure: drains and rebalances judge by
        // them, and `wsgate route` predicts the first choice.
        assert_eq!(bounded.pick(0, h).unwrap().id, first);
        assert_eq!(bounded.top2(0, h).unwrap().0.id, first);
    }
}
