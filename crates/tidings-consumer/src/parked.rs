//! Parked events: the dead-letter stream of a consumer group.
//!
//! An event that fails its last attempt (or is parked on request) is appended to the
//! group's system stream `$parked-<group>` as a `$Parked` record:
//!
//! ```text
//! eventType  $Parked
//! data       {"stream", "revision", "position", "recordedAt", "event": the envelope}
//! metadata   parkedReason, parkedAttempts, parkedHeld (sequenced parking only),
//!            originalStream, originalPosition,
//!            originalRevision, originalEventId; correlation id copied from the original,
//!            causation id = the original's event id
//! ```
//!
//! The stream is append-only. A replay queues parked events in the group again; when a
//! replayed delivery is settled — acknowledged, skipped, or parked anew after its
//! attempts — the group appends a `$ParkedResolved` record `{"parkedRevision": n,
//! "outcome": "acked" | "skipped" | "parked-again"}` (in the same atomic append as the
//! new `$Parked` record when parked anew); deleting a parked event appends one with
//! the outcome `"deleted"`. The parked
//! *list* is every `$Parked` record without a `$ParkedResolved` naming it. A crash after
//! a replayed event was handled but before its resolution was written leaves it listed:
//! replay is at-least-once, like everything else.

use jiff::Timestamp;
use serde_json::json;

use super::error::ConsumerError;
use serde::{Deserialize, Serialize};
use tidings_core::event::{Clock, Event, Metadata, Payload};

use tidings_core::store::{EventReader, Position, ReadStream, RecordedEvent, Revision};
use tidings_core::stream::StreamId;

/// Event type of a parked record.
pub const PARKED_EVENT_TYPE: &str = "$Parked";
/// Event type of the record that asks for parked ones to be delivered again; a group
/// that starts queues the requested ones not yet resolved, so a replay survives a
/// restart.
pub const REPLAY_EVENT_TYPE: &str = "$ParkedReplayRequested";
/// Event type of the record that resolves a parked one after its replay.
pub const RESOLVED_EVENT_TYPE: &str = "$ParkedResolved";

/// An event in a group's parked list.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedEvent {
    /// The parked record's revision in the parked stream (what a replay names).
    pub parked_revision: Revision,
    /// When it was parked.
    pub parked_at: Timestamp,
    /// The last failure's message.
    pub reason: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// The original event, with its stream, revision and position.
    pub event: RecordedEvent,
    /// True when it was parked behind an earlier parked event of its stream
    /// (sequenced parking) without being delivered.
    pub held: bool,
    /// True when a replay of it was requested (and it is not resolved yet).
    pub replay_requested: bool,
}

/// The original event as a parked record keeps it. (Not `RecordedEvent` itself: its
/// flattened envelope cannot be read back through the payload's raw JSON.)
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Original {
    stream: StreamId,
    revision: Revision,
    position: Position,
    recorded_at: Timestamp,
    event: Event,
}

/// How a replayed parked event was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    Acked,
    Skipped,
    ParkedAgain,
    Deleted,
}

/// The `$Parked` record for `event`.
pub(crate) fn parked_record(
    clock: &dyn Clock,
    event: &RecordedEvent,
    reason: &str,
    attempts: u32,
    held: bool,
) -> Event {
    let mut metadata = Metadata {
        correlation_id: event.metadata.correlation_id.clone(),
        causation_id: Some(event.event_id.to_string()),
        user_id: event.metadata.user_id.clone(),
        ..Metadata::default()
    };
    for (k, v) in [
        ("parkedReason", reason.to_owned()),
        ("parkedAttempts", attempts.to_string()),
        ("originalStream", event.stream.to_string()),
        ("originalPosition", event.position.to_string()),
        ("originalRevision", event.revision.to_string()),
        ("originalEventId", event.event_id.to_string()),
    ] {
        metadata.extra.insert(k.to_owned(), v);
    }
    if held {
        metadata
            .extra
            .insert("parkedHeld".to_owned(), "true".to_owned());
    }
    let original = Original {
        stream: event.stream.clone(),
        revision: event.revision,
        position: event.position,
        recorded_at: event.recorded_at,
        event: event.event.clone(),
    };
    let data = Payload::from_serialize(&original)
        .unwrap_or_else(|e| Payload::from(json!({ "unencodable": e.to_string() })));
    system_event(clock, PARKED_EVENT_TYPE, data, metadata)
}

