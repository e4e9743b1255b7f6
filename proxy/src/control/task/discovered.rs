//! The control task's side of DNS discovery: starting each pool's
//! resolver, and turning its results into the same [`Change`]s a reload
//! makes, applied by the same `ControlTask::apply`. A backend that leaves
//! the answer is drained with the pool's drain policy, one that joins it
//! is added (health checks, `rebalance`), an operator's drain survives,
//! and a failed or empty resolution changes nothing but the status.

use std::sync::Arc;
use std::time::SystemTime;

use super::ControlTask;
use crate::config::{Backend, Config, Pool};
use crate::control::api::DiscoveryStatus;
use crate::control::diff::{diff, Change};
use crate::control::discovery::{merge, DiscoveryError};
use crate::routing::BackendKey;

/// Discovered ids per pool, as a reload computes them before it applies.
pub(in crate::control) type DiscoveredIds = Vec<(String, Vec<String>)>;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ControlTask {
    pub(super) fn start_all_resolvers(&mut self) {
        let pools: Vec<String> = self
            .config
            .pools
            .iter()
            .filter(|p| p.discovery.is_some())
            .map(|p| p.name.clone())
            .collect();
        for pool in pools {
            self.start_resolver(&pool);
        }
    }

    /// Starts (or restarts) the resolver of `pool` if it has discovery;
    /// otherwise stops it and forgets what it found (whose backends the
    /// same reload removed).
    pub(super) fn start_resolver(&mut self, pool: &str) {
        match self.config.pool(pool).and_then(|p| p.discovery.as_ref()) {
            Some(d) => self.resolvers.start(pool, d, self.to_self.clone()),
            None => {
                self.resolvers.stop(pool);
                self.discovered.remove(pool);
            }
        }
    }

    /// Whether `key` is in its pool because DNS named it.
    pub(super) fn is_discovered(&self, key: &BackendKey) -> bool {
        self.discovered
            .get(&key.pool)
            .is_some_and(|s| s.ids.contains(&key.id))
    }

    /// One resolution's result for `pool`.
    pub(super) fn on_discovered(
        &mut self,
        pool: &str,
        generation: u64,
        result: Result<Vec<Backend>, DiscoveryError>,
    ) {
        if !self.resolvers.is_current(pool, generation) {
            return;
        }
        let Some(current) = self.config.pool(pool) else {
            return;
        };
        let state = self.discovered.entry(pool.to_string()).or_default();
        let found = match result {
            Ok(found) => found,
            Err(e) => {
                if state.failed(&e) {
                    tracing::warn!(pool, error = %e, "DNS discovery failed; the pool keeps its last good backends");
                } else {
                    tracing::debug!(pool, error = %e, failures = state.consecutive_failures, "DNS discovery still failing");
                }
                return;
            }
        };
        if state.last_error.is_some() {
            tracing::info!(pool, "DNS discovery works again");
        }
        state.succeeded(unix_now());
        let (backends, ids) = merge(&current.backends, &state.ids, &found);
        state.found = found;
        state.ids = ids;
        let mut new = (*self.config).clone();
        if let Some(p) = new.pools.iter_mut().find(|p| p.name == pool) {
            p.backends = backends;
        }
        let changes = diff(&self.config, &new);
        if changes.is_empty() {
            return;
        }
        let named = |pick: fn(&Change) -> Option<&BackendKey>| -> Vec<String> {
            changes
                .iter()
                .filter_map(pick)
                .map(|k| k.id.clone())
                .collect()
        };
        tracing::info!(
            pool,
            added = ?named(|c| match c {
                Change::BackendAdded(k) => Some(k),
                _ => None,
            }),
            removed = ?named(|c| match c {
                Change::BackendRemoved(k) => Some(k),
                _ => None,
            }),
            "DNS discovery changed the pool's backends"
        );
        self.apply(Arc::new(new), &changes);
    }

    /// `new`, a config just read from the file, with the last good
    /// discovered backends of each pool that still has discovery (a
    /// changed `discovery` keeps them until its new resolver answers); and
    /// their ids, for [`keep_discovered`](Self::keep_discovered) once the
    /// reload is applied.
    pub(super) fn with_discovered(&self, mut new: Config) -> (Config, DiscoveredIds) {
        let mut ids = Vec::new();
        for p in new.pools.iter_mut().filter(|p| p.discovery.is_some()) {
            if let Some(state) = self.discovered.get(&p.name) {
                let (backends, found) = merge(&p.backends, &[], &state.found);
                p.backends = backends;
                ids.push((p.name.clone(), found));
            }
        }
        (new, ids)
    }

    pub(super) fn keep_discovered(&mut self, ids: DiscoveredIds) {
        for (pool, ids) in ids {
            if let Some(state) = self.discovered.get_mut(&pool) {
                state.ids = ids;
            }
        }
    }

    pub(super) fn discovery_status(&self, pool: &Pool) -> Option<DiscoveryStatus> {
        let d = pool.discovery.as_ref()?;
        let state = self.discovered.get(&pool.name);
        Some(DiscoveryStatus {
            dns: d.name.clone(),
            kind: d.kind.name().to_string(),
            backends: state.map_or(0, |s| s.ids.len()),
            last_success_unix: state.and_then(|s| s.last_success_unix),
            error: state.and_then(|s| s.last_error.clone()),
            failures_total: state.map_or(0, |s| s.failures_total),
            consecutive_failures: state.map_or(0, |s| s.consecutive_failures),
        })
    }
}
