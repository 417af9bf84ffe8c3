//! The transport conformance suite: what every [`Transport`] keeps, as executable checks.
//!
//! A backend runs it from an integration test with a factory giving a fresh transport
//! (its own stream or exchange) for each check; every check also names its own topics
//! and groups uniquely, so reruns against a long-lived broker never collide:
//!
//! ```no_run
//! # async fn demo() {
//! use tidings::transport::InMemoryTransport;
//! tidings_testkit::transport_conformance::run_all(|| async { InMemoryTransport::new() }).await;
//! # }
//! ```
//!
//! Each check panics with a message naming what broke. Waits for a delivery are hang
//! guards ([`STALL`]), never speed assertions. The checks spawn tasks, so they need a
//! multi-threaded tokio runtime.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tokio::sync::watch;
use uuid::Uuid;

use tidings_core::event::{Enricher, Event, NewEvent};
use tidings_core::store::RecordedEvent;
use tidings_core::stream::StreamId;
use tidings_core::transport::{
    BrokerMessage, BrokerMessages, DeadLetters, Message, Origin, Subscription, TopicMap, Transport,
    TransportError,
};

/// How long a subscriber may stay silent before a check calls it stalled: long enough
/// for a backend's ack wait to expire.
pub const STALL: Duration = Duration::from_secs(60);

/// Runs every check, each on a fresh transport. The deduplication check runs only where
/// [`Transport::deduplicates_by_event_id`] says so.
pub async fn run_all<T, F, Fut>(mut fresh: F)
where
    T: Transport + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    publish_delivers_the_envelope(fresh().await).await;
    the_origin_in_a_store_survives_the_broker(fresh().await).await;
    names_are_checked(fresh().await).await;
    topic_routing(fresh().await).await;
    every_group_gets_every_message(fresh().await).await;
    competing_consumers_share_a_group(fresh().await).await;
    nack_redelivers_with_a_higher_attempt(fresh().await).await;
    dropped_consumer_means_redelivery(fresh().await).await;
    let t = fresh().await;
    if t.deduplicates_by_event_id() {
        duplicate_event_ids_are_dropped(t).await;
    }
}

/// The dead-letter checks, each on a fresh transport, for backends that keep dead
/// letters ([`DeadLetters`]).
pub async fn run_dead_letters<T, F, Fut>(mut fresh: F)
where
    T: Transport + DeadLetters + 'static,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    dead_letters_keep_the_reason_and_replay_to_their_group_only(fresh().await).await;
    dead_letters_can_be_deleted(fresh().await).await;
}

/// [`run_all`] on transports made by `connect`, then `cleanup` on every one of them —
/// also when a check fails, whose panic is raised again afterwards. For backends whose
/// tests create server-side topology (streams, exchanges) that must not outlive them.
pub async fn run_all_cleaning_up<T, C, CFut, D, DFut>(connect: C, cleanup: D)
where
    T: Transport + Clone + 'static,
    C: Fn() -> CFut,
    CFut: Future<Output = T>,
    D: Fn(T) -> DFut,
    DFut: Future<Output = ()>,
{
    use futures::FutureExt;
    let made: Arc<Mutex<Vec<T>>> = Arc::default();
    let run = std::panic::AssertUnwindSafe(run_all(|| {
        let made = made.clone();
        let t = connect();
        async move {
            let t = t.await;
            made.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(t.clone());
            t
        }
    }))
    .catch_unwind()
    .await;
    let made = std::mem::take(&mut *made.lock().unwrap_or_else(|p| p.into_inner()));
    for t in made {
        cleanup(t).await;
    }
    if let Err(panic) = run {
        std::panic::resume_unwind(panic);
    }
}

/// A name no other check or run uses: `prefix` and a random suffix.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &Uuid::new_v4().simple().to_string()[..12])
}

/// A complete event of `event_type` with `data`.
pub fn event(event_type: &str, data: serde_json::Value) -> Event {
    Enricher::new("transport-conformance")
        .enrich(NewEvent::new(event_type, data))
        .unwrap_or_else(|e| panic!("bad test event: {e}"))
}

