//! The control task: the one owner of control state. It handles one
//! [`Command`] or data-path [`Report`] at a time, publishes a new routing
//! snapshot after each change, and starts the close jobs changes call for.
//! Nothing here is shared or locked; the only way in is a message.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::api::{Activity, BackendStatus, PoolStatus, ReloadEntry, ReloadOutcome, Status};
use super::diff::{diff, Change};
use super::discovery::PoolDiscovery;
use super::drain::{DrainJob, Target};
use super::health::{Checkers, Streak, Transition};
use super::history::{self, CloseSeries, Ring};
use super::metrics::Metrics;
use super::resolver::Resolvers;
use super::{Command, ControlError};
use crate::config::{self, Backend, Config, Rebalance};
use crate::edge::listeners::{ListenerSet, Plan};
use crate::routing::{BackendKey, BackendState, DownReason, Report, Routing, Snapshot};
use crate::tunnel::frame::is_valid_close_code;
use crate::tunnel::CloseCause;

mod balance;
mod discovered;

pub(super) struct ControlTask {
    config: Arc<Config>,
    config_path: Option<PathBuf>,
    routing: Arc<Routing>,
    /// For the health checkers this task starts; weak, so that they do not
    /// keep the task alive once every handle is gone.
    to_self: mpsc::WeakSender<Command>,
    /// Operator drains; kept across reloads for backends that still exist.
    drained: HashSet<BackendKey>,
    /// Marked down by active or passive health checks.
    down: HashMap<BackendKey, DownReason>,
    streaks: HashMap<BackendKey, Streak>,
    checkers: Checkers,
    /// The drain or removal job of each backend.
    jobs: HashMap<BackendKey, DrainJob>,
    /// Rebalance and shutdown jobs, which span backends.
    other_jobs: Vec<DrainJob>,
    last_reload: Option<ReloadOutcome>,
    /// The last reloads, for the status page.
    reloads: Ring<ReloadEntry>,
    /// Close frames per interval, sampled from the session counters.
    closes: CloseSeries,
    shutting_down: bool,
    reloads_ok: u64,
    reloads_failed: u64,
    certificates: super::CertificateBook,
    /// The running listeners, which reloads start and stop.
    listeners: Arc<ListenerSet>,
    /// Ids of the listeners reloads removed, published in every snapshot.
    closed_listeners: Vec<u32>,
    /// The DNS resolver of each pool with `discovery`.
    resolvers: Resolvers,
    /// Each such pool's last good answer and resolution history; its
    /// backends are in `config` alongside the configured ones.
    discovered: HashMap<String, PoolDiscovery>,
}

