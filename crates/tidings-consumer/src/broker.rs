//! [`BrokerConsumer`]: a consumer group on a message broker ([`Transport`]) with the
//! guarantees of a store-backed [`ConsumerGroup`](super::ConsumerGroup): retries with
//! backoff and jitter, dead letters with the handler's last error, a circuit breaker,
//! an inbox that drops duplicates, upcasting, bounded concurrency and a runner that
//! survives the broker going away.
//!
//! For each delivery, in order:
//!
//! 1. **Decode.** [`BrokerMessage::recorded`] gives the [`RecordedEvent`]; the
//!    [`Upcasters`] bring it to the current schema. A message that fails either is
//!    dead-lettered at once with the reason — retrying cannot fix it.
//! 2. **Duplicates.** A delivery of an id this consumer is handling right now is nacked
//!    for later; an id the [`Inbox`] has seen is acknowledged without calling the handler.
//! 3. **Breaker.** While the [`CircuitBreaker`] is open the runner *pauses consuming*: it
//!    takes no new delivery until the cool-down ends, then lets one through as the trial.
//!    A delivery already taken when the breaker opened (with concurrency above 1) is
//!    nacked with the rest of the cool-down as its delay, without calling the handler.
//!    (Pausing rather than nacking every message keeps brokers from counting deliveries
//!    against messages that never reached the handler. A client may still hold messages
//!    it prefetched; if the pause outlasts the broker's ack wait, those are delivered
//!    again later, with a higher attempt count.)
//! 4. **Handle.** The handler is called with the event inside
//!    [`with_cause`](tidings_core::handler::with_cause) (what it publishes carries the
//!    event as its cause) and [`with_attempt`](tidings_core::handler::with_attempt)
//!    (it reads [`BrokerMessage::attempt`] through
//!    [`current_attempt`](tidings_core::handler::current_attempt)), in a `tracing` span
//!    `broker_handler`. A panic counts as a failure.
//! 5. **Settle.** Success: the id is recorded in the inbox, then the message is acked.
//!    Failure: while the [`RetryPolicy`] allows another attempt (judged by
//!    [`BrokerMessage::attempt`]) the message is nacked with the policy's delay;
//!    after the last attempt it is dead-lettered with the handler's error as the reason
//!    ([`DeadLetters`](tidings_core::transport::DeadLetters) lists and replays them).
//!
//! Nothing a single message does stops the consumer. A settle that does not reach the
//! broker is logged (the broker delivers the message again). When the subscription
//! fails or ends, the runner lets the deliveries in hand finish, then subscribes again
//! after a backoff that doubles up to a cap and resets once messages flow. Only an
//! invalid group or topic name ends [`BrokerConsumer::run`] with an error.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::time::Instant;
use uuid::Uuid;

use super::breaker::{BreakerState, CircuitBreaker, Permit};
use super::inbox::{Inbox, NoInbox};
use super::retry::{JitterRng, RetryPolicy};
use tidings_core::event::upcast::Upcasters;
use tidings_core::handler::{EventHandler, HandlerError, call_handler};
use tidings_core::store::RecordedEvent;
use tidings_core::transport::{
    BrokerMessage, BrokerMessages, Subscription, Transport, TransportError,
};

/// Deliveries handled at once by default, per [`BrokerConsumer::run`].
pub const DEFAULT_CONCURRENCY: usize = 1;

/// Why a [`BrokerConsumer`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerConsumerError {
    /// The subscription names a group or topic the transport cannot use; subscribing
    /// again cannot help.
    #[error("broker consumer cannot subscribe: {0}")]
    Subscription(#[source] TransportError),
}

/// A snapshot of a [`BrokerConsumer`]'s counters (totals since it was built) and its
/// breaker's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStats {
    /// Deliveries received (every attempt counts).
    pub received: u64,
    /// Deliveries handled successfully and acknowledged.
    pub handled: u64,
    /// Duplicates acknowledged without calling the handler (the inbox had their id).
    pub skipped: u64,
    /// Failed deliveries nacked for another attempt.
    pub retried: u64,
    /// Deliveries given up into the group's dead letters.
    pub dead_lettered: u64,
    /// Deliveries nacked without calling the handler (breaker open, the same id in
    /// hand, the inbox unreachable).
    pub deferred: u64,
    /// Acks, nacks and dead letters that did not reach the broker.
    pub settle_failures: u64,
    /// Times the runner subscribed again after the subscription failed or ended.
    pub resubscribed: u64,
    /// The breaker's state now.
    #[serde(serialize_with = "ser_display")]
    pub breaker: BreakerState,
    /// How many times the breaker has opened.
    pub breaker_opened: u64,
}

