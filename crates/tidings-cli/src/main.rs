//! `tidings`: serve the store over HTTP, and work with it from the command line.
//!
//! Each command lives in its own module; this file only parses and dispatches.

mod bench;
mod client;
mod commands;
mod demo;
mod relay;
mod remote_groups;
mod serve;
mod store;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Reads build an owned event per record; mimalloc makes those many small allocations
/// markedly cheaper than the system allocator (see the bench notes in issue 3).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tidings: an event store, an event bus and an event-sourcing toolkit.
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
    Append(commands::append::AppendArgs),
    /// Read a stream.
    Read(commands::read::ReadArgs),
    /// Follow new events live (all streams, or one).
    Tail(commands::tail::TailArgs),
    /// List streams.
    Streams(commands::streams::StreamsArgs),
    /// Print the causation tree of one business transaction.
    Correlation(commands::correlation::CorrelationArgs),
    /// Export every event as NDJSON.
    Export(commands::export::ExportArgs),
    /// Import NDJSON exported by `tidings export` (resumable, idempotent by event id).
    Import(commands::import::ImportArgs),
    /// Create, list, show, update, delete or consume the store's consumer groups.
    Group(commands::group::GroupArgs),
    /// List, replay or delete a consumer group's parked messages.
    Parked(commands::group::ParkedArgs),
    /// The built-in projections of a local store: list, status, show, rebuild (blue/green).
    Projection(commands::projection::ProjectionArgs),
    /// List, show, replay or delete a consumer group's dead letters on a broker.
    DeadLetters(commands::dead_letters::DeadLettersArgs),
    /// Run the standard workloads against a store and print a table (or JSON).
    Bench(bench::BenchArgs),
    /// Check every checksum of an embedded store and its indexes against the log.
    Verify(verify::VerifyArgs),
    /// Publish the store's log to NATS JetStream or RabbitMQ (the outbox relay).
    Relay(relay::RelayArgs),
    /// Runs the order example (in memory, on the embedded store with --data, or as three services over a broker with --bus) and prints the event flow.
    Demo(demo::DemoArgs),
    /// One service of `tidings demo --bus` (started by it).
    #[command(hide = true)]
    DemoService(demo::services::ServiceArgs),
    /// The consumer process of `tidings bench --workload bus-latency` (started by it).
    #[command(hide = true)]
    BenchConsumer(bench::bus::ConsumerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Serve(_) => "info,tidings_log=warn",
        _ => "error,tidings_log=warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .with_writer(std::io::stderr)
        .init();
    // bench and verify run their own runtimes; everything else shares this one.
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Verify(args) => verify::run(args),
        command => match tokio::runtime::Runtime::new() {
            Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
            Ok(rt) => rt
                .block_on(async {
                    match command {
                        Command::Serve(a) => serve::run(a).await,
                        Command::Append(a) => commands::append::run(a).await,
                        Command::Read(a) => commands::read::run(a).await,
                        Command::Tail(a) => commands::tail::run(a).await,
                        Command::Streams(a) => commands::streams::run(a).await,
                        Command::Correlation(a) => commands::correlation::run(a).await,
                        Command::Export(a) => commands::export::run(a).await,
                        Command::Import(a) => commands::import::run(a).await,
                        Command::DeadLetters(a) => commands::dead_letters::run(a).await,
                        Command::Group(a) => commands::group::run(a).await,
                        Command::Parked(a) => commands::group::run_parked(a).await,
                        Command::Projection(a) => commands::projection::run(a).await,
                        Command::Demo(a) => demo::run(a).await,
                        Command::DemoService(a) => demo::services::run_service_process(a).await,
                        Command::Relay(a) => relay::run(a).await,
                        Command::BenchConsumer(a) => bench::bus::run_consumer(a).await,
                        Command::Bench(_) | Command::Verify(_) => unreachable!("handled above"),
                    }
                })
                .map(|()| ExitCode::SUCCESS),
        },
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
