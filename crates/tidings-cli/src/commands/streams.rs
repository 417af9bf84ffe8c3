//! `tidings streams`: list streams.

use anyhow::Result;
use clap::Args;

use super::table::print_table;
use super::target::{Target, with_client};
use crate::client::Client;

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
pub async fn run(a: StreamsArgs) -> Result<()> {
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
