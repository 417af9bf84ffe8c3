//! The append transaction, for one append or a batch of concurrent ones (group commit).
//!
//! Positions are claimed inside the append's own transaction, as advisory locks
//! (migration 0007, `docs/decisions/0022-postgres-advisory-claims.md`): other sessions see
//! a claim at once, and it ends with the transaction. Readers stop below the visibility
//! horizon, the lowest position still claimed. Each append commits once, with one flush;
//! PostgreSQL flushes the commits of every session together. The writer announces
//! commits afterwards, on another connection (`notifier.rs`).
//!
//! A lone append runs as one statement (`append_one.sql`, the function
//! `tidings_append_one`; for one event, `append_event.sql` and `tidings_append_event`,
//! migration 0009): check, lock or create the stream row, claim, write. It declines
//! what needs more (a failed version check, a repeat, a stream created meanwhile); the
//! transaction below decides those. A batch of concurrent appends runs as one statement
//! too (`append_group.sql`, the function `tidings_append_group`, migration 0008): the
//! stream rows locked in name order, each append decided in order, one claim, every
//! event inserted. It hands back, writing nothing, a batch with an id recorded already
//! (a repeat is answered with its first result, which takes a lookup of where the ids
//! lie) or a new stream created meanwhile; the transaction below decides those.
//!
//! ```text
//! BEGIN
//!   lock_streams.sql    lock the batch's existing stream rows in name order; versions
//!   find_event_ids.sql  only when a version check fails or an id may be recorded:
//!                       decide with tidings_core::backend::check_idempotent
//!   create_streams.sql  rows for new streams that are written to
//!   claim.sql           positions for what is written, under the stream locks
//!   insert_events.sql   insert every event, move the stream heads
//! COMMIT                one WAL flush for the whole batch; releases every lock and
//!                       the claim
//! ```
//!
//! Stream locks make each expected-version check and its write one atomic step, and
//! positions claimed under them grow with each stream's revisions. Only stream rows are
//! held until commit, locked in name order, so batches cannot deadlock. Appends in a
//! batch are decided in order, as if run one after another; a refused one writes nothing
//! and does not disturb the others. A claim that is not written (the transaction rolls
//! back) leaves its positions as a gap.
//!
//! The claim gate is a session-level lock (`tidings_claim`): a connection whose claiming
//! statement failed is closed rather than returned to the pool, so a gate it might still
//! hold goes with its backend.

use std::collections::{BTreeSet, HashMap};

use sqlx::postgres::{PgArguments, PgConnection, PgPool};
use sqlx::{Connection, Postgres, Transaction};
use tidings_core::backend::{IdLocation, check_idempotent};
use tidings_core::{
    AppendResult, Event, ExpectedVersion, Position, Revision, StoreError, StreamId,
};
use uuid::Uuid;

use crate::error::{is_duplicate_event_id, is_existing_stream, store_error};
use crate::row::{get, signed, unsigned};

/// How often an append is retried when a concurrent append recorded one of its ids or
/// created its stream between its check and its write.
const ATTEMPTS: usize = 3;

/// One append, validated, waiting for its transaction.
pub(crate) struct Append {
    pub(crate) stream: StreamId,
    pub(crate) expected: ExpectedVersion,
    pub(crate) events: Vec<Event>,
}

/// Every append's answer, in order.
pub(crate) type Answers = Vec<Result<AppendResult, StoreError>>;

/// What a batch did: every append's answer, and what its claims saw.
pub(crate) struct Outcome {
    pub(crate) answers: Answers,
    pub(crate) seen: Seen,
}

/// What the claims of a batch's transactions saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    /// The highest visibility horizon: every position below it is settled once they
    /// committed (None: not known).
    pub(crate) horizon: Option<Position>,
    /// Whether anyone listened for notifications when a claim was taken: only then are
    /// its commits announced (`tidings_claim`, migration 0008).
    pub(crate) listened: bool,
}

