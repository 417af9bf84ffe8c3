//! The `Order` aggregate: items can be added while it is a draft, only a draft can be
//! confirmed, and the total is computed from its items.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tidings::aggregate::Aggregate;

use crate::events::{OrderEvent, OrderItem, OrderStatus};

/// The currency every order is kept in.
pub const CURRENCY: &str = "USD";

/// What an order can be asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    /// Open a new draft order.
    Create {
        /// The order's id.
        order_id: String,
        /// Its customer.
        customer_id: String,
    },
    /// Add an item to a draft order.
    AddItem {
        /// The product.
        product_id: String,
        /// How many (at least 1).
        quantity: u32,
        /// Unit price (finite, not negative).
        price: f64,
    },
    /// Confirm a draft order.
    Confirm {
        /// When the customer confirmed.
        confirmed_at: Timestamp,
    },
}

/// Why an order refused a command. A refused command records nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrderError {
    /// `Create` on an order that exists.
    #[error("order {order_id} already exists")]
    AlreadyCreated {
        /// The order.
        order_id: String,
    },
    /// Anything but `Create` on an order that does not exist.
    #[error("the order does not exist")]
    NotCreated,
    /// An empty order or customer id.
    #[error("{field} must not be empty")]
    MissingId {
        /// Which id.
        field: &'static str,
    },
    /// A change to an order that is no longer a draft.
    #[error("can only change draft orders; order {order_id} is {status}")]
    NotDraft {
        /// The order.
        order_id: String,
        /// Its status.
        status: OrderStatus,
    },
    /// A quantity of zero.
    #[error("quantity must be at least 1")]
    InvalidQuantity,
    /// A negative, infinite or NaN price.
    #[error("price {price} is not a price")]
    InvalidPrice {
        /// The refused price.
        price: f64,
    },
    /// Confirming an order without items.
    #[error("order {order_id} has no items to confirm")]
    Empty {
        /// The order.
        order_id: String,
    },
}

/// An order, as folded from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    /// Its id (empty until created).
    pub order_id: String,
    /// Its customer.
    pub customer_id: String,
    /// Its items, in the order they were added.
    pub items: Vec<OrderItem>,
    /// None until created.
    pub status: Option<OrderStatus>,
}

impl Order {
    /// The sum of quantity × price over the items, rounded to cents.
    pub fn total(&self) -> f64 {
        let sum: f64 = self
            .items
            .iter()
            .map(|i| f64::from(i.quantity) * i.price)
            .sum();
        (sum * 100.0).round() / 100.0
    }

    fn draft(&self) -> Result<(), OrderError> {
        match self.status {
            None => Err(OrderError::NotCreated),
            Some(OrderStatus::Draft) => Ok(()),
            Some(status) => Err(OrderError::NotDraft {
                order_id: self.order_id.clone(),
                status,
            }),
        }
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = "Order";
    const SNAPSHOT_VERSION: &'static str = "1";
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Create {
                order_id,
                customer_id,
            } => {
                if self.status.is_some() {
                    return Err(OrderError::AlreadyCreated {
                        order_id: self.order_id.clone(),
                    });
                }
                if order_id.is_empty() {
                    return Err(OrderError::MissingId { field: "orderId" });
                }
                if customer_id.is_empty() {
                    return Err(OrderError::MissingId {
                        field: "customerId",
                    });
                }
                Ok(vec![OrderEvent::OrderCreated {
                    order_id,
                    customer_id,
                    items: Vec::new(),
                    total_amount: 0.0,
                    status: OrderStatus::Draft,
                    currency: CURRENCY.to_owned(),
                    shipping_address: None,
                }])
            }
            OrderCommand::AddItem {
                product_id,
                quantity,
                price,
            } => {
                self.draft()?;
                if product_id.is_empty() {
                    return Err(OrderError::MissingId { field: "productId" });
                }
                if quantity == 0 {
                    return Err(OrderError::InvalidQuantity);
                }
                if !price.is_finite() || price < 0.0 {
                    return Err(OrderError::InvalidPrice { price });
                }
                Ok(vec![OrderEvent::ItemAddedToOrder {
                    order_id: self.order_id.clone(),
                    product_id,
                    quantity,
                    price,
                }])
            }
            OrderCommand::Confirm { confirmed_at } => {
                self.draft()?;
                if self.items.is_empty() {
                    return Err(OrderError::Empty {
                        order_id: self.order_id.clone(),
                    });
                }
                Ok(vec![OrderEvent::OrderConfirmed {
                    order_id: self.order_id.clone(),
                    customer_id: self.customer_id.clone(),
                    items: self.items.clone(),
                    total_amount: self.total(),
                    confirmed_at,
                }])
            }
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::OrderCreated {
                order_id,
                customer_id,
                items,
                status,
                ..
            } => {
                self.order_id.clone_from(order_id);
                self.customer_id.clone_from(customer_id);
                self.items.clone_from(items);
                self.status = Some(*status);
            }
            OrderEvent::ItemAddedToOrder {
                product_id,
                quantity,
                price,
                ..
            } => self.items.push(OrderItem {
                product_id: product_id.clone(),
                quantity: *quantity,
                price: *price,
            }),
            OrderEvent::OrderConfirmed { .. } => self.status = Some(OrderStatus::Confirmed),
        }
    }
}
