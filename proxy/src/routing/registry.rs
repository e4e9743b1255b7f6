//! Live tunnels, grouped by (pool, backend id), each with the
//! [`CloseSignal`] the control plane uses to ask it to close.
//!
//! The data path reaches a backend's [`BackendConns`] through the routing
//! snapshot (which holds an `Arc` of each), never through the registry's
//! map. It touches it twice per WebSocket: once to register when the tunnel
//! starts and once (on drop of the [`ConnGuard`]) when it ends, each a
//! short lock of that one backend's map, never per message. Per request it
//! only reads or bumps the backend's passive-failure counter (an atomic).
//! The control plane reads the map to count connections, to pick which
//! connections a drain or rebalance closes, and to set their close signals,
//! which never blocks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::tunnel::{CloseCause, CloseSignal};

/// Identifies one backend across config reloads: ids are stable, addresses
/// and indices are not.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub pool: String,
    pub id: String,
}

impl BackendKey {
    pub fn new(pool: &str, id: &str) -> Self {
        BackendKey {
            pool: pool.to_string(),
            id: id.to_string(),
        }
    }
}

impl std::fmt::Display for BackendKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.id)
    }
}

struct Conn {
    key_hash: u64,
    /// The running listener the client came in on (`edge::listeners`), so
    /// a listener removed by a reload can close just its own tunnels.
    listener: u32,
    close: Arc<CloseSignal>,
}

/// The live connections of one backend, plus its passive-health counter.
pub struct BackendConns {
    key: BackendKey,
    conns: Mutex<HashMap<u64, Conn>>,
    count: AtomicUsize,
    next_id: AtomicU64,
    /// Consecutive failed connects or handshakes seen by the data path
    /// (reset by a success, passive or active).
    consecutive_failures: AtomicU32,
    /// Requests that had this backend as first choice and were sent to
    /// another by the pool's `balance_factor` (bumped once per such
    /// request, never per message).
    overflowed: AtomicU64,
}

