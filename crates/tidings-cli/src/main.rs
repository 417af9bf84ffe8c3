//! `tidings`: the command line of the Tidings event store.

mod demo;

use clap::{Parser, Subcommand};

/// Tidings: an event store, an event bus and an event-sourcing toolkit.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the order example against the in-memory store and prints the event flow.
    Demo(demo::DemoArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo(args) => demo::run(args).await,
    }
}
