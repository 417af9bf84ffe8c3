//! `tidings serve`: the HTTP API, Server-Sent Events, consumer groups and the web console.
//!
//! The server serves the consumer groups of its store, so members in any language share
//! them over HTTP. The embedded and in-memory stores' groups are hosted by the server
//! ([`HostedGroups`]: settings, checkpoints and parked lists in the store's own
//! `$groups`, `$checkpoint-…` and `$parked-…` streams; leases in the server's memory).
//! On PostgreSQL they are [`PgGroups`], kept in the database's tables, leases included:
//! several servers on one database serve the same groups, and a member may go on
//! through any of them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tidings::consumer::HostedGroups;
use tidings::group::Groups;
use tidings::{EventStore, InMemoryStore};
use tidings_log::LogStore;
use tidings_postgres::{PgGroups, PgStore};
use tidings_server::{AppState, Role, ServerConfig, Tokens};

use crate::store::{EmbeddedTuning, PgArgs, StoreSpec, parse_duration, with_store};

/// Options of `tidings serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback needs --token or --token-file.
    #[arg(long, default_value = "127.0.0.1:7400", env = "TIDINGS_LISTEN")]
    listen: String,
    /// Data directory of the embedded store.
    #[arg(long, default_value = "./tidings-data", env = "TIDINGS_DATA")]
    data: PathBuf,
    /// Store to serve instead of --data: a directory, `memory`, or postgres://….
    #[arg(long, env = "TIDINGS_STORE")]
    store: Option<String>,
    /// An admin bearer token that requests must carry.
    #[arg(long, env = "TIDINGS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file of `ROLE TOKEN` lines (roles: read-only, read-write, admin).
    #[arg(long, env = "TIDINGS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = tidings_server::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Appends accepted at once before answering 503 with Retry-After.
    #[arg(long, default_value_t = 512)]
    max_pending_appends: usize,
    /// Request-body bytes pending appends may hold together before answering 503.
    #[arg(long, default_value_t = 256 << 20)]
    max_pending_bytes: usize,
    /// Seconds between heartbeat comments on idle subscriptions.
    #[arg(long, default_value_t = 15)]
    heartbeat_secs: u64,
    /// Size of each segment file of the embedded store, in bytes (default 256 MiB;
    /// a new store's disk usage starts at one segment).
    #[arg(long, value_name = "BYTES")]
    segment_size: Option<u64>,
    /// Events written between background index snapshots of the embedded store
    /// (default 1,000,000; they bound the rescan after a crash).
    #[arg(long, value_name = "EVENTS")]
    index_snapshot_every: Option<u64>,
    /// Most events whose index entries the embedded store keeps in memory before it
    /// merges them into its index file (default 4,000,000): bounds the index's memory.
    #[arg(long, value_name = "EVENTS")]
    index_memory_events: Option<u64>,
    /// Longest an append may take (`30s`, `500ms`, or seconds) before it is answered 503
    /// `append-timeout` with Retry-After; `/ready` answers 503 while appends stall. The
    /// embedded store keeps the same deadline for its fsync.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    append_timeout: Duration,
    #[command(flatten)]
    pg: PgArgs,
}

fn tokens(args: &ServeArgs) -> Result<Tokens> {
    let mut tokens = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read token file {}", path.display()))?;
            Tokens::parse_file(&text)
                .with_context(|| format!("token file {} is invalid", path.display()))?
        }
        None => Tokens::none(),
    };
    if let Some(t) = &args.token {
        if t.len() < 16 {
            bail!("--token must be at least 16 characters long");
        }
        tokens = tokens.with(t.clone(), Role::Admin);
    }
    Ok(tokens)
}

