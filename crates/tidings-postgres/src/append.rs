//! The append transaction.
//!
//! ```text
//! BEGIN
//!   lock_stream.sql     upsert + lock the stream's row, read its version
//!   find_event_ids.sql  only when the version check fails or an id is already recorded:
//!                       decide with tidings::store::check_idempotent
//!   insert_events.sql   claim positions (locks the counter row), insert, move the
//!                       stream head, pg_notify
//! COMMIT                releases both locks
//! ```
//!
//! The stream lock makes the expected-version check and the write one atomic step per
//! stream; the counter lock makes position order commit order across streams. Locks are
//! always taken in that order (stream, then counter), so appends cannot deadlock.

use std::collections::HashMap;

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};
use tidings::store::{IdLocation, check_idempotent};
use tidings::{AppendResult, Event, ExpectedVersion, Revision, StoreError, StreamId};
use uuid::Uuid;

use crate::error::{is_duplicate_event_id, store_error};
use crate::row::{get, signed, unsigned};

/// How often an append is retried when a concurrent append recorded one of its ids
/// between its check and its write.
const ATTEMPTS: usize = 3;

/// What one attempt found.
enum Attempt {
    Done(AppendResult),
    /// The unique index refused an id: run again, this time checking ids first.
    IdsKnown,
}

/// Appends `events` (already validated) to `stream` if it is at `expected`.
pub(crate) async fn append(
    pool: &PgPool,
    channel: &str,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[Event],
) -> Result<AppendResult, StoreError> {
    let columns = Columns::new(events)?;
    let mut check_ids = false;
    for _ in 0..ATTEMPTS {
        match attempt(pool, channel, stream, expected, events, &columns, check_ids).await? {
            Attempt::Done(result) => return Ok(result),
            Attempt::IdsKnown => check_ids = true,
        }
    }
    Err(StoreError::Busy(format!(
        "append to {stream}: concurrent appends kept recording the same event ids; retry"
    )))
}

async fn attempt(
    pool: &PgPool,
    channel: &str,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: &[Event],
    columns: &Columns<'_>,
    check_ids: bool,
) -> Result<Attempt, StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| store_error("begin append", e))?;
    let current: Option<i64> = sqlx::query(include_str!("../sql/queries/lock_stream.sql"))
        .bind(stream.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| store_error("lock stream", e))
        .and_then(|row| get(&row, "last_revision"))?;
    let current = current
        .map(unsigned)
        .transpose()
        .map_err(|_| StoreError::Corrupt(format!("stream {stream} has a negative version")))?;

    if check_ids || !expected.accepts(current) {
        let known = recorded_ids(&mut tx, &columns.event_ids).await?;
        let replay = check_idempotent(stream, expected, current, events, |id| {
            known.get(id).cloned()
        });
        match replay {
            Ok(Some(result)) => {
                rollback(tx).await;
                return Ok(Attempt::Done(result));
            }
            Ok(None) if expected.accepts(current) => {}
            Ok(None) => {
                rollback(tx).await;
                return Err(StoreError::WrongExpectedVersion {
                    stream: stream.clone(),
                    expected,
                    actual: current,
                });
            }
            Err(e) => {
                rollback(tx).await;
                return Err(e);
            }
        }
    }

    let first_revision: Revision = current.map_or(0, |c| c + 1);
    let inserted = sqlx::query(include_str!("../sql/queries/insert_events.sql"))
        .bind(stream.as_str())
        .bind(signed(first_revision))
        .bind(channel)
        .bind(&columns.event_ids)
        .bind(&columns.event_types)
        .bind(&columns.event_versions)
        .bind(&columns.occurred_at)
        .bind(&columns.sources)
        .bind(&columns.data)
        .bind(&columns.correlation_ids)
        .bind(&columns.causation_ids)
        .bind(&columns.user_ids)
        .bind(&columns.extra)
        .fetch_one(&mut *tx)
        .await;
    let first_position: i64 = match inserted {
        Ok(row) => get(&row, "first_position")?,
        Err(e) if is_duplicate_event_id(&e) => {
            rollback(tx).await;
            return Ok(Attempt::IdsKnown);
        }
        Err(e) => {
            rollback(tx).await;
            return Err(store_error(&format!("append to {stream}"), e));
        }
    };
    tx.commit()
        .await
        .map_err(|e| store_error(&format!("commit append to {stream}"), e))?;

    let first_position = unsigned(first_position)
        .map_err(|_| StoreError::Corrupt("the position counter is negative".to_owned()))?;
    let n = events.len() as u64;
    Ok(Attempt::Done(AppendResult {
        first_revision,
        next_expected_version: first_revision + n - 1,
        first_position,
        position: first_position + n - 1,
    }))
}