/// The `$ParkedResolved` record for the parked record at `revision`.
pub(crate) fn resolved_record(clock: &dyn Clock, revision: Revision, how: Resolution) -> Event {
    let outcome = match how {
        Resolution::Acked => "acked",
        Resolution::Skipped => "skipped",
        Resolution::ParkedAgain => "parked-again",
        Resolution::Deleted => "deleted",
    };
    let data = json!({ "parkedRevision": revision, "outcome": outcome });
    system_event(
        clock,
        RESOLVED_EVENT_TYPE,
        Payload::from(data),
        Metadata::default(),
    )
}

fn system_event(clock: &dyn Clock, event_type: &str, data: Payload, metadata: Metadata) -> Event {
    Event {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.to_owned(),
        event_version: "1.0".to_owned(),
        timestamp: clock.now(),
        source: "tidings-consumer".to_owned(),
        data,
        metadata,
    }
}

/// The record asking for the parked records at `revisions` to be delivered again.
pub(crate) fn replay_record(clock: &dyn Clock, revisions: &[Revision]) -> Event {
    let data = json!({ "parkedRevisions": revisions });
    system_event(
        clock,
        REPLAY_EVENT_TYPE,
        Payload::from(data),
        Metadata::default(),
    )
}

/// The parked list of `stream`: `$Parked` records not resolved, oldest first.
pub(crate) async fn read_parked<R: EventReader>(
    reader: &R,
    group: &str,
    stream: &StreamId,
) -> Result<Vec<ParkedEvent>, ConsumerError> {
    let records = reader
        .read_stream(stream, ReadStream::forward())
        .await
        .map_err(|source| ConsumerError::Parked {
            group: group.to_owned(),
            stream: stream.clone(),
            source,
        })?;
    let corrupt = |revision: Revision, reason: String| ConsumerError::CorruptParked {
        stream: stream.clone(),
        revision,
        reason,
    };
    let mut resolved = std::collections::HashSet::new();
    for r in records
        .iter()
        .filter(|r| r.event_type == RESOLVED_EVENT_TYPE)
    {
        let n = r
            .data
            .to_value()
            .get("parkedRevision")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| corrupt(r.revision, "no integer parkedRevision".to_owned()))?;
        resolved.insert(n);
    }
    let mut requested = std::collections::HashSet::new();
    for r in records.iter().filter(|r| r.event_type == REPLAY_EVENT_TYPE) {
        let revisions = r
            .data
            .to_value()
            .get("parkedRevisions")
            .and_then(|v| v.as_array().cloned())
            .ok_or_else(|| corrupt(r.revision, "no parkedRevisions array".to_owned()))?;
        requested.extend(revisions.iter().filter_map(serde_json::Value::as_u64));
    }
    let mut out = Vec::new();
    for r in records {
        if r.event_type != PARKED_EVENT_TYPE || resolved.contains(&r.revision) {
            continue;
        }
        let original: Original = r
            .data
            .deserialize()
            .map_err(|e| corrupt(r.revision, format!("original event: {e}")))?;
        let event = RecordedEvent {
            stream: original.stream,
            revision: original.revision,
            position: original.position,
            recorded_at: original.recorded_at,
            event: original.event,
        };
        let extra = &r.metadata.extra;
        out.push(ParkedEvent {
            parked_revision: r.revision,
            parked_at: r.event.timestamp,
            reason: extra.get("parkedReason").cloned().unwrap_or_default(),
            attempts: extra
                .get("parkedAttempts")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0),
            event,
            held: extra.get("parkedHeld").is_some_and(|h| h == "true"),
            replay_requested: requested.contains(&r.revision),
        });
    }
    Ok(out)
}
