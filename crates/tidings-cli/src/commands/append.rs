//! `tidings append`: append one event to a stream.

use anyhow::{Context, Result};
use clap::Args;
use tidings::{Enricher, ExpectedVersion, NewEvent, Payload};

use super::table::{print_table, short};
use super::target::{AppendTarget, Target, with_client};
use crate::client::{Client, ClientError};

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
pub async fn run(a: AppendArgs) -> Result<()> {
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
