//! Admission of appends: what an append must pass before its body is read.
//!
//! In order: a declared body no larger than `max_body_bytes` (413), a server not
//! shutting down (503), a free slot among `max_pending_appends` (503), and room for the
//! body within `max_pending_bytes` (503). An admitted append holds its slot and its share
//! of the byte budget until it finishes; [`Admission::drain`] waits for all of them.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ServerConfig;
use crate::metrics::Metrics;
use crate::problem::Problem;

/// The limits on pending appends and what they hold now.
pub(crate) struct Admission {
    max_body_bytes: usize,
    max_pending_appends: usize,
    max_pending_bytes: usize,
    append_permits: Arc<Semaphore>,
    /// One permit per KiB of request body held by pending appends.
    body_budget: Arc<Semaphore>,
}

/// What an admitted append holds until it is dropped.
#[must_use = "the append is admitted only while this is held"]
pub(crate) struct Admitted {
    _slot: OwnedSemaphorePermit,
    _budget: OwnedSemaphorePermit,
}

impl Admission {
    /// The limits of `config`, with nothing pending.
    pub(crate) fn new(config: &ServerConfig) -> Self {
        Self {
            max_body_bytes: config.max_body_bytes,
            max_pending_appends: config.max_pending_appends,
            max_pending_bytes: config.max_pending_bytes,
            append_permits: Arc::new(Semaphore::new(config.max_pending_appends)),
            body_budget: Arc::new(Semaphore::new(kib(config.max_pending_bytes) as usize)),
        }
    }

    /// Admits an append whose request carries `headers`, or says why not; a refusal for
    /// a full queue is counted in `metrics`.
    pub(crate) fn admit(
        &self,
        headers: &HeaderMap,
        shutting_down: bool,
        metrics: &Metrics,
    ) -> Result<Admitted, Problem> {
        let max = self.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(len) = declared
            && len > max as u64
        {
            return Err(too_large(max));
        }
        if shutting_down {
            return Err(Problem::unavailable(
                "shutting-down",
                "the server is shutting down and takes no new appends; retry against the restarted server",
                5,
            ));
        }
        let Ok(slot) = self.append_permits.clone().try_acquire_owned() else {
            metrics.record_busy();
            return Err(Problem::unavailable(
                "append-queue-full",
                format!(
                    "{} appends are already pending; retry after a second",
                    self.max_pending_appends
                ),
                1,
            )
            .with("pendingLimit", self.max_pending_appends));
        };
        let held = kib(declared.map_or(max, |l| l as usize)).min(kib(self.max_pending_bytes));
        let Ok(budget) = self.body_budget.clone().try_acquire_many_owned(held) else {
            metrics.record_busy();
            return Err(Problem::unavailable(
                "append-queue-full",
                format!(
                    "pending appends already hold {} bytes of request bodies; retry after a second",
                    self.max_pending_bytes
                ),
                1,
            )
            .with("pendingBytesLimit", self.max_pending_bytes));
        };
        Ok(Admitted {
            _slot: slot,
            _budget: budget,
        })
    }

    /// Reads an admitted append's body, refusing it once it passes `max_body_bytes`
    /// (whatever its `Content-Length` said).
    pub(crate) async fn read_body(&self, body: Body) -> Result<Bytes, Problem> {
        let max = self.max_body_bytes;
        axum::body::to_bytes(body, max)
            .await
            .map_err(|_| too_large(max))
    }

    /// Waits until no admitted append is pending.
    pub(crate) async fn drain(&self) {
        let all = self.max_pending_appends as u32;
        if let Ok(permits) = self.append_permits.acquire_many(all).await {
            drop(permits);
        }
    }
}

/// Whole KiB needed for `bytes` (at least one), capped to what a semaphore holds.
fn kib(bytes: usize) -> u32 {
    bytes
        .div_ceil(1024)
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32
}

fn too_large(max: usize) -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        format!(
            "the request body is larger than {max} bytes; split the append into smaller batches"
        ),
    )
    .with("limit", max)
}
