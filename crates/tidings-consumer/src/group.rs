//! [`ConsumerGroup`]: competing consumers over any [`EventStore`], with a checkpoint.
//!
//! One reader task follows the store from the group's checkpoint (a catch-up
//! subscription filtered by the group's [`Filter`]; system streams are always skipped)
//! and buffers what it reads, at most `buffer` unsettled events. Members take
//! deliveries from the buffer:
//!
//! - **Exactly one member at a time per event.** A delivery is owned by the member that
//!   took it until it is acknowledged, nacked, parked, released or dropped.
//! - **Per-stream order.** A delivery is only handed out when every earlier event of the
//!   same stream is settled (acknowledged or parked): a stream is a queue with at most
//!   one event in flight or waiting for a retry, and any idle member may take the head
//!   of any stream. (Work stealing by stream rather than partitioning by a hash of the
//!   stream name: no rebalancing when members join or leave, and a slow member never
//!   holds streams it is not working on.)
//! - **Checkpoint after a contiguous prefix.** The checkpoint is the position of the
//!   oldest unsettled event (or the reader's position when none is): everything before
//!   it is settled. It is saved with the settled positions after it (up to `buffer`
//!   of them) after acknowledgements, every `checkpoint_every` settled events, and on
//!   [`ConsumerGroup::shutdown`]. If another instance moved
//!   the checkpoint meanwhile ([`CheckpointError::Conflict`]), the group stops:
//!   members get the error from [`Member::next`]. After a restart the group reads
//!   from there and skips the saved settled positions, so only unsettled events are
//!   delivered again — plus, with `checkpoint_every > 1`, those settled since the last
//!   save, and settled ones beyond the `buffer` positions kept: at-least-once.
//! - **Retries and parking.** A nack schedules the event again after the
//!   [`RetryPolicy`]'s delay; after the last attempt it is parked in `$parked-<group>`
//!   (see [`parked`](super::parked)) and the stream moves on.
//! - **Circuit breaker.** Failures and successes feed the group's [`CircuitBreaker`];
//!   while it is open nothing is delivered.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::breaker::{CircuitBreaker, Permit};
use super::checkpoint::{Checkpoint, CheckpointError, CheckpointStore, StoreCheckpoints};
use super::delivery::{Delivery, Member};
use super::error::ConsumerError;
use super::parked::{ParkedEvent, read_parked};
use super::reader::{ReaderGuard, read_log};
use super::retry::{JitterRng, RetryPolicy};
use super::stats::ConsumerStats;
use tidings_core::event::{Clock, SystemClock};
use tidings_core::group::Strategy;
use tidings_core::store::{EventStore, Filter, Position, RecordedEvent, Revision};
use tidings_core::stream::StreamId;

/// Events buffered by default.
pub const DEFAULT_BUFFER: usize = 256;

/// Where a buffered event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Read from the log; counts for the checkpoint.
    Log,
    /// Queued again from the parked record at this revision.
    Parked(Revision),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Waiting to be handed out, not before this instant.
    Ready { not_before: Instant },
    /// Out with `member` under the hand-out `delivery` since `since`.
    InFlight {
        member: u64,
        delivery: u64,
        since: Instant,
    },
    /// Being written to the parked stream: neither ready nor held by anyone, and (for
    /// per-stream order) still in its stream's way.
    Parking,
}