/// Where the append's ids are recorded already, if anywhere.
async fn recorded_ids(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, IdLocation>, StoreError> {
    let rows = sqlx::query(include_str!("../sql/queries/find_event_ids.sql"))
        .bind(ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| store_error("look up event ids", e))?;
    let mut known = HashMap::with_capacity(rows.len());
    for row in rows {
        let stream: String = get(&row, "stream")?;
        let revision: i64 = get(&row, "revision")?;
        let position: i64 = get(&row, "position")?;
        let corrupt = || StoreError::Corrupt(format!("event id in stream {stream} is unreadable"));
        let location = IdLocation {
            stream: StreamId::parse_any(&stream).map_err(|_| corrupt())?,
            revision: unsigned(revision).map_err(|_| corrupt())?,
            position: unsigned(position).map_err(|_| corrupt())?,
        };
        known.insert(get(&row, "event_id")?, location);
    }
    Ok(known)
}

/// Ends a transaction that must not commit. Dropping it would roll back too, but only
/// when the connection is next used; saying so now releases the stream lock at once.
async fn rollback(tx: Transaction<'_, Postgres>) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "rollback of a refused append failed; the connection is dropped");
    }
}

/// The append's events as one array per column, for `unnest` in `insert_events.sql`.
struct Columns<'a> {
    event_ids: Vec<Uuid>,
    event_types: Vec<&'a str>,
    event_versions: Vec<&'a str>,
    occurred_at: Vec<i64>,
    sources: Vec<&'a str>,
    data: Vec<&'a str>,
    correlation_ids: Vec<Option<&'a str>>,
    causation_ids: Vec<Option<&'a str>>,
    user_ids: Vec<Option<&'a str>>,
    extra: Vec<Option<String>>,
}

impl<'a> Columns<'a> {
    fn new(events: &'a [Event]) -> Result<Self, StoreError> {
        let mut c = Columns {
            event_ids: Vec::with_capacity(events.len()),
            event_types: Vec::with_capacity(events.len()),
            event_versions: Vec::with_capacity(events.len()),
            occurred_at: Vec::with_capacity(events.len()),
            sources: Vec::with_capacity(events.len()),
            data: Vec::with_capacity(events.len()),
            correlation_ids: Vec::with_capacity(events.len()),
            causation_ids: Vec::with_capacity(events.len()),
            user_ids: Vec::with_capacity(events.len()),
            extra: Vec::with_capacity(events.len()),
        };
        for (index, e) in events.iter().enumerate() {
            refuse_nul(index, e)?;
            let m = &e.metadata;
            c.event_ids.push(e.event_id);
            c.event_types.push(&e.event_type);
            c.event_versions.push(&e.event_version);
            c.occurred_at.push(e.timestamp_micros());
            c.sources.push(&e.source);
            c.data.push(e.data.as_str());
            c.correlation_ids.push(m.correlation_id.as_deref());
            c.causation_ids.push(m.causation_id.as_deref());
            c.user_ids.push(m.user_id.as_deref());
            c.extra.push(if m.extra.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&m.extra).map_err(|err| {
                    StoreError::Backend(format!("event {index}: metadata: {err}"))
                })?)
            });
        }
        Ok(c)
    }
}

/// PostgreSQL `text` and `jsonb` cannot hold U+0000; refuse it before writing rather than
/// fail inside the transaction.
fn refuse_nul(index: usize, e: &Event) -> Result<(), StoreError> {
    let m = &e.metadata;
    let fields = [
        ("eventVersion", Some(e.event_version.as_str())),
        ("source", Some(e.source.as_str())),
        ("correlationId", m.correlation_id.as_deref()),
        ("causationId", m.causation_id.as_deref()),
        ("userId", m.user_id.as_deref()),
    ];
    let extra = m.extra.iter().flat_map(|(k, v)| {
        [
            ("metadata", Some(k.as_str())),
            ("metadata", Some(v.as_str())),
        ]
    });
    match fields
        .into_iter()
        .chain(extra)
        .find(|(_, v)| v.is_some_and(|v| v.contains('\0')))
    {
        Some((field, _)) => Err(StoreError::Backend(format!(
            "event {index} was refused: its {field} contains a NUL character, which PostgreSQL \
             text cannot hold; nothing was written"
        ))),
        None => Ok(()),
    }
}
