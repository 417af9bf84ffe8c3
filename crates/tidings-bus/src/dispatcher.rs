//! [`Dispatcher`]: handlers per event type and for all types, behind a middleware chain.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use super::Dispatch;
use super::middleware::{Flow, Middleware};
use super::outcome::DispatchReport;
use super::run::run_handler;
use tidings_core::handler::{BoxFuture, EventHandler};
use tidings_core::store::RecordedEvent;

#[derive(Clone)]
struct Registered {
    name: String,
    handler: Arc<dyn EventHandler>,
}

#[derive(Default)]
struct Registry {
    by_type: HashMap<String, Vec<Registered>>,
    all_types: Vec<Registered>,
    middleware: Vec<Arc<dyn Middleware>>,
}

/// Routes events to handlers.
///
/// Each dispatch runs the middleware chain in order, then every handler registered for
/// the event's type and every handler for all types, concurrently, and reports each
/// handler's outcome and duration; one handler's failure never stops another. Each
/// handler call runs in a `tracing` span named `handler` that records its duration, and
/// with the event as its [`Cause`](super::Cause). An event that no handler takes is
/// reported through a `tracing` warning.
///
/// Clones share one registry, so handlers may be added after the dispatcher is handed to
/// a [`Publisher`](super::Publisher).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::bus::{Dispatcher, HandlerError, LoggingMiddleware, handler_fn};
/// let dispatcher = Dispatcher::new();
/// dispatcher.add_middleware(LoggingMiddleware::new());
/// dispatcher.on("OrderCreated", "send-email", handler_fn(|_e| async { Ok(()) }));
/// dispatcher.on("OrderCreated", "reserve-stock", handler_fn(|_e| async {
///     Err(HandlerError::new("warehouse unreachable"))
/// }));
/// # let event = tidings::RecordedEvent { stream: tidings::StreamId::new("order-1").unwrap(),
/// #   revision: 0, position: 0, recorded_at: jiff::Timestamp::UNIX_EPOCH,
/// #   event: tidings::Enricher::new("s").enrich(tidings::NewEvent::new("OrderCreated",
/// #   serde_json::json!({}))).unwrap() };
/// let report = dispatcher.dispatch(event).await;
/// assert_eq!(report.outcomes.len(), 2);
/// assert_eq!(report.failures().count(), 1);
/// # });
/// ```
#[derive(Clone, Default)]
pub struct Dispatcher {
    registry: Arc<RwLock<Registry>>,
}

impl fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.read();
        f.debug_struct("Dispatcher")
            .field("event_types", &r.by_type.keys().collect::<Vec<_>>())
            .field("all_types_handlers", &r.all_types.len())
            .field("middleware", &r.middleware.len())
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher with no handlers and no middleware.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `handler`, called `name`, for events of `event_type`. A type may have
    /// several handlers.
    pub fn on(
        &self,
        event_type: impl Into<String>,
        name: impl Into<String>,
        handler: impl EventHandler,
    ) -> &Self {
        self.write()
            .by_type
            .entry(event_type.into())
            .or_default()
            .push(Registered {
                name: name.into(),
                handler: Arc::new(handler),
            });
        self
    }

    /// Registers `handler`, called `name`, for events of every type.
    pub fn on_all(&self, name: impl Into<String>, handler: impl EventHandler) -> &Self {
        self.write().all_types.push(Registered {
            name: name.into(),
            handler: Arc::new(handler),
        });
        self
    }

    /// Appends a middleware to the chain.
    pub fn add_middleware(&self, middleware: impl Middleware) -> &Self {
        self.write().middleware.push(Arc::new(middleware));
        self
    }

    /// How many handlers an event of `event_type` would reach.
    pub fn handler_count(&self, event_type: &str) -> usize {
        let r = self.read();
        r.by_type.get(event_type).map_or(0, Vec::len) + r.all_types.len()
    }

    /// Dispatches one event: middleware, then every matching handler concurrently.
    pub async fn dispatch(&self, event: RecordedEvent) -> DispatchReport {
        let mut report = DispatchReport::new(event.event_id, event.event_type.clone());
        let middleware = self.read().middleware.clone();
        let mut event = event;
        for m in middleware {
            match m.process(event).await {
                Flow::Continue(next) => event = next,
                Flow::Stop { by, reason } => {
                    report.stopped = Some((by, reason));
                    return report;
                }
            }
        }
        let handlers: Vec<Registered> = {
            let r = self.read();
            r.by_type
                .get(&event.event_type)
                .into_iter()
                .flatten()
                .chain(&r.all_types)
                .cloned()
                .collect()
        };
        if handlers.is_empty() {
            tracing::warn!(
                event_type = %event.event_type,
                event_id = %event.event_id,
                stream = %event.stream,
                "no handler registered for event type {}",
                event.event_type
            );
            return report;
        }
        let event = &event;
        report.outcomes = futures::future::join_all(
            handlers
                .iter()
                .map(|h| run_handler(&h.name, h.handler.as_ref(), event)),
        )
        .await;
        report
    }
}

