//! `wsgate-bench`: parses flags, builds the runtime, runs one mode and
//! prints its JSON summary as the last line on stdout.

use clap::Parser;
use std::process::ExitCode;
use wsgate_bench::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let threads = match cli.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate-bench: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(wsgate_bench::run(cli));
    // Tasks still parked on sockets must not delay the exit.
    runtime.shutdown_background();
    println!("{}", report.line);
    ExitCode::from(report.status.exit_code())
}