async fn subscribe<T: Transport>(t: &T, sub: Subscription) -> BrokerMessages {
    let what = format!("{sub:?}");
    t.subscribe(sub)
        .await
        .unwrap_or_else(|e| panic!("subscribe {what}: {e}"))
}

async fn publish<T: Transport>(t: &T, topic: &str, event: Event) {
    t.publish(Message::new(topic, event))
        .await
        .unwrap_or_else(|e| panic!("publish to {topic}: {e}"));
}

/// The next delivery, panicking on an error, an ended stream or a stall.
pub async fn next(deliveries: &mut BrokerMessages, what: &str) -> BrokerMessage {
    match tokio::time::timeout(STALL, deliveries.next()).await {
        Err(_) => panic!("{what}: no delivery within {STALL:?}"),
        Ok(None) => panic!("{what}: the deliveries stream ended"),
        Ok(Some(Err(e))) => panic!("{what}: delivery failed: {e}"),
        Ok(Some(Ok(d))) => d,
    }
}

async fn ack(d: BrokerMessage) {
    let id = d.event().event_id;
    d.ack().await.unwrap_or_else(|e| panic!("ack of {id}: {e}"));
}

/// A published event comes back with every envelope field, its topic and attempt 1.
pub async fn publish_delivers_the_envelope<T: Transport>(t: T) {
    let topic = unique("envelope");
    let mut subs = subscribe(&t, Subscription::new(unique("g"), &topic)).await;
    let e = Enricher::new("svc with space/é")
        .enrich(
            NewEvent::new(
                "OrderCreated",
                json!({"orderId": "o-1", "lines": [1, 2.5, "é"]}),
            )
            .with_version("2.1")
            .with_correlation_id("corr 1")
            .with_causation_id("cause-1")
            .with_user_id("user-1")
            .with_meta("tenant", "acme"),
        )
        .unwrap_or_else(|e| panic!("bad test event: {e}"));
    publish(&t, &topic, e.clone()).await;
    let d = next(&mut subs, "envelope").await;
    assert_eq!(
        d.event(),
        &e,
        "the delivered envelope differs from the published one"
    );
    assert_eq!(d.topic(), topic, "the delivery names the wrong topic");
    assert_eq!(d.attempt(), 1, "a first delivery is attempt 1");
    ack(d).await;
}

/// Topic and group names outside the portable alphabet are refused with a typed error.
pub async fn names_are_checked<T: Transport>(t: T) {
    let r = t.publish(Message::new("a.b", event("T", json!({})))).await;
    assert!(
        matches!(r, Err(TransportError::InvalidName { kind: "topic", .. })),
        "publishing to topic \"a.b\" must be refused, got {r:?}"
    );
    let r = t.subscribe(Subscription::new("g*", "ok")).await;
    assert!(
        matches!(r, Err(TransportError::InvalidName { kind: "group", .. })),
        "group \"g*\" must be refused, got {:?}",
        r.map(|_| ())
    );
}

/// A [`TopicMap`] sends each event type to its topic; a group hears only its topics.
pub async fn topic_routing<T: Transport>(t: T) {
    let orders = unique("orders");
    let rest = unique("events");
    let topics = TopicMap::new(&rest).route("OrderCreated", &orders);
    let mut order_group = subscribe(&t, Subscription::new(unique("g"), &orders)).await;
    let mut rest_group = subscribe(&t, Subscription::new(unique("g"), &rest)).await;
    let both_topics = Subscription::new(unique("g"), &orders).topic(&rest);
    let mut both = subscribe(&t, both_topics).await;
    let a = event("OrderCreated", json!({"n": 1}));
    let b = event("PaymentProcessed", json!({"n": 2}));
    let c = event("OrderCreated", json!({"n": 3}));
    for e in [&a, &b, &c] {
        t.publish(Message::routed(&topics, e.clone()))
            .await
            .unwrap_or_else(|err| panic!("publish {}: {err}", e.event_type));
    }
    for expected in [&a, &c] {
        let d = next(&mut order_group, "orders topic").await;
        assert_eq!(
            d.event().event_id,
            expected.event_id,
            "orders topic got the wrong event"
        );
        assert_eq!(d.topic(), orders);
        ack(d).await;
    }
    let d = next(&mut rest_group, "default topic").await;
    assert_eq!(
        d.event().event_id,
        b.event_id,
        "the default topic got the wrong event"
    );
    assert_eq!(d.topic(), rest);
    ack(d).await;
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let d = next(&mut both, "two-topic group").await;
        seen.insert(d.event().event_id);
        ack(d).await;
    }
    let want: HashSet<_> = [a.event_id, b.event_id, c.event_id].into();
    assert_eq!(seen, want, "a group on two topics hears both");
}