fn ser_display<S: serde::Serializer>(v: &BreakerState, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    handled: AtomicU64,
    skipped: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    deferred: AtomicU64,
    settle_failures: AtomicU64,
    resubscribed: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Debug)]
struct State {
    breaker: CircuitBreaker,
    rng: JitterRng,
}

struct Inner<T, H, I> {
    transport: T,
    subscription: Subscription,
    handler: H,
    inbox: I,
    retry: RetryPolicy,
    upcasters: Upcasters,
    concurrency: usize,
    resubscribe_base: Duration,
    resubscribe_cap: Duration,
    state: Mutex<State>,
    in_progress: Mutex<HashSet<Uuid>>,
    counters: Counters,
}

impl<T, H, I> Inner<T, H, I> {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builds a [`BrokerConsumer`]; see [`BrokerConsumer::builder`].
pub struct BrokerConsumerBuilder<T, H, I> {
    transport: T,
    subscription: Subscription,
    handler: H,
    inbox: I,
    retry: RetryPolicy,
    breaker: CircuitBreaker,
    upcasters: Upcasters,
    concurrency: usize,
    resubscribe: (Duration, Duration),
    seed: Option<u64>,
}

impl<T, H, I> std::fmt::Debug for BrokerConsumerBuilder<T, H, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConsumerBuilder")
            .field("subscription", &self.subscription)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl<T: Transport + 'static, H: EventHandler, I: Inbox> BrokerConsumerBuilder<T, H, I> {
    /// Retries and dead-lettering (default: [`RetryPolicy::default`], 5 attempts).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The circuit breaker (default: [`CircuitBreaker::default`]; pass
    /// [`CircuitBreaker::disabled`] for none).
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = breaker;
        self
    }

    /// Drops deliveries whose event id `inbox` has recorded (default: [`NoInbox`]).
    pub fn inbox<I2: Inbox>(self, inbox: I2) -> BrokerConsumerBuilder<T, H, I2> {
        BrokerConsumerBuilder {
            transport: self.transport,
            subscription: self.subscription,
            handler: self.handler,
            inbox,
            retry: self.retry,
            breaker: self.breaker,
            upcasters: self.upcasters,
            concurrency: self.concurrency,
            resubscribe: self.resubscribe,
            seed: self.seed,
        }
    }

    /// Brings events to their current schema before the handler sees them (default:
    /// none).
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// How many deliveries each [`run`](BrokerConsumer::run) handles at once (default
    /// [`DEFAULT_CONCURRENCY`]; at least 1). Deliveries of different events run
    /// concurrently in any order; brokers give no per-stream order across them.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The backoff before subscribing again: starts at `base`, doubles up to `cap`
    /// (default 100 ms to 30 s).
    pub fn resubscribe_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.resubscribe = (base, cap.max(base));
        self
    }

    /// Seeds the retry jitter, to replay a schedule (default: from entropy).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The consumer, ready to [`run`](BrokerConsumer::run).
    pub fn build(self) -> BrokerConsumer<T, H, I> {
        let rng = self
            .seed
            .map_or_else(JitterRng::from_entropy, JitterRng::new);
        BrokerConsumer {
            inner: Arc::new(Inner {
                transport: self.transport,
                subscription: self.subscription,
                handler: self.handler,
                inbox: self.inbox,
                retry: self.retry,
                upcasters: self.upcasters,
                concurrency: self.concurrency,
                resubscribe_base: self.resubscribe.0,
                resubscribe_cap: self.resubscribe.1,
                state: Mutex::new(State {
                    breaker: self.breaker,
                    rng,
                }),
                in_progress: Mutex::default(),
                counters: Counters::default(),
            }),
        }
    }
}