impl Seen {
    fn and(self, other: Seen) -> Seen {
        Seen {
            horizon: self.horizon.max(other.horizon),
            listened: self.listened || other.listened,
        }
    }

    /// From a claim's columns.
    fn read(horizon: Option<i64>, listened: Option<bool>) -> Result<Seen, StoreError> {
        let horizon = horizon
            .map(unsigned)
            .transpose()
            .map_err(|_| StoreError::Corrupt("a claim answered a negative horizon".to_owned()))?;
        Ok(Seen {
            horizon,
            listened: listened.unwrap_or(false),
        })
    }
}

/// A transaction's answers, and what its claim saw.
struct Decided {
    answers: Answers,
    seen: Seen,
}

/// Why a batch transaction was abandoned.
enum Abandoned {
    /// Something changed under it (an id recorded, a stream created): run again, checking
    /// ids first.
    Stale,
    /// The database failed; every append of the batch gets this answer.
    Failed(StoreError),
}

/// Runs `batch` in one transaction when it can; when a concurrent change makes that
/// impossible, runs each append on its own. Answers in the batch's order.
///
/// `want_horizon`: find the horizon after each claim even when that takes a scan of
/// `pg_locks` (someone watches the head); without it, the horizon is answered only when
/// no other claim was live.
pub(crate) async fn append_batch(pool: &PgPool, batch: &[Append], want_horizon: bool) -> Outcome {
    if batch.len() > 1 {
        match call_append_group(pool, batch, want_horizon).await {
            Ok(GroupCall::Done(answers, seen)) => return Outcome { answers, seen },
            Ok(GroupCall::Again) => {}
            Err(e) => {
                return Outcome {
                    answers: batch.iter().map(|_| Err(e.clone())).collect(),
                    seen: Seen::default(),
                };
            }
        }
        // An id is recorded already, or something changed under the statement: the full
        // transaction looks up where the ids lie, so repeats get their first answer.
        match attempt(pool, batch, true, want_horizon).await {
            Ok(decided) => {
                return Outcome {
                    answers: decided.answers,
                    seen: decided.seen,
                };
            }
            Err(Abandoned::Failed(e)) => {
                return Outcome {
                    answers: batch.iter().map(|_| Err(e.clone())).collect(),
                    seen: Seen::default(),
                };
            }
            Err(Abandoned::Stale) => {}
        }
    }
    let mut outcome = Outcome {
        answers: Vec::with_capacity(batch.len()),
        seen: Seen::default(),
    };
    for one in batch.chunks(1) {
        let (answer, seen) = append_one(pool, one, want_horizon).await;
        outcome.answers.push(answer);
        outcome.seen = outcome.seen.and(seen);
    }
    outcome
}

async fn append_one(
    pool: &PgPool,
    one: &[Append],
    want_horizon: bool,
) -> (Result<AppendResult, StoreError>, Seen) {
    let mut check_ids = false;
    if let [a] = one {
        match call_append_one(pool, a, want_horizon).await {
            Ok(OneCall::Done(result, seen)) => return (Ok(result), seen),
            Ok(OneCall::Declined) => {}
            Ok(OneCall::IdsKnown) => check_ids = true,
            Err(e) => return (Err(e), Seen::default()),
        }
    }
    for _ in 0..ATTEMPTS {
        match attempt(pool, one, check_ids, want_horizon).await {
            Ok(mut decided) => {
                let answer = decided.answers.pop().unwrap_or_else(|| {
                    Err(StoreError::Backend("an append got no answer".to_owned()))
                });
                return (answer, decided.seen);
            }
            Err(Abandoned::Failed(e)) => return (Err(e), Seen::default()),
            Err(Abandoned::Stale) => check_ids = true,
        }
    }
    let e = busy(one);
    (Err(e), Seen::default())
}

fn busy(one: &[Append]) -> StoreError {
    StoreError::Busy(format!(
        "append to {}: concurrent appends kept recording the same event ids or creating the \
         stream; retry",
        one.first().map_or("?", |a| a.stream.as_str())
    ))
}

