//! `wsgate route`: where the proxy sends a request, and where that user
//! would go were its backend drained, computed from the config file alone
//! (no running proxy). The decision itself is `routing::decide::explain`,
//! the same route matching, path normal form, sticky-key extraction and
//! rendezvous ring as the data path; this module only turns arguments into
//! a request, and the decision into lines.
//!
//! With `--keys-from FILE`, `{key}` in the URL (percent-encoded there), a
//! header or a cookie stands for each line of FILE, and one backend per
//! line is printed: the batch form the replica-agreement test compares
//! across builds.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use http::header::{HeaderMap, HeaderName, HeaderValue, COOKIE, HOST};
use serde::Serialize;

use super::{split_backend, ConfigArg, EXIT_USAGE};
use crate::config::{Backend, Config, ConfigError};
use crate::routing::decide::{self, DecideError, Decision, RequestView};
use crate::routing::route::normalize_host;
use crate::routing::{BackendState, Registry, Snapshot};

#[derive(Args)]
pub struct RouteArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The request, e.g. 'wss://chat.example.com/ws?user=alice'.
    #[arg(long)]
    url: String,
    /// A request header, 'Name: value' (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A cookie, 'name=value' (repeatable).
    #[arg(long = "cookie", value_name = "NAME=VALUE")]
    cookies: Vec<String>,
    /// The client's address, for routes that fall back to it
    /// (`on_missing_key: client_ip`).
    #[arg(long)]
    client_ip: Option<IpAddr>,
    /// Route as if this backend were drained (repeatable).
    #[arg(long = "drained", value_name = "POOL/ID")]
    drained: Vec<String>,
    /// One key per line ('-' for stdin): `{key}` in --url, --header or
    /// --cookie stands for it; prints one backend id per line.
    #[arg(long, value_name = "FILE")]
    keys_from: Option<PathBuf>,
    /// One JSON object per decision.
    #[arg(long)]
    json: bool,
}

/// Why `wsgate route` gives no answer.
#[derive(Debug, thiserror::Error)]
enum RouteError {
    /// Bad arguments (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The config file is unreadable or invalid (exit 1).
    #[error("invalid configuration:\n{}", indent(&.0.to_string()))]
    Config(#[from] ConfigError),
    /// The proxy would not route the request (exit 2).
    #[error("{0}")]
    Undecided(DecideError),
    /// Reading keys or writing the answer failed (exit 1).
    #[error("{0}")]
    Io(String),
}

/// The request answered no backend.
const EXIT_UNDECIDED: u8 = 2;

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn run(args: &RouteArgs) -> ExitCode {
    match route(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wsgate: {e}");
            ExitCode::from(match e {
                RouteError::Usage(_) | RouteError::Undecided(DecideError::NeedClientIp) => {
                    EXIT_USAGE
                }
                RouteError::Undecided(_) => EXIT_UNDECIDED,
                RouteError::Config(_) | RouteError::Io(_) => 1,
            })
        }
    }
}

fn route(args: &RouteArgs) -> Result<(), RouteError> {
    let config = Arc::new(Config::load(&args.config.config)?);
    let snapshot = drained_snapshot(config, &args.drained, &args.config.config)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let io = |e: std::io::Error| RouteError::Io(format!("cannot write the answer: {e}"));
    match &args.keys_from {
        None => {
            let request = Request::build(args, None)?;
            let decision = request.decide(&snapshot, args.client_ip)?;
            if args.json {
                writeln!(out, "{}", json_line(&snapshot, &decision)).map_err(io)?;
            } else {
                write!(out, "{}", explanation(&snapshot, &decision, &args.drained)).map_err(io)?;
            }
        }
        Some(file) => {
            if ![&args.url]
                .into_iter()
                .chain(&args.headers)
                .chain(&args.cookies)
                .any(|t| t.contains(KEY))
            {
                return Err(RouteError::Usage(format!(
                    "--keys-from needs `{KEY}` in --url, --header or --cookie, where each key goes"
                )));
            }
            for (n, key) in keys(file)?.enumerate() {
                let key = key?;
                let at_line = |e: RouteError| match e {
                    RouteError::Undecided(d) => RouteError::Undecided(d),
                    other => RouteError::Usage(format!("{}:{}: {other}", file.display(), n + 1)),
                };
                let request = Request::build(args, Some(&key)).map_err(at_line)?;
                let decision = request.decide(&snapshot, args.client_ip).inspect_err(|_| {
                    eprintln!(
                        "wsgate: {}:{}: this key is not routed:",
                        file.display(),
                        n + 1
                    );
                })?;
                if args.json {
                    writeln!(out, "{}", json_line(&snapshot, &decision)).map_err(io)?;
                } else {
                    writeln!(out, "{}", decision.backend.id).map_err(io)?;
                }
            }
        }
    }
    out.flush().map_err(io)
}

