//! Which store a command opens: the one place that turns `--store` / `--data` into a
//! store, so a new backend (`postgres://…`) is added here and nowhere else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;

/// Where the events live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In memory; gone when the process exits (`--store memory`).
    Memory,
    /// The embedded store in a directory.
    Dir(PathBuf),
    /// PostgreSQL (`postgres://…`).
    Postgres(PgSpec),
}

/// A PostgreSQL store: its URL and the append deadlines the command line set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSpec {
    /// `postgres://…`.
    pub url: String,
    /// `--pg-lock-timeout` (the store's default when `None`).
    pub lock_timeout: Option<Duration>,
    /// `--pg-statement-timeout` (the store's default when `None`).
    pub statement_timeout: Option<Duration>,
}

impl PgSpec {
    /// The store builder for this URL with the deadlines set.
    pub fn builder(&self) -> tidings_postgres::PgStoreBuilder {
        let mut builder = tidings_postgres::PgStore::builder(&self.url);
        if let Some(timeout) = self.lock_timeout {
            builder = builder.lock_timeout(timeout);
        }
        if let Some(timeout) = self.statement_timeout {
            builder = builder.statement_timeout(timeout);
        }
        builder
    }
}

/// The PostgreSQL append deadlines of a command that opens a store
/// (`PgStoreBuilder::lock_timeout` / `statement_timeout`).
#[derive(Debug, Clone, Default, Args)]
pub struct PgArgs {
    /// With --store postgres://…: longest an append waits for a lock another session
    /// holds (`500ms`, `5s`, or seconds; PostgreSQL's `lock_timeout`, default 5s). Past
    /// it the append writes nothing and fails as a timeout (503 `append-timeout`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "TIDINGS_PG_LOCK_TIMEOUT")]
    pub pg_lock_timeout: Option<Duration>,
    /// With --store postgres://…: longest one append statement runs (`500ms`, `30s`, or
    /// seconds; PostgreSQL's `statement_timeout`, default 30s). Past it the append writes
    /// nothing and fails as a timeout (503 `append-timeout`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, env = "TIDINGS_PG_STATEMENT_TIMEOUT")]
    pub pg_statement_timeout: Option<Duration>,
}

/// Parses `500ms`, `30s` or a number of seconds (more than zero, up to a day).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    match number.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 && n * unit <= 86_400.0 => {
            Ok(Duration::from_secs_f64(n * unit))
        }
        _ => Err(format!(
            "{text:?} is not a duration: use e.g. 500ms, 30s or 30 (seconds), up to a day"
        )),
    }
}

impl StoreSpec {
    /// `--store URL` when given, else the data directory; the PostgreSQL deadlines are
    /// refused unless the store is PostgreSQL.
    pub fn from_args(store: Option<&str>, data: &Path, pg: &PgArgs) -> Result<Self> {
        let spec = Self::from_store_arg(store, data)?;
        if !matches!(spec, Self::Postgres(_)) {
            let given = [
                (pg.pg_lock_timeout.is_some(), "--pg-lock-timeout"),
                (pg.pg_statement_timeout.is_some(), "--pg-statement-timeout"),
            ];
            if let Some((_, flag)) = given.iter().find(|(set, _)| *set) {
                bail!("{flag} applies to a PostgreSQL store only: add --store postgres://…");
            }
        }
        Ok(match spec {
            Self::Postgres(p) => Self::Postgres(PgSpec {
                lock_timeout: pg.pg_lock_timeout,
                statement_timeout: pg.pg_statement_timeout,
                ..p
            }),
            other => other,
        })
    }

    fn from_store_arg(store: Option<&str>, data: &Path) -> Result<Self> {
        Ok(match store {
            None => Self::Dir(data.to_owned()),
            Some("memory" | "memory:" | "mem") => Self::Memory,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::Postgres(PgSpec {
                    url: url.to_owned(),
                    lock_timeout: None,
                    statement_timeout: None,
                })
            }
            Some(url) if url.contains("://") => {
                bail!(
                    "--store {url}: unknown scheme; use a directory path, `memory` or postgres://…"
                )
            }
            Some(path) => Self::Dir(PathBuf::from(path.strip_prefix("file:").unwrap_or(path))),
        })
    }

    /// A short description for logs and the console.
    pub fn describe(&self) -> String {
        match self {
            Self::Memory => "memory".to_owned(),
            Self::Dir(p) => format!("embedded ({})", p.display()),
            Self::Postgres(_) => "postgres".to_owned(),
        }
    }

    /// A function reporting the store's size on disk, if it has one.
    pub fn size_probe(&self) -> Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>> {
        match self {
            Self::Dir(p) => {
                let p = p.clone();
                Some(Arc::new(move || dir_size(&p)))
            }
            _ => None,
        }
    }
}

fn dir_size(path: &Path) -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(path).ok()? {
        let entry = entry.ok()?;
        let meta = entry.metadata().ok()?;
        total += if meta.is_dir() {
            dir_size(&entry.path()).unwrap_or(0)
        } else {
            meta.len()
        };
    }
    Some(total)
}

