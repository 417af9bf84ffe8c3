//! `append-processes`: single-event appends from several OS processes to one PostgreSQL
//! schema, each with a store handle of its own (so no group commit between them: only
//! PostgreSQL can share their flushes). Compare with `pg-insert-baseline` at the same
//! `--writers`.
//!
//! The writers are this binary again, `tidings bench --workload append-processes-writer`
//! (hidden), told what to do by [`WRITER_VAR`]. Each connects, answers `ready` on its
//! standard output and waits for a line on its standard input; the clock starts when
//! every writer is ready and told to go, and stops when the last one has answered its
//! latencies and CPU time.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use tidings::{Event, EventAppender, ExpectedVersion, StreamId};
use tidings_postgres::PgStore;

use super::workloads::{fresh, micros};
use super::{Row, Target};

/// The hidden workload a writer process runs.
pub(super) const WRITER_WORKLOAD: &str = "append-processes-writer";
/// Tells a writer `<schema> <writer number> <appends>`.
const WRITER_VAR: &str = "TIDINGS_BENCH_PG_WRITER";

/// What a writer answers when it is done.
#[derive(Serialize, Deserialize)]
struct Report {
    latencies_us: Vec<u32>,
    cpu_seconds: f64,
}

/// Kills a writer that is still running when the workload gives up.
struct Writer {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Writer {
    fn line(&mut self, what: &str) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("a writer process ended before {what}");
        }
        Ok(line)
    }
}

/// `n` single-event appends, each to a fresh stream, by `writers` processes.
pub(super) fn run(
    url: &str,
    target: &Target,
    rt: &tokio::runtime::Runtime,
    n: u64,
    writers: usize,
) -> anyhow::Result<Row> {
    let writers = writers.max(1);
    let per_writer = (n / writers as u64).max(1);
    let schema = format!("tidings_bench_append_processes_{}", std::process::id());
    let store = rt.block_on(PgStore::builder(url).schema(&schema).connect())?;
    let result = measure(url, target, &schema, per_writer, writers);
    rt.block_on(store.drop_schema())?;
    result
}

fn measure(
    url: &str,
    target: &Target,
    schema: &str,
    per_writer: u64,
    writers: usize,
) -> anyhow::Result<Row> {
    let exe = std::env::current_exe().context("finding the tidings binary")?;
    let mut procs = Vec::with_capacity(writers);
    for w in 0..writers {
        let mut child = Command::new(&exe)
            .args(["bench", "--store", url, "--workload", WRITER_WORKLOAD])
            .env(WRITER_VAR, format!("{schema} {w} {per_writer}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a writer process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("a writer's output")?;
        procs.push(Writer {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        });
    }
    for p in &mut procs {
        let line = p.line("it was ready")?;
        if line.trim() != "ready" {
            bail!("a writer process said {line:?} instead of ready");
        }
    }
    let start = Instant::now();
    for p in &mut procs {
        let stdin = p.stdin.as_mut().context("a writer's input")?;
        stdin.write_all(b"go\n")?;
        stdin.flush()?;
    }
    let mut lat = Vec::with_capacity((per_writer * writers as u64) as usize);
    let mut cpu = 0.0;
    for p in &mut procs {
        let line = p.line("it answered")?;
        let report: Report = serde_json::from_str(&line).context("a writer's report")?;
        lat.extend(report.latencies_us);
        cpu += report.cpu_seconds;
    }
    let secs = start.elapsed().as_secs_f64();
    for mut p in procs {
        p.stdin.take();
        let status = p.child.wait()?;
        if !status.success() {
            bail!("a writer process failed: {status}");
        }
    }
    let events = lat.len() as u64;
    Ok(Row::new(
        "append-processes",
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
        r.note = Some(format!(
            "{writers} OS processes, each its own store handle, single-event appends to new \
             streams; CPU is the writers' (client) share; compare pg-insert-baseline with \
             --writers {writers}"
        ));
    }))
}

/// The writer process: connects, says `ready`, waits for a line, appends, reports.
pub(super) fn writer(url: &str, template: &Event) -> anyhow::Result<()> {
    let spec = std::env::var(WRITER_VAR)
        .with_context(|| format!("{WRITER_WORKLOAD} is started by append-processes"))?;
    let mut parts = spec.split(' ');
    let (Some(schema), Some(w), Some(count)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("{WRITER_VAR} must be '<schema> <writer> <appends>'");
    };
    let count: u64 = count.parse().context("the number of appends")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let store = rt.block_on(PgStore::builder(url).schema(schema).connect())?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go)?;
    let cpu_before = super::disk::cpu_seconds();
    let latencies_us = rt.block_on(async {
        let mut lat = Vec::with_capacity(count as usize);
        for i in 0..count {
            let stream = StreamId::new(&format!("order-p{w}-{i:07}"))?;
            let t = Instant::now();
            store
                .append(&stream, ExpectedVersion::NoStream, vec![fresh(template)])
                .await?;
            lat.push(micros(t.elapsed()));
        }
        anyhow::Ok(lat)
    })?;
    let report = Report {
        latencies_us,
        cpu_seconds: super::disk::cpu_seconds() - cpu_before,
    };
    writeln!(out, "{}", serde_json::to_string(&report)?)?;
    out.flush()?;
    rt.block_on(store.close());
    Ok(())
}
