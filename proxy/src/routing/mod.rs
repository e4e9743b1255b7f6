//! Routing state: what the data path reads to decide where a connection
//! goes, and the handles through which it registers tunnels and reports
//! back. The control task writes all of it; the data path only reads
//! (snapshot), registers (registry entries) and sends (reports).
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | [`ring`] | weighted rendezvous hashing over backend ids, xxh3 with fixed seeds, integer-only | none |
//! | [`bounded`] | bounded load (`balance_factor`): the bound and the walk down a key's rendezvous order | none |
//! | [`decide`] | one decision in pure steps (route, sticky key, backend and runner-up), shared by the gateway and `wsgate route` | none |
//! | [`admission`] | live client connections against the process and per-IP limits; refusals | none |
//! | [`path`] | the normal form of a request path, or why it has none | none |
//! | [`route`] | host and path-prefix matching | none |
//! | [`sticky`] | extracting the user key from query, header or cookie | none |
//! | [`snapshot`] | the one immutable routing state, swapped atomically; [`BackendState`] | none |
//! | [`registry`] | live tunnels per backend with their close signals; close counters | none |
//! | [`listenerid`] | which running listener a connection belongs to, across a rename's socket handover | none |
//! | [`reports`] | the bounded channel from the data path to the control task | none |

use std::sync::Arc;

pub(crate) mod admission;
pub(crate) mod bounded;
pub(crate) mod decide;
pub mod listenerid;
pub mod path;
pub(crate) mod registry;
pub(crate) mod reports;
pub mod ring;
pub(crate) mod route;
pub(crate) mod snapshot;
pub(crate) mod sticky;

pub(crate) use registry::{BackendKey, Registry};
pub(crate) use reports::{Report, Reporter};
pub use snapshot::{BackendState, DownReason};
pub(crate) use snapshot::{SharedSnapshot, Snapshot};

/// The data path's whole view of the control plane, shared by every
/// connection: nothing here can make a worker thread wait for it.
pub(crate) struct Routing {
    pub snapshot: SharedSnapshot,
    pub registry: Arc<Registry>,
    pub reports: Reporter,
    pub admission: Arc<admission::Admission>,
    /// Access log and session metrics (`observe`).
    pub observe: Arc<crate::observe::Observe>,
}

impl Routing {
    /// Every backend of `config` active, no tunnels yet.
    pub fn new(config: Arc<crate::config::Config>, reports: Reporter) -> Routing {
        let registry = Arc::new(Registry::default());
        let observe = Arc::new(crate::observe::Observe::default());
        observe
            .access_log
            .configure(config.access_log.as_ref().map(|a| &a.to));
        Routing {
            snapshot: SharedSnapshot::new(Snapshot::new(config, &registry)),
            registry,
            reports,
            admission: Arc::default(),
            observe,
        }
    }
}
