//! Running one handler: inside its cause scope and its `tracing` span, timed, with a
//! panic turned into an error.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;
use tracing::Instrument;

use super::outcome::HandlerOutcome;
use tidings_core::handler::causation::{Cause, with_cause};
use tidings_core::handler::{EventHandler, HandlerError};
use tidings_core::store::RecordedEvent;

/// Runs `handler` on `event` and reports how it went. The span `handler` records the
/// handler's name, the event and, once done, `duration_ms` and `outcome`.
pub(crate) async fn run_handler(
    name: &str,
    handler: &dyn EventHandler,
    event: &RecordedEvent,
) -> HandlerOutcome {
    let span = tracing::info_span!(
        "handler",
        handler = %name,
        event_type = %event.event_type,
        event_id = %event.event_id,
        duration_ms = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let start = Instant::now();
    let run = with_cause(Cause::of(event), handler.handle(event));
    let result = match AssertUnwindSafe(run)
        .catch_unwind()
        .instrument(span.clone())
        .await
    {
        Ok(r) => r,
        Err(panic) => Err(HandlerError::new(format!(
            "handler panicked: {}",
            panic_message(panic.as_ref())
        ))),
    };
    let duration = start.elapsed();
    span.record("duration_ms", duration.as_secs_f64() * 1000.0);
    span.record("outcome", if result.is_ok() { "ok" } else { "error" });
    if let Err(e) = &result {
        tracing::error!(parent: &span, error = %e, "handler failed");
    }
    HandlerOutcome {
        handler: name.to_owned(),
        result,
        duration,
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