/// A handler consuming one consumer group of a message broker; clones share it.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use tidings::bus::{HandlerError, handler_fn};
/// use tidings::consumer::{BrokerConsumer, RetryPolicy};
/// use tidings::transport::{DeadLetters, InMemoryTransport, Message, Subscription, Transport};
/// use tidings::{Enricher, NewEvent};
/// let bus = InMemoryTransport::new();
/// let consumer = BrokerConsumer::builder(
///     bus.clone(),
///     Subscription::new("emails", "orders"),
///     handler_fn(|_e| async { Err(HandlerError::new("smtp down")) }),
/// )
/// .retry(RetryPolicy::new(3).base(Duration::from_millis(1)))
/// .build();
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let runner = tokio::spawn({
///     let consumer = consumer.clone();
///     async move { consumer.run(async { let _ = stopped.await; }).await }
/// });
/// tokio::time::sleep(Duration::from_millis(10)).await; // let it subscribe
/// let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
/// bus.publish(Message::new("orders", e)).await.unwrap();
/// while consumer.stats().dead_lettered == 0 { tokio::time::sleep(Duration::from_millis(1)).await; }
/// stop.send(()).unwrap();
/// runner.await.unwrap().unwrap();
/// let dead = bus.dead_letters("emails", 10).await.unwrap();
/// assert_eq!((dead[0].attempts, dead[0].reason.as_str()), (3, "smtp down"));
/// # });
/// ```
pub struct BrokerConsumer<T, H, I = NoInbox> {
    inner: Arc<Inner<T, H, I>>,
}

impl<T, H, I> Clone for BrokerConsumer<T, H, I> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T, H, I> std::fmt::Debug for BrokerConsumer<T, H, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConsumer")
            .field("subscription", &self.inner.subscription)
            .finish_non_exhaustive()
    }
}

impl<T: Transport + 'static, H: EventHandler> BrokerConsumer<T, H, NoInbox> {
    /// A builder for a consumer of `subscription` on `transport`, calling `handler`.
    /// Any [`EventHandler`] will do, a `tidings::bus::Dispatcher` included.
    pub fn builder(
        transport: T,
        subscription: Subscription,
        handler: H,
    ) -> BrokerConsumerBuilder<T, H, NoInbox> {
        BrokerConsumerBuilder {
            transport,
            subscription,
            handler,
            inbox: NoInbox,
            retry: RetryPolicy::default(),
            breaker: CircuitBreaker::default(),
            upcasters: Upcasters::new(),
            concurrency: DEFAULT_CONCURRENCY,
            resubscribe: (Duration::from_millis(100), Duration::from_secs(30)),
            seed: None,
        }
    }
}

/// How one subscription ended.
enum Ended {
    Shutdown,
    Broken,
}

/// Removes an id from the in-progress set when the delivery is done.
struct Claim<'a> {
    set: &'a Mutex<HashSet<Uuid>>,
    id: Uuid,
}

impl<'a> Claim<'a> {
    fn take(set: &'a Mutex<HashSet<Uuid>>, id: Uuid) -> Option<Self> {
        set.lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id)
            .then_some(Self { set, id })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl<T: Transport + 'static, H: EventHandler, I: Inbox> BrokerConsumer<T, H, I> {
    /// The subscription it consumes.
    pub fn subscription(&self) -> &Subscription {
        &self.inner.subscription
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.inner.handler
    }

    /// The inbox.
    pub fn inbox(&self) -> &I {
        &self.inner.inbox
    }

