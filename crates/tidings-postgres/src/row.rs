//! Turning `tidings_events` rows back into [`RecordedEvent`]s.

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::postgres::PgRow;
use tidings_core::event::timestamp_from_micros;
use tidings_core::{Event, Metadata, Payload, RecordedEvent, StoreError, StreamId};
use uuid::Uuid;

/// Reads one row of the event queries (their column order is fixed by the `.sql` files).
pub(crate) fn recorded_event(row: &PgRow) -> Result<RecordedEvent, StoreError> {
    let position: i64 = get(row, "position")?;
    let corrupt =
        |what: String| StoreError::Corrupt(format!("event at position {position}: {what}"));
    let stream: String = get(row, "stream")?;
    let stream = StreamId::parse_any(&stream).map_err(|e| corrupt(e.to_string()))?;
    let revision: i64 = get(row, "revision")?;
    let extra: Option<String> = get(row, "extra")?;
    let extra: BTreeMap<String, String> = match extra {
        Some(json) => serde_json::from_str(&json).map_err(|e| corrupt(format!("metadata: {e}")))?,
        None => BTreeMap::new(),
    };
    let data: String = get(row, "data")?;
    Ok(RecordedEvent {
        stream,
        revision: unsigned(revision).map_err(|_| corrupt(format!("revision {revision}")))?,
        position: unsigned(position).map_err(|_| corrupt("negative position".to_owned()))?,
        recorded_at: timestamp_from_micros(get(row, "recorded_at")?),
        event: Event {
            event_id: get::<Uuid>(row, "event_id")?,
            event_type: get(row, "event_type")?,
            event_version: get(row, "event_version")?,
            timestamp: timestamp_from_micros(get(row, "occurred_at")?),
            source: get(row, "source")?,
            // Written from a validated Payload and kept as text, byte for byte.
            data: Payload::from_trusted_json(data),
            metadata: Metadata {
                correlation_id: get(row, "correlation_id")?,
                causation_id: get(row, "causation_id")?,
                user_id: get(row, "user_id")?,
                extra,
            },
        },
    })
}

/// One column, with a corruption error naming it when it does not decode.
pub(crate) fn get<'r, T>(row: &'r PgRow, column: &str) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(column)
        .map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
}

/// A database bigint that must be a revision or position.
pub(crate) fn unsigned(n: i64) -> Result<u64, std::num::TryFromIntError> {
    u64::try_from(n)
}

/// A revision, position or limit as a database bigint (saturating: nothing is that big).
pub(crate) fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