/// What the one-statement append did.
enum OneCall {
    /// Written; every position below the horizon (when known) is settled.
    Done(AppendResult, Seen),
    /// Not its case (a failed version check, a stream created meanwhile): nothing written.
    Declined,
    /// An id is recorded already: nothing written by this call.
    IdsKnown,
}

/// The common case in one statement (`append_one.sql`): a lone append whose expected
/// version holds. Declines the rest.
async fn call_append_one(
    pool: &PgPool,
    a: &Append,
    want_horizon: bool,
) -> Result<OneCall, StoreError> {
    let (kind, revision) = expected_kind(a.expected);
    let write = [Decision::Write { first_revision: 0 }];
    let columns = Columns::new(std::slice::from_ref(a), &write)?;
    let what = format!("append to {}", a.stream);
    let mut conn = pool.acquire().await.map_err(|e| store_error(&what, e))?;
    // One event (the most common append) goes with its columns as scalars.
    let (sql, one_event) = match a.events.len() {
        1 => (include_str!("../sql/queries/append_event.sql"), true),
        _ => (include_str!("../sql/queries/append_one.sql"), false),
    };
    let query = sqlx::query(sql)
        .bind(a.stream.as_str())
        .bind(kind)
        .bind(revision)
        .bind(want_horizon);
    let query = if one_event {
        columns.bind_first_event(query)
    } else {
        columns.bind_events(query)
    };
    let row = query.fetch_one(&mut *conn).await;
    let row = match row {
        Ok(row) => row,
        // A recorded id is refused by the events' insert, after the claim: the
        // transaction rolled back, and the connection is sound.
        Err(e) if is_duplicate_event_id(&e) => return Ok(OneCall::IdsKnown),
        Err(e) => {
            // The statement may have failed while holding the claim gate: the connection
            // goes, and its backend with whatever it holds. The transaction rolled back.
            conn.close_on_drop();
            return Err(store_error(&what, e));
        }
    };
    let outcome: Option<String> = get(&row, "outcome")?;
    match outcome.as_deref() {
        Some("written") => {}
        Some("ids-known") => return Ok(OneCall::IdsKnown),
        _ => return Ok(OneCall::Declined),
    }
    let corrupt = |what: &str| StoreError::Corrupt(format!("stream {}: {what}", a.stream));
    let first_revision: Option<i64> = get(&row, "first_revision")?;
    let first_position: Option<i64> = get(&row, "first_position")?;
    let seen = Seen::read(get(&row, "horizon")?, get(&row, "listened")?)?;
    let (Some(first_revision), Some(first_position)) = (first_revision, first_position) else {
        return Err(corrupt("the append function answered no positions"));
    };
    let first_revision = unsigned(first_revision).map_err(|_| corrupt("negative revision"))?;
    let first_position = unsigned(first_position).map_err(|_| corrupt("negative position"))?;
    let n = a.events.len() as u64;
    Ok(OneCall::Done(
        AppendResult {
            first_revision,
            next_expected_version: first_revision + n - 1,
            first_position,
            position: first_position + n - 1,
        },
        seen,
    ))
}

/// What the one-statement batch did.
enum GroupCall {
    /// Decided and, where accepted, written; every position below the horizon (when
    /// known) is settled.
    Done(Answers, Seen),
    /// Nothing written: an id is recorded already, or a stream taken to be new exists
    /// (found by the check, or created concurrently since). Decide with the full
    /// transaction.
    Again,
}

