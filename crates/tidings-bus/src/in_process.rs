//! [`InProcessBus`]: synchronous subscribers awaited in order, asynchronous ones spawned.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::task::JoinHandle;

use super::Dispatch;
use super::outcome::DispatchReport;
use super::run::run_handler;
use tidings_core::handler::{BoxFuture, EventHandler};
use tidings_core::store::RecordedEvent;

/// How a subscriber receives events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubscriberMode {
    /// Awaited before the publish returns, in subscription order.
    #[default]
    Sync,
    /// Spawned on the Tokio runtime; the publish does not wait for it.
    Async,
}

struct Subscriber {
    event_type: Option<String>,
    name: String,
    delivery: SubscriberMode,
    handler: Arc<dyn EventHandler>,
}

#[derive(Default)]
struct Inner {
    subscribers: RwLock<Vec<Subscriber>>,
    spawned: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Counters of asynchronous subscriber runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsyncStats {
    /// Runs spawned.
    pub spawned: u64,
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Runs that failed (returned an error or panicked); each is also logged at ERROR.
    pub failed: u64,
}

/// An in-process bus: on each event, synchronous subscribers run one after
/// another and are awaited (their outcomes are reported), then asynchronous subscribers
/// are spawned on the current Tokio runtime (outside one, they count as failed). A failed asynchronous subscriber is logged and counted in
/// [`InProcessBus::async_stats`], never silently dropped. Clones share one bus.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::bus::{SubscriberMode, HandlerError, InProcessBus, handler_fn};
/// let bus = InProcessBus::new();
/// bus.subscribe("OrderCreated", "audit", SubscriberMode::Sync, handler_fn(|_e| async { Ok(()) }));
/// bus.subscribe("OrderCreated", "email", SubscriberMode::Async,
///     handler_fn(|_e| async { Err(HandlerError::new("smtp down")) }));
/// # let event = tidings::RecordedEvent { stream: tidings::StreamId::new("order-1").unwrap(),
/// #   revision: 0, position: 0, recorded_at: jiff::Timestamp::UNIX_EPOCH,
/// #   event: tidings::Enricher::new("s").enrich(tidings::NewEvent::new("OrderCreated",
/// #   serde_json::json!({}))).unwrap() };
/// let report = bus.dispatch(event).await;
/// assert_eq!((report.outcomes.len(), report.spawned), (1, 1));
/// bus.settle().await;
/// assert_eq!(bus.async_stats().failed, 1);
/// # });
/// ```
#[derive(Clone, Default)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

impl fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcessBus")
            .field("subscribers", &self.read().len())
            .field("async", &self.async_stats())
            .finish()
    }
}

impl InProcessBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Subscriber>> {
        self.inner
            .subscribers
            .read()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes `handler`, called `name`, to events of `event_type`.
    pub fn subscribe(
        &self,
        event_type: impl Into<String>,
        name: impl Into<String>,
        delivery: SubscriberMode,
        handler: impl EventHandler,
    ) -> &Self {
        self.push(Some(event_type.into()), name.into(), delivery, handler)
    }

    /// Subscribes `handler`, called `name`, to events of every type.
    pub fn subscribe_all(
        &self,
        name: impl Into<String>,
        delivery: SubscriberMode,
        handler: impl EventHandler,
    ) -> &Self {
        self.push(None, name.into(), delivery, handler)
    }

    fn push(
        &self,
        event_type: Option<String>,
        name: String,
        delivery: SubscriberMode,
        handler: impl EventHandler,
    ) -> &Self {
        self.inner
            .subscribers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(Subscriber {
                event_type,
                name,
                delivery,
                handler: Arc::new(handler),
            });
        self
    }

    /// Counters of asynchronous runs so far.
    pub fn async_stats(&self) -> AsyncStats {
        AsyncStats {
            spawned: self.inner.spawned.load(Ordering::SeqCst),
            succeeded: self.inner.succeeded.load(Ordering::SeqCst),
            failed: self.inner.failed.load(Ordering::SeqCst),
        }
    }

    /// Waits until every asynchronous run spawned so far — and any they caused — is done.
    pub async fn settle(&self) {
        loop {
            let tasks: Vec<JoinHandle<()>> =
                std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
            if tasks.is_empty() {
                return;
            }
            for t in tasks {
                // A run catches its own panics and counts them; a join error here can only
                // be a cancelled task (the runtime shutting down).
                if let Err(e) = t.await {
                    tracing::error!(error = %e, "asynchronous subscriber task did not finish");
                }
            }
        }
    }

    /// Delivers one event: synchronous subscribers in order, then asynchronous ones
    /// spawned.
    pub async fn dispatch(&self, event: RecordedEvent) -> DispatchReport {
        let mut report = DispatchReport::new(event.event_id, event.event_type.clone());
        let (sync, spawn): (Vec<_>, Vec<_>) = self
            .read()
            .iter()
            .filter(|s| {
                s.event_type
                    .as_deref()
                    .is_none_or(|t| t == event.event_type)
            })
            .map(|s| (s.name.clone(), s.delivery, s.handler.clone()))
            .partition(|(_, d, _)| *d == SubscriberMode::Sync);
        if sync.is_empty() && spawn.is_empty() {
            tracing::warn!(
                event_type = %event.event_type,
                event_id = %event.event_id,
                "no subscriber for event type {}",
                event.event_type
            );
            return report;
        }
        for (name, _, handler) in sync {
            report
                .outcomes
                .push(run_handler(&name, handler.as_ref(), &event).await);
        }
        for (name, _, handler) in spawn {
            let inner = self.inner.clone();
            let event = event.clone();
            inner.spawned.fetch_add(1, Ordering::SeqCst);
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                inner.failed.fetch_add(1, Ordering::SeqCst);
                tracing::error!(
                    subscriber = %name,
                    event_type = %event.event_type,
                    event_id = %event.event_id,
                    "asynchronous subscriber not run: no Tokio runtime to spawn it on"
                );
                continue;
            };
            let task = runtime.spawn(async move {
                let outcome = run_handler(&name, handler.as_ref(), &event).await;
                match outcome.result {
                    Ok(()) => inner.succeeded.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        tracing::error!(
                            subscriber = %name,
                            event_type = %event.event_type,
                            event_id = %event.event_id,
                            error = %e,
                            "asynchronous subscriber failed"
                        );
                        inner.failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            });
            let mut tasks = self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner());
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
            report.spawned += 1;
        }
        report
    }
}

impl Dispatch for InProcessBus {
    fn dispatch(&self, event: RecordedEvent) -> BoxFuture<'_, DispatchReport> {
        Box::pin(InProcessBus::dispatch(self, event))
    }
}
