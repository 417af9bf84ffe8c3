//! [`OutboxRelay`]: publishes the store's log to a message broker, with no dual write.
//!
//! An application appends its events to the store and nothing else; the relay follows
//! the global log (`$all`) from its checkpoint and publishes each event to a
//! [`Transport`] with [`Message::recorded`], so a consumer on the other side sees the
//! event's [`Origin`](tidings_core::transport::Origin) (stream, revision, position).
//!
//! - **Order and confirmation.** Events are published one at a time, in log order, and
//!   the relay waits for the broker's confirmation before it moves on
//!   ([`Transport::publish`] returns once the broker has stored the message).
//! - **Never skip, never pass an unconfirmed event.** A failed publish is retried with
//!   exponential backoff and jitter until it is confirmed (or the relay is shut down);
//!   the checkpoint only ever covers confirmed events.
//! - **At-least-once.** The checkpoint is saved after batches, so after a crash the
//!   events confirmed since the last save are published again. Duplicates carry the same
//!   event id and are removed downstream: JetStream drops them by `Nats-Msg-Id` within
//!   its duplicate window ([`Transport::deduplicates_by_event_id`]); on RabbitMQ a
//!   [`BrokerConsumer`](crate::BrokerConsumer)'s [`Inbox`](crate::Inbox) (or
//!   [`Idempotent`](crate::Idempotent)) drops them by event id.
//! - **Fenced.** The checkpoint is `relay-<name>` in a [`CheckpointStore`]; with
//!   [`StoreCheckpoints`] each save carries the version the relay last saw, so two
//!   relays with the same name cannot both advance it: the one that saves second stops
//!   with [`RelayError::Checkpoint`] holding [`CheckpointError::Conflict`].
//! - **Survives restarts.** Of itself (it resumes from the checkpoint), of the store (a
//!   subscription error is followed by a backoff and a new subscription from the last
//!   confirmed position; checkpoint saves that fail on the store are retried), and of
//!   the broker (publishes are retried).
//! - **System streams** (names starting with `$`, such as the relay's own checkpoint)
//!   are never relayed, whatever the filter.
//!
//! Progress is visible through [`OutboxRelay::stats`] and [`OutboxRelay::watch`]
//! ([`RelayStats`]: events relayed, last confirmed position, the store's head, lag,
//! retries, last error), and each publish runs in a `relay.publish` tracing span.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use futures::StreamExt;
//! use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
//! use tidings::consumer::relay::OutboxRelay;
//! use tidings::transport::{InMemoryTransport, Subscription, TopicMap, Transport};
//! let store = InMemoryStore::new();
//! let bus = InMemoryTransport::new();
//! let mut orders = bus.subscribe(Subscription::new("billing", "orders")).await.unwrap();
//! let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
//! store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
//!
//! let relay = OutboxRelay::builder("orders", store.clone(), bus.clone())
//!     .topics(TopicMap::new("events").route("OrderCreated", "orders"))
//!     .build()
//!     .unwrap();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let running = tokio::spawn(async move { relay.run(async { let _ = stopped.await; }).await });
//! let delivery = orders.next().await.unwrap().unwrap();
//! let recorded = delivery.recorded().unwrap();
//! assert_eq!((recorded.stream.as_str(), recorded.position), ("order-1", 0));
//! delivery.ack().await.unwrap();
//! stop.send(()).unwrap();
//! let stats = running.await.unwrap().unwrap();
//! assert_eq!((stats.relayed, stats.lag), (1, 0));
//! # });
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use crate::checkpoint::checkpoint_stream;
use crate::{Checkpoint, CheckpointError, CheckpointStore, JitterRng, StoreCheckpoints};
use tidings_core::store::{
    EventReader, EventStore, EventSubscriber, Filter, PAGE, Position, RecordedEvent, Start,
    StoreError,
};
use tidings_core::transport::{Message, TopicMap, Transport, TransportError, check_topic};

/// The topic every event goes to unless routed elsewhere.
pub const DEFAULT_TOPIC: &str = "events";

/// The name of relay `name`'s checkpoint: `relay-<name>` (kept by [`StoreCheckpoints`]
/// in `$checkpoint-relay-<name>`).
pub fn checkpoint_name(name: &str) -> String {
    format!("relay-{name}")
}

