//! The client commands: append, read, tail, streams, correlation, export, import.
//!
//! Each works against a local store (`--data DIR` or `--store`) or a server (`--server
//! URL`). Human output is an aligned table; `--json` prints machine-readable JSON.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Seek, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use futures::StreamExt;
use tidings::{
    Direction, Enricher, Event, ExpectedVersion, NewEvent, Payload, ReadStream, RecordedEvent,
};

use crate::client::{Client, ClientError, Local, Remote};
use crate::store::{StoreSpec, with_store};

/// Where a client command finds the events.
#[derive(Debug, Args)]
pub struct Target {
    /// A Tidings server to talk to, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "TIDINGS_SERVER")]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "TIDINGS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of a local embedded store (when no --server).
    #[arg(long, default_value = "./tidings-data", env = "TIDINGS_DATA")]
    data: PathBuf,
    /// A local store URL instead of --data: a directory or postgres://….
    #[arg(long, env = "TIDINGS_STORE")]
    store: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Where `tidings append` finds the events: as [`Target`], but the data directory is
/// `--data-dir`, since `--data` is the event's payload there.
#[derive(Debug, Args)]
pub struct AppendTarget {
    /// A Tidings server to talk to, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "TIDINGS_SERVER")]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "TIDINGS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of a local embedded store (when no --server).
    #[arg(long, default_value = "./tidings-data", env = "TIDINGS_DATA")]
    data_dir: PathBuf,
    /// A local store URL instead of --data-dir: a directory or postgres://….
    #[arg(long, env = "TIDINGS_STORE")]
    store: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

impl From<AppendTarget> for Target {
    fn from(t: AppendTarget) -> Self {
        Self {
            server: t.server,
            token: t.token,
            data: t.data_dir,
            store: t.store,
            json: t.json,
        }
    }
}

/// Runs `$body` with `$c` bound to a [`Client`] for the target.
macro_rules! with_client {
    ($target:expr, |$c:ident| $body:expr) => {{
        let t: &Target = &$target;
        match &t.server {
            Some(url) => {
                let $c = Remote::new(url, t.token.clone())?;
                $body
            }
            None => {
                let spec = StoreSpec::from_args(t.store.as_deref(), &t.data)?;
                with_store!(spec, |store| {
                    let $c = Local(store);
                    $body
                })
            }
        }
    }};
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn event_rows(events: &[RecordedEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|e| {
            vec![
                e.revision.to_string(),
                e.position.to_string(),
                e.event_type.clone(),
                e.recorded_at.strftime("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                short(e.data.as_str(), 80),
            ]
        })
        .collect()
}

/// Options of `tidings append`.
#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The stream.
    stream: String,
    /// The event type, e.g. OrderCreated.
    #[arg(long = "type", short = 't')]
    event_type: String,
    /// The payload, as JSON.
    #[arg(long, short = 'd')]
    data: String,
    /// Expected version: any, no-stream, stream-exists or a revision.
    #[arg(long, short = 'e', default_value = "any")]
    expected: ExpectedVersion,
    /// Correlation id.
    #[arg(long)]
    correlation_id: Option<String>,
    /// Causation id.
    #[arg(long)]
    causation_id: Option<String>,
    /// Source service name.
    #[arg(long, default_value = "tidings-cli")]
    source: String,
    #[command(flatten)]
    target: AppendTarget,
}

/// `tidings append`.
pub async fn append(a: AppendArgs) -> Result<()> {
    let data = Payload::parse(&a.data)
        .with_context(|| format!("--data is not valid JSON: {}", short(&a.data, 60)))?;
    let mut event = NewEvent::new(a.event_type.clone(), data);
    event.metadata.correlation_id = a.correlation_id.clone();
    event.metadata.causation_id = a.causation_id.clone();
    let event = Enricher::new(a.source.clone())
        .enrich(event)
        .context("the event is refused")?;
    let id = event.event_id;
    let target = Target::from(a.target);
    let result = with_client!(target, |c| c
        .append(&a.stream, a.expected, vec![event])
        .await
        .map_err(|e| match e {
            ClientError::Refused { detail, .. } => anyhow::anyhow!("append refused: {detail}"),
            ClientError::Other(e) => e,
        })?);
    if target.json {
        println!(
            "{}",
            serde_json::json!({
                "stream": a.stream, "eventId": id, "revision": result.first_revision,
                "position": result.position, "nextExpectedVersion": result.next_expected_version
            })
        );
    } else {
        print_table(
            &["STREAM", "REVISION", "POSITION", "EVENT ID"],
            &[vec![
                a.stream.clone(),
                result.first_revision.to_string(),
                result.position.to_string(),
                id.to_string(),
            ]],
        );
    }
    Ok(())
}

/// Options of `tidings read`.
#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The stream.
    stream: String,
    /// First revision to read.
    #[arg(long)]
    from: Option<u64>,
    /// At most this many events.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Newest first.
    #[arg(long)]
    backward: bool,
    #[command(flatten)]
    target: Target,
}

/// `tidings read`.
pub async fn read(a: ReadArgs) -> Result<()> {
    let options = ReadStream {
        from: a.from,
        direction: if a.backward {
            Direction::Backward
        } else {
            Direction::Forward
        },
        limit: a.limit,
    };
    let events = with_client!(a.target, |c| c.read_stream(&a.stream, options).await?);
    if a.target.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
    } else if events.is_empty() {
        eprintln!("stream {} has no events in that range", a.stream);
    } else {
        print_table(
            &["REV", "POS", "TYPE", "RECORDED (UTC)", "DATA"],
            &event_rows(&events),
        );
    }
    Ok(())
}

/// Options of `tidings tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only this stream (default: every stream).
    stream: Option<String>,
    /// Start at this position (or revision, with a stream) instead of new events only.
    #[arg(long)]
    from: Option<u64>,
    #[command(flatten)]
    target: Target,
}

