//! [`InMemoryTransport`]: the transport contract inside one process, for tests.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::Notify;
use tracing::Instrument;
use uuid::Uuid;

use super::{
    BoxError, BrokerMessage, BrokerMessages, Message, Settle, Subscription, Transport,
    TransportError, check_topic,
};

#[derive(Debug)]
struct Pending {
    message: Message,
    deliveries: u32,
}

#[derive(Debug, Default)]
struct Group {
    topics: HashSet<String>,
    ready: VecDeque<Pending>,
    notify: Arc<Notify>,
}

#[derive(Debug, Default)]
struct State {
    groups: HashMap<String, Group>,
    published_ids: HashSet<Uuid>,
}

/// The transport contract in one process: durable-for-the-process consumer groups,
/// competing subscribers, redelivery of what was nacked or dropped, and deduplication
/// by event id (for the transport's whole life). Clones share the same broker.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use futures::StreamExt;
/// use tidings::transport::{InMemoryTransport, Message, Subscription, Transport};
/// use tidings::{Enricher, NewEvent};
/// let bus = InMemoryTransport::new();
/// let mut deliveries = bus.subscribe(Subscription::new("billing", "orders")).await.unwrap();
/// let event = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
/// bus.publish(Message::new("orders", event.clone())).await.unwrap();
/// let delivery = deliveries.next().await.unwrap().unwrap();
/// assert_eq!(delivery.event(), &event);
/// delivery.ack().await.unwrap();
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct InMemoryTransport {
    state: Arc<Mutex<State>>,
}

impl InMemoryTransport {
    /// An empty broker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves no half-made change worth refusing.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn requeue(state: &Mutex<State>, group: &str, pending: Pending) {
    let mut s = lock(state);
    if let Some(g) = s.groups.get_mut(group) {
        g.ready.push_back(pending);
        g.notify.notify_waiters();
    }
}

impl Transport for InMemoryTransport {
    fn publish(
        &self,
        message: Message,
    ) -> impl std::future::Future<Output = Result<(), TransportError>> + Send {
        let span = tracing::info_span!("transport.publish", topic = %message.topic,
            event_id = %message.event.event_id, event_type = %message.event.event_type);
        let result = span.in_scope(|| {
            check_topic(&message.topic)?;
            let mut s = self.lock();
            if !s.published_ids.insert(message.event.event_id) {
                tracing::debug!("duplicate event id dropped");
                return Ok(());
            }
            for g in s.groups.values_mut() {
                if g.topics.contains(&message.topic) {
                    g.ready.push_back(Pending {
                        message: message.clone(),
                        deliveries: 0,
                    });
                    g.notify.notify_waiters();
                }
            }
            Ok(())
        });
        std::future::ready(result)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> impl std::future::Future<Output = Result<BrokerMessages, TransportError>> + Send {
        let result = subscription.validate().map(|()| {
            let notify = {
                let mut s = self.lock();
                let g = s.groups.entry(subscription.group.clone()).or_default();
                g.topics.extend(subscription.topics.iter().cloned());
                g.notify.clone()
            };
            let state = self.state.clone();
            let group = subscription.group;
            BrokerMessages::new(futures::stream::unfold(
                (state, group, notify),
                |(state, group, notify)| async move {
                    loop {
                        let waker = notify.clone();
                        let notified = waker.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        let next = lock(&state)
                            .groups
                            .get_mut(&group)
                            .and_then(|g| g.ready.pop_front());
                        if let Some(mut pending) = next {
                            pending.deliveries += 1;
                            let span = tracing::info_span!("transport.receive", group = %group,
                                topic = %pending.message.topic,
                                event_id = %pending.message.event.event_id,
                                attempt = pending.deliveries);
                            let _e = span.enter();
                            tracing::debug!("delivering");
                            let event = pending.message.event.clone();
                            let topic = pending.message.topic.clone();
                            let attempt = pending.deliveries;
                            let settle = MemorySettle {
                                state: state.clone(),
                                group: group.clone(),
                                pending: Some(pending),
                            };
                            let d = BrokerMessage::new(event, topic, attempt, settle);
                            drop(_e);
                            return Some((Ok(d), (state, group, notify)));
                        }
                        notified.await;
                    }
                },
            ))
        });
        std::future::ready(result)
    }

    fn deduplicates_by_event_id(&self) -> bool {
        true
    }
}

struct MemorySettle {
    state: Arc<Mutex<State>>,
    group: String,
    pending: Option<Pending>,
}

impl Settle for MemorySettle {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.pending = None;
        futures::future::ready(Ok(())).boxed()
    }

    fn nack(mut self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BoxError>> {
        if let Some(p) = self.pending.take() {
            if delay.is_zero() {
                requeue(&self.state, &self.group, p);
            } else {
                let state = self.state.clone();
                let group = self.group.clone();
                tokio::spawn(
                    async move {
                        tokio::time::sleep(delay).await;
                        requeue(&state, &group, p);
                    }
                    .in_current_span(),
                );
            }
        }
        futures::future::ready(Ok(())).boxed()
    }

    fn reject(mut self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        self.pending = None;
        futures::future::ready(Ok(())).boxed()
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            requeue(&self.state, &self.group, p);
        }
    }
}
