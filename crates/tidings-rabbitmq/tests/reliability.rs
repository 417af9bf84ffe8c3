//! Dead letters beyond the conformance suite (rejects, undecodable messages, order),
//! reconnection through a proxy the test cuts, and a broker that is down at start.
//!
//! Needs `TIDINGS_AMQP_URL` (such as `amqp://guest:guest@127.0.0.1:5672/%2f`); without
//! it, or when the server is unreachable, the tests say SKIP loudly and pass, unless
//! `TIDINGS_REQUIRE_SERVICES=1`, which turns the skip into a failure. Every wait is a
//! hang guard, never a speed assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tidings::transport::{
    BrokerMessages, DeadLetter, DeadLetters, Message, Subscription, Transport, TransportError,
};
use tidings_rabbitmq::{RabbitConfig, RabbitError, RabbitTransport, UNDECODABLE_EVENT_TYPE};
use tidings_testkit::transport_conformance::{STALL, event, next, unique};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

fn skip(test: &str, reason: &str) {
    tidings_testkit::services::skip_or_fail(test, reason);
}

fn config(url: &str) -> RabbitConfig {
    RabbitConfig::new(url)
        .exchange(unique("reliability"))
        .prefetch(8)
        .connect_timeout(Duration::from_secs(3))
        .request_timeout(Duration::from_secs(10))
}

/// A transport on the broker, or `None` after skipping.
async fn transport(test: &str) -> Option<(String, RabbitTransport)> {
    let Ok(url) = std::env::var("TIDINGS_AMQP_URL") else {
        skip(test, "TIDINGS_AMQP_URL is not set");
        return None;
    };
    match RabbitTransport::connect(config(&url)).await {
        Ok(t) => Some((url, t)),
        Err(e) => {
            skip(test, &format!("{url} is unreachable: {e}"));
            None
        }
    }
}

/// Runs `check`, then deletes the topology of `transports`, then re-raises a panic.
async fn cleaning_up(transports: &[&RabbitTransport], check: impl Future<Output = ()>) {
    let run = AssertUnwindSafe(check).catch_unwind().await;
    for t in transports {
        if let Err(e) = t.delete_topology().await {
            eprintln!("cleanup: deleting exchange {}: {e}", t.exchange_name());
        }
    }
    if let Err(panic) = run {
        std::panic::resume_unwind(panic);
    }
}