/// `tidings tail`.
pub async fn tail(a: TailArgs) -> Result<()> {
    with_client!(a.target, |c| {
        let mut events = c.subscribe(a.stream.as_deref(), a.from).await?;
        if !a.target.json {
            eprintln!(
                "following {} (Ctrl-C to stop)",
                a.stream.as_deref().unwrap_or("all streams")
            );
        }
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                next = events.next() => match next {
                    None => break,
                    Some(Err(e)) => return Err(e),
                    Some(Ok(e)) => {
                        if a.target.json {
                            println!("{}", serde_json::to_string(&e)?);
                        } else {
                            println!(
                                "{:>8}  {}  {}#{}  {}  {}",
                                e.position,
                                e.recorded_at.strftime("%H:%M:%S%.3f"),
                                e.stream,
                                e.revision,
                                e.event_type,
                                short(e.data.as_str(), 80)
                            );
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

/// Options of `tidings streams`.
#[derive(Debug, Args)]
pub struct StreamsArgs {
    /// Only names starting with this.
    #[arg(long)]
    prefix: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[command(flatten)]
    target: Target,
}

/// `tidings streams`.
pub async fn streams(a: StreamsArgs) -> Result<()> {
    let streams = with_client!(a.target, |c| c
        .list_streams(a.prefix.clone(), None, a.limit)
        .await?);
    if a.target.json {
        println!("{}", serde_json::to_string_pretty(&streams)?);
    } else {
        let rows: Vec<Vec<String>> = streams
            .iter()
            .map(|s| {
                vec![
                    s.stream.to_string(),
                    (s.last_revision + 1).to_string(),
                    s.last_revision.to_string(),
                    s.last_written.strftime("%Y-%m-%d %H:%M:%S").to_string(),
                ]
            })
            .collect();
        print_table(&["STREAM", "EVENTS", "LAST REV", "LAST WRITE (UTC)"], &rows);
    }
    Ok(())
}

/// Options of `tidings correlation`.
#[derive(Debug, Args)]
pub struct CorrelationArgs {
    /// The correlation id.
    id: String,
    #[command(flatten)]
    target: Target,
}

/// The causation tree as indented lines: children under the event that caused them.
pub fn causation_tree(events: &[RecordedEvent]) -> Vec<String> {
    let ids: HashMap<String, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.event_id.to_string(), i))
        .collect();
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match e.metadata.causation_id.as_ref().and_then(|c| ids.get(c)) {
            Some(&parent) if parent != i => children.entry(parent).or_default().push(i),
            _ => roots.push(i),
        }
    }
    fn walk(
        i: usize,
        prefix: &str,
        last: bool,
        top: bool,
        events: &[RecordedEvent],
        children: &HashMap<usize, Vec<usize>>,
        out: &mut Vec<String>,
    ) {
        let e = &events[i];
        let branch = if top {
            ""
        } else if last {
            "└─ "
        } else {
            "├─ "
        };
        let cause = match (&e.metadata.causation_id, top) {
            (Some(c), true) => format!("  (caused by {c})"),
            _ => String::new(),
        };
        out.push(format!(
            "{prefix}{branch}{}  {}#{}  @{}{cause}",
            e.event_type, e.stream, e.revision, e.position
        ));
        let next_prefix = if top {
            prefix.to_owned()
        } else {
            format!("{prefix}{}", if last { "   " } else { "│  " })
        };
        let kids = children.get(&i).cloned().unwrap_or_default();
        for (k, &c) in kids.iter().enumerate() {
            walk(
                c,
                &next_prefix,
                k + 1 == kids.len(),
                false,
                events,
                children,
                out,
            );
        }
    }
    let mut out = Vec::new();
    for &r in &roots {
        walk(r, "", true, true, events, &children, &mut out);
    }
    out
}

/// `tidings correlation`.
pub async fn correlation(a: CorrelationArgs) -> Result<()> {
    let events = with_client!(a.target, |c| c.correlation(&a.id).await?);
    if events.is_empty() {
        bail!("no event carries correlationId {:?}", a.id);
    }
    if a.target.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
    } else {
        println!("correlation {} · {} events", a.id, events.len());
        for line in causation_tree(&events) {
            println!("{line}");
        }
    }
    Ok(())
}

/// Options of `tidings export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write here instead of standard output.
    #[arg(long, short = 'o')]
    out: Option<PathBuf>,
    /// Start at this global position (to continue an earlier export).
    #[arg(long, default_value_t = 0)]
    from: u64,
    #[command(flatten)]
    target: Target,
}

fn progress(total: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40.cyan/blue}] {pos}/{len} events ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// `tidings export`.
pub async fn export(a: ExportArgs) -> Result<()> {
    with_client!(a.target, |c| {
        let head = c.head().await?;
        let total = head.map_or(0, |h| h + 1).saturating_sub(a.from);
        let mut out: Box<dyn Write> = match &a.out {
            Some(p) => Box::new(BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(BufWriter::new(std::io::stdout().lock())),
        };
        let bar = progress(total, "exporting");
        if a.out.is_none() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        }
        let mut next = a.from;
        let mut written = 0u64;
        loop {
            let page = c.read_all(next, 1000).await?;
            let Some(last) = page.last() else { break };
            next = last.position + 1;
            for e in &page {
                serde_json::to_writer(&mut out, e)?;
                out.write_all(b"\n")?;
            }
            written += page.len() as u64;
            bar.set_position(written.min(total.max(written)));
            if head.is_some_and(|h| next > h) {
                break;
            }
        }
        out.flush()?;
        bar.finish_and_clear();
        eprintln!("exported {written} events (positions {}..{next})", a.from);
    });
    Ok(())
}