/// Two groups on one topic each receive every message.
pub async fn every_group_gets_every_message<T: Transport>(t: T) {
    let topic = unique("fanout");
    let mut g1 = subscribe(&t, Subscription::new(unique("g1"), &topic)).await;
    let mut g2 = subscribe(&t, Subscription::new(unique("g2"), &topic)).await;
    let sent: Vec<Event> = (0..5).map(|i| event("Fanned", json!({"i": i}))).collect();
    for e in &sent {
        publish(&t, &topic, e.clone()).await;
    }
    for (name, g) in [("g1", &mut g1), ("g2", &mut g2)] {
        let mut got = Vec::new();
        for _ in 0..sent.len() {
            let d = next(g, name).await;
            got.push(d.event().event_id);
            ack(d).await;
        }
        let want: Vec<_> = sent.iter().map(|e| e.event_id).collect();
        assert_eq!(got, want, "group {name} must get every message, in order");
    }
}

/// Two subscribers of one group share its messages: each gets some, and together they
/// get every message exactly once when each is acked.
///
/// Each subscriber holds its first delivery unacked until the other has one too, so a
/// backend that hands everything to whoever asked first fails here.
pub async fn competing_consumers_share_a_group<T: Transport>(t: T) {
    const N: usize = 30;
    let topic = unique("compete");
    let group = unique("workers");
    let a = subscribe(&t, Subscription::new(&group, &topic)).await;
    let b = subscribe(&t, Subscription::new(&group, &topic)).await;
    let received: Arc<Mutex<Vec<(usize, Uuid)>>> = Arc::default();
    let (count_tx, count_rx) = watch::channel([0usize; 2]);
    let count_tx = Arc::new(count_tx);
    let mut tasks = Vec::new();
    for (me, mut subs) in [(0usize, a), (1usize, b)] {
        let received = received.clone();
        let count_tx = count_tx.clone();
        let mut other_rx = count_rx.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let d = next(&mut subs, "competing consumer").await;
                received
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((me, d.event().event_id));
                count_tx.send_modify(|c| c[me] += 1);
                let waited = tokio::time::timeout(STALL, other_rx.wait_for(|c| c[1 - me] > 0))
                    .await
                    .is_ok_and(|r| r.is_ok());
                assert!(
                    waited,
                    "subscriber {me} holds a message unacked, yet the other subscriber of \
                     the group got nothing within {STALL:?}"
                );
                ack(d).await;
            }
        }));
    }
    let sent: Vec<Event> = (0..N).map(|i| event("Work", json!({"i": i}))).collect();
    for e in &sent {
        publish(&t, &topic, e.clone()).await;
    }
    let mut rx = count_rx.clone();
    let done = tokio::time::timeout(STALL, rx.wait_for(|c| c[0] + c[1] >= N))
        .await
        .is_ok_and(|r| r.is_ok());
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        if let Err(e) = task.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    assert!(done, "the group did not receive all {N} messages");
    let got = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ids: HashSet<Uuid> = got.iter().map(|(_, id)| *id).collect();
    let want: HashSet<Uuid> = sent.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, want, "the group must receive every message");
    assert_eq!(
        got.len(),
        N,
        "acked messages must not be delivered twice: {got:?}"
    );
    for me in 0..2 {
        assert!(
            got.iter().any(|(who, _)| *who == me),
            "subscriber {me} got no share"
        );
    }
}

