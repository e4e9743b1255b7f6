//! The `wsgate` command line. `run`, `check`, `route` and `gen-cert` work locally;
//! `status`, `drain`, `undrain`, `backend` and `reload` are clients of a
//! running wsgate's admin API ([`adminclient`]), speaking its own types
//! (`control::api`). The binary's `main` only sets up logging and the
//! allocator and calls [`main`] here.
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | this one | the commands and their exit codes | process |
//! | [`adminclient`] | the admin API client, progress bar and status table | network |
//! | [`watch`] | `status --watch`: the table redrawn in place until Ctrl-C | network |
//! | [`route`] | `wsgate route`: a routing decision explained from the config | files |

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use http::Method;

pub mod adminclient;
mod route;
mod watch;

use crate::config::{defaults, units::parse_duration, Config, ConfigError};
use crate::control::api::{
    AddRequest, Added, Closing, DrainRequest, ReloadOutcome, Status, Undrained,
};
use adminclient::{fleet_status_table, status_table, AdminClient, ClientError, Fleet};

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "A reverse proxy and sticky load balancer for WebSockets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// Config file.
    #[arg(
        short,
        long,
        env = "WSGATE_CONFIG",
        default_value = "config/wsgate.yaml"
    )]
    config: PathBuf,
}

/// How to reach a running wsgate's admin API.
#[derive(Args)]
struct AdminArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Admin API address, or several separated by commas to act on every
    /// replica at once (default: `admin.peers`, else `admin.address`, from
    /// the config). A host name stands for every address it resolves to.
    #[arg(long, env = "WSGATE_ADMIN", value_name = "HOST:PORT[,HOST:PORT...]")]
    admin: Option<String>,
    /// Bearer token (default: the contents of `admin.token_file`).
    #[arg(long, env = "WSGATE_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args)]
