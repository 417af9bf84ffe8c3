//! The order saga under the simulator: duplicates, reordering across streams, transient
//! command failures (before and after the work) and crashes reach the same outcome as a
//! clean run. Prints its seed; replay with `TIDINGS_SEED`, soak with `TIDINGS_SOAK`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use order_processing::{OrderProcessingSaga, ServiceConfig, services};
use serde_json::json;
use tidings::saga::{Saga, SagaRuntime};
use tidings::{
    Enricher, EventAppender, ExpectedVersion, Filter, InMemoryStore, NewEvent, StreamId,
};
use tidings_testkit::seed::{rounds, seed};
use tidings_testkit::simulator::{
    FaultPlan, Outcome, RuntimeFactory, SagaTarget, SimReport, Simulator,
};

fn config() -> ServiceConfig {
    ServiceConfig {
        payment_limit: 100.0,
        out_of_stock: vec!["product-sold-out".into()],
    }
}

/// Six orders: three that complete, one whose payment fails, two that are refunded and
/// cancelled for want of stock.
async fn place_orders(store: &InMemoryStore) {
    let orders = [
        ("order-1", "product-1", 10.0),
        ("order-2", "product-sold-out", 20.0),
        ("order-3", "product-2", 500.0),
        ("order-4", "product-3", 30.0),
        ("order-5", "product-sold-out", 40.0),
        ("order-6", "product-4", 50.0),
    ];
    for (order_id, product, total) in orders {
        let created = Enricher::new("order-service")
            .enrich(NewEvent::new(
                "OrderCreated",
                json!({
                    "orderId": order_id,
                    "customerId": "customer-456",
                    "items": [{"productId": product, "quantity": 1, "price": total}],
                    "totalAmount": total,
                }),
            ))
            .unwrap();
        store
            .append(
                &StreamId::new(order_id).unwrap(),
                ExpectedVersion::NoStream,
                vec![created],
            )
            .await
            .unwrap();
    }
}

async fn run(seed: u64, plan: FaultPlan) -> (Outcome, SimReport, usize) {
    let store = InMemoryStore::new();
    place_orders(&store).await;
    let simulator = Simulator::with_seed(seed, plan);
    let faults = simulator.faults();
    let factory: RuntimeFactory<InMemoryStore, OrderProcessingSaga> = {
        let store = store.clone();
        let faults = faults.clone();
        Box::new(move || {
            let store = store.clone();
            let faults = faults.clone();
            Box::pin(async move {
                services(&store, &config())
                    .into_iter()
                    .fold(
                        SagaRuntime::builder(store.clone(), OrderProcessingSaga::default()),
                        |b, (name, handler)| b.command_handler(name, faults.wrap(handler)),
                    )
                    .build()
                    .await
            })
        })
    };
    let filter = OrderProcessingSaga::EVENT_TYPES
        .iter()
        .fold(Filter::all(), |f, t| f.event_type(*t));
    let mut target = SagaTarget::new(factory);
    let report = simulator
        .run(&store, filter, &mut target)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let runtime = target.runtime().expect("the target settled, so it is up");
    assert!(runtime.stalled_instances().is_empty(), "seed {seed}");
    assert!(
        runtime.live_instances().is_empty(),
        "seed {seed}: every order finished"
    );
    (
        Outcome::read(&store).await.unwrap(),
        report,
        faults.injected(),
    )
}

fn types(outcome: &Outcome, stream: &str) -> Vec<String> {
    outcome.0.get(stream).map_or_else(Vec::new, |events| {
        events.iter().map(|(t, _)| t.clone()).collect()
    })
}

#[tokio::test]
async fn the_order_saga_reaches_the_clean_outcome_despite_faults() {
    let base = seed("the_order_saga_reaches_the_clean_outcome_despite_faults");
    let (clean, clean_report, _) = run(base, FaultPlan::none()).await;
    assert_eq!(clean_report.crashes + clean_report.failures, 0);
    assert_eq!(types(&clean, "fulfilment-order-1"), ["OrderCompleted"]);
    assert_eq!(types(&clean, "fulfilment-order-2"), ["OrderCancelled"]);
    assert_eq!(
        types(&clean, "payment-pay-order-2"),
        ["PaymentProcessed", "PaymentRefunded"]
    );
    assert_eq!(types(&clean, "fulfilment-order-3"), ["OrderCancelled"]);
    assert_eq!(types(&clean, "payment-pay-order-3"), ["PaymentProcessed"]);
    assert_eq!(types(&clean, "shipping-order-6"), ["ShippingScheduled"]);

    let mut total = SimReport::default();
    let mut injected = 0;
    for round in 0..rounds(12) {
        let seed = base.wrapping_add(u64::from(round));
        let (outcome, report, faults) = run(seed, FaultPlan::chaos()).await;
        let differences = outcome.differences(&clean);
        assert!(
            differences.is_empty(),
            "seed {seed} ({report:?}) reached another outcome (this run vs the clean one); \
             replay with TIDINGS_SEED={base}:\n{}",
            differences.join("\n")
        );
        total.deliveries += report.deliveries;
        total.duplicates += report.duplicates;
        total.reorders += report.reorders;
        total.crashes += report.crashes;
        total.failures += report.failures;
        injected += faults;
    }
    eprintln!("{total:?}, {injected} injected command failures");
    assert!(total.duplicates > 0 && total.reorders > 0 && total.crashes > 0);
    assert!(injected > 0 && total.failures > 0);
}