/// A nacked message comes again, to the same group, with a higher attempt.
pub async fn nack_redelivers_with_a_higher_attempt<T: Transport>(t: T) {
    let topic = unique("nack");
    let mut subs = subscribe(&t, Subscription::new(unique("g"), &topic)).await;
    let e = event("Flaky", json!({}));
    publish(&t, &topic, e.clone()).await;
    let first = next(&mut subs, "first delivery").await;
    let first_attempt = first.attempt();
    first
        .nack(Duration::from_millis(200))
        .await
        .unwrap_or_else(|err| panic!("nack: {err}"));
    let again = next(&mut subs, "redelivery after nack").await;
    assert_eq!(
        again.event().event_id,
        e.event_id,
        "the nacked message must come again"
    );
    assert!(
        again.attempt() > first_attempt,
        "a redelivery must report a higher attempt ({} then {})",
        first_attempt,
        again.attempt()
    );
    assert!(again.is_redelivery());
    ack(again).await;
}

/// A message delivered to a subscriber that goes away unsettled reaches the group's
/// next subscriber.
pub async fn dropped_consumer_means_redelivery<T: Transport>(t: T) {
    let topic = unique("crash");
    let group = unique("g");
    let mut subs = subscribe(&t, Subscription::new(&group, &topic)).await;
    let e = event("Unlucky", json!({}));
    publish(&t, &topic, e.clone()).await;
    let d = next(&mut subs, "before the crash").await;
    assert_eq!(d.event().event_id, e.event_id);
    drop(d);
    drop(subs);
    let mut again = subscribe(&t, Subscription::new(&group, &topic)).await;
    let d = next(&mut again, "after the crash").await;
    assert_eq!(
        d.event().event_id,
        e.event_id,
        "the unsettled message must come again"
    );
    assert!(
        d.is_redelivery(),
        "it must say it is a redelivery, attempt {}",
        d.attempt()
    );
    ack(d).await;
}

/// Publishing the same event id twice delivers it once (backends that deduplicate).
pub async fn duplicate_event_ids_are_dropped<T: Transport>(t: T) {
    let topic = unique("dedupe");
    let mut subs = subscribe(&t, Subscription::new(unique("g"), &topic)).await;
    let e = event("Once", json!({}));
    let marker = event("Marker", json!({}));
    publish(&t, &topic, e.clone()).await;
    publish(&t, &topic, e.clone()).await;
    publish(&t, &topic, marker.clone()).await;
    let d = next(&mut subs, "dedupe").await;
    assert_eq!(d.event().event_id, e.event_id);
    ack(d).await;
    let d = next(&mut subs, "dedupe marker").await;
    assert_eq!(
        d.event().event_id,
        marker.event_id,
        "the second publish of one event id must be dropped"
    );
    ack(d).await;
}

/// A message published with its origin in a store is delivered with that origin, and
/// [`BrokerMessage::recorded`] gives back the recorded event; one without an origin has
/// none, and its recorded form names the topic as its stream.
pub async fn the_origin_in_a_store_survives_the_broker<T: Transport>(t: T) {
    let topic = unique("origin");
    let mut subs = subscribe(&t, Subscription::new(unique("g"), &topic)).await;
    let e = event("OrderCreated", json!({"orderId": "o-1"}));
    let recorded = RecordedEvent {
        stream: StreamId::new("order-o-1").unwrap_or_else(|e| panic!("{e}")),
        revision: 7,
        position: 1_234_567,
        recorded_at: e.timestamp,
        event: e.clone(),
    };
    t.publish(Message::recorded(&topic, &recorded))
        .await
        .unwrap_or_else(|e| panic!("publish to {topic}: {e}"));
    let plain = event("Plain", json!({}));
    publish(&t, &topic, plain.clone()).await;
    let d = next(&mut subs, "origin").await;
    assert_eq!(
        d.origin(),
        Some(&Origin::of(&recorded)),
        "the origin was lost"
    );
    assert_eq!(
        d.recorded().unwrap_or_else(|e| panic!("{e}")),
        recorded,
        "the recorded event differs from the store's"
    );
    assert_eq!(d.event(), &e, "origin headers leaked into the envelope");
    ack(d).await;
    let d = next(&mut subs, "no origin").await;
    assert_eq!(d.origin(), None);
    let r = d.recorded().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.stream.as_str(), r.revision, r.position),
        (topic.as_str(), 0, 0)
    );
    assert_eq!(r.event, plain);
    ack(d).await;
}