/// The config's routing state with every backend active but the ones
/// `--drained` names, which must exist.
fn drained_snapshot(
    config: Arc<Config>,
    drained: &[String],
    file: &Path,
) -> Result<Snapshot, RouteError> {
    let mut names = Vec::new();
    for d in drained {
        let (pool, id) =
            split_backend(d).map_err(|e| RouteError::Usage(format!("--drained: {e}")))?;
        if config.backend(pool, id).is_none() {
            return Err(RouteError::Usage(format!(
                "--drained {d}: {} has no backend {id} in pool {pool}",
                file.display()
            )));
        }
        names.push((pool.to_string(), id.to_string()));
    }
    // A registry of its own: nothing here registers a tunnel.
    Ok(Snapshot::with_states(
        config,
        &Registry::default(),
        |pool, id| {
            if names.iter().any(|(p, i)| p == pool && i == id) {
                BackendState::Draining
            } else {
                BackendState::Active
            }
        },
    ))
}

/// Stands for each key of `--keys-from`.
const KEY: &str = "{key}";

fn keys(file: &Path) -> Result<impl Iterator<Item = Result<String, RouteError>>, RouteError> {
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(file)
            .map_err(|e| RouteError::Usage(format!("cannot read {}: {e}", file.display())))?;
        Box::new(std::io::BufReader::new(f))
    };
    let shown = file.display().to_string();
    Ok(reader.lines().map(move |line| {
        line.map(|l| l.strip_suffix('\r').map(str::to_string).unwrap_or(l))
            .map_err(|e| RouteError::Io(format!("cannot read {shown}: {e}")))
    }))
}

/// A request as the proxy would receive it.
struct Request {
    host: String,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
}

impl Request {
    /// From the arguments, with `key` in place of `{key}`.
    fn build(args: &RouteArgs, key: Option<&str>) -> Result<Request, RouteError> {
        let fill = |text: &str, encode: bool| match key {
            Some(k) if encode => text.replace(KEY, &percent_encode(k)),
            Some(k) => text.replace(KEY, k),
            None => text.to_string(),
        };
        let usage = RouteError::Usage;
        let url = fill(&args.url, true);
        let uri: http::Uri = url
            .parse()
            .map_err(|e| usage(format!("--url `{url}` is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("ws" | "wss" | "http" | "https") => {}
            _ => {
                return Err(usage(format!(
                    "--url `{url}` must start with ws://, wss://, http:// or https://"
                )))
            }
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .map(normalize_host)
            .ok_or_else(|| usage(format!("--url `{url}` has no host")))?;
        let mut headers = HeaderMap::new();
        for h in &args.headers {
            let h = fill(h, false);
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| usage(format!("--header `{h}` is not 'Name: value'")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                usage(format!(
                    "--header `{h}`: `{}` is not a header name",
                    name.trim()
                ))
            })?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| usage(format!("--header `{h}`: the value is not a header value")))?;
            headers.append(name, value);
        }
        // The gateway refuses a Host header that differs from the target's host.
        if let Some(given) = headers.get(HOST).and_then(|v| v.to_str().ok()) {
            if normalize_host(given) != host {
                return Err(usage(format!(
                    "--header Host: {given} differs from the URL's host {host} (wsgate answers 400)"
                )));
            }
        }
        let mut cookies = Vec::new();
        for c in &args.cookies {
            let c = fill(c, false);
            match c.split_once('=') {
                Some((name, _)) if !name.trim().is_empty() => cookies.push(c.trim().to_string()),
                _ => return Err(usage(format!("--cookie `{c}` is not 'name=value'"))),
            }
        }
        if !cookies.is_empty() {
            let value = HeaderValue::from_str(&cookies.join("; "))
                .map_err(|_| usage("--cookie: not a valid Cookie header value".into()))?;
            headers.append(COOKIE, value);
        }
        Ok(Request {
            host,
            path: uri.path().to_string(),
            query: uri.query().map(str::to_string),
            headers,
        })
    }

    fn decide<'s>(
        &self,
        snapshot: &'s Snapshot,
        client_ip: Option<IpAddr>,
    ) -> Result<Decision<'s, '_>, RouteError> {
        decide::explain(
            snapshot,
            &RequestView {
                host: &self.host,
                path: &self.path,
                query: self.query.as_deref(),
                headers: &self.headers,
                client_ip,
            },
        )
        .map_err(|e| match e {
            DecideError::NeedClientIp => RouteError::Usage(format!("{e}: pass --client-ip")),
            e => RouteError::Undecided(e),
        })
    }
}

