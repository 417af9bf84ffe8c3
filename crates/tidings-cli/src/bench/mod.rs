//! `tidings bench`: the standard workloads against a store, as a table or JSON lines.
//!
//! Every workload runs on a fresh store in its own subdirectory of `--store`
//! (`bench-<workload>`), removed afterwards unless `--keep`. Each event carries the
//! `OrderCreated` fixture's data and metadata with a fresh id and stream. The disk's own
//! limits (fdatasync latency of a 4 KiB overwrite, sequential bandwidth with an fdatasync
//! per MiB) are measured in the same directory first and printed beside every run.
//!
//! With `--bus nats://…|amqp://…` the bus workloads (`relay`, `bus-latency`,
//! `broker-consumer`; `--workload bus` runs the three) measure the outbox relay, the raw
//! transport and a broker consumer against that broker.

pub mod bus;
mod disk;
mod groups;
mod http;
mod pg_baseline;
mod processes;
mod workloads;

use disk::{Disk, disk_probe};
use workloads::{
    aggregate_load, appends, at_scale, group, memory, open_existing, read_all, read_filtered,
    read_stream, reopen, subscribe_latency,
};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tidings::{Event, StreamId};
use tidings_log::LogStore;
use tidings_postgres::PgStore;

const FIXTURE: &str = include_str!("../../../../fixtures/order-created.json");

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
    /// Where to run: a directory for the embedded store, or a postgres:// URL.
    #[arg(long, default_value = "./tidings-bench")]
    store: String,
    /// append-1, append-concurrent, append-batch, read-all, read-stream,
    /// subscribe-latency, aggregate-load, disk; `all` runs these in turn. Also:
    /// read-filtered (a type making up 1% of --events read through the type index, against
    /// an unfiltered scan of the same store; `speedup` is the ratio of their times), reopen
    /// (open time of a cleanly closed store of --events events) and memory (resident
    /// memory with --events/10 streams of 10 events; --keep leaves the store in
    /// STORE/bench-memory), at-scale (on a store left by memory: open time and memory of a
    /// fresh process, stream reads with a cold and a warm page cache, and the append
    /// workloads; --store STORE/bench-memory). With --bus: relay (outbox relay
    /// and raw publishes with confirmations), bus-latency (append to a handler in another
    /// process), broker-consumer (a backlog acknowledged; --writers is its concurrency),
    /// or bus for the three. On PostgreSQL: pg-insert-baseline (plain single-row
    /// INSERTs with --writers clients, the ceiling for append-concurrent; `all` runs it
    /// right after append-concurrent) and append-processes (single-event appends from
    /// --writers OS processes, each with its own store handle, default 8). Several
    /// workloads: a,b,c.
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
    /// Measure a running `tidings serve` over HTTP instead (batched and concurrent
    /// appends, Server-Sent Events latency).
    #[arg(long)]
    server: Option<String>,
    /// With --server: seconds per throughput workload.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The broker for the bus workloads: nats://HOST:PORT or
    /// amqp://USER:PASS@HOST:PORT/VHOST. With `--workload all` the bus workloads run too.
    #[arg(long)]
    bus: Option<String>,
    /// bus-latency: appends per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Diagnosis only: acknowledge appends without fsync, to see what the CPU alone
    /// allows. Rows then say `durable: false` and no target is judged.
    #[arg(long)]
    no_fsync: bool,
}

/// The embedded store's write counters after the last workload.
static LAST_WRITE_STATS: std::sync::Mutex<Option<tidings_log::WriteStats>> =
    std::sync::Mutex::new(None);

/// Set by `--no-fsync` for the whole run.
static NO_FSYNC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Opens the embedded store for a workload, durable unless `--no-fsync`.
pub(super) fn open_log(dir: impl Into<PathBuf>) -> anyhow::Result<LogStore> {
    let durability = if NO_FSYNC.load(std::sync::atomic::Ordering::Relaxed) {
        tidings_log::Durability::NoFsyncTestsOnly
    } else {
        tidings_log::Durability::Fsync
    };
    let dir = dir.into();
    let store = LogStore::builder(&dir).durability(durability).open()?;
    settle(&dir);
    Ok(store)
}

/// Waits until the file system has finished what came before — the last workload's
/// store being deleted (on a disk mounted with `discard`, that sends the device a discard
/// of every freed block at the next journal commit), the new store's first segment — so
/// that it is not timed as part of the next workload. Best effort.
fn settle(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = rustix::fs::syncfs(&f);
    }
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
    cpu_reference_ns: f64,
    target: String,
    met: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rss_mib: Option<u64>,
    /// read-filtered: how many times faster the filtered read is than the unfiltered scan.
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup: Option<f64>,
    /// read-filtered: the unfiltered scan's events/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    scan_events_per_sec: Option<f64>,
    /// The bench process's user + system CPU time over the run divided by the events
    /// (append workloads). On PostgreSQL this is the client's share only; the server's
    /// own CPU is not counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_us_per_event: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

