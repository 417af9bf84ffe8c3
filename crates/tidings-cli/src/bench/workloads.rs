//! The workloads: each fills a fresh store and measures one thing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::ProgressBar;
use tidings::{
    Event, EventReader, EventStore, ExpectedVersion, Filter, ReadAll, ReadStream, Start, StreamId,
};

use tidings_log::LogStore;

use super::disk::rss_mib;
use super::{Row, Target, bar};

pub(super) fn fresh(template: &Event) -> Event {
    let mut e = template.clone();
    e.event_id = fast_v7();
    e
}

/// A UUID v7 without a `getrandom` system call per id (the bench makes millions; the
/// randomness only has to make ids unique, not unpredictable).
pub(super) fn fast_v7() -> uuid::Uuid {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(uuid::Uuid::new_v4().as_u64_pair().0 | 1);
    }
    let r = STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut bytes = [0u8; 10];
    bytes[..8].copy_from_slice(&r.to_le_bytes());
    bytes[8..].copy_from_slice(&(r.rotate_left(32) as u16).to_le_bytes());
    uuid::Builder::from_unix_timestamp_millis(millis, &bytes).into_uuid()
}

pub(super) fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// `n` events by `writers` concurrent writers in appends of `batch` events, each append
/// to a fresh stream. Returns the row with append latencies.
pub(super) async fn appends<S: EventStore>(
    store: &S,
    template: &Event,
    name: &str,
    n: u64,
    writers: usize,
    batch: usize,
) -> anyhow::Result<Row> {
    let cpu_before = super::disk::cpu_seconds();
    let (secs, lat) = populate(store, template, name, n, writers, batch, true).await?;
    let cpu = super::disk::cpu_seconds() - cpu_before;
    let events = lat.len() as u64 * batch as u64;
    let row = Row::new(
        name,
        &Target::Log(PathBuf::new()),
        events,
        writers,
        batch,
        secs,
        events as f64 / secs,
        &lat,
    );
    Ok(row.with(|r| r.cpu_us_per_event = Some(cpu * 1e6 / events.max(1) as f64)))
}

/// Set by `at-scale` so that its appends name streams the store does not have yet.
static STREAM_SALT: Mutex<String> = Mutex::new(String::new());

fn set_salt(salt: &str) {
    *STREAM_SALT.lock().unwrap_or_else(|p| p.into_inner()) = salt.to_owned();
}

