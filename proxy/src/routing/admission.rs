//! Whether a new client connection may be served: the process-wide
//! connection limit, the per-IP limits, and the count of refusals by reason
//! for `/metrics`. No I/O: the edge asks at accept and holds the returned
//! [`Slot`] for the connection's whole life (its tunnel included).
//!
//! The process limit is what keeps the descriptor table from filling: with
//! it, a flood is refused at accept instead of leaving every new client
//! hanging in the backlog and health probes failing with EMFILE. Its
//! default comes from `RLIMIT_NOFILE` ([`default_max_connections`]).
//! Per-IP limits are off by default, since carrier NAT puts thousands of
//! users behind one address; when on, they take one short lock of a map per
//! accept and per close, never per request or message.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::config::Limits;

/// Why a connection was refused, for its metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections`.
    MaxConnections,
    /// `limits.max_connections_per_ip`.
    PerIp,
    /// `limits.new_connections_per_ip_per_second`.
    PerIpRate,
}

/// Descriptors kept free of client connections for backend sockets,
/// health probes, the admin API, logs and reloads.
fn reserve(nofile: u64) -> u64 {
    (nofile / 16).max(128)
}

/// The default `limits.max_connections` for a descriptor limit of
/// `nofile`: each proxied connection holds two descriptors (client and
/// backend), after a reserve. At least 1, so a tiny limit still serves.
pub fn default_max_connections(nofile: u64) -> usize {
    let usable = nofile.saturating_sub(reserve(nofile)) / 2;
    usize::try_from(usable.max(1)).unwrap_or(usize::MAX)
}

/// A token bucket of `rate` tokens a second holding at most `rate`
/// (a burst of one second's worth). Pure; time is passed in.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Thousandths of a token, so refill needs no floating point.
    milli: u64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Bucket {
            milli: u64::from(rate) * 1000,
            at: now,
        }
    }

    fn refill(&mut self, rate: u32, now: Instant) {
        let cap = u64::from(rate) * 1000;
        let elapsed = now.saturating_duration_since(self.at);
        let add = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self.milli = self
            .milli
            .saturating_add(add.saturating_mul(u64::from(rate)))
            .min(cap);
        self.at = now;
    }

    fn take(&mut self, rate: u32, now: Instant) -> bool {
        self.refill(rate, now);
        if self.milli >= 1000 {
            self.milli -= 1000;
            true
        } else {
            false
        }
    }

    fn is_full(&self, rate: u32, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.milli >= u64::from(rate) * 1000
    }
}

#[derive(Debug)]
struct PerIp {
    live: u32,
    bucket: Option<Bucket>,
}

