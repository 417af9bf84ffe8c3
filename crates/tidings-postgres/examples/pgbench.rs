//! Measures PgStore: single-event appends with 1 and 8 writers (on one handle, and on 8
//! handles as 8 processes would), batches of 100 with 4 writers, and reading the whole
//! log, and how soon a subscription on another handle sees an append. Bounded runs on a fresh schema, dropped at the end.
//!
//! ```text
//! cargo run --release -p tidings-postgres --example pgbench -- [URL] [--scale N]
//! ```
//!
//! The URL defaults to `$TIDINGS_POSTGRES_URL`. `--scale` multiplies the event counts
//! (default 1: 3,000 single appends per workload, 40,000 events in batches).

use std::time::{Duration, Instant};

use futures::StreamExt;
use tidings::{
    Event, EventAppender, EventReader, EventSubscriber, ExpectedVersion, Filter, ReadAll, Start,
    StreamId,
};
use tidings_postgres::PgStore;

/// The `OrderCreated` envelope every append carries (542 bytes as compact JSON).
const FIXTURE: &str = include_str!("../../../fixtures/order-created.json");

type Error = Box<dyn std::error::Error + Send + Sync>;

fn order_created(template: &Event) -> Event {
    let mut e = template.clone();
    e.event_id = uuid::Uuid::now_v7();
    e
}

/// `writers` tasks, each appending `appends` times `batch` events to its own stream with
/// `Exact` expected versions. Returns the elapsed time.
async fn appends(
    store: &PgStore,
    label: &str,
    writers: usize,
    appends: usize,
    batch: usize,
    template: &Event,
) -> Result<Duration, Error> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let template = template.clone();
        let stream = StreamId::new(&format!("{label}-{w}"))?;
        tasks.push(tokio::spawn(async move {
            let mut expected = ExpectedVersion::NoStream;
            for _ in 0..appends {
                let events = (0..batch).map(|_| order_created(&template)).collect();
                let r = store.append(&stream, expected, events).await?;
                expected = ExpectedVersion::Exact(r.next_expected_version);
            }
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

fn row(name: &str, events: usize, appends: usize, took: Duration) {
    let secs = took.as_secs_f64();
    println!(
        "{name:<34} {events:>8} {:>10.1} {:>12.0} {:>12.0}",
        secs * 1e3,
        appends as f64 / secs,
        events as f64 / secs
    );
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mut url = std::env::var("TIDINGS_POSTGRES_URL").ok();
    let mut scale = 1usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--scale" => scale = args.next().ok_or("--scale needs a number")?.parse()?,
            other => url = Some(other.to_owned()),
        }
    }
    let url = url.ok_or("give a URL or set TIDINGS_POSTGRES_URL")?;
    let template: Event = serde_json::from_str(FIXTURE)?;
    let schema = format!(
        "tidings_bench_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let store = PgStore::builder(&url)
        .schema(&schema)
        .max_connections(16)
        .connect()
        .await?;
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN \
         ('synchronous_commit', 'fsync', 'server_version', 'wal_sync_method') ORDER BY name",
    )
    .fetch_all(store.pool())
    .await?;
    println!("PgStore on {url}, schema {schema}");
    for (name, setting) in settings {
        println!("  {name} = {setting}");
    }
    println!(
        "{:<34} {:>8} {:>10} {:>12} {:>12}",
        "workload", "events", "ms", "appends/s", "events/s"
    );

    let n = 3000 * scale;
    let took = appends(&store, "single-1w", 1, n, 1, &template).await?;
    row("append 1 event x 1 writer", n, n, took);
    let per = n / 8;
    let took = appends(&store, "single-8w", 8, per, 1, &template).await?;
    row("append 1 event x 8 writers", per * 8, per * 8, took);
    // Eight handles with their own pools and writers, as eight processes would have:
    // nothing groups their commits, so they take turns on the position counter.
    let mut handles = Vec::new();
    for _ in 0..8 {
        handles.push(
            PgStore::builder(&url)
                .schema(&schema)
                .max_connections(2)
                .connect()
                .await?,
        );
    }
    let per = n / 8;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (w, h) in handles.iter().enumerate() {
        let (h, template) = (h.clone(), template.clone());
        let label = format!("single-8h-{w}");
        tasks.push(tokio::spawn(async move {
            appends(&h, &label, 1, per, 1, &template).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    row(
        "append 1 event x 8 handles",
        per * 8,
        per * 8,
        started.elapsed(),
    );
    drop(handles);

    let per = 100 * scale;
    let took = appends(&store, "batch-4w", 4, per, 100, &template).await?;
    row("append 100 events x 4 writers", per * 400, per * 4, took);

    let head = store.head().await?.map_or(0, |h| h + 1);
    let started = Instant::now();
    let mut from = 0;
    let mut read = 0usize;
    while from < head {
        let page = store.read_all(ReadAll::new(from, 1000)).await?;
        let Some(last) = page.last() else { break };
        from = last.position + 1;
        read += page.len();
    }
    row(
        "read all (pages of 1000)",
        read,
        read / 1000,
        started.elapsed(),
    );

    // Subscription latency: from an append on one handle returning until a subscription
    // on another handle (another pool, as another process) delivers it via NOTIFY.
    let other = PgStore::builder(&url).schema(&schema).connect().await?;
    let mut sub = Box::pin(other.subscribe_all(Start::End, Filter::all()));
    let watched = StreamId::new("latency")?;
    let mut latencies = Vec::new();
    for _ in 0..200 * scale {
        let r = store
            .append(
                &watched,
                ExpectedVersion::Any,
                vec![order_created(&template)],
            )
            .await?;
        let appended = Instant::now();
        loop {
            let e = sub.next().await.ok_or("subscription ended")??;
            if e.position == r.position {
                break;
            }
        }
        latencies.push(appended.elapsed());
    }
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "subscription latency, other handle: p50 {:?}, p99 {:?}, max {:?} ({} appends)",
        pct(50),
        pct(99),
        latencies[latencies.len() - 1],
        latencies.len()
    );
    drop((sub, other));

    store.drop_schema().await?;
    Ok(())
}
