//! [`PgStoreBuilder`]: where the store lives and how it connects.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use tidings_core::Limits;

use crate::error::PgStoreError;
use crate::store::PgStore;

/// The schema a store uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "tidings";
/// Longest schema name: the notification channel `tidings:<schema>` must fit PostgreSQL's
/// 63-byte identifiers.
pub const MAX_SCHEMA_LEN: usize = 54;

/// Options for [`PgStore`]: the URL, the schema, the pool and the limits.
///
/// ```no_run
/// # async fn demo() -> Result<(), tidings_postgres::PgStoreError> {
/// use tidings_postgres::PgStore;
/// let store = PgStore::builder("postgres://postgres@127.0.0.1:5432/test")
///     .schema("orders")
///     .max_connections(16)
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgStoreBuilder {
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) max_connections: u32,
    pub(crate) acquire_timeout: Duration,
    pub(crate) limits: Limits,
    pub(crate) application_name: String,
    pub(crate) deadlines: Deadlines,
}

/// How long the append writer's connections wait before PostgreSQL cancels a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deadlines {
    /// `lock_timeout`: longest wait for one lock (a row held by another session).
    pub(crate) lock: Duration,
    /// `statement_timeout`: longest run of one statement.
    pub(crate) statement: Duration,
}

/// Default `lock_timeout` of append connections: 5 s.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `statement_timeout` of append connections: 30 s.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

impl PgStoreBuilder {
    pub(crate) fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
            limits: Limits::default(),
            application_name: "tidings".to_owned(),
            deadlines: Deadlines {
                lock: DEFAULT_LOCK_TIMEOUT,
                statement: DEFAULT_STATEMENT_TIMEOUT,
            },
        }
    }

    /// The schema holding the store's tables (default `tidings`; created if missing).
    /// Stores on different schemas of one database are independent.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Most connections the store's pool opens (default 10). The notification listener
    /// uses one more, and the append writer up to two more (its own, which carry
    /// [`PgStoreBuilder::lock_timeout`] and [`PgStoreBuilder::statement_timeout`]).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long a request waits for a free connection before failing with
    /// [`tidings_core::StoreError::Busy`] (default 30 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Size limits for events and appends (default [`Limits::default`]).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Longest an append waits for a lock — the position row, a stream row — held by
    /// another session (PostgreSQL's `lock_timeout` on the append connections; default
    /// 5 s, at least 1 ms). Past it the append writes nothing and fails with
    /// [`tidings_core::StoreError::Timeout`]; retrying it with the same event ids is safe.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.deadlines.lock = timeout.max(Duration::from_millis(1));
        self
    }

    /// Longest one append statement runs (PostgreSQL's `statement_timeout` on the append
    /// connections; default 30 s, at least 1 ms). Past it the append writes nothing and
    /// fails with [`tidings_core::StoreError::Timeout`].
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.deadlines.statement = timeout.max(Duration::from_millis(1));
        self
    }

    /// The `application_name` the connections report (default `tidings`).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Connects, creates the schema and applies pending migrations, and starts the
    /// notification listener.
    pub async fn connect(self) -> Result<PgStore, PgStoreError> {
        PgStore::open(self).await
    }

    /// Connection options for the store's schema.
    pub(crate) fn connect_options(&self, role: &str) -> Result<PgConnectOptions, PgStoreError> {
        check_schema(&self.schema)?;
        let name = format!("{}:{role}", self.application_name);
        if !(self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")) {
            return Err(PgStoreError::InvalidUrl(
                "it must start with postgres:// or postgresql://".to_owned(),
            ));
        }
        Ok(PgConnectOptions::from_str(&self.url)
            .map_err(|e| PgStoreError::InvalidUrl(e.to_string()))?
            .application_name(&name)
            .options([
                ("search_path", self.schema.as_str()),
                ("tidings.schema", self.schema.as_str()),
            ]))
    }
}

/// Schema names are plain lowercase identifiers, so they never need quoting and the
/// notification channel derived from them always fits.
pub(crate) fn check_schema(schema: &str) -> Result<(), PgStoreError> {
    let refuse = |reason| {
        Err(PgStoreError::InvalidSchema {
            schema: schema.to_owned(),
            reason,
        })
    };
    if schema.is_empty() {
        return refuse("it is empty");
    }
    if schema.len() > MAX_SCHEMA_LEN {
        return refuse("it is too long");
    }
    if schema.starts_with(|c: char| c.is_ascii_digit()) {
        return refuse("it starts with a digit");
    }
    if schema.starts_with("pg_") {
        return refuse("names starting with pg_ are reserved by PostgreSQL");
    }
    if !schema
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return refuse("it has a character other than a-z, 0-9 and _");
    }
    Ok(())
}

/// The notification channel appends to `schema` are announced on.
pub(crate) fn channel(schema: &str) -> String {
    format!("tidings:{schema}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names() {
        assert!(check_schema("tidings").is_ok());
        assert!(check_schema("tidings_test_0a9f").is_ok());
        assert!(check_schema(&"a".repeat(MAX_SCHEMA_LEN)).is_ok());
        for bad in ["", "9x", "Orders", "a-b", "a b", "pg_x", "x;drop", "ü"] {
            assert!(check_schema(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check_schema(&"a".repeat(MAX_SCHEMA_LEN + 1)).is_err());
        assert!(channel(&"a".repeat(MAX_SCHEMA_LEN)).len() <= 63);
    }

    #[test]
    fn urls_are_checked() {
        let bad = PgStoreBuilder::new("not a url").connect_options("pool");
        assert!(matches!(bad, Err(PgStoreError::InvalidUrl(_))));
        let bad_schema = PgStoreBuilder::new("postgres://localhost/x")
            .schema("A")
            .connect_options("pool");
        assert!(matches!(
            bad_schema,
            Err(PgStoreError::InvalidSchema { .. })
        ));
    }
}
