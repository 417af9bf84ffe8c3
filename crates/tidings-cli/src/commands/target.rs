//! Where a client command finds the events: a server, or a local store.

use std::path::PathBuf;

use clap::Args;

/// Where a client command finds the events.
#[derive(Debug, Args)]
pub struct Target {
    /// A Tidings server to talk to, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "TIDINGS_SERVER")]
    pub(super) server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "TIDINGS_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
    /// Data directory of a local embedded store (when no --server).
    #[arg(long, default_value = "./tidings-data", env = "TIDINGS_DATA")]
    pub(super) data: PathBuf,
    /// A local store URL instead of --data: a directory or postgres://….
    #[arg(long, env = "TIDINGS_STORE")]
    pub(super) store: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) pg: crate::store::PgArgs,
}

/// Where `tidings append` finds the events: as [`Target`], but the data directory is
/// `--data-dir`, since `--data` is the event's payload there.
#[derive(Debug, Args)]
pub struct AppendTarget {
    /// A Tidings server to talk to, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "TIDINGS_SERVER")]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "TIDINGS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of a local embedded store (when no --server).
    #[arg(long, default_value = "./tidings-data", env = "TIDINGS_DATA")]
    data_dir: PathBuf,
    /// A local store URL instead of --data-dir: a directory or postgres://….
    #[arg(long, env = "TIDINGS_STORE")]
    store: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pg: crate::store::PgArgs,
}

impl From<AppendTarget> for Target {
    fn from(t: AppendTarget) -> Self {
        Self {
            server: t.server,
            token: t.token,
            data: t.data_dir,
            store: t.store,
            json: t.json,
            pg: t.pg,
        }
    }
}

/// Runs `$body` with `$c` bound to a [`Client`](crate::client::Client) for the target.
macro_rules! with_client {
    ($target:expr, |$c:ident| $body:expr) => {{
        let t: &$crate::commands::target::Target = &$target;
        match &t.server {
            Some(url) => {
                let $c = $crate::client::Remote::new(url, t.token.clone())?;
                $body
            }
            None => {
                let spec = $crate::store::StoreSpec::from_args(t.store.as_deref(), &t.data, &t.pg)?;
                $crate::store::with_store!(spec, |store| {
                    let $c = $crate::client::Local(store);
                    $body
                })
            }
        }
    }};
}
pub(super) use with_client;
