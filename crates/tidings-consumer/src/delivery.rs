//! [`Member`] of a consumer group and the [`Delivery`] it settles: ack, nack, park or
//! release.

use std::sync::Arc;

use tokio::time::Instant;

use super::checkpoint::CheckpointStore;
use super::error::ConsumerError;
use super::group::{ConsumerGroup, Handed, Origin, Shared, State, Status};
use super::parked::{Resolution, parked_record, resolved_record};
use tidings_core::handler::{EventHandler, HandlerError, call_handler};
use tidings_core::store::{EventStore, ExpectedVersion, RecordedEvent};

/// One member of a [`ConsumerGroup`]: takes deliveries and settles them. Leaves the
/// group when dropped.
pub struct Member<S: EventStore, C: CheckpointStore> {
    group: ConsumerGroup<S, C>,
    id: u64,
}

impl<S: EventStore, C: CheckpointStore> std::fmt::Debug for Member<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("group", &self.group.name())
            .field("id", &self.id)
            .finish()
    }
}

impl<S: EventStore, C: CheckpointStore> Member<S, C> {
    pub(crate) fn new(group: ConsumerGroup<S, C>, id: u64) -> Self {
        Self { group, id }
    }

    /// The member's id in its group (from 1).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next delivery, waiting until one is ready (and the breaker lets it out).
    /// `None` once the group is shut down.
    ///
    /// Cancel-safe: a future dropped before it returns has taken nothing.
    pub async fn next(&self) -> Result<Option<Delivery<S, C>>, ConsumerError> {
        self.group.take(self.id).await
    }

    /// Runs `handler` on every delivery until the group shuts down: success acks,
    /// failure (or panic) nacks with the error's message. Each call runs in a `tracing`
    /// span `consumer_handler`, with the event as its [`Cause`](tidings_core::handler::Cause), so what the handler
    /// publishes carries causation, and with the delivery's attempt as the current one
    /// ([`current_attempt`](tidings_core::handler::current_attempt)).
    pub async fn run<H: EventHandler + ?Sized>(&self, handler: &H) -> Result<(), ConsumerError> {
        while let Some(delivery) = self.next().await? {
            match handle(self.group.name(), self.id, handler, &delivery).await {
                Ok(()) => delivery.ack().await?,
                Err(e) => delivery.nack(e.message()).await?,
            }
        }
        Ok(())
    }
}

impl<S: EventStore, C: CheckpointStore> Drop for Member<S, C> {
    fn drop(&mut self) {
        let mut st = self.group.shared.lock();
        st.members = st.members.saturating_sub(1);
        drop(st);
        tracing::debug!(group = %self.group.name(), member = self.id, "member left");
    }
}

async fn handle<S: EventStore, C: CheckpointStore, H: EventHandler + ?Sized>(
    group: &str,
    member: u64,
    handler: &H,
    delivery: &Delivery<S, C>,
) -> Result<(), HandlerError> {
    let event = delivery.event();
    let span = tracing::info_span!(
        "consumer_handler",
        group = %group,
        member,
        event_type = %event.event_type,
        event_id = %event.event_id,
        stream = %event.stream,
        position = event.position,
        attempt = delivery.attempt(),
        outcome = tracing::field::Empty,
    );
    let result = call_handler(handler, event, Some(delivery.attempt()), &span).await;
    if let Err(e) = &result {
        tracing::warn!(parent: &span, error = %e, "consumer handler failed");
    }
    result
}

/// One event handed to one member. Settle it with [`ack`](Self::ack),
/// [`nack`](Self::nack), [`park`](Self::park) or [`release`](Self::release); dropping
/// it unsettled releases it (it is delivered again, without counting an attempt).
pub struct Delivery<S: EventStore, C: CheckpointStore> {
    shared: Arc<Shared<S, C>>,
    handed: Handed,
    member: u64,
    trial: bool,
    settled: bool,
}