/// A batch in one statement (`append_group.sql`, the function `tidings_append_group`):
/// decided in order and written in one transaction, or handed back when a repeat may
/// be among it.
async fn call_append_group(
    pool: &PgPool,
    batch: &[Append],
    want_horizon: bool,
) -> Result<GroupCall, StoreError> {
    let n_events: usize = batch.iter().map(|a| a.events.len()).sum();
    let mut streams = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut revisions = Vec::with_capacity(batch.len());
    let mut counts: Vec<i32> = Vec::with_capacity(batch.len());
    let mut locked: BTreeSet<&str> = BTreeSet::new();
    let mut named: BTreeSet<&str> = BTreeSet::new();
    let mut event_appends: Vec<i32> = Vec::with_capacity(n_events);
    let mut event_offsets: Vec<i32> = Vec::with_capacity(n_events);
    let too_many = |what: &str| StoreError::Backend(format!("too many {what}"));
    for (i, a) in batch.iter().enumerate() {
        let (kind, revision) = expected_kind(a.expected);
        streams.push(a.stream.as_str());
        kinds.push(kind);
        revisions.push(revision);
        counts.push(i32::try_from(a.events.len()).map_err(|_| too_many("events"))?);
        // A stream only ever expected to be new needs no lock: its absence is checked,
        // and inserting its row settles a race.
        named.insert(a.stream.as_str());
        if a.expected != ExpectedVersion::NoStream {
            locked.insert(a.stream.as_str());
        }
        let index = i32::try_from(i + 1).map_err(|_| too_many("appends in a batch"))?;
        for k in 0..a.events.len() {
            event_appends.push(index);
            event_offsets.push(i32::try_from(k).map_err(|_| too_many("events"))?);
        }
    }
    let write: Vec<Decision> = batch
        .iter()
        .map(|_| Decision::Write { first_revision: 0 })
        .collect();
    let columns = Columns::new(batch, &write)?;
    let what = format!("append a batch of {}", batch.len());
    let mut conn = pool.acquire().await.map_err(|e| store_error(&what, e))?;
    let query = sqlx::query(include_str!("../sql/queries/append_group.sql"))
        .bind(want_horizon)
        .bind(&streams)
        .bind(&kinds)
        .bind(&revisions)
        .bind(&counts)
        .bind(locked.iter().copied().collect::<Vec<_>>())
        .bind(named.difference(&locked).copied().collect::<Vec<_>>())
        .bind(&event_appends)
        .bind(&event_offsets);
    let row = columns.bind_events(query).fetch_one(&mut *conn).await;
    let row = match row {
        Ok(row) => row,
        // A repeat, or a stream that exists: raised after the claim gate was released,
        // rolled back, the connection is sound.
        Err(e) if is_duplicate_event_id(&e) || is_existing_stream(&e) => {
            return Ok(GroupCall::Again);
        }
        Err(e) => {
            // The statement may have failed while holding the claim gate: the connection
            // goes, and its backend with whatever it holds. The transaction rolled back.
            conn.close_on_drop();
            return Err(store_error(&what, e));
        }
    };
    let outcome: Option<String> = get(&row, "outcome")?;
    if outcome.as_deref() != Some("decided") {
        return Ok(GroupCall::Again);
    }
    let corrupt = |what: &str| StoreError::Corrupt(format!("a batch append: {what}"));
    let written: Vec<bool> = get(&row, "written")?;
    let first_revisions: Vec<Option<i64>> = get(&row, "first_revisions")?;
    let first_positions: Vec<Option<i64>> = get(&row, "first_positions")?;
    let seen = Seen::read(get(&row, "horizon")?, get(&row, "listened")?)?;
    if written.len() != batch.len()
        || first_revisions.len() != batch.len()
        || first_positions.len() != batch.len()
    {
        return Err(corrupt(
            "the function answered for another number of appends",
        ));
    }
    let mut answers = Vec::with_capacity(batch.len());
    for (i, a) in batch.iter().enumerate() {
        let revision = first_revisions[i]
            .map(unsigned)
            .transpose()
            .map_err(|_| corrupt("negative revision"))?;
        if !written[i] {
            answers.push(Err(StoreError::WrongExpectedVersion {
                stream: a.stream.clone(),
                expected: a.expected,
                actual: revision,
            }));
            continue;
        }
        let (Some(first_revision), Some(first_position)) = (revision, first_positions[i]) else {
            return Err(corrupt("a written append has no position"));
        };
        let first_position = unsigned(first_position).map_err(|_| corrupt("negative position"))?;
        let n = a.events.len() as u64;
        answers.push(Ok(AppendResult {
            first_revision,
            next_expected_version: first_revision + n - 1,
            first_position,
            position: first_position + n - 1,
        }));
    }
    Ok(GroupCall::Done(answers, seen))
}

