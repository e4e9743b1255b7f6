//! The client side of the admin API, used by `wsgate status`, `drain`,
//! `undrain`, `backend add|remove` and `reload`, for one replica or a
//! fleet of them ([`Fleet`]).
//!
//! Where to connect and which token to present come from flags or the
//! environment, else from the config file's `admin` section (`peers`, or
//! else `address`). That section is read leniently (as plain YAML, not
//! validated), so that `wsgate reload` still reaches a running proxy after
//! someone saved an invalid config, which is exactly when the operator
//! needs to see the error.
//!
//! An endpoint given by host name stands for every address the name
//! resolves to (a Kubernetes headless Service lists each pod), so one
//! name reaches every replica. Calls to the replicas run concurrently,
//! each bounded by [`CALL_TIMEOUT`]; one that fails is reported by name
//! and the others proceed.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::control::api::{BalanceStatus, DiscoveryStatus, ErrorReply, Status};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no admin address: pass --admin HOST:PORT[,HOST:PORT...], set WSGATE_ADMIN, or add `admin:` to {0}")]
    NoAddress(String),
    #[error("`{0}` is not an admin endpoint: use HOST:PORT or http://HOST:PORT")]
    BadEndpoint(String),
    #[error("cannot resolve the admin endpoint {endpoint}: {message}")]
    Resolve { endpoint: String, message: String },
    #[error("no answer from {name} within {}s", CALL_TIMEOUT.as_secs())]
    Timeout { name: String },
    #[error(
        "no admin token: pass --token, set WSGATE_ADMIN_TOKEN, or set admin.token_file in {0}"
    )]
    NoToken(String),
    #[error("cannot read token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the admin API at {address}: {message}")]
    Unreachable {
        address: SocketAddr,
        message: String,
    },
    /// The API answered with an error status; `message` is its explanation.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("unexpected answer from the admin API: {0}")]
    BadAnswer(String),
}

/// The longest one call to one replica may take, connect to last byte.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest a host name of `--admin` or `admin.peers` may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One replica's admin API.
#[derive(Clone)]
pub struct AdminClient {
    /// The endpoint as the operator wrote it (with the address, when a
    /// name stands for several).
    pub name: String,
    pub address: SocketAddr,
    token: Arc<str>,
}

/// The admin section of a config file, read without validating the rest.
struct AdminSection {
    /// `admin.peers` when it has entries, else `admin.address`.
    endpoints: Vec<String>,
    token_file: Option<PathBuf>,
}

fn admin_section(config: &Path) -> AdminSection {
    let none = AdminSection {
        endpoints: Vec::new(),
        token_file: None,
    };
    let Ok(text) = std::fs::read_to_string(config) else {
        return none;
    };
    let Ok(doc) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) else {
        return none;
    };
    let admin = &doc["admin"];
    let peers: Vec<String> = admin["peers"]
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|p| p.as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let endpoints = if peers.is_empty() {
        admin["address"]
            .as_str()
            .map(str::to_string)
            .into_iter()
            .collect()
    } else {
        peers
    };
    let base = config.parent().unwrap_or(Path::new("."));
    let token_file = admin["token_file"].as_str().map(|t| base.join(t));
    AdminSection {
        endpoints,
        token_file,
    }
}

/// The admin APIs one command acts on: every replica named (a host name
/// counts once per address), and the endpoints whose name did not resolve.
pub struct Fleet {
    pub members: Vec<AdminClient>,
    pub unresolved: Vec<(String, ClientError)>,
}

