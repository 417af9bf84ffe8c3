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
    BoxError, BrokerMessage, BrokerMessages, DeadLetter, DeadLetters, Message, Settle,
    Subscription, Transport, TransportError, check_topic,
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
    /// Per group, what it gave up on, oldest first.
    dead: HashMap<String, Vec<DeadLetter>>,
}

/// The transport contract in one process: durable-for-the-process consumer groups,
/// competing subscribers, redelivery of what was nacked or dropped, dead letters per
/// group, and deduplication by event id (for the transport's whole life). Clones share
/// the same broker.
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
                            let origin = pending.message.origin.clone();
                            let settle = MemorySettle {
                                state: state.clone(),
                                group: group.clone(),
                                pending: Some(pending),
                            };
                            let d = BrokerMessage::new(event, topic, attempt, settle)
                                .with_origin(origin);
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

    fn dead_letter(
        mut self: Box<Self>,
        reason: String,
    ) -> BoxFuture<'static, Result<(), BoxError>> {
        if let Some(p) = self.pending.take() {
            let letter = DeadLetter {
                id: Uuid::new_v4().to_string(),
                group: self.group.clone(),
                topic: p.message.topic,
                event: p.message.event,
                origin: p.message.origin,
                reason,
                attempts: p.deliveries,
                dead_at: jiff::Timestamp::now(),
            };
            lock(&self.state)
                .dead
                .entry(self.group.clone())
                .or_default()
                .push(letter);
        }
        futures::future::ready(Ok(())).boxed()
    }
}

impl DeadLetters for InMemoryTransport {
    fn dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<DeadLetter>, TransportError>> + Send {
        let list = self
            .lock()
            .dead
            .get(group)
            .map(|d| d.iter().take(limit).cloned().collect())
            .unwrap_or_default();
        std::future::ready(Ok(list))
    }

    fn replay_dead_letter(
        &self,
        group: &str,
        id: &str,
    ) -> impl std::future::Future<Output = Result<bool, TransportError>> + Send {
        let mut s = self.lock();
        let letter = s.dead.get_mut(group).and_then(|d| {
            let i = d.iter().position(|l| l.id == id)?;
            Some(d.remove(i))
        });
        let found = letter.is_some();
        if let Some(l) = letter {
            let g = s.groups.entry(group.to_owned()).or_default();
            g.ready.push_back(Pending {
                message: Message {
                    topic: l.topic,
                    event: l.event,
                    origin: l.origin,
                },
                deliveries: 0,
            });
            g.notify.notify_waiters();
        }
        std::future::ready(Ok(found))
    }

    fn delete_dead_letter(
        &self,
        group: &str,
        id: &str,
    ) -> impl std::future::Future<Output = Result<bool, TransportError>> + Send {
        let mut s = self.lock();
        let found = s.dead.get_mut(group).is_some_and(|d| {
            let before = d.len();
            d.retain(|l| l.id != id);
            d.len() < before
        });
        std::future::ready(Ok(found))
    }
}

impl Drop for MemorySettle {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            requeue(&self.state, &self.group, p);
        }
    }
}
