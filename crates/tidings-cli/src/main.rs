//! `tidings`: the command line of the Tidings event store.

mod bench;
mod demo;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Reads build an owned event per record; mimalloc makes those many small allocations
/// markedly cheaper than the system allocator (see the bench notes in issue 3).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tidings: an event store, an event bus and an event-sourcing toolkit.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the order example (in memory, or on the embedded store with --data) and prints the event flow.
    Demo(demo::DemoArgs),
    /// Run the standard workloads against a store and print a table (or JSON).
    Bench(bench::BenchArgs),
    /// Check every checksum of an embedded store and its indexes against the log.
    Verify(verify::VerifyArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,tidings_log=warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Demo(args) => {
            tokio::runtime::Runtime::new()?.block_on(demo::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => bench::run(args),
        Command::Verify(args) => verify::run(args),
    }
}