impl Fleet {
    /// `endpoints` (comma-separated) and `token` override what the config says.
    pub async fn resolve(
        config: &Path,
        endpoints: Option<&str>,
        token: Option<&str>,
    ) -> Result<Fleet, ClientError> {
        let section = admin_section(config);
        let shown = config.display().to_string();
        let endpoints: Vec<String> = match endpoints {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_string)
                .collect(),
            None => section.endpoints,
        };
        if endpoints.is_empty() {
            return Err(ClientError::NoAddress(shown));
        }
        let token: Arc<str> = match token.filter(|t| !t.is_empty()) {
            Some(t) => t.into(),
            None => {
                let path = section.token_file.ok_or(ClientError::NoToken(shown))?;
                std::fs::read_to_string(&path)
                    .map_err(|source| ClientError::TokenFile { path, source })?
                    .trim()
                    .into()
            }
        };
        let lookups = endpoints.iter().map(|e| addresses(e));
        let found = futures_util::future::join_all(lookups).await;
        let mut fleet = Fleet {
            members: Vec::new(),
            unresolved: Vec::new(),
        };
        for (endpoint, found) in endpoints.iter().zip(found) {
            let addresses = match found {
                Ok(a) => a,
                Err(e @ ClientError::Resolve { .. }) => {
                    fleet.unresolved.push((endpoint.clone(), e));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let several = addresses.len() > 1;
            for address in addresses {
                if fleet.members.iter().any(|m| m.address == address) {
                    continue;
                }
                let name = if several {
                    format!("{endpoint} ({address})")
                } else {
                    endpoint.clone()
                };
                fleet.members.push(AdminClient {
                    name,
                    address,
                    token: token.clone(),
                });
            }
        }
        Ok(fleet)
    }

    /// One replica, named once: the commands keep their one-replica output.
    pub fn is_single(&self) -> bool {
        self.members.len() + self.unresolved.len() == 1
    }

    /// `NAME: ` before a replica's lines when there are several, else nothing.
    pub fn prefix(&self, member: &AdminClient) -> String {
        if self.is_single() {
            String::new()
        } else {
            format!("{}: ", member.name)
        }
    }

    /// `call` on every replica at once, each bounded by [`CALL_TIMEOUT`];
    /// the answers in member order.
    pub async fn each<'a, T, F, Fut>(
        &'a self,
        call: F,
    ) -> Vec<(&'a AdminClient, Result<T, ClientError>)>
    where
        F: Fn(&'a AdminClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let calls = self.members.iter().map(|m| {
            let call = call(m);
            async move {
                let answer = tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Timeout {
                            name: m.name.clone(),
                        })
                    });
                (m, answer)
            }
        });
        futures_util::future::join_all(calls).await
    }
}

/// Every address of an endpoint: itself if it is an IP:port, else what
/// its host name resolves to.
async fn addresses(endpoint: &str) -> Result<Vec<SocketAddr>, ClientError> {
    let bare = crate::config::admin_endpoint(endpoint);
    if let Ok(address) = bare.parse::<SocketAddr>() {
        return Ok(vec![address]);
    }
    if !crate::config::valid_host_port(bare) {
        return Err(ClientError::BadEndpoint(endpoint.to_string()));
    }
    let resolve_error = |message: String| ClientError::Resolve {
        endpoint: endpoint.to_string(),
        message,
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(bare))
        .await
        .map_err(|_| resolve_error(format!("no answer within {}s", RESOLVE_TIMEOUT.as_secs())))?
        .map_err(|e| resolve_error(e.to_string()))?;
    let mut addresses: Vec<SocketAddr> = Vec::new();
    for a in found {
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    if addresses.is_empty() {
        return Err(resolve_error("no addresses".into()));
    }
    Ok(addresses)
}

impl AdminClient {
    /// One request with a JSON body; the answer parsed as `T`.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let payload = match body {
            Some(b) => {
                serde_json::to_string(b).map_err(|e| ClientError::BadAnswer(e.to_string()))?
            }
            None => String::new(),
        };
        let text = self.request(method, path, payload).await?;
        serde_json::from_str(&text).map_err(|e| ClientError::BadAnswer(format!("{e}: {text}")))
    }

    /// One request without a body; the answer as text (`status --json`).
    pub async fn call_text(&self, method: Method, path: &str) -> Result<String, ClientError> {
        self.request(method, path, String::new()).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        payload: String,
    ) -> Result<String, ClientError> {
        let unreachable = |message: String| ClientError::Unreachable {
            address: self.address,
            message,
        };
        let step = Duration::from_secs(10);
        let tcp = tokio::time::timeout(step, tokio::net::TcpStream::connect(self.address))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.address.to_string())
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let resp = tokio::time::timeout(step, sender.send_request(req))
            .await
            .map_err(|_| unreachable("no answer within 10 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = tokio::time::timeout(step, resp.into_body().collect())
            .await
            .map_err(|_| unreachable("answer stalled".into()))?
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if status.is_success() {
            Ok(text)
        } else {
            let message = serde_json::from_str::<ErrorReply>(&text)
                .map_or_else(|_| text.trim().to_string(), |e| e.error);
            Err(ClientError::Api { status, message })
        }
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }
}

