//! Health checks. Active: every `interval`, an HTTP GET of a path (2xx is
//! healthy) or a TCP connect, each bounded by `timeout`; `fall` consecutive
//! failures mark a backend down and `rise` consecutive successes bring it
//! back. Passive: failed connects and failed handshakes seen by the data
//! path count toward `fall` too, so a dead backend stops receiving users
//! after `fall` failed attempts even between probes. Passive checks need an
//! active check configured on the pool: the active check is what brings the
//! backend back.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{HealthCheck, HealthProbe};
use crate::control::{Control, ControlError, ReloadOutcome};
use crate::registry::BackendKey;

/// One probe; true when healthy.
pub async fn probe(address: &str, probe: &HealthProbe, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe_inner(address, probe))
        .await
        .unwrap_or(false)
}

async fn probe_inner(address: &str, probe: &HealthProbe) -> bool {
    let Ok(mut tcp) = TcpStream::connect(address).await else {
        return false;
    };
    let HealthProbe::Http(path) = probe else {
        return true;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: wsgate-health\r\nConnection: close\r\n\r\n");
    if tcp.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    // Only the status line matters: "HTTP/1.1 2xx".
    let mut head = [0u8; 12];
    if tcp.read_exact(&mut head).await.is_err() {
        return false;
    }
    head.starts_with(b"HTTP/1.") && head[9] == b'2'
}

async fn run_checks(control: Arc<Control>, key: BackendKey, address: String, check: HealthCheck) {
    let (mut fails, mut oks) = (0u32, 0u32);
    loop {
        tokio::time::sleep(check.interval).await;
        let healthy = probe(&address, &check.probe, check.timeout).await;
        let down = control.is_down(&key);
        if healthy {
            oks += 1;
            fails = 0;
            control
                .registry
                .backend(&key)
                .consecutive_failures
                .store(0, Relaxed);
            if down && oks >= check.rise {
                control.set_health(&key, true);
            }
        } else {
            fails += 1;
            oks = 0;
            if !down && fails >= check.fall {
                control.set_health(&key, false);
            }
        }
    }
}

impl Control {
    /// (Re)starts one checker per backend of every pool with a health check.
    /// Must run on the control runtime.
    pub fn restart_health(self: &Arc<Self>) {
        let mut tasks = self.health_tasks.lock().unwrap_or_else(|p| p.into_inner());
        for t in tasks.drain(..) {
            t.abort();
        }
        let config = self.config();
        for pool in &config.pools {
            let Some(check) = &pool.health_check else {
                continue;
            };
            for b in &pool.backends {
                let task = tokio::spawn(run_checks(
                    self.clone(),
                    BackendKey::new(&pool.name, &b.id),
                    b.address.clone(),
                    check.clone(),
                ));
                tasks.push(task.abort_handle());
            }
        }
    }

    /// Reload, then restart the checkers for the new set of backends.
    pub fn reload_and_restart_health(self: &Arc<Self>) -> Result<ReloadOutcome, ControlError> {
        let outcome = self.reload()?;
        self.restart_health();
        Ok(outcome)
    }

    /// The data path failed to connect to or handshake with a backend.
    pub fn passive_failure(&self, key: &BackendKey) {
        let failures = self
            .registry
            .backend(key)
            .consecutive_failures
            .fetch_add(1, Relaxed)
            + 1;
        let config = self.config();
        let fall = config
            .pools
            .iter()
            .find(|p| p.name == key.pool)
            .and_then(|p| p.health_check.as_ref())
            .map(|h| h.fall);
        if let Some(fall) = fall {
            if failures >= fall {
                self.set_health(key, false);
            }
        }
    }

    /// The data path reached a backend.
    pub fn passive_success(&self, key: &BackendKey) {
        self.registry
            .backend(key)
            .consecutive_failures
            .store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn server(reply: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 512];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_probe_wants_2xx() {
        let t = Duration::from_secs(5);
        let ok = server(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        let bad = server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let path = HealthProbe::Http("/healthz".into());
        assert!(probe(&ok, &path, t).await);
        assert!(!probe(&bad, &path, t).await);
        assert!(
            probe(&bad, &HealthProbe::Tcp, t).await,
            "TCP only needs a connect"
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(!probe(&closed, &HealthProbe::Tcp, t).await);
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let path = HealthProbe::Http("/".into());
        assert!(!probe(&addr, &path, Duration::from_millis(200)).await);
    }
}
