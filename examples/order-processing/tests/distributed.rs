//! The order flow as three services, each with its own store, over one broker: here the
//! in-memory transport, in one process. (`tidings-cli/tests/demo_services.rs` runs them
//! as three processes over NATS and kills the payment service mid-flow.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::time::Duration;

use order_processing::ServiceConfig;
use order_processing::distributed::{
    Names, Role, declare_groups, demo_orders, place_orders, run_service,
};
use tidings::transport::InMemoryTransport;
use tidings::{EventReader, InMemoryStore, ReadAll, RecordedEvent};

async fn all(store: &InMemoryStore) -> Vec<RecordedEvent> {
    store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_services_complete_one_order_and_cancel_the_other() {
    let names = Names::new("t1");
    let bus = InMemoryTransport::new();
    let config = ServiceConfig {
        payment_limit: 100.0,
        out_of_stock: vec![],
    };
    let stores: Vec<(Role, InMemoryStore)> = Role::ALL
        .iter()
        .map(|r| (*r, InMemoryStore::new()))
        .collect();
    declare_groups(&bus, &names).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut services = Vec::new();
    for (role, store) in &stores {
        let (role, store, bus, names, config) = (
            *role,
            store.clone(),
            bus.clone(),
            names.clone(),
            config.clone(),
        );
        let mut stopped = stopped.clone();
        services.push(tokio::spawn(async move {
            run_service(role, &names, store, bus, &config, None, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await
            .map_err(|e| e.to_string())
        }));
    }
    let order_store = &stores[0].1;
    let orders = demo_orders(&names);
    place_orders(order_store, &orders).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (completed, cancelled) = loop {
        let events = all(order_store).await;
        let done = |t: &str| {
            events
                .iter()
                .filter(|e| e.event_type == t)
                .map(|e| e.data.to_value()["orderId"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        let (completed, cancelled) = (done("OrderCompleted"), done("OrderCancelled"));
        if completed.len() + cancelled.len() == 2 {
            break (completed, cancelled);
        }
        if tokio::time::Instant::now() >= deadline {
            for (role, store) in &stores {
                let types: Vec<String> = all(store)
                    .await
                    .iter()
                    .map(|e| format!("{}:{}", e.stream, e.event_type))
                    .collect();
                eprintln!("{}: {types:?}", role.name());
            }
            panic!("the flow stalled");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(completed, vec![orders[0].0.clone()]);
    assert_eq!(cancelled, vec![orders[1].0.clone()]);
    stop.send(true).unwrap();
    for s in services {
        s.await.unwrap().unwrap();
    }

    // Each service recorded only its own answers; the payment was taken once per order.
    let payments = all(&stores[1].1).await;
    let processed: Vec<_> = payments
        .iter()
        .filter(|e| e.event_type == "PaymentProcessed")
        .collect();
    assert_eq!(processed.len(), 2, "{payments:?}");
    let fulfilment = all(&stores[2].1).await;
    assert!(
        fulfilment
            .iter()
            .any(|e| e.event_type == "ShippingScheduled")
    );
    assert!(
        !fulfilment
            .iter()
            .any(|e| e.event_type == "PaymentProcessed")
    );
    // The order completed through events recorded by the other two services, each
    // caused by the command that asked for it.
    let order_events = all(order_store).await;
    let shipped = order_events
        .iter()
        .find(|e| e.event_type == "ShippingScheduled")
        .unwrap();
    let cause = shipped.metadata.causation_id.clone().unwrap();
    let command = order_events
        .iter()
        .find(|e| e.event_id.to_string() == cause)
        .unwrap();
    assert_eq!(command.event_type, "ScheduleShipping");
}
