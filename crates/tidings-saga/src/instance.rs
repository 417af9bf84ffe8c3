//! [`SagaInstance`]: one saga instance as loaded from its stream.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::SagaError;
use super::record::{COMMANDS_DONE, CommandsDone, STEP_RECORDED, StepRecord};
use tidings_core::store::{EventReader, ReadStream, RecordedEvent, Revision};
use tidings_core::stream::StreamId;

/// One instance of a saga: its state, pending timers and whether it is done, as of its
/// last recorded step.
#[derive(Debug, Clone)]
pub struct SagaInstance<T> {
    pub(crate) id: String,
    pub(crate) stream: StreamId,
    pub(crate) state: T,
    pub(crate) version: Revision,
    pub(crate) step: StepRecord,
    /// The event id of the last step record (the cause of what its timers lead to).
    pub(crate) step_event_id: Uuid,
    pub(crate) handled: HashSet<Uuid>,
    /// True while the last step's outbox has not been carried out.
    pub(crate) pending: bool,
}

impl<T> SagaInstance<T> {
    /// The instance's id (what [`Saga::correlate`](super::Saga::correlate) returned).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The stream it is kept in.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The state after the last step.
    pub fn state(&self) -> &T {
        &self.state
    }

    /// Pending timers: id and due time on the runtime's clock.
    pub fn timers(&self) -> &BTreeMap<String, Timestamp> {
        &self.step.timers
    }

    /// True once the saga said [`Complete`](super::SagaCommand::Complete).
    pub fn is_completed(&self) -> bool {
        self.step.completed
    }

    /// True when the last step's commands have not all been carried out yet.
    pub fn has_pending_commands(&self) -> bool {
        self.pending
    }

    /// Whether the event `event_id` was already handled by this instance.
    pub fn has_handled(&self, event_id: &Uuid) -> bool {
        self.handled.contains(event_id)
    }

    /// The stream's version (revision of its last record).
    pub fn version(&self) -> Revision {
        self.version
    }
}

fn corrupt(stream: &StreamId, e: &RecordedEvent, reason: impl Into<String>) -> SagaError {
    SagaError::CorruptRecord {
        stream: stream.clone(),
        revision: e.revision,
        reason: reason.into(),
    }
}

fn decode_step(stream: &StreamId, e: &RecordedEvent) -> Result<StepRecord, SagaError> {
    if e.event_type != STEP_RECORDED {
        return Err(corrupt(
            stream,
            e,
            format!("expected {STEP_RECORDED}, found {}", e.event_type),
        ));
    }
    e.data
        .deserialize()
        .map_err(|err| corrupt(stream, e, err.to_string()))
}

/// Loads the instance kept in `stream`, or None when the stream has no records.
pub(crate) async fn load<T: DeserializeOwned, R: EventReader>(
    saga: &'static str,
    reader: &R,
    stream: &StreamId,
) -> Result<Option<SagaInstance<T>>, SagaError> {
    let last_two = reader
        .read_stream(stream, ReadStream::backward().limit(2))
        .await
        .map_err(SagaError::store(saga))?;
    let Some(last) = last_two.first() else {
        return Ok(None);
    };
    let version = last.revision;
    let (step_event, pending) = if last.event_type == COMMANDS_DONE {
        let done: CommandsDone = last
            .data
            .deserialize()
            .map_err(|err| corrupt(stream, last, err.to_string()))?;
        let step = last_two
            .get(1)
            .filter(|s| s.revision == done.step)
            .ok_or_else(|| {
                corrupt(
                    stream,
                    last,
                    format!("names step {} which is not the record before it", done.step),
                )
            })?;
        (step, false)
    } else {
        (last, true)
    };
    let step = decode_step(stream, step_event)?;
    if step.saga != saga {
        return Err(SagaError::ForeignInstance {
            stream: stream.clone(),
            saga,
            found: step.saga,
        });
    }
    let state = serde_json::from_value(step.state.clone())
        .map_err(|err| corrupt(stream, step_event, format!("state: {err}")))?;
    Ok(Some(SagaInstance {
        id: step.instance.clone(),
        stream: stream.clone(),
        state,
        version,
        pending: pending && !step.outbox.is_empty(),
        handled: step.handled.iter().copied().collect(),
        step_event_id: step_event.event_id,
        step,
    }))
}
