//! The saga runtime's contract on a small saga: deterministic ids and causation for what
//! it publishes, timers rescheduled and cleared, typed errors for unreadable or foreign
//! instance streams and unknown commands, and two runtimes racing on one event.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde_json::json;
use tidings::bus::HandlerError;
use tidings::saga::{
    CommandEnvelope, Saga, SagaCommand, SagaError, SagaRuntime, StepOutcome, command_fn,
};
use tidings::{
    Clock, Enricher, EventAppender, EventReader, ExpectedVersion, InMemoryStore, ManualClock,
    NewEvent, ReadStream, RecordedEvent, StoreError, StreamId,
};

/// Support tickets: opening one acknowledges it and notifies someone; unanswered
/// tickets escalate after an hour (a bump restarts the hour); an answer closes it.
struct Tickets(&'static str);

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Ticket {
    escalations: u32,
}

impl Saga for Tickets {
    const NAME: &'static str = "ticket";
    const EVENT_TYPES: &'static [&'static str] =
        &["TicketOpened", "TicketBumped", "TicketAnswered"];
    type State = Ticket;

    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        event.data.to_value()["ticketId"]
            .as_str()
            .map(str::to_owned)
    }

    fn starts(&self, event: &RecordedEvent) -> bool {
        event.event_type == "TicketOpened"
    }

    fn handle(
        &self,
        _: &mut Ticket,
        event: &RecordedEvent,
    ) -> Result<Vec<SagaCommand>, HandlerError> {
        let hour = Duration::from_secs(3600);
        Ok(match event.event_type.as_str() {
            "TicketOpened" => vec![
                SagaCommand::publish(
                    StreamId::new("mail")?,
                    NewEvent::new("AckSent", event.data.clone()),
                ),
                SagaCommand::send(self.0, event.data.clone()),
                SagaCommand::schedule_timeout("escalate", hour),
            ],
            "TicketBumped" => vec![SagaCommand::schedule_timeout("escalate", hour)],
            _ => vec![SagaCommand::Complete],
        })
    }

    fn handle_timeout(
        &self,
        state: &mut Ticket,
        _: &str,
    ) -> Result<Vec<SagaCommand>, HandlerError> {
        state.escalations += 1;
        Ok(vec![
            SagaCommand::publish(
                StreamId::new("escalations")?,
                NewEvent::new("TicketEscalated", json!({"n": state.escalations})),
            ),
            SagaCommand::schedule_timeout("escalate", Duration::from_secs(3600)),
        ])
    }
}

/// The same saga under a name that extends "ticket".
struct LongTickets;

impl Saga for LongTickets {
    const NAME: &'static str = "ticket-long";
    const EVENT_TYPES: &'static [&'static str] = Tickets::EVENT_TYPES;
    type State = Ticket;
    fn correlate(&self, event: &RecordedEvent) -> Option<String> {
        Tickets("Notify").correlate(event)
    }
    fn starts(&self, event: &RecordedEvent) -> bool {
        Tickets("Notify").starts(event)
    }
    fn handle(&self, s: &mut Ticket, e: &RecordedEvent) -> Result<Vec<SagaCommand>, HandlerError> {
        Tickets("Notify").handle(s, e)
    }
    fn handle_timeout(&self, s: &mut Ticket, t: &str) -> Result<Vec<SagaCommand>, HandlerError> {
        Tickets("Notify").handle_timeout(s, t)
    }
}

fn clock() -> ManualClock {
    ManualClock::new(Timestamp::from_second(1_700_000_000).unwrap())
}

type Sent = Arc<Mutex<Vec<CommandEnvelope>>>;

async fn runtime(
    store: &InMemoryStore,
    clock: &ManualClock,
    sent: &Sent,
) -> SagaRuntime<InMemoryStore, Tickets> {
    let sent = Arc::clone(sent);
    SagaRuntime::builder(store.clone(), Tickets("Notify"))
        .clock(clock.clone())
        .command_handler(
            "Notify",
            command_fn(move |c| {
                let sent = Arc::clone(&sent);
                async move {
                    sent.lock().unwrap().push(c);
                    Ok(())
                }
            }),
        )
        .build()
        .await
        .unwrap()
}

