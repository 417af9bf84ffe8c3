//! What a dispatch reports: one [`HandlerOutcome`] per handler, in a [`DispatchReport`].

use std::time::Duration;

use uuid::Uuid;

use tidings_core::handler::HandlerError;

/// How one handler fared with one event.
#[derive(Debug, Clone)]
pub struct HandlerOutcome {
    /// The handler's name, as registered.
    pub handler: String,
    /// Success, or the handler's error.
    pub result: Result<(), HandlerError>,
    /// How long it ran.
    pub duration: Duration,
}

impl HandlerOutcome {
    /// True when the handler succeeded.
    pub fn is_ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// What happened when one event was dispatched.
#[derive(Debug, Clone)]
pub struct DispatchReport {
    /// The event's id.
    pub event_id: Uuid,
    /// The event's type.
    pub event_type: String,
    /// Set when a middleware stopped the event: which one, and why.
    pub stopped: Option<(String, String)>,
    /// One outcome per handler awaited, in registration order.
    pub outcomes: Vec<HandlerOutcome>,
    /// How many asynchronous subscribers were spawned (their outcomes are counted by the
    /// bus, not reported here).
    pub spawned: usize,
}

impl DispatchReport {
    /// A report with nothing run yet.
    pub fn new(event_id: Uuid, event_type: impl Into<String>) -> Self {
        Self {
            event_id,
            event_type: event_type.into(),
            stopped: None,
            outcomes: Vec::new(),
            spawned: 0,
        }
    }

    /// True when every awaited handler succeeded.
    pub fn all_ok(&self) -> bool {
        self.outcomes.iter().all(HandlerOutcome::is_ok)
    }

    /// The outcomes that failed.
    pub fn failures(&self) -> impl Iterator<Item = &HandlerOutcome> {
        self.outcomes.iter().filter(|o| !o.is_ok())
    }

    /// True when no handler ran nor was spawned.
    pub fn unhandled(&self) -> bool {
        self.stopped.is_none() && self.outcomes.is_empty() && self.spawned == 0
    }
}
