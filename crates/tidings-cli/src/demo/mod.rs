//! `tidings demo`: the order example end to end, printed as an event-flow table.
//!
//! Two orders are placed through the order service of `examples/order-processing`: one
//! the payment gateway accepts, one over its limit. A refused command is recorded as
//! `ErrorOccurred`. Every event is then read back from the store's global log and
//! printed with its stream, revision, correlation and causation, so the chain
//! `OrderConfirmed → PaymentProcessed → OrderPaymentConfirmed` can be followed.

pub mod services;

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Context;
use jiff::Timestamp;
use order_processing::{OrderCommand, SERVICE, SystemEvent, UserRegistered, wire};
use tidings::{
    DomainEvent, EventStore, ExpectedVersion, InMemoryStore, Metadata, ReadAll, RecordedEvent,
    StreamId,
};

/// Options of `tidings demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// The largest payment the demo's payment gateway accepts.
    #[arg(long, default_value_t = 100.0)]
    pub payment_limit: f64,
    /// Run on the embedded durable store in this directory (default: a fresh temporary
    /// directory, removed afterwards).
    #[arg(long, conflicts_with = "memory")]
    pub data: Option<std::path::PathBuf>,
    /// Run on the in-memory store instead of the embedded one.
    #[arg(long)]
    pub memory: bool,
    /// Run the flow as three services in three processes, each with its own embedded
    /// store, over this broker: nats://HOST:PORT or amqp://USER:PASS@HOST:PORT/VHOST.
    #[arg(long, conflicts_with = "memory")]
    pub bus: Option<String>,
}

/// Runs the demo against the in-memory store (or the embedded store with `--data`) and
/// prints the flow.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(bus) = &args.bus {
        return services::run(bus, args.data.as_deref(), args.payment_limit).await;
    }
    if args.memory {
        let events = run_flow(InMemoryStore::new(), args.payment_limit).await?;
        eprintln!("Store: in memory");
        print!("{}", render(&events));
        return Ok(());
    }
    let temp;
    let dir = match &args.data {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("tidings-demo-")
                .tempdir()
                .context("creating a temporary directory for the demo's store")?;
            temp.path().to_path_buf()
        }
    };
    let store = tidings_log::LogStore::open(&dir)
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    let events = run_flow(store.clone(), args.payment_limit).await?;
    store.close().await?;
    let kept = if args.data.is_some() {
        ""
    } else {
        " (temporary, removed on exit)"
    };
    eprintln!("Store: embedded log in {}{kept}", dir.display());
    print!("{}", render(&events));
    Ok(())
}