/// How the embedded store lays out its files, when a command lets the user choose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedTuning {
    /// Size of each segment file (the store's default when `None`).
    pub segment_size: Option<u64>,
    /// Events between index snapshots (the store's default when `None`).
    pub index_snapshot_every: Option<u64>,
    /// Most events kept in the in-memory index layer (the store's default when `None`).
    pub index_memory_events: Option<u64>,
    /// Longest an append waits to be durable (the store's default when `None`).
    pub append_timeout: Option<std::time::Duration>,
}

/// Opens (or creates) the embedded store in `dir`, reporting what recovery did.
pub fn open_embedded(dir: &Path, tuning: EmbeddedTuning) -> Result<tidings_log::LogStore> {
    // The store creates the directory itself: it also makes the new directory durable
    // in its parent, which a plain `create_dir_all` does not.
    let mut builder = tidings_log::LogStore::builder(dir);
    if let Some(bytes) = tuning.segment_size {
        builder = builder.segment_size(bytes);
    }
    if let Some(events) = tuning.index_snapshot_every {
        builder = builder.index_snapshot_every(events);
    }
    if let Some(events) = tuning.index_memory_events {
        builder = builder.index_memory_events(events);
    }
    if let Some(timeout) = tuning.append_timeout {
        builder = builder.append_timeout(timeout);
    }
    let store = builder.open().map_err(|e| match e {
        tidings_log::LogError::Locked { .. } => anyhow::anyhow!(
            "the store in {} is open in another process (a running `tidings serve`?); \
             talk to that server with --server URL instead",
            dir.display()
        ),
        e => anyhow::anyhow!(
            "cannot open the store in {}: {e} (`tidings verify --data {}` tells what is wrong)",
            dir.display(),
            dir.display()
        ),
    })?;
    if let Some(torn) = &store.recovery_report().torn_tail {
        eprintln!(
            "warning: recovery removed a torn tail of {} bytes at {}:{} ({})",
            torn.bytes,
            torn.file.display(),
            torn.offset,
            torn.reason
        );
    }
    Ok(store)
}

/// Opens the store `spec` names (with an optional [`EmbeddedTuning`]) and evaluates
/// `$body` with it bound to `$s` (each backend is its own type, so the body is compiled
/// once per backend).
macro_rules! with_store {
    ($spec:expr, |$s:ident| $body:expr) => {
        $crate::store::with_store!($spec, $crate::store::EmbeddedTuning::default(), |$s| $body)
    };
    ($spec:expr, $tuning:expr, |$s:ident| $body:expr) => {{
        match $spec {
            $crate::store::StoreSpec::Memory => {
                let $s = tidings::InMemoryStore::new();
                $body
            }
            $crate::store::StoreSpec::Dir(dir) => {
                let $s = $crate::store::open_embedded(&dir, $tuning)?;
                let closer = $s.clone();
                let result = $body;
                // Finishes queued appends and snapshots the indexes so the next open is quick.
                closer
                    .close()
                    .await
                    .map_err(|e| anyhow::anyhow!("closing the store in {}: {e}", dir.display()))?;
                result
            }
            $crate::store::StoreSpec::Postgres(pg) => {
                let $s =
                    pg.builder().connect().await.map_err(|e| {
                        anyhow::anyhow!("cannot connect to the PostgreSQL store: {e}")
                    })?;
                let closer = $s.clone();
                let result = $body;
                closer.close().await;
                result
            }
        }
    }};
}
pub(crate) use with_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_arguments() {
        let d = Path::new("./tidings-data");
        let none = PgArgs::default();
        assert_eq!(
            StoreSpec::from_args(None, d, &none).unwrap(),
            StoreSpec::Dir(d.into())
        );
        assert_eq!(
            StoreSpec::from_args(Some("memory"), d, &none).unwrap(),
            StoreSpec::Memory
        );
        assert!(matches!(
            StoreSpec::from_args(Some("postgres://localhost/test"), d, &none).unwrap(),
            StoreSpec::Postgres(_)
        ));
        assert!(StoreSpec::from_args(Some("nats://x"), d, &none).is_err());
        assert_eq!(
            StoreSpec::from_args(Some("/tmp/x"), d, &none).unwrap(),
            StoreSpec::Dir("/tmp/x".into())
        );
    }

    #[test]
    fn postgres_deadlines_reach_the_spec_and_only_postgres() {
        let d = Path::new("./tidings-data");
        let pg = PgArgs {
            pg_lock_timeout: Some(Duration::from_millis(250)),
            pg_statement_timeout: Some(Duration::from_secs(2)),
        };
        let spec = StoreSpec::from_args(Some("postgres://localhost/test"), d, &pg).unwrap();
        assert_eq!(
            spec,
            StoreSpec::Postgres(PgSpec {
                url: "postgres://localhost/test".to_owned(),
                lock_timeout: Some(Duration::from_millis(250)),
                statement_timeout: Some(Duration::from_secs(2)),
            })
        );
        for store in [None, Some("memory")] {
            let err = StoreSpec::from_args(store, d, &pg).unwrap_err().to_string();
            assert!(
                err.contains("--pg-lock-timeout") && err.contains("postgres://"),
                "{err}"
            );
        }
        let only_statement = PgArgs {
            pg_lock_timeout: None,
            ..pg
        };
        let err = StoreSpec::from_args(None, d, &only_statement)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--pg-statement-timeout"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        for bad in ["", "0", "-1s", "fast", "10m", "1e9", "NaNs", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