impl Dispatch for Dispatcher {
    fn dispatch(&self, event: RecordedEvent) -> BoxFuture<'_, DispatchReport> {
        Box::pin(Dispatcher::dispatch(self, event))
    }
}

/// A dispatcher is itself a handler, so a consumer (a `ConsumerGroup` member, a
/// `BrokerConsumer`) can feed one: every matching handler runs; the call fails when any
/// of them failed, with each failure as `"<handler>: <error>"` joined by `"; "`. A
/// middleware that stops the event counts as success (it chose to drop it). A retry runs
/// every handler again — the ones that succeeded included — so handlers behind a
/// retrying consumer must be idempotent.
impl EventHandler for Dispatcher {
    fn handle<'a>(
        &'a self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), tidings_core::handler::HandlerError>> {
        Box::pin(async move {
            let report = Dispatcher::dispatch(self, event.clone()).await;
            let failures: Vec<String> = report
                .failures()
                .map(|o| match &o.result {
                    Err(e) => format!("{}: {e}", o.handler),
                    Ok(()) => o.handler.clone(),
                })
                .collect();
            if failures.is_empty() {
                Ok(())
            } else {
                Err(tidings_core::handler::HandlerError::new(
                    failures.join("; "),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use tidings_core::handler::{HandlerError, current_cause, handler_fn};
    use tidings_core::{Enricher, NewEvent, StreamId};

    fn recorded(event_type: &str) -> RecordedEvent {
        RecordedEvent {
            stream: StreamId::new("order-1").unwrap(),
            revision: 0,
            position: 0,
            recorded_at: jiff::Timestamp::UNIX_EPOCH,
            event: Enricher::new("s")
                .enrich(NewEvent::new(event_type, serde_json::json!({})))
                .unwrap(),
        }
    }

    #[tokio::test]
    async fn a_dispatcher_is_an_event_handler() {
        let d = Dispatcher::new();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = seen.clone();
        d.on(
            "A",
            "ok",
            handler_fn(move |e: RecordedEvent| {
                let s = s.clone();
                async move {
                    s.lock()
                        .unwrap()
                        .push(current_cause().map(|c| c.event_id) == Some(e.event_id));
                    Ok(())
                }
            }),
        );
        d.on(
            "B",
            "broken",
            handler_fn(|_e| async { Err(HandlerError::new("boom")) }),
        );
        let as_handler: &dyn EventHandler = &d;
        as_handler.handle(&recorded("A")).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![true]);
        let err = as_handler.handle(&recorded("B")).await.unwrap_err();
        assert_eq!(err.message(), "broken: boom");
        // No handler for the type: nothing failed.
        as_handler.handle(&recorded("C")).await.unwrap();
    }
}
