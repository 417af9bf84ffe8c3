//! Publishing and dispatch.
//!
//! - [`Publisher`] validates, enriches, appends to a store, then dispatches; events
//!   published while handling an event carry its causation and correlation
//!   ([`causation`]).
//! - [`Dispatcher`] routes events to handlers per type and for all types, behind a
//!   [`Middleware`] chain, running handlers concurrently and reporting each one's
//!   [`HandlerOutcome`].
//! - [`InProcessBus`] runs synchronous subscribers in order and spawns asynchronous
//!   ones, counting their failures.

pub mod causation;
mod dispatcher;
mod handler;
mod in_process;
mod middleware;
mod outcome;
mod publisher;
mod run;

pub use causation::{Cause, current_cause, with_cause};
pub use dispatcher::Dispatcher;
pub use handler::{BoxFuture, EventHandler, FnHandler, HandlerError, handler_fn};
pub use in_process::{AsyncStats, Delivery, InProcessBus};
pub use middleware::{FilterMiddleware, Flow, LoggingMiddleware, MetadataMiddleware, Middleware};
pub use outcome::{DispatchReport, HandlerOutcome};
pub use publisher::{PublishError, Published, Publisher};

use crate::store::RecordedEvent;

/// Where a [`Publisher`] sends what it appended: a [`Dispatcher`] or an [`InProcessBus`].
pub trait Dispatch: Send + Sync + 'static {
    /// Delivers one recorded event and reports what happened.
    fn dispatch(&self, event: RecordedEvent) -> BoxFuture<'_, DispatchReport>;
}