/// What a wait across replicas ended with.
pub struct WaitOutcome {
    /// No connection left on any replica still answering.
    pub empty: bool,
    /// Replicas whose status could not be read (left out from then on).
    pub failed: Vec<(String, ClientError)>,
}

/// Live connections of `pool/id` in one status.
fn connections_of(status: &Status, pool: &str, id: &str) -> usize {
    status
        .pools
        .iter()
        .filter(|p| p.name == pool)
        .flat_map(|p| &p.backends)
        .find(|b| b.id == id)
        .map_or(0, |b| b.connections)
}

/// Waits until `pool/id` has no connections left on any of `members`,
/// showing one progress bar for them all (connections left across the
/// fleet). Gives up at `timeout`. A replica whose status fails is reported
/// in the outcome and no longer waited for.
pub async fn wait_empty(
    members: &[AdminClient],
    pool: &str,
    id: &str,
    timeout: Duration,
) -> WaitOutcome {
    let deadline = Instant::now() + timeout;
    let tty = std::io::stderr().is_terminal();
    let label = match members.len() {
        1 => format!("{pool}/{id}"),
        n => format!("{pool}/{id} on {n} replicas"),
    };
    let mut live: Vec<&AdminClient> = members.iter().collect();
    let mut failed = Vec::new();
    // Each replica's count when first seen: the bar's total.
    let mut first: Vec<Option<usize>> = vec![None; members.len()];
    let mut last_printed = None;
    loop {
        let polls = live.iter().map(|m| async move {
            let answer = tokio::time::timeout(CALL_TIMEOUT, m.status())
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::Timeout {
                        name: m.name.clone(),
                    })
                });
            (*m, answer)
        });
        let mut left = 0;
        let mut still = Vec::new();
        for (m, answer) in futures_util::future::join_all(polls).await {
            match answer {
                Ok(status) => {
                    let n = connections_of(&status, pool, id);
                    if let Some(slot) = members
                        .iter()
                        .position(|x| x.address == m.address)
                        .and_then(|i| first.get_mut(i))
                    {
                        slot.get_or_insert(n);
                    }
                    left += n;
                    still.push(m);
                }
                Err(e) => failed.push((m.name.clone(), e)),
            }
        }
        live = still;
        let total = first.iter().flatten().sum::<usize>().max(left);
        if tty {
            eprint!("\r{}", progress_line(&label, left, total));
        } else if last_printed != Some(left) {
            eprintln!("{label}: {left} connections left");
            last_printed = Some(left);
        }
        let timed_out = Instant::now() >= deadline;
        if left == 0 || timed_out || live.is_empty() {
            if tty {
                eprintln!();
            }
            return WaitOutcome {
                empty: left == 0,
                failed,
            };
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `chat/b2 [##########----------] 150/300 closed`
pub fn progress_line(label: &str, left: usize, total: usize) -> String {
    let done = total.saturating_sub(left);
    let width = 30;
    let filled = (done * width)
        .checked_div(total)
        .unwrap_or(width)
        .min(width);
    format!(
        "{label} [{}{}] {done}/{total} closed",
        "#".repeat(filled),
        "-".repeat(width - filled)
    )
}

const BACKEND_COLUMNS: [&str; 7] = [
    "POOL", "BACKEND", "STATE", "CONNS", "PENDING", "WEIGHT", "ADDRESS",
];

/// One status's backends as table cells, in [`BACKEND_COLUMNS`] order.
fn backend_rows(status: &Status) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for p in &status.pools {
        for b in &p.backends {
            rows.push(vec![
                p.name.clone(),
                b.id.clone(),
                b.state.to_string(),
                b.connections.to_string(),
                b.pending_closes.to_string(),
                b.weight.map_or("-".into(), |w| w.to_string()),
                b.address.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
    }
    rows
}

/// Rows as columns padded to their widest cell. A short row's last cell
/// (an unreachable replica's error) runs on over the columns it lacks, and
/// does not widen them.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter(|r| i + 1 < r.len() || r.len() == columns)
                .map(|r| r.get(i).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Renders status as an aligned table.
pub fn status_table(status: &Status) -> String {
    let mut rows = vec![BACKEND_COLUMNS.map(String::from).to_vec()];
    rows.extend(backend_rows(status));
    aligned(&rows) + &status_notes(status)
}

/// Each replica's backends in one table with a REPLICA column; a replica
/// that did not answer gets one row saying why. Then each replica's notes
/// (failed reload, certificates, shutdown), and every backend whose state
/// differs between the replicas that answered.
pub fn fleet_status_table(replicas: &[(String, Result<Status, String>)]) -> String {
    let mut rows = vec![std::iter::once("REPLICA".to_string())
        .chain(BACKEND_COLUMNS.map(String::from))
        .collect::<Vec<_>>()];
    let mut notes = String::new();
    for (name, answer) in replicas {
        match answer {
            Ok(status) => {
                for r in backend_rows(status) {
                    rows.push(std::iter::once(name.clone()).chain(r).collect());
                }
                for line in status_notes(status).lines() {
                    notes.push_str(&format!("{name}: {line}\n"));
                }
            }
            Err(e) => rows.push(vec![name.clone(), format!("UNREACHABLE: {e}")]),
        }
    }
    aligned(&rows) + &notes + &disagreements(replicas)
}

/// `replicas disagree on chat/b2: draining on A; active on B` for each
/// backend whose state is not the same on every replica that answered
/// (a drain that missed one, a backend only some replicas know).
fn disagreements(replicas: &[(String, Result<Status, String>)]) -> String {
    let answered: Vec<(&String, &Status)> = replicas
        .iter()
        .filter_map(|(n, a)| a.as_ref().ok().map(|s| (n, s)))
        .collect();
    let mut backends: Vec<(String, String)> = Vec::new();
    for (_, s) in &answered {
        for p in &s.pools {
            for b in &p.backends {
                let key = (p.name.clone(), b.id.clone());
                if !backends.contains(&key) {
                    backends.push(key);
                }
            }
        }
    }
    let mut out = String::new();
    for (pool, id) in backends {
        let states: Vec<(&String, String)> = answered
            .iter()
            .map(|(name, s)| {
                let state = s
                    .pools
                    .iter()
                    .filter(|p| p.name == pool)
                    .flat_map(|p| &p.backends)
                    .find(|b| b.id == id)
                    .map_or("absent".to_string(), |b| b.state.name().to_string());
                (*name, state)
            })
            .collect();
        if states.iter().any(|(_, s)| *s != states[0].1) {
            let each: Vec<String> = states.iter().map(|(n, s)| format!("{s} on {n}")).collect();
            out.push_str(&format!(
                "replicas disagree on {pool}/{id}: {}\n",
                each.join("; ")
            ));
        }
    }
    out
}

/// The lines after the table: a failed reload, certificates, shutdown.
fn status_notes(status: &Status) -> String {
    let mut out = String::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for p in &status.pools {
        if let Some(d) = &p.discovery {
            out.push_str(&discovery_line(&p.name, d, now));
            out.push('\n');
        }
        if let Some(b) = &p.balance {
            out.push_str(&balance_line(&p.name, b));
            out.push('\n');
        }
    }
    if let Some(reload) = &status.reload {
        if !reload.ok {
            out.push_str(&format!(
                "last reload FAILED (still serving the previous config):\n{}\n",
                reload.error.clone().unwrap_or_default()
            ));
        }
    }
    for c in &status.certificates {
        let warn = if c.days_left < crate::control::certificates::WARN_DAYS {
            "  WARNING: expires soon"
        } else {
            ""
        };
        out.push_str(&format!(
            "certificate {} {} serial {}: {} days left{warn}\n",
            c.listener, c.name, c.serial, c.days_left
        ));
        if let Some(e) = &c.error {
            out.push_str(&format!(
                "  last reload of listener {}'s certificates FAILED (still serving this one): {e}\n",
                c.listener
            ));
        }
    }
    if status.shutting_down {
        out.push_str("shutting down\n");
    }
    out
}

/// `bounded load chat (factor 1.25): 12 live on routable backends, bounds b1 6, b2 6, b3 6; 3 sent past their first choice`.
pub fn balance_line(pool: &str, b: &BalanceStatus) -> String {
    let each: Vec<String> = b.bounds.iter().map(|(id, n)| format!("{id} {n}")).collect();
    format!(
        "bounded load {pool} (factor {}): {} live on routable backends, bounds {}; {} sent past their first choice",
        b.factor,
        b.routable_connections,
        if each.is_empty() { "none".to_string() } else { each.join(", ") },
        b.overflow_total
    )
}

/// `discovery chat (a chat.ns.svc): 3 backends, last answer 2s ago, 0 failures`,
/// or what is failing and that the pool keeps its backends.
pub fn discovery_line(pool: &str, d: &DiscoveryStatus, now_unix: u64) -> String {
    let head = format!("discovery {pool} ({} {})", d.kind, d.dns);
    let last = d.last_success_unix.map_or("never".to_string(), |t| {
        format!("{}s ago", now_unix.saturating_sub(t))
    });
    match &d.error {
        None if d.last_success_unix.is_some() => format!(
            "{head}: {} backends, last answer {last}, {} failures in all",
            d.backends, d.failures_total
        ),
        None => format!("{head}: no answer yet"),
        Some(e) => format!(
            "{head}: FAILING ({} in a row, {} in all; last answer {last}), keeping the last good {} backends: {e}",
            d.consecutive_failures, d.failures_total, d.backends
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{BackendStatus, PoolStatus};
    use crate::routing::BackendState;

    #[test]
    fn discovery_line_says_whether_dns_works() {
        let mut d = DiscoveryStatus {
            dns: "chat.test".into(),
            kind: "a".into(),
            backends: 3,
            last_success_unix: Some(100),
            error: None,
            failures_total: 1,
            consecutive_failures: 0,
        };
        assert_eq!(
            discovery_line("chat", &d, 102),
            "discovery chat (a chat.test): 3 backends, last answer 2s ago, 1 failures in all"
        );
        d.error = Some("DNS lookup of `chat.test` failed: request timed out".into());
        d.consecutive_failures = 2;
        d.failures_total = 3;
        assert_eq!(
            discovery_line("chat", &d, 110),
            "discovery chat (a chat.test): FAILING (2 in a row, 3 in all; last answer 10s ago), keeping the last good 3 backends: DNS lookup of `chat.test` failed: request timed out"
        );
        d.last_success_unix = None;
        d.error = None;
        assert_eq!(
            discovery_line("chat", &d, 110),
            "discovery chat (a chat.test): no answer yet"
        );
    }

    #[test]
    fn progress_bar_fills() {
        assert_eq!(
            progress_line("chat/b2", 300, 300),
            format!("chat/b2 [{}] 0/300 closed", "-".repeat(30))
        );
        assert_eq!(
            progress_line("chat/b2", 0, 300),
            format!("chat/b2 [{}] 300/300 closed", "#".repeat(30))
        );
        assert_eq!(
            progress_line("chat/b2 on 2 replicas", 0, 0),
            format!("chat/b2 on 2 replicas [{}] 0/0 closed", "#".repeat(30))
        );
    }

    fn resolve(
        file: &Path,
        endpoints: Option<&str>,
        token: Option<&str>,
    ) -> Result<Fleet, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(Fleet::resolve(file, endpoints, token))
    }

    #[test]
    fn admin_section_is_read_from_an_invalid_config() {
        let dir = std::env::temp_dir().join(format!("wsgate-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("w.yaml");
        std::fs::write(
            &file,
            "admin: { address: \"127.0.0.1:9900\", token_file: t.token }\nbogus_key: 1\n",
        )
        .unwrap();
        std::fs::write(dir.join("t.token"), "abc\n").unwrap();
        let f = resolve(&file, None, None).unwrap();
        assert!(f.is_single());
        assert_eq!(f.members[0].address, "127.0.0.1:9900".parse().unwrap());
        assert_eq!(&*f.members[0].token, "abc");
        assert_eq!(f.prefix(&f.members[0]), "");
        let f = resolve(&file, Some("127.0.0.1:1"), Some("x")).unwrap();
        assert_eq!(
            (f.members[0].address.port(), &*f.members[0].token),
            (1, "x")
        );
        // Peers replace the address; duplicates count once; a list overrides both.
        std::fs::write(
            &file,
            "admin: { address: \"127.0.0.1:9900\", token_file: t.token, peers: [\"http://127.0.0.1:9901/\", \"127.0.0.1:9902\", \"127.0.0.1:9902\"] }\n",
        )
        .unwrap();
        let f = resolve(&file, None, None).unwrap();
        let ports: Vec<u16> = f.members.iter().map(|m| m.address.port()).collect();
        assert_eq!(ports, [9901, 9902]);
        assert!(!f.is_single());
        assert_eq!(f.prefix(&f.members[0]), "http://127.0.0.1:9901/: ");
        let f = resolve(&file, Some("127.0.0.1:1, 127.0.0.1:2"), None).unwrap();
        assert_eq!(f.members.len(), 2);
        assert!(matches!(
            resolve(&file, Some("127.0.0.1:1,not an endpoint"), None),
            Err(ClientError::BadEndpoint(_))
        ));
        std::fs::write(&file, "listeners: []\n").unwrap();
        assert!(matches!(
            resolve(&file, None, None),
            Err(ClientError::NoAddress(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    fn status(states: &[(&str, BackendState, usize)]) -> Status {
        Status {
            pools: vec![PoolStatus {
                name: "chat".into(),
                rebalance: "keep".into(),
                discovery: None,
                balance: None,
                backends: states
                    .iter()
                    .map(|(id, state, connections)| BackendStatus {
                        id: id.to_string(),
                        address: Some("127.0.0.1:1".into()),
                        weight: Some(1),
                        state: *state,
                        connections: *connections,
                        pending_closes: 0,
                    })
                    .collect(),
            }],
            reload: None,
            shutting_down: false,
            certificates: Vec::new(),
        }
    }

    #[test]
    fn fleet_table_has_a_row_per_replica_backend_and_names_disagreements() {
        let a = status(&[
            ("b1", BackendState::Active, 3),
            ("b2", BackendState::Draining, 1),
        ]);
        let b = status(&[
            ("b1", BackendState::Active, 4),
            ("b2", BackendState::Active, 2),
        ]);
        let table = fleet_status_table(&[
            ("A".into(), Ok(a.clone())),
            ("B".into(), Ok(b)),
            ("C".into(), Err("cannot reach the admin API".into())),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("REPLICA  POOL  BACKEND  STATE"),
            "{table}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("A ")).count(),
            2,
            "{table}"
        );
        assert_eq!(
            lines.iter().filter(|l| l.starts_with("B ")).count(),
            2,
            "{table}"
        );
        assert!(
            lines.contains(&"C        UNREACHABLE: cannot reach the admin API"),
            "{table}"
        );
        assert_eq!(
            lines.last().copied(),
            Some("replicas disagree on chat/b2: draining on A; active on B"),
            "{table}"
        );
        // Agreeing replicas: no such line. One replica: the plain table.
        let agree = fleet_status_table(&[("A".into(), Ok(a.clone())), ("B".into(), Ok(a.clone()))]);
        assert!(!agree.contains("disagree"), "{agree}");
        assert!(status_table(&a)
            .starts_with("POOL  BACKEND  STATE     CONNS  PENDING  WEIGHT  ADDRESS\n"));
    }
}