impl BackendConns {
    fn new(key: BackendKey) -> Self {
        BackendConns {
            key,
            conns: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    pub fn key(&self) -> &BackendKey {
        &self.key
    }

    /// Registers a tunnel; it is removed when the guard drops. The signal
    /// carries a cause when the control plane wants this connection closed.
    pub fn register(
        self: &Arc<Self>,
        key_hash: u64,
        listener: u32,
    ) -> (ConnGuard, Arc<CloseSignal>) {
        let conn_id = self.next_id.fetch_add(1, Relaxed);
        let signal = Arc::new(CloseSignal::new());
        self.lock().insert(
            conn_id,
            Conn {
                key_hash,
                listener,
                close: signal.clone(),
            },
        );
        self.count.fetch_add(1, Relaxed);
        (
            ConnGuard {
                backend: self.clone(),
                conn_id,
            },
            signal,
        )
    }

    /// The data path reached the backend. Reads before it writes, so the
    /// common case (no failures) leaves the cache line shared.
    pub fn passive_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// The data path failed to connect or handshake; returns how many
    /// times in a row.
    pub fn passive_failure(&self) -> u32 {
        self.consecutive_failures
            .fetch_add(1, Relaxed)
            .saturating_add(1)
    }

    /// An active probe succeeded: earlier passive failures are forgotten.
    pub fn reset_failures(&self) {
        self.consecutive_failures.store(0, Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Conn>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (single insert/remove), so a poisoned lock is still usable.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Live tunnels: a relaxed read of the counter `register` and the
    /// guard's drop keep, so bounded load reads it without the map lock.
    pub fn count(&self) -> usize {
        self.count.load(Relaxed)
    }

    /// The bound sent a request past this backend, its first choice.
    pub fn record_overflow(&self) {
        self.overflowed.fetch_add(1, Relaxed);
    }
}

/// Snapshot of one live connection, for the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub key_hash: u64,
    /// The id of the running listener the client came in on.
    pub listener: u32,
}

/// Counters of closes wsgate started, by cause, for `/metrics`.
#[derive(Default)]
pub struct CloseCounters {
    pub backend_gone: AtomicU64,
    pub client_gone: AtomicU64,
    pub idle: AtomicU64,
    pub shutdown: AtomicU64,
    pub drain: AtomicU64,
    pub protocol: AtomicU64,
    pub heartbeat: AtomicU64,
    pub listener_removed: AtomicU64,
}

impl CloseCounters {
    pub fn record(&self, cause: CloseCause) {
        let c = match cause {
            CloseCause::BackendGone => &self.backend_gone,
            CloseCause::ClientGone => &self.client_gone,
            CloseCause::Idle => &self.idle,
            CloseCause::Heartbeat => &self.heartbeat,
            CloseCause::Shutdown => &self.shutdown,
            CloseCause::ListenerRemoved => &self.listener_removed,
            CloseCause::Drain(_) => &self.drain,
            CloseCause::ClientProtocol(_) | CloseCause::BackendProtocol(_) => &self.protocol,
        };
        c.fetch_add(1, Relaxed);
    }

    /// Each cause's metric label with its count.
    pub fn by_cause(&self) -> [(&'static str, u64); 8] {
        [
            ("backend_gone", &self.backend_gone),
            ("client_gone", &self.client_gone),
            ("idle", &self.idle),
            ("shutdown", &self.shutdown),
            ("drain", &self.drain),
            ("protocol", &self.protocol),
            ("heartbeat", &self.heartbeat),
            ("listener_removed", &self.listener_removed),
        ]
        .map(|(label, n)| (label, n.load(Relaxed)))
    }
}

/// Every backend's [`BackendConns`], for the control plane. The data path
/// gets them from the snapshot instead, so it never takes this map's lock.
#[derive(Default)]
pub struct Registry {
    backends: Mutex<HashMap<BackendKey, Arc<BackendConns>>>,
    pub closes: CloseCounters,
}

impl Registry {
    /// The entry for a backend, created on first use. Entries are never
    /// removed, so a backend's counters survive reloads (a handful of bytes
    /// per backend id ever configured).
    pub fn backend(&self, key: &BackendKey) -> Arc<BackendConns> {
        let mut map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone())
            .or_insert_with(|| Arc::new(BackendConns::new(key.clone())))
            .clone()
    }

    /// Registers a tunnel with `key`'s entry, for tests; the data path
    /// registers on the entry its snapshot holds.
    #[cfg(test)]
    pub fn register(&self, key: &BackendKey, key_hash: u64) -> (ConnGuard, Arc<CloseSignal>) {
        self.backend(key).register(key_hash, 0)
    }

    /// Every backend with its connection count, including backends no longer
    /// in the config that still have connections.
    pub fn counts(&self) -> Vec<(BackendKey, usize)> {
        let map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, b)| (k.clone(), b.count())).collect()
    }

    pub fn count(&self, key: &BackendKey) -> usize {
        self.backend(key).count()
    }

    /// Requests the bound sent past their first choice in `pool`, over
    /// every backend it ever had (entries are never removed, so the sum
    /// only grows: a Prometheus counter).
    pub fn overflows(&self, pool: &str) -> u64 {
        let map = self.backends.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .filter(|(k, _)| k.pool == pool)
            .map(|(_, b)| b.overflowed.load(Relaxed))
            .sum()
    }

    /// The live connections of one backend.
    pub fn conns(&self, key: &BackendKey) -> Vec<ConnInfo> {
        self.backend(key)
            .lock()
            .iter()
            .map(|(&conn_id, c)| ConnInfo {
                conn_id,
                key_hash: c.key_hash,
                listener: c.listener,
            })
            .collect()
    }

    /// Asks one connection to close. Returns false if it already ended.
    pub fn close(&self, key: &BackendKey, conn_id: u64, cause: CloseCause) -> bool {
        let backend = self.backend(key);
        let map = backend.lock();
        match map.get(&conn_id) {
            Some(c) => {
                // First cause wins; a connection already closing keeps its code.
                c.close.request(cause);
                true
            }
            None => false,
        }
    }
}

/// Deregisters its connection when dropped.
pub struct ConnGuard {
    backend: Arc<BackendConns>,
    conn_id: u64,
}

impl ConnGuard {
    /// The backend the tunnel is registered with.
    pub fn backend(&self) -> &BackendKey {
        self.backend.key()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.backend.lock().remove(&self.conn_id).is_some() {
            self.backend.count.fetch_sub(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_count_close_and_drop() {
        let r = Registry::default();
        let k = BackendKey::new("chat", "b1");
        let (g1, rx1) = r.register(&k, 11);
        let (g2, _rx2) = r.register(&k, 22);
        assert_eq!(r.count(&k), 2);
        let mut hashes: Vec<u64> = r.conns(&k).iter().map(|c| c.key_hash).collect();
        hashes.sort();
        assert_eq!(hashes, [11, 22]);
        let id1 = r
            .conns(&k)
            .iter()
            .find(|c| c.key_hash == 11)
            .unwrap()
            .conn_id;
        assert!(r.close(&k, id1, CloseCause::Drain(1012)));
        assert!(r.close(&k, id1, CloseCause::Shutdown), "still registered");
        assert_eq!(
            rx1.cause(),
            Some(CloseCause::Drain(1012)),
            "first cause wins"
        );
        drop(g1);
        assert_eq!(r.count(&k), 1);
        assert!(!r.close(&k, id1, CloseCause::Shutdown));
        drop(g2);
        assert_eq!(r.count(&k), 0);
        assert_eq!(r.counts(), vec![(k.clone(), 0)]);
        r.backend(&k).record_overflow();
        r.backend(&BackendKey::new("chat", "b2")).record_overflow();
        r.backend(&BackendKey::new("other", "b1")).record_overflow();
        assert_eq!((r.overflows("chat"), r.overflows("other")), (2, 1));
    }
}