pub(super) async fn populate<S: EventStore>(
    store: &S,
    template: &Event,
    label: &str,
    n: u64,
    writers: usize,
    batch: usize,
    show: bool,
) -> anyhow::Result<(f64, Vec<u32>)> {
    let writers = writers.max(1);
    let batch = batch.max(1);
    let appends_per_writer = (n / (writers as u64 * batch as u64)).max(1);
    let pb = if show {
        bar(appends_per_writer * writers as u64 * batch as u64, label)
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    let salt = STREAM_SALT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for w in 0..writers {
        let salt = salt.clone();
        let store = store.clone();
        let template = template.clone();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(appends_per_writer as usize);
            for i in 0..appends_per_writer {
                let stream = StreamId::new(&format!("order-{salt}{w}-{i:07}"))?;
                let events = (0..batch).map(|_| fresh(&template)).collect();
                let t = Instant::now();
                store
                    .append(&stream, ExpectedVersion::NoStream, events)
                    .await?;
                lat.push(micros(t.elapsed()));
                pb.inc(batch as u64);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    Ok((secs, all))
}

pub(super) async fn read_all<S: EventStore>(
    store: &S,
    template: &Event,
    n: u64,
) -> anyhow::Result<Row> {
    populate(store, template, "populating", n, 4, 100, true).await?;
    const PAGE: usize = 10_000;
    let pass = |warm: bool| {
        let store = store.clone();
        async move {
            let pb = if warm {
                ProgressBar::hidden()
            } else {
                bar(n, "read-all")
            };
            let mut lat = Vec::new();
            let mut from = 0;
            let mut count = 0u64;
            let start = Instant::now();
            loop {
                let t = Instant::now();
                let page = store.read_all(ReadAll::new(from, PAGE)).await?;
                lat.push(micros(t.elapsed()));
                let Some(last) = page.last() else { break };
                from = last.position + 1;
                count += page.len() as u64;
                pb.inc(page.len() as u64);
            }
            pb.finish_and_clear();
            anyhow::Ok((start.elapsed().as_secs_f64(), count, lat))
        }
    };
    pass(true).await?;
    let (secs, count, lat) = pass(false).await?;
    Ok(Row::new(
        "read-all",
        &Target::Log(PathBuf::new()),
        count,
        1,
        PAGE,
        secs,
        count as f64 / secs,
        &lat,
    )
    .with(|r| r.note = Some(format!("pages of {PAGE}; latency per page"))))
}

/// The type `read-filtered` looks for: one event in a hundred.
const RARE_TYPE: &str = "OrderFlagged";

/// `n` events appended one per append (streams of 10) by 64 writers, one in a hundred of
/// type [`RARE_TYPE`], scattered through the log; then, warm, an unfiltered scan of the
/// whole log and a read of that type alone, both in pages of 10 000. The row's rate is
/// the filtered read's; `speedup` is the scan's time over the filtered read's.
pub(super) async fn read_filtered<S: EventStore>(
    store: &S,
    template: &Event,
    n: u64,
) -> anyhow::Result<Row> {
    const WRITERS: u64 = 64;
    let per_writer = (n / WRITERS).max(1);
    let pb = bar(per_writer * WRITERS, "populating");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let template = template.clone();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut rare = 0u64;
            for i in 0..per_writer {
                let stream = StreamId::new(&format!("order-{w}-{:06}", i / 10))?;
                let mut e = fresh(&template);
                if (i + w) % 100 == 0 {
                    e.event_type = RARE_TYPE.to_owned();
                    rare += 1;
                }
                store.append(&stream, ExpectedVersion::Any, vec![e]).await?;
                pb.inc(1);
            }
            anyhow::Ok(rare)
        }));
    }
    let mut expected = 0u64;
    for t in tasks {
        expected += t.await??;
    }
    pb.finish_and_clear();
    const PAGE: usize = 10_000;
    let pass = |filter: Filter| {
        let store = store.clone();
        async move {
            let mut lat = Vec::new();
            let mut from = 0;
            let mut count = 0u64;
            let start = Instant::now();
            loop {
                let t = Instant::now();
                let page = store
                    .read_all(ReadAll::new(from, PAGE).filter(filter.clone()))
                    .await?;
                lat.push(micros(t.elapsed()));
                let Some(last) = page.last() else { break };
                from = last.position + 1;
                count += page.len() as u64;
            }
            anyhow::Ok((start.elapsed().as_secs_f64(), count, lat))
        }
    };
    let rare = Filter::all().event_type(RARE_TYPE);
    pass(Filter::all()).await?;
    pass(rare.clone()).await?;
    let (scan_secs, scanned, _) = pass(Filter::all()).await?;
    let (secs, count, lat) = pass(rare).await?;
    if count != expected {
        bail!("the filtered read found {count} {RARE_TYPE} events, expected {expected}");
    }
    let speedup = scan_secs / secs.max(1e-9);
    Ok(Row::new(
        "read-filtered",
        &Target::Log(PathBuf::new()),
        count,
        1,
        PAGE,
        secs,
        count as f64 / secs,
        &lat,
    )
    .with(|r| {
        r.speedup = Some(speedup);
        r.scan_events_per_sec = Some(scanned as f64 / scan_secs);
        r.note = Some(format!(
            "{count} of {scanned} events in {:.1} ms; unfiltered scan {:.1} ms \
             ({:.0} events/s); speedup {speedup:.1}x",
            secs * 1e3,
            scan_secs * 1e3,
            scanned as f64 / scan_secs
        ));
    }))
}