#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) event: RecordedEvent,
    pub(crate) origin: Origin,
    /// Failed attempts so far.
    pub(crate) failures: u32,
    pub(crate) status: Status,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) delivered: u64,
    pub(crate) acked: u64,
    pub(crate) retried: u64,
    pub(crate) parked: u64,
    pub(crate) replayed: u64,
    pub(crate) released: u64,
    pub(crate) skipped: u64,
    pub(crate) timed_out: u64,
    pub(crate) expired: u64,
    pub(crate) held: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Unsettled events by arrival order.
    pub(crate) entries: BTreeMap<u64, Entry>,
    next_seq: u64,
    /// Positions of unsettled log events.
    pub(crate) log_pending: BTreeSet<Position>,
    /// Every log position before this has been read.
    pub(crate) read_upto: Position,
    /// Log events settled in total (for `checkpoint_every`).
    pub(crate) settled: u64,
    /// Settled log positions after the checkpoint (at most `buffer` of them, the
    /// lowest): saved with it so a restart skips them.
    pub(crate) settled_above: BTreeSet<Position>,
    pub(crate) breaker: CircuitBreaker,
    pub(crate) rng: JitterRng,
    /// Parked revisions queued by a replay and not yet settled.
    pub(crate) replaying: HashSet<Revision>,
    pub(crate) counters: Counters,
    pub(crate) members: usize,
    next_member: u64,
    pub(crate) closed: bool,
    pub(crate) failed: Option<ConsumerError>,
    /// The last checkpoint saved.
    pub(crate) saved_checkpoint: Position,
    /// How entries are handed out.
    pub(crate) strategy: Strategy,
    /// Which log events are buffered (applied as they are read).
    pub(crate) filter: Filter,
    /// Retries and parking.
    pub(crate) retry: RetryPolicy,
    /// At most this many unsettled log events are buffered.
    pub(crate) buffer: usize,
    /// The last hand-out's id.
    pub(crate) next_delivery: u64,
    /// Sequenced parking: log events of a stream with unresolved parked events are
    /// parked behind them.
    pub(crate) sequenced: bool,
    /// Unresolved parked records per original stream (kept for sequenced parking).
    pub(crate) parked_per_stream: std::collections::HashMap<StreamId, usize>,
}

impl State {
    /// Everything before this position is settled.
    pub(crate) fn checkpoint(&self) -> Position {
        self.log_pending.first().copied().unwrap_or(self.read_upto)
    }

    /// Records that the log event at `position` is settled.
    pub(crate) fn settle(&mut self, position: Position, keep: usize) {
        self.log_pending.remove(&position);
        self.settled += 1;
        self.settled_above.insert(position);
        let checkpoint = self.checkpoint();
        self.settled_above = self.settled_above.split_off(&checkpoint);
        while self.settled_above.len() > keep {
            self.settled_above.pop_last();
        }
    }

    /// True when the log events of `stream` are parked behind a parked one.
    pub(crate) fn blocked(&self, stream: &StreamId) -> bool {
        self.sequenced && self.parked_per_stream.get(stream).is_some_and(|n| *n > 0)
    }

    /// One parked record of `stream` was resolved (acknowledged, skipped or deleted
    /// after a replay, or parked anew).
    pub(crate) fn parked_resolved(&mut self, stream: &StreamId) {
        if let Some(n) = self.parked_per_stream.get_mut(stream) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.parked_per_stream.remove(stream);
            }
        }
    }

    /// Hands the entry `seq` to `member` with a fresh delivery id.
    pub(crate) fn hand_out(&mut self, seq: u64, member: u64, now: Instant) -> Option<Handed> {
        self.next_delivery += 1;
        let delivery = self.next_delivery;
        let entry = self.entries.get_mut(&seq)?;
        entry.status = Status::InFlight {
            member,
            delivery,
            since: now,
        };
        let handed = Handed {
            seq,
            delivery,
            event: entry.event.clone(),
            attempt: entry.failures + 1,
            replay: matches!(entry.origin, Origin::Parked(_)),
        };
        self.counters.delivered += 1;
        Some(handed)
    }

    /// True when entry `seq` is out under the hand-out `delivery`.
    pub(crate) fn holds(&self, seq: u64, delivery: u64) -> bool {
        self.entries.get(&seq).is_some_and(
            |e| matches!(e.status, Status::InFlight { delivery: d, .. } if d == delivery),
        )
    }

    pub(crate) fn push(&mut self, event: RecordedEvent, origin: Origin) {
        if origin == Origin::Log {
            self.log_pending.insert(event.position);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert(
            seq,
            Entry {
                event,
                origin,
                failures: 0,
                status: Status::Ready {
                    not_before: Instant::now(),
                },
            },
        );
    }
}

