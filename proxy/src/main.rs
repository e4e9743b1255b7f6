//! The `wsgate` command line: a thin layer over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use wsgate::config::{Config, ConfigError};

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

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file.
        #[arg(
            short,
            long,
            env = "WSGATE_CONFIG",
            default_value = "config/wsgate.yaml"
        )]
        config: PathBuf,
        /// Worker threads per listener (overrides `runtime.threads`; 0 = one per core).
        #[arg(long, env = "WSGATE_THREADS")]
        threads: Option<usize>,
    },
    /// Validate a config file and exit 0 if it is valid, 1 if not (like `nginx -t`).
    Check {
        #[arg(
            short,
            long,
            env = "WSGATE_CONFIG",
            default_value = "config/wsgate.yaml"
        )]
        config: PathBuf,
    },
    /// Write a self-signed development certificate for localhost.
    GenCert {
        #[arg(long, default_value = "certs/dev.crt")]
        cert: PathBuf,
        #[arg(long, default_value = "certs/dev.key")]
        key: PathBuf,
    },
}

/// EX_USAGE from sysexits.h: the proxy was given a config it cannot run.
const EXIT_BAD_CONFIG: u8 = 64;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Run { config, threads } => run(&config, threads),
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} routes, {} pools)",
                    config.display(),
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
        },
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
    }
}

fn run(path: &std::path::Path, threads: Option<usize>) -> ExitCode {
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
    let result = wsgate::server::run(config).context("wsgate cannot start");
    match result {
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