async fn letters_eventually(t: &RabbitTransport, group: &str, count: usize) -> Vec<DeadLetter> {
    let deadline = tokio::time::Instant::now() + STALL;
    loop {
        let list = t.dead_letters(group, 100).await.unwrap();
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

async fn subscribe(t: &RabbitTransport, group: &str, topic: &str) -> BrokerMessages {
    t.subscribe(Subscription::new(group, topic)).await.unwrap()
}

/// A reject is dead-lettered by the broker into the group's dead-letter queue, listed
/// with reason "rejected", and replayed as a first attempt on its topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejects_are_listed_and_replayable() {
    let Some((_, t)) = transport("rejects_are_listed_and_replayable").await else {
        return;
    };
    cleaning_up(&[&t], async {
        let (topic, group) = (unique("orders"), unique("g"));
        let mut subs = subscribe(&t, &group, &topic).await;
        let e = event("Poison", serde_json::json!({"n": 1}));
        t.publish(Message::new(&topic, e.clone())).await.unwrap();
        next(&mut subs, "first")
            .await
            .nack(Duration::ZERO)
            .await
            .unwrap();
        let d = next(&mut subs, "second").await;
        assert_eq!(d.attempt(), 2);
        d.reject().await.unwrap();
        let letters = letters_eventually(&t, &group, 1).await;
        let l = &letters[0];
        assert_eq!(l.reason, "rejected");
        assert_eq!(l.event, e);
        assert_eq!(l.topic, topic);
        assert_eq!(l.group, group);
        // The broker dead-letters without x-delivery-count: a reject reports at least 1.
        assert!(l.attempts >= 1, "attempts {}", l.attempts);
        // The id is stable from one listing to the next.
        assert_eq!(letters_eventually(&t, &group, 1).await[0].id, l.id);
        assert!(t.replay_dead_letter(&group, &l.id).await.unwrap());
        let d = next(&mut subs, "replay").await;
        assert_eq!(d.event(), &e);
        assert_eq!(d.topic(), topic, "a replay keeps its topic");
        assert_eq!(d.attempt(), 1, "a replay is a first attempt");
        // Rejected again after a replay: listed again, as a new dead letter.
        d.reject().await.unwrap();
        let again = letters_eventually(&t, &group, 1).await;
        assert_eq!(again[0].topic, topic);
        assert_eq!(again[0].reason, "rejected");
        assert!(t.delete_dead_letter(&group, &again[0].id).await.unwrap());
        letters_eventually(&t, &group, 0).await;
    })
    .await;
}

/// Dead letters are listed oldest first, listing consumes nothing, `limit` bounds the
/// list, and deleting one keeps the others in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_in_order_without_being_consumed() {
    let Some((_, t)) = transport("dead_letters_are_listed_in_order").await else {
        return;
    };
    cleaning_up(&[&t], async {
        let (topic, group) = (unique("orders"), unique("g"));
        let mut subs = subscribe(&t, &group, &topic).await;
        let sent: Vec<_> = (0..4)
            .map(|i| event("Poison", serde_json::json!({"i": i})))
            .collect();
        for e in &sent {
            t.publish(Message::new(&topic, e.clone())).await.unwrap();
        }
        for (i, e) in sent.iter().enumerate() {
            let d = next(&mut subs, "delivery").await;
            assert_eq!(d.event().event_id, e.event_id);
            d.dead_letter(format!("reason {i}")).await.unwrap();
        }
        let first = letters_eventually(&t, &group, 4).await;
        let second = letters_eventually(&t, &group, 4).await;
        assert_eq!(first, second, "listing changes nothing");
        let ids: Vec<_> = first.iter().map(|l| l.event.event_id).collect();
        let want: Vec<_> = sent.iter().map(|e| e.event_id).collect();
        assert_eq!(ids, want, "oldest first");
        let reasons: Vec<_> = first.iter().map(|l| l.reason.as_str()).collect();
        assert_eq!(reasons, ["reason 0", "reason 1", "reason 2", "reason 3"]);
        let two = t.dead_letters(&group, 2).await.unwrap();
        assert_eq!(two, first[..2]);
        assert!(t.delete_dead_letter(&group, &first[1].id).await.unwrap());
        let rest = letters_eventually(&t, &group, 3).await;
        let ids: Vec<_> = rest.iter().map(|l| l.id.as_str()).collect();
        assert_eq!(ids, [&first[0].id, &first[2].id, &first[3].id]);
        assert!(
            t.dead_letters(&unique("never-subscribed"), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let bad = t.dead_letters("a.b", 10).await;
        assert!(
            matches!(bad, Err(TransportError::InvalidName { kind: "group", .. })),
            "{bad:?}"
        );
    })
    .await;
}

/// A message on a topic that is not a valid event surfaces once as a decode error, is
/// dead-lettered with its reason, and the deliveries go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_an_event_becomes_a_dead_letter() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let Some((url, t)) = transport("a_message_that_is_not_an_event").await else {
        return;
    };
    cleaning_up(&[&t], async {
        let (topic, group) = (unique("orders"), unique("g"));
        let mut subs = subscribe(&t, &group, &topic).await;
        let raw = Connection::connect(&url, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = raw.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let mut headers = FieldTable::default();
        headers.insert("ce-type".into(), AMQPValue::LongString("Half".into()));
        channel
            .basic_publish(
                t.exchange_name().into(),
                topic.as_str().into(),
                BasicPublishOptions::default(),
                b"not an event",
                BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        raw.close(200, "done".into()).await.unwrap();
        let good = event("Fine", serde_json::json!({}));
        t.publish(Message::new(&topic, good.clone())).await.unwrap();

        let first = tokio::time::timeout(STALL, subs.next())
            .await
            .expect("no delivery")
            .expect("the stream ended");
        assert!(
            matches!(first, Err(TransportError::Decode { .. })),
            "expected a decode error, got {first:?}"
        );
        let d = next(&mut subs, "after the bad message").await;
        assert_eq!(d.event(), &good, "the deliveries go on");
        d.ack().await.unwrap();

        let letters = letters_eventually(&t, &group, 1).await;
        let l = &letters[0];
        assert!(
            l.reason.starts_with("not a valid event: "),
            "reason {:?}",
            l.reason
        );
        assert_eq!(l.event.event_type, UNDECODABLE_EVENT_TYPE);
        assert_eq!(l.topic, topic);
        assert!(
            l.event.data.as_str().contains("not an event"),
            "{}",
            l.event.data.as_str()
        );
        assert!(t.delete_dead_letter(&group, &l.id).await.unwrap());
    })
    .await;
}

/// A broker that cannot be reached at start is a connect error, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_at_start_is_a_connect_error() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = RabbitConfig::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
        .connect_timeout(Duration::from_secs(3));
    let r = tokio::time::timeout(STALL, RabbitTransport::connect(config))
        .await
        .expect("connect hung");
    match r {
        Err(TransportError::Connect { url, .. }) => {
            assert!(!url.contains("guest:guest"), "the password leaked: {url}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

/// A TCP proxy to the broker that the test can cut (dropping every connection and
/// refusing new ones) and restore.
struct Proxy {
    port: u16,
    refusing: Arc<AtomicBool>,
    /// Wakes the open links to stop forwarding while keeping their sockets open.
    silence: Arc<tokio::sync::Notify>,
    links: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refusing = Arc::new(AtomicBool::new(false));
        let silence = Arc::new(tokio::sync::Notify::new());
        let links: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let refusing = refusing.clone();
            let silence = silence.clone();
            let links = links.clone();
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if refusing.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let silence = silence.clone();
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let silenced = tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => false,
                                _ = silence.notified() => true,
                            };
                            if silenced {
                                // A half-open connection: both sockets stay open, nothing
                                // passes, until the link is cut.
                                std::future::pending::<()>().await;
                            }
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            }
        });
        Self {
            port,
            refusing,
            silence,
            links,
            accept,
        }
    }

    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    /// The open links stop forwarding but stay open, like a peer that went quiet; new
    /// connections pass.
    fn silence(&self) {
        self.silence.notify_waiters();
    }

    fn restore(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `host:port` of an AMQP URL, and the URL with that replaced by `127.0.0.1:<port>`.
fn through_proxy(url: &str, port: u16) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (creds, host_and_path) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (host, path) = match host_and_path.find('/') {
        Some(slash) => host_and_path.split_at(slash),
        None => (host_and_path, ""),
    };
    let target = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5672")
    };
    (target, format!("{scheme}://{creds}127.0.0.1:{port}{path}"))
}

