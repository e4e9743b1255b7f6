//! What wsgate tells operators about the sessions it carried: one access
//! line per WebSocket session and per plain HTTP request, and the session
//! metrics in `/metrics`, with what only a frame-aware proxy knows (who
//! closed first, with which code, how many messages each way).
//!
//! Shared by both planes, like `routing`: the data path hands over each
//! ended session once, the control plane renders the metrics and points
//! the access log at its file. Nothing here is touched per message: a
//! tunnel counts in its own state (`tunnel::frame`, `tunnel::pump`) and
//! its totals are folded in here when it ends.
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | [`record`] | one access line's fields, who closed first, JSON and logfmt | none |
//! | [`accesslog`] | the bounded queue to the writer thread, which formats and writes; reopening for rotation | files |
//! | [`stats`] | the session counters and histograms, folded in per session; their text | none |
//! | [`keyhash`] | the keyed hash of a sticky key (HMAC-SHA256, per-process key) | none |

pub(crate) mod accesslog;
pub(crate) mod keyhash;
pub(crate) mod record;
pub(crate) mod stats;

/// The data path's and control plane's handle on observability, one per
/// process, held by `routing::Routing`.
#[derive(Default)]
pub(crate) struct Observe {
    pub access_log: accesslog::AccessLog,
    pub stats: stats::SessionStats,
}