/// Every byte but the unreserved ones (RFC 3986) as `%XY`, so a key comes
/// back whole from the query, whatever it holds (`&`, `=`, `%`, spaces).
fn percent_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A key is shown by its source, length and hash (the `key_hash` of
/// wsgate's debug log), never itself: it may be a session cookie.
#[derive(Serialize)]
struct KeyView {
    source: String,
    bytes: usize,
    hash: String,
}

#[derive(Serialize)]
struct BackendView<'a> {
    id: &'a str,
    address: &'a str,
}

#[derive(Serialize)]
struct DecisionView<'a> {
    route: usize,
    host: String,
    path_prefix: &'a str,
    pool: &'a str,
    /// The path in the normal form it is matched and forwarded in.
    path: &'a str,
    key: KeyView,
    backend: BackendView<'a>,
    runner_up: Option<BackendView<'a>>,
    /// The pool's `balance_factor`, when it has one: the running proxy may
    /// then send a new connection to the runner-up (or further) when
    /// `backend` holds more than its bound of live connections, which
    /// this command cannot see.
    #[serde(skip_serializing_if = "Option::is_none")]
    balance_factor: Option<String>,
}

fn view<'a>(snapshot: &'a Snapshot, d: &'a Decision<'a, '_>) -> DecisionView<'a> {
    let route = snapshot.config.routes.get(d.matched.index);
    let pool = route.and_then(|r| snapshot.config.pools.get(r.pool));
    let backend = |b: &'a Backend| BackendView {
        id: &b.id,
        address: &b.address,
    };
    DecisionView {
        route: d.matched.index,
        host: route.map(|r| r.host.to_string()).unwrap_or_default(),
        path_prefix: route.map_or("", |r| r.path_prefix.as_str()),
        pool: pool.map_or("", |p| p.name.as_str()),
        path: &d.matched.path,
        key: KeyView {
            source: d.key.from.to_string(),
            bytes: d.key.key.len(),
            hash: format!("{:016x}", d.key.hash),
        },
        backend: backend(d.backend),
        runner_up: d.runner_up.map(backend),
        balance_factor: pool.and_then(|p| p.balance_factor).map(|f| f.to_string()),
    }
}

fn json_line(snapshot: &Snapshot, d: &Decision<'_, '_>) -> String {
    // Plain structs of strings and numbers always serialise.
    serde_json::to_string(&view(snapshot, d)).unwrap_or_default()
}

/// The decision for a person to read.
fn explanation(snapshot: &Snapshot, d: &Decision<'_, '_>, drained: &[String]) -> String {
    let v = view(snapshot, d);
    let mut out = format!(
        "route      routes[{}] (host {}, path_prefix {}) -> pool {}\n\
         path       {}\n\
         key        {}, {} bytes, hash {}\n\
         backend    {} ({})\n",
        v.route,
        v.host,
        v.path_prefix,
        v.pool,
        v.path,
        v.key.source,
        v.key.bytes,
        v.key.hash,
        v.backend.id,
        v.backend.address,
    );
    match &v.runner_up {
        Some(r) => out.push_str(&format!(
            "runner-up  {} ({}): where this key goes if {} is drained\n",
            r.id, r.address, v.backend.id
        )),
        None => out.push_str(&format!(
            "runner-up  none: no other backend of pool {} can take this key\n",
            v.pool
        )),
    }
    if !drained.is_empty() {
        out.push_str(&format!("drained    {} (--drained)\n", drained.join(", ")));
    }
    if let Some(f) = &v.balance_factor {
        out.push_str(&format!(
            "bounded    balance_factor {f}: not reflected here. The running proxy sends a new \
             connection past {} (to the runner-up, or further down the key's order) while {} \
             holds more than {f} times its share of live connections, which only it knows \
             (`wsgate status` shows the bounds)\n",
            v.backend.id, v.backend.id
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_percent_encoding() {
        for key in ["alice", "a&b=c", "100%", "a b+c", "é", ""] {
            let query = format!("user={}", percent_encode(key));
            let sources = [crate::config::KeySource::Query("user".into())];
            let got = crate::routing::sticky::extract(&sources, Some(&query), &HeaderMap::new());
            let want = (!key.is_empty()).then(|| key.as_bytes().to_vec());
            assert_eq!(got, want, "{key:?}");
        }
    }
}
