//! What can go wrong opening a store, and how database failures become [`StoreError`]s.

use tidings_core::StoreError;

use crate::options::Deadlines;

tokio::task_local! {
    /// The deadlines of the connection a failing request ran on, while the append writer
    /// runs a batch: lock and statement timeouts there are [`StoreError::Timeout`]s.
    pub(crate) static DEADLINES: Deadlines;
}

/// Why [`crate::PgStore`] could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgStoreError {
    /// The connection URL was refused (the message never repeats it: it may hold a
    /// password).
    #[error("invalid PostgreSQL URL: {0}")]
    InvalidUrl(String),
    /// The schema name was refused.
    #[error(
        "schema name {schema:?} is not usable: {reason} (use 1 to {max} of a-z, 0-9 and _, not starting with a digit)",
        max = crate::options::MAX_SCHEMA_LEN
    )]
    InvalidSchema {
        /// The refused name.
        schema: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The database could not be reached.
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(#[source] sqlx::Error),
    /// A schema migration failed; the schema is left as it was before that migration.
    #[error("migration {version} ({name}) of schema {schema} failed: {source}")]
    Migrate {
        /// The schema being migrated.
        schema: String,
        /// The migration's version.
        version: i32,
        /// The migration's name.
        name: &'static str,
        /// The database's answer.
        #[source]
        source: sqlx::Error,
    },
    /// A database request failed.
    #[error("PostgreSQL request failed: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<PgStoreError> for StoreError {
    fn from(e: PgStoreError) -> Self {
        StoreError::Backend(e.to_string())
    }
}

/// SQLSTATE codes that mean "try again later" rather than "broken".
const BUSY_CODES: &[(&str, &str)] = &[
    ("40001", "serialization failure"),
    ("40P01", "deadlock detected"),
    ("55P03", "lock not available"),
    ("53300", "too many connections"),
    ("57014", "statement cancelled or timed out"),
    ("53000", "insufficient resources"),
];

/// Maps a database failure onto the store contract's errors.
///
/// Lock and statement timeouts of appends are [`StoreError::Timeout`]; other timeouts,
/// lock conflicts and connection exhaustion are [`StoreError::Busy`] (the caller may
/// retry); a closed pool is [`StoreError::Closed`]; a lost connection and everything
/// else are [`StoreError::Backend`], saying what happened.
pub(crate) fn store_error(what: &str, e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::PoolTimedOut => StoreError::Busy(format!(
            "{what}: no database connection became free in time"
        )),
        sqlx::Error::PoolClosed => StoreError::Closed,
        sqlx::Error::Io(io) => StoreError::Backend(format!(
            "{what}: connection to PostgreSQL lost ({io}); the outcome of a write in flight is \
             unknown: re-append the same events with the same expected version to find out"
        )),
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if let Some(timeout) = timeout(what, code) {
                return timeout;
            }
            match BUSY_CODES.iter().find(|(c, _)| *c == code) {
                Some((_, why)) => StoreError::Busy(format!("{what}: {why}: {}", db.message())),
                None if code == "57P01" || code == "57P02" || code == "57P03" => {
                    StoreError::Backend(format!(
                        "{what}: PostgreSQL closed the connection ({code}: {})",
                        db.message()
                    ))
                }
                None => StoreError::Backend(format!("{what}: {code}: {}", db.message())),
            }
        }
        other => StoreError::Backend(format!("{what}: {other}")),
    }
}

/// A lock or statement timeout on the append writer's connections (which carry
/// `lock_timeout` and `statement_timeout`), as [`StoreError::Timeout`]. The transaction
/// is rolled back, so nothing was written — unless the timeout hit the commit itself.
fn timeout(what: &str, code: &str) -> Option<StoreError> {
    let deadlines = DEADLINES.try_with(|d| *d).ok()?;
    let after = match code {
        "55P03" => deadlines.lock,
        "57014" => deadlines.statement,
        _ => return None,
    };
    Some(StoreError::Timeout {
        operation: what.to_owned(),
        after,
        outcome_unknown: what.starts_with("commit"),
    })
}

/// Whether `e` is the unique index on event ids refusing an id already recorded.
pub(crate) fn is_duplicate_event_id(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.is_unique_violation()
            && db.constraint() == Some("tidings_events_event_id_unique"))
}

/// Whether `e` is the primary key of stream rows refusing a new stream's row: the stream
/// exists, or a concurrent append created it (`tidings_append_group`, migration 0008).
pub(crate) fn is_existing_stream(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.constraint() == Some("tidings_streams_pkey"))
}
