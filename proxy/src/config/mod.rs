//! Configuration: loading `wsgate.yaml`, validating it, and the typed runtime
//! form the rest of the proxy uses.
//!
//! The file is deserialised into a serde mirror ([`file`]), then converted
//! into [`Config`]; the conversion *is* the validation, so a `Config` value is
//! always usable. Every problem is reported with the file, the key path and
//! line:column, and all problems are reported at once. Loading does I/O only
//! to read the file; [`Config::from_source`] is pure.

pub mod accesslog;
mod balance;
pub mod defaults;
mod discovery;
mod file;
mod hostmatch;
mod http2;
mod keysource;
mod locate;
pub mod units;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use balance::BalanceFactor;
pub use discovery::{valid_dns_name, Discovery, RecordKind};
pub use hostmatch::HostMatch;
pub use http2::{Alpn, Http2Limits};
pub use keysource::KeySource;

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    /// Sorted by name; routes refer to pools by index.
    pub pools: Vec<Pool>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub runtime: Runtime,
    pub admin: Option<Admin>,
    /// Peers whose `X-Forwarded-*`/`Forwarded` headers are appended to;
    /// from anyone else these headers are replaced. Empty: trust nobody.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `None`: no access log (the default).
    pub access_log: Option<accesslog::AccessLog>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// Resolved against the config file's directory.
    pub token_file: Option<PathBuf>,
    /// The admin APIs of every replica (`host:port`), which `wsgate
    /// status|drain|undrain|reload` act on together when no `--admin` is
    /// given. Only the CLI reads it: the running proxy ignores it.
    pub peers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthProbe {
    /// HTTP GET of this path; any 2xx is healthy.
    Http(String),
    /// A TCP connect succeeds.
    Tcp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub probe: HealthProbe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that mark a backend down.
    pub fall: u32,
    /// Consecutive successes that bring it back.
    pub rise: u32,
    /// Send a PROXY v2 LOCAL header first (the pool's backends expect one).
    pub send_proxy_protocol: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drain {
    pub window: Duration,
    /// Sent to clients of a drained, removed or rebalanced backend.
    pub close_code: u16,
    /// 0 = no cap.
    pub max_closes_per_second: u32,
}

/// What to do with live connections when a backend becomes eligible again
/// (added, undrained, healthy again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebalance {
    /// Leave them where they are; only new connections use the new mapping.
    Keep,
    /// Move the connections whose key now maps to that backend, paced like a drain.
    Migrate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<Tls>,
    /// Origins every WebSocket on this listener must come from (`None`: any).
    pub allowed_origins: Option<Vec<String>>,
    /// Peers that must start each connection with a PROXY protocol header
    /// (`None`: the protocol is off and the TCP peer is the client).
    pub proxy_protocol: Option<Vec<ipnet::IpNet>>,
    /// A plain listener also serves HTTP/2 with prior knowledge.
    pub h2c: bool,
}