struct WaitArgs {
    /// Wait until the backend has no connections left (exit 2 on timeout).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "5m", value_parser = parse_duration, requires = "wait")]
    timeout: Duration,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Worker threads per listener (overrides `runtime.threads`; 0 = one per core).
        #[arg(long, env = "WSGATE_THREADS")]
        threads: Option<usize>,
        /// Take the listening sockets over from a running wsgate (zero-downtime
        /// restart): start this, then send the old process SIGQUIT.
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config file and exit 0 if it is valid, 1 if not (like `nginx -t`).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Where a request goes and why: route, sticky key, backend and runner-up
    /// (the backend it gets if that one is drained), from the config alone.
    Route(route::RouteArgs),
    /// Write a self-signed development certificate for localhost.
    GenCert {
        #[arg(long, default_value = "certs/dev.crt")]
        cert: PathBuf,
        #[arg(long, default_value = "certs/dev.key")]
        key: PathBuf,
    },
    /// Show pools and backends: state, live connections, pending closes.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Redraw the table in place until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` redraws.
        #[arg(long, default_value = "2s", value_parser = parse_duration, requires = "watch")]
        interval: Duration,
    },
    /// Stop sending new users to a backend and close its connections gently
    /// (a Close frame each, spread over the window).
    Drain {
        /// POOL/ID, e.g. chat/chat-2.
        backend: String,
        /// Spread the closes over this long (default: the pool's drain.window).
        #[arg(long, value_parser = parse_duration)]
        window: Option<Duration>,
        /// Close code for clients (default: the pool's drain.close_code, 1012).
        #[arg(long)]
        close_code: Option<u16>,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Let a drained backend take new users again; cancels closes not yet sent.
    Undrain {
        /// POOL/ID.
        backend: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Add or remove a backend at runtime.
    Backend {
        #[command(subcommand)]
        action: BackendAction,
    },
    /// Re-read the config file; an invalid one is rejected and the old one keeps serving.
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum BackendAction {
    /// Add POOL/ID at ADDRESS (until the next reload replaces the pool).
    Add {
        backend: String,
        #[arg(long)]
        address: String,
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove POOL/ID: no new users at once, existing ones drained.
    Remove {
        backend: String,
        #[command(flatten)]
        wait: WaitArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// EX_USAGE from sysexits.h: bad arguments, or a config the proxy cannot run.
const EXIT_USAGE: u8 = 64;
/// `--wait` gave up.
const EXIT_TIMEOUT: u8 = 2;

/// Runs the command line; `allocator` describes the binary's allocator
/// for the start-up log.
pub fn main(allocator: &str) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` go to stdout with 0; a usage error is
        // EX_USAGE, not clap's 2, which `drain --wait` uses for a timeout.
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run {
            config,
            threads,
            upgrade,
        } => run(&config.config, threads, upgrade, allocator),
        Command::Check { config } => check(&config.config),
        Command::Route(args) => route::run(&args),
        Command::GenCert { cert, key } => match crate::edge::tls::generate_dev_cert(&cert, &key) {
            Ok(()) => {
                println!("wrote {} and {}", cert.display(), key.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wsgate: {e}");
                ExitCode::FAILURE
            }
        },
        other => client(other),
    }
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok ({} listeners, {} routes, {} pools)",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.pools.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            report_config_error(&e);
            ExitCode::FAILURE
        }
    }
}

fn run(path: &Path, threads: Option<usize>, upgrade: bool, allocator: &str) -> ExitCode {
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            report_config_error(&e);
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Some(t) = threads {
        config.runtime.threads = defaults::resolve_threads(t);
    }
    tracing::debug!(allocator, "memory");
    let options = crate::process::RunOptions {
        config_path: Some(path.to_path_buf()),
        upgrade,
    };
    match crate::process::run(config, options).context("wsgate cannot start") {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn report_config_error(e: &ConfigError) {
    eprintln!("wsgate: invalid configuration:");
    for line in e.to_string().lines() {
        eprintln!("  {line}");
    }
}

/// Runs an admin-API command on a small runtime of its own.
fn client(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wsgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(client_command(command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wsgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn split_backend(text: &str) -> anyhow::Result<(&str, &str)> {
    match text.split_once('/') {
        Some((pool, id)) if !pool.is_empty() && !id.is_empty() && !id.contains('/') => {
            Ok((pool, id))
        }
        _ => bail!("`{text}` is not POOL/ID (e.g. chat/chat-2)"),
    }
}

async fn fleet(a: &AdminArgs) -> anyhow::Result<Fleet> {
    Ok(Fleet::resolve(&a.config.config, a.admin.as_deref(), a.token.as_deref()).await?)
}

/// One replica's failure on stderr, named when there are several.
fn report(fleet: &Fleet, name: &str, e: &ClientError) {
    if fleet.is_single() {
        eprintln!("wsgate: {e}");
    } else {
        eprintln!("wsgate: {name}: {e}");
    }
}

/// Runs `call` on every replica at once and reports each failure (an
/// endpoint that did not resolve counts as one). Returns the answers, and
/// whether every replica gave one.
async fn on_fleet<'a, T, F, Fut>(fleet: &'a Fleet, call: F) -> (Vec<(&'a AdminClient, T)>, bool)
where
    F: Fn(&'a AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut all = true;
    for (name, e) in &fleet.unresolved {
        report(fleet, name, e);
        all = false;
    }
    let mut answers = Vec::new();
    for (member, answer) in fleet.each(call).await {
        match answer {
            Ok(t) => answers.push((member, t)),
            Err(e) => {
                report(fleet, &member.name, &e);
                all = false;
            }
        }
    }
    (answers, all)
}

fn exit(all_succeeded: bool) -> ExitCode {
    if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// With `--wait`, one progress bar for `pool/id` across the replicas that
/// took the command. Exit 1 if any replica failed (now or before), else 2
/// on timeout, else 0.
async fn wait_if_asked(
    fleet: &Fleet,
    took: Vec<AdminClient>,
    pool: &str,
    id: &str,
    wait: &WaitArgs,
    all_succeeded: bool,
) -> ExitCode {
    if !wait.wait || took.is_empty() {
        return exit(all_succeeded);
    }
    let outcome = adminclient::wait_empty(&took, pool, id, wait.timeout).await;
    for (name, e) in &outcome.failed {
        report(fleet, name, e);
    }
    let all_succeeded = all_succeeded && outcome.failed.is_empty();
    let on = if fleet.is_single() {
        String::new()
    } else {
        format!(" on {} replicas", took.len() - outcome.failed.len())
    };
    if outcome.empty {
        println!("{pool}/{id}: no connections left{on}");
    } else if outcome.failed.len() < took.len() {
        eprintln!(
            "wsgate: {pool}/{id} still has connections{on} after {:?}",
            wait.timeout
        );
    }
    match (all_succeeded, outcome.empty) {
        (false, _) => ExitCode::FAILURE,
        (true, false) => ExitCode::from(EXIT_TIMEOUT),
        (true, true) => ExitCode::SUCCESS,
    }
}

/// A drain or a removal (`call`: method, path, body) of `pool/id` on every
/// replica, each one's answer as `POOL/ID: DONE, closing N connections`,
/// then the wait if asked.
async fn close_backend(
    fleet: &Fleet,
    call: (Method, &str, Option<&impl serde::Serialize>),
    (pool, id): (&str, &str),
    done: &str,
    wait: &WaitArgs,
) -> ExitCode {
    let (method, path, body) = call;
    let (answers, all) = on_fleet(fleet, |c| c.call::<Closing>(method.clone(), path, body)).await;
    for (member, reply) in &answers {
        println!(
            "{}{pool}/{id}: {done}, closing {} connections",
            fleet.prefix(member),
            reply.closing
        );
    }
    let took = answers.into_iter().map(|(m, _)| m.clone()).collect();
    wait_if_asked(fleet, took, pool, id, wait, all).await
}

/// `status` of several replicas: one table with a REPLICA column, or a
/// JSON array of `{"admin", "status"}` / `{"admin", "error"}`.
async fn fleet_status(fleet: &Fleet, json: bool) -> ExitCode {
    let mut replicas: Vec<(String, Result<Status, String>)> = Vec::new();
    for (member, answer) in fleet.each(|c| c.status()).await {
        replicas.push((member.name.clone(), answer.map_err(|e| e.to_string())));
    }
    for (name, e) in &fleet.unresolved {
        replicas.push((name.clone(), Err(e.to_string())));
    }
    let all = replicas.iter().all(|(_, r)| r.is_ok());
    if json {
        let list: Vec<serde_json::Value> = replicas
            .iter()
            .map(|(name, r)| match r {
                Ok(s) => serde_json::json!({ "admin": name, "status": s }),
                Err(e) => serde_json::json!({ "admin": name, "error": e }),
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        print!("{}", fleet_status_table(&replicas));
        for (name, r) in &replicas {
            if let Err(e) = r {
                eprintln!("wsgate: {name}: {e}");
            }
        }
    }
    exit(all)
}

async fn client_command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status {
            admin,
            json,
            watch,
            interval,
        } => {
            let fleet = fleet(&admin).await?;
            if watch {
                return Ok(watch::watch(&fleet, interval).await);
            }
            if !fleet.is_single() {
                return Ok(fleet_status(&fleet, json).await);
            }
            let all = if json {
                let (answers, all) =
                    on_fleet(&fleet, |c| c.call_text(Method::GET, "/v1/status")).await;
                for (_, text) in answers {
                    println!("{text}");
                }
                all
            } else {
                let (answers, all) = on_fleet(&fleet, |c| c.status()).await;
                for (_, status) in answers {
                    print!("{}", status_table(&status));
                }
                all
            };
            Ok(exit(all))
        }
        Command::Drain {
            backend,
            window,
            close_code,
            wait,
            admin,
        } => {
            let (pool, id) = split_backend(&backend)?;
            let fleet = fleet(&admin).await?;
            let body = DrainRequest {
                window: window.map(|w| format!("{}ms", w.as_millis())),
                close_code,
            };
            let path = format!("/v1/pools/{pool}/backends/{id}/drain");
            let call = (Method::POST, path.as_str(), Some(&body));
            Ok(close_backend(&fleet, call, (pool, id), "draining", &wait).await)
        }
        Command::Undrain { backend, admin } => {
            let (pool, id) = split_backend(&backend)?;
            let fleet = fleet(&admin).await?;
            let path = format!("/v1/pools/{pool}/backends/{id}/undrain");
            let (answers, all) = on_fleet(&fleet, |c| {
                c.call::<Undrained>(Method::POST, &path, None::<&()>)
            })
            .await;
            for (member, reply) in answers {
                println!(
                    "{}{pool}/{id}: active, {} pending closes cancelled",
                    fleet.prefix(member),
                    reply.cancelled
                );
            }
            Ok(exit(all))
        }
        Command::Backend {
            action:
                BackendAction::Add {
                    backend,
                    address,
                    weight,
                    admin,
                },
        } => {
            let (pool, id) = split_backend(&backend)?;
            let fleet = fleet(&admin).await?;
            let body = AddRequest {
                address: address.clone(),
                weight,
            };
            let path = format!("/v1/pools/{pool}/backends/{id}");
            let (answers, all) =
                on_fleet(&fleet, |c| c.call::<Added>(Method::PUT, &path, Some(&body))).await;
            for (member, _) in answers {
                println!("{}{pool}/{id}: added at {address}", fleet.prefix(member));
            }
            Ok(exit(all))
        }
        Command::Backend {
            action:
                BackendAction::Remove {
                    backend,
                    wait,
                    admin,
                },
        } => {
            let (pool, id) = split_backend(&backend)?;
            let fleet = fleet(&admin).await?;
            let path = format!("/v1/pools/{pool}/backends/{id}");
            let call = (Method::DELETE, path.as_str(), None::<&()>);
            Ok(close_backend(&fleet, call, (pool, id), "removed", &wait).await)
        }
        Command::Reload { admin } => {
            let fleet = fleet(&admin).await?;
            let (answers, mut all) = on_fleet(&fleet, |c| {
                c.call::<ReloadOutcome>(Method::POST, "/v1/reload", None::<&()>)
            })
            .await;
            let list = |l: &[String]| {
                if l.is_empty() {
                    "none".to_string()
                } else {
                    l.join(", ")
                }
            };
            for (member, outcome) in answers {
                let p = fleet.prefix(member);
                println!(
                    "{p}reloaded: added {}; removed {}",
                    list(&outcome.added),
                    list(&outcome.removed)
                );
                for note in &outcome.notes {
                    println!("{p}note: {note}");
                }
                for e in &outcome.certificate_errors {
                    eprintln!("{p}certificates rejected: {e}");
                    all = false;
                }
                for e in &outcome.listener_errors {
                    eprintln!("{p}listener not started: {e}");
                    all = false;
                }
            }
            Ok(exit(all))
        }
        Command::Run { .. }
        | Command::Check { .. }
        | Command::Route(_)
        | Command::GenCert { .. } => {
            bail!("`run`, `check`, `route` and `gen-cert` do not talk to a running wsgate")
        }
    }
}
