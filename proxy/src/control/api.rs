//! The admin API's request and response bodies, shared by the server
//! (`control::admin`) and its client (`cli`), so both sides speak one set
//! of types and the CLI never indexes raw JSON.

use serde::{Deserialize, Serialize};

pub use crate::routing::{BackendState, DownReason};

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub pools: Vec<PoolStatus>,
    pub reload: Option<ReloadOutcome>,
    pub shutting_down: bool,
    /// Every certificate the TLS listeners serve now.
    #[serde(default)]
    pub certificates: Vec<CertificateStatus>,
}

/// One certificate a TLS listener serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateStatus {
    pub listener: String,
    /// Its first DNS name, or its subject's common name.
    pub name: String,
    pub serial: String,
    pub not_after_unix: i64,
    /// Whole days until it expires (negative once expired).
    pub days_left: i64,
    /// Why the listener's last certificate reload failed, if it did: it
    /// still serves this certificate.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    /// `keep` or `migrate`.
    pub rebalance: String,
    pub backends: Vec<BackendStatus>,
    /// For a pool with `discovery`: how resolving its name goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
    /// For a pool with `balance_factor`: the bound now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceStatus>,
}

/// A pool's bounded load in `/v1/status`, computed from this replica's
/// live counts (another replica has its own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceStatus {
    /// `balance_factor` as the file writes it, e.g. `1.25`.
    pub factor: String,
    /// Live connections on the routable backends (the mean's numerator).
    pub routable_connections: u64,
    /// For each routable backend, the most live connections it may hold
    /// once it takes a new one: `ceil(factor * (routable_connections + 1)
    /// * weight / total weight)`. A backend at it sends new keys on.
    pub bounds: std::collections::BTreeMap<String, u64>,
    /// Requests sent past their first choice since wsgate started.
    pub overflow_total: u64,
}

/// A pool's DNS discovery in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// The name resolved.
    pub dns: String,
    /// `a` or `srv`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Backends of the pool that came from the last good answer.
    pub backends: usize,
    /// When a resolution last succeeded (None: never yet).
    pub last_success_unix: Option<u64>,
    /// Why the latest resolution failed; None while resolution works. The
    /// pool keeps its last good backends meanwhile.
    pub error: Option<String>,
    /// Failed resolutions since wsgate started.
    pub failures_total: u64,
    /// Failed resolutions in a row, now.
    pub consecutive_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub id: String,
    /// None for a removed backend that still has connections.
    pub address: Option<String>,
    pub weight: Option<u32>,
    /// `"state": "active" | "draining" | "down" | "removed"`, and for
    /// `down` a `"reason"`.
    #[serde(flatten)]
    pub state: BackendState,
    pub connections: usize,
    pub pending_closes: usize,
}

/// The outcome of the last reload, for status and `wsgate reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub at_unix: u64,
    pub error: Option<String>,
    /// `pool/id` of each backend the reload added or removed.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub notes: Vec<String>,
    /// Listeners whose certificates failed to load again; they keep
    /// serving their previous ones.
    #[serde(default)]
    pub certificate_errors: Vec<String>,
    /// Listeners the reload bound but could not start (out of descriptors,
    /// say); the next reload tries again.
    #[serde(default)]
    pub listener_errors: Vec<String>,
}

/// `GET /v1/activity`: what the status page shows besides `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    /// The last reloads, oldest first.
    pub reloads: Vec<ReloadEntry>,
    pub closes: CloseHistory,
    /// Backend drains and removals (finished ones too, until the backend
    /// is undrained or forgotten), then running rebalances, shutdown and
    /// listener closes.
    pub drains: Vec<DrainProgress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadEntry {
    pub at_unix: u64,
    pub ok: bool,
    /// What changed, or the first line of the error.
    pub summary: String,
}

/// Close frames per sampling interval over the last minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseHistory {
    pub interval_secs: u64,
    /// Oldest first; each holds the closes of the interval that ends at it.
    pub samples: Vec<CloseSample>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseSample {
    pub at_unix: u64,
    /// Only the (side, code) pairs seen in the interval.
    pub counts: Vec<CloseCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseCount {
    /// `client`, `backend` or `wsgate`, as in `/metrics`.
    pub side: String,
    /// A code label as in `/metrics`: `1000`..`1015`, `3xxx`, `4xxx`, `other`.
    pub code: String,
    pub count: u64,
}

/// A running (or finished) close job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrainProgress {
    /// `drain` (an operator drain or a removal), `rebalance`, `shutdown`
    /// or `listener_removed`.
    pub kind: String,
    /// `pool/id` for a backend's drain.
    pub backend: Option<String>,
    pub total: usize,
    /// Closes sent so far.
    pub sent: usize,
    /// Closes still to send (0 once finished or cancelled).
    pub pending: usize,
    pub elapsed_ms: u64,
    /// The schedule's length (the window, stretched by a rate cap).
    pub window_ms: u64,
    /// `sent` over the time elapsed.
    pub closes_per_second: f64,
}

/// `POST /v1/pools/{pool}/backends/{id}/drain`; both fields optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// A duration such as `30s` (default: the pool's `drain.window`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_code: Option<u16>,
}

/// The answer to a drain or a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closing {
    /// `pool/id`.
    pub backend: String,
    /// Connections that will get a Close.
    pub closing: usize,
}

/// The answer to an undrain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Undrained {
    pub backend: String,
    /// Closes that had not been sent yet and now will not be.
    pub cancelled: usize,
}

/// `PUT /v1/pools/{pool}/backends/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    crate::config::defaults::WEIGHT
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Added {
    pub backend: String,
}

/// Every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_state_travels_as_a_name_and_a_reason() {
        let down = BackendStatus {
            id: "b1".into(),
            address: Some("127.0.0.1:9001".into()),
            weight: Some(1),
            state: BackendState::Down(DownReason::PassiveFailures { failures: 3 }),
            connections: 2,
            pending_closes: 0,
        };
        let json = serde_json::to_value(&down).unwrap();
        assert_eq!(json["state"], "down");
        assert_eq!(json["reason"]["by"], "passive_failures");
        assert_eq!(json["reason"]["failures"], 3);
        assert_eq!(serde_json::from_value::<BackendStatus>(json).unwrap(), down);
        for state in [
            BackendState::Active,
            BackendState::Draining,
            BackendState::Removed,
        ] {
            let b = BackendStatus {
                state,
                ..down.clone()
            };
            let json = serde_json::to_value(&b).unwrap();
            assert_eq!(json["state"], state.name());
            assert!(json.get("reason").is_none(), "{json}");
            assert_eq!(serde_json::from_value::<BackendStatus>(json).unwrap(), b);
        }
    }
}
