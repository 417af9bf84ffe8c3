//! `BrokerConsumer` on `InMemoryTransport` (and `StoreInbox` on `InMemoryStore`): retries,
//! dead letters and their replay, the breaker, the inbox across restarts, a dispatcher
//! as the handler, upcasting; and the attempt task-local on both consumer paths.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::json;
use tidings::bus::{Dispatcher, HandlerError, handler_fn};
use tidings::consumer::{
    BreakerState, BrokerConsumer, CircuitBreaker, ConsumerGroup, Inbox, Jitter, RetryPolicy,
    StoreInbox,
};
use tidings::event::upcast::{Upcaster, Upcasters};
use tidings::handler::{current_attempt, current_cause};
use tidings::transport::{DeadLetters, InMemoryTransport, Message, Subscription, Transport};
use tidings::{
    Enricher, Event, EventAppender, EventHandler, ExpectedVersion, InMemoryStore, NewEvent,
    RecordedEvent, StreamId,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

fn event(event_type: &str, data: serde_json::Value) -> Event {
    Enricher::new("test")
        .enrich(NewEvent::new(event_type, data))
        .unwrap()
}

/// Runs `consumer` until the returned sender fires (or is dropped).
fn start<T, H, I>(consumer: &BrokerConsumer<T, H, I>) -> (oneshot::Sender<()>, JoinHandle<()>)
where
    T: Transport + 'static,
    H: EventHandler,
    I: Inbox,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let consumer = consumer.clone();
    let task = tokio::spawn(async move {
        consumer
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (stop, task)
}

async fn stop(runner: (oneshot::Sender<()>, JoinHandle<()>)) {
    let _ = runner.0.send(());
    runner.1.await.unwrap();
}

async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Subscribing is immediate in memory; a publish right after `start` could still race
/// the runner's first subscribe, so subscribe the group once up front.
async fn create_group(bus: &InMemoryTransport, group: &str, topic: &str) {
    drop(
        bus.subscribe(Subscription::new(group, topic))
            .await
            .unwrap(),
    );
}

#[derive(Default)]
struct Log(Mutex<Vec<(String, Option<u32>)>>);

impl Log {
    fn push(&self, e: &RecordedEvent) {
        self.0
            .lock()
            .unwrap()
            .push((e.event_type.clone(), current_attempt()));
    }
    fn all(&self) -> Vec<(String, Option<u32>)> {
        self.0.lock().unwrap().clone()
    }
    fn attempts_of(&self, event_type: &str) -> Vec<Option<u32>> {
        self.all()
            .into_iter()
            .filter(|(t, _)| t == event_type)
            .map(|(_, a)| a)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_is_retried_then_dead_lettered_while_others_flow_and_replays_once_fixed() {
    let bus = InMemoryTransport::new();
    create_group(&bus, "billing", "orders").await;
    let log = Arc::new(Log::default());
    let fixed = Arc::new(AtomicBool::new(false));
    let (l, f) = (log.clone(), fixed.clone());
    let handler = handler_fn(move |e: RecordedEvent| {
        let (l, f) = (l.clone(), f.clone());
        async move {
            l.push(&e);
            if e.event_type == "Poison" && !f.load(Ordering::SeqCst) {
                return Err(HandlerError::new(format!(
                    "cannot bill, attempt {}",
                    current_attempt().unwrap_or(0)
                )));
            }
            Ok(())
        }
    });
    let consumer =
        BrokerConsumer::builder(bus.clone(), Subscription::new("billing", "orders"), handler)
            .retry(
                RetryPolicy::new(4)
                    .base(Duration::from_millis(30))
                    .jitter(Jitter::None),
            )
            .breaker(CircuitBreaker::disabled())
            .build();
    let runner = start(&consumer);

    bus.publish(Message::new("orders", event("Poison", json!({}))))
        .await
        .unwrap();
    for i in 0..5 {
        bus.publish(Message::new("orders", event("Good", json!({ "n": i }))))
            .await
            .unwrap();
    }
    eventually("the dead letter", || consumer.stats().dead_lettered == 1).await;

    // Attempts 1..=4 seen by the handler through the task-local; the dead letter keeps
    // the last error.
    assert_eq!(
        log.attempts_of("Poison"),
        vec![Some(1), Some(2), Some(3), Some(4)]
    );
    assert_eq!(log.attempts_of("Good"), vec![Some(1); 5]);
    let all = log.all();
    let last_poison = all.iter().rposition(|(t, _)| t == "Poison").unwrap();
    let last_good = all.iter().rposition(|(t, _)| t == "Good").unwrap();
    assert!(
        last_good < last_poison,
        "good events wait for nothing: {all:?}"
    );
    let stats = consumer.stats();
    assert_eq!(
        (stats.handled, stats.retried, stats.dead_lettered),
        (5, 3, 1)
    );
    let dead = bus.dead_letters("billing", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "cannot bill, attempt 4");
    assert_eq!(dead[0].attempts, 4);
    assert_eq!(dead[0].event.event_type, "Poison");

    // Fixed, the replayed dead letter is delivered once, as a first attempt.
    fixed.store(true, Ordering::SeqCst);
    assert!(
        bus.replay_dead_letter("billing", &dead[0].id)
            .await
            .unwrap()
    );
    eventually("the replay", || consumer.stats().handled == 6).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        log.attempts_of("Poison"),
        vec![Some(1), Some(2), Some(3), Some(4), Some(1)]
    );
    assert!(bus.dead_letters("billing", 10).await.unwrap().is_empty());
    stop(runner).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_breaker_keeps_the_handler_from_being_called() {
    let bus = InMemoryTransport::new();
    create_group(&bus, "mailer", "orders").await;
    type State = Box<dyn Fn() -> BreakerState + Send + Sync>;
    let state: Arc<OnceLock<State>> = Arc::default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicU32::new(0));
    let (s, v, c) = (state.clone(), seen.clone(), calls.clone());
    let handler = handler_fn(move |_e: RecordedEvent| {
        let (s, v, c) = (s.clone(), v.clone(), c.clone());
        async move {
            v.lock().unwrap().push(s.get().map(|f| f()));
            // Fails five times (the dependency is down), then recovers.
            if c.fetch_add(1, Ordering::SeqCst) < 5 {
                Err(HandlerError::new("smtp down"))
            } else {
                Ok(())
            }
        }
    });
    let consumer =
        BrokerConsumer::builder(bus.clone(), Subscription::new("mailer", "orders"), handler)
            .retry(RetryPolicy::new(100).base(Duration::from_millis(1)))
            .breaker(CircuitBreaker::new(3, Duration::from_millis(150)))
            .build();
    let c2 = consumer.clone();
    let _ = state.set(Box::new(move || c2.stats().breaker));
    let runner = start(&consumer);
    bus.publish(Message::new("orders", event("OrderCreated", json!({}))))
        .await
        .unwrap();
    eventually("recovery", || consumer.stats().handled == 1).await;
    stop(runner).await;

    // Three failures open it; each half-open trial that fails reopens it; the trial
    // that succeeds closes it. The handler never ran while it was open.
    use BreakerState::{Closed, HalfOpen};
    assert_eq!(calls.load(Ordering::SeqCst), 6);
    assert_eq!(
        *seen.lock().unwrap(),
        [Closed, Closed, Closed, HalfOpen, HalfOpen, HalfOpen].map(Some)
    );
    let stats = consumer.stats();
    assert_eq!(stats.breaker, BreakerState::Closed);
    assert_eq!(stats.breaker_opened, 3);
    assert_eq!(stats.dead_lettered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_inbox_drops_a_duplicate_across_a_restart() {
    let store = InMemoryStore::new();
    let handled = Arc::new(Mutex::new(Vec::<Uuid>::new()));
    let make_handler = || {
        let h = handled.clone();
        handler_fn(move |e: RecordedEvent| {
            let h = h.clone();
            async move {
                h.lock().unwrap().push(e.event_id);
                Ok(())
            }
        })
    };
    let e = event("OrderCreated", json!({ "orderId": "o-1" }));

    // First life: handles the event and records its id in `$inbox-billing`.
    let bus = InMemoryTransport::new();
    create_group(&bus, "billing", "orders").await;
    let first = BrokerConsumer::builder(
        bus.clone(),
        Subscription::new("billing", "orders"),
        make_handler(),
    )
    .inbox(StoreInbox::new(store.clone(), "billing"))
    .build();
    let runner = start(&first);
    bus.publish(Message::new("orders", e.clone()))
        .await
        .unwrap();
    eventually("first handling", || first.stats().handled == 1).await;
    stop(runner).await;

    // Second life: a new consumer and a new inbox on the same store; the broker
    // delivers the same event again (a redelivery after a lost ack, a relay replay).
    let bus = InMemoryTransport::new();
    create_group(&bus, "billing", "orders").await;
    let second = BrokerConsumer::builder(
        bus.clone(),
        Subscription::new("billing", "orders"),
        make_handler(),
    )
    .inbox(StoreInbox::new(store.clone(), "billing"))
    .build();
    let runner = start(&second);
    bus.publish(Message::new("orders", e.clone()))
        .await
        .unwrap();
    let fresh = event("OrderCreated", json!({ "orderId": "o-2" }));
    bus.publish(Message::new("orders", fresh.clone()))
        .await
        .unwrap();
    eventually("the fresh event", || second.stats().handled == 1).await;
    eventually("the skip", || second.stats().skipped == 1).await;
    stop(runner).await;
    assert_eq!(*handled.lock().unwrap(), vec![e.event_id, fresh.event_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_is_the_handler_and_sees_cause_and_attempt() {
    let bus = InMemoryTransport::new();
    create_group(&bus, "shipping", "orders").await;
    let dispatcher = Dispatcher::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    dispatcher.on(
        "OrderCreated",
        "ship",
        handler_fn(move |e: RecordedEvent| {
            let s = s.clone();
            async move {
                let first = current_attempt() == Some(1);
                s.lock().unwrap().push((
                    current_cause().map(|c| c.event_id) == Some(e.event_id),
                    current_attempt(),
                ));
                if first {
                    Err(HandlerError::new("carrier busy"))
                } else {
                    Ok(())
                }
            }
        }),
    );
    let consumer = BrokerConsumer::builder(
        bus.clone(),
        Subscription::new("shipping", "orders"),
        dispatcher,
    )
    .retry(RetryPolicy::new(3).base(Duration::from_millis(1)))
    .build();
    let runner = start(&consumer);
    bus.publish(Message::new("orders", event("OrderCreated", json!({}))))
        .await
        .unwrap();
    eventually("handled", || consumer.stats().handled == 1).await;
    stop(runner).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(true, Some(1)), (true, Some(2))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upcasters_run_before_the_handler_and_a_failed_upcast_is_dead_lettered() {
    let bus = InMemoryTransport::new();
    create_group(&bus, "reports", "orders").await;
    let upcasters = Upcasters::new()
        .with(Upcaster::new("OrderCreated", "1.0", "2.0", |mut data| {
            if data.get("orderId").is_none() {
                return Err("no orderId".into());
            }
            data["currency"] = json!("USD");
            Ok(data)
        }))
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = handler_fn(move |e: RecordedEvent| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push((
                e.event_version.clone(),
                e.data.to_value()["currency"].clone(),
            ));
            Ok(())
        }
    });
    let consumer =
        BrokerConsumer::builder(bus.clone(), Subscription::new("reports", "orders"), handler)
            .upcasters(upcasters)
            .build();
    let runner = start(&consumer);
    let old = event("OrderCreated", json!({ "orderId": "o-1" }));
    assert_eq!(old.event_version, "1.0");
    bus.publish(Message::new("orders", old)).await.unwrap();
    bus.publish(Message::new("orders", event("OrderCreated", json!({}))))
        .await
        .unwrap();
    eventually("both", || {
        let s = consumer.stats();
        s.handled == 1 && s.dead_lettered == 1
    })
    .await;
    stop(runner).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("2.0".to_owned(), json!("USD"))]
    );
    let dead = bus.dead_letters("reports", 10).await.unwrap();
    assert!(
        dead[0].reason.starts_with("cannot upcast:"),
        "{}",
        dead[0].reason
    );
    assert!(dead[0].reason.contains("no orderId"), "{}", dead[0].reason);
    assert_eq!(dead[0].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_handles_several_at_once() {
    let bus = InMemoryTransport::new();
    create_group(&bus, "fan", "orders").await;
    let running = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let handler = handler_fn(move |_e: RecordedEvent| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let consumer =
        BrokerConsumer::builder(bus.clone(), Subscription::new("fan", "orders"), handler)
            .concurrency(4)
            .build();
    let runner = start(&consumer);
    for _ in 0..8 {
        bus.publish(Message::new("orders", event("OrderCreated", json!({}))))
            .await
            .unwrap();
    }
    eventually("all", || consumer.stats().handled == 8).await;
    stop(runner).await;
    let peak = peak.load(Ordering::SeqCst);
    assert!((2..=4).contains(&peak), "peak concurrency {peak}");
}

/// A transport whose subscriptions fail twice before one works.
#[derive(Clone)]
struct Flaky {
    inner: InMemoryTransport,
    failures: Arc<AtomicU32>,
}

impl Transport for Flaky {
    fn publish(
        &self,
        message: Message,
    ) -> impl Future<Output = Result<(), tidings::TransportError>> + Send {
        self.inner.publish(message)
    }

    async fn subscribe(
        &self,
        subscription: Subscription,
    ) -> Result<tidings::transport::BrokerMessages, tidings::TransportError> {
        if self.failures.fetch_add(1, Ordering::SeqCst) < 2 {
            return Err(tidings::TransportError::Subscribe {
                group: subscription.group,
                source: "broker restarting".into(),
            });
        }
        self.inner.subscribe(subscription).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_subscribes_again_after_transport_errors() {
    let inner = InMemoryTransport::new();
    create_group(&inner, "g", "orders").await;
    let bus = Flaky {
        inner: inner.clone(),
        failures: Arc::default(),
    };
    let consumer = BrokerConsumer::builder(
        bus,
        Subscription::new("g", "orders"),
        handler_fn(|_e| async { Ok(()) }),
    )
    .resubscribe_backoff(Duration::from_millis(5), Duration::from_millis(20))
    .build();
    let runner = start(&consumer);
    inner
        .publish(Message::new("orders", event("OrderCreated", json!({}))))
        .await
        .unwrap();
    eventually("handled", || consumer.stats().handled == 1).await;
    stop(runner).await;
    assert_eq!(consumer.stats().resubscribed, 2);
}

#[tokio::test]
async fn an_invalid_subscription_stops_the_runner() {
    let consumer = BrokerConsumer::builder(
        InMemoryTransport::new(),
        Subscription::new("not a name", "orders"),
        handler_fn(|_e| async { Ok(()) }),
    )
    .build();
    assert!(consumer.run(std::future::pending()).await.is_err());
}

#[tokio::test]
async fn consumer_group_handlers_see_the_attempt_too() {
    let store = InMemoryStore::new();
    store
        .append(
            &StreamId::new("order-1").unwrap(),
            ExpectedVersion::Any,
            vec![event("OrderCreated", json!({}))],
        )
        .await
        .unwrap();
    let group = ConsumerGroup::builder("attempts", store)
        .retry(RetryPolicy::new(5).base(Duration::from_millis(1)))
        .breaker(CircuitBreaker::disabled())
        .start()
        .await
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let handler = handler_fn(move |_e: RecordedEvent| {
        let s = s.clone();
        async move {
            let attempt = current_attempt();
            s.lock().unwrap().push(attempt);
            if attempt < Some(3) {
                Err(HandlerError::new("not yet"))
            } else {
                Ok(())
            }
        }
    });
    let worker = tokio::spawn({
        let group = group.clone();
        async move { group.join().run(&handler).await }
    });
    eventually("acked", || group.stats().acked == 1).await;
    group.shutdown().await.unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![Some(1), Some(2), Some(3)]);
    assert_eq!(current_attempt(), None);
}
