//! Consuming the store: the runtime's checkpoint, [`SagaRuntime::catch_up`] and
//! [`SagaRuntime::run`].
//!
//! The checkpoint is the first global position not yet handled, kept by
//! [`StoreCheckpoints`](tidings_consumer::StoreCheckpoints) under the name
//! `saga-<name>` (records in `$checkpoint-saga-<name>`), written with the version the
//! runtime last saw: a second runtime of the same saga cannot move it behind the first
//! one's back ([`SagaError::Checkpoint`] with a conflict). It may lag what was handled —
//! after a crash the events since are delivered again — which is safe because an
//! instance recognises event ids it has handled.

use std::future::Future;

use futures::StreamExt;

use super::record::checkpoint_name;
use super::runtime::{SagaRuntime, StepOutcome};
use super::{Saga, SagaError};
use tidings_consumer::{Checkpoint, CheckpointStore};
use tidings_core::store::{CatchUp, EventStore, Position, RecordedEvent, Start};

impl<S: EventStore, G: Saga> SagaRuntime<S, G> {
    /// The first global position this runtime has not handled (0 when it never
    /// checkpointed).
    pub async fn checkpoint(&self) -> Result<Position, SagaError> {
        let saved = self
            .checkpoints
            .load(&checkpoint_name(G::NAME))
            .await
            .map_err(|source| SagaError::Checkpoint {
                saga: G::NAME,
                source,
            })?;
        Ok(saved.map_or(0, |c| c.next))
    }

    async fn save_checkpoint(&self, next: Position) -> Result<(), SagaError> {
        self.checkpoints
            .save(&checkpoint_name(G::NAME), &Checkpoint::at(next))
            .await
            .map_err(|source| SagaError::Checkpoint {
                saga: G::NAME,
                source,
            })
    }

    /// Handles every event of the saga's types from the checkpoint to the store's head,
    /// checkpointing after each page, and returns how many were read. Stops at the
    /// first error (the checkpoint stays before the failed event, so it is delivered
    /// again).
    pub async fn catch_up(&self) -> Result<usize, SagaError> {
        let mut pages = CatchUp::new(self.checkpoint().await?, self.filter());
        let mut read = 0;
        while let Some(page) = pages
            .next_page(&self.store)
            .await
            .map_err(SagaError::store(G::NAME))?
        {
            for event in &page {
                self.handle_event(event).await?;
                read += 1;
            }
            self.save_checkpoint(pages.position()).await?;
        }
        Ok(read)
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
