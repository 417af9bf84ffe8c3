//! Checks every backend runs before it writes: input validation and idempotent re-appends.

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
    let repeated_at = first_repeat(events);
    let mut total = 0usize;
    for (index, event) in events.iter().enumerate() {
        event
            .validate(limits)
            .map_err(|source| StoreError::InvalidEvent { index, source })?;
        if repeated_at == Some(index) {
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

/// The first index whose event repeats the id of an earlier event of the same append,
/// if any: found by sorting the ids with their indexes, with no hashing (a caller
/// chooses the ids, so no hash function can be trusted with them).
fn first_repeat(events: &[Event]) -> Option<usize> {
    if events.len() < 2 {
        return None;
    }
    let mut ids: Vec<(u128, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id.as_u128(), i))
        .collect();
    ids.sort_unstable();
    // Within a run of equal ids the indexes ascend: the run's second is where the
    // repeat is first seen.
    ids.windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1].1)
        .min()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Payload;

    fn event(id: u128) -> Event {
        Event {
            event_id: Uuid::from_u128(id),
            event_type: "OrderCreated".into(),
            event_version: "1.0".into(),
            timestamp: jiff::Timestamp::UNIX_EPOCH,
            source: "test".into(),
            data: Payload::parse("{}").unwrap(),
            metadata: Default::default(),
        }
    }

    fn invalid(id: u128) -> Event {
        let mut e = event(id);
        e.event_type = String::new();
        e
    }

    fn outcome(events: &[Event]) -> String {
        let stream = StreamId::new("order-1").unwrap();
        match validate_append(&stream, events, &Limits::default()) {
            Ok(_) => "ok".into(),
            Err(StoreError::InvalidEvent { index, .. }) => format!("invalid {index}"),
            Err(StoreError::DuplicateEventId { reason, .. }) => reason,
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_repeated_id_is_reported_where_it_is_first_seen_again() {
        assert_eq!(outcome(&[event(1), event(2), event(3)]), "ok");
        assert_eq!(
            outcome(&[event(5), event(1), event(9), event(1), event(5)]),
            "the id appears twice in one append (again at index 3)"
        );
        assert_eq!(
            outcome(&[event(7), event(7), event(7)]),
            "the id appears twice in one append (again at index 1)"
        );
    }

    #[test]
    fn the_first_problem_in_order_is_the_one_reported() {
        // An invalid event before the repeat is reported, and a repeat before an
        // invalid event.
        assert_eq!(outcome(&[event(1), invalid(2), event(1)]), "invalid 1");
        assert_eq!(
            outcome(&[event(1), event(1), invalid(2)]),
            "the id appears twice in one append (again at index 1)"
        );
    }
}
