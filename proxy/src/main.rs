//! The `wsgate` binary: logging, the global allocator, and the command
//! line in `wsgate::cli`.

use std::process::ExitCode;

mod allocator;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    wsgate::cli::main(&allocator::settings())
}
