//! Measures PgGroups: how many messages per second `GroupWorker`s with a handler that
//! does nothing acknowledge, with 1 and 4 workers in one process, for each strategy.
//! Bounded runs on a fresh schema, dropped at the end.
//!
//! ```text
//! cargo run --release -p tidings-postgres --example pggroups -- [URL] [--events N]
//! ```
//!
//! The URL defaults to `$TIDINGS_POSTGRES_URL`; `--events` is the log's length (default
//! 20,000, over 200 streams).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tidings::bus::handler_fn;
use tidings::consumer::GroupWorker;
use tidings::{Enricher, EventAppender, ExpectedVersion, NewEvent, StreamId};
use tidings_core::group::{GroupSettings, Groups, Strategy};
use tidings_postgres::{PgGroups, PgStore};

type Error = Box<dyn std::error::Error + Send + Sync>;

const STREAMS: usize = 200;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut url = std::env::var("TIDINGS_POSTGRES_URL").ok();
    let mut events = 20_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--events" => events = args.next().ok_or("--events N")?.parse()?,
            other => url = Some(other.to_owned()),
        }
    }
    let url = url.ok_or("give a URL or set TIDINGS_POSTGRES_URL")?;
    let schema = format!("tidings_bench_groups_{}", uuid::Uuid::new_v4().simple());
    let store = PgStore::builder(&url)
        .schema(&schema)
        .max_connections(10)
        .connect()
        .await?;
    let result = run(&store, events).await;
    store.drop_schema().await?;
    result
}

async fn run(store: &PgStore, events: usize) -> Result<(), Error> {
    // Streams interleaved, one event per append, as independent writers would: a
    // group's read-ahead window then spans many streams.
    let per_stream = events / STREAMS;
    let enricher = Enricher::new("bench");
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        let enricher = enricher.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..per_stream {
                for s in (w..STREAMS).step_by(8) {
                    let e = enricher
                        .enrich(NewEvent::new("Happened", serde_json::json!({ "i": i })))?;
                    store
                        .append(
                            &StreamId::new(&format!("bench-{s}"))?,
                            ExpectedVersion::Any,
                            vec![e],
                        )
                        .await?;
                }
            }
            Ok::<(), Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let total = per_stream * STREAMS;
    println!("{total} events over {STREAMS} streams; handler does nothing; batch 64, buffer 256");
    let groups = Arc::new(store.groups());
    for strategy in [Strategy::RoundRobin, Strategy::Pinned] {
        for workers in [1, 4] {
            let rate = measure(&groups, strategy, workers).await?;
            println!(
                "{:<12} {workers} worker(s): {rate:>8.0} acked msgs/s",
                format!("{strategy:?}")
            );
        }
    }
    Ok(())
}

/// Runs `workers` workers on a new group from the beginning until every event is
/// settled; messages per second.
async fn measure(groups: &Arc<PgGroups>, strategy: Strategy, workers: usize) -> Result<f64, Error> {
    let name = format!("bench-{strategy:?}-{workers}").to_lowercase();
    groups
        .create(
            &name,
            GroupSettings {
                strategy,
                ..GroupSettings::default()
            },
        )
        .await?;
    let head = groups.describe(&name).await?.head;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..workers {
        let worker = GroupWorker::new(Arc::clone(groups), name.clone(), format!("w{w}"));
        let mut stopped = stopped.clone();
        tasks.push(tokio::spawn(async move {
            let handler = handler_fn(|_e| async { Ok(()) });
            worker
                .run(&handler, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let d = groups.describe(&name).await?;
        if d.checkpoint >= head && d.in_flight == 0 {
            break;
        }
    }
    let elapsed = started.elapsed();
    stop.send(true)?;
    let mut handled = 0;
    for t in tasks {
        handled += t.await??.handled;
    }
    groups.delete(&name).await?;
    Ok(handled as f64 / elapsed.as_secs_f64())
}
