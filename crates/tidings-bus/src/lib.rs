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
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod dispatcher;
mod in_process;
mod middleware;
mod outcome;
mod publisher;
mod run;

pub use dispatcher::Dispatcher;
pub use in_process::{AsyncStats, InProcessBus, SubscriberMode};
pub use middleware::{FilterMiddleware, Flow, LoggingMiddleware, MetadataMiddleware, Middleware};
pub use outcome::{DispatchReport, HandlerOutcome};
pub use publisher::{PublishError, Published, Publisher};
pub use tidings_core::handler::{
    BoxFuture, Cause, EventHandler, FnHandler, HandlerError, causation, current_cause, handler_fn,
    with_cause,
};

use tidings_core::store::RecordedEvent;

/// Where a [`Publisher`] sends what it appended: a [`Dispatcher`] or an [`InProcessBus`].
pub trait Dispatch: Send + Sync + 'static {
    /// Delivers one recorded event and reports what happened.
    fn dispatch(&self, event: RecordedEvent) -> BoxFuture<'_, DispatchReport>;
}
