//! Given/when/then for aggregates, running the aggregate's real code.
//!
//! Given past events (each taken through the envelope — encoded, enriched, upcast and
//! decoded, as a repository would load it), when a command, then expect these events or
//! this error.
//!
//! ```
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! # #[serde(tag = "eventType", content = "data")]
//! # enum CounterEvent { Incremented { by: u32 } }
//! # tidings::domain_event!(CounterEvent { Incremented => "1.0" });
//! # #[derive(Debug, PartialEq, thiserror::Error)] #[error("overflow")] struct Overflow;
//! # #[derive(Default, Serialize, Deserialize)] struct Counter { value: u32 }
//! # impl tidings::aggregate::Aggregate for Counter {
//! #     const TYPE: &'static str = "Counter";
//! #     type Command = u32; type Event = CounterEvent; type Error = Overflow;
//! #     fn handle(&self, by: u32) -> Result<Vec<CounterEvent>, Overflow> {
//! #         self.value.checked_add(by).ok_or(Overflow)?;
//! #         Ok(vec![CounterEvent::Incremented { by }]) }
//! #     fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) { self.value += by; }
//! # }
//! use tidings_testkit::Scenario;
//! Scenario::<Counter>::new()
//!     .given([CounterEvent::Incremented { by: u32::MAX }])
//!     .when(1)
//!     .then_expect_error(Overflow);
//! Scenario::<Counter>::new()
//!     .given([CounterEvent::Incremented { by: 1 }])
//!     .when(2)
//!     .then_expect_events([CounterEvent::Incremented { by: 2 }])
//!     .then_state(|c| assert_eq!(c.value, 3));
//! ```

use std::fmt::{self, Debug};

use tidings_aggregate::{Aggregate, AggregateRoot};
use tidings_core::event::domain::DomainEvent;
use tidings_core::event::upcast::Upcasters;
use tidings_core::event::{Enricher, Event, NewEvent};
use tidings_core::stream::StreamId;

/// A given/when/then test of aggregate `A`.
pub struct Scenario<A: Aggregate> {
    given: Vec<Event>,
    upcasters: Upcasters,
    enricher: Enricher,
    _aggregate: std::marker::PhantomData<fn() -> A>,
}

impl<A: Aggregate> Default for Scenario<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Aggregate> Debug for Scenario<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scenario")
            .field("aggregate", &A::TYPE)
            .field("given", &self.given.len())
            .finish()
    }
}

fn describe(e: &Event) -> String {
    format!("{} v{} {}", e.event_type, e.event_version, e.data)
}

impl<A: Aggregate> Scenario<A> {
    /// A scenario with no past events.
    pub fn new() -> Self {
        Self {
            given: Vec::new(),
            upcasters: Upcasters::new(),
            enricher: Enricher::new("scenario"),
            _aggregate: std::marker::PhantomData,
        }
    }

    /// Upcasts given events with `upcasters`, as the repository would.
    pub fn with_upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = upcasters;
        self
    }

    /// Past events, in order.
    ///
    /// # Panics
    /// When an event cannot be encoded: the scenario is wrong, not the aggregate.
    #[track_caller]
    pub fn given(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        for e in events {
            let new = match e.to_new_event() {
                Ok(n) => n,
                Err(err) => panic!("given event {} cannot be encoded: {err}", e.event_type()),
            };
            self = self.given_stored([new]);
        }
        self
    }

    /// Past events as stored envelopes — for instance an old schema version, to test
    /// upcasting.
    ///
    /// # Panics
    /// When an envelope is refused by validation.
    #[track_caller]
    pub fn given_stored(mut self, events: impl IntoIterator<Item = NewEvent>) -> Self {
        for e in events {
            match self.enricher.enrich(e) {
                Ok(event) => self.given.push(event),
                Err(err) => panic!("given envelope refused: {err}"),
            }
        }
        self
    }

    /// Loads the aggregate from the given events and runs `command` on it.
    ///
    /// # Panics
    /// When a given event cannot be upcast or decoded.
    #[track_caller]
    pub fn when(self, command: A::Command) -> Then<A> {
        let stream = StreamId::new("scenario").unwrap_or_else(|e| panic!("{e}"));
        let mut root = AggregateRoot::<A>::new(stream);
        let given: Vec<String> = self.given.iter().map(describe).collect();
        for (revision, event) in self.given.into_iter().enumerate() {
            if let Err(e) = root.apply_stored(event, revision as u64, &self.upcasters) {
                panic!(
                    "given event {revision} cannot be loaded: {e}\ngiven:\n{}",
                    given.join("\n")
                );
            }
        }
        let result = root.execute(command).map(<[_]>::to_vec);
        Then {
            given,
            result,
            state: root,
        }
    }
}

