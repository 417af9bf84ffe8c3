//! NATS-specific dead-letter behaviour beyond the conformance suite: a message that is
//! not a valid event becomes a dead letter with its reason, raw; a dead letter that
//! cannot be stored leaves the original unsettled; bad names are typed errors.
//!
//! Needs `TIDINGS_NATS_URL`; skips loudly without it unless `TIDINGS_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use tidings_core::transport::{DeadLetters, Message, Subscription, Transport, TransportError};
use tidings_nats::{NatsConfig, NatsTransport, RawDeadLetter};
use tidings_testkit::transport_conformance::{STALL, event, next, unique};

const TEST: &str = "tidings-nats dead letters";

/// A config with a unique stream and subject prefix, and the prefix.
fn config(url: &str) -> (NatsConfig, String) {
    let name = unique("deadletters").replace('-', "_");
    let config = NatsConfig::new(url)
        .stream(name.to_uppercase())
        .subject_prefix(&name)
        .ack_wait(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(3));
    (config, name)
}

async fn connect(test: &str) -> Option<(NatsTransport, String, String)> {
    let url = tidings_testkit::services::service_url(test, "TIDINGS_NATS_URL")?;
    let (config, prefix) = config(&url);
    match NatsTransport::connect(config).await {
        Ok(t) => Some((t, prefix, url)),
        Err(e) => {
            tidings_testkit::services::skip_or_fail(test, &format!("{url} is unreachable: {e}"));
            None
        }
    }
}

async fn raw_eventually(t: &NatsTransport, group: &str, count: usize) -> Vec<RawDeadLetter> {
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        let list = t.raw_dead_letters(group, 100).await.unwrap();
        if list.len() == count {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} has {} raw dead letters, expected {count}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_an_event_becomes_a_dead_letter_with_its_reason() {
    let Some((t, prefix, url)) = connect(TEST).await else {
        return;
    };
    let topic = unique("raw");
    let (g1, g2) = (unique("g1"), unique("g2"));
    let mut s1 = t.subscribe(Subscription::new(&g1, &topic)).await.unwrap();
    let mut s2 = t.subscribe(Subscription::new(&g2, &topic)).await.unwrap();

    // Published with the plain client: headers that are no CloudEvent, a body that is
    // not JSON.
    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("ce-id", "not-enough");
    headers.insert("X-Custom", "kept");
    js.publish_with_headers(format!("{prefix}.{topic}"), headers, "not an event".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let good = event("Fine", json!({"n": 1}));
    t.publish(Message::new(&topic, good.clone())).await.unwrap();

    for (name, subs) in [("g1", &mut s1), ("g2", &mut s2)] {
        match tokio::time::timeout(STALL, subs.next()).await {
            Ok(Some(Err(TransportError::Decode { topic: t, .. }))) => assert_eq!(t, topic),
            other => panic!("{name}: expected a decode error first, got {other:?}"),
        }
        let d = next(subs, name).await;
        assert_eq!(
            d.event(),
            &good,
            "{name}: the stream goes on after a bad message"
        );
        d.ack().await.unwrap();
    }

    for group in [&g1, &g2] {
        let raw = raw_eventually(&t, group, 1).await;
        let l = &raw[0];
        assert!(
            l.reason.starts_with("not a valid event: "),
            "reason {:?}",
            l.reason
        );
        assert_eq!(l.body, b"not an event");
        assert_eq!(l.topic, topic);
        assert_eq!(&l.group, group);
        assert_eq!(l.attempts, 1);
        assert!(l.dead_at.is_some());
        assert!(
            l.headers
                .contains(&("X-Custom".to_owned(), "kept".to_owned())),
            "the raw headers are kept: {:?}",
            l.headers
        );
        assert!(l.decode().is_err());
        assert!(
            t.dead_letters(group, 10).await.unwrap().is_empty(),
            "a letter that is no event is not listed as one"
        );
    }

    // Nothing comes again: the bad message was terminated for both groups.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), s1.next())
            .await
            .is_err(),
        "the bad message was delivered again"
    );
    let id = raw_eventually(&t, &g1, 1).await[0].id.clone();
    assert!(t.delete_dead_letter(&g1, &id).await.unwrap());
    raw_eventually(&t, &g1, 0).await;
    assert_eq!(raw_eventually(&t, &g2, 1).await.len(), 1);
    t.delete_stream().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_stored_leaves_the_message_unsettled() {
    let Some((t, _prefix, url)) = connect(TEST).await else {
        return;
    };
    let topic = unique("unstored");
    let group = unique("g");
    let mut subs = t
        .subscribe(Subscription::new(&group, &topic))
        .await
        .unwrap();
    let e = event("Poison", json!({}));
    t.publish(Message::new(&topic, e.clone())).await.unwrap();
    let d = next(&mut subs, "first delivery").await;
    assert_eq!(d.attempt(), 1);

    let js = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    js.delete_stream(t.dead_letter_stream_name()).await.unwrap();
    let r = d.dead_letter("reason\nwith a second line").await;
    assert!(
        matches!(r, Err(TransportError::Settle { event_id, .. }) if event_id == e.event_id),
        "dead-lettering without a dead-letter stream must fail, got {r:?}"
    );
    let again = next(&mut subs, "redelivery after a failed dead letter").await;
    assert_eq!(again.event(), &e, "the message must not be lost");
    assert!(again.attempt() >= 2);
    again.ack().await.unwrap();
    t.delete_stream().await.ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasons_keep_their_lines_and_bad_ids_and_groups_are_answered() {
    let Some((t, _prefix, _url)) = connect(TEST).await else {
        return;
    };
    let topic = unique("reason");
    let group = unique("g");
    let mut subs = t
        .subscribe(Subscription::new(&group, &topic))
        .await
        .unwrap();
    t.publish(Message::new(&topic, event("Poison", json!({}))))
        .await
        .unwrap();
    let reason = "handler failed: 100% broken\ncaused by: line two\r\n\tat here";
    next(&mut subs, "delivery")
        .await
        .dead_letter(reason)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + STALL;
    let letters = loop {
        let l = t.dead_letters(&group, 10).await.unwrap();
        if !l.is_empty() || tokio::time::Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, reason);

    let other = unique("other");
    assert!(
        !t.delete_dead_letter(&other, &letters[0].id).await.unwrap(),
        "another group cannot delete this group's letter"
    );
    assert!(!t.replay_dead_letter(&other, &letters[0].id).await.unwrap());
    assert!(!t.delete_dead_letter(&group, "not-a-number").await.unwrap());
    assert!(!t.replay_dead_letter(&group, "999999").await.unwrap());
    let bad = t.dead_letters("a.b", 10).await;
    assert!(
        matches!(bad, Err(TransportError::InvalidName { kind: "group", .. })),
        "got {bad:?}"
    );
    assert_eq!(t.dead_letters(&group, 10).await.unwrap().len(), 1);
    t.delete_stream().await.unwrap();
}