async fn append(
    store: &InMemoryStore,
    stream: &str,
    event_type: &str,
    ticket: &str,
) -> RecordedEvent {
    let e = Enricher::new("test")
        .enrich(
            NewEvent::new(event_type, json!({"ticketId": ticket})).with_correlation_id("corr-1"),
        )
        .unwrap();
    let stream = StreamId::new(stream).unwrap();
    let r = store
        .append(&stream, ExpectedVersion::Any, vec![e])
        .await
        .unwrap();
    store
        .read_stream(&stream, ReadStream::forward().from(r.first_revision))
        .await
        .unwrap()
        .remove(0)
}

async fn events_of(store: &InMemoryStore, stream: &str) -> Vec<RecordedEvent> {
    store
        .read_stream(&StreamId::new(stream).unwrap(), ReadStream::forward())
        .await
        .unwrap()
}

#[tokio::test]
async fn what_a_step_publishes_and_sends_carries_its_cause_and_stable_ids() {
    let store = InMemoryStore::new();
    let sent = Sent::default();
    let saga = runtime(&store, &clock(), &sent).await;
    let opened = append(&store, "tickets", "TicketOpened", "t-1").await;
    assert_eq!(
        saga.handle_event(&opened).await.unwrap(),
        StepOutcome::Handled {
            instance: "t-1".into()
        }
    );
    let mail = events_of(&store, "mail").await;
    assert_eq!(mail.len(), 1);
    assert_eq!(
        mail[0].metadata.causation_id,
        Some(opened.event_id.to_string())
    );
    assert_eq!(mail[0].metadata.correlation_id.as_deref(), Some("corr-1"));
    let command = sent.lock().unwrap()[0].clone();
    assert_eq!(
        (command.saga.as_str(), command.instance.as_str()),
        ("ticket", "t-1")
    );

    // A new runtime on the same store does not handle the event again.
    let again = runtime(&store, &clock(), &sent).await;
    assert_eq!(
        again.handle_event(&opened).await.unwrap(),
        StepOutcome::Duplicate {
            instance: "t-1".into()
        }
    );
    assert_eq!(events_of(&store, "mail").await.len(), 1);
    assert_eq!(sent.lock().unwrap().len(), 1);
    // Events for no instance, of other types, or in system streams are ignored.
    let stray = append(&store, "tickets", "TicketAnswered", "t-unknown").await;
    assert_eq!(
        again.handle_event(&stray).await.unwrap(),
        StepOutcome::Ignored
    );
}

#[tokio::test]
async fn timers_are_rescheduled_fire_repeatedly_and_are_cleared_on_completion() {
    let store = InMemoryStore::new();
    let clock = clock();
    let sent = Sent::default();
    let saga = runtime(&store, &clock, &sent).await;
    let start = clock.now();
    saga.handle_event(&append(&store, "tickets", "TicketOpened", "t-2").await)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(1800));
    saga.handle_event(&append(&store, "tickets", "TicketBumped", "t-2").await)
        .await
        .unwrap();
    assert_eq!(
        saga.next_due(),
        Some(start + jiff::SignedDuration::from_secs(1800 + 3600)),
        "a bump replaced the due time"
    );
    clock.advance(Duration::from_secs(3600));
    assert_eq!(saga.fire_due_timers().await.unwrap(), 1);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(saga.fire_due_timers().await.unwrap(), 1);
    let escalated = events_of(&store, "escalations").await;
    assert_eq!(escalated.len(), 2);
    assert_eq!(escalated[1].data.to_value()["n"], 2);
    assert_eq!(
        saga.instance("t-2")
            .await
            .unwrap()
            .unwrap()
            .state()
            .escalations,
        2
    );

    saga.handle_event(&append(&store, "tickets", "TicketAnswered", "t-2").await)
        .await
        .unwrap();
    assert_eq!(saga.next_due(), None);
    clock.advance(Duration::from_secs(7200));
    assert_eq!(saga.fire_due_timers().await.unwrap(), 0);
    let done = saga.instance("t-2").await.unwrap().unwrap();
    assert!(done.is_completed() && done.timers().is_empty());
}

#[tokio::test]
async fn an_unreadable_instance_stream_is_a_typed_error() {
    let store = InMemoryStore::new();
    let sent = Sent::default();
    let saga = runtime(&store, &clock(), &sent).await;
    let garbage = Enricher::new("x")
        .enrich(NewEvent::new("SagaStepRecorded", json!({"not": "a step"})))
        .unwrap();
    store
        .append(
            &StreamId::system("$saga-ticket-t-3").unwrap(),
            ExpectedVersion::NoStream,
            vec![garbage],
        )
        .await
        .unwrap();
    let opened = append(&store, "tickets", "TicketOpened", "t-3").await;
    let err = saga.handle_event(&opened).await.unwrap_err();
    assert!(
        matches!(&err, SagaError::CorruptRecord { stream, revision: 0, .. } if stream.as_str() == "$saga-ticket-t-3"),
        "{err}"
    );
}