impl ControlTask {
    pub fn new(
        config: Arc<Config>,
        config_path: Option<PathBuf>,
        routing: Arc<Routing>,
        to_self: mpsc::WeakSender<Command>,
        certificates: super::CertificateBook,
        listeners: Arc<ListenerSet>,
        resolvers: Resolvers,
    ) -> Self {
        ControlTask {
            config,
            config_path,
            routing,
            to_self,
            drained: HashSet::new(),
            down: HashMap::new(),
            streaks: HashMap::new(),
            checkers: Checkers::default(),
            jobs: HashMap::new(),
            other_jobs: Vec::new(),
            last_reload: None,
            reloads: Ring::new(history::RELOADS),
            closes: CloseSeries::default(),
            shutting_down: false,
            reloads_ok: 0,
            reloads_failed: 0,
            certificates,
            listeners,
            closed_listeners: Vec::new(),
            resolvers,
            discovered: HashMap::new(),
        }
    }

    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut reports: mpsc::Receiver<Report>,
    ) {
        self.start_all_checkers();
        self.start_all_resolvers();
        // The first tick is at once: the baseline sample.
        let mut sampling = tokio::time::interval(history::SAMPLE_INTERVAL);
        sampling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sampling.tick() => {
                    let totals = self.routing.observe.stats.close_totals();
                    self.closes.sample(unix_now(), totals);
                }
                command = commands.recv() => match command {
                    Some(command) => self.handle(command),
                    None => break,
                },
                Some(report) = reports.recv() => self.on_report(report),
            }
        }
    }

    /// The config file and the certificate and key files of the running
    /// TLS listeners: what the file watcher polls.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.config_path.iter().cloned().collect();
        files.extend(self.certificates.files(&self.config));
        files
    }

    fn handle(&mut self, command: Command) {
        // A reply whose asker went away has no one to tell: ignored.
        match command {
            Command::Drain {
                backend,
                window,
                close_code,
                reply,
            } => {
                let _ = reply.send(self.drain(&backend, window, close_code));
            }
            Command::Undrain { backend, reply } => {
                let _ = reply.send(self.undrain(&backend));
            }
            Command::AddBackend {
                backend,
                address,
                weight,
                reply,
            } => {
                let _ = reply.send(self.add_backend(&backend, address, weight));
            }
            Command::RemoveBackend { backend, reply } => {
                let _ = reply.send(self.remove_backend(&backend));
            }
            Command::Reload { reply } => {
                let outcome = self.reload();
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Command::Shutdown => self.shutdown(),
            Command::ReopenLogs => self.routing.observe.access_log.reopen(),
            Command::Probe {
                backend,
                address,
                healthy,
            } => self.on_probe(&backend, &address, healthy),
            Command::Discovered {
                pool,
                generation,
                result,
            } => self.on_discovered(&pool, generation, result),
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Activity { reply } => {
                let _ = reply.send(self.activity());
            }
            Command::WatchedFiles { reply } => {
                let _ = reply.send(self.watched_files());
            }
            Command::Metrics { reply } => {
                let _ = reply.send(Metrics {
                    status: self.status(),
                    reloads_ok: self.reloads_ok,
                    reloads_failed: self.reloads_failed,
                    reports_dropped: self.routing.reports.dropped(),
                    closes: self.routing.registry.closes.by_cause(),
                    client_connections: (
                        self.routing.admission.live(),
                        self.routing.admission.max_connections(&self.config.limits),
                    ),
                    refused: self.routing.admission.refusals(),
                    access_log_dropped: self.routing.observe.access_log.dropped(),
                    sessions: {
                        let mut text = String::new();
                        self.routing.observe.stats.render(&mut text);
                        text
                    },
                });
            }
        }
    }

    fn state_of(&self, key: &BackendKey) -> BackendState {
        if self.config.backend(&key.pool, &key.id).is_none() {
            BackendState::Removed
        } else if self.drained.contains(key) {
            BackendState::Draining
        } else if let Some(reason) = self.down.get(key) {
            BackendState::Down(*reason)
        } else {
            BackendState::Active
        }
    }

    /// Builds and swaps in the snapshot for the current state.
    fn publish(&self) {
        let mut snapshot =
            Snapshot::with_states(self.config.clone(), &self.routing.registry, |pool, id| {
                self.state_of(&BackendKey::new(pool, id))
            });
        snapshot.shutting_down = self.shutting_down;
        snapshot.closed_listeners = self.closed_listeners.clone();
        self.routing.snapshot.store(snapshot);
    }

    /// The backend in the current config, or which half of `pool/id` is
    /// unknown.
    fn existing(&self, key: &BackendKey) -> Result<&Backend, ControlError> {
        if self.config.pool(&key.pool).is_none() {
            return Err(ControlError::UnknownPool(key.pool.clone()));
        }
        self.config
            .backend(&key.pool, &key.id)
            .ok_or_else(|| ControlError::UnknownBackend(key.clone()))
    }

    fn drain_policy(&self, pool: &str) -> config::Drain {
        self.config.pool(pool).map(|p| p.drain).unwrap_or_default()
    }

    /// Starts (or restarts) closing every connection of `key`.
    fn start_drain_job(&mut self, key: &BackendKey, window: Duration, code: u16) -> usize {
        if let Some(old) = self.jobs.remove(key) {
            old.cancel();
        }
        let cap = self.drain_policy(&key.pool).max_closes_per_second;
        let targets: Vec<Target> = self
            .routing
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
            self.routing.registry.clone(),
            targets,
            CloseCause::Drain(code),
            window,
            cap,
        );
        self.jobs.insert(key.clone(), job);
        n
    }

    fn drain(
        &mut self,
        key: &BackendKey,
        window: Option<Duration>,
        code: Option<u16>,
    ) -> Result<usize, ControlError> {
        if let Some(c) = code.filter(|c| !is_valid_close_code(*c)) {
            return Err(ControlError::BadRequest(format!(
                "{c} is not a close code a server may send"
            )));
        }
        // The same bound as the config file's, for the same reason: a
        // deadline past it overflows the drain job's clock.
        if window.is_some_and(|w| w > config::defaults::MAX_DURATION) {
            return Err(ControlError::BadRequest(format!(
                "a drain window must be at most {}",
                config::defaults::MAX_DURATION_TEXT
            )));
        }
        self.existing(key)?;
        self.drained.insert(key.clone());
        self.publish();
        let policy = self.drain_policy(&key.pool);
        let n = self.start_drain_job(
            key,
            window.unwrap_or(policy.window),
            code.unwrap_or(policy.close_code),
        );
        tracing::info!(backend = %key, connections = n, "drain started");
        Ok(n)
    }

    fn undrain(&mut self, key: &BackendKey) -> Result<usize, ControlError> {
        self.existing(key)?;
        self.drained.remove(key);
        let cancelled = self.jobs.remove(key).map_or(0, |j| j.cancel());
        self.publish();
        self.rebalance_towards(key);
        tracing::info!(backend = %key, cancelled, "undrained");
        Ok(cancelled)
    }

    fn add_backend(
        &mut self,
        key: &BackendKey,
        address: String,
        weight: u32,
    ) -> Result<(), ControlError> {
        match self.existing(key) {
            Ok(_) => return Err(ControlError::AlreadyExists(key.clone())),
            Err(ControlError::UnknownBackend(_)) => {}
            Err(e) => return Err(e),
        }
        if !config::valid_backend_id(&key.id) || !config::valid_host_port(&address) {
            return Err(ControlError::BadRequest(format!(
                "{}, and the address must be host:port",
                config::BACKEND_ID_RULE
            )));
        }
        let mut new = (*self.config).clone();
        if let Some(p) = new.pools.iter_mut().find(|p| p.name == key.pool) {
            p.backends.push(Backend {
                id: key.id.clone(),
                address: address.clone(),
                weight,
                max_connections: None,
            });
        }
        self.apply(Arc::new(new), &[Change::BackendAdded(key.clone())]);
        tracing::info!(backend = %key, address, weight, "backend added");
        Ok(())
    }

    fn remove_backend(&mut self, key: &BackendKey) -> Result<usize, ControlError> {
        self.existing(key)?;
        if self.is_discovered(key) {
            return Err(ControlError::BadRequest(format!(
                "{key} comes from DNS discovery and would come back with the next answer: drain it (a drain survives re-resolution), or remove its record"
            )));
        }
        let mut new = (*self.config).clone();
        if let Some(p) = new.pools.iter_mut().find(|p| p.name == key.pool) {
            p.backends.retain(|b| b.id != key.id);
        }
        self.apply(Arc::new(new), &[Change::BackendRemoved(key.clone())]);
        let n = self.jobs.get(key).map_or(0, |j| j.total);
        tracing::info!(backend = %key, connections = n, "backend removed; draining");
        Ok(n)
    }

    /// Makes `new` the config and carries out `changes` (what differs from
    /// the old one): the one handler behind reloads and runtime backend
    /// changes alike.
    fn apply(&mut self, new: Arc<Config>, changes: &[Change]) {
        let old = std::mem::replace(&mut self.config, new);
        // Every reload reopens the access log (rotation), wherever it goes.
        self.routing
            .observe
            .access_log
            .configure(self.config.access_log.as_ref().map(|a| &a.to));
        // Drains and health of backends that no longer exist are forgotten;
        // the rest, operator drains above all, carry over.
        let config = self.config.clone();
        let exists = |k: &BackendKey| config.backend(&k.pool, &k.id).is_some();
        self.drained.retain(|k| exists(k));
        self.down.retain(|k, _| exists(k));
        self.streaks.retain(|k, _| exists(k));
        self.publish();
        for change in changes {
            match change {
                Change::BackendRemoved(key) => {
                    self.checkers.stop(key);
                    // A removed pool's policy is found in the old config.
                    let policy = config
                        .pool(&key.pool)
                        .or_else(|| old.pool(&key.pool))
                        .map(|p| p.drain)
                        .unwrap_or_default();
                    self.start_drain_job(key, policy.window, policy.close_code);
                }
                Change::BackendChanged {
                    backend,
                    address: true,
                    ..
                } => self.start_checker(backend),
                Change::BackendAdded(key) => {
                    self.start_checker(key);
                    self.rebalance_towards(key);
                }
                Change::HealthCheckChanged { pool } => {
                    let keys: Vec<BackendKey> = config
                        .pool(pool)
                        .into_iter()
                        .flat_map(|p| &p.backends)
                        .map(|b| BackendKey::new(pool, &b.id))
                        .collect();
                    for key in keys {
                        self.streaks.remove(&key);
                        self.start_checker(&key);
                    }
                }
                Change::DiscoveryChanged { pool } => self.start_resolver(pool),
                Change::BackendChanged { .. }
                | Change::ListenerChanged { .. }
                | Change::Setting(_) => {}
            }
        }
    }

    /// Starts the checker of `key` if its pool has a health check, else
    /// stops any it had.
    fn start_checker(&mut self, key: &BackendKey) {
        let check = self
            .config
            .pool(&key.pool)
            .and_then(|p| p.health_check.as_ref());
        match (check, self.config.backend(&key.pool, &key.id)) {
            (Some(check), Some(b)) => {
                self.checkers
                    .start(key, &b.address, check, self.to_self.clone())
            }
            _ => self.checkers.stop(key),
        }
    }

    fn start_all_checkers(&mut self) {
        let keys: Vec<BackendKey> = self
            .config
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(|b| BackendKey::new(&p.name, &b.id)))
            .collect();
        for key in keys {
            self.start_checker(&key);
        }
    }

    fn on_probe(&mut self, key: &BackendKey, address: &str, healthy: bool) {
        let current = self.config.backend(&key.pool, &key.id);
        if current.is_none_or(|b| b.address != address) {
            return;
        }
        let Some(check) = self
            .config
            .pool(&key.pool)
            .and_then(|p| p.health_check.clone())
        else {
            return;
        };
        if healthy {
            self.routing.registry.backend(key).reset_failures();
        }
        let down = self.down.contains_key(key);
        match self
            .streaks
            .entry(key.clone())
            .or_default()
            .record(healthy, &check, down)
        {
            Some(Transition::Up) => self.set_health(key, None),
            Some(Transition::Down(failures)) => {
                self.set_health(key, Some(DownReason::ActiveCheck { failures }))
            }
            None => {}
        }
    }

    fn on_report(&mut self, report: Report) {
        match report {
            Report::PassiveFailure {
                backend,
                consecutive,
            } => {
                let fall = self
                    .config
                    .pool(&backend.pool)
                    .and_then(|p| p.health_check.as_ref())
                    .map(|h| h.fall);
                let known = self.config.backend(&backend.pool, &backend.id).is_some();
                if known && fall.is_some_and(|fall| consecutive >= fall) {
                    let reason = DownReason::PassiveFailures {
                        failures: consecutive,
                    };
                    self.set_health(&backend, Some(reason));
                }
            }
        }
    }

    /// Health transition: `Some(reason)` marks the backend down, `None`
    /// brings it back.
    fn set_health(&mut self, key: &BackendKey, down: Option<DownReason>) {
        let changed = match down {
            None => self.down.remove(key).is_some(),
            Some(reason) => self.down.insert(key.clone(), reason).is_none(),
        };
        if !changed {
            return;
        }
        self.publish();
        match down {
            None => {
                tracing::info!(backend = %key, "backend is healthy again");
                self.rebalance_towards(key);
            }
            Some(reason) => tracing::warn!(backend = %key, ?reason, "backend marked down"),
        }
    }

    /// With `rebalance: migrate`, moves the connections whose key now maps
    /// to `key` (which just became eligible), paced like a drain.
    fn rebalance_towards(&mut self, key: &BackendKey) {
        let Some(pool_index) = self.config.pool_index(&key.pool) else {
            return;
        };
        let pool = &self.config.pools[pool_index];
        if pool.rebalance != Rebalance::Migrate {
            return;
        }
        let snapshot = self.routing.snapshot.load();
        let mut targets = Vec::new();
        for other in pool.backends.iter().filter(|b| b.id != key.id) {
            let from = BackendKey::new(&key.pool, &other.id);
            for c in self.routing.registry.conns(&from) {
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
            self.routing.registry.clone(),
            targets,
            CloseCause::Drain(d.close_code),
            d.window,
            d.max_closes_per_second,
        );
        self.other_jobs.retain(|j| j.pending() > 0);
        self.other_jobs.push(job);
    }

    /// Re-reads the config file: parse, validate, diff, apply.
    fn reload(&mut self) -> Result<ReloadOutcome, ControlError> {
        let path = self
            .config_path
            .as_ref()
            .ok_or(ControlError::NoConfigFile)?;
        let now = unix_now();
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.reject_reload(now, e.to_string());
                return Err(ControlError::InvalidConfig(e));
            }
        };
        // Discovered backends are not in the file: they carry over.
        let (new, discovered_ids) = self.with_discovered(new);
        let changes = diff(&self.config, &new);
        // New sockets are bound before anything changes: a port in use
        // rejects the whole reload.
        let listener_work = changes
            .iter()
            .any(|c| matches!(c, Change::ListenerChanged { .. }))
            || self.listeners.missing(&new);
        let listeners = listener_work
            .then(|| self.listeners.prepare(&new))
            .transpose();
        let listeners = match listeners {
            Ok(plan) => plan,
            Err(e) => {
                self.reject_reload(now, e.to_string());
                return Err(ControlError::Listener(e));
            }
        };
        self.apply(Arc::new(new), &changes);
        self.keep_discovered(discovered_ids);
        let mut notes = restart_notes(&changes);
        let mut listener_errors = Vec::new();
        if let Some(plan) = listeners {
            let (listener_notes, failed) = self.change_listeners(plan);
            notes.extend(listener_notes);
            listener_errors = failed;
        }
        // Every reload loads the certificates again, whether or not the
        // config names other files: rotation replaces them in place.
        let certificate_errors = self.certificates.reload(&self.config);
        let outcome = ReloadOutcome {
            ok: true,
            at_unix: now,
            error: None,
            added: backends_in(&changes, |c| match c {
                Change::BackendAdded(k) => Some(k),
                _ => None,
            }),
            removed: backends_in(&changes, |c| match c {
                Change::BackendRemoved(k) => Some(k),
                _ => None,
            }),
            notes,
            certificate_errors,
            listener_errors,
        };
        self.reloads.push(history::reload_entry(&outcome));
        self.last_reload = Some(outcome.clone());
        self.reloads_ok += 1;
        tracing::info!(added = ?outcome.added, removed = ?outcome.removed, "config reloaded");
        Ok(outcome)
    }

    fn reject_reload(&mut self, now: u64, error: String) {
        self.reloads_failed += 1;
        tracing::error!(%error, "reload rejected; still serving the previous config");
        let outcome = ReloadOutcome {
            ok: false,
            at_unix: now,
            error: Some(error),
            added: vec![],
            removed: vec![],
            notes: vec![],
            certificate_errors: vec![],
            listener_errors: vec![],
        };
        self.reloads.push(history::reload_entry(&outcome));
        self.last_reload = Some(outcome);
    }

    /// Starts and stops the listeners `plan` says, once the snapshot that
    /// names the new ones is out; the removed listeners' tunnels close
    /// with 1001 over the shutdown window, as they would on a shutdown.
    /// Returns a note per listener, and the ones that failed to start.
    fn change_listeners(&mut self, plan: Plan) -> (Vec<String>, Vec<String>) {
        let done = self.listeners.commit(plan);
        let mut notes = Vec::new();
        for (name, id) in &done.stopped {
            self.certificates.remove(name);
            self.closed_listeners.push(*id);
        }
        for s in done.started {
            if let Some(handle) = s.certificates {
                self.certificates.insert(&s.name, handle);
            }
            tracing::info!(listener = %s.name, url = %s.url, "listener started");
            notes.push(format!("listener `{}` started on {}", s.name, s.url));
        }
        if done.stopped.is_empty() {
            return (notes, done.failed);
        }
        // Published before the tunnels are listed: one that registers after
        // the listing sees its listener closed and closes on arrival.
        self.publish();
        let ids: Vec<u32> = done.stopped.iter().map(|(_, id)| *id).collect();
        let registry = &self.routing.registry;
        let mut targets = Vec::new();
        for (key, _) in registry.counts() {
            for c in registry.conns(&key) {
                if ids.contains(&c.listener) {
                    targets.push(Target {
                        backend: key.clone(),
                        conn_id: c.conn_id,
                    });
                }
            }
        }
        let window = self.config.runtime.shutdown_window;
        for (name, _) in &done.stopped {
            notes.push(format!(
                "listener `{name}` stopped accepting; its WebSockets close with 1001 over {window:?}"
            ));
        }
        tracing::info!(
            connections = targets.len(),
            ?window,
            "listeners removed: closing their connections with 1001"
        );
        let job = DrainJob::start(
            registry.clone(),
            targets,
            CloseCause::ListenerRemoved,
            window,
            0,
        );
        self.other_jobs.retain(|j| j.pending() > 0);
        self.other_jobs.push(job);
        (notes, done.failed)
    }

    /// Closes every connection with 1001, spread over the shutdown window.
    fn shutdown(&mut self) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        // Published before the connections are listed: one that registers
        // after the listing sees this snapshot and closes on arrival.
        self.publish();
        let registry = &self.routing.registry;
        let targets: Vec<Target> = registry
            .counts()
            .into_iter()
            .flat_map(|(key, _)| {
                registry.conns(&key).into_iter().map(move |c| Target {
                    backend: key.clone(),
                    conn_id: c.conn_id,
                })
            })
            .collect();
        tracing::info!(
            connections = targets.len(),
            "shutting down: closing every connection with 1001"
        );
        let job = DrainJob::start(
            registry.clone(),
            targets,
            CloseCause::Shutdown,
            self.config.runtime.shutdown_window,
            0,
        );
        self.other_jobs.push(job);
    }

    /// Reload history, close history and the close jobs' progress.
    fn activity(&self) -> Activity {
        let mut drains: Vec<_> = self
            .jobs
            .iter()
            .map(|(key, job)| job.progress(Some(key.to_string())))
            .collect();
        drains.sort_by(|a, b| a.backend.cmp(&b.backend));
        drains.extend(
            self.other_jobs
                .iter()
                .filter(|j| j.pending() > 0)
                .map(|j| j.progress(None)),
        );
        Activity {
            reloads: self.reloads.to_vec(),
            closes: self.closes.history(),
            drains,
        }
    }

    fn status(&self) -> Status {
        let registry = &self.routing.registry;
        let counts = registry.counts();
        let backend_status = |key: &BackendKey, b: Option<&Backend>, connections| BackendStatus {
            id: key.id.clone(),
            address: b.map(|b| b.address.clone()),
            weight: b.map(|b| b.weight),
            state: self.state_of(key),
            connections,
            pending_closes: self.jobs.get(key).map_or(0, DrainJob::pending),
        };
        let pools = self
            .config
            .pools
            .iter()
            .map(|p| {
                let mut backends: Vec<BackendStatus> = p
                    .backends
                    .iter()
                    .map(|b| {
                        let key = BackendKey::new(&p.name, &b.id);
                        let n = registry.count(&key);
                        backend_status(&key, Some(b), n)
                    })
                    .collect();
                // Removed backends whose connections are still closing.
                for (key, n) in &counts {
                    let gone = self.config.backend(&key.pool, &key.id).is_none();
                    if key.pool == p.name && *n > 0 && gone {
                        backends.push(backend_status(key, None, *n));
                    }
                }
                PoolStatus {
                    name: p.name.clone(),
                    rebalance: match p.rebalance {
                        Rebalance::Keep => "keep",
                        Rebalance::Migrate => "migrate",
                    }
                    .to_string(),
                    backends,
                    discovery: self.discovery_status(p),
                    balance: self.balance_status(p),
                }
            })
            .collect();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        Status {
            pools,
            reload: self.last_reload.clone(),
            shutting_down: self.shutting_down,
            certificates: self.certificates.status(now),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn backends_in(changes: &[Change], pick: impl Fn(&Change) -> Option<&BackendKey>) -> Vec<String> {
    changes
        .iter()
        .filter_map(pick)
        .map(ToString::to_string)
        .collect()
}

fn restart_notes(changes: &[Change]) -> Vec<String> {
    changes
        .iter()
        .filter(|c| c.needs_restart())
        .map(|c| match c {
            Change::Setting(section) => {
                format!("`{section}` changed: restart (`run --upgrade`) to apply it")
            }
            other => format!("{other:?} needs a restart"),
        })
        .collect()
}