/// Why a relay could not be built or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay's name does not make a usable checkpoint name.
    #[error("relay name {name:?} is not usable: {source}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: CheckpointError,
    },
    /// A topic of the [`TopicMap`] is not a valid topic name.
    #[error("relay {relay}: {source}")]
    InvalidTopic {
        /// The relay's name.
        relay: String,
        /// The transport's refusal.
        #[source]
        source: TransportError,
    },
    /// The checkpoint was moved by another relay with the same name
    /// ([`CheckpointError::Conflict`]), is unreadable, or cannot be kept.
    #[error("relay {relay}: {source}")]
    Checkpoint {
        /// The relay's name.
        relay: String,
        /// The checkpoint store's error.
        #[source]
        source: CheckpointError,
    },
    /// The transport refused a message for a reason retrying cannot fix.
    #[error("relay {relay} cannot publish the event at position {position}: {source}")]
    Publish {
        /// The relay's name.
        relay: String,
        /// The event's position.
        position: Position,
        /// The transport's error.
        #[source]
        source: TransportError,
    },
}

impl RelayError {
    /// Whether this is a fencing conflict: another relay with the same name advanced
    /// the checkpoint.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Checkpoint {
                source: CheckpointError::Conflict { .. },
                ..
            }
        )
    }
}

/// What a relay has done, as of now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Events this run published and the broker confirmed.
    pub relayed: u64,
    /// Events passed over: system streams and events the filter leaves out.
    pub skipped: u64,
    /// The position of the last event the broker confirmed (None: none yet in this run).
    pub position: Option<Position>,
    /// The next position to consider: every event before it is confirmed or skipped.
    pub next: Position,
    /// The last checkpoint saved or loaded (its next position).
    pub checkpoint: Option<Position>,
    /// The store's head as last seen (None: an empty store).
    pub head: Option<Position>,
    /// Positions of the log not yet considered: `head + 1 - next`. It counts the events
    /// still to relay, plus any system or filtered events among them.
    pub lag: u64,
    /// Publishes that failed and were retried.
    pub retries: u64,
    /// Subscriptions to the store that failed and were made again.
    pub resubscribes: u64,
    /// The last error met (retried), if any.
    pub last_error: Option<String>,
}

impl RelayStats {
    fn set_head(&mut self, head: Option<Position>) {
        self.head = match (self.head, head) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.update_lag();
    }

    fn update_lag(&mut self) {
        self.lag = self.head.map_or(0, |h| (h + 1).saturating_sub(self.next));
    }
}

/// When a relay saves its checkpoint: after `events` confirmed events, or after
/// `interval` when anything moved, whichever comes first, and when it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointCadence {
    /// Save after this many confirmed events (at least 1).
    pub events: u64,
    /// Save at least this often while the position moves.
    pub interval: Duration,
}

impl Default for CheckpointCadence {
    /// Every 512 events or every second.
    fn default() -> Self {
        Self {
            events: PAGE as u64,
            interval: Duration::from_secs(1),
        }
    }
}

/// Exponential backoff with full jitter: the delay before retry `n` is uniform in
/// `[base, min(cap, base × 2^(n-1))]`. Used between failed publishes, failed checkpoint
/// saves and new subscriptions. Retries never stop on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The shortest delay.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    /// 50 ms to 10 s.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before retry `failures` (from 1).
    pub fn delay(&self, failures: u32, rng: &mut JitterRng) -> Duration {
        let base = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let top = crate::retry::exponential_millis(self.base, self.cap, failures).max(base);
        let extra = match (top - base).checked_add(1) {
            Some(n) => rng.next_u64() % n,
            None => rng.next_u64(),
        };
        Duration::from_millis(base.saturating_add(extra))
    }
}

/// Builds an [`OutboxRelay`]; see [`OutboxRelay::builder`].
pub struct OutboxRelayBuilder<S, T, C> {
    name: String,
    store: S,
    transport: T,
    checkpoints: C,
    topics: TopicMap,
    filter: Filter,
    cadence: CheckpointCadence,
    backoff: Backoff,
    head_interval: Duration,
    rng: JitterRng,
}

