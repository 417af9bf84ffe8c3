//! How a saga instance is kept in the store.
//!
//! Each instance has its own system stream, `$saga-<name>-<instance id>`, holding two
//! kinds of record:
//!
//! ```text
//! SagaStepRecorded  { saga, instance, input, state, timers, handled, correlationId,
//!                     cause, outbox, completed }        one per handled event or timeout
//! SagaCommandsDone  { step }                            after the step's outbox ran
//! ```
//!
//! A step record is a full snapshot — the state after the step, the pending timers
//! (due times on the runtime's clock), every event id already handled — plus the
//! step's outbox: the events to publish and commands to send, with the ids they will
//! carry. It is appended with the stream's exact expected version, so two runtimes
//! cannot both record a step. Loading an instance reads the last two records backward:
//! the last step, and whether its outbox is done.
//!
//! A runtime's subscription checkpoint lives in `$checkpoint-saga-<name>`, one
//! `SagaCheckpoint { next }` per advance (the last one counts).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::command::Command;
use tidings_core::event::NewEvent;
use tidings_core::handler::Cause;
use tidings_core::store::{Position, Revision};
use tidings_core::stream::{StreamId, StreamIdError};

/// Event type of a step record.
pub const STEP_RECORDED: &str = "SagaStepRecorded";
/// Event type of the record saying a step's outbox ran.
pub const COMMANDS_DONE: &str = "SagaCommandsDone";

/// Namespace of the UUID v5 ids given to what a step publishes and sends.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_0000_7d1d_4e6b_9a1e_0000_0000_0001);

/// The stream of instance `instance` of saga `saga`.
pub fn instance_stream(saga: &str, instance: &str) -> Result<StreamId, StreamIdError> {
    StreamId::system(&format!("{}{instance}", instance_prefix(saga)))
}

/// The prefix every instance stream of saga `saga` starts with.
pub fn instance_prefix(saga: &str) -> String {
    format!("$saga-{saga}-")
}

/// The name of saga `saga`'s subscription checkpoint in a
/// [`CheckpointStore`](tidings_consumer::CheckpointStore): its records live in
/// `$checkpoint-saga-<saga>`.
pub fn checkpoint_name(saga: &str) -> String {
    format!("saga-{saga}")
}

/// The id of the `index`th outbox entry of the step recorded at `revision` of `stream`.
pub(crate) fn outbox_id(stream: &StreamId, revision: Revision, index: usize) -> Uuid {
    Uuid::new_v5(
        &ID_NAMESPACE,
        format!("{stream}/{revision}/{index}").as_bytes(),
    )
}

/// What a step handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub(crate) enum StepInput {
    /// An event.
    Event {
        event_id: Uuid,
        event_type: String,
        position: Position,
    },
    /// A timer.
    Timeout { timeout_id: String },
}

/// The cause given to what a step publishes and sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecordedCause {
    pub event_id: Uuid,
    pub correlation_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl From<Cause> for RecordedCause {
    fn from(c: Cause) -> Self {
        Self {
            event_id: c.event_id,
            correlation_id: c.correlation_id,
            user_id: c.user_id,
        }
    }
}

impl From<RecordedCause> for Cause {
    fn from(c: RecordedCause) -> Self {
        Self {
            event_id: c.event_id,
            correlation_id: c.correlation_id,
            user_id: c.user_id,
        }
    }
}

/// One side effect a step recorded, with the id it carries on every attempt.
///
/// Externally tagged (`{"publish": {..}}`): payloads are raw JSON, which serde cannot
/// buffer the way an internally tagged enum needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub(crate) enum OutboxEntry {
    /// Append `event` (its id set) to `stream`.
    Publish { stream: StreamId, event: NewEvent },
    /// Send `command` with `command_id`.
    Send { command_id: Uuid, command: Command },
}

/// A `SagaStepRecorded` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepRecord {
    pub saga: String,
    pub instance: String,
    pub input: StepInput,
    pub state: serde_json::Value,
    #[serde(default)]
    pub timers: BTreeMap<String, Timestamp>,
    #[serde(default)]
    pub handled: Vec<Uuid>,
    pub correlation_id: String,
    pub cause: RecordedCause,
    #[serde(default)]
    pub outbox: Vec<OutboxEntry>,
    #[serde(default)]
    pub completed: bool,
}

/// A `SagaCommandsDone` record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CommandsDone {
    /// The revision of the step whose outbox ran.
    pub step: Revision,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_system_streams_and_ids_are_stable() {
        let s = instance_stream("order", "order-123").unwrap();
        assert_eq!(s.as_str(), "$saga-order-order-123");
        assert_eq!(
            tidings_consumer::checkpoint_stream(&checkpoint_name("order"))
                .unwrap()
                .as_str(),
            "$checkpoint-saga-order"
        );
        assert_eq!(outbox_id(&s, 3, 1), outbox_id(&s, 3, 1));
        assert_ne!(outbox_id(&s, 3, 1), outbox_id(&s, 4, 1));
        assert!(instance_stream("order", &"x".repeat(300)).is_err());
    }

    #[test]
    fn step_record_round_trips() {
        let record = StepRecord {
            saga: "order".into(),
            instance: "order-1".into(),
            input: StepInput::Timeout {
                timeout_id: "payment".into(),
            },
            state: serde_json::json!({"a": 1}),
            timers: BTreeMap::from([("t".into(), Timestamp::UNIX_EPOCH)]),
            handled: vec![Uuid::nil()],
            correlation_id: "c".into(),
            cause: RecordedCause {
                event_id: Uuid::nil(),
                correlation_id: "c".into(),
                user_id: None,
            },
            outbox: vec![OutboxEntry::Send {
                command_id: Uuid::nil(),
                command: Command {
                    name: "X".into(),
                    payload: serde_json::json!({"k": 1}).into(),
                },
            }],
            completed: false,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""kind":"timeout""#), "{json}");
        let back: StepRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
    }
}