/// Live client connections and refusals, shared by every listener.
#[derive(Debug)]
pub struct Admission {
    live: AtomicUsize,
    /// `limits.max_connections` when the config leaves it out.
    default_max: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, PerIp>>,
    /// Table size after the last sweep of idle entries.
    swept_at: AtomicUsize,
    refused_max: AtomicU64,
    refused_per_ip: AtomicU64,
    refused_rate: AtomicU64,
    /// Upgrades answered 503 because their backend was at its limit.
    pub refused_backend: AtomicU64,
    /// Connections without a valid PROXY protocol header where one is due,
    /// or with one from a peer not allowed to send it.
    pub refused_proxy_protocol: AtomicU64,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            live: AtomicUsize::new(0),
            default_max: AtomicUsize::new(usize::MAX),
            per_ip: Mutex::new(HashMap::new()),
            swept_at: AtomicUsize::new(0),
            refused_max: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            refused_rate: AtomicU64::new(0),
            refused_backend: AtomicU64::new(0),
            refused_proxy_protocol: AtomicU64::new(0),
        }
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    /// Set when the connection was counted per IP.
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.live.fetch_sub(1, Relaxed);
        if let Some(ip) = self.ip {
            let mut table = self.admission.table();
            if let Some(entry) = table.get_mut(&ip) {
                entry.live = entry.live.saturating_sub(1);
                if entry.live == 0 && entry.bucket.is_none() {
                    table.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    pub fn set_default_max(&self, max: usize) {
        self.default_max.store(max, Relaxed);
    }

    /// The limit in force under `limits`.
    pub fn max_connections(&self, limits: &Limits) -> usize {
        limits
            .max_connections
            .map_or_else(|| self.default_max.load(Relaxed), |m| m as usize)
    }

    pub fn live(&self) -> usize {
        self.live.load(Relaxed)
    }

    /// Each refusal reason's metric label with its count.
    pub fn refusals(&self) -> [(&'static str, u64); 5] {
        [
            ("max_connections", &self.refused_max),
            ("per_ip", &self.refused_per_ip),
            ("per_ip_rate", &self.refused_rate),
            ("backend_max_connections", &self.refused_backend),
            ("proxy_protocol", &self.refused_proxy_protocol),
        ]
        .map(|(label, n)| (label, n.load(Relaxed)))
    }

    fn table(&self) -> MutexGuard<'_, HashMap<IpAddr, PerIp>> {
        // Each critical section is a single lookup and update; a poisoned
        // lock cannot hold a half-made change.
        self.per_ip.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a connection from `ip` under `limits`, or says why not.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        limits: &Limits,
        now: Instant,
    ) -> Result<Slot, Refusal> {
        let max = self.max_connections(limits);
        if self.live.fetch_add(1, Relaxed) >= max {
            self.live.fetch_sub(1, Relaxed);
            self.refused_max.fetch_add(1, Relaxed);
            return Err(Refusal::MaxConnections);
        }
        let mut slot = Slot {
            admission: self.clone(),
            ip: None,
        };
        if limits.max_connections_per_ip.is_none()
            && limits.new_connections_per_ip_per_second.is_none()
        {
            return Ok(slot);
        }
        let ip = ip.to_canonical();
        match self.admit_ip(ip, limits, now) {
            Ok(()) => {
                slot.ip = Some(ip);
                Ok(slot)
            }
            Err(refusal) => {
                match refusal {
                    Refusal::PerIpRate => self.refused_rate.fetch_add(1, Relaxed),
                    _ => self.refused_per_ip.fetch_add(1, Relaxed),
                };
                Err(refusal)
            }
        }
    }

    fn admit_ip(&self, ip: IpAddr, limits: &Limits, now: Instant) -> Result<(), Refusal> {
        let mut table = self.table();
        self.sweep(&mut table, limits, now);
        let entry = table.entry(ip).or_insert(PerIp {
            live: 0,
            bucket: None,
        });
        if limits
            .max_connections_per_ip
            .is_some_and(|max| entry.live >= max)
        {
            return Err(Refusal::PerIp);
        }
        if let Some(rate) = limits.new_connections_per_ip_per_second {
            let bucket = entry.bucket.get_or_insert_with(|| Bucket::full(rate, now));
            if !bucket.take(rate, now) {
                return Err(Refusal::PerIpRate);
            }
        }
        entry.live += 1;
        Ok(())
    }

    /// Forgets addresses with no connection and a full bucket once the table
    /// has doubled since the last sweep: amortised O(1) per accept, and the
    /// table stays proportional to the addresses active in the last second.
    fn sweep(&self, table: &mut HashMap<IpAddr, PerIp>, limits: &Limits, now: Instant) {
        if table.len() < self.swept_at.load(Relaxed).saturating_mul(2).max(1024) {
            return;
        }
        let rate = limits.new_connections_per_ip_per_second;
        table.retain(|_, e| {
            e.live > 0
                || match (e.bucket, rate) {
                    (Some(b), Some(rate)) => !b.is_full(rate, now),
                    _ => false,
                }
        });
        self.swept_at.store(table.len(), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(max: Option<u32>, per_ip: Option<u32>, rate: Option<u32>) -> Limits {
        Limits {
            max_connections: max,
            max_connections_per_ip: per_ip,
            new_connections_per_ip_per_second: rate,
            ..Limits::default()
        }
    }

    #[test]
    fn the_default_leaves_a_reserve_and_counts_two_descriptors_each() {
        assert_eq!(default_max_connections(1024), (1024 - 128) / 2);
        assert_eq!(
            default_max_connections(1 << 20),
            ((1 << 20) - (1 << 16)) / 2
        );
        assert_eq!(default_max_connections(10), 1);
    }

    #[test]
    fn the_process_limit_refuses_and_frees_on_drop() {
        let a = Arc::new(Admission::default());
        let l = limits(Some(2), None, None);
        let now = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let s1 = a.admit(ip, &l, now).unwrap();
        let _s2 = a.admit(ip, &l, now).unwrap();
        assert_eq!(a.admit(ip, &l, now).unwrap_err(), Refusal::MaxConnections);
        drop(s1);
        assert!(a.admit(ip, &l, now).is_ok());
        assert_eq!(a.refusals()[0], ("max_connections", 1));
    }

    #[test]
    fn the_per_ip_limit_counts_each_address_apart() {
        let a = Arc::new(Admission::default());
        let l = limits(None, Some(1), None);
        let now = Instant::now();
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let s = a.admit(one, &l, now).unwrap();
        assert_eq!(a.admit(mapped, &l, now).unwrap_err(), Refusal::PerIp);
        assert!(a.admit("192.0.2.2".parse().unwrap(), &l, now).is_ok());
        drop(s);
        assert!(a.admit(one, &l, now).is_ok());
        assert!(a.table().len() <= 2);
    }

    #[test]
    fn the_rate_allows_a_burst_then_refills() {
        let a = Arc::new(Admission::default());
        let l = limits(None, None, Some(3));
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(a.admit(ip, &l, t0).is_ok());
        }
        assert_eq!(a.admit(ip, &l, t0).unwrap_err(), Refusal::PerIpRate);
        let later = t0 + Duration::from_millis(334);
        assert!(
            a.admit(ip, &l, later).is_ok(),
            "a third of a second is one token"
        );
        assert_eq!(a.admit(ip, &l, later).unwrap_err(), Refusal::PerIpRate);
    }

    #[test]
    fn idle_addresses_are_swept() {
        let a = Arc::new(Admission::default());
        let l = limits(None, None, Some(1));
        let t0 = Instant::now();
        let ip = |i: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        for i in 0..1100 {
            let _ = a.admit(ip(i), &l, t0);
        }
        // Two seconds on, the first 1100 have full buckets again: the sweep
        // at twice the last size forgets them and keeps the recent ones.
        let later = t0 + Duration::from_secs(2);
        for i in 1100..2100 {
            let _ = a.admit(ip(i), &l, later);
        }
        assert!(a.table().len() < 1100, "{} entries", a.table().len());
    }
}
