//! The `wsgate` command line. `run`, `check` and `gen-cert` work locally;
//! `status`, `drain`, `undrain`, `backend` and `reload` are clients of a
//! running wsgate's admin API ([`adminclient`]), speaking its own types
//! (`control::api`). The binary's `main` only sets up logging and the
//! allocator and calls [`main`] here.
//!
//! | module | owns | I/O |
//! |---|---|---|
//! | this one | the commands and their exit codes | process |
//! | [`adminclient`] | the admin API client, progress bar and status table | network |

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use http::Method;

pub mod adminclient;

use crate::config::{defaults, units::parse_duration, Config, ConfigError};
use crate::control::api::{AddRequest, Added, Closing, DrainRequest, ReloadOutcome, Undrained};
use adminclient::{status_table, AdminClient};

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
    /// Admin API address (default: `admin.address` from the config).
    #[arg(long, env = "WSGATE_ADMIN")]
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
        #[arg(long)]
        json: bool,
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

/// EX_USAGE from sysexits.h: the proxy was given a config it cannot run.
const EXIT_BAD_CONFIG: u8 = 64;
/// `--wait` gave up.
const EXIT_TIMEOUT: u8 = 2;

/// Runs the command line; `allocator` describes the binary's allocator
/// for the start-up log.
pub fn main(allocator: &str) -> ExitCode {
    match Cli::parse().command {
        Command::Run {
            config,
            threads,
            upgrade,
        } => run(&config.config, threads, upgrade, allocator),
        Command::Check { config } => check(&config.config),
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
            return ExitCode::from(EXIT_BAD_CONFIG);
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

fn connect(a: &AdminArgs) -> anyhow::Result<AdminClient> {
    Ok(AdminClient::resolve(
        &a.config.config,
        a.admin.as_deref(),
        a.token.as_deref(),
    )?)
}

async fn wait_if_asked(
    c: &AdminClient,
    pool: &str,
    id: &str,
    wait: &WaitArgs,
) -> anyhow::Result<ExitCode> {
    if !wait.wait {
        return Ok(ExitCode::SUCCESS);
    }
    if c.wait_empty(pool, id, wait.timeout).await? {
        println!("{pool}/{id}: no connections left");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "wsgate: {pool}/{id} still has connections after {:?}",
            wait.timeout
        );
        Ok(ExitCode::from(EXIT_TIMEOUT))
    }
}

async fn client_command(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Status { admin, json } => {
            let c = connect(&admin)?;
            if json {
                println!("{}", c.call_text(Method::GET, "/v1/status").await?);
            } else {
                print!("{}", status_table(&c.status().await?));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain {
            backend,
            window,
            close_code,
            wait,
            admin,
        } => {
            let (pool, id) = split_backend(&backend)?;
            let c = connect(&admin)?;
            let body = DrainRequest {
                window: window.map(|w| format!("{}ms", w.as_millis())),
                close_code,
            };
            let reply: Closing = c
                .call(
                    Method::POST,
                    &format!("/v1/pools/{pool}/backends/{id}/drain"),
                    Some(&body),
                )
                .await?;
            println!(
                "{pool}/{id}: draining, closing {} connections",
                reply.closing
            );
            wait_if_asked(&c, pool, id, &wait).await
        }
        Command::Undrain { backend, admin } => {
            let (pool, id) = split_backend(&backend)?;
            let reply: Undrained = connect(&admin)?
                .call(
                    Method::POST,
                    &format!("/v1/pools/{pool}/backends/{id}/undrain"),
                    None::<&()>,
                )
                .await?;
            println!(
                "{pool}/{id}: active, {} pending closes cancelled",
                reply.cancelled
            );
            Ok(ExitCode::SUCCESS)
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
            let body = AddRequest {
                address: address.clone(),
                weight,
            };
            let _: Added = connect(&admin)?
                .call(
                    Method::PUT,
                    &format!("/v1/pools/{pool}/backends/{id}"),
                    Some(&body),
                )
                .await?;
            println!("{pool}/{id}: added at {address}");
            Ok(ExitCode::SUCCESS)
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
            let c = connect(&admin)?;
            let reply: Closing = c
                .call(
                    Method::DELETE,
                    &format!("/v1/pools/{pool}/backends/{id}"),
                    None::<&()>,
                )
                .await?;
            println!(
                "{pool}/{id}: removed, closing {} connections",
                reply.closing
            );
            wait_if_asked(&c, pool, id, &wait).await
        }
        Command::Reload { admin } => {
            let outcome: ReloadOutcome = connect(&admin)?
                .call(Method::POST, "/v1/reload", None::<&()>)
                .await?;
            let list = |l: &[String]| {
                if l.is_empty() {
                    "none".to_string()
                } else {
                    l.join(", ")
                }
            };
            println!(
                "reloaded: added {}; removed {}",
                list(&outcome.added),
                list(&outcome.removed)
            );
            for note in &outcome.notes {
                println!("note: {note}");
            }
            if outcome.certificate_errors.is_empty() && outcome.listener_errors.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            for e in &outcome.certificate_errors {
                eprintln!("certificates rejected: {e}");
            }
            for e in &outcome.listener_errors {
                eprintln!("listener not started: {e}");
            }
            Ok(ExitCode::FAILURE)
        }
        Command::Run { .. } | Command::Check { .. } | Command::GenCert { .. } => {
            bail!("`run`, `check` and `gen-cert` do not talk to a running wsgate")
        }
    }
}
