//! Projections: read models built from the log, with checkpoints and rebuilds.
//!
//! A [`Projection`] applies events to a read model. A [`ProjectionRunner`] feeds it
//! every matching, non-system event of a store's global log in order, starting from its
//! checkpoint, and saves the checkpoint by a [`CheckpointPolicy`]. [`rebuild`] resets
//! the read model and the checkpoint and replays from the beginning.
//!
//! The checkpoint and the read model are saved separately, so after a crash the events
//! applied since the last checkpoint are applied again: make `apply` idempotent (upserts,
//! keyed writes) or keep the read model in memory and rebuild it on start. An `apply`
//! error stops the runner at that event (it is not checkpointed past); projections have
//! no retries — a failing projection is a bug or an outage to fix, then resume.
//!
//! [`rebuild`]: ProjectionRunner::rebuild
//!
//! ## Rebuilds that readers never see
//!
//! [`ProjectionRunner::rebuild`] empties the one read model it has, so while it replays,
//! readers see an empty or half-built model. A [`VersionedProjection`] can instead open
//! a *new version* of its read model (its storage keyed by the version number) and a
//! [`VersionedRunner`] rebuilds blue/green: it fills version N+1 from position 0 while
//! version N keeps serving through a [`LiveReadModel`], and once N+1 has caught up with
//! the log's head it swaps the two under the lock readers take, records the live version
//! in the system stream `$projection-<name>`, continues live on N+1 and retires N.
//! Each version has its own checkpoint, `<name>-v<N>`. Decision 0015 explains the
//! choices.
//!
//! [`StoredVersions`] makes any in-memory [`StoredModel`] versioned, keeping each version
//! whole as JSON in `$projection-<name>-v<N>`; [`builtin`] has the two read models the
//! `tidings` binary and server know: [`EventTypes`](builtin::EventTypes) and
//! [`Categories`](builtin::Categories).

pub mod builtin;
mod runner;
mod stored;
mod versioned;
mod versions;

pub use runner::{CheckpointPolicy, ProjectionError, ProjectionRunner};
pub use stored::{READ_MODEL_EVENT_TYPE, Stored, StoredModel, StoredVersions};
pub use versioned::{
    LiveReadModel, LiveView, RebuildProgress, RebuildReport, VersionedProjection, VersionedRunner,
    VersionedRunnerBuilder,
};
pub use versions::{
    ProjectionVersions, VERSION_LIVE_EVENT_TYPE, VERSION_RETIRED_EVENT_TYPE,
    VERSION_STARTED_EVENT_TYPE, load_versions, versions_stream,
};

use std::future::Future;

use tidings_core::handler::HandlerError;
use tidings_core::store::RecordedEvent;

/// A read model that events are applied to, in log order.
///
/// ```
/// use std::collections::BTreeMap;
/// use tidings::RecordedEvent;
/// use tidings::bus::HandlerError;
/// use tidings::projection::Projection;
///
/// /// Orders per customer.
/// #[derive(Default)]
/// struct OrdersPerCustomer(BTreeMap<String, u32>);
///
/// impl Projection for OrdersPerCustomer {
///     async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
///         if event.event_type == "OrderCreated" {
///             let v = event.data.to_value();
///             let customer = v["customerId"].as_str().ok_or(HandlerError::new("no customerId"))?;
///             *self.0.entry(customer.to_owned()).or_default() += 1;
///         }
///         Ok(())
///     }
///     async fn reset(&mut self) -> Result<(), HandlerError> {
///         self.0.clear();
///         Ok(())
///     }
/// }
/// ```
pub trait Projection: Send + 'static {
    /// Applies one event to the read model.
    fn apply(
        &mut self,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Empties the read model, before a rebuild.
    fn reset(&mut self) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Persists what `apply` has only buffered. The runner calls it just before it saves
    /// its checkpoint, so a saved checkpoint is never ahead of the saved read model. The
    /// default has nothing to persist (a model that writes in `apply`, or lives in
    /// memory).
    fn flush(&mut self) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::ready(Ok(()))
    }
}
