//! The control plane: operator drains, health, runtime backend changes and
//! config reloads, turned into one routing snapshot and paced closes.
//!
//! Everything here runs on the control runtime (its own thread), and takes
//! the control lock only to compute a new state. The data path never waits
//! for it: routing reads the `ArcSwap`ed snapshot, and closes reach tunnels
//! through the registry's per-connection channels.
//!
//! The rules (DESIGN invariants 5 and 6):
//! - a draining, down or removed backend gets no new connections, at once;
//!   its keys fall to their next rendezvous choice and no one else moves;
//! - its existing connections get their Close spread over the drain window;
//! - `undrain` cancels the closes not yet sent;
//! - an operator's drain survives reloads: only the operator undoes it;
//! - a reload is parse → validate → diff → apply; an invalid config is
//!   rejected with its error and the old one keeps serving.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use crate::config::{Backend, Config, ConfigError, Rebalance};
use crate::drain::{DrainJob, Target};
use crate::registry::{BackendKey, Registry};
use crate::snapshot::{BackendState, SharedSnapshot, Snapshot};
use crate::tunnel::CloseCause;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no pool named `{0}`")]
    UnknownPool(String),
    #[error("no backend `{0}` in the config")]
    UnknownBackend(BackendKey),
    #[error("backend `{0}` already exists")]
    AlreadyExists(BackendKey),
    #[error("invalid request: {0}")]
    BadRequest(String),
    /// The new config was rejected; the old one keeps serving.
    #[error("config rejected, still serving the previous one:\n{0}")]
    InvalidConfig(ConfigError),
    #[error("wsgate was started without a config file, so there is nothing to reload")]
    NoConfigFile,
}

/// The outcome of the last reload, for status and `wsgate reload`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub at_unix: u64,
    pub error: Option<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub notes: Vec<String>,
}

struct State {
    config: Arc<Config>,
    /// Operator drains; kept across reloads for backends that still exist.
    drained: HashSet<BackendKey>,
    /// Marked down by active or passive health checks.
    down: HashSet<BackendKey>,
    /// The drain or removal job of each backend.
    jobs: HashMap<BackendKey, DrainJob>,
    /// Rebalance and shutdown jobs, which span backends.
    other_jobs: Vec<DrainJob>,
    last_reload: Option<ReloadOutcome>,
}

