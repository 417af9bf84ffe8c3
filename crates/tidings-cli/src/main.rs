//! `tidings`: serve the store over HTTP, and work with it from the command line.
//!
//! Each command lives in its own module; this file only parses and dispatches.

mod client;
mod commands;
mod demo;
mod serve;
mod store;

use clap::{Parser, Subcommand};

/// Tidings: an event store, event bus and event-sourcing toolkit.
#[derive(Debug, Parser)]
#[command(name = "tidings", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API, Server-Sent Events and the web console.
    Serve(serve::ServeArgs),
    /// Append one event to a stream.
    Append(commands::AppendArgs),
    /// Read a stream.
    Read(commands::ReadArgs),
    /// Follow new events live (all streams, or one).
    Tail(commands::TailArgs),
    /// List streams.
    Streams(commands::StreamsArgs),
    /// Print the causation tree of one business transaction.
    Correlation(commands::CorrelationArgs),
    /// Export every event as NDJSON.
    Export(commands::ExportArgs),
    /// Import NDJSON exported by `tidings export` (resumable, idempotent by event id).
    Import(commands::ImportArgs),
    /// Runs the order example against the in-memory store and prints the event flow.
    Demo(demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(a) => serve::run(a).await,
            Command::Append(a) => commands::append(a).await,
            Command::Read(a) => commands::read(a).await,
            Command::Tail(a) => commands::tail(a).await,
            Command::Streams(a) => commands::streams(a).await,
            Command::Correlation(a) => commands::correlation(a).await,
            Command::Export(a) => commands::export(a).await,
            Command::Import(a) => commands::import(a).await,
            Command::Demo(a) => demo::run(a).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
