//! `tidings correlation`: print the causation tree of one business transaction.

use std::collections::HashMap;

use anyhow::{Result, bail};
use clap::Args;
use tidings::RecordedEvent;

use super::target::{Target, with_client};
use crate::client::Client;

/// Options of `tidings correlation`.
#[derive(Debug, Args)]
pub struct CorrelationArgs {
    /// The correlation id.
    id: String,
    #[command(flatten)]
    target: Target,
}

/// `tidings correlation`.
pub async fn run(a: CorrelationArgs) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tidings::{Enricher, NewEvent};

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
