//! [`VersionedRunner`]: blue/green rebuilds — a new version of the read model is filled
//! while the old one serves, then swapped in atomically.
//!
//! Readers go through a [`LiveReadModel`]: a shared slot holding the live version's
//! model behind a read/write lock. The runner applies live events under the write lock,
//! one event at a time, so a reader always sees a model that reflects a complete prefix
//! of the log. A rebuild fills version N+1 in a model nobody reads, keeps version N
//! current a page at a time while it does, and once N+1 is at the log's head (and at
//! least as far as N) it takes the write lock, records N+1 as live in `$projection-<name>`
//! and swaps the models. Readers see version N whole until that moment, and version N+1
//! whole after it.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use tidings_core::handler::HandlerError;
use tidings_core::store::{EventStore, ExpectedVersion, Filter, Position, RecordedEvent};
use tokio::sync::{RwLock, RwLockReadGuard};
use tracing::Instrument;

use super::versions::{self, ProjectionVersions};
use super::{CheckpointPolicy, Projection, ProjectionError, ProjectionRunner};
use crate::{CheckpointStore, StoreCheckpoints};

/// A read model whose storage is keyed by a version number, so that a rebuild can fill a
/// new version while the old one keeps serving.
///
/// A version's storage is whatever the model uses, with the version in its key: a table
/// suffix (`orders_v3`), a file name, a stream name ([`StoredVersions`](super::StoredVersions)
/// uses `$projection-<name>-v<N>`). The [`VersionedRunner`] keeps each version's checkpoint
/// as `<name>-v<N>`.
///
/// ```
/// use std::collections::BTreeMap;
/// use std::sync::{Arc, Mutex};
/// use tidings::RecordedEvent;
/// use tidings::bus::HandlerError;
/// use tidings::projection::{Projection, VersionedProjection};
///
/// /// Orders per customer, one map per version (a table per version in a database).
/// #[derive(Default)]
/// struct Orders(BTreeMap<String, u32>);
/// impl Projection for Orders {
///     async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
///         *self.0.entry(event.stream.to_string()).or_default() += 1;
///         Ok(())
///     }
///     async fn reset(&mut self) -> Result<(), HandlerError> {
///         self.0.clear();
///         Ok(())
///     }
/// }
///
/// #[derive(Default)]
/// struct OrderVersions {
///     retired: Arc<Mutex<Vec<u32>>>,
/// }
/// impl VersionedProjection for OrderVersions {
///     type Model = Orders;
///     async fn open(&self, _version: u32) -> Result<Orders, HandlerError> {
///         Ok(Orders::default()) // in memory: every version starts empty
///     }
///     async fn retire(&self, version: u32) -> Result<(), HandlerError> {
///         self.retired.lock().unwrap().push(version); // e.g. DROP TABLE orders_v{version}
///         Ok(())
///     }
/// }
/// ```
pub trait VersionedProjection: Send + Sync + 'static {
    /// One version of the read model.
    type Model: Projection + Sync;

    /// Opens version `version` of the read model: empty when the version is new, as it
    /// was saved when a rebuild filled part of it before (the runner then resumes it
    /// from its checkpoint `<name>-v<version>`, so `apply` must tolerate events applied
    /// again after that checkpoint, as with [`ProjectionRunner`]). A model that keeps
    /// nothing across restarts (in memory) pairs with checkpoints that do not either
    /// ([`InMemoryCheckpoints`](crate::InMemoryCheckpoints)), so it is rebuilt from 0.
    fn open(&self, version: u32) -> impl Future<Output = Result<Self::Model, HandlerError>> + Send;

    /// Drops version `version`'s storage. Called after the swap away from it, once no
    /// reader can reach it.
    fn retire(&self, version: u32) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

struct Slot<M> {
    version: u32,
    model: M,
}

/// The read model readers go through: the live version, swapped whole by a rebuild.
/// Clones share it.
pub struct LiveReadModel<M> {
    slot: Arc<RwLock<Slot<M>>>,
}

impl<M> Clone for LiveReadModel<M> {
    fn clone(&self) -> Self {
        Self {
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<M> std::fmt::Debug for LiveReadModel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveReadModel").finish_non_exhaustive()
    }
}

impl<M> LiveReadModel<M> {
    /// The live version, read-locked: the runner applies no event and swaps no version
    /// while the view is held, so keep it briefly.
    pub async fn read(&self) -> LiveView<'_, M> {
        LiveView(self.slot.read().await)
    }
}

/// A read-locked view of the live version (see [`LiveReadModel::read`]); derefs to the
/// model.
pub struct LiveView<'a, M>(RwLockReadGuard<'a, Slot<M>>);

