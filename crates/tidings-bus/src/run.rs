//! Running one handler: inside its cause scope and its `tracing` span, timed, with a
//! panic turned into an error.

use std::time::Instant;

use super::outcome::HandlerOutcome;
use tidings_core::handler::EventHandler;
use tidings_core::handler::call_handler;
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
    let result = call_handler(handler, event, None, &span).await;
    let duration = start.elapsed();
    span.record("duration_ms", duration.as_secs_f64() * 1000.0);
    if let Err(e) = &result {
        tracing::error!(parent: &span, error = %e, "handler failed");
    }
    HandlerOutcome {
        handler: name.to_owned(),
        result,
        duration,
    }
}
