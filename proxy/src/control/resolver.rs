//! DNS resolvers: one task per pool with `discovery`, on the control
//! thread's runtime like the health checkers. A resolver only asks (with
//! hickory-resolver) and sends each result to the control task as a
//! [`Command::Discovered`]; the task decides what the answer changes
//! (`control::discovery`), so every backend change has the one owner.
//!
//! Each resolution builds its resolver afresh (reading `/etc/resolv.conf`
//! again when no `nameservers` are set) with hickory's cache off: the TTL
//! decides when wsgate asks again, and every ask reaches the server.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, Record};
use hickory_resolver::TokioResolver;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::discovery::{self, Answer, DiscoveryError, Records, SrvTarget};
use super::Command;
use crate::config::{Discovery, RecordKind};

/// One DNS query's bound; a resolution that fails keeps the pool as it
/// is and is tried again after `discovery.interval`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// A resolution: what the control plane asks DNS. Boxed so that the
/// control task's tests can answer without a network.
pub(super) type Lookup = Arc<
    dyn Fn(Discovery) -> Pin<Box<dyn Future<Output = Result<Answer, DiscoveryError>> + Send>>
        + Send
        + Sync,
>;

/// The hickory-resolver lookup.
pub(super) fn hickory() -> Lookup {
    Arc::new(|d| Box::pin(async move { resolve(&d).await }))
}

/// The running resolver of each pool with discovery.
pub(super) struct Resolvers {
    running: HashMap<String, Running>,
    /// Tells a restarted resolver's results from its predecessor's.
    next_generation: u64,
    lookup: Lookup,
}

struct Running {
    generation: u64,
    task: AbortHandle,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolvers {
    pub fn new(lookup: Lookup) -> Resolvers {
        Resolvers {
            running: HashMap::new(),
            next_generation: 0,
            lookup,
        }
    }

    /// Starts (or restarts) the resolver of `pool`; it resolves at once,
    /// then as the answers' TTLs say, and stops once the control task is
    /// gone. Must be called on the control runtime.
    pub fn start(&mut self, pool: &str, d: &Discovery, to_control: mpsc::WeakSender<Command>) {
        self.next_generation += 1;
        let generation = self.next_generation;
        let task = tokio::spawn(run(
            pool.to_string(),
            generation,
            d.clone(),
            self.lookup.clone(),
            to_control,
        ));
        self.running.insert(
            pool.to_string(),
            Running {
                generation,
                task: task.abort_handle(),
            },
        );
    }

    pub fn stop(&mut self, pool: &str) {
        self.running.remove(pool);
    }

    /// Whether a result comes from the resolver `pool` runs now (not one
    /// a reload replaced, whose last result may still be queued).
    pub fn is_current(&self, pool: &str, generation: u64) -> bool {
        self.running
            .get(pool)
            .is_some_and(|r| r.generation == generation)
    }
}

async fn run(
    pool: String,
    generation: u64,
    d: Discovery,
    lookup: Lookup,
    to_control: mpsc::WeakSender<Command>,
) {
    loop {
        let answer = lookup(d.clone()).await;
        let (result, delay) =
            match answer.and_then(|a| Ok((discovery::backends(&a.records, &d)?, a.ttl))) {
                Ok((backends, ttl)) => (Ok(backends), discovery::next_delay(ttl, &d)),
                Err(e) => (Err(e), d.interval),
            };
        let Some(tx) = to_control.upgrade() else {
            return;
        };
        let command = Command::Discovered {
            pool: pool.clone(),
            generation,
            result,
        };
        if tx.send(command).await.is_err() {
            return;
        }
        drop(tx);
        tokio::time::sleep(delay).await;
    }
}

fn lookup_error(d: &Discovery, e: impl std::fmt::Display) -> DiscoveryError {
    DiscoveryError::Lookup {
        name: d.name.clone(),
        reason: e.to_string(),
    }
}

fn resolver(d: &Discovery) -> Result<TokioResolver, DiscoveryError> {
    let mut builder = if d.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| DiscoveryError::SystemConfig(e.to_string()))?
    } else {
        let servers = d
            .nameservers
            .iter()
            .map(|a| {
                let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
                udp.port = a.port();
                tcp.port = a.port();
                NameServerConfig::new(a.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut b = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        let mut opts = ResolverOpts::default();
        opts.use_hosts_file = ResolveHosts::Never;
        *b.options_mut() = opts;
        b
    };
    let opts = builder.options_mut();
    opts.cache_size = 0;
    opts.timeout = QUERY_TIMEOUT;
    opts.attempts = 1;
    builder.build().map_err(|e| lookup_error(d, e))
}

/// The records of one lookup, or none for "no such records"; any other
/// error fails the whole resolution, so a half answer never shrinks a pool.
fn records_of(
    d: &Discovery,
    lookup: Result<Vec<Record>, NetError>,
) -> Result<Vec<Record>, DiscoveryError> {
    match lookup {
        Ok(records) => Ok(records),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(lookup_error(d, e)),
    }
}

/// Every A and AAAA address of `name`, with the records' smallest TTL.
async fn addresses(
    r: &TokioResolver,
    d: &Discovery,
    name: &str,
) -> Result<(Vec<IpAddr>, Option<u32>), DiscoveryError> {
    let (v4, v6) = tokio::join!(r.ipv4_lookup(name), r.ipv6_lookup(name));
    let mut records = records_of(d, v4.map(|l| l.answers().to_vec()))?;
    records.extend(records_of(d, v6.map(|l| l.answers().to_vec()))?);
    Ok(ips_and_ttl(&records))
}

fn ips_and_ttl(records: &[Record]) -> (Vec<IpAddr>, Option<u32>) {
    let ips = records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    (ips, records.iter().map(|r| r.ttl).min())
}

async fn resolve(d: &Discovery) -> Result<Answer, DiscoveryError> {
    let r = resolver(d)?;
    match d.kind {
        RecordKind::A { .. } => {
            let (ips, ttl) = addresses(&r, d, &d.name).await?;
            Ok(Answer {
                records: Records::A(ips),
                ttl,
            })
        }
        RecordKind::Srv => {
            let lookup = records_of(
                d,
                r.srv_lookup(d.name.as_str()).await.map(|l| {
                    let mut all = l.answers().to_vec();
                    all.extend(l.additionals().iter().cloned());
                    all
                }),
            )?;
            let mut ttl = lookup.iter().map(|rec| rec.ttl).min();
            let mut targets = Vec::new();
            for rec in &lookup {
                let RData::SRV(srv) = &rec.data else {
                    continue;
                };
                let target = srv.target.to_string();
                // The server's additional section, when it sent one.
                let given: Vec<Record> = lookup
                    .iter()
                    .filter(|a| a.name == srv.target)
                    .cloned()
                    .collect();
                let (mut ips, mut t) = ips_and_ttl(&given);
                if ips.is_empty() && !discovery::srv_id(&target).is_empty() {
                    (ips, t) = addresses(&r, d, &target).await?;
                }
                ttl = match (ttl, t) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                targets.push(SrvTarget {
                    target,
                    port: srv.port,
                    addresses: ips,
                });
            }
            Ok(Answer {
                records: Records::Srv(targets),
                ttl,
            })
        }
    }
}
