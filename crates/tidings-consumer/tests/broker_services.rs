//! `BrokerConsumer` end to end on real brokers: a poison message is nacked with its
//! attempts counted by the broker, then dead-lettered, and leaves the group's queue.
//!
//! Needs `TIDINGS_NATS_URL` and `TIDINGS_AMQP_URL`; without them, or when the broker
//! is unreachable, each test says SKIP loudly and passes, unless
//! `TIDINGS_REQUIRE_SERVICES=1`, which turns the skip into a failure.
//!
//! Listing the dead letters on these brokers needs their `DeadLetters` implementations;
//! here a dead letter is checked by its leaving the group.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tidings::bus::{HandlerError, handler_fn};
use tidings::consumer::{BrokerConsumer, CircuitBreaker, Jitter, RetryPolicy};
use tidings::handler::current_attempt;
use tidings::transport::{Message, Subscription, Transport};
use tidings::{Enricher, NewEvent, RecordedEvent};
use tidings_nats::{NatsConfig, NatsTransport};
use tidings_rabbitmq::{RabbitConfig, RabbitTransport};
use tidings_testkit::services::{service_url, skip_or_fail};
use tidings_testkit::transport_conformance::unique;

async fn poison_is_retried_then_leaves_the_group<T: Transport + Clone + 'static>(bus: T) {
    let group = unique("poison");
    let sub = Subscription::new(group.clone(), "orders");
    // Create the durable group before anything is published.
    drop(bus.subscribe(sub.clone()).await.unwrap());

    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = attempts.clone();
    let handler = handler_fn(move |e: RecordedEvent| {
        let a = a.clone();
        async move {
            if e.event_type == "Poison" {
                a.lock().unwrap().push(current_attempt());
                return Err(HandlerError::new(format!(
                    "poison, attempt {}",
                    current_attempt().unwrap_or(0)
                )));
            }
            Ok(())
        }
    });
    let consumer = BrokerConsumer::builder(bus.clone(), sub.clone(), handler)
        .retry(
            RetryPolicy::new(3)
                .base(Duration::from_millis(100))
                .jitter(Jitter::None),
        )
        .breaker(CircuitBreaker::disabled())
        .build();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn({
        let consumer = consumer.clone();
        async move {
            consumer
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let event = |t: &str| {
        Enricher::new("e2e")
            .enrich(NewEvent::new(t, json!({})))
            .unwrap()
    };
    bus.publish(Message::new("orders", event("Poison")))
        .await
        .unwrap();
    bus.publish(Message::new("orders", event("Good")))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = consumer.stats();
        if s.dead_lettered == 1 && s.handled == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    runner.await.unwrap().unwrap();
    assert_eq!(*attempts.lock().unwrap(), vec![Some(1), Some(2), Some(3)]);
    let s = consumer.stats();
    assert_eq!((s.retried, s.dead_lettered, s.settle_failures), (2, 1, 0));

    // The dead-lettered message is no longer the group's: a new subscriber gets nothing.
    let mut again = bus.subscribe(sub).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(3), again.next()).await;
    assert!(next.is_err(), "the poison came back: {next:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_poison_is_nacked_then_dead_lettered() {
    let test = "broker consumer on NATS";
    let Some(url) = service_url(test, "TIDINGS_NATS_URL") else {
        return;
    };
    let name = unique("bc").replace('-', "_");
    let config = NatsConfig::new(url.clone())
        .stream(name.to_uppercase())
        .subject_prefix(name)
        .ack_wait(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3));
    let bus = match NatsTransport::connect(config).await {
        Ok(b) => b,
        Err(e) => return skip_or_fail(test, &format!("{url} is unreachable: {e}")),
    };
    poison_is_retried_then_leaves_the_group(bus.clone()).await;
    bus.delete_stream().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_poison_is_nacked_then_dead_lettered() {
    let test = "broker consumer on RabbitMQ";
    let Some(url) = service_url(test, "TIDINGS_AMQP_URL") else {
        return;
    };
    let config = RabbitConfig::new(url.clone())
        .exchange(unique("bc"))
        .prefetch(4)
        .connect_timeout(Duration::from_secs(3));
    let bus = match RabbitTransport::connect(config).await {
        Ok(b) => b,
        Err(e) => return skip_or_fail(test, &format!("{url} is unreachable: {e}")),
    };
    poison_is_retried_then_leaves_the_group(bus.clone()).await;
    bus.delete_topology().await.unwrap();
}
