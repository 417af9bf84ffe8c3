//! [`SagaError`]: everything the saga runtime can fail with.

use uuid::Uuid;

use tidings_consumer::CheckpointError;
use tidings_core::event::EventError;
use tidings_core::handler::HandlerError;
use tidings_core::store::{Revision, StoreError};
use tidings_core::stream::{StreamId, StreamIdError};

/// Why the saga runtime could not handle an event, fire a timer or recover.
///
/// Every failure leaves the store consistent: a step is either recorded whole (state,
/// timers and the commands it decided, in one append) or not at all, and commands
/// recorded but not yet carried out are carried out on the next delivery or restart.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The runtime's checkpoint could not be loaded or saved; [`CheckpointError::Conflict`]
    /// means another runtime of the same saga moved it.
    #[error("saga {saga}: {source}")]
    Checkpoint {
        /// The saga's name.
        saga: &'static str,
        /// What went wrong.
        #[source]
        source: CheckpointError,
    },
    /// The store refused or failed a read or an append.
    #[error("saga {saga}: store failure: {source}")]
    Store {
        /// The saga's name.
        saga: &'static str,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// An instance id does not make a valid stream name.
    #[error("saga {saga}: instance id {instance:?} does not make a stream name: {source}")]
    InvalidInstanceId {
        /// The saga's name.
        saga: &'static str,
        /// The refused id.
        instance: String,
        /// Why.
        #[source]
        source: StreamIdError,
    },
    /// The saga's state could not be serialized.
    #[error("saga {saga} instance {instance}: state could not be serialized: {reason}")]
    EncodeState {
        /// The saga's name.
        saga: &'static str,
        /// The instance.
        instance: String,
        /// What serde said.
        reason: String,
    },
    /// A record in a saga's stream could not be read back.
    #[error("saga record {revision} of {stream} is unreadable: {reason}")]
    CorruptRecord {
        /// The instance's stream.
        stream: StreamId,
        /// The record's revision.
        revision: Revision,
        /// What was wrong.
        reason: String,
    },
    /// An instance stream belongs to another saga whose name extends this one's
    /// (`$saga-order-x-1` is saga `order-x`, instance `1`, not saga `order`, instance
    /// `x-1`). Give sagas names that are not a prefix of one another plus `-`.
    #[error("stream {stream} belongs to saga {found}, not to saga {saga}")]
    ForeignInstance {
        /// The stream.
        stream: StreamId,
        /// The saga that looked.
        saga: &'static str,
        /// The saga that wrote it.
        found: String,
    },
    /// The saga's own code refused the event or timeout.
    #[error("saga {saga} instance {instance} failed on {input}: {source}")]
    Handler {
        /// The saga's name.
        saga: &'static str,
        /// The instance.
        instance: String,
        /// The event id or timeout id handled.
        input: String,
        /// What the saga said.
        #[source]
        source: HandlerError,
    },
    /// An event the saga asked to publish was refused by validation.
    #[error("saga {saga} instance {instance}: event {index} to publish was refused: {source}")]
    InvalidEvent {
        /// The saga's name.
        saga: &'static str,
        /// The instance.
        instance: String,
        /// Its index among the step's commands.
        index: usize,
        /// Why.
        #[source]
        source: EventError,
    },
    /// The saga sent a command no handler is registered for.
    #[error("saga {saga} sent command {command}, but no handler is registered for it")]
    NoCommandHandler {
        /// The saga's name.
        saga: &'static str,
        /// The command's name.
        command: String,
    },
    /// A command handler failed. The command stays pending and is sent again, with the
    /// same id, on the next delivery or restart.
    #[error("saga {saga} instance {instance}: command {command} ({command_id}) failed: {source}")]
    Command {
        /// The saga's name.
        saga: &'static str,
        /// The instance.
        instance: String,
        /// The command's name.
        command: String,
        /// Its idempotency id.
        command_id: Uuid,
        /// What the handler said.
        #[source]
        source: HandlerError,
    },
    /// The store's subscription ended.
    #[error("saga {saga}: the store's subscription ended")]
    SubscriptionEnded {
        /// The saga's name.
        saga: &'static str,
    },
}

impl SagaError {
    pub(crate) fn store(saga: &'static str) -> impl FnOnce(StoreError) -> Self {
        move |source| Self::Store { saga, source }
    }
}

impl From<SagaError> for HandlerError {
    fn from(e: SagaError) -> Self {
        HandlerError::from_error(e)
    }
}