/// What the group was built with.
pub(crate) struct Shared<S, C> {
    pub(crate) name: String,
    /// The checkpoint's name in the checkpoint store.
    pub(crate) checkpoint_name: String,
    pub(crate) store: S,
    pub(crate) checkpoints: C,
    pub(crate) parked_stream: StreamId,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) checkpoint_every: u64,
    pub(crate) state: Mutex<State>,
    /// Woken on every change a waiting member or the reader may care about.
    pub(crate) changed: Notify,
    /// The last saved checkpoint and the settled count at that save.
    pub(crate) saved: tokio::sync::Mutex<(Position, u64)>,
}

impl<S, C> Shared<S, C> {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<S: EventStore, C: CheckpointStore> Shared<S, C> {
    /// Saves the checkpoint if it moved and `checkpoint_every` settled events passed
    /// since the last save (or `force`).
    pub(crate) async fn save_checkpoint(&self, force: bool) -> Result<(), ConsumerError> {
        self.save_checkpoint_when(if force { Due::Always } else { Due::Every })
            .await
    }

    /// Saves the checkpoint if it moved and `due` says so.
    pub(crate) async fn save_checkpoint_when(&self, due: Due) -> Result<(), ConsumerError> {
        let mut saved = self.saved.lock().await;
        let (checkpoint, settled) = {
            let st = self.lock();
            let checkpoint = Checkpoint {
                next: st.checkpoint(),
                settled: st.settled_above.iter().copied().collect(),
            };
            (checkpoint, st.settled)
        };
        let due = match due {
            Due::Always => true,
            Due::Every => settled.saturating_sub(saved.1) >= self.checkpoint_every,
            Due::Settled => settled != saved.1,
        };
        let changed = checkpoint.next != saved.0 || settled != saved.1;
        if due && changed {
            if let Err(e) = self
                .checkpoints
                .save(&self.checkpoint_name, &checkpoint)
                .await
            {
                if let CheckpointError::Conflict { .. } = e {
                    // Another instance owns the checkpoint: stop delivering rather than
                    // handle events twice over with nothing to show for it.
                    tracing::error!(group = %self.name, error = %e, "consumer group stopped");
                    self.lock().failed = Some(ConsumerError::Checkpoint(e.clone()));
                    self.changed.notify_waiters();
                }
                return Err(e.into());
            }
            *saved = (checkpoint.next, settled);
            self.lock().saved_checkpoint = checkpoint.next;
        }
        Ok(())
    }
}

/// When a checkpoint save is due (it is only written if the checkpoint moved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Now.
    Always,
    /// After `checkpoint_every` settled events.
    Every,
    /// After any settled event: a timer's save, which does not write again only
    /// because the reader passed the checkpoint records it wrote itself.
    Settled,
}

/// What a hosted group sets beyond the builder's public options.
#[derive(Debug, Clone)]
pub(crate) struct Hosting {
    /// The checkpoint's name.
    pub(crate) checkpoint_name: String,
    /// The parked stream.
    pub(crate) parked_stream: StreamId,
    /// Where to start when no checkpoint was saved.
    pub(crate) start: Position,
    pub(crate) strategy: Strategy,
    pub(crate) sequenced: bool,
}

/// Builds a [`ConsumerGroup`]; see [`ConsumerGroup::builder`].
pub struct ConsumerGroupBuilder<S, C> {
    hosting: Option<Hosting>,
    name: String,
    store: S,
    checkpoints: C,
    filter: Filter,
    retry: RetryPolicy,
    breaker: CircuitBreaker,
    buffer: usize,
    checkpoint_every: u64,
    seed: Option<u64>,
    clock: Arc<dyn Clock>,
}