impl<M> LiveView<'_, M> {
    /// The version this model is.
    pub fn version(&self) -> u32 {
        self.0.version
    }
}

impl<M> Deref for LiveView<'_, M> {
    type Target = M;
    fn deref(&self) -> &M {
        &self.0.model
    }
}

/// The live slot as the runner's projection: each event applied under the write lock.
struct LiveApply<M>(Arc<RwLock<Slot<M>>>);

impl<M: Projection + Sync> Projection for LiveApply<M> {
    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.write().await.model.apply(event).await
    }

    async fn reset(&mut self) -> Result<(), HandlerError> {
        self.0.write().await.model.reset().await
    }

    async fn flush(&mut self) -> Result<(), HandlerError> {
        self.0.write().await.model.flush().await
    }
}

/// How far a rebuild has got, reported after each page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// The version being filled.
    pub version: u32,
    /// The next position it will consider.
    pub position: Position,
    /// The log's end when last looked at (its head + 1; 0 for an empty store).
    pub end: Position,
    /// Events the new version has applied in this rebuild.
    pub applied: u64,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RebuildReport {
    /// The version that served before.
    pub from_version: u32,
    /// The version that serves now.
    pub to_version: u32,
    /// True when the rebuild went on with a version an interrupted rebuild had begun.
    pub resumed: bool,
    /// Events the new version applied in this rebuild.
    pub applied: u64,
    /// The next position the new version will consider.
    pub position: Position,
    /// Versions whose storage was dropped.
    pub retired: Vec<u32>,
}

/// Runs a [`VersionedProjection`]: serves its live version through a [`LiveReadModel`],
/// keeps it current, and rebuilds blue/green.
///
/// [`ProjectionRunner`] stays as it is: it owns one read model and rebuilds it in place
/// (`reset`, then replay). This runner is for read models that can have versions.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
/// use tidings::projection::{StoredVersions, VersionedRunner};
/// use tidings::projection::builtin::Categories;
/// let store = InMemoryStore::new();
/// let enricher = Enricher::new("shop");
/// for stream in ["order-1", "order-2", "user-7"] {
///     let e = enricher.enrich(NewEvent::new("Created", serde_json::json!({}))).unwrap();
///     store.append(&StreamId::new(stream).unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
/// }
/// let versions = StoredVersions::<_, Categories>::new("categories", store.clone());
/// let mut runner = VersionedRunner::builder("categories", store, versions).open().await.unwrap();
/// runner.catch_up().await.unwrap();
/// let live = runner.live(); // what readers keep
///
/// let report = runner.rebuild_with(|p| println!("v{} at {}/{}", p.version, p.position, p.end)).await.unwrap();
/// assert_eq!((report.to_version, report.retired.clone()), (2, vec![1]));
/// let view = live.read().await;
/// assert_eq!(view.version(), 2);
/// assert_eq!(view.model().get("order").map(|c| c.streams), Some(2));
/// # });
/// ```
pub struct VersionedRunner<S, V: VersionedProjection, C = StoreCheckpoints<S>> {
    name: String,
    store: S,
    versions: V,
    checkpoints: C,
    filter: Filter,
    policy: CheckpointPolicy,
    slot: Arc<RwLock<Slot<V::Model>>>,
    runner: ProjectionRunner<S, LiveApply<V::Model>, C>,
    state: ProjectionVersions,
}

impl<S, V: VersionedProjection, C> std::fmt::Debug for VersionedRunner<S, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionedRunner")
            .field("name", &self.name)
            .field("versions", &self.state)
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

/// Options of a [`VersionedRunner`]; [`open`](Self::open) makes it.
#[derive(Debug)]
pub struct VersionedRunnerBuilder<S, V, C> {
    name: String,
    store: S,
    versions: V,
    checkpoints: C,
    filter: Filter,
    policy: CheckpointPolicy,
}

impl<S: EventStore, V: VersionedProjection> VersionedRunner<S, V> {
    /// A runner for the versions `versions` of projection `name` over `store`, keeping
    /// checkpoints in `$checkpoint-<name>-v<N>` and the live version in
    /// `$projection-<name>`. `name` must not itself end in `-v<digits>`.
    pub fn builder(
        name: impl Into<String>,
        store: S,
        versions: V,
    ) -> VersionedRunnerBuilder<S, V, StoreCheckpoints<S>> {
        VersionedRunnerBuilder {
            name: name.into(),
            checkpoints: StoreCheckpoints::new(store.clone()),
            store,
            versions,
            filter: Filter::all(),
            policy: CheckpointPolicy::default(),
        }
    }
}

