//! Snapshots: an aggregate's serialized state at a revision, so loads need not replay
//! every event.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU64;
use std::sync::{Arc, RwLock};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use tidings_core::event::Payload;
use tidings_core::store::Revision;
use tidings_core::stream::StreamId;

/// An aggregate's state as of one revision of its stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The aggregate's stream.
    pub stream: StreamId,
    /// The revision of the last event folded into `state`.
    pub revision: Revision,
    /// The aggregate's [`SNAPSHOT_VERSION`](super::Aggregate::SNAPSHOT_VERSION) when taken.
    pub schema_version: String,
    /// The serialized state.
    pub state: Payload,
    /// When it was taken.
    pub taken_at: Timestamp,
}

/// Why a snapshot store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The state could not be serialized.
    #[error("the state of {stream} could not be serialized: {reason}")]
    Serialize {
        /// The stream.
        stream: StreamId,
        /// What serde said.
        reason: String,
    },
    /// The backend failed.
    #[error("snapshot store failure: {0}")]
    Backend(String),
}

/// Keeps the latest snapshot of each stream.
pub trait SnapshotStore: Send + Sync {
    /// The latest snapshot of `stream`, if any.
    fn load(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, SnapshotError>> + Send;

    /// Keeps `snapshot` unless a snapshot of a later revision is already kept.
    fn save(&self, snapshot: Snapshot) -> impl Future<Output = Result<(), SnapshotError>> + Send;
}

/// Snapshots in memory. Clones share one store.
#[derive(Clone, Default)]
pub struct InMemorySnapshotStore {
    inner: Arc<RwLock<HashMap<StreamId, Snapshot>>>,
}

impl fmt::Debug for InMemorySnapshotStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InMemorySnapshotStore")
            .field("snapshots", &self.len())
            .finish()
    }
}

impl InMemorySnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many streams have a snapshot.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no stream has one.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The kept snapshot of `stream` (a copy).
    pub fn get(&self, stream: &StreamId) -> Option<Snapshot> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(stream)
            .cloned()
    }
}

impl SnapshotStore for InMemorySnapshotStore {
    async fn load(&self, stream: &StreamId) -> Result<Option<Snapshot>, SnapshotError> {
        Ok(self.get(stream))
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), SnapshotError> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let newer_kept = inner
            .get(&snapshot.stream)
            .is_some_and(|s| s.revision > snapshot.revision);
        if !newer_kept {
            inner.insert(snapshot.stream.clone(), snapshot);
        }
        Ok(())
    }
}

/// When a repository takes a snapshot after a save.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotPolicy {
    /// Never.
    #[default]
    Never,
    /// Whenever the stream's event count crosses a multiple of N.
    EveryEvents(NonZeroU64),
}

impl SnapshotPolicy {
    /// Every `n` events; `None` for 0, which is not a policy.
    pub fn every(n: u64) -> Option<Self> {
        NonZeroU64::new(n).map(Self::EveryEvents)
    }

    /// Whether a save that moved the stream from `before` to `after` calls for a snapshot.
    pub fn is_due(self, before: Option<Revision>, after: Revision) -> bool {
        match self {
            Self::Never => false,
            Self::EveryEvents(n) => {
                let count_before = before.map_or(0, |r| r + 1);
                let count_after = after + 1;
                count_after / n.get() > count_before / n.get()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_fires_when_a_multiple_is_crossed() {
        let p = SnapshotPolicy::every(3).unwrap();
        assert!(!p.is_due(None, 1));
        assert!(p.is_due(None, 2));
        assert!(p.is_due(Some(1), 4));
        assert!(!p.is_due(Some(2), 4));
        assert!(p.is_due(Some(4), 9));
        assert!(!SnapshotPolicy::Never.is_due(None, 1000));
        assert_eq!(SnapshotPolicy::every(0), None);
    }

    #[tokio::test]
    async fn in_memory_store_keeps_the_latest() {
        let store = InMemorySnapshotStore::new();
        let s = StreamId::new("order-1").unwrap();
        let snap = |revision| Snapshot {
            stream: s.clone(),
            revision,
            schema_version: "1".into(),
            state: Payload::parse("{}").unwrap(),
            taken_at: Timestamp::UNIX_EPOCH,
        };
        store.save(snap(5)).await.unwrap();
        store.save(snap(3)).await.unwrap();
        assert_eq!(store.load(&s).await.unwrap().unwrap().revision, 5);
        store.save(snap(7)).await.unwrap();
        assert_eq!(store.load(&s).await.unwrap().unwrap().revision, 7);
        assert_eq!(store.len(), 1);
    }
}