impl<S, C> std::fmt::Debug for ConsumerGroupBuilder<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerGroupBuilder")
            .field("name", &self.name)
            .field("filter", &self.filter)
            .field("retry", &self.retry)
            .field("buffer", &self.buffer)
            .field("checkpoint_every", &self.checkpoint_every)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, C: CheckpointStore> ConsumerGroupBuilder<S, C> {
    /// Keeps the checkpoint in `checkpoints` instead of the store's
    /// `$checkpoint-<group>` stream.
    pub fn checkpoints<C2: CheckpointStore>(self, checkpoints: C2) -> ConsumerGroupBuilder<S, C2> {
        ConsumerGroupBuilder {
            hosting: self.hosting,
            name: self.name,
            store: self.store,
            checkpoints,
            filter: self.filter,
            retry: self.retry,
            breaker: self.breaker,
            buffer: self.buffer,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            clock: self.clock,
        }
    }

    /// Only events that pass `filter` (default: every non-system event).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = filter;
        self
    }

    /// Retries and parking (default: [`RetryPolicy::default`]).
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

    /// At most this many unsettled log events are buffered (default
    /// [`DEFAULT_BUFFER`]; at least 1).
    pub fn buffer(mut self, buffer: usize) -> Self {
        self.buffer = buffer.max(1);
        self
    }

    /// Saves the checkpoint once this many events were settled since the last save
    /// (default 1: after every acknowledgement that moves it).
    pub fn checkpoint_every(mut self, events: u64) -> Self {
        self.checkpoint_every = events.max(1);
        self
    }

    /// Seeds the retry jitter, to replay a schedule (default: from entropy).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The clock for parked records' timestamps.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Hosted groups: their own checkpoint and parked stream names, start, strategy
    /// and sequenced parking; the filter is applied as events are read, so it may
    /// change while the group runs.
    pub(crate) fn hosting(mut self, hosting: Hosting) -> Self {
        self.hosting = Some(hosting);
        self
    }

    /// Loads the checkpoint and starts reading. Call inside a Tokio runtime.
    pub async fn start(self) -> Result<ConsumerGroup<S, C>, ConsumerError> {
        let invalid = |source| ConsumerError::InvalidName {
            name: self.name.clone(),
            source,
        };
        let (checkpoint_name, parked_stream, start, strategy, sequenced) = match &self.hosting {
            Some(h) => (
                h.checkpoint_name.clone(),
                h.parked_stream.clone(),
                h.start,
                h.strategy,
                h.sequenced,
            ),
            None => (
                self.name.clone(),
                StreamId::system(&format!("$parked-{}", self.name)).map_err(invalid)?,
                0,
                Strategy::Pinned,
                false,
            ),
        };
        StreamId::system(&format!("$checkpoint-{checkpoint_name}")).map_err(invalid)?;
        let loaded = self
            .checkpoints
            .load(&checkpoint_name)
            .await?
            .unwrap_or_else(|| Checkpoint::at(start));
        let from = loaded.next;
        let mut settled_above: BTreeSet<Position> =
            loaded.settled.into_iter().filter(|&p| p > from).collect();
        while settled_above.len() > self.buffer {
            settled_above.pop_last();
        }
        // Unresolved parked events per stream, for sequenced parking (kept for every
        // hosted group: sequenced parking may be switched on later).
        let mut parked_per_stream = std::collections::HashMap::new();
        // Replays requested before a restart and not yet resolved: queued again.
        let mut requested = Vec::new();
        if self.hosting.is_some() {
            for p in read_parked(&self.store, &self.name, &parked_stream).await? {
                *parked_per_stream.entry(p.event.stream.clone()).or_insert(0) += 1;
                if p.replay_requested {
                    requested.push(p);
                }
            }
        }
        let rng = self
            .seed
            .map_or_else(JitterRng::from_entropy, JitterRng::new);
        let dynamic_filter = self.hosting.is_some();
        let shared = Arc::new(Shared {
            name: self.name,
            checkpoint_name,
            store: self.store,
            checkpoints: self.checkpoints,
            parked_stream,
            clock: self.clock,
            checkpoint_every: self.checkpoint_every,
            state: Mutex::new(State {
                entries: BTreeMap::new(),
                next_seq: 0,
                log_pending: BTreeSet::new(),
                read_upto: from,
                settled: 0,
                settled_above,
                breaker: self.breaker,
                rng,
                replaying: HashSet::new(),
                counters: Counters::default(),
                members: 0,
                next_member: 0,
                closed: false,
                failed: None,
                saved_checkpoint: from,
                strategy,
                filter: self.filter.clone(),
                retry: self.retry,
                buffer: self.buffer,
                next_delivery: 0,
                sequenced,
                parked_per_stream,
            }),
            changed: Notify::new(),
            saved: tokio::sync::Mutex::new((from, 0)),
        });
        if !requested.is_empty() {
            let mut st = shared.lock();
            for p in in_stream_order(requested) {
                if st.replaying.insert(p.parked_revision) {
                    st.push(p.event, Origin::Parked(p.parked_revision));
                    st.counters.replayed += 1;
                }
            }
        }
        tracing::info!(group = %shared.name, from, "consumer group starting");
        // A hosted group's filter may change: it reads everything and filters as it
        // buffers.
        let subscription = if dynamic_filter {
            Filter::all()
        } else {
            self.filter
        };
        let reader = tokio::spawn(read_log(shared.clone(), from, subscription));
        Ok(ConsumerGroup {
            shared,
            _reader: Arc::new(ReaderGuard(reader)),
        })
    }
}

