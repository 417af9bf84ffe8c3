//! [`Member`] of a consumer group and the [`Delivery`] it settles: ack, nack, park or
//! release.

use std::sync::Arc;

use tokio::time::Instant;

use super::checkpoint::CheckpointStore;
use super::error::ConsumerError;
use super::group::{ConsumerGroup, Origin, Shared, Status};
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
    seq: u64,
    member: u64,
    event: RecordedEvent,
    attempt: u32,
    trial: bool,
    settled: bool,
}

impl<S: EventStore, C: CheckpointStore> std::fmt::Debug for Delivery<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("member", &self.member)
            .field("stream", &self.event.stream)
            .field("position", &self.event.position)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, C: CheckpointStore> Delivery<S, C> {
    pub(crate) fn new(
        shared: Arc<Shared<S, C>>,
        seq: u64,
        member: u64,
        event: RecordedEvent,
        attempt: u32,
        trial: bool,
    ) -> Self {
        Self {
            shared,
            seq,
            member,
            event,
            attempt,
            trial,
            settled: false,
        }
    }

    /// The event.
    pub fn event(&self) -> &RecordedEvent {
        &self.event
    }

    /// Which attempt this is (from 1).
    pub fn attempt(&self) -> u32 {
        self.attempt
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
        self.shared
            .lock()
            .entries
            .get(&self.seq)
            .is_some_and(|e| matches!(e.origin, Origin::Parked(_)))
    }

    /// Handled: the event is settled, the breaker closes, and the checkpoint moves past
    /// it once every earlier event is settled too.
    ///
    /// The acknowledgement is recorded before anything is written, so an error here is
    /// about writing the checkpoint (or a replay's resolution), not about the ack.
    pub async fn ack(mut self) -> Result<(), ConsumerError> {
        self.settled = true;
        let origin = {
            let mut st = self.shared.lock();
            st.breaker.on_success();
            st.counters.acked += 1;
            self.remove(&mut st)
        };
        self.shared.changed.notify_waiters();
        if let Some(Origin::Parked(revision)) = origin {
            let record = resolved_record(self.shared.clock.as_ref(), revision, Resolution::Acked);
            let resolved = self.append_parked(vec![record]).await;
            // Settled either way; if the resolution could not be written the parked
            // record stays listed and may be replayed again (at-least-once).
            self.shared.lock().replaying.remove(&revision);
            resolved?;
        }
        self.shared.save_checkpoint(false).await
    }

    /// Failed because of `reason`: counts the attempt against the breaker and the retry
    /// policy, then schedules the next attempt after the policy's delay, or parks the
    /// event when this was its last attempt.
    pub async fn nack(mut self, reason: &str) -> Result<(), ConsumerError> {
        let retry_at = {
            let mut st = self.shared.lock();
            let now = Instant::now();
            st.breaker.on_failure(now);
            if self.shared.retry.should_retry(self.attempt) {
                let delay = self.shared.retry.delay(self.attempt, &mut st.rng);
                let until = now + delay;
                st.counters.retried += 1;
                if let Some(e) = st.entries.get_mut(&self.seq) {
                    e.failures = self.attempt;
                    e.status = Status::Ready { not_before: until };
                }
                tracing::info!(group = %self.shared.name, stream = %self.event.stream,
                    position = self.event.position, attempt = self.attempt,
                    delay_ms = delay.as_millis() as u64, %reason, "delivery failed; will retry");
                Some(until)
            } else {
                None
            }
        };
        if retry_at.is_some() {
            self.settled = true;
            self.shared.changed.notify_waiters();
            return Ok(());
        }
        self.park(reason).await
    }

    /// Parks the event now with `reason`, whatever attempts are left — for an event
    /// the handler knows it can never handle. An explicit park does not count as a
    /// failure for the circuit breaker. If the parked stream cannot be written, the
    /// event stays in the group (released) and the error is returned.
    pub async fn park(mut self, reason: &str) -> Result<(), ConsumerError> {
        let origin = self.shared.lock().entries.get(&self.seq).map(|e| e.origin);
        let mut records = vec![parked_record(
            self.shared.clock.as_ref(),
            &self.event,
            reason,
            self.attempt,
        )];
        if let Some(Origin::Parked(revision)) = origin {
            records.push(resolved_record(
                self.shared.clock.as_ref(),
                revision,
                Resolution::ParkedAgain,
            ));
        }
        // On error `self` drops unsettled, which releases the event.
        self.append_parked(records).await?;
        self.settled = true;
        tracing::warn!(group = %self.shared.name, stream = %self.event.stream,
            position = self.event.position, attempts = self.attempt, %reason, "event parked");
        {
            let mut st = self.shared.lock();
            st.counters.parked += 1;
            if let Some(Origin::Parked(revision)) = self.remove(&mut st) {
                st.replaying.remove(&revision);
            }
        }
        self.shared.changed.notify_waiters();
        self.shared.save_checkpoint(false).await
    }

    /// Gives the event back unsettled, without counting an attempt: it is delivered
    /// again (to any member) at once.
    pub fn release(self) {
        drop(self);
    }

    /// Removes the entry; settles its log position. Returns its origin.
    fn remove(&self, st: &mut super::group::State) -> Option<Origin> {
        let entry = st.entries.remove(&self.seq)?;
        if entry.origin == Origin::Log {
            st.settle(entry.event.position, self.shared.buffer);
        }
        Some(entry.origin)
    }

    async fn append_parked(
        &self,
        records: Vec<tidings_core::event::Event>,
    ) -> Result<(), ConsumerError> {
        self.shared
            .store
            .append(&self.shared.parked_stream, ExpectedVersion::Any, records)
            .await
            .map(|_| ())
            .map_err(|source| ConsumerError::Parked {
                group: self.shared.name.clone(),
                stream: self.shared.parked_stream.clone(),
                source,
            })
    }
}

impl<S: EventStore, C: CheckpointStore> Drop for Delivery<S, C> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        {
            let mut st = self.shared.lock();
            st.counters.released += 1;
            if self.trial {
                st.breaker.trial_abandoned();
            }
            if let Some(e) = st.entries.get_mut(&self.seq) {
                e.status = Status::Ready {
                    not_before: Instant::now(),
                };
            }
        }
        self.shared.changed.notify_waiters();
    }
}
