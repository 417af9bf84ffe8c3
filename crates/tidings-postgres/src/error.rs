//! What can go wrong opening a store, and how database failures become [`StoreError`]s.

use tidings_core::StoreError;

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
/// Timeouts, lock conflicts and connection exhaustion are [`StoreError::Busy`] (the caller
/// may retry); a closed pool is [`StoreError::Closed`]; a lost connection and everything
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

/// Whether `e` is the unique index on event ids refusing an id already recorded.
pub(crate) fn is_duplicate_event_id(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db)
        if db.is_unique_violation()
            && db.constraint() == Some("tidings_events_event_id_unique"))
}
