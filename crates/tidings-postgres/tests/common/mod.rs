//! Shared by the integration tests: finding the database, and fresh isolated stores.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use tidings_postgres::PgStore;

/// Where the tests find PostgreSQL.
pub const URL_VAR: &str = "TIDINGS_POSTGRES_URL";

/// The database URL, or None after a loud SKIP message when the database is not
/// configured or not reachable. Panics instead when `TIDINGS_REQUIRE_SERVICES=1`.
pub async fn database(test: &str) -> Option<String> {
    let unavailable = |why: String| {
        tidings_testkit::services::skip_or_fail(test, &format!("{why}; set {URL_VAR} to run it"));
        None
    };
    let Ok(url) = std::env::var(URL_VAR) else {
        return unavailable(format!("{URL_VAR} is not set"));
    };
    let probe = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&url));
    match probe.await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Some(url)
        }
        Ok(Err(e)) => unavailable(format!("{url} is not reachable: {e}")),
        Err(_) => unavailable(format!("{url} did not answer within 10 s")),
    }
}

/// The same check for plain `#[test]`s, on a throwaway runtime.
pub fn database_blocking(test: &str) -> Option<String> {
    runtime().block_on(database(test))
}

/// A current-thread runtime for plain tests.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tokio runtime: {e}"))
}

/// A schema name no other test or run uses.
pub fn fresh_schema() -> String {
    format!("tidings_test_{}", uuid::Uuid::new_v4().simple())
}

/// A store in a fresh schema of its own.
pub async fn fresh_store(url: &str) -> PgStore {
    store_in(url, &fresh_schema()).await
}

/// A store on `schema` (created if missing).
pub async fn store_in(url: &str, schema: &str) -> PgStore {
    PgStore::builder(url)
        .schema(schema)
        .max_connections(8)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}, schema {schema}: {e}"))
}

/// How many position claims (advisory locks in the store's lock space) are live.
pub async fn live_claims(store: &PgStore) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks
         WHERE locktype = 'advisory' AND objsubid = 2 AND classid = tidings_lock_space()",
    )
    .fetch_one(store.pool())
    .await
    .unwrap_or_else(|e| panic!("count claims: {e}"))
}

/// Schemas a test made, to drop when it is done (on its own runtime, as stores made on
/// other runtimes cannot be used there).
#[derive(Clone, Default)]
pub struct Schemas(Arc<Mutex<Vec<String>>>);

impl Schemas {
    /// A fresh schema name, remembered.
    pub fn fresh(&self) -> String {
        let schema = fresh_schema();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(schema.clone());
        schema
    }

    /// Drops every remembered schema.
    pub async fn drop_all(&self, url: &str) {
        let schemas = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for schema in schemas {
            let store = store_in(url, &schema).await;
            store
                .drop_schema()
                .await
                .unwrap_or_else(|e| panic!("drop schema {schema}: {e}"));
        }
    }
}
