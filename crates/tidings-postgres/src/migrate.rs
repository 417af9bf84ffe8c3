//! Schema migrations: versioned `.sql` files applied once, in order, on connect.
//!
//! The migrator takes a transaction-scoped advisory lock per schema, creates the schema
//! and the `tidings_migrations` table if missing, and applies every migration not yet
//! recorded there, all in one transaction: concurrent connects wait for each other, and
//! a failed migration leaves the schema as it was.

use sqlx::{PgPool, Row};

use crate::error::PgStoreError;

/// A migration: its version, a short name and its SQL.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, oldest first. Never edit one that has shipped; add a new one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../sql/migrations/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "inbox",
        sql: include_str!("../sql/migrations/0002_inbox.sql"),
    },
    Migration {
        version: 3,
        name: "groups",
        sql: include_str!("../sql/migrations/0003_groups.sql"),
    },
    Migration {
        version: 4,
        name: "type and category indexes",
        sql: include_str!("../sql/migrations/0004_type_and_category_indexes.sql"),
    },
    Migration {
        version: 5,
        name: "claimed positions",
        sql: include_str!("../sql/migrations/0005_claimed_positions.sql"),
    },
    Migration {
        version: 6,
        name: "claims per backend",
        sql: include_str!("../sql/migrations/0006_claims_per_backend.sql"),
    },
    Migration {
        version: 7,
        name: "advisory claims",
        sql: include_str!("../sql/migrations/0007_advisory_claims.sql"),
    },
    Migration {
        version: 8,
        name: "grouped appends",
        sql: include_str!("../sql/migrations/0008_grouped_appends.sql"),
    },
    Migration {
        version: 9,
        name: "single event appends",
        sql: include_str!("../sql/migrations/0009_single_event_appends.sql"),
    },
];

/// Brings the store's schema up to date.
pub(crate) async fn migrate(pool: &PgPool, schema: &str) -> Result<(), PgStoreError> {
    let db = PgStoreError::Database;
    let mut tx = pool.begin().await.map_err(PgStoreError::Connect)?;
    sqlx::query(include_str!("../sql/migration_lock.sql"))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    sqlx::raw_sql(include_str!("../sql/create_schema.sql"))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let applied: Vec<i32> = sqlx::query(include_str!("../sql/applied_migrations.sql"))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(db)?;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        let failed = |source| PgStoreError::Migrate {
            schema: schema.to_owned(),
            version: m.version,
            name: m.name,
            source,
        };
        sqlx::raw_sql(m.sql)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(include_str!("../sql/record_migration.sql"))
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        tracing::info!(
            schema,
            version = m.version,
            name = m.name,
            "applied migration"
        );
    }
    tx.commit().await.map_err(db)
}

/// Drops the store's schema and everything in it.
pub(crate) async fn drop_schema(pool: &PgPool) -> Result<(), PgStoreError> {
    sqlx::raw_sql(include_str!("../sql/drop_schema.sql"))
        .execute(pool)
        .await
        .map(drop)
        .map_err(PgStoreError::Database)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version,
                i as i32 + 1,
                "migration {} is out of order",
                m.name
            );
        }
    }
}