/// An expected version as `tidings_append_one` and `tidings_append_group` take it.
fn expected_kind(expected: ExpectedVersion) -> (&'static str, i64) {
    match expected {
        ExpectedVersion::Any => ("any", 0),
        ExpectedVersion::NoStream => ("no-stream", 0),
        ExpectedVersion::StreamExists => ("stream-exists", 0),
        ExpectedVersion::Exact(n) => ("exact", signed(n)),
    }
}

/// What the batch decided for one append.
enum Decision {
    Write { first_revision: Revision },
    Answer(Result<AppendResult, StoreError>),
}

/// The full transaction on a connection of its own, which is closed if the database
/// failed (a claiming statement may have left the session-level claim gate held).
async fn attempt(
    pool: &PgPool,
    batch: &[Append],
    check_ids: bool,
    want_horizon: bool,
) -> Result<Decided, Abandoned> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| Abandoned::Failed(store_error("begin append", e)))?;
    let decided = attempt_on(&mut conn, batch, check_ids, want_horizon).await;
    if matches!(decided, Err(Abandoned::Failed(_))) {
        conn.close_on_drop();
    }
    decided
}

async fn attempt_on(
    conn: &mut PgConnection,
    batch: &[Append],
    check_ids: bool,
    want_horizon: bool,
) -> Result<Decided, Abandoned> {
    let failed = |what: &str| {
        let what = what.to_owned();
        move |e| Abandoned::Failed(store_error(&what, e))
    };
    let mut tx = conn.begin().await.map_err(failed("begin append"))?;

    let names: BTreeSet<&str> = batch.iter().map(|a| a.stream.as_str()).collect();
    let names: Vec<&str> = names.into_iter().collect();
    let rows = sqlx::query(include_str!("../sql/queries/lock_streams.sql"))
        .bind(&names)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed("lock streams"))?;
    let mut versions: HashMap<String, Option<Revision>> = HashMap::with_capacity(names.len());
    for row in &rows {
        let name: String = get(row, "name").map_err(Abandoned::Failed)?;
        let version: Option<i64> = get(row, "last_revision").map_err(Abandoned::Failed)?;
        let version = version.map(unsigned).transpose().map_err(|_| {
            Abandoned::Failed(StoreError::Corrupt(format!(
                "stream {name} has a negative version"
            )))
        })?;
        versions.insert(name, version);
    }
    let existing: BTreeSet<String> = versions.keys().cloned().collect();

    // Ids are looked up only when some append may be a repeat: its version check fails
    // (a repeat usually names the version it was first written at), or the unique index
    // already refused one of its ids (check_ids).
    let mut simulated = versions.clone();
    let may_repeat = check_ids
        || batch.iter().any(|a| {
            let v = simulated.get(a.stream.as_str()).copied().flatten();
            let accepted = a.expected.accepts(v);
            if accepted {
                simulated.insert(a.stream.as_str().to_owned(), Some(next_version(v, a)));
            }
            !accepted
        });
    let known = if may_repeat {
        let ids: Vec<Uuid> = batch
            .iter()
            .flat_map(|a| a.events.iter().map(|e| e.event_id))
            .collect();
        recorded_ids(&mut tx, &ids)
            .await
            .map_err(Abandoned::Failed)?
    } else {
        HashMap::new()
    };

    let mut decisions = Vec::with_capacity(batch.len());
    let mut written: BTreeSet<&str> = BTreeSet::new();
    for a in batch {
        let current = versions.get(a.stream.as_str()).copied().flatten();
        let decision = if check_ids || !a.expected.accepts(current) {
            match check_idempotent(&a.stream, a.expected, current, &a.events, |id| {
                known.get(id).cloned()
            }) {
                Ok(Some(replayed)) => Decision::Answer(Ok(replayed)),
                Ok(None) if a.expected.accepts(current) => Decision::Write {
                    first_revision: current.map_or(0, |c| c + 1),
                },
                Ok(None) => Decision::Answer(Err(StoreError::WrongExpectedVersion {
                    stream: a.stream.clone(),
                    expected: a.expected,
                    actual: current,
                })),
                Err(e) => Decision::Answer(Err(e)),
            }
        } else {
            Decision::Write {
                first_revision: current.map_or(0, |c| c + 1),
            }
        };
        if matches!(decision, Decision::Write { .. }) {
            versions.insert(a.stream.as_str().to_owned(), Some(next_version(current, a)));
            written.insert(a.stream.as_str());
        }
        decisions.push(decision);
    }

    if written.is_empty() {
        rollback(tx).await;
        return Ok(Decided {
            answers: answers_without_writes(decisions),
            seen: Seen::default(),
        });
    }

    let new_streams: Vec<&str> = written
        .iter()
        .copied()
        .filter(|n| !existing.contains(*n))
        .collect();
    if !new_streams.is_empty() {
        let created: Vec<String> =
            sqlx::query_scalar(include_str!("../sql/queries/create_streams.sql"))
                .bind(&new_streams)
                .fetch_all(&mut *tx)
                .await
                .map_err(failed("create streams"))?;
        if created.len() != new_streams.len() {
            rollback(tx).await;
            return Err(Abandoned::Stale);
        }
    }

    let columns = Columns::new(batch, &decisions).map_err(Abandoned::Failed)?;
    let (first_position, seen) = claim(&mut tx, columns.event_ids.len(), want_horizon).await?;
    let query = sqlx::query(include_str!("../sql/queries/insert_events.sql"))
        .bind(&columns.streams)
        .bind(&columns.revisions);
    let inserted = columns
        .bind_events(query)
        .bind(first_position)
        .execute(&mut *tx)
        .await;
    // A claim that is not written ends with the transaction: its positions are a gap.
    match inserted {
        Ok(_) => {}
        Err(e) if is_duplicate_event_id(&e) => {
            rollback(tx).await;
            return Err(Abandoned::Stale);
        }
        Err(e) => {
            rollback(tx).await;
            return Err(Abandoned::Failed(store_error("append", e)));
        }
    }
    if let Err(e) = tx.commit().await {
        return Err(Abandoned::Failed(store_error(
            "commit append (its outcome is unknown)",
            e,
        )));
    }

    let corrupt = |what: &str| Abandoned::Failed(StoreError::Corrupt(what.to_owned()));
    let mut position =
        unsigned(first_position).map_err(|_| corrupt("the position counter is negative"))?;
    let answers = batch
        .iter()
        .zip(decisions)
        .map(|(a, decision)| match decision {
            Decision::Answer(answer) => answer,
            Decision::Write { first_revision } => {
                let n = a.events.len() as u64;
                let first_position = position;
                position += n;
                Ok(AppendResult {
                    first_revision,
                    next_expected_version: first_revision + n - 1,
                    first_position,
                    position: first_position + n - 1,
                })
            }
        })
        .collect();
    Ok(Decided { answers, seen })
}