/// After the connection drops, a publish fails promptly with a typed error; once the
/// broker is reachable again publishes go through and the open subscription resumes:
/// it gets what was published after the restore and what it held unacked, and nothing
/// it acked before the cut comes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_reopened_and_subscriptions_resume() {
    let Some((url, direct)) = transport("a_dropped_connection_is_reopened").await else {
        return;
    };
    let proxy = Proxy::start(through_proxy(&url, 0).0).await;
    let (_, proxied_url) = through_proxy(&url, proxy.port);
    let t = RabbitTransport::connect(
        config(&proxied_url)
            .exchange(direct.exchange_name())
            // Prefetch 1: the broker hands out "held" only once it has processed the ack
            // of "acked" (AMQP acks have no reply; one still in flight at the cut would be
            // lost, and its message rightly delivered again).
            .prefetch(1)
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let (topic, group) = (unique("orders"), unique("g"));
    // Declared through `direct` too, so that its cleanup deletes the queues even when the
    // proxied transport is still cut off.
    drop(subscribe(&direct, &group, &topic).await);
    cleaning_up(&[&t, &direct], async {
        let mut subs = subscribe(&t, &group, &topic).await;
        let acked = event("Acked", serde_json::json!({}));
        let held = event("Held", serde_json::json!({}));
        t.publish(Message::new(&topic, acked.clone()))
            .await
            .unwrap();
        t.publish(Message::new(&topic, held.clone())).await.unwrap();
        let d = next(&mut subs, "before the cut").await;
        assert_eq!(d.event().event_id, acked.event_id);
        d.ack().await.unwrap();
        let unacked = next(&mut subs, "held before the cut").await;
        assert_eq!(unacked.event().event_id, held.event_id);

        proxy.cut();
        let during = event("During", serde_json::json!({}));
        let r = tokio::time::timeout(STALL, t.publish(Message::new(&topic, during)))
            .await
            .expect("a publish during the outage hung");
        assert!(
            matches!(r, Err(TransportError::Publish { .. })),
            "a publish during the outage must fail with a publish error, got {r:?}"
        );
        // Retries during the outage keep failing with a typed error.
        let r = tokio::time::timeout(
            STALL,
            t.publish(Message::new(&topic, event("During", serde_json::json!({})))),
        )
        .await
        .expect("a publish during the outage hung");
        assert!(matches!(r, Err(TransportError::Publish { .. })), "{r:?}");
        let r = tokio::time::timeout(STALL, unacked.ack())
            .await
            .expect("an ack during the outage hung");
        assert!(
            r.is_err(),
            "a delivery from the dropped channel cannot be acked"
        );

        proxy.restore();
        let after = event("After", serde_json::json!({}));
        let deadline = tokio::time::Instant::now() + STALL;
        loop {
            let publish = t.publish(Message::new(&topic, after.clone()));
            match tokio::time::timeout(STALL, publish)
                .await
                .expect("a publish after the restore hung")
            {
                Ok(()) => break,
                Err(TransportError::Publish { .. }) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no reconnection within {STALL:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("unexpected error: {e}"),
            }
        }
        let mut seen = Vec::new();
        while !seen.contains(&after.event_id) {
            let d = next(&mut subs, "after the restore").await;
            assert_ne!(
                d.event().event_id,
                acked.event_id,
                "a message acked before the cut came again"
            );
            if d.event().event_id == held.event_id {
                assert!(d.is_redelivery(), "the held message is a redelivery");
            }
            seen.push(d.event().event_id);
            tokio::time::timeout(STALL, d.ack())
                .await
                .expect("an ack after the restore hung")
                .unwrap();
        }
        assert!(
            seen.contains(&held.event_id),
            "the message held unacked at the cut was not delivered again: {seen:?}"
        );
        // Nothing else is pending: in particular not the acked one.
        if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(500), subs.next()).await
        {
            let extra = extra.unwrap();
            assert_ne!(extra.event().event_id, acked.event_id);
        }
        drop(subs);
    })
    .await;
    let _ = t.close().await;
}

