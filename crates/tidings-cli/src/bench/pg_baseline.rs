//! `pg-insert-baseline`: what PostgreSQL itself does with the same clients, next to the
//! store's appends. Each writer inserts one row per statement (autocommit) into a plain
//! table with a unique (stream, revision) and a unique event id, holding the same JSON
//! payload an event carries: no position counter, no stream row, no notification. The
//! gap to `append-concurrent` (same `--writers`, same run) is what the store's
//! bookkeeping costs, today mostly the single position row every append locks until it
//! commits.

use std::time::Instant;

use anyhow::Context;
use sqlx::postgres::PgPoolOptions;
use tidings::Event;

use super::workloads::{fast_v7, micros};
use super::{Row, Target, bar};

/// `n` single-row inserts by `writers` connections into a fresh schema, dropped after.
pub(super) async fn run(
    url: &str,
    target: &Target,
    template: &Event,
    n: u64,
    writers: usize,
) -> anyhow::Result<Row> {
    let writers = writers.max(1);
    let schema = format!("tidings_bench_baseline_{}", std::process::id());
    let pool = PgPoolOptions::new()
        .max_connections(writers as u32)
        .connect(url)
        .await
        .context("connecting to PostgreSQL for the baseline")?;
    // The schema name is generated here, not input.
    let ddl = [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
        format!(
            "CREATE TABLE {schema}.events (
                 stream text COLLATE \"C\" NOT NULL,
                 revision bigint NOT NULL,
                 event_id uuid NOT NULL UNIQUE,
                 event_type text NOT NULL,
                 data text NOT NULL,
                 recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                 UNIQUE (stream, revision))"
        ),
    ];
    for statement in ddl {
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&pool)
            .await
            .context("creating the baseline table")?;
    }
    let insert = format!(
        "INSERT INTO {schema}.events (stream, revision, event_id, event_type, data) \
         VALUES ($1, 0, $2, $3, $4)"
    );
    let data = template.data.as_str().to_owned();
    let per_writer = (n / writers as u64).max(1);
    let pb = bar(per_writer * writers as u64, "pg-insert-baseline");
    let cpu_before = super::disk::cpu_seconds();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (pool, insert, data, pb) = (pool.clone(), insert.clone(), data.clone(), pb.clone());
        let event_type = template.event_type.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_writer as usize);
            for i in 0..per_writer {
                let t = Instant::now();
                sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                    .bind(format!("order-{w}-{i:07}"))
                    .bind(fast_v7())
                    .bind(&event_type)
                    .bind(&data)
                    .execute(&pool)
                    .await?;
                lat.push(micros(t.elapsed()));
                pb.inc(1);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut lat = Vec::new();
    let mut failed = None;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => lat.extend(l),
            Ok(Err(e)) => failed = Some(e),
            Err(e) => failed = Some(e.into()),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = super::disk::cpu_seconds() - cpu_before;
    pb.finish_and_clear();
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&pool)
    .await;
    pool.close().await;
    if let Some(e) = failed {
        return Err(e.context("a baseline insert failed"));
    }
    dropped.context("dropping the baseline schema")?;
    let events = lat.len() as u64;
    Ok(Row::new(
        "pg-insert-baseline",
        target,
        events,
        writers,
        1,
        secs,
        events as f64 / secs,
        &lat,
    )
    .with(|r| {
        r.cpu_us_per_event = Some(cpu * 1e6 / events.max(1) as f64);
        r.note = Some(
            "plain single-row INSERT (autocommit) into a table with unique (stream, revision) \
             and unique event id, same clients: the ceiling for append-concurrent"
                .to_owned(),
        )
    }))
}