/// Claims `n` positions for the transaction `tx` (`claim.sql`). Answers the first, and
/// what the claim saw.
async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    n: usize,
    want_horizon: bool,
) -> Result<(i64, Seen), Abandoned> {
    let row = sqlx::query(include_str!("../sql/queries/claim.sql"))
        .bind(signed(n as u64))
        .bind(want_horizon)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| Abandoned::Failed(store_error("claim positions", e)))?;
    let first: Option<i64> = get(&row, "first_position").map_err(Abandoned::Failed)?;
    let horizon: Option<i64> = get(&row, "horizon").map_err(Abandoned::Failed)?;
    let listened: Option<bool> = get(&row, "listened").map_err(Abandoned::Failed)?;
    let seen = Seen::read(horizon, listened).map_err(Abandoned::Failed)?;
    let first = first.ok_or_else(|| {
        Abandoned::Failed(StoreError::Corrupt(
            "a claim answered no position".to_owned(),
        ))
    })?;
    Ok((first, seen))
}

/// The stream's version after `a` is written on top of `current`.
fn next_version(current: Option<Revision>, a: &Append) -> Revision {
    current.map_or(0, |c| c + 1) + a.events.len() as u64 - 1
}

fn answers_without_writes(decisions: Vec<Decision>) -> Answers {
    decisions
        .into_iter()
        .map(|d| match d {
            Decision::Answer(answer) => answer,
            Decision::Write { .. } => Err(StoreError::Backend(
                "an append decided to write was not written".to_owned(),
            )),
        })
        .collect()
}