/// One order line: product, quantity, unit price.
type Line = (&'static str, u32, f64);

fn stream(name: &str) -> anyhow::Result<StreamId> {
    StreamId::new(name).with_context(|| format!("stream name {name:?}"))
}

/// Runs the order flow on `store` and returns every event of the run, in global order.
pub async fn run_flow<S: EventStore>(
    store: S,
    payment_limit: f64,
) -> anyhow::Result<Vec<RecordedEvent>> {
    // Against a store that already holds events, names get a suffix so runs never clash.
    let first = store.head().await?.map_or(0, |h| h + 1);
    let tag = |name: &str| {
        if first == 0 {
            name.to_owned()
        } else {
            format!("{name}-r{first}")
        }
    };
    let service = wire(store.clone(), payment_limit);
    let system = stream(&format!("service-{SERVICE}"))?;

    let started = SystemEvent::ServiceStarted {
        service_name: SERVICE.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        instance_id: tag("instance-abc"),
    };
    service
        .publisher
        .publish(&system, ExpectedVersion::Any, started.to_new_event()?)
        .await?;

    let user = tag("user-789");
    let registered = UserRegistered {
        user_id: user.clone(),
        email: "user@example.com".to_owned(),
        registration_date: Timestamp::now(),
    };
    service
        .publisher
        .publish(
            &stream(&format!("user-{user}"))?,
            ExpectedVersion::NoStream,
            registered.to_new_event()?.with_user_id(user.clone()),
        )
        .await?;

    let items: [(&str, &[Line]); 2] = [
        (
            "order-123",
            &[("product-789", 2, 29.99), ("product-790", 1, 15.5)],
        ),
        ("order-124", &[("product-555", 1, 450.0)]),
    ];
    for (order_id, lines) in items {
        let order_id = tag(order_id);
        let order_stream = stream(&order_id)?;
        let by_user = Metadata {
            user_id: Some(user.clone()),
            ..Metadata::default()
        };
        let mut order = service.orders.load(&order_stream).await?;
        order.execute(OrderCommand::Create {
            order_id: order_id.clone(),
            customer_id: user.clone(),
        })?;
        for (product, quantity, price) in lines {
            order.execute(OrderCommand::AddItem {
                product_id: (*product).to_owned(),
                quantity: *quantity,
                price: *price,
            })?;
        }
        service
            .orders
            .save_with(&mut order, by_user.clone())
            .await?;

        // The confirmation continues the same business transaction.
        let correlation = store
            .read_stream(&order_stream, tidings::ReadStream::forward().limit(1))
            .await?
            .first()
            .and_then(|e| e.metadata.correlation_id.clone());
        let mut order = service.orders.load(&order_stream).await?;
        order.execute(OrderCommand::Confirm {
            confirmed_at: Timestamp::now(),
        })?;
        let metadata = Metadata {
            correlation_id: correlation,
            ..by_user
        };
        service.orders.save_with(&mut order, metadata).await?;
    }

    // A confirmed order refuses changes; the refusal is recorded for operators.
    let first_order = stream(&tag("order-123"))?;
    let mut order = service.orders.load(&first_order).await?;
    if let Err(refused) = order.execute(OrderCommand::AddItem {
        product_id: "product-999".to_owned(),
        quantity: 1,
        price: 5.0,
    }) {
        let error = SystemEvent::ErrorOccurred {
            service: SERVICE.to_owned(),
            error: refused.to_string(),
            stack_trace: format!("{refused:?}"),
        };
        let mut error = error.to_new_event()?;
        let order_correlation = store
            .read_stream(&first_order, tidings::ReadStream::forward().limit(1))
            .await?
            .first()
            .and_then(|e| e.metadata.correlation_id.clone());
        error.metadata.correlation_id = order_correlation;
        service
            .publisher
            .publish(&system, ExpectedVersion::Any, error)
            .await?;
    }

    Ok(store.read_all(ReadAll::new(first, usize::MAX)).await?)
}

/// The events as an aligned table. Correlation and causation ids that name an event of
/// the table are shown as `#position`.
pub fn render(events: &[RecordedEvent]) -> String {
    let positions: HashMap<String, u64> = events
        .iter()
        .map(|e| (e.event_id.to_string(), e.position))
        .collect();
    let reference = |id: &Option<String>| match id {
        None => "-".to_owned(),
        Some(id) => match positions.get(id) {
            Some(p) => format!("#{p}"),
            None => id.clone(),
        },
    };
    let header = [
        "POSITION",
        "STREAM",
        "REVISION",
        "TYPE",
        "CORRELATION",
        "CAUSATION",
    ];
    let rows: Vec<[String; 6]> = events
        .iter()
        .map(|e| {
            [
                e.position.to_string(),
                e.stream.to_string(),
                e.revision.to_string(),
                e.event_type.clone(),
                reference(&e.metadata.correlation_id),
                reference(&e.metadata.causation_id),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 6]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            // Numbers right-aligned, text left-aligned.
            if i == 0 || i == 2 {
                let _ = write!(text, "{cell:>w$}  ");
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in &rows {
        line(row.each_ref().map(String::as_str));
    }
    let _ = writeln!(
        out,
        "\n{} events. #N is the event at position N: CAUSATION is the event that caused it, \
         CORRELATION the event that began its transaction.",
        events.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_run_on_the_same_store_uses_fresh_names() {
        let store = InMemoryStore::new();
        let first = run_flow(store.clone(), 100.0).await.unwrap();
        let second = run_flow(store.clone(), 100.0).await.unwrap();
        assert_eq!(first.len(), second.len());
        assert_eq!(second[0].position, first.len() as u64);
        assert!(second.iter().any(|e| e.stream.as_str() == "order-123-r14"));
        let table = render(&second);
        assert!(table.contains("OrderPaymentConfirmed"));
        assert_eq!(table.lines().count(), second.len() + 3);
    }
}
