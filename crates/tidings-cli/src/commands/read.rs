//! `tidings read`: read a stream.

use anyhow::Result;
use clap::Args;
use tidings::{Direction, ReadStream, RecordedEvent};

use super::table::{print_table, short};
use super::target::{Target, with_client};
use crate::client::Client;

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
pub async fn run(a: ReadArgs) -> Result<()> {
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