#[tokio::test]
async fn sagas_whose_names_share_a_prefix_keep_to_their_own_streams() {
    let store = InMemoryStore::new();
    let sent = Sent::default();
    let long = SagaRuntime::builder(store.clone(), LongTickets)
        .command_handler("Notify", command_fn(|_| async { Ok(()) }))
        .build()
        .await
        .unwrap();
    // "$saga-ticket-long-1" is LongTickets' instance "1".
    long.handle_event(&append(&store, "tickets", "TicketOpened", "1").await)
        .await
        .unwrap();
    let short = runtime(&store, &clock(), &sent).await;
    assert!(
        short.live_instances().is_empty(),
        "recovery skipped the other saga's stream"
    );
    let err = short
        .handle_event(&append(&store, "tickets", "TicketOpened", "long-1").await)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SagaError::ForeignInstance { ref found, .. } if found == "ticket-long"),
        "{err}"
    );
}

#[tokio::test]
async fn a_command_without_handler_stalls_the_instance_until_one_is_registered() {
    let store = InMemoryStore::new();
    let first = SagaRuntime::builder(store.clone(), Tickets("Page"))
        .build()
        .await
        .unwrap();
    let opened = append(&store, "tickets", "TicketOpened", "t-4").await;
    let err = first.handle_event(&opened).await.unwrap_err();
    assert!(
        matches!(err, SagaError::NoCommandHandler { ref command, .. } if command == "Page"),
        "{err}"
    );
    assert_eq!(first.stalled_instances(), ["t-4"]);
    assert!(first.flush_pending().await.is_err());

    let paged = Arc::new(Mutex::new(0));
    let counter = Arc::clone(&paged);
    let second = SagaRuntime::builder(store.clone(), Tickets("Page"))
        .command_handler(
            "Page",
            command_fn(move |_| {
                *counter.lock().unwrap() += 1;
                async { Ok(()) }
            }),
        )
        .build()
        .await
        .unwrap();
    assert!(second.stalled_instances().is_empty());
    assert_eq!(*paged.lock().unwrap(), 1);
    assert_eq!(
        events_of(&store, "mail").await.len(),
        1,
        "published once across both runtimes"
    );
}

#[tokio::test]
async fn two_runtimes_racing_on_one_event_record_one_step() {
    let store = InMemoryStore::new();
    let sent = Sent::default();
    let a = runtime(&store, &clock(), &sent).await;
    let b = runtime(&store, &clock(), &sent).await;
    let opened = append(&store, "tickets", "TicketOpened", "t-5").await;
    let (ra, rb) = tokio::join!(a.handle_event(&opened), b.handle_event(&opened));
    let handled = [&ra, &rb]
        .iter()
        .filter(|r| matches!(r, Ok(StepOutcome::Handled { .. })))
        .count();
    assert_eq!(handled, 1, "{ra:?} {rb:?}");
    for r in [&ra, &rb] {
        assert!(
            matches!(
                r,
                Ok(StepOutcome::Handled { .. } | StepOutcome::Duplicate { .. })
                    | Err(SagaError::Store {
                        source: StoreError::WrongExpectedVersion { .. },
                        ..
                    })
            ),
            "{r:?}"
        );
    }
    let steps = store
        .read_stream(
            &StreamId::system("$saga-ticket-t-5").unwrap(),
            ReadStream::forward(),
        )
        .await
        .unwrap();
    assert_eq!(
        steps
            .iter()
            .filter(|e| e.event_type == "SagaStepRecorded")
            .count(),
        1
    );
    assert_eq!(events_of(&store, "mail").await.len(), 1);
}

