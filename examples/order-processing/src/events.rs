//! The order domain's events: their type names and their camelCase JSON fields.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidings::{Upcaster, Upcasters};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderItem {
    /// The product.
    pub product_id: String,
    /// How many.
    pub quantity: u32,
    /// Unit price.
    pub price: f64,
}

/// Where an order ships.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    /// Street and number.
    pub street: String,
    /// City.
    pub city: String,
    /// Postal code.
    pub zip: String,
}

/// An order's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Being put together: items can be added.
    Draft,
    /// Confirmed by the customer: no more changes.
    Confirmed,
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Draft => "draft",
            Self::Confirmed => "confirmed",
        })
    }
}

/// What happens to an order. `OrderCreated` is at schema version 2.0 (version 1.0 had no
/// currency and called a draft "pending"; see [`upcasters`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "data", rename_all_fields = "camelCase")]
pub enum OrderEvent {
    /// An order was opened for a customer.
    OrderCreated {
        /// The order.
        order_id: String,
        /// Its customer.
        customer_id: String,
        /// Items it starts with.
        items: Vec<OrderItem>,
        /// Their total.
        total_amount: f64,
        /// Always draft when created.
        status: OrderStatus,
        /// ISO 4217 currency of every amount (new in 2.0).
        currency: String,
        /// Where it ships, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        shipping_address: Option<Address>,
    },
    /// An item was added to a draft order.
    ItemAddedToOrder {
        /// The order.
        order_id: String,
        /// The product.
        product_id: String,
        /// How many.
        quantity: u32,
        /// Unit price.
        price: f64,
    },
    /// The customer confirmed the order.
    OrderConfirmed {
        /// The order.
        order_id: String,
        /// Its customer.
        customer_id: String,
        /// Everything ordered.
        items: Vec<OrderItem>,
        /// What it costs.
        total_amount: f64,
        /// When.
        confirmed_at: Timestamp,
    },
}

tidings::domain_event!(OrderEvent {
    OrderCreated => "2.0",
    ItemAddedToOrder => "1.0",
    OrderConfirmed => "1.0",
});

/// How a payment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PaymentStatus {
    /// The money was taken.
    Successful,
    /// It was not.
    Failed,
}

/// What happens to payments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "data", rename_all_fields = "camelCase")]
pub enum PaymentEvent {
    /// The payment provider answered.
    PaymentProcessed {
        /// The payment.
        payment_id: String,
        /// The order paid for.
        order_id: String,
        /// How much.
        amount: f64,
        /// Whether it went through.
        status: PaymentStatus,
        /// Why not, when it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure_reason: Option<String>,
    },
    /// The order is paid.
    OrderPaymentConfirmed {
        /// The order.
        order_id: String,
        /// The payment.
        payment_id: String,
    },
    /// The order's payment failed.
    OrderPaymentFailed {
        /// The order.
        order_id: String,
        /// The payment.
        payment_id: String,
        /// The provider's reason.
        reason: Option<String>,
    },
}

tidings::domain_event!(PaymentEvent {
    PaymentProcessed => "1.0",
    OrderPaymentConfirmed => "1.0",
    OrderPaymentFailed => "1.0",
});

/// A user signed up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRegistered {
    /// The user.
    pub user_id: String,
    /// Their email address.
    pub email: String,
    /// When.
    pub registration_date: Timestamp,
}

tidings::domain_event!(struct UserRegistered => "1.0");

/// What services say about themselves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "data", rename_all_fields = "camelCase")]
pub enum SystemEvent {
    /// A service instance started.
    ServiceStarted {
        /// The service.
        service_name: String,
        /// Its version.
        version: String,
        /// This instance.
        instance_id: String,
    },
    /// A service hit an error worth recording.
    ErrorOccurred {
        /// The service.
        service: String,
        /// What went wrong.
        error: String,
        /// Where, when known.
        stack_trace: String,
    },
}

tidings::domain_event!(SystemEvent {
    ServiceStarted => "1.0",
    ErrorOccurred => "1.0",
});

/// Upcasters for stored order events: `OrderCreated` 1.0 (no currency, status
/// `"pending"`) reads as 2.0 (currency `"USD"`, status `"draft"`).
pub fn upcasters() -> Upcasters {
    let mut set = Upcasters::new();
    let order_created = Upcaster::new("OrderCreated", "1.0", "2.0", |mut data| {
        let serde_json::Value::Object(map) = &mut data else {
            return Err("OrderCreated 1.0 data is not an object".to_owned());
        };
        map.entry("currency").or_insert_with(|| json!("USD"));
        if map.get("status").and_then(|s| s.as_str()) == Some("pending") {
            map.insert("status".to_owned(), json!("draft"));
        }
        map.entry("items").or_insert_with(|| json!([]));
        Ok(data)
    });
    // The set is empty, so adding one upcaster can neither duplicate nor cycle.
    if let Err(e) = set.add(order_created) {
        tracing::error!(error = %e, "order upcasters refused");
    }
    set
}