pub struct Control {
    pub snapshot: Arc<SharedSnapshot>,
    pub registry: Arc<Registry>,
    config_path: Option<PathBuf>,
    state: Mutex<State>,
    shutting_down: AtomicBool,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Health tasks of the current config (restarted on reload).
    pub(crate) health_tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Control {
    pub fn new(config: Arc<Config>, config_path: Option<PathBuf>) -> Arc<Control> {
        let snapshot = Arc::new(SharedSnapshot::new(Snapshot::new(config.clone())));
        Arc::new(Control {
            snapshot,
            registry: Arc::new(Registry::default()),
            config_path,
            state: Mutex::new(State {
                config,
                drained: HashSet::new(),
                down: HashSet::new(),
                jobs: HashMap::new(),
                other_jobs: Vec::new(),
                last_reload: None,
            }),
            shutting_down: AtomicBool::new(false),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            health_tasks: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn config(&self) -> Arc<Config> {
        self.lock().config.clone()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Relaxed)
    }

    /// Builds and swaps in the snapshot for the current state.
    fn publish(&self, st: &State) {
        let snapshot = Snapshot::with_states(st.config.clone(), |pool, id| {
            let key = BackendKey::new(pool, id);
            if st.drained.contains(&key) {
                BackendState::Draining
            } else if st.down.contains(&key) {
                BackendState::Down
            } else {
                BackendState::Active
            }
        });
        self.snapshot.store(snapshot);
    }

    fn backend_exists(st: &State, key: &BackendKey) -> Result<(), ControlError> {
        let pool = st
            .config
            .pools
            .iter()
            .find(|p| p.name == key.pool)
            .ok_or_else(|| ControlError::UnknownPool(key.pool.clone()))?;
        if pool.backends.iter().any(|b| b.id == key.id) {
            Ok(())
        } else {
            Err(ControlError::UnknownBackend(key.clone()))
        }
    }

    /// Starts (or restarts) closing every connection of `key`.
    fn start_drain_job(
        &self,
        st: &mut State,
        key: &BackendKey,
        window: Duration,
        code: u16,
    ) -> usize {
        if let Some(old) = st.jobs.remove(key) {
            old.cancel();
        }
        let cap = pool_of(&st.config, &key.pool).map_or(0, |p| p.drain.max_closes_per_second);
        let targets: Vec<Target> = self
            .registry
            .conns(key)
            .into_iter()
            .map(|c| Target {
                backend: key.clone(),
                conn_id: c.conn_id,
            })
            .collect();
        let n = targets.len();
        let job = DrainJob::start(
            self.registry.clone(),
            targets,
            CloseCause::Drain(code),
            window,
            cap,
        );
        st.jobs.insert(key.clone(), job);
        n
    }

    /// Stops new connections to a backend at once and closes its existing
    /// ones over the window. Returns how many connections will be closed.
    pub fn drain(
        &self,
        key: &BackendKey,
        window: Option<Duration>,
        code: Option<u16>,
    ) -> Result<usize, ControlError> {
        if let Some(c) = code.filter(|c| !crate::frame::is_valid_close_code(*c)) {
            return Err(ControlError::BadRequest(format!(
                "{c} is not a close code a server may send"
            )));
        }
        let mut st = self.lock();
        Self::backend_exists(&st, key)?;
        st.drained.insert(key.clone());
        self.publish(&st);
        let policy = pool_of(&st.config, &key.pool)
            .map(|p| p.drain)
            .unwrap_or_default();
        let n = self.start_drain_job(
            &mut st,
            key,
            window.unwrap_or(policy.window),
            code.unwrap_or(policy.close_code),
        );
        tracing::info!(backend = %key, connections = n, "drain started");
        Ok(n)
    }

    /// Lets a backend take new connections again and cancels the closes not
    /// yet sent. Returns how many were cancelled.
    pub fn undrain(&self, key: &BackendKey) -> Result<usize, ControlError> {
        let mut st = self.lock();
        Self::backend_exists(&st, key)?;
        st.drained.remove(key);
        let cancelled = st.jobs.remove(key).map_or(0, |j| j.cancel());
        self.publish(&st);
        self.rebalance_towards(&mut st, key);
        tracing::info!(backend = %key, cancelled, "undrained");
        Ok(cancelled)
    }

    /// Adds a backend at runtime (until the next reload replaces the pool).
    pub fn add_backend(
        &self,
        key: &BackendKey,
        address: &str,
        weight: u32,
    ) -> Result<(), ControlError> {
        let mut st = self.lock();
        let pool = pool_of(&st.config, &key.pool)
            .ok_or_else(|| ControlError::UnknownPool(key.pool.clone()))?;
        if pool.backends.iter().any(|b| b.id == key.id) {
            return Err(ControlError::AlreadyExists(key.clone()));
        }
        if key.id.is_empty()
            || key.id.contains(['/', ' '])
            || !crate::config::valid_host_port(address)
        {
            return Err(ControlError::BadRequest(
                "need a non-empty id without `/` or spaces and an address host:port".into(),
            ));
        }
        let mut config = (*st.config).clone();
        if let Some(p) = config.pools.iter_mut().find(|p| p.name == key.pool) {
            p.backends.push(Backend {
                id: key.id.clone(),
                address: address.to_string(),
                weight,
            });
        }
        st.config = Arc::new(config);
        self.publish(&st);
        self.rebalance_towards(&mut st, key);
        tracing::info!(backend = %key, address, weight, "backend added");
        Ok(())
    }

    /// Removes a backend at once from routing and drains its connections.
    pub fn remove_backend(&self, key: &BackendKey) -> Result<usize, ControlError> {
        let mut st = self.lock();
        Self::backend_exists(&st, key)?;
        let mut config = (*st.config).clone();
        if let Some(p) = config.pools.iter_mut().find(|p| p.name == key.pool) {
            p.backends.retain(|b| b.id != key.id);
        }
        let policy = pool_of(&config, &key.pool)
            .map(|p| p.drain)
            .unwrap_or_default();
        st.config = Arc::new(config);
        st.drained.remove(key);
        st.down.remove(key);
        self.publish(&st);
        let n = self.start_drain_job(&mut st, key, policy.window, policy.close_code);
        tracing::info!(backend = %key, connections = n, "backend removed; draining");
        Ok(n)
    }

    /// Health transition from the checker (active or passive).
    pub fn set_health(&self, key: &BackendKey, up: bool) {
        let mut st = self.lock();
        let changed = if up {
            st.down.remove(key)
        } else {
            st.down.insert(key.clone())
        };
        if !changed {
            return;
        }
        self.publish(&st);
        if up {
            tracing::info!(backend = %key, "backend is healthy again");
            self.rebalance_towards(&mut st, key);
        } else {
            tracing::warn!(backend = %key, "backend marked down");
        }
    }

    pub fn is_down(&self, key: &BackendKey) -> bool {
        self.lock().down.contains(key)
    }

    /// With `rebalance: migrate`, moves the connections whose key now maps
    /// to `key` (which just became eligible), paced like a drain.
    fn rebalance_towards(&self, st: &mut State, key: &BackendKey) {
        let Some(pool_index) = st.config.pool_index(&key.pool) else {
            return;
        };
        let pool = &st.config.pools[pool_index];
        if pool.rebalance != Rebalance::Migrate {
            return;
        }
        let snapshot = self.snapshot.load();
        let mut targets = Vec::new();
        for other in pool.backends.iter().filter(|b| b.id != key.id) {
            let from = BackendKey::new(&key.pool, &other.id);
            for c in self.registry.conns(&from) {
                if snapshot
                    .pick(pool_index, c.key_hash)
                    .is_ok_and(|b| b.id == key.id)
                {
                    targets.push(Target {
                        backend: from.clone(),
                        conn_id: c.conn_id,
                    });
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        tracing::info!(backend = %key, connections = targets.len(), "rebalancing towards backend");
        let d = pool.drain;
        let job = DrainJob::start(
            self.registry.clone(),
            targets,
            CloseCause::Drain(d.close_code),
            d.window,
            d.max_closes_per_second,
        );
        st.other_jobs.retain(|j| j.pending() > 0);
        st.other_jobs.push(job);
    }

    /// Re-reads the config file: parse, validate, diff, apply.
    pub fn reload(&self) -> Result<ReloadOutcome, ControlError> {
        let path = self
            .config_path
            .as_ref()
            .ok_or(ControlError::NoConfigFile)?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.reloads_failed.fetch_add(1, Relaxed);
                let mut st = self.lock();
                st.last_reload = Some(ReloadOutcome {
                    ok: false,
                    at_unix: now,
                    error: Some(e.to_string()),
                    added: vec![],
                    removed: vec![],
                    notes: vec![],
                });
                tracing::error!(error = %e, "reload rejected; still serving the previous config");
                return Err(ControlError::InvalidConfig(e));
            }
        };
        let mut st = self.lock();
        let (added, removed) = diff_backends(&st.config, &new);
        let mut notes = Vec::new();
        if listeners_differ(&st.config, &new) {
            notes.push(
                "listener changes (addresses, TLS) need a restart to take effect".to_string(),
            );
        }
        let new = Arc::new(new);
        st.config = new.clone();
        // Drains and health of backends that no longer exist are forgotten;
        // the rest, operator drains above all, carry over.
        let exists = |k: &BackendKey| {
            pool_of(&new, &k.pool).is_some_and(|p| p.backends.iter().any(|b| b.id == k.id))
        };
        st.drained.retain(|k| exists(k));
        st.down.retain(|k| exists(k));
        self.publish(&st);
        for key in &removed {
            let policy = pool_of(&new, &key.pool)
                .map(|p| p.drain)
                .unwrap_or_default();
            self.start_drain_job(&mut st, key, policy.window, policy.close_code);
        }
        for key in &added {
            self.rebalance_towards(&mut st, key);
        }
        let outcome = ReloadOutcome {
            ok: true,
            at_unix: now,
            error: None,
            added: added.iter().map(ToString::to_string).collect(),
            removed: removed.iter().map(ToString::to_string).collect(),
            notes,
        };
        st.last_reload = Some(outcome.clone());
        drop(st);
        self.reloads_ok.fetch_add(1, Relaxed);
        tracing::info!(added = ?outcome.added, removed = ?outcome.removed, "config reloaded");
        Ok(outcome)
    }

    /// Closes every connection with 1001, spread over the shutdown window.
    pub fn shutdown(&self) {
        if self.shutting_down.swap(true, Relaxed) {
            return;
        }
        let mut st = self.lock();
        let targets: Vec<Target> = self
            .registry
            .counts()
            .into_iter()
            .flat_map(|(key, _)| {
                self.registry.conns(&key).into_iter().map(move |c| Target {
                    backend: key.clone(),
                    conn_id: c.conn_id,
                })
            })
            .collect();
        tracing::info!(
            connections = targets.len(),
            "shutting down: closing every connection with 1001"
        );
        let window = st.config.runtime.shutdown_window;
        let job = DrainJob::start(
            self.registry.clone(),
            targets,
            CloseCause::Shutdown,
            window,
            0,
        );
        st.other_jobs.push(job);
    }

    /// Whether a just-registered connection to `key` should be closed again
    /// at once: its backend stopped taking new connections (or, with
    /// `migrate`, its key moved) between routing and registration.
    pub fn close_on_arrival(&self, key: &BackendKey, key_hash: u64) -> Option<CloseCause> {
        if self.is_shutting_down() {
            return Some(CloseCause::Shutdown);
        }
        let snapshot = self.snapshot.load();
        let pool_index = snapshot.config.pool_index(&key.pool)?;
        let pool = &snapshot.config.pools[pool_index];
        let code = pool.drain.close_code;
        let still_mapped = snapshot
            .pick(pool_index, key_hash)
            .is_ok_and(|b| b.id == key.id);
        if still_mapped {
            return None;
        }
        let eligible = snapshot.state(pool_index, &key.id) == Some(BackendState::Active);
        (!eligible || pool.rebalance == Rebalance::Migrate).then_some(CloseCause::Drain(code))
    }

    pub fn status(&self) -> crate::admin::Status {
        let st = self.lock();
        crate::admin::Status::build(
            &st.config,
            &self.registry,
            |k| {
                let state = if !Self::in_config(&st.config, k) {
                    "removed"
                } else if st.drained.contains(k) {
                    "draining"
                } else if st.down.contains(k) {
                    "down"
                } else {
                    "active"
                };
                let pending = st.jobs.get(k).map_or(0, DrainJob::pending);
                (state, pending)
            },
            st.last_reload.clone(),
            self.is_shutting_down(),
        )
    }

    fn in_config(config: &Config, k: &BackendKey) -> bool {
        pool_of(config, &k.pool).is_some_and(|p| p.backends.iter().any(|b| b.id == k.id))
    }
}

fn pool_of<'a>(config: &'a Config, name: &str) -> Option<&'a crate::config::Pool> {
    config.pools.iter().find(|p| p.name == name)
}

/// Backends (by pool and id) added and removed between two configs.
fn diff_backends(old: &Config, new: &Config) -> (Vec<BackendKey>, Vec<BackendKey>) {
    let keys = |c: &Config| -> HashSet<BackendKey> {
        c.pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| BackendKey::new(&p.name, &b.id)))
            .collect()
    };
    let (o, n) = (keys(old), keys(new));
    let mut added: Vec<_> = n.difference(&o).cloned().collect();
    let mut removed: Vec<_> = o.difference(&n).cloned().collect();
    added.sort();
    removed.sort();
    (added, removed)
}

fn listeners_differ(old: &Config, new: &Config) -> bool {
    let sig = |c: &Config| -> Vec<String> {
        c.listeners
            .iter()
            .map(|l| {
                format!(
                    "{}|{}|{:?}",
                    l.name,
                    l.address,
                    l.tls.as_ref().map(|t| t.certificates.len())
                )
            })
            .collect()
    };
    sig(old) != sig(new)
}

#[cfg(test)]
mod tests;