impl<S: EventStore, V: VersionedProjection, C: CheckpointStore + Clone>
    VersionedRunnerBuilder<S, V, C>
{
    /// Keeps the versions' checkpoints in `checkpoints` instead.
    pub fn checkpoints<C2: CheckpointStore + Clone>(
        self,
        checkpoints: C2,
    ) -> VersionedRunnerBuilder<S, V, C2> {
        VersionedRunnerBuilder {
            name: self.name,
            store: self.store,
            versions: self.versions,
            checkpoints,
            filter: self.filter,
            policy: self.policy,
        }
    }

    /// Only events that pass `filter` (system streams are always skipped).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// When each version saves its checkpoint (a rebuild also saves it before the swap).
    pub fn checkpoint_policy(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Reads which version is live and opens it; readers can use
    /// [`VersionedRunner::live`] at once (the model as its storage holds it).
    pub async fn open(self) -> Result<VersionedRunner<S, V, C>, ProjectionError> {
        versions::check_name(&self.name)?;
        let state = versions::load_versions(&self.store, &self.name).await?;
        let model = open_version(&self.versions, &self.name, state.live).await?;
        if let Some(building) = state.building {
            tracing::info!(
                projection = %self.name,
                live = state.live,
                building,
                "a rebuild was interrupted; the next rebuild resumes it"
            );
        }
        let slot = Arc::new(RwLock::new(Slot {
            version: state.live,
            model,
        }));
        let runner = version_runner(
            &self.name,
            state.live,
            &self.store,
            LiveApply(Arc::clone(&slot)),
            &self.checkpoints,
            &self.filter,
            self.policy,
        );
        Ok(VersionedRunner {
            name: self.name,
            store: self.store,
            versions: self.versions,
            checkpoints: self.checkpoints,
            filter: self.filter,
            policy: self.policy,
            slot,
            runner,
            state,
        })
    }
}

async fn open_version<V: VersionedProjection>(
    versions: &V,
    name: &str,
    version: u32,
) -> Result<V::Model, ProjectionError> {
    versions
        .open(version)
        .await
        .map_err(|source| ProjectionError::Version {
            projection: name.to_owned(),
            version,
            source,
        })
}

/// The runner of one version: checkpoint `<name>-v<version>`.
fn version_runner<S: EventStore, P: Projection, C: CheckpointStore + Clone>(
    name: &str,
    version: u32,
    store: &S,
    projection: P,
    checkpoints: &C,
    filter: &Filter,
    policy: CheckpointPolicy,
) -> ProjectionRunner<S, P, C> {
    ProjectionRunner::new(format!("{name}-v{version}"), store.clone(), projection)
        .checkpoints(checkpoints.clone())
        .filter(filter.clone())
        .checkpoint_policy(policy)
}

impl<S: EventStore, V: VersionedProjection, C: CheckpointStore + Clone> VersionedRunner<S, V, C> {
    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The handle readers query; it follows every swap.
    pub fn live(&self) -> LiveReadModel<V::Model> {
        LiveReadModel {
            slot: Arc::clone(&self.slot),
        }
    }

    /// What `$projection-<name>` said when this runner last read or wrote it.
    pub fn versions(&self) -> &ProjectionVersions {
        &self.state
    }

    /// The live version.
    pub fn live_version(&self) -> u32 {
        self.state.live
    }

    /// The next position the live version will consider (None before the first run).
    pub fn position(&self) -> Option<Position> {
        self.runner.position()
    }

    /// The live version's last saved or loaded checkpoint.
    pub fn checkpoint(&self) -> Option<Position> {
        self.runner.checkpoint()
    }

    /// Applies everything up to the store's head to the live version.
    pub async fn catch_up(&mut self) -> Result<u64, ProjectionError> {
        self.runner.catch_up().await
    }

    /// Catches the live version up, then follows the log (see [`ProjectionRunner::run`];
    /// cancel-safe in the same way).
    pub async fn run(&mut self) -> Result<(), ProjectionError> {
        self.runner.run().await
    }

    /// Saves the live version's checkpoint now if it moved.
    pub async fn save_checkpoint(&mut self) -> Result<(), ProjectionError> {
        self.runner.save_checkpoint().await
    }

    /// [`rebuild_with`](Self::rebuild_with) without progress reports.
    pub async fn rebuild(&mut self) -> Result<RebuildReport, ProjectionError> {
        self.rebuild_with(|_| {}).await
    }

    /// Rebuilds blue/green: fills the next version from position 0 (or resumes the one
    /// an interrupted rebuild began) while the live version keeps serving, then swaps it
    /// in and retires the old one. Calls `progress` after each page.
    ///
    /// While it runs, the live version is kept current a page at a time if it was
    /// running (its position known); an error there only stops keeping it current.
    /// If the rebuild fails or is cancelled before the swap, the live version is
    /// untouched and the next rebuild resumes the new one from its checkpoint.
    pub async fn rebuild_with(
        &mut self,
        progress: impl FnMut(&RebuildProgress),
    ) -> Result<RebuildReport, ProjectionError> {
        let span = tracing::info_span!("projection_rebuild", projection = %self.name);
        self.rebuild_inner(progress).instrument(span).await
    }

    async fn rebuild_inner(
        &mut self,
        mut progress: impl FnMut(&RebuildProgress),
    ) -> Result<RebuildReport, ProjectionError> {
        // Read the versions afresh: the records below expect what is there now.
        let state = versions::load_versions(&self.store, &self.name).await?;
        if state.live != self.state.live {
            return Err(ProjectionError::VersionConflict {
                projection: self.name.clone(),
                expected: self
                    .state
                    .revision
                    .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact),
            });
        }
        self.state = state;
        let from = self.state.live;
        let target = self.state.rebuild_target();
        let resumed = self.state.building == Some(target);
        versions::record(
            &self.store,
            &self.name,
            &mut self.state,
            versions::VERSION_STARTED_EVENT_TYPE,
            target,
        )
        .await?;
        tracing::info!(from, target, resumed, "projection rebuild started");

        let model = open_version(&self.versions, &self.name, target).await?;
        let mut building = version_runner(
            &self.name,
            target,
            &self.store,
            model,
            &self.checkpoints,
            &self.filter,
            self.policy,
        );
        let mut keep_live_current = self.runner.position().is_some();
        let mut end = self.end().await?;
        loop {
            while building.catch_up_page().await?.is_some() {
                if keep_live_current {
                    if let Err(e) = self.runner.catch_up_page().await {
                        tracing::warn!(error = %e, version = from,
                            "the live version stopped following the log during the rebuild");
                        keep_live_current = false;
                    }
                }
                end = end.max(self.end().await?);
                let position = building.position().unwrap_or(0);
                progress(&RebuildProgress {
                    version: target,
                    position,
                    end: end.max(position),
                    applied: building.applied(),
                });
            }
            building.save_checkpoint().await?;
            let mut slot = self.slot.write().await;
            // Under the readers' lock: the new version must be at least as far as the
            // old one, or readers would see the model go back.
            if building.position() < self.runner.position() {
                drop(slot);
                continue;
            }
            versions::record(
                &self.store,
                &self.name,
                &mut self.state,
                versions::VERSION_LIVE_EVENT_TYPE,
                target,
            )
            .await?;
            let applied = building.applied();
            let position = building.position().unwrap_or(0);
            let old = std::mem::replace(&mut slot.model, building.into_read_model());
            slot.version = target;
            drop(slot);
            drop(old);
            tracing::info!(
                from,
                target,
                position,
                "projection swapped to the new version"
            );
            self.runner = version_runner(
                &self.name,
                target,
                &self.store,
                LiveApply(Arc::clone(&self.slot)),
                &self.checkpoints,
                &self.filter,
                self.policy,
            );
            let retired = self.retire_stale().await;
            progress(&RebuildProgress {
                version: target,
                position,
                end: end.max(position),
                applied,
            });
            return Ok(RebuildReport {
                from_version: from,
                to_version: target,
                resumed,
                applied,
                position,
                retired,
            });
        }
    }

    /// Drops every version readers have left; a failure is logged and retried by the
    /// next rebuild.
    async fn retire_stale(&mut self) -> Vec<u32> {
        let mut retired = Vec::new();
        for version in self.state.stale() {
            let done = match self.versions.retire(version).await {
                Ok(()) => {
                    versions::record(
                        &self.store,
                        &self.name,
                        &mut self.state,
                        versions::VERSION_RETIRED_EVENT_TYPE,
                        version,
                    )
                    .await
                }
                Err(source) => Err(ProjectionError::Version {
                    projection: self.name.clone(),
                    version,
                    source,
                }),
            };
            match done {
                Ok(()) => retired.push(version),
                Err(e) => {
                    tracing::warn!(version, error = %e, "could not retire an old version; the next rebuild tries again");
                }
            }
        }
        retired
    }

    async fn end(&self) -> Result<Position, ProjectionError> {
        let head = self
            .store
            .head()
            .await
            .map_err(|source| ProjectionError::Store {
                projection: self.name.clone(),
                source,
            })?;
        Ok(head.map_or(0, |h| h + 1))
    }
}