impl<S: EventStore, C: CheckpointStore> std::fmt::Debug for Delivery<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("member", &self.member)
            .field("stream", &self.handed.event.stream)
            .field("position", &self.handed.event.position)
            .field("attempt", &self.handed.attempt)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, C: CheckpointStore> Delivery<S, C> {
    pub(crate) fn new(shared: Arc<Shared<S, C>>, handed: Handed, member: u64, trial: bool) -> Self {
        Self {
            shared,
            handed,
            member,
            trial,
            settled: false,
        }
    }

    /// The event.
    pub fn event(&self) -> &RecordedEvent {
        &self.handed.event
    }

    /// Which attempt this is (from 1).
    pub fn attempt(&self) -> u32 {
        self.handed.attempt
    }

    /// The member it was handed to.
    pub fn member(&self) -> u64 {
        self.member
    }

    /// True when this delivery is the circuit breaker's half-open trial.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// True when it is a replay of a parked event.
    pub fn is_replay(&self) -> bool {
        self.handed.replay
    }

    /// Handled: the event is settled, the breaker closes, and the checkpoint moves past
    /// it once every earlier event is settled too.
    ///
    /// The acknowledgement is recorded before anything is written, so an error here is
    /// about writing the checkpoint (or a replay's resolution), not about the ack.
    pub async fn ack(mut self) -> Result<(), ConsumerError> {
        self.settled = true;
        self.shared
            .settle_done(self.handed.seq, self.handed.delivery, Done::Acked)
            .await
            .map(|_| ())
    }

    /// Failed because of `reason`: counts the attempt against the breaker and the retry
    /// policy, then schedules the next attempt after the policy's delay, or parks the
    /// event when this was its last attempt.
    pub async fn nack(mut self, reason: &str) -> Result<(), ConsumerError> {
        self.settled = true;
        self.shared
            .settle_failed(self.handed.seq, self.handed.delivery, reason)
            .await
            .map(|_| ())
    }

    /// Parks the event now with `reason`, whatever attempts are left — for an event
    /// the handler knows it can never handle. An explicit park does not count as a
    /// failure for the circuit breaker. If the parked stream cannot be written, the
    /// event stays in the group (released) and the error is returned.
    pub async fn park(mut self, reason: &str) -> Result<(), ConsumerError> {
        self.settled = true;
        self.shared
            .settle_park(self.handed.seq, self.handed.delivery, reason)
            .await
            .map(|_| ())
    }

    /// Gives the event back unsettled, without counting an attempt: it is delivered
    /// again (to any member) at once.
    pub fn release(self) {
        drop(self);
    }
}

impl<S: EventStore, C: CheckpointStore> Drop for Delivery<S, C> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if self.trial {
            self.shared.lock().breaker.trial_abandoned();
        }
        self.shared.release(self.handed.seq, self.handed.delivery);
    }
}

/// How a message was settled without failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Done {
    Acked,
    Skipped,
}

/// Settling entries by their hand-out: shared by [`Delivery`] and hosted groups. Each
/// returns `Ok(false)` when the hand-out is stale (the entry is no longer out under
/// that delivery id) and changes nothing then.
impl<S: EventStore, C: CheckpointStore> Shared<S, C> {
    /// Acknowledged or skipped: removes the entry, resolves a replayed parked record,
    /// and saves the checkpoint when due.
    pub(crate) async fn settle_done(
        &self,
        seq: u64,
        delivery: u64,
        how: Done,
    ) -> Result<bool, ConsumerError> {
        let entry = {
            let mut st = self.lock();
            if !st.holds(seq, delivery) {
                return Ok(false);
            }
            match how {
                Done::Acked => {
                    st.breaker.on_success();
                    st.counters.acked += 1;
                }
                Done::Skipped => st.counters.skipped += 1,
            }
            remove(&mut st, seq)
        };
        self.changed.notify_waiters();
        if let Some((Origin::Parked(revision), event)) = entry {
            let resolution = match how {
                Done::Acked => Resolution::Acked,
                Done::Skipped => Resolution::Skipped,
            };
            let record = resolved_record(self.clock.as_ref(), revision, resolution);
            let resolved = self.append_parked(vec![record]).await;
            // Settled either way; if the resolution could not be written the parked
            // record stays listed and may be replayed again (at-least-once).
            {
                let mut st = self.lock();
                // Not replaying any more: its parked record was deleted meanwhile.
                if st.replaying.remove(&revision) && resolved.is_ok() {
                    st.parked_resolved(&event.stream);
                }
            }
            self.changed.notify_waiters();
            resolved?;
        }
        self.save_checkpoint(false).await?;
        Ok(true)
    }