async fn resolve(listen: &str) -> Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host(listen).await.with_context(|| {
        format!("--listen {listen}: not an address (use HOST:PORT, e.g. 127.0.0.1:7400)")
    })?;
    addrs
        .next()
        .with_context(|| format!("--listen {listen} resolves to no address"))
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn run(args: ServeArgs) -> Result<()> {
    let tokens = tokens(&args)?;
    let addr = resolve(&args.listen).await?;
    if !addr.ip().is_loopback() && !tokens.enabled() {
        bail!(
            "refusing to listen on {addr} without authentication: anyone who can reach it could \
             read and write every event. Pass --token <SECRET> (or --token-file FILE), or listen \
             on 127.0.0.1"
        );
    }
    let spec = StoreSpec::from_args(args.store.as_deref(), &args.data, &args.pg)?;
    let config = ServerConfig {
        max_body_bytes: args.max_body_bytes,
        max_pending_appends: args.max_pending_appends.max(1),
        max_pending_bytes: args.max_pending_bytes.max(1024),
        heartbeat: Duration::from_secs(args.heartbeat_secs.max(1)),
        tokens,
        store_size: spec.size_probe(),
        store_description: spec.describe(),
        append_timeout: args.append_timeout,
        ..ServerConfig::default()
    };
    let tuning = EmbeddedTuning {
        segment_size: args.segment_size,
        index_snapshot_every: args.index_snapshot_every,
        index_memory_events: args.index_memory_events,
        append_timeout: Some(args.append_timeout),
    };
    with_store!(spec, tuning, |store| serve_store(store, config, addr).await)
}

/// The consumer groups a server serves.
enum ServedGroups<S: EventStore> {
    /// Hosted by this process over the store.
    Hosted(HostedGroups<S>),
    /// Kept in PostgreSQL.
    Postgres(PgGroups),
}

impl<S: EventStore> ServedGroups<S> {
    fn shared(&self) -> Arc<dyn Groups> {
        match self {
            Self::Hosted(g) => Arc::new(g.clone()),
            Self::Postgres(g) => Arc::new(g.clone()),
        }
    }

    /// Saves what the server holds when it stops.
    async fn stop(&self) -> Result<()> {
        match self {
            // Saves each group's checkpoint, so a restart delivers as little again as it
            // can.
            Self::Hosted(g) => g
                .shutdown()
                .await
                .context("cannot save the consumer groups' checkpoints"),
            // Everything is in the database already, and members are not made to leave:
            // their leases live there too, so they may go on through another server.
            Self::Postgres(_) => Ok(()),
        }
    }
}

/// A store whose consumer groups `tidings serve` knows how to serve.
trait GroupHome: EventStore + Clone {
    async fn served_groups(&self) -> Result<ServedGroups<Self>>;
}

async fn hosted<S: EventStore + Clone>(store: &S) -> Result<ServedGroups<S>> {
    let groups = HostedGroups::open(store.clone())
        .await
        .context("cannot open the store's consumer groups")?;
    Ok(ServedGroups::Hosted(groups))
}

impl GroupHome for InMemoryStore {
    async fn served_groups(&self) -> Result<ServedGroups<Self>> {
        hosted(self).await
    }
}

impl GroupHome for LogStore {
    async fn served_groups(&self) -> Result<ServedGroups<Self>> {
        hosted(self).await
    }
}

impl GroupHome for PgStore {
    async fn served_groups(&self) -> Result<ServedGroups<Self>> {
        Ok(ServedGroups::Postgres(self.groups()))
    }
}

async fn serve_store<S: GroupHome>(store: S, config: ServerConfig, addr: SocketAddr) -> Result<()> {
    let description = config.store_description.clone();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (is another server running there?)"))?;
    let local = listener.local_addr()?;
    let groups = store.served_groups().await?;
    let state = AppState::with_groups(store, groups.shared(), config);
    println!("Tidings is listening on http://{local} (store: {description})");
    println!("Open the console at http://{local}/  ·  API: http://{local}/openapi.json");
    let served = tidings_server::serve(listener, state, tidings_server::shutdown_signal())
        .await
        .context("the server failed");
    let stopped = groups.stop().await;
    served?;
    stopped?;
    println!("Tidings stopped cleanly.");
    Ok(())
}