/// Options of `tidings import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// NDJSON file written by `tidings export`.
    file: PathBuf,
    /// Ignore the progress file and start from the beginning (still idempotent).
    #[arg(long)]
    restart: bool,
    /// Events per append.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[command(flatten)]
    target: Target,
}

fn progress_path(file: &std::path::Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".import-progress");
    PathBuf::from(p)
}

/// Appends one batch; on an id conflict (part of it was imported before, in other
/// batches) falls back to one event at a time, each of which is then either new or an
/// idempotent repeat.
async fn import_batch<C: Client>(c: &C, stream: &str, events: Vec<Event>) -> Result<u64> {
    match c.append(stream, ExpectedVersion::Any, events.clone()).await {
        Ok(_) => Ok(events.len() as u64),
        Err(ClientError::Refused { slug, .. })
            if slug == "duplicate-event-id" && events.len() > 1 =>
        {
            for e in events.iter() {
                let id = e.event_id;
                c.append(stream, ExpectedVersion::Any, vec![e.clone()])
                    .await
                    .map_err(|err| anyhow::anyhow!("event {id} in stream {stream}: {err}"))?;
            }
            Ok(events.len() as u64)
        }
        Err(e) => Err(anyhow::anyhow!("importing into stream {stream}: {e}")),
    }
}