impl<S, T, C> std::fmt::Debug for OutboxRelayBuilder<S, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelayBuilder")
            .field("name", &self.name)
            .field("topics", &self.topics)
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl<S, T, C> OutboxRelayBuilder<S, T, C>
where
    S: EventReader + EventSubscriber + Clone + 'static,
    T: Transport,
    C: CheckpointStore,
{
    /// Routes event types to topics (default: every type to [`DEFAULT_TOPIC`]).
    pub fn topics(mut self, topics: TopicMap) -> Self {
        self.topics = topics;
        self
    }

    /// Only events that pass `filter` (system streams are never relayed).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Keeps the checkpoint `relay-<name>` in `checkpoints` instead.
    pub fn checkpoints<C2: CheckpointStore>(self, checkpoints: C2) -> OutboxRelayBuilder<S, T, C2> {
        OutboxRelayBuilder {
            name: self.name,
            store: self.store,
            transport: self.transport,
            checkpoints,
            topics: self.topics,
            filter: self.filter,
            cadence: self.cadence,
            backoff: self.backoff,
            head_interval: self.head_interval,
            rng: self.rng,
        }
    }

    /// When the checkpoint is saved.
    pub fn checkpoint_cadence(mut self, cadence: CheckpointCadence) -> Self {
        self.cadence = CheckpointCadence {
            events: cadence.events.max(1),
            interval: cadence.interval,
        };
        self
    }

    /// The backoff between retries.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How often the store's head is read for the lag while the relay waits (default
    /// 1 s).
    pub fn head_interval(mut self, interval: Duration) -> Self {
        self.head_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Seeds the backoff jitter (tests replay a schedule with it).
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.rng = JitterRng::new(seed);
        self
    }

    /// Checks the name and the topics and makes the relay.
    pub fn build(self) -> Result<OutboxRelay<S, T, C>, RelayError> {
        let checkpoint = checkpoint_name(&self.name);
        checkpoint_stream(&checkpoint).map_err(|source| RelayError::InvalidName {
            name: self.name.clone(),
            source,
        })?;
        for topic in self.topics.topics() {
            check_topic(topic).map_err(|source| RelayError::InvalidTopic {
                relay: self.name.clone(),
                source,
            })?;
        }
        let (stats, _) = watch::channel(RelayStats::default());
        Ok(OutboxRelay {
            name: self.name,
            checkpoint,
            store: self.store,
            transport: self.transport,
            checkpoints: self.checkpoints,
            topics: self.topics,
            filter: self.filter,
            cadence: self.cadence,
            backoff: self.backoff,
            head_interval: self.head_interval,
            rng: Mutex::new(self.rng),
            stats,
        })
    }
}

/// Publishes a store's log to a broker; see the [module documentation](self).
pub struct OutboxRelay<S, T, C = StoreCheckpoints<S>> {
    name: String,
    checkpoint: String,
    store: S,
    transport: T,
    checkpoints: C,
    topics: TopicMap,
    filter: Filter,
    cadence: CheckpointCadence,
    backoff: Backoff,
    head_interval: Duration,
    rng: Mutex<JitterRng>,
    stats: watch::Sender<RelayStats>,
}

impl<S, T, C> std::fmt::Debug for OutboxRelay<S, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("name", &self.name)
            .field("stats", &*self.stats.borrow())
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, T: Transport> OutboxRelay<S, T, StoreCheckpoints<S>> {
    /// A relay called `name` from `store` to `transport`, with its checkpoint
    /// `relay-<name>` in the same store.
    pub fn builder(
        name: impl Into<String>,
        store: S,
        transport: T,
    ) -> OutboxRelayBuilder<S, T, StoreCheckpoints<S>> {
        let checkpoints = StoreCheckpoints::new(store.clone());
        Self::builder_with(name, store, transport, checkpoints)
    }
}

/// The state of one run.
struct Run {
    next: Position,
    saved: Option<Position>,
    relayed_since_save: u64,
    last_save: Instant,
}

/// How a wait ended.
enum Wake<T> {
    Ready(T),
    Shutdown,
}

type Shutdown<'a> = Pin<&'a mut (dyn Future<Output = ()> + Send)>;