/// The outcome of a scenario's command, to assert on.
pub struct Then<A: Aggregate> {
    given: Vec<String>,
    result: Result<Vec<A::Event>, A::Error>,
    state: AggregateRoot<A>,
}

impl<A: Aggregate> Debug for Then<A>
where
    A::Event: Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Then")
            .field("given", &self.given)
            .field("result", &self.result)
            .finish()
    }
}

impl<A: Aggregate> Then<A> {
    fn given_text(&self) -> String {
        if self.given.is_empty() {
            "  (no events)".to_owned()
        } else {
            self.given
                .iter()
                .enumerate()
                .map(|(i, g)| format!("  #{i} {g}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    /// Expects exactly these events, in order. Each is also taken through the envelope
    /// and back, so a payload that does not survive serialization fails here.
    #[track_caller]
    pub fn then_expect_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self
    where
        A::Event: PartialEq + Debug,
    {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.result {
            Ok(actual) if *actual == expected => {
                for e in actual {
                    let back = e
                        .to_new_event()
                        .map_err(|err| err.to_string())
                        .and_then(|n| {
                            Enricher::new("scenario")
                                .enrich(n)
                                .map_err(|err| err.to_string())
                        })
                        .and_then(|env| A::Event::from_event(&env).map_err(|err| err.to_string()));
                    match back {
                        Ok(b) if b == *e => {}
                        Ok(b) => panic!("event {e:?} came back from the envelope as {b:?}"),
                        Err(err) => panic!("event {e:?} does not survive the envelope: {err}"),
                    }
                }
            }
            Ok(actual) => panic!(
                "expected events:\n  {expected:#?}\nbut the command produced:\n  {actual:#?}\ngiven:\n{}",
                self.given_text()
            ),
            Err(err) => panic!(
                "expected events:\n  {expected:#?}\nbut the command was refused: {err}\n  ({err:?})\ngiven:\n{}",
                self.given_text()
            ),
        }
        self
    }

    /// Expects the command to be refused with exactly this error.
    #[track_caller]
    pub fn then_expect_error(self, expected: A::Error) -> Self
    where
        A::Error: PartialEq + Debug,
        A::Event: Debug,
    {
        match &self.result {
            Err(actual) if *actual == expected => {}
            Err(actual) => panic!(
                "expected error {expected:?}\nbut got error {actual:?}\ngiven:\n{}",
                self.given_text()
            ),
            Ok(events) => panic!(
                "expected error {expected:?}\nbut the command produced:\n  {events:#?}\ngiven:\n{}",
                self.given_text()
            ),
        }
        self
    }

    /// Expects the command to be refused with an error `matches` accepts.
    #[track_caller]
    pub fn then_expect_error_matching(self, matches: impl FnOnce(&A::Error) -> bool) -> Self
    where
        A::Event: Debug,
    {
        match &self.result {
            Err(actual) if matches(actual) => {}
            Err(actual) => panic!(
                "the error did not match: {actual}\ngiven:\n{}",
                self.given_text()
            ),
            Ok(events) => panic!(
                "expected an error but the command produced:\n  {events:#?}\ngiven:\n{}",
                self.given_text()
            ),
        }
        self
    }

    /// Runs assertions on the aggregate's state after the command.
    pub fn then_state(self, check: impl FnOnce(&A)) -> Self {
        check(self.state.state());
        self
    }

    /// The command's result.
    pub fn result(&self) -> &Result<Vec<A::Event>, A::Error> {
        &self.result
    }
}
