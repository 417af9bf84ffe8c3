//! `tidings import`: NDJSON exported by `tidings export` (resumable, idempotent by event id).

use std::io::{BufRead, Seek};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use tidings::{Event, ExpectedVersion, RecordedEvent};

use super::progress;
use super::target::{Target, with_client};
use crate::client::{Client, ClientError};

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
pub async fn run(a: ImportArgs) -> Result<()> {
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
    let bar = progress::import_bytes(size);
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
