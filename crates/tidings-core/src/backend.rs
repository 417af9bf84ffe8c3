//! Checks every backend runs before it writes: input validation and idempotent re-appends.

use std::collections::HashSet;

use uuid::Uuid;

use crate::event::{Event, Limits};
use crate::store::{AppendResult, ExpectedVersion, Position, Revision, StoreError};
use crate::stream::StreamId;

/// Validates an append's events and total size. Returns the total encoded size.
pub fn validate_append(
    stream: &StreamId,
    events: &[Event],
    limits: &Limits,
) -> Result<usize, StoreError> {
    if events.is_empty() {
        return Err(StoreError::EmptyAppend);
    }
    // A single event cannot repeat an id; skip the set on the most common append.
    let mut seen = HashSet::with_capacity(if events.len() > 1 { events.len() } else { 0 });
    let mut total = 0usize;
    for (index, event) in events.iter().enumerate() {
        event
            .validate(limits)
            .map_err(|source| StoreError::InvalidEvent { index, source })?;
        if events.len() > 1 && !seen.insert(event.event_id) {
            return Err(StoreError::DuplicateEventId {
                stream: stream.clone(),
                event_id: event.event_id,
                reason: format!("the id appears twice in one append (again at index {index})"),
            });
        }
        total += event.encoded_len();
    }
    if total > limits.max_append_bytes {
        return Err(StoreError::AppendTooLarge {
            size: total,
            max: limits.max_append_bytes,
        });
    }
    Ok(total)
}

/// Where an already-recorded event id lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdLocation {
    /// Its stream.
    pub stream: StreamId,
    /// Its revision.
    pub revision: Revision,
    /// Its global position.
    pub position: Position,
}

/// Decides whether an append repeats one already recorded.
///
/// `lookup` tells where an id was recorded, if anywhere. Returns `Ok(None)` when no id
/// of the append is known (a fresh append: check the expected version and write),
/// `Ok(Some(result))` when the whole append was recorded before with a compatible
/// expected version (answer the original result, write nothing), and an error when it
/// partly overlaps, lies elsewhere, or was recorded at another expected version.
pub fn check_idempotent(
    stream: &StreamId,
    expected: ExpectedVersion,
    current: Option<Revision>,
    events: &[Event],
    mut lookup: impl FnMut(&Uuid) -> Option<IdLocation>,
) -> Result<Option<AppendResult>, StoreError> {
    let found: Vec<Option<IdLocation>> = events.iter().map(|e| lookup(&e.event_id)).collect();
    decide_idempotent(stream, expected, current, events, &found)
}

/// [`check_idempotent`] with every id already looked up: `found[i]` is where
/// `events[i]`'s id was recorded, if anywhere. For a store that looks ids up in bulk.
pub fn decide_idempotent(
    stream: &StreamId,
    expected: ExpectedVersion,
    current: Option<Revision>,
    events: &[Event],
    found: &[Option<IdLocation>],
) -> Result<Option<AppendResult>, StoreError> {
    if found.iter().all(Option::is_none) {
        return Ok(None);
    }
    let conflict = |event_id: Uuid, reason: String| StoreError::DuplicateEventId {
        stream: stream.clone(),
        event_id,
        reason,
    };
    let mut first: Option<&IdLocation> = None;
    for (i, event) in events.iter().enumerate() {
        let Some(loc) = found.get(i).and_then(Option::as_ref) else {
            return Err(conflict(
                event.event_id,
                "the append mixes new events with events already recorded".to_owned(),
            ));
        };
        if &loc.stream != stream {
            return Err(conflict(
                event.event_id,
                format!("the id is already recorded in stream {}", loc.stream),
            ));
        }
        let start = *first.get_or_insert(loc);
        if loc.revision != start.revision + i as u64 || loc.position != start.position + i as u64 {
            return Err(conflict(
                event.event_id,
                "the ids were recorded, but not as this one append".to_owned(),
            ));
        }
    }
    let Some(start) = first else {
        return Ok(None);
    };
    let version_before = start.revision.checked_sub(1);
    if !expected.accepts(version_before) {
        return Err(StoreError::WrongExpectedVersion {
            stream: stream.clone(),
            expected,
            actual: current,
        });
    }
    let n = events.len() as u64;
    Ok(Some(AppendResult {
        first_revision: start.revision,
        next_expected_version: start.revision + n - 1,
        first_position: start.position,
        position: start.position + n - 1,
    }))
}