/// Where the workloads run: an embedded store directory, or a PostgreSQL database (each
/// workload in a fresh schema, dropped afterwards; the disk probe then runs in a scratch
/// directory of the system's temporary directory, which is the same machine's disk).
enum Target {
    Log(PathBuf),
    Postgres { url: String, scratch: PathBuf },
}

impl Target {
    fn parse(s: &str) -> anyhow::Result<Self> {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres {
                url: s.to_owned(),
                scratch: std::env::temp_dir().join(format!("tidings-bench-{}", std::process::id())),
            });
        }
        if s.contains("://") {
            bail!("{s}: use a directory for the embedded store or a postgres:// URL");
        }
        Ok(Self::Log(PathBuf::from(s)))
    }

    fn label(&self) -> String {
        match self {
            Self::Log(_) => "log".to_owned(),
            Self::Postgres { .. } => "pg".to_owned(),
        }
    }

    fn root(&self) -> &Path {
        match self {
            Self::Log(p) => p,
            Self::Postgres { scratch, .. } => scratch,
        }
    }

    fn embedded_only(&self, workload: &str) -> anyhow::Result<()> {
        match self {
            Self::Log(_) => Ok(()),
            Self::Postgres { .. } => bail!("workload {workload} measures the embedded store only"),
        }
    }

    fn workdir(&self, workload: &str) -> anyhow::Result<PathBuf> {
        let dir = self.root().join(format!("bench-{workload}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        Ok(dir)
    }
}

/// Runs `$body` (a future using `$store`) on a fresh store of the target's kind.
macro_rules! on_store {
    ($rt:expr, $target:expr, $w:expr, |$store:ident| $body:expr) => {
        match $target {
            Target::Log(_) => {
                let $store = open_log($target.workdir($w)?)?;
                let result = $rt.block_on($body)?;
                *LAST_WRITE_STATS.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some($store.write_stats());
                result
            }
            Target::Postgres { url, .. } => {
                let schema = format!(
                    "tidings_bench_{}_{}",
                    $w.replace('-', "_"),
                    std::process::id()
                );
                let $store = $rt.block_on(PgStore::builder(url).schema(schema).connect())?;
                let result = $rt.block_on($body);
                $rt.block_on($store.drop_schema())?;
                result?
            }
        }
    };
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(server) = &args.server {
        return http::run(server, args.seconds, args.json);
    }
    NO_FSYNC.store(args.no_fsync, std::sync::atomic::Ordering::Relaxed);
    let target = Target::parse(&args.store)?;
    if args.workload == processes::WRITER_WORKLOAD {
        let Target::Postgres { url, .. } = &target else {
            bail!("{} runs on PostgreSQL only", processes::WRITER_WORKLOAD);
        };
        let template: Event = serde_json::from_str(FIXTURE).context("the bench fixture")?;
        processes::writer(url, &template)?;
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(target.root())
        .with_context(|| format!("creating {}", target.root().display()))?;
    let bus_label = args.bus.as_deref().map(bus::label).transpose()?;
    let mut workloads: Vec<&str> = match args.workload.as_str() {
        "all" => STANDARD.to_vec(),
        "bus" => bus::WORKLOADS.to_vec(),
        "groups" => groups::WORKLOADS.to_vec(),
        w => w.split(',').map(str::trim).collect(),
    };
    // On PostgreSQL, `all` measures plain inserts with append-concurrent's clients right
    // after it, in the same run.
    if args.workload == "all"
        && matches!(target, Target::Postgres { .. })
        && let Some(at) = workloads.iter().position(|w| *w == "append-concurrent")
    {
        workloads.insert(at + 1, "pg-insert-baseline");
    }
    if args.workload == "all" && args.bus.is_some() {
        workloads.extend(bus::WORKLOADS);
    }
    if bus_label.is_none()
        && let Some(w) = workloads.iter().find(|w| bus::WORKLOADS.contains(w))
    {
        bail!("workload {w} needs --bus nats://… or --bus amqp://…");
    }
    let bus_options = bus::BusOptions {
        url: args.bus.as_deref().unwrap_or_default(),
        events: args.events,
        concurrency: args.writers,
        rate: args.rate,
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
        disk_probe(&target.workdir("disk")?, 1000, 128)?
    };
    if !args.keep {
        let _ = std::fs::remove_dir_all(target.root().join("bench-disk"));
    }
    let cpu_ns = cpu_reference(&template)?;
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
                let n = args.events.unwrap_or(5_000);
                on_store!(rt, &target, w, |store| appends(
                    &store, &template, w, n, 1, 1
                ))
            }
            "append-concurrent" => {
                let n = args.events.unwrap_or(200_000);
                let wr = args.writers.unwrap_or(64);
                on_store!(rt, &target, w, |store| appends(
                    &store, &template, w, n, wr, 1
                ))
            }
            "pg-insert-baseline" => {
                let Target::Postgres { url, .. } = &target else {
                    bail!("workload {w} measures PostgreSQL only: use --store postgres://…");
                };
                let n = args.events.unwrap_or(200_000);
                let wr = args.writers.unwrap_or(64);
                rt.block_on(pg_baseline::run(url, &target, &template, n, wr))?
            }
            "append-processes" => {
                let Target::Postgres { url, .. } = &target else {
                    bail!("workload {w} measures PostgreSQL only: use --store postgres://…");
                };
                let n = args.events.unwrap_or(200_000);
                let wr = args.writers.unwrap_or(8);
                processes::run(url, &target, &rt, n, wr)?
            }
            "append-batch" => {
                let n = args.events.unwrap_or(2_000_000);
                let (wr, b) = (args.writers.unwrap_or(8), args.batch.unwrap_or(100));
                on_store!(rt, &target, w, |store| appends(
                    &store, &template, w, n, wr, b
                ))
            }
            "read-all" => {
                let n = args.events.unwrap_or(2_000_000);
                on_store!(rt, &target, w, |store| read_all(&store, &template, n))
            }
            "read-filtered" => {
                let n = args.events.unwrap_or(2_000_000);
                on_store!(rt, &target, w, |store| read_filtered(&store, &template, n))
            }
            "read-stream" => {
                let n = args.events.unwrap_or(200_000);
                let b = args.batch.unwrap_or(100).clamp(1, 1000) as u64;
                on_store!(rt, &target, w, |store| read_stream(&store, &template, n, b))
            }
            "subscribe-latency" => {
                let n = args.events.unwrap_or(5_000);
                on_store!(rt, &target, w, |store| subscribe_latency(
                    &store, &template, n
                ))
            }
            "aggregate-load" => {
                let (plain, snap) =
                    on_store!(rt, &target, w, |store| aggregate_load(&store, &template));
                let mut p = plain;
                fill(&mut p, &target, &disk, frame_bytes, cpu_ns);
                emit(&p, args.json);
                rows.push(p);
                snap
            }
            "reopen" => {
                target.embedded_only(w)?;
                rt.block_on(reopen(
                    &target,
                    &template,
                    args.events.unwrap_or(10_000_000),
                ))?
            }
            "memory" => {
                target.embedded_only(w)?;
                rt.block_on(memory(
                    &target,
                    &template,
                    args.events.unwrap_or(10_000_000),
                ))?
            }
            "group-1" | "group-4" => {
                target.embedded_only(w)?;
                let n = args.events.unwrap_or(1_000_000);
                let members = if w == "group-1" { 1 } else { 4 };
                let every = args.batch.unwrap_or(1_000) as u64;
                on_store!(rt, &target, w, |store| group(
                    &store, &template, w, n, members, every
                ))
            }
            w if groups::WORKLOADS.contains(&w) => {
                target.embedded_only(w)?;
                let n = args
                    .events
                    .unwrap_or(if w.contains("http") { 100_000 } else { 200_000 });
                on_store!(rt, &target, w, |store| groups::run(&store, &template, w, n))
            }
            "relay" | "bus-latency" | "broker-consumer" => {
                let mut rows_of_w = rt.block_on(bus::run(w, &target, &template, &bus_options))?;
                let last = rows_of_w.pop().context("the workload returned no row")?;
                for mut r in rows_of_w {
                    fill(&mut r, &target, &disk, frame_bytes, cpu_ns);
                    r.store = bus_label.unwrap_or_default().to_owned();
                    emit(&r, args.json);
                    rows.push(r);
                }
                last
            }
            "at-scale" => {
                target.embedded_only(w)?;
                let mut rows_of_w = rt.block_on(at_scale(&target, &template))?;
                let last = rows_of_w.pop().context("the workload returned no row")?;
                for mut r in rows_of_w {
                    fill(&mut r, &target, &disk, frame_bytes, cpu_ns);
                    emit(&r, args.json);
                    rows.push(r);
                }
                last
            }
            // Internal: opens the store left in `--store` by `memory`, in a fresh process.
            "open-existing" => rt.block_on(open_existing(&target))?,
            other => bail!(
                "unknown workload {other}; try one of {} or all, reopen, memory, group-1, group-4, groups ({}), pg-insert-baseline and append-processes (PostgreSQL), or with --bus: {}, bus (several: a,b,c)",
                STANDARD.join(", "),
                groups::WORKLOADS.join(", "),
                bus::WORKLOADS.join(", ")
            ),
        };
        fill(&mut row, &target, &disk, frame_bytes, cpu_ns);
        if bus::WORKLOADS.contains(&w) {
            row.store = bus_label.unwrap_or_default().to_owned();
        }
        let stats = LAST_WRITE_STATS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(st) = stats.filter(|st| w.starts_with("append") && st.groups > 0) {
            let g = st.groups as f64;
            row.note = Some(format!(
                "{:.1} events per commit group ({} of {} groups inline, {} fdatasyncs); write {:.0} µs per group; fdatasync {:.0} µs each, {:.0}% of the run",
                st.events as f64 / g,
                st.inline_groups,
                st.groups,
                st.syncs,
                st.write_micros as f64 / g,
                st.sync_micros as f64 / st.syncs.max(1) as f64,
                st.sync_micros as f64 / 1e4 / row.seconds
            ));
        }
        emit(&row, args.json);
        rows.push(row);
        if !args.keep {
            let _ = std::fs::remove_dir_all(target.root().join(format!("bench-{w}")));
        }
    }
    if let Target::Postgres { scratch, .. } = &target {
        let _ = std::fs::remove_dir_all(scratch);
    }
    if !args.json {
        println!();
        println!(
            "disk: fdatasync of a 4 KiB overwrite p50 {:.0} µs (p99 {:.0} µs); sequential write {:.0} MB/s with an fdatasync per MiB; {:.0} bytes per event in the log",
            disk.fdatasync_us, disk.fdatasync_p99_us, disk.seq_mb_per_sec, frame_bytes
        );
        println!(
            "cpu: {cpu_ns:.0} ns to encode one event's frame and decode it back to an owned event, one thread (the machine's speed, to compare runs across machines)"
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
            cpu_reference_ns: 0.0,
            target: String::new(),
            met: None,
            rss_mib: None,
            speedup: None,
            scan_events_per_sec: None,
            cpu_us_per_event: None,
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

/// Nanoseconds to encode the fixture's frame and decode it back into a recorded event,
/// on one thread: a fixed piece of the store's CPU work, printed beside every run so
/// figures from different machines (or different days of one virtual machine) can be
/// compared.
fn cpu_reference(template: &Event) -> anyhow::Result<f64> {
    use tidings_log::record::{FrameSpec, decode_frame, encode_frame};
    let stream = StreamId::new("order-cpu-reference")?;
    let events = std::slice::from_ref(template);
    let mut buf = Vec::with_capacity(4096);
    let rounds = 200_000u32;
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = std::time::Instant::now();
        for i in 0..rounds {
            buf.clear();
            encode_frame(
                &mut buf,
                &FrameSpec {
                    first_position: u64::from(i),
                    group_first: u64::from(i),
                    first_revision: 0,
                    recorded_at: 0,
                    stream: &stream,
                    events,
                },
            );
            let view = decode_frame(&buf)?;
            for e in view.events() {
                std::hint::black_box(e?.to_recorded(&stream, &view.header, 0)?);
            }
        }
        best = best.min(t.elapsed().as_nanos() as f64 / f64::from(rounds));
    }
    Ok(best)
}

/// Adds the machine's figures (disk, CPU reference) and the target for the workload.
fn fill(row: &mut Row, target: &Target, disk: &Disk, frame_bytes: f64, cpu_ns: f64) {
    row.store = target.label();
    row.cpu_reference_ns = cpu_ns;
    row.disk_fdatasync_us = disk.fdatasync_us;
    row.disk_seq_mb_per_sec = disk.seq_mb_per_sec;
    if NO_FSYNC.load(std::sync::atomic::Ordering::Relaxed) && row.workload != "disk" {
        row.durable = false;
        row.target = "not judged (--no-fsync)".into();
        return;
    }
    if let Target::Postgres { .. } = target {
        // The figures to reach are the embedded store's; PostgreSQL is measured for comparison.
        return;
    }
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
        "read-filtered" => (
            "speedup >= 20x (type of 1%)".into(),
            Some(row.speedup.unwrap_or(0.0) >= 20.0),
        ),
        "subscribe-latency" => ("p99 < 5000 µs".into(), Some(row.p99_us < 5000.0)),
        "reopen" => ("< 2 s for 10M events".into(), Some(row.seconds < 2.0)),
        "memory" => ("RSS < 1 GiB for 1M streams x 10".into(), None),
        "group-1" => (
            ">= 200000 acked/s".into(),
            Some(row.events_per_sec >= 200_000.0),
        ),
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
        "{:<24} {:>5} {:>10} {:>7} {:>5} {:>8.2} {:>12.0} {:>9.0} {:>9.0} {:>7}  {mark} {}{}{}",
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
        row.cpu_us_per_event
            .map(|c| format!(" — {c:.2} µs CPU per event"))
            .unwrap_or_default(),
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
