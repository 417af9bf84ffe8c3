//! Given/when/then for sagas: runs a saga's own `handle` and
//! `handle_timeout` on events built from type and data, with no store and no runtime, and
//! checks the commands it decides and the state it reaches.
//!
//! ```
//! # use tidings::bus::HandlerError;
//! # use tidings::saga::{Saga, SagaCommand};
//! # use tidings::RecordedEvent;
//! # struct Reminder;
//! # impl Saga for Reminder {
//! #     const NAME: &'static str = "reminder";
//! #     const EVENT_TYPES: &'static [&'static str] = &["InvoiceSent", "InvoicePaid"];
//! #     type State = u32;
//! #     fn correlate(&self, e: &RecordedEvent) -> Option<String> { Some("x".into()) }
//! #     fn starts(&self, e: &RecordedEvent) -> bool { e.event_type == "InvoiceSent" }
//! #     fn handle(&self, _: &mut u32, e: &RecordedEvent) -> Result<Vec<SagaCommand>, HandlerError> {
//! #         Ok(match e.event_type.as_str() {
//! #             "InvoiceSent" => vec![SagaCommand::schedule_timeout("remind", std::time::Duration::from_secs(60))],
//! #             _ => vec![SagaCommand::Complete],
//! #         })
//! #     }
//! #     fn handle_timeout(&self, reminders: &mut u32, _: &str) -> Result<Vec<SagaCommand>, HandlerError> {
//! #         *reminders += 1;
//! #         Ok(vec![SagaCommand::send("SendReminder", serde_json::json!({}))])
//! #     }
//! # }
//! use tidings_testkit::SagaScenario;
//! SagaScenario::new(Reminder)
//!     .given("InvoiceSent", serde_json::json!({"invoiceId": "inv-1"}))
//!     .when_timeout("remind")
//!     .then_expect_commands(&[SagaCommand::send("SendReminder", serde_json::json!({}))])
//!     .then_state(|reminders| assert_eq!(*reminders, 1));
//! ```

use std::fmt::Debug;

use jiff::Timestamp;

use tidings_core::event::{Enricher, NewEvent, Payload};
use tidings_core::handler::HandlerError;
use tidings_core::store::RecordedEvent;
use tidings_core::stream::StreamId;
use tidings_saga::{Saga, SagaCommand};

/// A given/when/then test of saga `G`, on one instance.
pub struct SagaScenario<G: Saga> {
    saga: G,
    state: G::State,
    next: u64,
}

impl<G: Saga> Debug for SagaScenario<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaScenario")
            .field("saga", &G::NAME)
            .finish_non_exhaustive()
    }
}

impl<G: Saga> SagaScenario<G> {
    /// A scenario starting from the saga's default state.
    pub fn new(saga: G) -> Self {
        Self {
            saga,
            state: G::State::default(),
            next: 0,
        }
    }

    /// The event the saga would be handed: `event_type` with `data`, recorded in a
    /// stream called `scenario`.
    ///
    /// # Panics
    /// When type or data are not a valid event.
    #[track_caller]
    pub fn event(&mut self, event_type: &str, data: impl Into<Payload>) -> RecordedEvent {
        let event = Enricher::new("scenario")
            .enrich(NewEvent::new(event_type, data))
            .unwrap_or_else(|e| panic!("the scenario's {event_type} is not a valid event: {e}"));
        let n = self.next;
        self.next += 1;
        RecordedEvent {
            stream: StreamId::new("scenario").unwrap_or_else(|e| panic!("{e}")),
            revision: n,
            position: n,
            recorded_at: Timestamp::UNIX_EPOCH,
            event,
        }
    }

    /// The saga has handled this event before (its commands are discarded).
    ///
    /// # Panics
    /// When the saga refuses it.
    #[track_caller]
    pub fn given(mut self, event_type: &str, data: impl Into<Payload>) -> Self {
        let event = self.event(event_type, data);
        if let Err(e) = self.saga.handle(&mut self.state, &event) {
            panic!("given {event_type}: the saga refused it: {e}");
        }
        self
    }

    /// The saga handles this event now.
    #[track_caller]
    pub fn when(mut self, event_type: &str, data: impl Into<Payload>) -> SagaThen<G> {
        let event = self.event(event_type, data);
        let result = self.saga.handle(&mut self.state, &event);
        SagaThen {
            state: self.state,
            result,
        }
    }

    /// The timer `timeout_id` comes due now.
    pub fn when_timeout(mut self, timeout_id: &str) -> SagaThen<G> {
        let result = self.saga.handle_timeout(&mut self.state, timeout_id);
        SagaThen {
            state: self.state,
            result,
        }
    }
}

/// What a [`SagaScenario`]'s `when` led to.
pub struct SagaThen<G: Saga> {
    state: G::State,
    result: Result<Vec<SagaCommand>, HandlerError>,
}

impl<G: Saga> Debug for SagaThen<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaThen")
            .field("result", &self.result)
            .finish_non_exhaustive()
    }
}

impl<G: Saga> SagaThen<G> {
    /// The commands decided.
    ///
    /// # Panics
    /// When the saga failed instead.
    #[track_caller]
    pub fn commands(&self) -> &[SagaCommand] {
        match &self.result {
            Ok(c) => c,
            Err(e) => panic!("expected commands, but the saga failed: {e}"),
        }
    }

    /// Asserts that the saga decided exactly `expected`, in order.
    ///
    /// # Panics
    /// Otherwise, showing both.
    #[track_caller]
    pub fn then_expect_commands(self, expected: &[SagaCommand]) -> Self {
        let got = self.commands();
        assert!(
            got == expected,
            "expected commands {expected:#?}\nbut the saga decided {got:#?}"
        );
        self
    }

    /// Runs `check` on the commands decided.
    #[track_caller]
    pub fn then_commands(self, check: impl FnOnce(&[SagaCommand])) -> Self {
        check(self.commands());
        self
    }

    /// Asserts that the saga failed, and runs `check` on the error.
    ///
    /// # Panics
    /// When it did not fail.
    #[track_caller]
    pub fn then_expect_error(self, check: impl FnOnce(&HandlerError)) -> Self {
        match &self.result {
            Err(e) => check(e),
            Ok(c) => panic!("expected the saga to fail, but it decided {c:#?}"),
        }
        self
    }

    /// Runs `check` on the state after the step.
    pub fn then_state(self, check: impl FnOnce(&G::State)) -> Self {
        check(&self.state);
        self
    }
}
