//! [`Middleware`]: steps the dispatcher runs, in order, before any handler sees an event.
//!
//! Three are ready to use: [`LoggingMiddleware`] (a `tracing` line per event),
//! [`MetadataMiddleware`] (adds metadata pairs to what handlers see) and
//! [`FilterMiddleware`] (stops events a predicate refuses).

use std::collections::BTreeMap;
use std::fmt;

use tidings_core::handler::BoxFuture;
use tidings_core::store::RecordedEvent;

/// What a middleware decided.
// `Continue` is the common case; boxing it would allocate for every event dispatched.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Flow {
    /// Go on with this (possibly changed) event.
    Continue(RecordedEvent),
    /// Stop here: no further middleware and no handler sees the event.
    Stop {
        /// Which middleware stopped it.
        by: String,
        /// Why.
        reason: String,
    },
}

/// A step run before the handlers. It may change the event handlers see (never the
/// stored one) or stop it.
pub trait Middleware: Send + Sync + 'static {
    /// Processes one event.
    fn process(&self, event: RecordedEvent) -> BoxFuture<'_, Flow>;
}

/// Logs every dispatched event through `tracing` at INFO.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingMiddleware;

impl LoggingMiddleware {
    /// The logging middleware.
    pub fn new() -> Self {
        Self
    }
}

impl Middleware for LoggingMiddleware {
    fn process(&self, event: RecordedEvent) -> BoxFuture<'_, Flow> {
        tracing::info!(
            stream = %event.stream,
            revision = event.revision,
            position = event.position,
            event_type = %event.event_type,
            event_id = %event.event_id,
            correlation_id = event.metadata.correlation_id.as_deref().unwrap_or("-"),
            causation_id = event.metadata.causation_id.as_deref().unwrap_or("-"),
            "dispatching event"
        );
        Box::pin(std::future::ready(Flow::Continue(event)))
    }
}

/// Adds metadata pairs to the event handlers see, never overwriting a pair it has.
///
/// ```
/// use tidings::bus::MetadataMiddleware;
/// let m = MetadataMiddleware::new().with("dispatchedBy", "billing-worker");
/// # let _ = m;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MetadataMiddleware {
    pairs: BTreeMap<String, String>,
}

impl MetadataMiddleware {
    /// Adds nothing until told.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key = value`.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.pairs.insert(key.into(), value.into());
        self
    }
}

impl Middleware for MetadataMiddleware {
    fn process(&self, mut event: RecordedEvent) -> BoxFuture<'_, Flow> {
        for (k, v) in &self.pairs {
            event
                .event
                .metadata
                .extra
                .entry(k.clone())
                .or_insert_with(|| v.clone());
        }
        Box::pin(std::future::ready(Flow::Continue(event)))
    }
}

/// Lets through only events a predicate accepts.
///
/// ```
/// use tidings::bus::FilterMiddleware;
/// let only_orders = FilterMiddleware::new("orders-only", |e| e.stream.as_str().starts_with("order-"));
/// # let _ = only_orders;
/// ```
pub struct FilterMiddleware {
    name: String,
    accept: Box<dyn Fn(&RecordedEvent) -> bool + Send + Sync>,
}

impl fmt::Debug for FilterMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilterMiddleware")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl FilterMiddleware {
    /// A filter called `name` accepting events for which `accept` is true.
    pub fn new(
        name: impl Into<String>,
        accept: impl Fn(&RecordedEvent) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            accept: Box::new(accept),
        }
    }
}

impl Middleware for FilterMiddleware {
    fn process(&self, event: RecordedEvent) -> BoxFuture<'_, Flow> {
        let flow = if (self.accept)(&event) {
            Flow::Continue(event)
        } else {
            tracing::debug!(filter = %self.name, event_type = %event.event_type, "event filtered out");
            Flow::Stop {
                by: self.name.clone(),
                reason: format!("filter {} refused {}", self.name, event.event_type),
            }
        };
        Box::pin(std::future::ready(flow))
    }
}
