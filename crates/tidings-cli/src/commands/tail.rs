//! `tidings tail`: follow new events live (all streams, or one).

use anyhow::Result;
use clap::Args;
use futures::StreamExt;

use super::table::short;
use super::target::{Target, with_client};
use crate::client::Client;

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
pub async fn run(a: TailArgs) -> Result<()> {
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
