//! The serde mirror of `wsgate.yaml`: exactly what the file may say, nothing
//! more. Unknown keys are rejected here (`deny_unknown_fields`) so typos fail
//! loudly. Semantic checks and typing (addresses, durations, references
//! between sections) happen in the validator in `config/mod.rs`, which turns this into the
//! runtime [`Config`](super::Config).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listeners: Vec<FileListener>,
    #[serde(default)]
    pub routes: Vec<FileRoute>,
    #[serde(default)]
    pub pools: BTreeMap<String, FilePool>,
    #[serde(default)]
    pub timeouts: FileTimeouts,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub runtime: FileRuntime,
    #[serde(default)]
    pub admin: Option<FileAdmin>,
    /// Peers (CIDR or single addresses) whose forwarding headers are kept.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    #[serde(default)]
    pub access_log: Option<super::accesslog::FileAccessLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub address: String,
    /// File holding the bearer token; `WSGATE_ADMIN_TOKEN` may be used instead.
    #[serde(default)]
    pub token_file: Option<String>,
    /// Every replica's admin API (`host:port`, optionally `http://`), for
    /// the CLI's fleet-wide commands; they share the token.
    #[serde(default)]
    pub peers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    pub name: String,
    pub address: String,
    #[serde(default)]
    pub tls: Option<FileTls>,
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    #[serde(default)]
    pub proxy_protocol: Option<FileProxyProtocol>,
    /// Prior-knowledge HTTP/2 on a plain listener.
    #[serde(default)]
    pub h2c: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxyProtocol {
    /// Balancers (CIDR or single addresses) that must send the header.
    pub accept_from: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub certificates: Vec<FileCertificate>,
    /// Protocols offered in ALPN, in order (`h2`, `http/1.1`).
    #[serde(default)]
    pub alpn: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    pub cert: String,
    pub key: String,
    /// SNI names this certificate answers for (exact or `*.suffix`). A
    /// certificate without names is the default for unmatched or absent SNI.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Create a self-signed localhost certificate at `cert`/`key` when the
    /// files do not exist. For demos and development only.
    #[serde(default)]
    pub generate_if_missing: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    pub pool: String,
    #[serde(default)]
    pub sticky_key: Vec<String>,
    #[serde(default)]
    pub on_missing_key: Option<String>,
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// Overrides `timeouts.backend_response` for this route (long-polls).
    #[serde(default)]
    pub backend_response: Option<String>,
    #[serde(default)]
    pub heartbeat: Option<FileHeartbeat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeartbeat {
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

fn default_prefix() -> String {
    super::defaults::PATH_PREFIX.to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    /// May be empty (or absent) only when `discovery` is set.
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    /// Backends from DNS, on top of the static ones.
    #[serde(default)]
    pub discovery: Option<FileDiscovery>,
    #[serde(default)]
    pub health_check: Option<FileHealthCheck>,
    #[serde(default)]
    pub drain: FileDrain,
    /// `keep` (default) or `migrate`.
    #[serde(default)]
    pub rebalance: Option<String>,
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// `v2`: start each backend connection with a PROXY protocol header.
    #[serde(default)]
    pub send_proxy_protocol: Option<String>,
    /// Bounded load, e.g. `1.25`; absent is off.
    #[serde(default)]
    pub balance_factor: Option<f64>,
}

/// `pools.NAME.discovery`: backends from the answers of a DNS name.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    /// The name to resolve.
    pub dns: String,
    /// `a` (A and AAAA records, the default) or `srv`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The backends' port, for `type: a` (SRV records carry their own).
    #[serde(default)]
    pub port: Option<u16>,
    /// Re-resolution period when the answer has no TTL, and after a failure.
    pub interval: Option<String>,
    /// Bounds on the re-resolution period the records' TTL sets.
    pub min_interval: Option<String>,
    pub max_interval: Option<String>,
    /// `IP:port` (or `IP`, port 53) of the servers to ask; absent means
    /// the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameservers: Option<Vec<String>>,
    /// Weight of every discovered backend.
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealthCheck {
    /// HTTP GET of this path; omit for a TCP connect check.
    #[serde(default)]
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub fall: Option<u32>,
    pub rise: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDrain {
    pub window: Option<String>,
    pub close_code: Option<u16>,
    pub max_closes_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBackend {
    pub id: String,
    pub address: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub max_connections: Option<u32>,
}

fn default_weight() -> u32 {
    super::defaults::WEIGHT
}

/// Durations are strings such as `500ms`, `10s`, `15m`, `1h`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    pub handshake: Option<String>,
    pub backend_connect: Option<String>,
    pub backend_response: Option<String>,
    pub idle: Option<String>,
    pub close: Option<String>,
    pub body: Option<String>,
    pub write: Option<String>,
}

/// Sizes are integers (bytes) or strings such as `16KiB`, `16MiB`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub max_header_bytes: Option<serde_yaml_ng::Value>,
    pub max_message_bytes: Option<serde_yaml_ng::Value>,
    pub max_connections: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub new_connections_per_ip_per_second: Option<u32>,
    pub http2: Option<FileHttp2>,
}

/// `limits.http2` (`config::http2`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp2 {
    pub max_concurrent_streams: Option<u32>,
    pub stream_window: Option<serde_yaml_ng::Value>,
    pub connection_window: Option<serde_yaml_ng::Value>,
    pub max_pending_accept_reset_streams: Option<usize>,
    pub max_local_error_reset_streams: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuntime {
    /// Worker threads; 0 or absent means one per core.
    pub threads: Option<usize>,
    /// On SIGTERM or upgrade, spread the 1001 closes over this window.
    pub shutdown_window: Option<String>,
    /// Unix socket for handing listening sockets to a new process (`run --upgrade`).
    pub upgrade_sock: Option<String>,
    /// Let idle worker threads take tasks from busy ones (default false).
    pub work_stealing: Option<bool>,
}
