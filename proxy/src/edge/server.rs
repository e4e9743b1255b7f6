//! The process: pingora's `Server` runs the edge (`listeners::EdgeService`)
//! on its worker runtime until it is told to stop, then exits.
//!
//! We use pingora for the process lifecycle (the worker runtime, graceful
//! shutdown on SIGTERM, listening-socket handoff on upgrade), not its
//! `ProxyHttp`, whose upgraded-session loop cannot inject a frame or be
//! cancelled from outside, nor its listening services, which are fixed
//! when the server starts (a reload may add or remove listeners). What
//! pingora does not do for us is done here: derive its shutdown grace
//! period from our drain window and close timeout.

use std::sync::Arc;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;

use super::listeners::{EdgeService, ListenerSet};
use crate::config::Config;
use crate::gateway::Gateway;

/// Runs pingora's server with the edge service until the process is told
/// to stop, then exits. The listeners start (and print their readiness
/// lines) once pingora has handed over any sockets of the previous process.
pub fn serve(
    config: &Config,
    listeners: Arc<ListenerSet>,
    gateway: Arc<Gateway>,
    upgrade: bool,
) -> ! {
    let mut conf = ServerConf {
        threads: config.runtime.threads,
        // On SIGTERM the control plane closes every tunnel with 1001 spread
        // over the shutdown window, and each close may take the close
        // timeout; pingora's default of 300 s would keep an idle process
        // alive for five minutes.
        grace_period_seconds: Some(
            config.runtime.shutdown_window.as_secs() + config.timeouts.close.as_secs() + 1,
        ),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: config.runtime.upgrade_sock.display().to_string(),
        work_stealing: config.runtime.work_stealing,
        ..ServerConf::default()
    };
    let pid = std::process::id();
    conf.pid_file = std::env::temp_dir()
        .join(format!("wsgate-{pid}.pid"))
        .display()
        .to_string();
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);

    // One service, so one worker runtime of `runtime.threads` threads for
    // every listener.
    server.add_service(EdgeService {
        set: listeners,
        gateway,
    });
    server.bootstrap();
    server.run_forever()
}