#[tokio::test]
async fn a_connection_gone_quiet_fails_requests_within_the_request_timeout() {
    let Some((url, direct)) = transport("a_connection_gone_quiet").await else {
        return;
    };
    let proxy = Proxy::start(through_proxy(&url, 0).0).await;
    let (_, proxied_url) = through_proxy(&url, proxy.port);
    let timeout = Duration::from_millis(500);
    let t = RabbitTransport::connect(
        config(&proxied_url)
            .exchange(direct.exchange_name())
            .request_timeout(timeout),
    )
    .await
    .unwrap();
    let topic = unique("orders");
    cleaning_up(&[&direct], async {
        let publish =
            |name: &str| t.publish(Message::new(&topic, event(name, serde_json::json!({}))));
        publish("Before").await.unwrap();

        proxy.silence();
        let r = tokio::time::timeout(STALL, publish("Unanswered"))
            .await
            .expect("a publish on a connection gone quiet hung");
        let Err(TransportError::Publish { source, .. }) = r else {
            panic!("a publish without a confirm must fail with a publish error, got {r:?}");
        };
        assert!(
            matches!(
                source.downcast_ref::<RabbitError>(),
                Some(RabbitError::Timeout { after, .. }) if *after == timeout
            ),
            "the source says the request timed out: {source}"
        );
        // The quiet connection was dropped: the next publish opens a new one.
        tokio::time::timeout(STALL, publish("After"))
            .await
            .expect("the publish after a timeout hung")
            .unwrap();
    })
    .await;
    let _ = tokio::time::timeout(STALL, t.close()).await;
}
