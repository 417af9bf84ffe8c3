//! Which store a command opens: the one place that turns `--store` / `--data` into a
//! store, so a new backend (`postgres://…`) is added here and nowhere else.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};

/// Where the events live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In memory; gone when the process exits (`--store memory`).
    Memory,
    /// The embedded store in a directory.
    Dir(PathBuf),
    /// PostgreSQL (`postgres://…`).
    Postgres(String),
}

impl StoreSpec {
    /// `--store URL` when given, else the data directory.
    pub fn from_args(store: Option<&str>, data: &Path) -> Result<Self> {
        Ok(match store {
            None => Self::Dir(data.to_owned()),
            Some("memory" | "memory:" | "mem") => Self::Memory,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::Postgres(url.to_owned())
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
            $crate::store::StoreSpec::Postgres(url) => {
                let $s = tidings_postgres::PgStore::connect(&url)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to the PostgreSQL store: {e}"))?;
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
        assert_eq!(
            StoreSpec::from_args(None, d).unwrap(),
            StoreSpec::Dir(d.into())
        );
        assert_eq!(
            StoreSpec::from_args(Some("memory"), d).unwrap(),
            StoreSpec::Memory
        );
        assert!(matches!(
            StoreSpec::from_args(Some("postgres://localhost/test"), d).unwrap(),
            StoreSpec::Postgres(_)
        ));
        assert!(StoreSpec::from_args(Some("nats://x"), d).is_err());
        assert_eq!(
            StoreSpec::from_args(Some("/tmp/x"), d).unwrap(),
            StoreSpec::Dir("/tmp/x".into())
        );
    }
}