    /// Failed: counts the attempt against the breaker and the retry policy, then
    /// schedules the next attempt after the policy's delay, or parks the entry when
    /// this was its last attempt.
    pub(crate) async fn settle_failed(
        &self,
        seq: u64,
        delivery: u64,
        reason: &str,
    ) -> Result<bool, ConsumerError> {
        let park_attempts = {
            let mut st = self.lock();
            if !st.holds(seq, delivery) {
                return Ok(false);
            }
            let now = Instant::now();
            st.breaker.on_failure(now);
            match fail_entry(&mut st, seq, now, true) {
                Failed::Retry { delay, attempt } => {
                    if let Some(e) = st.entries.get(&seq) {
                        tracing::info!(group = %self.name, stream = %e.event.stream,
                            position = e.event.position, attempt,
                            delay_ms = delay.as_millis() as u64, %reason,
                            "delivery failed; will retry");
                    }
                    None
                }
                Failed::Park { attempts } => Some(attempts),
                Failed::Gone => None,
            }
        };
        self.changed.notify_waiters();
        if let Some(attempts) = park_attempts {
            self.park_entry(seq, reason, attempts, false).await?;
        }
        Ok(true)
    }

    /// Parks the entry now, whatever attempts are left.
    pub(crate) async fn settle_park(
        &self,
        seq: u64,
        delivery: u64,
        reason: &str,
    ) -> Result<bool, ConsumerError> {
        let attempts = {
            let mut st = self.lock();
            if !st.holds(seq, delivery) {
                return Ok(false);
            }
            let Some(e) = st.entries.get_mut(&seq) else {
                return Ok(false);
            };
            e.status = Status::Parking;
            e.failures + 1
        };
        self.park_entry(seq, reason, attempts, false).await?;
        Ok(true)
    }

    /// Gives the hand-out back unsettled, without counting an attempt.
    pub(crate) fn release(&self, seq: u64, delivery: u64) {
        {
            let mut st = self.lock();
            if !st.holds(seq, delivery) {
                return;
            }
            st.counters.released += 1;
            if let Some(e) = st.entries.get_mut(&seq) {
                e.status = Status::Ready {
                    not_before: Instant::now(),
                };
            }
        }
        self.changed.notify_waiters();
    }

    /// Writes the entry `seq` (in [`Status::Parking`]) to the parked stream with
    /// `reason` and `attempts`, then removes it (its log position is settled). A
    /// replayed entry's old parked record is resolved in the same append. If the
    /// append fails, the entry is ready again and the error is returned. With
    /// sequenced parking, the buffered log events of its stream are parked behind it.
    pub(crate) async fn park_entry(
        &self,
        seq: u64,
        reason: &str,
        attempts: u32,
        held: bool,
    ) -> Result<(), ConsumerError> {
        let Some((event, origin)) = self
            .lock()
            .entries
            .get(&seq)
            .map(|e| (e.event.clone(), e.origin))
        else {
            return Ok(());
        };
        let mut records = vec![parked_record(
            self.clock.as_ref(),
            &event,
            reason,
            attempts,
            held,
        )];
        if let Origin::Parked(revision) = origin {
            records.push(resolved_record(
                self.clock.as_ref(),
                revision,
                Resolution::ParkedAgain,
            ));
        }
        if let Err(e) = self.append_parked(records).await {
            let mut st = self.lock();
            if let Some(entry) = st.entries.get_mut(&seq) {
                if entry.status == Status::Parking {
                    entry.status = Status::Ready {
                        not_before: Instant::now(),
                    };
                }
            }
            drop(st);
            self.changed.notify_waiters();
            return Err(e);
        }
        if held {
            tracing::debug!(group = %self.name, stream = %event.stream,
                position = event.position, "event parked behind an earlier parked one");
        } else {
            tracing::warn!(group = %self.name, stream = %event.stream,
                position = event.position, attempts, %reason, "event parked");
        }
        let behind = {
            let mut st = self.lock();
            if held {
                st.counters.held += 1;
            } else {
                st.counters.parked += 1;
            }
            *st.parked_per_stream
                .entry(event.stream.clone())
                .or_insert(0) += 1;
            if let Some((Origin::Parked(revision), _)) = remove(&mut st, seq) {
                if st.replaying.remove(&revision) {
                    st.parked_resolved(&event.stream);
                }
            }
            hold_behind(&mut st, &event.stream)
        };
        self.changed.notify_waiters();
        for seq in behind {
            Box::pin(self.park_entry(seq, &held_reason(&event), 0, true)).await?;
        }
        self.save_checkpoint(false).await
    }