impl Listener {
    /// Whether `new` can replace `self` without a restart: the socket,
    /// whether it speaks TLS and what it offers in ALPN must stay;
    /// certificates (reloaded in place), the Origin policy (read per
    /// request) and `h2c` (read per connection) may change.
    pub fn same_socket(&self, new: &Listener) -> bool {
        self.name == new.name
            && self.address == new.address
            && self.tls.as_ref().map(|t| &t.alpn) == new.tls.as_ref().map(|t| &t.alpn)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub certificates: Vec<Certificate>,
    /// Offered in this order (`config::http2`).
    pub alpn: Vec<Alpn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    /// Resolved against the config file's directory.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server_names: Vec<HostMatch>,
    pub generate_if_missing: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub host: HostMatch,
    pub path_prefix: String,
    pub pool: usize,
    pub sticky_key: Vec<KeySource>,
    pub on_missing_key: OnMissingKey,
    /// `None` accepts any Origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Overrides `timeouts.backend_response` (e.g. for long-polls).
    pub backend_response: Option<Duration>,
    /// Proxy-level heartbeats toward the route's WebSocket clients.
    pub heartbeat: Option<crate::tunnel::Heartbeat>,
}

/// What to do when none of a route's sticky-key sources is present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissingKey {
    /// Hash the client's IP address instead (the default).
    ClientIp,
    /// Answer 400 and name the sources that were tried.
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// The static backends, then (in the control task's config) the
    /// discovered ones.
    pub backends: Vec<Backend>,
    /// Backends from DNS, resolved by the control plane; a pool with
    /// discovery may list no static backend.
    pub discovery: Option<Discovery>,
    pub health_check: Option<HealthCheck>,
    pub drain: Drain,
    pub rebalance: Rebalance,
    /// Origins every WebSocket routed to this pool must come from.
    pub allowed_origins: Option<Vec<String>>,
    /// Start each backend connection (health checks included) with a PROXY
    /// protocol v2 header, so backends see the real client.
    pub send_proxy_protocol: bool,
    /// Bounded load: a new connection skips a backend holding more than
    /// this times its share of the routable backends' live connections
    /// (`routing::bounded`). None (the default): pure hashing.
    pub balance_factor: Option<BalanceFactor>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Stable identity used for hashing; changing an address keeps the users.
    pub id: String,
    /// `host:port`; a host name is resolved at connect time.
    pub address: String,
    pub weight: u32,
    /// Live WebSockets this backend takes; beyond it upgrades get 503.
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TLS handshake plus the request head.
    pub handshake: Duration,
    pub backend_connect: Duration,
    /// Backend's response head (the 101 for WebSockets).
    pub backend_response: Duration,
    /// A tunnel with no bytes either way for this long is closed (1001).
    pub idle: Duration,
    /// How long to wait for the peer's Close after wsgate sent one.
    pub close: Duration,
    /// A request body that makes no progress for this long is cut: 408 when
    /// the client stopped sending, 504 when the backend stopped reading.
    pub body: Duration,
    /// A response the client does not read for this long is cut.
    pub write: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_header_bytes: usize,
    /// Largest WebSocket message (sum of its frames); larger ones close 1009.
    pub max_message_bytes: u64,
    /// Client connections of the whole process; `None` derives it from
    /// `RLIMIT_NOFILE` at startup (`edge::limits`).
    pub max_connections: Option<u32>,
    /// Client connections from one IP address (`None`: no limit).
    pub max_connections_per_ip: Option<u32>,
    /// New connections from one IP address per second, with a burst of
    /// the same size (`None`: no limit).
    pub new_connections_per_ip_per_second: Option<u32>,
    pub http2: Http2Limits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub threads: usize,
    /// Off by default: each thread runs its own single-threaded runtime,
    /// about 8% less CPU per wss message and a lower p99 in our benchmark.
    pub work_stealing: bool,
    pub shutdown_window: Duration,
    pub upgrade_sock: PathBuf,
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line:column`, or just `file` when the position is unknown.
    pub location: String,
    /// Key path such as `pools.chat.backends[1].address`; empty for syntax errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, permissions).
    #[error("{file}: cannot read config: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::from_source(&source, &path.display().to_string(), base)
    }

    /// Validates config text. `name` is used in error locations and `base` to
    /// resolve relative certificate paths.
    pub fn from_source(source: &str, name: &str, base: &Path) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(source);
        let parsed: file::FileConfig = match serde_path_to_error::deserialize(de) {
            Ok(parsed) => parsed,
            Err(e) => {
                let path = e.path().to_string();
                let inner = e.into_inner();
                let location = match inner.location() {
                    Some(l) => format!("{name}:{}:{}", l.line(), l.column()),
                    None => name.to_string(),
                };
                let path = if path == "." { String::new() } else { path };
                return Err(ConfigError::Invalid(vec![Problem {
                    location,
                    path,
                    message: elide_long_values(&strip_position(&inner.to_string())),
                }]));
            }
        };
        let mut v = Validator {
            name,
            locator: locate::Locator::new(source),
            problems: Vec::new(),
        };
        let config = v.config(parsed, base);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(v.problems))
        }
    }

    pub fn pool_index(&self, name: &str) -> Option<usize> {
        self.pools.iter().position(|p| p.name == name)
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The backend `id` of pool `pool`: the one way to ask whether a
    /// backend is in this config.
    pub fn backend(&self, pool: &str, id: &str) -> Option<&Backend> {
        self.pool(pool)?.backends.iter().find(|b| b.id == id)
    }
}

/// What [`valid_backend_id`] checks, for error messages.
pub const BACKEND_ID_RULE: &str = "a backend id must be non-empty, with no `/` or spaces";

/// Backend ids appear in `POOL/ID` on the command line and in admin URLs.
pub fn valid_backend_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', ' '])
}

/// serde_yaml appends "at line X column Y" to its messages; we print the
/// position in front instead, the way compilers do.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// serde quotes a value of the wrong type whole (`invalid type: string
/// "..."`): for a file that is one long scalar (a private key passed as
/// `-c` by mistake) that would print the file back. Quoted values longer
/// than 40 bytes are elided to their length.
fn elide_long_values(message: &str) -> String {
    const LONGEST: usize = 40;
    let mut out = String::with_capacity(message.len().min(256));
    let mut rest = message;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        // The closing quote: the first one not escaped by a backslash.
        let mut close = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    close = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(close) = close else {
            out.push_str(&rest[open..]);
            return out;
        };
        let value = &after[..close];
        if value.len() > LONGEST {
            out.push_str(&format!("\"…\" ({} bytes)", value.len()));
        } else {
            out.push('"');
            out.push_str(value);
            out.push('"');
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

struct Validator<'a> {
    name: &'a str,
    locator: locate::Locator,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        let location = match self.locator.find(path) {
            Some(p) => format!("{}:{}:{}", self.name, p.line, p.column),
            None => self.name.to_string(),
        };
        self.problems.push(Problem {
            location,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn config(&mut self, f: file::FileConfig, base: &Path) -> Config {
        let pools = self.pools(f.pools);
        let listeners = self.listeners(f.listeners, base);
        let routes = self.routes(f.routes, &pools);
        let timeouts = self.timeouts(f.timeouts);
        let limits = self.limits(f.limits);
        let admin = f.admin.and_then(|a| self.admin(a, base));
        let trusted_proxies = self.trusted_proxies(&f.trusted_proxies);
        let access_log = f.access_log.and_then(|a| self.access_log(a, base));
        let shutdown_window = self.duration(
            "runtime.shutdown_window",
            f.runtime.shutdown_window,
            defaults::SHUTDOWN_WINDOW,
        );
        let upgrade_sock = f.runtime.upgrade_sock.map_or_else(
            || std::env::temp_dir().join(defaults::UPGRADE_SOCK_NAME),
            |p| base.join(p),
        );
        let threads = defaults::resolve_threads(f.runtime.threads.unwrap_or(defaults::THREADS));
        Config {
            listeners,
            routes,
            pools,
            timeouts,
            limits,
            runtime: Runtime {
                threads,
                work_stealing: f.runtime.work_stealing.unwrap_or(defaults::WORK_STEALING),
                shutdown_window,
                upgrade_sock,
            },
            admin,
            trusted_proxies,
            access_log,
        }
    }

    fn trusted_proxies(&mut self, list: &[String]) -> Vec<ipnet::IpNet> {
        self.networks("trusted_proxies", list)
    }

    /// Addresses or CIDRs, each checked, under `path`.
    fn networks(&mut self, path: &str, list: &[String]) -> Vec<ipnet::IpNet> {
        let mut out = Vec::new();
        for (i, entry) in list.iter().enumerate() {
            let parsed = entry
                .parse::<ipnet::IpNet>()
                .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(net) => out.push(net.trunc()),
                Err(_) => self.problem(
                    &format!("{path}[{i}]"),
                    format!("`{entry}` is not an address or CIDR such as 10.0.0.0/8"),
                ),
            }
        }
        out
    }

    fn origins(&mut self, path: &str, list: Option<Vec<String>>) -> Option<Vec<String>> {
        let list = list?;
        if list.is_empty() {
            self.problem(
                path,
                "an empty list would refuse every WebSocket; omit the key to allow any Origin",
            );
        }
        Some(list)
    }

    fn admin(&mut self, a: file::FileAdmin, base: &Path) -> Option<Admin> {
        let mut peers = Vec::new();
        for (i, p) in a.peers.iter().enumerate() {
            let bare = admin_endpoint(p);
            if valid_host_port(bare) {
                peers.push(bare.to_string());
            } else {
                self.problem(
                    &format!("admin.peers[{i}]"),
                    format!(
                        "`{p}` is not host:port (e.g. 10.0.0.5:9900 or wsgate-admin.ns.svc:9900)"
                    ),
                );
            }
        }
        match a.address.parse::<SocketAddr>() {
            Ok(address) => Some(Admin {
                address,
                token_file: a.token_file.map(|t| base.join(t)),
                peers,
            }),
            Err(_) => {
                self.problem(
                    "admin.address",
                    format!("`{}` is not an IP:port address", a.address),
                );
                None
            }
        }
    }

    fn pool_policies(
        &mut self,
        path: &str,
        p: &mut file::FilePool,
    ) -> (Option<HealthCheck>, Drain, Rebalance) {
        let health_check = p.health_check.take().map(|h| {
            let probe = match h.path {
                Some(path) if path.starts_with('/') => HealthProbe::Http(path),
                Some(_) => {
                    self.problem(&format!("{path}.health_check.path"), "must start with `/`");
                    HealthProbe::Tcp
                }
                None => HealthProbe::Tcp,
            };
            let mut count = |key: &str, v: Option<u32>, def: u32| match v {
                Some(0) => {
                    self.problem(&format!("{path}.health_check.{key}"), "must be at least 1");
                    def
                }
                Some(n) => n,
                None => def,
            };
            let (fall, rise) = (
                count("fall", h.fall, defaults::HEALTH_FALL),
                count("rise", h.rise, defaults::HEALTH_RISE),
            );
            HealthCheck {
                probe,
                interval: self.duration(
                    &format!("{path}.health_check.interval"),
                    h.interval,
                    defaults::HEALTH_INTERVAL,
                ),
                timeout: self.duration(
                    &format!("{path}.health_check.timeout"),
                    h.timeout,
                    defaults::HEALTH_TIMEOUT,
                ),
                fall,
                rise,
                send_proxy_protocol: false,
            }
        });
        let d = Drain::default();
        let close_code = match p.drain.close_code {
            None => d.close_code,
            Some(c) if crate::tunnel::frame::is_valid_close_code(c) => c,
            Some(c) => {
                self.problem(
                    &format!("{path}.drain.close_code"),
                    format!("{c} is not a close code a server may send"),
                );
                d.close_code
            }
        };
        let window = self.duration(
            &format!("{path}.drain.window"),
            p.drain.window.take(),
            d.window,
        );
        let drain = Drain {
            window,
            close_code,
            max_closes_per_second: p.drain.max_closes_per_second.unwrap_or(0),
        };
        let rebalance = match p.rebalance.as_deref() {
            None | Some("keep") => Rebalance::Keep,
            Some("migrate") => Rebalance::Migrate,
            Some(other) => {
                self.problem(
                    &format!("{path}.rebalance"),
                    format!("`{other}` is not one of: keep, migrate"),
                );
                Rebalance::Keep
            }
        };
        (health_check, drain, rebalance)
    }

    fn listeners(&mut self, list: Vec<file::FileListener>, base: &Path) -> Vec<Listener> {
        if list.is_empty() {
            self.problem("listeners", "at least one listener is required");
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        let mut out = Vec::new();
        for (i, l) in list.into_iter().enumerate() {
            let path = format!("listeners[{i}]");
            if !names.insert(l.name.clone()) {
                self.problem(
                    &format!("{path}.name"),
                    format!("duplicate listener name `{}`", l.name),
                );
            }
            let address = match l.address.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.problem(
                        &format!("{path}.address"),
                        format!(
                            "`{}` is not an IP:port address such as 0.0.0.0:8443",
                            l.address
                        ),
                    );
                    continue;
                }
            };
            if address.port() != 0 && !addresses.insert(address) {
                self.problem(
                    &format!("{path}.address"),
                    format!("{address} is used by two listeners"),
                );
            }
            let tls = l.tls.map(|t| self.tls(t, &format!("{path}.tls"), base));
            let allowed_origins =
                self.origins(&format!("{path}.allowed_origins"), l.allowed_origins);
            let proxy_protocol = l.proxy_protocol.map(|p| {
                let key = format!("{path}.proxy_protocol.accept_from");
                if p.accept_from.is_empty() {
                    self.problem(&key, "name the balancers that send the header (CIDRs)");
                }
                self.networks(&key, &p.accept_from)
            });
            if l.h2c && tls.is_some() {
                self.problem(
                    &format!("{path}.h2c"),
                    "h2c is for plain listeners; a TLS listener offers h2 in tls.alpn",
                );
            }
            out.push(Listener {
                name: l.name,
                address,
                tls,
                allowed_origins,
                proxy_protocol,
                h2c: l.h2c,
            });
        }
        out
    }

    fn tls(&mut self, t: file::FileTls, path: &str, base: &Path) -> Tls {
        if t.certificates.is_empty() {
            self.problem(
                &format!("{path}.certificates"),
                "a TLS listener needs at least one certificate",
            );
        }
        let mut certificates = Vec::new();
        for (i, c) in t.certificates.into_iter().enumerate() {
            let cpath = format!("{path}.certificates[{i}]");
            let mut server_names = Vec::new();
            for (j, n) in c.server_names.iter().enumerate() {
                match HostMatch::parse(n) {
                    Ok(HostMatch::Any) | Err(_) => self.problem(
                        &format!("{cpath}.server_names[{j}]"),
                        format!("`{n}` is not a host name or *.suffix pattern"),
                    ),
                    Ok(m) => server_names.push(m),
                }
            }
            certificates.push(Certificate {
                cert: base.join(&c.cert),
                key: base.join(&c.key),
                server_names,
                generate_if_missing: c.generate_if_missing,
            });
        }
        let alpn = self.alpn(&format!("{path}.alpn"), t.alpn);
        Tls { certificates, alpn }
    }

    fn pools(&mut self, pools: std::collections::BTreeMap<String, file::FilePool>) -> Vec<Pool> {
        let mut out = Vec::new();
        for (name, mut p) in pools {
            let path = format!("pools.{name}");
            let (health_check, drain, rebalance) = self.pool_policies(&path, &mut p);
            let has_discovery = p.discovery.is_some();
            let discovery = p
                .discovery
                .take()
                .and_then(|d| self.discovery(&format!("{path}.discovery"), d));
            if p.backends.is_empty() && !has_discovery {
                self.problem(
                    &format!("{path}.backends"),
                    "a pool needs at least one backend, or `discovery` to find them in DNS",
                );
            }
            let mut ids = HashSet::new();
            let mut backends = Vec::new();
            for (i, b) in p.backends.into_iter().enumerate() {
                let bpath = format!("{path}.backends[{i}]");
                if !valid_backend_id(&b.id) {
                    self.problem(&format!("{bpath}.id"), BACKEND_ID_RULE);
                }
                if !ids.insert(b.id.clone()) {
                    self.problem(
                        &format!("{bpath}.id"),
                        format!("duplicate backend id `{}` in pool `{name}`", b.id),
                    );
                }
                if !valid_host_port(&b.address) {
                    self.problem(
                        &format!("{bpath}.address"),
                        format!(
                            "`{}` is not host:port (e.g. 127.0.0.1:9001 or chat-1.internal:9001)",
                            b.address
                        ),
                    );
                }
                if b.max_connections == Some(0) {
                    self.problem(
                        &format!("{bpath}.max_connections"),
                        "must be at least 1 (set weight: 0 to send no new users)",
                    );
                }
                backends.push(Backend {
                    id: b.id,
                    address: b.address,
                    weight: b.weight,
                    max_connections: b.max_connections,
                });
            }
            if !backends.is_empty() && !has_discovery && backends.iter().all(|b| b.weight == 0) {
                self.problem(
                    &format!("{path}.backends"),
                    "every backend has weight 0, so no user can be served",
                );
            }
            let allowed_origins =
                self.origins(&format!("{path}.allowed_origins"), p.allowed_origins);
            let send_proxy_protocol = match p.send_proxy_protocol.as_deref() {
                None => false,
                Some("v2") => true,
                Some(other) => {
                    self.problem(
                        &format!("{path}.send_proxy_protocol"),
                        format!("`{other}` is not a version wsgate sends (v2)"),
                    );
                    false
                }
            };
            let health_check = health_check.map(|h| HealthCheck {
                send_proxy_protocol,
                ..h
            });
            let balance_factor =
                self.balance_factor(&format!("{path}.balance_factor"), p.balance_factor);
            out.push(Pool {
                name,
                backends,
                discovery,
                health_check,
                drain,
                rebalance,
                allowed_origins,
                send_proxy_protocol,
                balance_factor,
            });
        }
        out
    }

    fn routes(&mut self, routes: Vec<file::FileRoute>, pools: &[Pool]) -> Vec<Route> {
        if routes.is_empty() {
            self.problem("routes", "at least one route is required");
        }
        let mut out = Vec::new();
        for (i, r) in routes.into_iter().enumerate() {
            let path = format!("routes[{i}]");
            let host = match r.host.as_deref().map(HostMatch::parse) {
                None => HostMatch::Any,
                Some(Ok(h)) => h,
                Some(Err(e)) => {
                    self.problem(&format!("{path}.host"), e);
                    HostMatch::Any
                }
            };
            if !r.path_prefix.starts_with('/') {
                self.problem(&format!("{path}.path_prefix"), "must start with `/`");
            } else if !normal_prefix(&r.path_prefix) {
                self.problem(
                    &format!("{path}.path_prefix"),
                    "must be a normal path (no `%`, `\\`, `//`, `.` or `..` segments): requests are matched after normalising, so another spelling would never match",
                );
            }
            let pool = pools.iter().position(|p| p.name == r.pool);
            if pool.is_none() {
                let known: Vec<_> = pools.iter().map(|p| p.name.as_str()).collect();
                self.problem(
                    &format!("{path}.pool"),
                    format!("unknown pool `{}` (defined: {})", r.pool, known.join(", ")),
                );
            }
            let mut sticky_key = Vec::new();
            for (j, s) in r.sticky_key.iter().enumerate() {
                match KeySource::parse(s) {
                    Ok(k) => sticky_key.push(k),
                    Err(e) => self.problem(&format!("{path}.sticky_key[{j}]"), e),
                }
            }
            let on_missing_key = match r.on_missing_key.as_deref() {
                None | Some("client_ip") => OnMissingKey::ClientIp,
                Some("reject") => OnMissingKey::Reject,
                Some(other) => {
                    self.problem(
                        &format!("{path}.on_missing_key"),
                        format!("`{other}` is not one of: client_ip, reject"),
                    );
                    OnMissingKey::ClientIp
                }
            };
            let allowed_origins =
                self.origins(&format!("{path}.allowed_origins"), r.allowed_origins);
            let backend_response = r.backend_response.map(|v| {
                self.duration(
                    &format!("{path}.backend_response"),
                    Some(v),
                    Timeouts::default().backend_response,
                )
            });
            let heartbeat = r.heartbeat.map(|h| crate::tunnel::Heartbeat {
                interval: self.duration(
                    &format!("{path}.heartbeat.interval"),
                    h.interval,
                    defaults::HEARTBEAT_INTERVAL,
                ),
                timeout: self.duration(
                    &format!("{path}.heartbeat.timeout"),
                    h.timeout,
                    defaults::HEARTBEAT_TIMEOUT,
                ),
            });
            out.push(Route {
                host,
                path_prefix: r.path_prefix,
                pool: pool.unwrap_or(0),
                sticky_key,
                on_missing_key,
                allowed_origins,
                backend_response,
                heartbeat,
            });
        }
        out
    }

    fn duration(&mut self, path: &str, value: Option<String>, default: Duration) -> Duration {
        match value.as_deref().map(units::parse_duration) {
            None => default,
            Some(Ok(d)) if d > defaults::MAX_DURATION => {
                self.problem(
                    path,
                    format!("must be at most {}", defaults::MAX_DURATION_TEXT),
                );
                default
            }
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                self.problem(path, "must be greater than zero");
                default
            }
            Some(Err(e)) => {
                self.problem(path, e);
                default
            }
        }
    }

    fn timeouts(&mut self, t: file::FileTimeouts) -> Timeouts {
        let d = Timeouts::default();
        Timeouts {
            handshake: self.duration("timeouts.handshake", t.handshake, d.handshake),
            backend_connect: self.duration(
                "timeouts.backend_connect",
                t.backend_connect,
                d.backend_connect,
            ),
            backend_response: self.duration(
                "timeouts.backend_response",
                t.backend_response,
                d.backend_response,
            ),
            idle: self.duration("timeouts.idle", t.idle, d.idle),
            close: self.duration("timeouts.close", t.close, d.close),
            body: self.duration("timeouts.body", t.body, d.body),
            write: self.duration("timeouts.write", t.write, d.write),
        }
    }

    fn limits(&mut self, l: file::FileLimits) -> Limits {
        let d = Limits::default();
        let size =
            |v: &mut Self, path: &str, value: Option<serde_yaml_ng::Value>, def: u64| match value
                .as_ref()
                .map(units::parse_size)
            {
                None => def,
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    v.problem(path, e);
                    def
                }
            };
        let header = size(
            self,
            "limits.max_header_bytes",
            l.max_header_bytes,
            d.max_header_bytes as u64,
        );
        let message = size(
            self,
            "limits.max_message_bytes",
            l.max_message_bytes,
            d.max_message_bytes,
        );
        // hyper refuses a read buffer under 8 KiB; a smaller limit would be
        // silently raised, so say so instead.
        if !(8192..=1 << 20).contains(&header) {
            self.problem("limits.max_header_bytes", "must be between 8KiB and 1MiB");
        }
        if !(1..=defaults::MAX_MESSAGE_BYTES).contains(&message) {
            self.problem(
                "limits.max_message_bytes",
                "must be between 1 byte and 1GiB",
            );
        }
        let mut at_least_one = |key: &str, v: Option<u32>| {
            if v == Some(0) {
                self.problem(
                    &format!("limits.{key}"),
                    "must be at least 1 (omit the key for no limit)",
                );
            }
            v.filter(|&n| n > 0)
        };
        Limits {
            max_header_bytes: usize::try_from(header).unwrap_or(d.max_header_bytes),
            max_message_bytes: message.min(defaults::MAX_MESSAGE_BYTES),
            max_connections: at_least_one("max_connections", l.max_connections),
            max_connections_per_ip: at_least_one(
                "max_connections_per_ip",
                l.max_connections_per_ip,
            ),
            new_connections_per_ip_per_second: at_least_one(
                "new_connections_per_ip_per_second",
                l.new_connections_per_ip_per_second,
            ),
            http2: self.http2_limits(l.http2),
        }
    }
}

/// A route prefix in the form request paths are matched in
/// (`routing::path`): a stricter rule than that form, since a prefix has no
/// reason to hold an escape at all.
fn normal_prefix(prefix: &str) -> bool {
    let Some(rest) = prefix.strip_prefix('/') else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    !prefix.contains(['%', '\\'])
        && segments
            .iter()
            .enumerate()
            .all(|(i, s)| !matches!(*s, "." | "..") && (!s.is_empty() || i == segments.len() - 1))
}

/// An admin endpoint as `host:port`: `http://` and a trailing `/` are
/// optional around it (`admin.peers`, `--admin`).
pub fn admin_endpoint(text: &str) -> &str {
    let text = text.trim();
    let text = text.strip_prefix("http://").unwrap_or(text);
    text.strip_suffix('/').unwrap_or(text)
}

pub fn valid_host_port(address: &str) -> bool {
    if address.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p != 0)
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests;