/// `tidings import`.
pub async fn import(a: ImportArgs) -> Result<()> {
    let file = std::fs::File::open(&a.file)
        .with_context(|| format!("cannot open {}", a.file.display()))?;
    let size = file.metadata()?.len();
    let progress_file = progress_path(&a.file);
    let start: u64 = if a.restart {
        0
    } else {
        std::fs::read_to_string(&progress_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .filter(|&o| o <= size)
            .unwrap_or(0)
    };
    let mut reader = std::io::BufReader::new(file);
    reader.seek(std::io::SeekFrom::Start(start))?;
    if start > 0 {
        eprintln!(
            "resuming at byte {start} of {} (progress in {}; --restart to start over)",
            a.file.display(),
            progress_file.display()
        );
    }
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "importing [{bar:40.cyan/blue}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_position(start);
    let batch = a.batch.max(1);
    with_client!(a.target, |c| {
        let mut offset = start;
        let mut line_no = 0u64;
        let mut pending: Vec<Event> = Vec::new();
        let mut pending_stream = String::new();
        let mut imported = 0u64;
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            let at_end = n == 0;
            if !at_end {
                line_no += 1;
            }
            let record: Option<RecordedEvent> = if at_end || line.trim().is_empty() {
                None
            } else {
                Some(crate::client::parse_recorded(&line).with_context(|| {
                    format!(
                        "{} line {line_no} (after byte {offset}) is not an exported event",
                        a.file.display()
                    )
                })?)
            };
            let flush = at_end
                || pending.len() >= batch
                || record
                    .as_ref()
                    .is_some_and(|r| r.stream.as_str() != pending_stream);
            if flush && !pending.is_empty() {
                imported += import_batch(&c, &pending_stream, std::mem::take(&mut pending)).await?;
                std::fs::write(&progress_file, offset.to_string())
                    .with_context(|| format!("cannot write {}", progress_file.display()))?;
                bar.set_position(offset);
            }
            if at_end {
                break;
            }
            if let Some(r) = record {
                pending_stream = r.stream.to_string();
                pending.push(r.event);
            }
            offset += n as u64;
        }
        bar.finish_and_clear();
        let _ = std::fs::remove_file(&progress_file);
        eprintln!("imported {imported} events from {}", a.file.display());
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tree_nests_children_under_causes() {
        let mk = |i: u64, ty: &str, cause: Option<String>| {
            let mut e = Enricher::new("t")
                .enrich(NewEvent::new(ty, serde_json::json!({})))
                .unwrap();
            e.metadata.causation_id = cause;
            RecordedEvent {
                stream: tidings::StreamId::new("s").unwrap(),
                revision: i,
                position: i,
                recorded_at: jiff::Timestamp::UNIX_EPOCH,
                event: e,
            }
        };
        let a = mk(0, "OrderCreated", Some("user-action".into()));
        let b = mk(1, "PaymentProcessed", Some(a.event_id.to_string()));
        let c = mk(2, "InventoryReserved", Some(a.event_id.to_string()));
        let d = mk(3, "OrderShipped", Some(c.event_id.to_string()));
        let lines = causation_tree(&[a, b, c, d]);
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("OrderCreated") && lines[0].contains("caused by user-action"));
        assert!(lines[1].starts_with("├─ PaymentProcessed"));
        assert!(lines[2].starts_with("└─ InventoryReserved"));
        assert!(lines[3].starts_with("   └─ OrderShipped"));
    }
}