/// A group of competing consumers sharing one checkpoint; clones share the group.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
/// use tidings::consumer::ConsumerGroup;
/// let store = InMemoryStore::new();
/// let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
/// store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
///
/// let group = ConsumerGroup::builder("billing", store).start().await.unwrap();
/// let member = group.join();
/// let delivery = member.next().await.unwrap().unwrap();
/// assert_eq!(delivery.event().event_type, "OrderCreated");
/// delivery.ack().await.unwrap();
/// assert_eq!(group.stats().acked, 1);
/// assert_eq!(group.stats().checkpoint, 1);
/// # });
/// ```
pub struct ConsumerGroup<S, C = StoreCheckpoints<S>> {
    pub(crate) shared: Arc<Shared<S, C>>,
    _reader: Arc<ReaderGuard>,
}

impl<S, C> Clone for ConsumerGroup<S, C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _reader: self._reader.clone(),
        }
    }
}

impl<S, C> std::fmt::Debug for ConsumerGroup<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerGroup")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore> ConsumerGroup<S, StoreCheckpoints<S>> {
    /// A builder for the group `name` over `store`, whose checkpoint lives in the
    /// store's `$checkpoint-<name>` stream unless [`checkpoints`] says otherwise.
    ///
    /// [`checkpoints`]: ConsumerGroupBuilder::checkpoints
    pub fn builder(
        name: impl Into<String>,
        store: S,
    ) -> ConsumerGroupBuilder<S, StoreCheckpoints<S>> {
        ConsumerGroupBuilder {
            hosting: None,
            name: name.into(),
            checkpoints: StoreCheckpoints::new(store.clone()),
            store,
            filter: Filter::all(),
            retry: RetryPolicy::default(),
            breaker: CircuitBreaker::default(),
            buffer: DEFAULT_BUFFER,
            checkpoint_every: 1,
            seed: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl<S: EventStore, C: CheckpointStore> ConsumerGroup<S, C> {
    /// The group's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The stream its parked events go to.
    pub fn parked_stream(&self) -> &StreamId {
        &self.shared.parked_stream
    }

    /// Adds a member. It leaves when dropped; its deliveries stay valid until settled.
    pub fn join(&self) -> Member<S, C> {
        let id = {
            let mut st = self.shared.lock();
            st.members += 1;
            st.next_member += 1;
            st.next_member
        };
        tracing::debug!(group = %self.shared.name, member = id, "member joined");
        Member::new(self.clone(), id)
    }

    /// Counters and state now.
    pub fn stats(&self) -> ConsumerStats {
        let st = self.shared.lock();
        let c = &st.counters;
        ConsumerStats {
            delivered: c.delivered,
            acked: c.acked,
            retried: c.retried,
            parked: c.parked,
            replayed: c.replayed,
            released: c.released,
            checkpoint: st.saved_checkpoint,
            breaker: st.breaker.state(),
            breaker_opened: st.breaker.times_opened(),
            pending: st.entries.len(),
            in_flight: st
                .entries
                .values()
                .filter(|e| matches!(e.status, Status::InFlight { .. }))
                .count(),
            members: st.members,
        }
    }

    /// The parked list: parked events not yet resolved by a replay, oldest first.
    pub async fn parked(&self) -> Result<Vec<ParkedEvent>, ConsumerError> {
        read_parked(
            &self.shared.store,
            &self.shared.name,
            &self.shared.parked_stream,
        )
        .await
    }

    /// Queues every listed parked event for delivery again; see
    /// [`replay_parked_where`](Self::replay_parked_where).
    pub async fn replay_parked(&self) -> Result<usize, ConsumerError> {
        self.replay_parked_where(|_| true).await
    }

    /// Queues the listed parked events that `select` picks for delivery again, with
    /// fresh attempts, after the events already buffered for their streams. Each is
    /// resolved in the parked stream once acknowledged or parked anew. Events already
    /// queued by an earlier replay are skipped. Returns how many were queued.
    pub async fn replay_parked_where(
        &self,
        select: impl Fn(&ParkedEvent) -> bool,
    ) -> Result<usize, ConsumerError> {
        let parked = self.parked().await?;
        let selected: Vec<ParkedEvent> = parked.into_iter().filter(|p| select(p)).collect();
        let mut st = self.shared.lock();
        let mut queued = 0;
        for p in in_stream_order(selected) {
            if st.replaying.insert(p.parked_revision) {
                st.push(p.event, Origin::Parked(p.parked_revision));
                st.counters.replayed += 1;
                queued += 1;
            }
        }
        drop(st);
        tracing::info!(group = %self.shared.name, queued, "parked events replayed");
        self.shared.changed.notify_waiters();
        Ok(queued)
    }

    /// Saves the checkpoint now if it moved.
    pub async fn save_checkpoint(&self) -> Result<(), ConsumerError> {
        self.shared.save_checkpoint(true).await
    }

    /// Stops delivering: members' [`next`](Member::next) returns `None`, the reader
    /// stops, and the checkpoint is saved. Deliveries already out may still be settled.
    pub async fn shutdown(&self) -> Result<(), ConsumerError> {
        self.shared.lock().closed = true;
        self.shared.changed.notify_waiters();
        self.shared.save_checkpoint(true).await
    }

    /// Takes the next delivery for `member`, waiting as long as it takes.
    pub(crate) async fn take(&self, member: u64) -> Result<Option<Delivery<S, C>>, ConsumerError> {
        loop {
            let changed = self.shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let wake_at = {
                let mut st = self.shared.lock();
                if let Some(e) = &st.failed {
                    return Err(e.clone());
                }
                if st.closed {
                    return Ok(None);
                }
                match take_now(&mut st, member, Instant::now()) {
                    Take::Handed(h, trial) => {
                        return Ok(Some(Delivery::new(self.shared.clone(), h, member, trial)));
                    }
                    Take::WaitUntil(t) => t,
                }
            };
            match wake_at {
                Some(t) => {
                    tokio::select! {
                        () = &mut changed => {}
                        () = tokio::time::sleep_until(t) => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// `parked` (oldest first) reordered so that each stream's events come in their
/// original log order, while the streams keep their slots: the parked order of a
/// stream may differ from its log order after sequenced parking or a replay.
pub(crate) fn in_stream_order(parked: Vec<ParkedEvent>) -> Vec<ParkedEvent> {
    let mut per_stream: std::collections::HashMap<StreamId, Vec<ParkedEvent>> =
        std::collections::HashMap::new();
    let order: Vec<StreamId> = parked.iter().map(|p| p.event.stream.clone()).collect();
    for p in parked {
        per_stream
            .entry(p.event.stream.clone())
            .or_default()
            .push(p);
    }
    for list in per_stream.values_mut() {
        // Popped from the back: the highest position last.
        list.sort_by_key(|p| std::cmp::Reverse(p.event.position));
    }
    order
        .into_iter()
        .filter_map(|stream| per_stream.get_mut(&stream).and_then(Vec::pop))
        .collect()
}

/// One hand-out of an entry.
#[derive(Debug, Clone)]
pub(crate) struct Handed {
    pub(crate) seq: u64,
    pub(crate) delivery: u64,
    pub(crate) event: RecordedEvent,
    pub(crate) attempt: u32,
    pub(crate) replay: bool,
}

/// What [`take_now`] found.
#[allow(clippy::large_enum_variant)] // short-lived, never stored
pub(crate) enum Take {
    /// Handed out (the flag: as the breaker's half-open trial).
    Handed(Handed, bool),
    /// Nothing now; try again at this instant (None: when something changes).
    WaitUntil(Option<Instant>),
}

/// Hands the next ready entry to `member` if the strategy and the breaker allow.
pub(crate) fn take_now(st: &mut State, member: u64, now: Instant) -> Take {
    let (candidate, earliest) = pick(st, now);
    let Some(seq) = candidate else {
        return Take::WaitUntil(earliest);
    };
    let trial = match st.breaker.permit(now) {
        Permit::Allowed => false,
        Permit::Trial => true,
        Permit::WaitUntil(t) => return Take::WaitUntil(Some(t)),
        Permit::WaitForTrial => return Take::WaitUntil(None),
    };
    match st.hand_out(seq, member, now) {
        Some(h) => Take::Handed(h, trial),
        None => Take::WaitUntil(None),
    }
}

/// Hands up to `max` ready entries to `member` in one pass over the buffer (what
/// repeated [`take_now`] calls would hand out, without rescanning from the start for
/// each). Returns them, and when fewer than `max` were ready, when to try again.
pub(crate) fn take_batch(
    st: &mut State,
    member: u64,
    now: Instant,
    max: usize,
) -> (Vec<Handed>, Option<Instant>) {
    let pinned = st.strategy == Strategy::Pinned;
    let mut chosen = Vec::new();
    let mut earliest: Option<Instant> = None;
    {
        let mut held: HashSet<&StreamId> = HashSet::new();
        for (seq, e) in &st.entries {
            if chosen.len() >= max {
                break;
            }
            if pinned && !held.insert(&e.event.stream) {
                continue;
            }
            if let Status::Ready { not_before } = e.status {
                if not_before <= now {
                    chosen.push(*seq);
                } else {
                    earliest = Some(earliest.map_or(not_before, |t| t.min(not_before)));
                }
            }
        }
    }
    let mut handed = Vec::with_capacity(chosen.len());
    for seq in chosen {
        match st.breaker.permit(now) {
            Permit::Allowed => {}
            Permit::Trial => {
                // The half-open trial goes out alone.
                if let Some(h) = st.hand_out(seq, member, now) {
                    handed.push(h);
                }
                return (handed, None);
            }
            Permit::WaitUntil(t) => return (handed, Some(t)),
            Permit::WaitForTrial => return (handed, None),
        }
        if let Some(h) = st.hand_out(seq, member, now) {
            handed.push(h);
        }
    }
    (handed, earliest)
}

/// The entry to deliver now, and otherwise the earliest instant one becomes ready.
/// Pinned: the oldest ready head of a stream (an entry whose stream has no earlier
/// unsettled entry). Round-robin: the oldest ready entry.
fn pick(st: &State, now: Instant) -> (Option<u64>, Option<Instant>) {
    let pinned = st.strategy == Strategy::Pinned;
    let mut held: HashSet<&StreamId> = HashSet::new();
    let mut earliest: Option<Instant> = None;
    for (seq, e) in &st.entries {
        if pinned && !held.insert(&e.event.stream) {
            continue;
        }
        if let Status::Ready { not_before } = e.status {
            if not_before <= now {
                return (Some(*seq), None);
            }
            earliest = Some(earliest.map_or(not_before, |t| t.min(not_before)));
        }
    }
    (None, earliest)
}
