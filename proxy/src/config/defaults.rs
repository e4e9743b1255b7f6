//! Every default of the config file, in one place: what wsgate uses for a
//! key the file leaves out. The README's config reference lists the same
//! values; change both together.

use std::time::Duration;

use super::{Alpn, Drain, Http2Limits, Limits, Timeouts};

/// `routes[].path_prefix`: every path.
pub const PATH_PREFIX: &str = "/";
/// `pools.*.backends[].weight`.
pub const WEIGHT: u32 = 1;

/// `pools.*.balance_factor`: off, the backend is a pure function of the
/// key and the routable backends.
pub const BALANCE_FACTOR: Option<super::BalanceFactor> = None;
/// [`BALANCE_FACTOR`] as the README writes it.
pub const BALANCE_FACTOR_TEXT: &str = "off";

/// `pools.*.health_check.interval`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// `pools.*.health_check.timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// `pools.*.health_check.fall`: consecutive failures that mark a backend down.
pub const HEALTH_FALL: u32 = 3;
/// `pools.*.health_check.rise`: consecutive successes that bring it back.
pub const HEALTH_RISE: u32 = 2;

/// `pools.*.discovery.interval`: re-resolution period when an answer has
/// no TTL (no records), and the retry period after a failed resolution.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// `pools.*.discovery.min_interval`: a record TTL below this (dnsmasq and
/// many local servers answer with TTL 0) re-resolves this often instead.
pub const DISCOVERY_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// `pools.*.discovery.max_interval`: however long the TTL, re-resolve at
/// least this often, so a new pod is picked up within it.
pub const DISCOVERY_MAX_INTERVAL: Duration = Duration::from_secs(30);
/// `pools.*.discovery.weight`: every discovered backend's weight.
pub const DISCOVERY_WEIGHT: u32 = 1;
/// The port of a `pools.*.discovery.nameservers` entry given without one.
pub const DNS_PORT: u16 = 53;

/// `listeners[].tls.alpn`: HTTP/2 preferred, HTTP/1.1 for the rest.
pub const ALPN: [Alpn; 2] = [Alpn::H2, Alpn::Http11];

/// `limits.http2`. 100 concurrent streams is what HAProxy, Envoy and most
/// browsers' servers advertise. A stream may run 256 KiB ahead of wsgate's
/// reads (a 1 MiB message needs four window updates, not a stall per
/// 64 KiB), and a whole connection 1 MiB: the most one connection can make
/// wsgate buffer. The reset limits are h2's own defaults against rapid
/// reset (CVE-2023-44487), which hyper also uses.
impl Default for Http2Limits {
    fn default() -> Self {
        Http2Limits {
            max_concurrent_streams: 100,
            stream_window: 256 * 1024,
            connection_window: 1024 * 1024,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
        }
    }
}

/// `routes[].heartbeat.interval`: client silence before wsgate's Ping.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// `routes[].heartbeat.timeout`: silence after the Ping before the client
/// counts as gone.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

/// `runtime.shutdown_window`: SIGTERM's 1001 closes are spread over this.
pub const SHUTDOWN_WINDOW: Duration = Duration::from_secs(10);
/// `runtime.threads`: 0 means one worker thread per core.
pub const THREADS: usize = 0;
/// `runtime.work_stealing`: off, each thread runs its own runtime.
pub const WORK_STEALING: bool = false;
/// The longest duration any key takes: a week. Longer values are typos or
/// attempts to overflow deadline arithmetic (`Instant + 10^17 h` panics).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);
/// [`MAX_DURATION`] as the config file would write it.
pub const MAX_DURATION_TEXT: &str = "168h (7 days)";
/// `limits.max_message_bytes` at most: 1 GiB.
pub const MAX_MESSAGE_BYTES: u64 = 1 << 30;

/// `access_log.format`: one JSON object per line.
pub const ACCESS_LOG_FORMAT: &str = "json";
/// `access_log.log_raw_key`: log a keyed hash of the sticky key, not the key.
pub const ACCESS_LOG_RAW_KEY: bool = false;
/// `access_log.log_query`: plain HTTP paths are logged without the query.
pub const ACCESS_LOG_QUERY: bool = false;

/// `runtime.upgrade_sock`, in the temporary directory.
pub const UPGRADE_SOCK_NAME: &str = "wsgate-upgrade.sock";

impl Default for Drain {
    fn default() -> Self {
        Drain {
            window: Duration::from_secs(30),
            close_code: crate::tunnel::frame::close_code::SERVICE_RESTART,
            max_closes_per_second: 0,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            backend_connect: Duration::from_secs(3),
            backend_response: Duration::from_secs(10),
            idle: Duration::from_secs(15 * 60),
            close: Duration::from_secs(5),
            body: Duration::from_secs(30),
            write: Duration::from_secs(30),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_message_bytes: 64 << 20,
            max_connections: None,
            max_connections_per_ip: None,
            new_connections_per_ip_per_second: None,
            http2: Http2Limits::default(),
        }
    }
}

/// The worker thread count `runtime.threads` (or `run --threads`) asks
/// for: 0 means one per core.
pub fn resolve_threads(requested: usize) -> usize {
    if requested == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        requested
    }
}
