//! `tidings bench`: the standard workloads against a store, as a table or JSON lines.
//!
//! Every workload runs on a fresh store in its own subdirectory of `--store`
//! (`bench-<workload>`), removed afterwards unless `--keep`. Each event carries the
//! `OrderCreated` fixture's data and metadata with a fresh id and stream. The disk's own
//! limits (fdatasync latency of a 4 KiB overwrite, sequential bandwidth with an fdatasync
//! per MiB) are measured in the same directory first and printed beside every run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tidings::{
    Event, EventReader, EventStore, ExpectedVersion, Filter, ReadAll, ReadStream, Start, StreamId,
};
use tidings_log::LogStore;
use tidings_log::storage::{OpenMode, OsStorage, Storage};

const FIXTURE: &str = include_str!("../../../fixtures/order-created.json");

/// The standard workloads, in the order `all` runs them.
const STANDARD: [&str; 8] = [
    "disk",
    "append-1",
    "append-concurrent",
    "append-batch",
    "read-all",
    "read-stream",
    "subscribe-latency",
    "aggregate-load",
];

/// Arguments of `tidings bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Where to run: a directory for the embedded store.
    #[arg(long, default_value = "./tidings-bench")]
    store: String,
    /// append-1, append-concurrent, append-batch, read-all, read-stream,
    /// subscribe-latency, aggregate-load, disk; `all` runs these in turn. Also: reopen
    /// (open time of a cleanly closed store of --events events) and memory (resident
    /// memory with --events/10 streams of 10 events).
    #[arg(long, default_value = "all")]
    workload: String,
    /// Events to write (or read), per workload; each has its own default.
    #[arg(long)]
    events: Option<u64>,
    /// Concurrent writers.
    #[arg(long)]
    writers: Option<usize>,
    /// Events per append.
    #[arg(long)]
    batch: Option<usize>,
    /// Print one JSON object per workload instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep each workload's data directory.
    #[arg(long)]
    keep: bool,
}

/// One workload's result.
#[derive(Debug, Clone, Serialize)]
struct Row {
    workload: String,
    store: String,
    events: u64,
    writers: usize,
    batch: usize,
    seconds: f64,
    events_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    durable: bool,
    disk_fdatasync_us: f64,
    disk_seq_mb_per_sec: f64,
    target: String,
    met: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// The disk's limits in the store's directory.
#[derive(Debug, Clone, Copy, Default)]
struct Disk {
    fdatasync_us: f64,
    fdatasync_p99_us: f64,
    seq_mb_per_sec: f64,
    syncs: u64,
    seconds: f64,
}

/// Where the workloads run. Only the embedded store so far; a PostgreSQL URL will be
/// another variant with its own `open`.
enum Target {
    Log(PathBuf),
}

impl Target {
    fn parse(s: &str) -> anyhow::Result<Self> {
        if s.contains("://") {
            bail!("{s}: only embedded store directories are supported by this build");
        }
        Ok(Self::Log(PathBuf::from(s)))
    }

    fn label(&self) -> String {
        match self {
            Self::Log(_) => "log".to_owned(),
        }
    }

    fn root(&self) -> &Path {
        match self {
            Self::Log(p) => p,
        }
    }

