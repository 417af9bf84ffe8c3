//! Consuming the store: the runtime's checkpoint, [`SagaRuntime::catch_up`] and
//! [`SagaRuntime::run`].
//!
//! The checkpoint is the first global position not yet handled, kept as
//! `SagaCheckpoint { next }` records in `$checkpoint-saga-<name>` (the last one counts).
//! It may lag what was handled — after a crash the events since are delivered again —
//! which is safe because an instance recognises event ids it has handled.

use std::future::Future;

use futures::StreamExt;

use super::record::{CHECKPOINT, Checkpoint, checkpoint_stream};
use super::runtime::{SagaRuntime, StepOutcome};
use super::{Saga, SagaError};
use tidings_core::event::{NewEvent, Payload};
use tidings_core::store::{
    EventStore, ExpectedVersion, Position, ReadAll, ReadStream, RecordedEvent, Start,
};

/// Events read per store call while catching up.
const PAGE: usize = 256;

impl<S: EventStore, G: Saga> SagaRuntime<S, G> {
    /// The first global position this runtime has not handled (0 when it never
    /// checkpointed).
    pub async fn checkpoint(&self) -> Result<Position, SagaError> {
        let stream = checkpoint_stream(G::NAME).map_err(|source| SagaError::InvalidInstanceId {
            saga: G::NAME,
            instance: String::new(),
            source,
        })?;
        let last = self
            .store
            .read_stream(&stream, ReadStream::backward().limit(1))
            .await
            .map_err(SagaError::store(G::NAME))?;
        match last.first() {
            None => Ok(0),
            Some(e) if e.event_type == CHECKPOINT => e
                .data
                .deserialize::<Checkpoint>()
                .map(|c| c.next)
                .map_err(|err| SagaError::CorruptRecord {
                    stream,
                    revision: e.revision,
                    reason: err.to_string(),
                }),
            Some(e) => Err(SagaError::CorruptRecord {
                stream,
                revision: e.revision,
                reason: format!("expected {CHECKPOINT}, found {}", e.event_type),
            }),
        }
    }

    async fn save_checkpoint(&self, next: Position) -> Result<(), SagaError> {
        let stream = checkpoint_stream(G::NAME).map_err(|source| SagaError::InvalidInstanceId {
            saga: G::NAME,
            instance: String::new(),
            source,
        })?;
        let data =
            Payload::from_serialize(&Checkpoint { next }).map_err(|e| SagaError::EncodeState {
                saga: G::NAME,
                instance: stream.to_string(),
                reason: e.to_string(),
            })?;
        let event = self
            .enricher
            .enrich(NewEvent::new(CHECKPOINT, data))
            .map_err(|source| SagaError::InvalidEvent {
                saga: G::NAME,
                instance: stream.to_string(),
                index: 0,
                source,
            })?;
        self.store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await
            .map_err(SagaError::store(G::NAME))?;
        Ok(())
    }

    /// Handles every event of the saga's types from the checkpoint to the store's head,
    /// checkpointing after each page, and returns how many were read. Stops at the
    /// first error (the checkpoint stays before the failed event, so it is delivered
    /// again).
    pub async fn catch_up(&self) -> Result<usize, SagaError> {
        let mut next = self.checkpoint().await?;
        let mut read = 0;
        loop {
            let page = self
                .store
                .read_all(ReadAll::new(next, PAGE).filter(self.filter()))
                .await
                .map_err(SagaError::store(G::NAME))?;
            let Some(last) = page.last().map(|e| e.position) else {
                return Ok(read);
            };
            for event in &page {
                self.handle_event(event).await?;
                read += 1;
            }
            next = last + 1;
            self.save_checkpoint(next).await?;
        }
    }

    /// Follows the store from the checkpoint until `shutdown` completes: handles each
    /// event (retrying failures as configured with
    /// [`retries`](super::SagaRuntimeBuilder::retries)), checkpoints after it, and fires due
    /// timers every [`timer_interval`](super::SagaRuntimeBuilder::timer_interval). Returns an
    /// error when an event still fails after the last try or the store fails; the
    /// checkpoint then stays before that event.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), SagaError> {
        let start = self.checkpoint().await?;
        let events = self.store.subscribe_all(Start::At(start), self.filter());
        let mut events = std::pin::pin!(events);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut tick = tokio::time::interval(self.timer_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                _ = tick.tick() => {
                    if let Err(e) = self.flush_pending().await {
                        tracing::warn!(saga = G::NAME, error = %e, "pending saga commands failed again; will retry");
                    }
                    if let Err(e) = self.fire_due_timers().await {
                        tracing::warn!(saga = G::NAME, error = %e, "firing due timers failed; will retry");
                    }
                }
                item = events.next() => {
                    let event = match item {
                        None => return Err(SagaError::SubscriptionEnded { saga: G::NAME }),
                        Some(Err(e)) => return Err(SagaError::Store { saga: G::NAME, source: e }),
                        Some(Ok(e)) => e,
                    };
                    self.handle_with_retries(&event).await?;
                    self.save_checkpoint(event.position + 1).await?;
                }
            }
        }
    }

    async fn handle_with_retries(&self, event: &RecordedEvent) -> Result<StepOutcome, SagaError> {
        let mut delay = self.retry_delay;
        let mut attempt = 1;
        loop {
            match self.handle_event(event).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) if attempt >= self.max_attempts => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        saga = G::NAME,
                        event_id = %event.event_id,
                        attempt,
                        error = %e,
                        "saga step failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }
}