    /// Counters and the breaker's state now.
    pub fn stats(&self) -> BrokerStats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let st = self.inner.lock();
        BrokerStats {
            received: load(&c.received),
            handled: load(&c.handled),
            skipped: load(&c.skipped),
            retried: load(&c.retried),
            dead_lettered: load(&c.dead_lettered),
            deferred: load(&c.deferred),
            settle_failures: load(&c.settle_failures),
            resubscribed: load(&c.resubscribed),
            breaker: st.breaker.state(),
            breaker_opened: st.breaker.times_opened(),
        }
    }

    /// Subscribes and handles deliveries until `shutdown` completes, subscribing again
    /// (with backoff) whenever the subscription fails or ends. On shutdown it takes no
    /// new delivery, lets those in hand finish and settle, then leaves the group
    /// (what the client prefetched and never handed out is delivered again elsewhere).
    ///
    /// Several `run`s of one consumer (or of clones) are competing subscribers of the
    /// group sharing one breaker, inbox and set of counters.
    ///
    /// Fails only when the subscription names an invalid group or topic.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), BrokerConsumerError> {
        let inner = &self.inner;
        inner
            .subscription
            .validate()
            .map_err(BrokerConsumerError::Subscription)?;
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = inner.resubscribe_base;
        loop {
            let subscribed = tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                r = inner.transport.subscribe(inner.subscription.clone()) => r,
            };
            let ended = match subscribed {
                Ok(messages) => {
                    tracing::info!(group = %inner.subscription.group,
                        topics = ?inner.subscription.topics, "broker consumer subscribed");
                    self.consume(messages, &mut shutdown, &mut backoff).await
                }
                Err(e @ TransportError::InvalidName { .. }) => {
                    return Err(BrokerConsumerError::Subscription(e));
                }
                Err(e) => {
                    tracing::warn!(group = %inner.subscription.group, error = %e,
                        retry_in_ms = backoff.as_millis() as u64, "broker subscribe failed");
                    Ended::Broken
                }
            };
            if let Ended::Shutdown = ended {
                return Ok(());
            }
            bump(&inner.counters.resubscribed);
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(inner.resubscribe_cap);
        }
    }

    /// Handles deliveries from one subscription until it breaks or `shutdown`.
    async fn consume(
        &self,
        mut messages: BrokerMessages,
        shutdown: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
        backoff: &mut Duration,
    ) -> Ended {
        let inner = &self.inner;
        let mut in_hand = FuturesUnordered::new();
        let ended = loop {
            // Ask the breaker only when a delivery could be taken: a trial handed out
            // must be used or given back.
            let permit = (in_hand.len() < inner.concurrency)
                .then(|| inner.lock().breaker.permit(Instant::now()));
            let (take, trial, wake) = match permit {
                None => (false, false, None),
                Some(Permit::Allowed) => (true, false, None),
                Some(Permit::Trial) => (true, true, None),
                Some(Permit::WaitUntil(t)) => (false, false, Some(t)),
                // Another runner holds the trial: look again shortly.
                Some(Permit::WaitForTrial) => (
                    false,
                    false,
                    Some(Instant::now() + Duration::from_millis(20)),
                ),
            };
            let mut took_trial = false;
            tokio::select! {
                biased;
                () = shutdown.as_mut() => break Ended::Shutdown,
                Some(()) = in_hand.next(), if !in_hand.is_empty() => {}
                () = sleep_until(wake), if wake.is_some() => {}
                item = messages.next(), if take => match item {
                    Some(Ok(message)) => {
                        *backoff = inner.resubscribe_base;
                        took_trial = trial;
                        in_hand.push(self.process(message, trial));
                    }
                    Some(Err(e @ TransportError::Decode { .. })) => {
                        tracing::warn!(group = %inner.subscription.group, error = %e,
                            "undecodable message skipped by the transport");
                    }
                    Some(Err(e)) => {
                        tracing::warn!(group = %inner.subscription.group, error = %e,
                            "broker subscription failed; subscribing again");
                        break Ended::Broken;
                    }
                    None => {
                        tracing::warn!(group = %inner.subscription.group,
                            "broker subscription ended; subscribing again");
                        break Ended::Broken;
                    }
                },
            }
            if trial && !took_trial {
                inner.lock().breaker.trial_abandoned();
            }
        };
        // Let what is in hand finish and settle before the subscription is dropped.
        while in_hand.next().await.is_some() {}
        drop(messages);
        ended
    }

    /// Handles one delivery and settles it.
    async fn process(&self, message: BrokerMessage, trial: bool) {
        let inner = &self.inner;
        bump(&inner.counters.received);
        let attempt = message.attempt();
        let recorded = match message.recorded() {
            Ok(r) => r,
            Err(e) => {
                self.abandon(trial);
                let reason = format!("the message is not a recorded event: {e}");
                return self.give_up(message, reason).await;
            }
        };
        let event = match inner.upcasters.upcast_recorded(recorded) {
            Ok(r) => r,
            Err(e) => {
                self.abandon(trial);
                return self.give_up(message, format!("cannot upcast: {e}")).await;
            }
        };
        let Some(_claim) = Claim::take(&inner.in_progress, event.event_id) else {
            self.abandon(trial);
            let delay = self.retry_delay(1);
            tracing::debug!(event_id = %event.event_id, "the same event is in hand; nacked");
            return self.defer(message, delay).await;
        };
        match inner.inbox.seen(event.event_id).await {
            Ok(true) => {
                self.abandon(trial);
                bump(&inner.counters.skipped);
                tracing::debug!(event_id = %event.event_id, "duplicate delivery skipped");
                return self.settle(message.ack()).await;
            }
            Ok(false) => {}
            Err(e) => {
                self.abandon(trial);
                let delay = self.retry_delay(attempt);
                tracing::warn!(event_id = %event.event_id, error = %e,
                    "inbox unreachable; delivery nacked");
                return self.defer(message, delay).await;
            }
        }
        if !trial {
            let now = Instant::now();
            let permit = inner.lock().breaker.permit(now);
            match permit {
                // Trial: this delivery is the half-open trial; its outcome reports below.
                Permit::Allowed | Permit::Trial => {}
                Permit::WaitUntil(until) => {
                    return self.defer(message, until - now).await;
                }
                Permit::WaitForTrial => {
                    let delay = self.retry_delay(1);
                    return self.defer(message, delay).await;
                }
            }
        }
        let (topic, parent) = (message.topic().to_owned(), message.span().clone());
        match self.call(&event, attempt, &topic, &parent).await {
            Ok(()) => {
                inner.lock().breaker.on_success();
                if let Err(e) = inner.inbox.record(event.event_id).await {
                    tracing::warn!(event_id = %event.event_id, error = %e,
                        "handled, but the inbox could not record it; a duplicate would be handled again");
                }
                bump(&inner.counters.handled);
                self.settle(message.ack()).await;
            }
            Err(e) => {
                let delay = {
                    let mut st = inner.lock();
                    st.breaker.on_failure(Instant::now());
                    let State { rng, .. } = &mut *st;
                    inner
                        .retry
                        .should_retry(attempt)
                        .then(|| inner.retry.delay(attempt, rng))
                };
                match delay {
                    Some(delay) => {
                        bump(&inner.counters.retried);
                        tracing::info!(group = %inner.subscription.group,
                            event_id = %event.event_id, attempt,
                            delay_ms = delay.as_millis() as u64, error = %e,
                            "delivery failed; will retry");
                        self.settle(message.nack(delay)).await;
                    }
                    None => {
                        tracing::warn!(group = %inner.subscription.group,
                            event_id = %event.event_id, attempts = attempt, error = %e,
                            "delivery failed its last attempt; dead-lettered");
                        bump(&inner.counters.dead_lettered);
                        self.settle(message.dead_letter(e.message())).await;
                    }
                }
            }
        }
    }

    /// Calls the handler with the event as its cause and the attempt as the current one.
    async fn call(
        &self,
        event: &RecordedEvent,
        attempt: u32,
        topic: &str,
        parent: &tracing::Span,
    ) -> Result<(), HandlerError> {
        let span = tracing::info_span!(
            parent: parent,
            "broker_handler",
            group = %self.inner.subscription.group,
            topic = %topic,
            event_type = %event.event_type,
            event_id = %event.event_id,
            attempt,
            outcome = tracing::field::Empty,
        );
        let result = call_handler(&self.inner.handler, event, Some(attempt), &span).await;
        if let Err(e) = &result {
            tracing::warn!(parent: &span, error = %e, "broker handler failed");
        }
        result
    }

    fn retry_delay(&self, attempt: u32) -> Duration {
        let mut st = self.inner.lock();
        self.inner.retry.delay(attempt, &mut st.rng)
    }

    fn abandon(&self, trial: bool) {
        if trial {
            self.inner.lock().breaker.trial_abandoned();
        }
    }

    async fn give_up(&self, message: BrokerMessage, reason: String) {
        tracing::warn!(group = %self.inner.subscription.group,
            event_id = %message.event().event_id, %reason, "message dead-lettered");
        bump(&self.inner.counters.dead_lettered);
        self.settle(message.dead_letter(reason)).await;
    }

    async fn defer(&self, message: BrokerMessage, delay: Duration) {
        bump(&self.inner.counters.deferred);
        self.settle(message.nack(delay)).await;
    }

    async fn settle(&self, settled: impl Future<Output = Result<(), TransportError>>) {
        if let Err(e) = settled.await {
            bump(&self.inner.counters.settle_failures);
            tracing::warn!(group = %self.inner.subscription.group, error = %e,
                "settling failed; the broker will deliver the message again");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
