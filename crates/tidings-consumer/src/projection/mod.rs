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

mod runner;

pub use runner::{CheckpointPolicy, ProjectionError, ProjectionRunner};

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
}
