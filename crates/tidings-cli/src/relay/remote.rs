//! `tidings relay --server URL`: the server's log read over HTTP, and the relay's
//! checkpoint in a local file under an exclusive lock (the server refuses appends to
//! system streams such as `$checkpoint-…`).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use futures::{Stream, StreamExt};
use tidings::consumer::{Checkpoint, CheckpointError, CheckpointStore};
use tidings::store::EventStreamItem;
use tidings::{
    EventReader, EventSubscriber, Filter, ListStreams, Position, ReadAll, ReadStream,
    RecordedEvent, Revision, Start, StoreError, StreamId, StreamInfo,
};

use crate::client::{Client, Remote};

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("{e:#}"))
}

fn unsupported() -> StoreError {
    StoreError::Backend("not used by the relay over --server".to_owned())
}

/// A server's global log as a read-only store: `read_all`, `head` and `subscribe_all`
/// go over HTTP (Server-Sent Events for the subscription); the rest is not needed by
/// the relay and fails.
#[derive(Clone)]
pub struct RemoteSource(Remote);

impl RemoteSource {
    /// Reads from `client`'s server.
    pub fn new(client: Remote) -> Self {
        Self(client)
    }
}

impl EventReader for RemoteSource {
    async fn read_stream(
        &self,
        _stream: &StreamId,
        _options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Err(unsupported())
    }

    async fn read_all(&self, options: ReadAll) -> Result<Vec<RecordedEvent>, StoreError> {
        let events = self
            .0
            .read_all(options.from, options.limit)
            .await
            .map_err(backend)?;
        Ok(events
            .into_iter()
            .filter(|e| options.filter.matches(e.stream.as_str(), &e.event_type))
            .collect())
    }

    async fn read_correlation(
        &self,
        _correlation_id: &str,
        _from: Position,
        _limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        Err(unsupported())
    }

    async fn stream_version(&self, _stream: &StreamId) -> Result<Option<Revision>, StoreError> {
        Err(unsupported())
    }

    async fn list_streams(&self, _options: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        Err(unsupported())
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        self.0.head().await.map_err(backend)
    }
}

impl EventSubscriber for RemoteSource {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        let client = self.0.clone();
        let from = match start {
            Start::Beginning => Some(0),
            Start::At(p) => Some(p),
            Start::End => None,
        };
        futures::stream::once(async move { client.subscribe(None, from).await })
            .map(move |opened| match opened {
                Ok(events) => {
                    let filter = filter.clone();
                    events
                        .filter(move |e| {
                            std::future::ready(match e {
                                Ok(e) => filter.matches(e.stream.as_str(), &e.event_type),
                                Err(_) => true,
                            })
                        })
                        .map(|e| e.map_err(backend))
                        .boxed()
                }
                Err(e) => futures::stream::once(std::future::ready(Err(backend(e)))).boxed(),
            })
            .flatten()
    }

    fn subscribe_stream(
        &self,
        _stream: &StreamId,
        _start: Start,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        futures::stream::once(std::future::ready(Err(unsupported())))
    }
}

/// The relay's checkpoint in a file, `{"next": N}`, written by replacing the file; a
/// lock file beside it (`FILE.lock`, locked exclusively while the relay runs) keeps a
/// second relay off the same checkpoint.
pub struct FileCheckpoint {
    path: PathBuf,
    /// Held for the relay's life: the lock goes with it.
    _lock: Arc<File>,
}

impl FileCheckpoint {
    /// Locks `path` for this process (failing if another holds it).
    pub fn open(path: &Path) -> Result<Self> {
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            bail!(
                "the relay checkpoint {} is held by another relay (lock {})",
                path.display(),
                lock_path.display()
            );
        }
        Ok(Self {
            path: path.to_owned(),
            _lock: Arc::new(lock),
        })
    }

    fn io(&self, name: &str, e: std::io::Error) -> CheckpointError {
        CheckpointError::Store {
            name: name.to_owned(),
            source: StoreError::Backend(format!("{}: {e}", self.path.display())),
        }
    }
}

impl CheckpointStore for FileCheckpoint {
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, CheckpointError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(name, e)),
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CheckpointError::Corrupt {
                name: name.to_owned(),
                revision: 0,
                reason: format!("{}: {e}", self.path.display()),
            })?;
        let next = value["next"]
            .as_u64()
            .ok_or_else(|| CheckpointError::Corrupt {
                name: name.to_owned(),
                revision: 0,
                reason: format!("{}: no integer \"next\"", self.path.display()),
            })?;
        Ok(Some(Checkpoint::at(next)))
    }

    async fn save(&self, name: &str, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let tmp = PathBuf::from(format!("{}.tmp", self.path.display()));
        let body = serde_json::json!({ "name": name, "next": checkpoint.next }).to_string();
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(body.as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| self.io(name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_checkpoint_is_kept_and_locked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.checkpoint");
        let cp = FileCheckpoint::open(&path).unwrap();
        assert_eq!(cp.load("relay-x").await.unwrap(), None);
        cp.save("relay-x", &Checkpoint::at(7)).await.unwrap();
        assert_eq!(cp.load("relay-x").await.unwrap(), Some(Checkpoint::at(7)));
        assert!(
            FileCheckpoint::open(&path).is_err(),
            "a second relay is refused"
        );
        drop(cp);
        assert!(FileCheckpoint::open(&path).is_ok());
    }
}
