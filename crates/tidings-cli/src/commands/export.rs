//! `tidings export`: every event as NDJSON.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::progress;
use super::target::{Target, with_client};
use crate::client::Client;

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

/// `tidings export`.
pub async fn run(a: ExportArgs) -> Result<()> {
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
        let bar = progress::events(total, "exporting");
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