/// Where the given ids are recorded already, if anywhere.
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
/// when the connection is next used; saying so now releases the stream locks at once.
async fn rollback(tx: Transaction<'_, Postgres>) {
    if let Err(e) = tx.rollback().await {
        tracing::warn!(error = %e, "rollback of an append failed; the connection is dropped");
    }
}

/// A statement with some of its arguments bound.
type PgQuery<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// The written events as one array per column, for `unnest` in `insert_events.sql`.
struct Columns<'a> {
    streams: Vec<&'a str>,
    revisions: Vec<i64>,
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
    /// Binds the event columns, in the order every append statement takes them: ids,
    /// types, versions, times, sources, payloads, correlation, causation and user ids,
    /// extra metadata.
    fn bind_events<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.event_ids)
            .bind(&self.event_types)
            .bind(&self.event_versions)
            .bind(&self.occurred_at)
            .bind(&self.sources)
            .bind(&self.data)
            .bind(&self.correlation_ids)
            .bind(&self.causation_ids)
            .bind(&self.user_ids)
            .bind(&self.extra)
    }

    /// Binds the first event's columns as scalars, in the same order as
    /// [`Self::bind_events`] (`append_event.sql`).
    fn bind_first_event<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(self.event_ids.first())
            .bind(self.event_types.first())
            .bind(self.event_versions.first())
            .bind(self.occurred_at.first())
            .bind(self.sources.first())
            .bind(self.data.first())
            .bind(self.correlation_ids.first().copied().flatten())
            .bind(self.causation_ids.first().copied().flatten())
            .bind(self.user_ids.first().copied().flatten())
            .bind(self.extra.first().cloned().flatten())
    }

    fn new(batch: &'a [Append], decisions: &[Decision]) -> Result<Self, StoreError> {
        let n: usize = batch.iter().map(|a| a.events.len()).sum();
        let mut c = Columns {
            streams: Vec::with_capacity(n),
            revisions: Vec::with_capacity(n),
            event_ids: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            event_versions: Vec::with_capacity(n),
            occurred_at: Vec::with_capacity(n),
            sources: Vec::with_capacity(n),
            data: Vec::with_capacity(n),
            correlation_ids: Vec::with_capacity(n),
            causation_ids: Vec::with_capacity(n),
            user_ids: Vec::with_capacity(n),
            extra: Vec::with_capacity(n),
        };
        for (a, decision) in batch.iter().zip(decisions) {
            let Decision::Write { first_revision } = decision else {
                continue;
            };
            for (i, e) in a.events.iter().enumerate() {
                let m = &e.metadata;
                c.streams.push(a.stream.as_str());
                c.revisions.push(signed(first_revision + i as u64));
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
                        StoreError::Backend(format!("event {i}: metadata: {err}"))
                    })?)
                });
            }
        }
        Ok(c)
    }
}
