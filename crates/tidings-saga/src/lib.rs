//! Sagas and process managers whose state and timers survive a restart.
//!
//! A [`Saga`] reacts to events of a business transaction (an order, say), one instance
//! per transaction: it correlates each event to an instance id, updates that instance's
//! state and answers with [`SagaCommand`]s — publish an event, send a command, schedule
//! or cancel a timeout, complete. Compensation is the saga's own decision: on a failure
//! event it answers with the commands that undo what was done (refund the payment) and
//! the event that reports it (cancel the order).
//!
//! A [`SagaRuntime`] runs a saga on a store. It is a process manager whose process
//! store is the event store itself: each instance's steps are records in the
//! system stream `$saga-<name>-<id>` ([`record`]), so a new runtime on the same store
//! resumes every in-flight instance and fires its timers, and a completed instance is
//! dropped from the live set; its stream stays, so late events for it are ignored.
//!
//! In the test kit (`tidings-testkit`), `SagaScenario` tests a saga given/when/then, without a
//! store or a runtime.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidings::bus::HandlerError;
//! use tidings::saga::{Saga, SagaCommand, SagaRuntime};
//! use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent,
//!     RecordedEvent, StreamId};
//!
//! /// Thanks every customer for their first order.
//! struct Welcome;
//!
//! impl Saga for Welcome {
//!     const NAME: &'static str = "welcome";
//!     const EVENT_TYPES: &'static [&'static str] = &["OrderCreated"];
//!     type State = ();
//!     fn correlate(&self, event: &RecordedEvent) -> Option<String> {
//!         event.data.to_value()["customerId"].as_str().map(str::to_owned)
//!     }
//!     fn starts(&self, _event: &RecordedEvent) -> bool { true }
//!     fn handle(&self, _: &mut (), event: &RecordedEvent) -> Result<Vec<SagaCommand>, HandlerError> {
//!         let mail = StreamId::new("mail").map_err(HandlerError::from)?;
//!         Ok(vec![
//!             SagaCommand::publish(mail, NewEvent::new("WelcomeMailSent", event.data.clone())),
//!             SagaCommand::Complete,
//!         ])
//!     }
//!     fn handle_timeout(&self, _: &mut (), _: &str) -> Result<Vec<SagaCommand>, HandlerError> {
//!         Ok(vec![])
//!     }
//! }
//!
//! let store = InMemoryStore::new();
//! let created = Enricher::new("order-service")
//!     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"customerId": "customer-456"})))
//!     .unwrap();
//! store.append(&StreamId::new("order-123").unwrap(), ExpectedVersion::NoStream, vec![created]).await.unwrap();
//!
//! let runtime = SagaRuntime::builder(store.clone(), Welcome).build().await.unwrap();
//! assert_eq!(runtime.catch_up().await.unwrap(), 1);
//! assert!(store.all_events().iter().any(|e| e.event_type == "WelcomeMailSent"));
//! assert!(runtime.live_instances().is_empty());
//! // Running again handles nothing twice: the checkpoint moved past the event.
//! assert_eq!(runtime.catch_up().await.unwrap(), 0);
//! # });
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod aggregate;
mod checkpoint;
mod command;
mod error;
mod instance;
pub mod record;
mod runtime;

use serde::Serialize;
use serde::de::DeserializeOwned;

use tidings_core::handler::HandlerError;
use tidings_core::store::RecordedEvent;

pub use aggregate::{AggregateCommandHandler, COMMAND_ID_KEY, DEDUPE_WINDOW};
pub use command::{
    Command, CommandEnvelope, CommandHandler, FnCommandHandler, SagaCommand, command_fn,
};
pub use error::SagaError;
pub use instance::SagaInstance;
pub use runtime::{SagaRuntime, SagaRuntimeBuilder, StepOutcome};

/// A long-running business transaction that reacts to events with commands.
///
/// `handle` and `handle_timeout` decide; they do no I/O. What they decide is recorded
/// with the new state in one append and carried out afterwards, so the decision is never
/// lost and never taken twice for the same event. They should be deterministic in the
/// state and the event.
pub trait Saga: Send + Sync + 'static {
    /// The saga's name: part of its stream names, so keep it stable and short
    /// (such as `"order-processing"`).
    const NAME: &'static str;
    /// The event types it reacts to (the runtime subscribes to these only).
    const EVENT_TYPES: &'static [&'static str];
    /// One instance's state, kept as JSON in the store.
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static;

    /// The id of the instance an event belongs to, or None when it belongs to none.
    fn correlate(&self, event: &RecordedEvent) -> Option<String>;

    /// Whether `event` may start a new instance when none exists for its id. Events for
    /// an instance that does not exist and cannot be started are ignored.
    fn starts(&self, event: &RecordedEvent) -> bool;

    /// Handles one event: updates `state` and says what to do. An error records nothing;
    /// the event is delivered again.
    fn handle(
        &self,
        state: &mut Self::State,
        event: &RecordedEvent,
    ) -> Result<Vec<SagaCommand>, HandlerError>;

    /// Handles the timer `timeout_id` coming due.
    fn handle_timeout(
        &self,
        state: &mut Self::State,
        timeout_id: &str,
    ) -> Result<Vec<SagaCommand>, HandlerError>;
}
