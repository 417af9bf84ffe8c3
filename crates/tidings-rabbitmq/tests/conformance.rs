//! The RabbitMQ transport passes the transport conformance suite.
//!
//! Needs `TIDINGS_AMQP_URL` (such as `amqp://guest:guest@127.0.0.1:5672/%2f`); without it, or when the
//! server is unreachable, the test says SKIP loudly and passes, unless
//! `TIDINGS_REQUIRE_SERVICES=1`, which turns the skip into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tidings_rabbitmq::{RabbitConfig, RabbitTransport};
use tidings_testkit::transport_conformance::{self, unique};

fn skip(reason: &str) {
    tidings_testkit::services::skip_or_fail("tidings-rabbitmq conformance", reason);
}

fn config(url: &str) -> RabbitConfig {
    RabbitConfig::new(url)
        .exchange(unique("conformance"))
        .prefetch(1)
        .connect_timeout(Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_transport_conformance() {
    let Ok(url) = std::env::var("TIDINGS_AMQP_URL") else {
        return skip("TIDINGS_AMQP_URL is not set");
    };
    match RabbitTransport::connect(config(&url)).await {
        Ok(probe) => {
            if let Err(e) = probe.delete_topology().await {
                eprintln!("cleanup: deleting exchange {}: {e}", probe.exchange_name());
            }
        }
        Err(e) => return skip(&format!("{url} is unreachable: {e}")),
    }
    transport_conformance::run_all_cleaning_up(
        || {
            let url = url.clone();
            async move {
                RabbitTransport::connect(config(&url))
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e}"))
            }
        },
        |t| async move {
            if let Err(e) = t.delete_topology().await {
                eprintln!("cleanup: deleting exchange {}: {e}", t.exchange_name());
            }
        },
    )
    .await;
}

/// Dead letters with reasons: listed, replayed to their group only, deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_dead_letters_conformance() {
    let Ok(url) = std::env::var("TIDINGS_AMQP_URL") else {
        return skip("TIDINGS_AMQP_URL is not set");
    };
    let made: Arc<Mutex<Vec<RabbitTransport>>> = Arc::default();
    match RabbitTransport::connect(config(&url)).await {
        Ok(probe) => made.lock().unwrap().push(probe),
        Err(e) => return skip(&format!("{url} is unreachable: {e}")),
    }
    let run = AssertUnwindSafe(transport_conformance::run_dead_letters(|| {
        let url = url.clone();
        let made = made.clone();
        async move {
            let t = RabbitTransport::connect(config(&url))
                .await
                .unwrap_or_else(|e| panic!("connect: {e}"));
            made.lock().unwrap().push(t.clone());
            t
        }
    }))
    .catch_unwind()
    .await;
    let made = std::mem::take(&mut *made.lock().unwrap());
    for t in made {
        if let Err(e) = t.delete_topology().await {
            eprintln!("cleanup: deleting exchange {}: {e}", t.exchange_name());
        }
    }
    if let Err(panic) = run {
        std::panic::resume_unwind(panic);
    }
}

/// A rejected message goes to the queue's dead-letter exchange, routing key and
/// envelope intact, so it lands in the dead-letter queue bound to that exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered() {
    use tidings::transport::{Message, Subscription, Transport};

    let Ok(url) = std::env::var("TIDINGS_AMQP_URL") else {
        return skip("TIDINGS_AMQP_URL is not set");
    };
    let dlx_name = unique("dlx");
    let dead = match RabbitTransport::connect(config(&url).exchange(&dlx_name)).await {
        Ok(t) => t,
        Err(e) => return skip(&format!("{url} is unreachable: {e}")),
    };
    let live = RabbitTransport::connect(config(&url).dead_letter_exchange(&dlx_name))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let run = AssertUnwindSafe(async {
        let topic = unique("orders");
        let mut dead_letters = dead
            .subscribe(Subscription::new("parked", &topic))
            .await
            .unwrap_or_else(|e| panic!("subscribe dead letters: {e}"));
        let mut work = live
            .subscribe(Subscription::new("work", &topic))
            .await
            .unwrap_or_else(|e| panic!("subscribe: {e}"));
        let event = transport_conformance::event("Poison", serde_json::json!({"bad": true}));
        live.publish(Message::new(&topic, event.clone()))
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
        let d = transport_conformance::next(&mut work, "work").await;
        d.reject().await.unwrap_or_else(|e| panic!("reject: {e}"));
        let parked = transport_conformance::next(&mut dead_letters, "dead letters").await;
        assert_eq!(parked.event(), &event);
        assert_eq!(parked.topic(), topic);
        parked.ack().await.unwrap_or_else(|e| panic!("ack: {e}"));
    })
    .catch_unwind()
    .await;
    for t in [&live, &dead] {
        if let Err(e) = t.delete_topology().await {
            eprintln!("cleanup: deleting exchange {}: {e}", t.exchange_name());
        }
    }
    if let Err(panic) = run {
        std::panic::resume_unwind(panic);
    }
}