    fn workdir(&self, workload: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root().join(format!("bench-{workload}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        Ok(dir)
    }

    fn open(&self, workload: &str) -> anyhow::Result<LogStore> {
        match self {
            Self::Log(_) => Ok(LogStore::open(self.workdir(workload)?)?),
        }
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let target = Target::parse(&args.store)?;
    std::fs::create_dir_all(target.root())
        .with_context(|| format!("creating {}", target.root().display()))?;
    let workloads: Vec<&str> = if args.workload == "all" {
        STANDARD.to_vec()
    } else {
        vec![args.workload.as_str()]
    };
    let rt = tokio::runtime::Runtime::new()?;
    let template: Event = serde_json::from_str(FIXTURE).context("the bench fixture")?;
    let frame_bytes = tidings_log::record::frame_len(
        &StreamId::new("order-b0-000000")?,
        std::slice::from_ref(&template),
    ) as f64;
    let disk = if args.workload == "open-existing" {
        Disk::default()
    } else {
        disk_probe(&target.workdir("disk")?, 400, 128)?
    };
    if !args.keep {
        let _ = std::fs::remove_dir_all(target.root().join("bench-disk"));
    }
    let mut rows = Vec::new();
    for w in workloads {
        let mut row = match w {
            "disk" => Row::new(
                "disk",
                &target,
                disk.syncs,
                1,
                1,
                disk.seconds,
                disk.syncs as f64 / disk.seconds,
                &[],
            )
            .with(|r| {
                r.p50_us = disk.fdatasync_us;
                r.p99_us = disk.fdatasync_p99_us;
                r.note = Some(format!(
                    "4 KiB overwrite + fdatasync; sequential {:.0} MB/s with an fdatasync per MiB",
                    disk.seq_mb_per_sec
                ));
            }),
            "append-1" => {
                let store = target.open(w)?;
                let n = args.events.unwrap_or(5_000);
                rt.block_on(appends(&store, &template, w, n, 1, 1))?
            }
            "append-concurrent" => {
                let store = target.open(w)?;
                let n = args.events.unwrap_or(200_000);
                rt.block_on(appends(
                    &store,
                    &template,
                    w,
                    n,
                    args.writers.unwrap_or(64),
                    1,
                ))?
            }
            "append-batch" => {
                let store = target.open(w)?;
                let n = args.events.unwrap_or(2_000_000);
                let (wr, b) = (args.writers.unwrap_or(8), args.batch.unwrap_or(100));
                rt.block_on(appends(&store, &template, w, n, wr, b))?
            }
            "read-all" => {
                let store = target.open(w)?;
                rt.block_on(read_all(
                    &store,
                    &template,
                    args.events.unwrap_or(2_000_000),
                ))?
            }
            "read-stream" => {
                let store = target.open(w)?;
                rt.block_on(read_stream(
                    &store,
                    &template,
                    args.events.unwrap_or(200_000),
                    args.batch.unwrap_or(100).clamp(1, 1000) as u64,
                ))?
            }
            "subscribe-latency" => {
                let store = target.open(w)?;
                rt.block_on(subscribe_latency(
                    &store,
                    &template,
                    args.events.unwrap_or(5_000),
                ))?
            }
            "aggregate-load" => {
                let store = target.open(w)?;
                let (plain, snap) = rt.block_on(aggregate_load(&store, &template))?;
                let mut p = plain;
                fill(&mut p, &target, &disk, frame_bytes);
                emit(&p, args.json);
                rows.push(p);
                snap
            }
            "reopen" => rt.block_on(reopen(
                &target,
                &template,
                args.events.unwrap_or(10_000_000),
            ))?,
            "memory" => rt.block_on(memory(
                &target,
                &template,
                args.events.unwrap_or(10_000_000),
            ))?,
            // Internal: opens the store left in `--store` by `memory`, in a fresh process.
            "open-existing" => rt.block_on(open_existing(&target))?,
            other => bail!(
                "unknown workload {other}; try one of {} or all, reopen, memory",
                STANDARD.join(", ")
            ),
        };
        fill(&mut row, &target, &disk, frame_bytes);
        emit(&row, args.json);
        rows.push(row);
        if !args.keep {
            let _ = std::fs::remove_dir_all(target.root().join(format!("bench-{w}")));
        }
    }
    if !args.json {
        println!();
        println!(
            "disk: fdatasync of a 4 KiB overwrite p50 {:.0} µs (p99 {:.0} µs); sequential write {:.0} MB/s with an fdatasync per MiB; {:.0} bytes per event in the log",
            disk.fdatasync_us, disk.fdatasync_p99_us, disk.seq_mb_per_sec, frame_bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

impl Row {
    #[allow(clippy::too_many_arguments)]
    fn new(
        workload: &str,
        target: &Target,
        events: u64,
        writers: usize,
        batch: usize,
        seconds: f64,
        rate: f64,
        lat: &[u32],
    ) -> Self {
        let mut lat = lat.to_vec();
        lat.sort_unstable();
        Self {
            workload: workload.to_owned(),
            store: target.label(),
            events,
            writers,
            batch,
            seconds,
            events_per_sec: rate,
            p50_us: pct(&lat, 0.50),
            p99_us: pct(&lat, 0.99),
            durable: true,
            disk_fdatasync_us: 0.0,
            disk_seq_mb_per_sec: 0.0,
            target: String::new(),
            met: None,
            rss_mib: None,
            note: None,
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)])
}

/// Adds the disk figures and the target for the workload.
fn fill(row: &mut Row, target: &Target, disk: &Disk, frame_bytes: f64) {
    row.store = target.label();
    row.disk_fdatasync_us = disk.fdatasync_us;
    row.disk_seq_mb_per_sec = disk.seq_mb_per_sec;
    let (text, met) = match row.workload.as_str() {
        "append-1" => {
            let t = 0.8 * 1e6 / disk.fdatasync_us.max(1.0);
            (
                format!(">= {t:.0}/s (80% of 1/fdatasync)"),
                Some(row.events_per_sec >= t),
            )
        }
        "append-concurrent" => (
            ">= 100000/s at W=64".into(),
            Some(row.events_per_sec >= 100_000.0),
        ),
        "append-batch" => {
            let bw = 0.6 * disk.seq_mb_per_sec * 1e6 / frame_bytes;
            let t = bw.min(1_000_000.0);
            (
                format!(">= {t:.0}/s (min of 1M, 60% of bandwidth)"),
                Some(row.events_per_sec >= t),
            )
        }
        "read-all" => (
            ">= 3000000/s warm".into(),
            Some(row.events_per_sec >= 3_000_000.0),
        ),
        "read-stream" => ("p99 < 1000 µs".into(), Some(row.p99_us < 1000.0)),
        "subscribe-latency" => ("p99 < 5000 µs".into(), Some(row.p99_us < 5000.0)),
        "reopen" => ("< 2 s for 10M events".into(), Some(row.seconds < 2.0)),
        "memory" => ("RSS < 1 GiB for 1M streams x 10".into(), None),
        _ => (String::new(), None),
    };
    row.target = text;
    if row.met.is_none() {
        row.met = met;
    }
}

fn emit(row: &Row, json: bool) {
    if json {
        println!("{}", serde_json::to_string(row).unwrap_or_default());
        return;
    }
    static HEADER: std::sync::Once = std::sync::Once::new();
    HEADER.call_once(|| {
        println!(
            "{:<24} {:>5} {:>10} {:>7} {:>5} {:>8} {:>12} {:>9} {:>9} {:>7}  target",
            "workload",
            "store",
            "events",
            "writers",
            "batch",
            "seconds",
            "events/s",
            "p50 µs",
            "p99 µs",
            "durable"
        );
    });
    let mark = match row.met {
        Some(true) => "ok  ",
        Some(false) => "MISS",
        None => "    ",
    };
    println!(
        "{:<24} {:>5} {:>10} {:>7} {:>5} {:>8.2} {:>12.0} {:>9.0} {:>9.0} {:>7}  {mark} {}{}",
        row.workload,
        row.store,
        row.events,
        row.writers,
        row.batch,
        row.seconds,
        row.events_per_sec,
        row.p50_us,
        row.p99_us,
        row.durable,
        row.target,
        row.note
            .as_deref()
            .map(|n| format!(" — {n}"))
            .unwrap_or_default()
    );
}

fn bar(total: u64, label: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>20} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(label.to_owned());
    pb
}

fn fresh(template: &Event) -> Event {
    let mut e = template.clone();
    e.event_id = fast_v7();
    e
}

/// A UUID v7 without a `getrandom` system call per id (the bench makes millions; the
/// randomness only has to make ids unique, not unpredictable).
fn fast_v7() -> uuid::Uuid {
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

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// `n` events by `writers` concurrent writers in appends of `batch` events, each append
/// to a fresh stream. Returns the row with append latencies.
async fn appends<S: EventStore>(
    store: &S,
    template: &Event,
    name: &str,
    n: u64,
    writers: usize,
    batch: usize,
) -> anyhow::Result<Row> {
    let (secs, lat) = populate(store, template, name, n, writers, batch, true).await?;
    let events = lat.len() as u64 * batch as u64;
    Ok(Row::new(
        name,
        &Target::Log(PathBuf::new()),
        events,
        writers,
        batch,
        secs,
        events as f64 / secs,
        &lat,
    ))
}

async fn populate<S: EventStore>(
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
    for w in 0..writers {
        let store = store.clone();
        let template = template.clone();
        let pb = pb.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(appends_per_writer as usize);
            for i in 0..appends_per_writer {
                let stream = StreamId::new(&format!("order-{w}-{i:07}"))?;
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

async fn read_all<S: EventStore>(store: &S, template: &Event, n: u64) -> anyhow::Result<Row> {
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

async fn read_stream<S: EventStore>(
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

async fn subscribe_latency<S: EventStore>(
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

async fn aggregate_load<S: EventStore>(store: &S, template: &Event) -> anyhow::Result<(Row, Row)> {
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

async fn reopen(target: &Target, template: &Event, n: u64) -> anyhow::Result<Row> {
    let dir = target.workdir("reopen")?;
    {
        let store = LogStore::open(&dir)?;
        populate(&store, template, "populating", n, 8, 100, true).await?;
        store.close().await?;
    }
    let start = Instant::now();
    let store = LogStore::open(&dir)?;
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

async fn memory(target: &Target, template: &Event, n: u64) -> anyhow::Result<Row> {
    let dir = target.workdir("memory")?;
    let streams = n / 10;
    let (secs, _) = {
        let store = LogStore::open(&dir)?;
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

async fn open_existing(target: &Target) -> anyhow::Result<Row> {
    let start = Instant::now();
    let store = LogStore::open(target.root())?;
    let secs = start.elapsed().as_secs_f64();
    let events = store.head().await?.map_or(0, |h| h + 1);
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
        r.note = Some(format!("{} streams", store.stream_count()));
    }))
}

fn rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// The disk's limits: median fdatasync latency of a 4 KiB overwrite in a preallocated
/// file, and sequential write bandwidth with an fdatasync every MiB.
fn disk_probe(dir: &Path, syncs: u64, seq_mib: u64) -> anyhow::Result<Disk> {
    let fs = OsStorage;
    fs.create_dir_all(dir)?;
    let path = dir.join("fdatasync.probe");
    let f = fs.open(&path, OpenMode::Truncate)?;
    // Written once first, so the timed writes are overwrites of allocated blocks.
    let mib = vec![0u8; 1 << 20];
    for i in 0..16u64 {
        f.write_all_at(&mib, i << 20)?;
    }
    f.sync_data()?;
    let block = vec![0x5au8; 4096];
    let mut lat = Vec::with_capacity(syncs as usize);
    let start = Instant::now();
    for i in 0..syncs {
        let t = Instant::now();
        f.write_all_at(&block, (i % 4096) * 4096)?;
        f.sync_data()?;
        lat.push(micros(t.elapsed()));
    }
    let seconds = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let path2 = dir.join("sequential.probe");
    let g = fs.open(&path2, OpenMode::Truncate)?;
    g.allocate(seq_mib << 20)?;
    g.sync_data()?;
    let chunk = vec![0xa5u8; 1 << 20];
    let t = Instant::now();
    for i in 0..seq_mib {
        g.write_all_at(&chunk, i << 20)?;
        g.sync_data()?;
    }
    let seq = t.elapsed().as_secs_f64();
    drop((f, g));
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(path2);
    Ok(Disk {
        fdatasync_us: pct(&lat, 0.5),
        fdatasync_p99_us: pct(&lat, 0.99),
        seq_mb_per_sec: (seq_mib << 20) as f64 / 1e6 / seq,
        syncs,
        seconds,
    })
}