/// A dead-lettered message is listed with its reason, attempts and event; replaying it
/// delivers it again to that group only, as a first attempt, and takes it off the list.
pub async fn dead_letters_keep_the_reason_and_replay_to_their_group_only<
    T: Transport + DeadLetters,
>(
    t: T,
) {
    let topic = unique("dead");
    let (g1, g2) = (unique("g1"), unique("g2"));
    let mut s1 = subscribe(&t, Subscription::new(&g1, &topic)).await;
    let mut s2 = subscribe(&t, Subscription::new(&g2, &topic)).await;
    let e = event("Poison", json!({"n": 1}));
    publish(&t, &topic, e.clone()).await;
    let d = next(&mut s1, "g1 first delivery").await;
    d.nack(Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("nack: {e}"));
    let d = next(&mut s1, "g1 second delivery").await;
    assert_eq!(d.attempt(), 2);
    d.dead_letter("handler failed: boom")
        .await
        .unwrap_or_else(|e| panic!("dead letter: {e}"));
    ack(next(&mut s2, "g2 delivery").await).await;

    let letters = dead_letters_eventually(&t, &g1, 1).await;
    let l = &letters[0];
    assert_eq!(l.event, e, "the dead letter's event differs");
    assert_eq!(l.reason, "handler failed: boom");
    assert_eq!(l.group, g1);
    assert_eq!(l.topic, topic);
    assert!(l.attempts >= 2, "attempts {}", l.attempts);
    assert!(
        t.dead_letters(&g2, 10)
            .await
            .unwrap_or_else(|e| panic!("list: {e}"))
            .is_empty(),
        "g2 acked; it has no dead letters"
    );

    assert!(
        t.replay_dead_letter(&g1, &l.id)
            .await
            .unwrap_or_else(|e| panic!("replay: {e}")),
        "the dead letter was not found to replay"
    );
    let marker = event("Marker", json!({}));
    publish(&t, &topic, marker.clone()).await;
    let d = next(&mut s1, "g1 replay").await;
    assert_eq!(d.event(), &e, "the replay is not the dead letter's event");
    assert_eq!(d.attempt(), 1, "a replay starts its attempts again");
    ack(d).await;
    assert_eq!(
        next(&mut s1, "g1 marker").await.event().event_id,
        marker.event_id
    );
    let d = next(&mut s2, "g2 marker").await;
    assert_eq!(
        d.event().event_id,
        marker.event_id,
        "a replay for g1 reached g2"
    );
    ack(d).await;
    assert!(
        dead_letters_eventually(&t, &g1, 0).await.is_empty(),
        "a replayed dead letter is no longer listed"
    );
}

/// A deleted dead letter is gone; deleting or replaying it again finds nothing.
pub async fn dead_letters_can_be_deleted<T: Transport + DeadLetters>(t: T) {
    let topic = unique("dead");
    let group = unique("g");
    let mut subs = subscribe(&t, Subscription::new(&group, &topic)).await;
    publish(&t, &topic, event("Poison", json!({}))).await;
    next(&mut subs, "delivery")
        .await
        .dead_letter("bad input")
        .await
        .unwrap_or_else(|e| panic!("dead letter: {e}"));
    let letters = dead_letters_eventually(&t, &group, 1).await;
    let id = letters[0].id.clone();
    assert!(
        t.delete_dead_letter(&group, &id)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );
    assert!(dead_letters_eventually(&t, &group, 0).await.is_empty());
    assert!(
        !t.delete_dead_letter(&group, &id)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );
    assert!(
        !t.replay_dead_letter(&group, &id)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    );
}

/// The dead letters of `group` once there are `count` of them (brokers may record a dead
/// letter a moment after the settle returns). Panics after [`STALL`].
async fn dead_letters_eventually<T: DeadLetters>(
    t: &T,
    group: &str,
    count: usize,
) -> Vec<tidings_core::transport::DeadLetter> {
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        let list = t
            .dead_letters(group, 100)
            .await
            .unwrap_or_else(|e| panic!("listing dead letters of {group}: {e}"));
        if list.len() == count {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} has {} dead letters, expected {count}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