mod counter {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "eventType", content = "data")]
    pub enum CounterEvent {
        Incremented { by: u32 },
    }
    tidings::domain_event!(CounterEvent { Incremented => "1.0" });

    #[derive(Debug, thiserror::Error)]
    #[error("the counter would overflow")]
    pub struct Overflow;

    #[derive(Default, Serialize, Deserialize)]
    pub struct Counter {
        pub value: u32,
    }

    impl tidings::aggregate::Aggregate for Counter {
        const TYPE: &'static str = "Counter";
        type Command = u32;
        type Event = CounterEvent;
        type Error = Overflow;
        fn handle(&self, by: u32) -> Result<Vec<CounterEvent>, Overflow> {
            self.value.checked_add(by).ok_or(Overflow)?;
            Ok(vec![CounterEvent::Incremented { by }])
        }
        fn apply(&mut self, CounterEvent::Incremented { by }: &CounterEvent) {
            self.value += by;
        }
    }
}

#[tokio::test]
async fn commands_reach_an_aggregate_once_per_command_id() {
    use tidings::aggregate::Repository;
    use tidings::saga::{AggregateCommandHandler, COMMAND_ID_KEY, CommandHandler};

    let store = InMemoryStore::new();
    let repository =
        Repository::<counter::Counter, _>::new(store.clone(), Enricher::new("counter"));
    let counters = Arc::new(AggregateCommandHandler::new(
        repository.clone(),
        |c: &CommandEnvelope| {
            let ticket = c.command.payload.to_value()["ticketId"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| HandlerError::new("no ticketId"))?;
            Ok((StreamId::new(&format!("counter-{ticket}"))?, 1))
        },
    ));
    // The first attempt does the work, then reports a failure (a lost acknowledgement).
    let attempts = Arc::new(Mutex::new(0));
    let flaky = {
        let attempts = Arc::clone(&attempts);
        command_fn(move |c: CommandEnvelope| {
            let counters = Arc::clone(&counters);
            let attempts = Arc::clone(&attempts);
            async move {
                counters.handle(&c).await?;
                let mut n = attempts.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    return Err(HandlerError::new("acknowledgement lost"));
                }
                Ok(())
            }
        })
    };
    let saga = SagaRuntime::builder(store.clone(), Tickets("Count"))
        .command_handler("Count", flaky)
        .build()
        .await
        .unwrap();
    let opened = append(&store, "tickets", "TicketOpened", "t-6").await;
    assert!(saga.handle_event(&opened).await.is_err());
    assert_eq!(saga.flush_pending().await.unwrap(), 1);
    assert_eq!(*attempts.lock().unwrap(), 2);

    let counter = repository
        .load(&StreamId::new("counter-t-6").unwrap())
        .await
        .unwrap();
    assert_eq!(counter.state().value, 1, "executed once");
    let events = events_of(&store, "counter-t-6").await;
    assert_eq!(events.len(), 1);
    assert!(events[0].metadata.extra.contains_key(COMMAND_ID_KEY));
    assert_eq!(
        events[0].metadata.causation_id,
        Some(opened.event_id.to_string())
    );
}

#[tokio::test]
async fn a_runtime_whose_checkpoint_moved_behind_it_stops_instead_of_overwriting_it() {
    use tidings::consumer::CheckpointError;
    let store = InMemoryStore::new();
    let sent = Sent::default();
    let a = runtime(&store, &clock(), &sent).await;
    let b = Arc::new(runtime(&store, &clock(), &sent).await);
    append(&store, "tickets", "TicketOpened", "t-7").await;
    assert_eq!(a.catch_up().await.unwrap(), 1);
    assert_eq!(a.checkpoint().await.unwrap(), 1);

    // b starts following from the checkpoint a saved, and waits for new events.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let follower = tokio::spawn({
        let b = Arc::clone(&b);
        async move {
            b.run(async {
                stopped.await.ok();
            })
            .await
        }
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    // a moves the checkpoint past the next event before b sees it (this test runs on
    // one thread, so b does not run until this task yields)...
    append(&store, "tickets", "TicketAnswered", "t-7").await;
    assert_eq!(a.catch_up().await.unwrap(), 1);
    let moved = a.checkpoint().await.unwrap();
    assert!(moved > 1, "{moved}");
    // ...so b, which last saw the checkpoint at 1, may not write its own over it.
    let outcome = tokio::time::timeout(Duration::from_secs(30), follower)
        .await
        .expect("the follower stops on its own")
        .unwrap();
    drop(stop);
    assert!(
        matches!(
            &outcome,
            Err(SagaError::Checkpoint {
                source: CheckpointError::Conflict { .. },
                ..
            })
        ),
        "{outcome:?}"
    );
    assert_eq!(a.checkpoint().await.unwrap(), moved);
}
