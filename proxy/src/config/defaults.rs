//! Every default of the config file, in one place: what wsgate uses for a
//! key the file leaves out. The README's config reference lists the same
//! values; change both together.

use std::time::Duration;

use super::{Drain, Limits, Timeouts};

/// `routes[].path_prefix`: every path.
pub const PATH_PREFIX: &str = "/";
/// `pools.*.backends[].weight`.
pub const WEIGHT: u32 = 1;

/// `pools.*.health_check.interval`.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// `pools.*.health_check.timeout`.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
/// `pools.*.health_check.fall`: consecutive failures that mark a backend down.
pub const HEALTH_FALL: u32 = 3;
/// `pools.*.health_check.rise`: consecutive successes that bring it back.
pub const HEALTH_RISE: u32 = 2;

/// `runtime.shutdown_window`: SIGTERM's 1001 closes are spread over this.
pub const SHUTDOWN_WINDOW: Duration = Duration::from_secs(10);
/// `runtime.threads`: 0 means one worker thread per core.
pub const THREADS: usize = 0;
/// `runtime.work_stealing`: off, each thread runs its own runtime.
pub const WORK_STEALING: bool = false;
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
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_message_bytes: 64 << 20,
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
