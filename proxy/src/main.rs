//! The `wsgate` command line: a thin layer over the library. `run`, `check`
//! and `gen-cert` work locally; `status`, `drain`, `undrain`, `backend` and
//! `reload` are clients of a running wsgate's admin API.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use http::Method;

mod allocator;

use wsgate::adminclient::{status_table, AdminClient};
use wsgate::config::{units::parse_duration, Config, ConfigError};

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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run {
            config,
            threads,
            upgrade,
        } => run(&config.config, threads, upgrade),
        Command::Check { config } => check(&config.config),
        Command::GenCert { cert, key } => match wsgate::tls::generate_dev_cert(&cert, &key) {
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

fn run(path: &Path, threads: Option<usize>, upgrade: bool) -> ExitCode {
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            report_config_error(&e);
            return ExitCode::from(EXIT_BAD_CONFIG);
        }
    };
    if let Some(t) = threads {
        config.runtime.threads = if t == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            t
        };
    }
    tracing::debug!(allocator = %allocator::settings(), "memory");
    let options = wsgate::server::RunOptions {
        config_path: Some(path.to_path_buf()),
        upgrade,
    };
    match wsgate::server::run(config, options).context("wsgate cannot start") {
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
                println!("{}", c.call(Method::GET, "/v1/status", None).await?);
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
            let mut body = serde_json::json!({});
            if let Some(w) = window {
                body["window"] = format!("{}ms", w.as_millis()).into();
            }
            if let Some(code) = close_code {
                body["close_code"] = code.into();
            }
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/pools/{pool}/backends/{id}/drain"),
                    Some(body),
                )
                .await?;
            println!(
                "{pool}/{id}: draining, closing {} connections",
                v["closing"]
            );
            wait_if_asked(&c, pool, id, &wait).await
        }
        Command::Undrain { backend, admin } => {
            let (pool, id) = split_backend(&backend)?;
            let v = connect(&admin)?
                .call(
                    Method::POST,
                    &format!("/v1/pools/{pool}/backends/{id}/undrain"),
                    None,
                )
                .await?;
            println!(
                "{pool}/{id}: active, {} pending closes cancelled",
                v["cancelled"]
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
            let body = serde_json::json!({"address": address, "weight": weight});
            connect(&admin)?
                .call(
                    Method::PUT,
                    &format!("/v1/pools/{pool}/backends/{id}"),
                    Some(body),
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
            let v = c
                .call(
                    Method::DELETE,
                    &format!("/v1/pools/{pool}/backends/{id}"),
                    None,
                )
                .await?;
            println!("{pool}/{id}: removed, closing {} connections", v["closing"]);
            wait_if_asked(&c, pool, id, &wait).await
        }
        Command::Reload { admin } => {
            let v = connect(&admin)?
                .call(Method::POST, "/v1/reload", None)
                .await?;
            println!("reloaded: added {} removed {}", v["added"], v["removed"]);
            for note in v["notes"].as_array().into_iter().flatten() {
                println!("note: {}", note.as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { .. } | Command::Check { .. } | Command::GenCert { .. } => {
            unreachable!("handled locally")
        }
    }
}
