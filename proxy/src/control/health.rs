//! Health checks. Active: every `interval`, an HTTP GET of a path (2xx is
//! healthy) or a TCP connect, each bounded by `timeout`; `fall` consecutive
//! failures mark a backend down and `rise` consecutive successes bring it
//! back. Passive: failed connects and failed handshakes seen by the data
//! path count toward `fall` too (reported through `routing::reports`), so
//! a dead backend stops receiving users after `fall` failed attempts even
//! between probes. Passive checks need an active check configured on the
//! pool: the active check is what brings the backend back.
//!
//! A checker only probes and sends each result to the control task; the
//! task keeps the [`Streak`] and decides, so every health transition
//! happens in the one place that owns backend state.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::Command;
use crate::config::{HealthCheck, HealthProbe};
use crate::routing::BackendKey;

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy,
    /// wsgate could not even try (out of descriptors or memory): says
    /// nothing about the backend, so it is not recorded.
    Inconclusive,
}

/// One probe, bounded by `timeout`. With `proxy_header`, the connection
/// starts with a PROXY v2 LOCAL header, as the pool's backends expect one.
pub async fn probe(
    address: &str,
    probe: &HealthProbe,
    timeout: Duration,
    proxy_header: bool,
) -> Verdict {
    tokio::time::timeout(timeout, probe_inner(address, probe, proxy_header))
        .await
        .unwrap_or(Verdict::Unhealthy)
}

async fn probe_inner(address: &str, probe: &HealthProbe, proxy_header: bool) -> Verdict {
    let mut tcp = match TcpStream::connect(address).await {
        Ok(tcp) => tcp,
        Err(e) if crate::localfault::is_local_resource_error(&e) => return Verdict::Inconclusive,
        Err(_) => return Verdict::Unhealthy,
    };
    if proxy_header
        && tcp
            .write_all(&crate::proxyproto::encode_v2_local())
            .await
            .is_err()
    {
        return Verdict::Unhealthy;
    }
    let HealthProbe::Http(path) = probe else {
        return Verdict::Healthy;
    };
    if http_probe(&mut tcp, address, path).await {
        Verdict::Healthy
    } else {
        Verdict::Unhealthy
    }
}

async fn http_probe(tcp: &mut TcpStream, address: &str, path: &str) -> bool {
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

/// The rise/fall rule over one backend's active probes. Pure, so the
/// control task applies it to each probe result as it arrives.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Streak {
    fails: u32,
    oks: u32,
}

/// What a probe result does to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transition {
    Up,
    /// Down after this many failed probes in a row.
    Down(u32),
}

impl Streak {
    /// Records one probe of a backend that is `down` or not.
    pub fn record(&mut self, healthy: bool, check: &HealthCheck, down: bool) -> Option<Transition> {
        if healthy {
            self.oks = self.oks.saturating_add(1);
            self.fails = 0;
            (down && self.oks >= check.rise).then_some(Transition::Up)
        } else {
            self.fails = self.fails.saturating_add(1);
            self.oks = 0;
            (!down && self.fails >= check.fall).then_some(Transition::Down(self.fails))
        }
    }
}

/// The running checker of each checked backend.
#[derive(Default)]
pub(super) struct Checkers {
    running: HashMap<BackendKey, Checker>,
}

struct Checker {
    task: AbortHandle,
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Checkers {
    /// Starts (or restarts) the checker of `backend`. It sends each result
    /// to the control task, and stops once the task is gone. Must be called
    /// on the control runtime.
    pub fn start(
        &mut self,
        backend: &BackendKey,
        address: &str,
        check: &HealthCheck,
        to_control: mpsc::WeakSender<Command>,
    ) {
        let task = tokio::spawn(run_checks(
            backend.clone(),
            address.to_string(),
            check.clone(),
            to_control,
        ));
        self.running.insert(
            backend.clone(),
            Checker {
                task: task.abort_handle(),
            },
        );
    }

    pub fn stop(&mut self, backend: &BackendKey) {
        self.running.remove(backend);
    }
}

async fn run_checks(
    backend: BackendKey,
    address: String,
    check: HealthCheck,
    to_control: mpsc::WeakSender<Command>,
) {
    let mut inconclusive = false;
    loop {
        tokio::time::sleep(check.interval).await;
        let healthy = match probe(
            &address,
            &check.probe,
            check.timeout,
            check.send_proxy_protocol,
        )
        .await
        {
            Verdict::Healthy => true,
            Verdict::Unhealthy => false,
            Verdict::Inconclusive => {
                if !inconclusive {
                    tracing::warn!(%backend, "health probe skipped: wsgate is out of descriptors or memory (not counted against the backend)");
                }
                inconclusive = true;
                continue;
            }
        };
        inconclusive = false;
        let Some(tx) = to_control.upgrade() else {
            return;
        };
        let result = Command::Probe {
            backend: backend.clone(),
            address: address.clone(),
            healthy,
        };
        if tx.send(result).await.is_err() {
            return;
        }
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
        assert_eq!(probe(&ok, &path, t, false).await, Verdict::Healthy);
        assert_eq!(probe(&bad, &path, t, false).await, Verdict::Unhealthy);
        assert_eq!(
            probe(&bad, &HealthProbe::Tcp, t, false).await,
            Verdict::Healthy,
            "TCP only needs a connect"
        );
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert_eq!(
            probe(&closed, &HealthProbe::Tcp, t, false).await,
            Verdict::Unhealthy
        );
    }

    #[test]
    fn fall_failures_mark_down_and_rise_successes_bring_back() {
        let check = HealthCheck {
            probe: HealthProbe::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            fall: 3,
            rise: 2,
            send_proxy_protocol: false,
        };
        let mut s = Streak::default();
        assert_eq!(s.record(false, &check, false), None);
        assert_eq!(s.record(true, &check, false), None, "a success resets");
        assert_eq!(s.record(false, &check, false), None);
        assert_eq!(s.record(false, &check, false), None);
        assert_eq!(s.record(false, &check, false), Some(Transition::Down(3)));
        assert_eq!(s.record(true, &check, true), None);
        assert_eq!(s.record(false, &check, true), None, "a failure resets");
        assert_eq!(s.record(true, &check, true), None);
        assert_eq!(s.record(true, &check, true), Some(Transition::Up));
    }

    #[tokio::test]
    async fn silent_server_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let path = HealthProbe::Http("/".into());
        assert_eq!(
            probe(&addr, &path, Duration::from_millis(200), false).await,
            Verdict::Unhealthy
        );
    }
}