pub(super) async fn read_stream<S: EventStore>(
    store: &S,
    template: &Event,
    n: u64,
    batch: u64,
) -> anyhow::Result<Row> {
    const LEN: u64 = 1_000;
    let streams = (n / LEN).max(1);
    // Streams are written round-robin in appends of `batch` events, so each is spread
    // over the log (batch 1: every event of a stream in its own frame).
    let pb = bar(streams * LEN, "populating");
    for round in 0..LEN / batch {
        let mut tasks = Vec::new();
        for s in 0..streams {
            let store = store.clone();
            let template = template.clone();
            tasks.push(tokio::spawn(async move {
                let stream = StreamId::new(&format!("order-rs-{s:06}"))?;
                let events = (0..batch).map(|_| fresh(&template)).collect();
                let expected = if round == 0 {
                    ExpectedVersion::NoStream
                } else {
                    ExpectedVersion::Exact(round * batch - 1)
                };
                store.append(&stream, expected, events).await?;
                anyhow::Ok(())
            }));
            if tasks.len() >= 64 {
                for t in tasks.drain(..) {
                    t.await??;
                }
            }
            pb.inc(batch);
        }
        for t in tasks {
            t.await??;
        }
    }
    pb.finish_and_clear();
    let reads = 2_000u64;
    let pb = bar(reads, "read-stream");
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut events = 0u64;
    for i in 0..reads {
        let stream = StreamId::new(&format!("order-rs-{:06}", i % streams))?;
        let t = Instant::now();
        let got = store.read_stream(&stream, ReadStream::forward()).await?;
        lat.push(micros(t.elapsed()));
        if got.len() as u64 != LEN {
            bail!("stream {stream} has {} events, expected {LEN}", got.len());
        }
        events += got.len() as u64;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    Ok(Row::new(
        "read-stream",
        &Target::Log(PathBuf::new()),
        events,
        1,
        LEN as usize,
        secs,
        events as f64 / secs,
        &lat,
    )
    .with(|r| {
        r.note = Some(format!(
            "{reads} reads of whole {LEN}-event streams, {streams} streams interleaved in the log in appends of {batch}"
        ))
    }))
}

pub(super) async fn subscribe_latency<S: EventStore>(
    store: &S,
    template: &Event,
    n: u64,
) -> anyhow::Result<Row> {
    let sent: Arc<Mutex<HashMap<uuid::Uuid, Instant>>> = Arc::default();
    let sub = store.subscribe_all(Start::End, Filter::all());
    let sent2 = sent.clone();
    let reader = tokio::spawn(async move {
        let mut sub = Box::pin(sub);
        let mut lat = Vec::with_capacity(n as usize);
        while (lat.len() as u64) < n {
            let Some(item) = sub.next().await else { break };
            let e = item?;
            let now = Instant::now();
            let t0 = sent2
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .remove(&e.event_id);
            if let Some(t0) = t0 {
                lat.push(micros(now - t0));
            }
        }
        anyhow::Ok(lat)
    });
    let pb = bar(n, "subscribe-latency");
    let start = Instant::now();
    for i in 0..n {
        let e = fresh(template);
        sent.lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .insert(e.event_id, Instant::now());
        store
            .append(
                &StreamId::new(&format!("order-sub-{i:07}"))?,
                ExpectedVersion::NoStream,
                vec![e],
            )
            .await?;
        pb.inc(1);
    }
    let lat = reader.await??;
    pb.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    Ok(Row::new(
        "subscribe-latency",
        &Target::Log(PathBuf::new()),
        lat.len() as u64,
        1,
        1,
        secs,
        lat.len() as f64 / secs,
        &lat,
    )
    .with(|r| r.note = Some("append start to delivery to a live subscriber".into())))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderData {
    total_amount: f64,
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Totals {
    orders: u64,
    amount: f64,
}

fn fold(mut t: Totals, events: &[tidings::RecordedEvent]) -> anyhow::Result<Totals> {
    for e in events {
        let d: OrderData = e.data.deserialize()?;
        t.orders += 1;
        t.amount += d.total_amount;
    }
    Ok(t)
}

pub(super) async fn aggregate_load<S: EventStore>(
    store: &S,
    template: &Event,
) -> anyhow::Result<(Row, Row)> {
    const LEN: u64 = 10_000;
    const SNAP_AT: u64 = 9_899;
    let agg = StreamId::new("customer-agg-1")?;
    let snaps = StreamId::new("snapshot-customer-agg-1")?;
    for round in 0..LEN / 100 {
        let events = (0..100).map(|_| fresh(template)).collect();
        let expected = if round == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(round * 100 - 1)
        };
        store.append(&agg, expected, events).await?;
    }
    let upto = store
        .read_stream(&agg, ReadStream::forward().limit(SNAP_AT as usize + 1))
        .await?;
    let state = fold(Totals::default(), &upto)?;
    let snap_event = tidings::Enricher::new("bench").enrich(
        tidings::NewEvent::new("Snapshot", serde_json::to_value(&state)?)
            .with_meta("revision", SNAP_AT.to_string()),
    )?;
    store
        .append(&snaps, ExpectedVersion::Any, vec![snap_event])
        .await?;
    let loads = 100u64;
    let pb = bar(loads * 2, "aggregate-load");
    let mut plain = Vec::new();
    let start = Instant::now();
    for _ in 0..loads {
        let t = Instant::now();
        let events = store.read_stream(&agg, ReadStream::forward()).await?;
        let s = fold(Totals::default(), &events)?;
        anyhow::ensure!(s.orders == LEN, "loaded {} events", s.orders);
        plain.push(micros(t.elapsed()));
        pb.inc(1);
    }
    let plain_secs = start.elapsed().as_secs_f64();
    let mut snap = Vec::new();
    let start = Instant::now();
    for _ in 0..loads {
        let t = Instant::now();
        let last = store
            .read_stream(&snaps, ReadStream::backward().limit(1))
            .await?;
        let s = last.first().context("no snapshot")?;
        let at: u64 = s
            .metadata
            .extra
            .get("revision")
            .context("snapshot revision")?
            .parse()?;
        let base: Totals = s.data.deserialize()?;
        let newer = store
            .read_stream(&agg, ReadStream::forward().from(at + 1))
            .await?;
        let total = fold(base, &newer)?;
        anyhow::ensure!(total.orders == LEN, "loaded {} events", total.orders);
        snap.push(micros(t.elapsed()));
        pb.inc(1);
    }
    let snap_secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    let t = Target::Log(PathBuf::new());
    Ok((
        Row::new(
            "aggregate-load",
            &t,
            LEN * loads,
            1,
            LEN as usize,
            plain_secs,
            (LEN * loads) as f64 / plain_secs,
            &plain,
        )
        .with(|r| {
            r.note = Some(format!(
                "{loads} loads of a {LEN}-event aggregate, payloads deserialized; latency per load"
            ))
        }),
        Row::new(
            "aggregate-load+snapshot",
            &t,
            LEN * loads,
            1,
            LEN as usize,
            snap_secs,
            (LEN * loads) as f64 / snap_secs,
            &snap,
        )
        .with(|r| {
            r.note = Some(format!(
                "snapshot at revision {SNAP_AT} + {} newer events; latency per load",
                LEN - SNAP_AT - 1
            ))
        }),
    ))
}

pub(super) async fn reopen(target: &Target, template: &Event, n: u64) -> anyhow::Result<Row> {
    let dir = target.workdir("reopen")?;
    {
        let store = super::open_log(&dir)?;
        populate(&store, template, "populating", n, 8, 100, true).await?;
        store.close().await?;
    }
    let start = Instant::now();
    let store = super::open_log(&dir)?;
    let secs = start.elapsed().as_secs_f64();
    let head = store.head().await?.map_or(0, |h| h + 1);
    let report = store.recovery_report().clone();
    Ok(Row::new(
        "reopen",
        target,
        head,
        1,
        1,
        secs,
        head as f64 / secs,
        &[micros(Duration::from_secs_f64(secs))],
    )
    .with(|r| {
        r.note = Some(format!(
            "clean close; index from {:?}, {} frames scanned, RSS after open {} MiB",
            report.index,
            report.frames_scanned,
            rss_mib()
        ));
    }))
}

pub(super) async fn memory(target: &Target, template: &Event, n: u64) -> anyhow::Result<Row> {
    let dir = target.workdir("memory")?;
    let streams = n / 10;
    let (secs, _) = {
        let store = super::open_log(&dir)?;
        let r = populate(&store, template, "populating", n, 8, 10, true).await?;
        store.close().await?;
        r
    };
    // Measured in a fresh process, so nothing the populating left behind is counted.
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bench", "--json", "--workload", "open-existing", "--store"])
        .arg(&dir)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let child: serde_json::Value = text
        .lines()
        .filter(|l| l.contains("open-existing"))
        .find_map(|l| serde_json::from_str(l).ok())
        .with_context(|| format!("no result from the reopening process: {text}"))?;
    let rss = child["rss_mib"].as_u64().unwrap_or(0);
    let open_secs = child["seconds"].as_f64().unwrap_or(0.0);
    Ok(Row::new("memory", target, n, 8, 10, secs, n as f64 / secs, &[]).with(|r| {
        r.rss_mib = Some(rss);
        r.note = Some(format!(
            "{streams} streams of 10 events; a fresh process opening it: RSS {rss} MiB, open {open_secs:.2} s; events/s is the populate rate"
        ));
        r.met = Some(rss < 1024);
    }))
}

pub(super) async fn open_existing(target: &Target) -> anyhow::Result<Row> {
    let start = Instant::now();
    let store = super::open_log(target.root())?;
    let secs = start.elapsed().as_secs_f64();
    let events = store.head().await?.map_or(0, |h| h + 1);
    let streams = store.stream_count()?;
    Ok(Row::new(
        "open-existing",
        target,
        events,
        1,
        1,
        secs,
        events as f64 / secs,
        &[],
    )
    .with(|r| {
        r.rss_mib = Some(rss_mib());
        r.note = Some(format!("{streams} streams"));
    }))
}

/// Store-backed consumer group throughput: `n` events in the store, then a group of
/// `members` members with a no-op handler acknowledges all of them from the beginning.
/// The group checkpoints every `checkpoint_every` settled events. Returns the row with
/// the CPU time the process spent per acknowledged event.
pub(super) async fn group<S: EventStore>(
    store: &S,
    template: &Event,
    name: &str,
    n: u64,
    members: usize,
    checkpoint_every: u64,
) -> anyhow::Result<Row> {
    use tidings::bus::{HandlerError, handler_fn};
    use tidings::{ConsumerGroup, RecordedEvent};
    populate(store, template, "populating", n, 4, 100, true).await?;
    let n = store.head().await?.map_or(0, |h| h + 1);
    let pb = bar(n, name);
    let cpu_before = super::disk::cpu_seconds();
    let start = Instant::now();
    let group = ConsumerGroup::builder(name, store.clone())
        .checkpoint_every(checkpoint_every)
        .start()
        .await?;
    let mut workers = Vec::new();
    for _ in 0..members.max(1) {
        let member = group.join();
        workers.push(tokio::spawn(async move {
            let noop = handler_fn(|_e: RecordedEvent| async { Ok::<(), HandlerError>(()) });
            member.run(&noop).await
        }));
    }
    loop {
        let acked = group.stats().acked;
        pb.set_position(acked);
        if acked >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = super::disk::cpu_seconds() - cpu_before;
    pb.finish_and_clear();
    group.shutdown().await?;
    for w in workers {
        w.await??;
    }
    // The group's log reader is aborted on drop; let it go (and release its store
    // handle) before the workload's directory is removed.
    drop(group);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(Row::new(
        name,
        &Target::Log(PathBuf::new()),
        n,
        members,
        1,
        secs,
        n as f64 / secs,
        &[],
    )
    .with(|r| {
        r.note = Some(format!(
            "{members} member(s), no-op handler, checkpoint every {checkpoint_every} events; CPU {:.2} µs per acked event (all threads)",
            cpu * 1e6 / n.max(1) as f64
        ));
    }))
}

/// Internal to `at-scale`: asks the kernel to drop its clean page cache (root only), so
/// the next reads come from the disk. False when it may not.
fn drop_page_cache() -> bool {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Reads `reads` streams of 10 events of a store left by `memory`, spread over the log.
async fn sample_stream_reads(
    store: &LogStore,
    appends_per_writer: u64,
    reads: u64,
    seed: u64,
) -> anyhow::Result<(f64, Vec<u32>)> {
    let mut x = seed | 1;
    let mut lat = Vec::with_capacity(reads as usize);
    let start = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let (w, i) = (x % 8, (x >> 8) % appends_per_writer.max(1));
        let stream = StreamId::new(&format!("order-{w}-{i:07}"))?;
        let t = Instant::now();
        let got = store.read_stream(&stream, ReadStream::forward()).await?;
        lat.push(micros(t.elapsed()));
        if got.len() != 10 {
            bail!("stream {stream} has {} events, expected 10", got.len());
        }
    }
    Ok((start.elapsed().as_secs_f64(), lat))
}

/// The figures of a large store, left by `memory --keep` in `--store`, opened by this
/// fresh process: open time and resident memory, stream reads with a cold page cache
/// (dropped first, when this process may) and a warm one, then the append workloads on
/// it. Returns a row per figure.
pub(super) async fn at_scale(target: &Target, template: &Event) -> anyhow::Result<Vec<Row>> {
    let cold = drop_page_cache();
    let start = Instant::now();
    let store = super::open_log(target.root())?;
    let open_secs = start.elapsed().as_secs_f64();
    let rss = rss_mib();
    let events = store.head().await?.map_or(0, |h| h + 1);
    if events < 80 {
        bail!(
            "{} holds {events} events; fill it first with `tidings bench --workload memory --keep --events N --store DIR`, then point --store at DIR/bench-memory",
            target.root().display()
        );
    }
    // `memory` wrote streams order-{w}-{i:07}, w < 8, 10 events each; later runs of this
    // workload added others. Find how many per writer.
    let (mut lo, mut hi) = (0u64, events / 80 + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        let s = StreamId::new(&format!("order-0-{mid:07}"))?;
        if store.stream_version(&s).await?.is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let per_writer = lo + 1;
    let mut rows = vec![
        Row::new("reopen", target, events, 1, 1, open_secs, events as f64 / open_secs, &[]).with(
            |r| {
                r.rss_mib = Some(rss);
                r.met = Some(open_secs < 2.0 && rss < 1024);
                r.note = Some(format!(
                    "a store of {events} events opened by a fresh process{}: open {open_secs:.2} s, RSS {rss} MiB after opening",
                    if cold { " with a cold page cache" } else { "" }
                ));
            },
        ),
    ];
    let reads = 2_000;
    let cold_reads = if drop_page_cache() {
        let (secs, lat) = sample_stream_reads(&store, per_writer, reads, 0x5EED).await?;
        Some(Row::new(
            "read-stream-cold",
            target,
            reads * 10,
            1,
            10,
            secs,
            reads as f64 * 10.0 / secs,
            &lat,
        ))
    } else {
        None
    };
    // The same streams again (now cached), then others, warmed by a first pass.
    let _ = sample_stream_reads(&store, per_writer, reads, 0xBEEF).await?;
    let (secs, lat) = sample_stream_reads(&store, per_writer, reads, 0xBEEF).await?;
    let warm = Row::new(
        "read-stream-warm",
        target,
        reads * 10,
        1,
        10,
        secs,
        reads as f64 * 10.0 / secs,
        &lat,
    );
    let warm_p99 = warm.p99_us;
    rows.push(warm.with(|r| {
        r.met = Some(warm_p99 < 1000.0);
        r.note = Some(format!(
            "{reads} reads of random 10-event streams among {}, each read twice",
            events / 10
        ));
    }));
    match cold_reads {
        Some(r) => rows.push(r.with(|r| {
            r.note = Some("page cache dropped before the reads (each stream's first read)".into());
        })),
        None => tracing::warn!("could not drop the page cache (needs root): no cold-cache figure"),
    }
    for (name, n, writers, batch) in [
        ("append-1", 5_000u64, 1usize, 1usize),
        ("append-concurrent", 200_000, 64, 1),
        ("append-batch", 2_000_000, 8, 100),
    ] {
        set_salt(&format!("scale{}-{name}-", std::process::id()));
        let row = appends(&store, template, name, n, writers, batch).await?;
        rows.push(row.with(|r| r.note = Some(format!("on the store of {events} events"))));
    }
    set_salt("");
    store.close().await?;
    Ok(rows)
}
