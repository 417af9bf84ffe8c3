//! The Order aggregate, given/when/then.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use jiff::Timestamp;
use order_processing::events::upcasters;
use order_processing::{Order, OrderCommand, OrderError, OrderEvent, OrderItem, OrderStatus};
use tidings_testkit::Scenario;

fn created() -> OrderEvent {
    OrderEvent::OrderCreated {
        order_id: "order-123".into(),
        customer_id: "customer-456".into(),
        items: vec![],
        total_amount: 0.0,
        status: OrderStatus::Draft,
        currency: "USD".into(),
        shipping_address: None,
    }
}

fn added(product: &str, quantity: u32, price: f64) -> OrderEvent {
    OrderEvent::ItemAddedToOrder {
        order_id: "order-123".into(),
        product_id: product.into(),
        quantity,
        price,
    }
}

fn item(product: &str, quantity: u32, price: f64) -> OrderItem {
    OrderItem {
        product_id: product.into(),
        quantity,
        price,
    }
}

fn add(product: &str, quantity: u32, price: f64) -> OrderCommand {
    OrderCommand::AddItem {
        product_id: product.into(),
        quantity,
        price,
    }
}

fn noon() -> Timestamp {
    "2024-01-15T12:00:00Z".parse().unwrap()
}

fn confirmed() -> OrderEvent {
    OrderEvent::OrderConfirmed {
        order_id: "order-123".into(),
        customer_id: "customer-456".into(),
        items: vec![item("product-789", 2, 29.99)],
        total_amount: 59.98,
        confirmed_at: noon(),
    }
}

#[test]
fn an_order_is_created_as_a_draft() {
    Scenario::<Order>::new()
        .when(OrderCommand::Create {
            order_id: "order-123".into(),
            customer_id: "customer-456".into(),
        })
        .then_expect_events([created()])
        .then_state(|o| assert_eq!(o.status, Some(OrderStatus::Draft)));
}

#[test]
fn an_order_is_created_once_and_needs_ids() {
    Scenario::<Order>::new()
        .given([created()])
        .when(OrderCommand::Create {
            order_id: "order-123".into(),
            customer_id: "c".into(),
        })
        .then_expect_error(OrderError::AlreadyCreated {
            order_id: "order-123".into(),
        });
    Scenario::<Order>::new()
        .when(OrderCommand::Create {
            order_id: String::new(),
            customer_id: "c".into(),
        })
        .then_expect_error(OrderError::MissingId { field: "orderId" });
    Scenario::<Order>::new()
        .when(OrderCommand::Create {
            order_id: "o".into(),
            customer_id: String::new(),
        })
        .then_expect_error(OrderError::MissingId {
            field: "customerId",
        });
}

#[test]
fn items_can_be_added_while_draft_and_the_total_is_computed() {
    Scenario::<Order>::new()
        .given([created(), added("product-789", 2, 29.99)])
        .when(add("product-790", 3, 0.1))
        .then_expect_events([added("product-790", 3, 0.1)])
        .then_state(|o| {
            assert_eq!(o.items.len(), 2);
            assert_eq!(o.total(), 60.28);
        });
}

#[test]
fn bad_items_are_refused() {
    let given = || Scenario::<Order>::new().given([created()]);
    given()
        .when(add("p", 0, 1.0))
        .then_expect_error(OrderError::InvalidQuantity);
    given()
        .when(add("p", 1, -1.0))
        .then_expect_error(OrderError::InvalidPrice { price: -1.0 });
    given()
        .when(add("p", 1, f64::NAN))
        .then_expect_error_matching(|e| matches!(e, OrderError::InvalidPrice { .. }));
    given()
        .when(add("", 1, 1.0))
        .then_expect_error(OrderError::MissingId { field: "productId" });
    Scenario::<Order>::new()
        .when(add("p", 1, 1.0))
        .then_expect_error(OrderError::NotCreated);
}

#[test]
fn a_draft_is_confirmed_with_its_items_and_total() {
    Scenario::<Order>::new()
        .given([created(), added("product-789", 2, 29.99)])
        .when(OrderCommand::Confirm {
            confirmed_at: noon(),
        })
        .then_expect_events([confirmed()])
        .then_state(|o| assert_eq!(o.status, Some(OrderStatus::Confirmed)));
}

#[test]
fn only_a_draft_can_be_confirmed_or_changed() {
    let confirmed_order =
        || Scenario::<Order>::new().given([created(), added("product-789", 2, 29.99), confirmed()]);
    let not_draft = OrderError::NotDraft {
        order_id: "order-123".into(),
        status: OrderStatus::Confirmed,
    };
    confirmed_order()
        .when(OrderCommand::Confirm {
            confirmed_at: noon(),
        })
        .then_expect_error(not_draft.clone());
    confirmed_order()
        .when(add("p", 1, 1.0))
        .then_expect_error(not_draft);
    Scenario::<Order>::new()
        .given([created()])
        .when(OrderCommand::Confirm {
            confirmed_at: noon(),
        })
        .then_expect_error(OrderError::Empty {
            order_id: "order-123".into(),
        });
    Scenario::<Order>::new()
        .when(OrderCommand::Confirm {
            confirmed_at: noon(),
        })
        .then_expect_error(OrderError::NotCreated);
}

#[test]
fn the_stored_order_created_fixture_version_1_0_reads_as_2_0() {
    let fixture: tidings::NewEvent =
        serde_json::from_str(include_str!("../../../fixtures/order-created.json")).unwrap();
    assert_eq!(fixture.event_version.as_deref(), Some("1.0"));
    Scenario::<Order>::new()
        .with_upcasters(upcasters())
        .given_stored([fixture])
        .when(OrderCommand::Confirm {
            confirmed_at: noon(),
        })
        .then_expect_events([OrderEvent::OrderConfirmed {
            order_id: "order-123".into(),
            customer_id: "customer-456".into(),
            items: vec![item("product-789", 2, 29.99), item("product-790", 1, 0.0)],
            total_amount: 59.98,
            confirmed_at: noon(),
        }]);
}