    pub(crate) async fn append_parked(
        &self,
        records: Vec<tidings_core::event::Event>,
    ) -> Result<(), ConsumerError> {
        self.store
            .append(&self.parked_stream, ExpectedVersion::Any, records)
            .await
            .map(|_| ())
            .map_err(|source| ConsumerError::Parked {
                group: self.name.clone(),
                stream: self.parked_stream.clone(),
                source,
            })
    }
}

/// Why an event was parked behind another.
pub(crate) fn held_reason(first: &RecordedEvent) -> String {
    format!(
        "held behind the parked event at position {} of stream {}",
        first.position, first.stream
    )
}

/// With sequenced parking, marks the ready log entries of `stream` for parking behind
/// a parked one (when the stream is blocked) and returns them in order.
pub(crate) fn hold_behind(st: &mut State, stream: &tidings_core::stream::StreamId) -> Vec<u64> {
    if !st.blocked(stream) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (seq, e) in st.entries.iter_mut() {
        if e.origin == Origin::Log
            && &e.event.stream == stream
            && matches!(e.status, Status::Ready { .. })
        {
            e.status = Status::Parking;
            out.push(*seq);
        }
    }
    out
}

/// What counting a failed attempt did.
pub(crate) enum Failed {
    /// Ready again after `delay`.
    Retry {
        delay: std::time::Duration,
        attempt: u32,
    },
    /// Out of attempts: marked for parking after `attempts`.
    Park { attempts: u32 },
    /// No such entry.
    Gone,
}

/// Counts a failed attempt of the entry `seq` (out now): ready again (after the retry
/// policy's delay when `backoff`, at once otherwise) or, after the last attempt,
/// marked for parking.
pub(crate) fn fail_entry(st: &mut State, seq: u64, now: Instant, backoff: bool) -> Failed {
    let retry = st.retry;
    let Some(attempt) = st.entries.get(&seq).map(|e| e.failures + 1) else {
        return Failed::Gone;
    };
    if retry.should_retry(attempt) {
        let delay = if backoff {
            retry.delay(attempt, &mut st.rng)
        } else {
            std::time::Duration::ZERO
        };
        st.counters.retried += 1;
        if let Some(e) = st.entries.get_mut(&seq) {
            e.failures = attempt;
            e.status = Status::Ready {
                not_before: now + delay,
            };
        }
        Failed::Retry { delay, attempt }
    } else {
        if let Some(e) = st.entries.get_mut(&seq) {
            e.failures = attempt;
            e.status = Status::Parking;
        }
        Failed::Park { attempts: attempt }
    }
}

/// Removes the entry; settles its log position. Returns its origin and event.
pub(crate) fn remove(st: &mut State, seq: u64) -> Option<(Origin, RecordedEvent)> {
    let entry = st.entries.remove(&seq)?;
    if entry.origin == Origin::Log {
        let keep = st.buffer;
        st.settle(entry.event.position, keep);
    }
    Some((entry.origin, entry.event))
}