impl<S, T, C> OutboxRelay<S, T, C>
where
    S: EventReader + EventSubscriber + Clone + 'static,
    T: Transport,
    C: CheckpointStore,
{
    /// A relay from a store that is only read (the checkpoint kept in `checkpoints`).
    pub fn builder_with(
        name: impl Into<String>,
        store: S,
        transport: T,
        checkpoints: C,
    ) -> OutboxRelayBuilder<S, T, C> {
        OutboxRelayBuilder {
            name: name.into(),
            store,
            transport,
            checkpoints,
            topics: TopicMap::new(DEFAULT_TOPIC),
            filter: Filter::all(),
            cadence: CheckpointCadence::default(),
            backoff: Backoff::default(),
            head_interval: Duration::from_secs(1),
            rng: JitterRng::from_entropy(),
        }
    }

    /// The relay's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name of its checkpoint (`relay-<name>`).
    pub fn checkpoint_name(&self) -> &str {
        &self.checkpoint
    }

    /// The relay's numbers as of now (cheap: a clone of a small struct).
    pub fn stats(&self) -> RelayStats {
        self.stats.borrow().clone()
    }

    /// The relay's numbers, updated as they change.
    pub fn watch(&self) -> watch::Receiver<RelayStats> {
        self.stats.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut RelayStats)) {
        self.stats.send_modify(f);
    }

    fn delay(&self, failures: u32) -> Duration {
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        self.backoff.delay(failures, &mut rng)
    }

    fn checkpoint_error(&self, source: CheckpointError) -> RelayError {
        RelayError::Checkpoint {
            relay: self.name.clone(),
            source,
        }
    }

    /// Relays from the checkpoint until `shutdown` completes, then saves the checkpoint
    /// and returns the final numbers. It returns early only on an error retrying cannot
    /// fix: a checkpoint conflict (another relay with this name), an unreadable
    /// checkpoint, or a message the transport refuses outright.
    ///
    /// Cancel-safe: dropping the future loses nothing; events confirmed since the last
    /// checkpoint are published again by the next run (and removed downstream by id).
    /// Run one `run` per relay at a time.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RelayStats, RelayError> {
        let mut shutdown: Shutdown<'_> = std::pin::pin!(shutdown);
        let shutdown = &mut shutdown;
        let Wake::Ready(loaded) = self.load(shutdown).await? else {
            return Ok(self.stats());
        };
        let next = loaded.unwrap_or(0);
        let mut run = Run {
            next,
            saved: loaded,
            relayed_since_save: 0,
            last_save: Instant::now(),
        };
        self.update(|s| {
            *s = RelayStats {
                next,
                checkpoint: loaded,
                ..RelayStats::default()
            };
        });
        tracing::info!(relay = %self.name, from = next, "outbox relay starting");
        self.refresh_head().await;
        let mut failures = 0u32;
        loop {
            let stopped = self.follow(&mut run, shutdown, &mut failures).await?;
            if stopped {
                break;
            }
            // The subscription failed or ended: back off, subscribe again from `next`.
            failures = failures.saturating_add(1);
            self.update(|s| s.resubscribes += 1);
            let delay = self.delay(failures);
            tokio::select! {
                () = &mut *shutdown => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.save(&mut run, None).await?;
        let stats = self.stats();
        tracing::info!(relay = %self.name, relayed = stats.relayed, next = stats.next,
            "outbox relay stopped");
        Ok(stats)
    }

    /// Loads the checkpoint, retrying store failures.
    async fn load(
        &self,
        shutdown: &mut Shutdown<'_>,
    ) -> Result<Wake<Option<Position>>, RelayError> {
        let mut failures = 0u32;
        loop {
            match self.checkpoints.load(&self.checkpoint).await {
                Ok(c) => return Ok(Wake::Ready(c.map(|c| c.next))),
                Err(CheckpointError::Store { source, .. }) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(relay = %self.name, error = %source, "loading the relay checkpoint failed; retrying");
                    self.update(|s| s.last_error = Some(source.to_string()));
                    let delay = self.delay(failures);
                    tokio::select! {
                        () = &mut *shutdown => return Ok(Wake::Shutdown),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                Err(e) => return Err(self.checkpoint_error(e)),
            }
        }
    }

    async fn refresh_head(&self) {
        match self.store.head().await {
            Ok(head) => self.update(|s| s.set_head(head)),
            Err(e) => {
                tracing::debug!(relay = %self.name, error = %e, "reading the store's head failed");
            }
        }
    }

    /// Follows one subscription from `run.next`. Ok(true): shut down; Ok(false): the
    /// subscription failed and should be made again.
    async fn follow(
        &self,
        run: &mut Run,
        shutdown: &mut Shutdown<'_>,
        failures: &mut u32,
    ) -> Result<bool, RelayError> {
        let mut events = std::pin::pin!(
            self.store
                .subscribe_all(Start::At(run.next), Filter::all())
                .ready_chunks(PAGE)
        );
        let mut tick = tokio::time::interval(self.head_interval.min(self.cadence.interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_head = Instant::now();
        loop {
            let batch = tokio::select! {
                () = &mut *shutdown => return Ok(true),
                _ = tick.tick() => {
                    if last_head.elapsed() >= self.head_interval {
                        last_head = Instant::now();
                        self.refresh_head().await;
                    }
                    if run.last_save.elapsed() >= self.cadence.interval {
                        if let Wake::Shutdown = self.save(run, Some(&mut *shutdown)).await? {
                            return Ok(true);
                        }
                    }
                    continue;
                }
                batch = events.next() => batch,
            };
            let Some(batch) = batch else {
                tracing::warn!(relay = %self.name, "the store's subscription ended; subscribing again");
                self.update(|s| s.last_error = Some(StoreError::Closed.to_string()));
                return Ok(false);
            };
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(event) => {
                        if let Wake::Shutdown = self.relay_one(run, &event, shutdown).await? {
                            return Ok(true);
                        }
                        *failures = 0;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if run.relayed_since_save >= self.cadence.events
                || run.last_save.elapsed() >= self.cadence.interval
            {
                if let Wake::Shutdown = self.save(run, Some(&mut *shutdown)).await? {
                    return Ok(true);
                }
            }
            if let Some(e) = failure {
                tracing::warn!(relay = %self.name, error = %e, next = run.next,
                    "the store's subscription failed; subscribing again");
                self.update(|s| s.last_error = Some(e.to_string()));
                return Ok(false);
            }
        }
    }

    /// Publishes one event (or passes over it) and moves `run.next` past it.
    async fn relay_one(
        &self,
        run: &mut Run,
        event: &RecordedEvent,
        shutdown: &mut Shutdown<'_>,
    ) -> Result<Wake<()>, RelayError> {
        if event.position < run.next {
            return Ok(Wake::Ready(()));
        }
        if event.stream.is_system()
            || !self
                .filter
                .matches(event.stream.as_str(), &event.event_type)
        {
            run.next = event.position + 1;
            self.update(|s| {
                s.skipped += 1;
                s.next = run.next;
                s.set_head(Some(event.position));
            });
            return Ok(Wake::Ready(()));
        }
        let topic = self.topics.topic_for(&event.event_type);
        let mut failures = 0u32;
        loop {
            let span = tracing::info_span!("relay.publish", relay = %self.name,
                position = event.position, stream = %event.stream, revision = event.revision,
                event_id = %event.event_id, event_type = %event.event_type, topic = %topic,
                attempt = failures + 1);
            let result = self
                .transport
                .publish(Message::recorded(topic, event))
                .instrument(span)
                .await;
            match result {
                Ok(()) => break,
                Err(source @ TransportError::InvalidName { .. }) => {
                    return Err(RelayError::Publish {
                        relay: self.name.clone(),
                        position: event.position,
                        source,
                    });
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = self.delay(failures);
                    tracing::warn!(relay = %self.name, position = event.position, error = %e,
                        retry_in_ms = delay.as_millis() as u64, "publish not confirmed; retrying");
                    self.update(|s| {
                        s.retries += 1;
                        s.last_error = Some(e.to_string());
                    });
                    tokio::select! {
                        () = &mut *shutdown => return Ok(Wake::Shutdown),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        run.next = event.position + 1;
        run.relayed_since_save += 1;
        self.update(|s| {
            s.relayed += 1;
            s.position = Some(event.position);
            s.next = run.next;
            s.set_head(Some(event.position));
        });
        Ok(Wake::Ready(()))
    }

    /// Saves the checkpoint if it moved, retrying store failures (until `shutdown`, when
    /// given). Passing over the relay's own checkpoint record alone does not count as a
    /// move, so an idle relay does not write forever.
    async fn save(
        &self,
        run: &mut Run,
        mut shutdown: Option<&mut Shutdown<'_>>,
    ) -> Result<Wake<()>, RelayError> {
        let moved = run.relayed_since_save > 0 || run.saved.is_none_or(|s| run.next > s + 1);
        run.last_save = Instant::now();
        if !moved || run.saved == Some(run.next) || (run.saved.is_none() && run.next == 0) {
            return Ok(Wake::Ready(()));
        }
        let checkpoint = Checkpoint::at(run.next);
        let mut failures = 0u32;
        loop {
            match self.checkpoints.save(&self.checkpoint, &checkpoint).await {
                Ok(()) => break,
                Err(CheckpointError::Store { source, .. }) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(relay = %self.name, error = %source, "saving the relay checkpoint failed; retrying");
                    self.update(|s| s.last_error = Some(source.to_string()));
                    let delay = self.delay(failures);
                    match shutdown.as_mut() {
                        Some(stop) => tokio::select! {
                            () = &mut **stop => return Ok(Wake::Shutdown),
                            () = tokio::time::sleep(delay) => {}
                        },
                        // Stopping: a few attempts, then leave it to the next run.
                        None if failures >= 3 => return Ok(Wake::Ready(())),
                        None => tokio::time::sleep(delay).await,
                    }
                }
                Err(e) => return Err(self.checkpoint_error(e)),
            }
        }
        tracing::debug!(relay = %self.name, next = run.next, "relay checkpoint saved");
        run.saved = Some(run.next);
        run.relayed_since_save = 0;
        self.update(|s| s.checkpoint = Some(run.next));
        Ok(Wake::Ready(()))
    }
}
