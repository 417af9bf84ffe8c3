//! The outbox relay against a real NATS JetStream: from an embedded store, killed
//! mid-way and restarted, a consumer sees every event exactly once with its origin
//! (JetStream drops the repeats by `Nats-Msg-Id`); and `tidings relay` as a process.
//!
//! Needs `TIDINGS_NATS_URL`; without it the tests say SKIP loudly and pass, unless
//! `TIDINGS_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tidings::consumer::relay::{CheckpointCadence, OutboxRelay};
use tidings::store::ReadAll;
use tidings::transport::{BrokerMessages, Subscription, TopicMap, Transport};
use tidings::{
    Enricher, EventAppender, EventReader, ExpectedVersion, NewEvent, RecordedEvent, StreamId,
};
use tidings_nats::{NatsConfig, NatsTransport};
use tidings_testkit::services::service_url;
use tidings_testkit::transport_conformance::unique;

const BIN: &str = env!("CARGO_BIN_EXE_tidings");

async fn append_events(store: &tidings_log::LogStore, n: u64) {
    let enricher = Enricher::new("relay-test");
    for i in 0..n {
        let t = if i % 3 == 0 {
            "OrderCreated"
        } else {
            "OrderNoted"
        };
        let e = enricher
            .enrich(NewEvent::new(t, serde_json::json!({ "i": i })))
            .unwrap();
        let stream = StreamId::new(&format!("order-{}", i % 7)).unwrap();
        store
            .append(&stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
}

/// Every delivery until `quiet` passes without one, acked, by event id.
async fn drain(
    deliveries: &mut BrokerMessages,
    want: usize,
    quiet: Duration,
) -> Vec<RecordedEvent> {
    let mut seen = Vec::new();
    loop {
        let wait = if seen.len() < want {
            Duration::from_secs(20)
        } else {
            quiet
        };
        match tokio::time::timeout(wait, deliveries.next()).await {
            Ok(Some(d)) => {
                let d = d.unwrap();
                seen.push(d.recorded().unwrap());
                d.ack().await.unwrap();
            }
            Ok(None) => break,
            Err(_) if seen.len() < want => panic!("only {} of {want} delivered", seen.len()),
            Err(_) => break,
        }
    }
    seen
}

fn assert_exactly_once(store_events: &[RecordedEvent], seen: &[RecordedEvent]) {
    let mut counts: HashMap<uuid::Uuid, usize> = HashMap::new();
    for e in seen {
        *counts.entry(e.event_id).or_default() += 1;
    }
    let dupes: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dupes.is_empty(), "delivered twice: {dupes:?}");
    assert_eq!(seen.len(), store_events.len());
    let by_id: HashMap<_, _> = seen.iter().map(|e| (e.event_id, e)).collect();
    for e in store_events {
        assert_eq!(
            by_id.get(&e.event_id),
            Some(&e),
            "{} with its origin",
            e.event_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_restarts_and_nats_sees_each_event_once_with_its_origin() {
    let test = "relay to NATS, killed and restarted";
    let Some(url) = service_url(test, "TIDINGS_NATS_URL") else {
        return;
    };
    let name = unique("relay").replace('-', "_");
    let config = NatsConfig::new(&url)
        .stream(name.to_uppercase())
        .subject_prefix(name.clone())
        .connect_timeout(Duration::from_secs(3));
    let transport = match NatsTransport::connect(config).await {
        Ok(t) => t,
        Err(e) => {
            tidings_testkit::services::skip_or_fail(test, &format!("{url} is unreachable: {e}"));
            return;
        }
    };
    assert!(transport.deduplicates_by_event_id());
    let mut deliveries = transport
        .subscribe(Subscription::new("readers", "orders").topic("notes"))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = tidings_log::LogStore::open(dir.path()).unwrap();
    const N: u64 = 600;
    append_events(&store, N).await;
    let relay = || {
        Arc::new(
            OutboxRelay::builder("nats", store.clone(), transport.clone())
                .topics(TopicMap::new("notes").route("OrderCreated", "orders"))
                .checkpoint_cadence(CheckpointCadence {
                    events: 100,
                    interval: Duration::from_secs(60),
                })
                .build()
                .unwrap(),
        )
    };

    // The first relay is killed (its future dropped) after some events.
    let first = relay();
    let mut watch = first.watch();
    let task = tokio::spawn({
        let first = first.clone();
        async move { first.run(std::future::pending()).await }
    });
    watch.wait_for(|s| s.relayed >= 250).await.unwrap();
    task.abort();
    let _ = task.await;
    let killed = first.stats();
    assert!(killed.relayed < N, "killed mid-way: {killed:?}");

    // The second resumes from the checkpoint; what it publishes again is dropped.
    let second = relay();
    let mut watch = second.watch();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let second = second.clone();
        async move {
            second
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    watch.wait_for(|s| s.lag == 0 && s.next >= N).await.unwrap();
    stop.send(()).unwrap();
    let resumed = task.await.unwrap().unwrap();
    assert!(
        killed.relayed + resumed.relayed > N,
        "some events were published twice: {killed:?} {resumed:?}"
    );

    let store_events: Vec<RecordedEvent> = store
        .read_all(ReadAll::new(0, 10_000))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| !e.stream.is_system())
        .collect();
    let seen = drain(&mut deliveries, N as usize, Duration::from_secs(2)).await;
    assert_exactly_once(&store_events, &seen);
    store.close().await.unwrap();
    let _ = transport.delete_stream().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidings_relay_publishes_a_data_dir_to_nats_and_stops_on_ctrl_c() {
    let test = "tidings relay --data DIR --to nats://";
    let Some(url) = service_url(test, "TIDINGS_NATS_URL") else {
        return;
    };
    // The command uses the default stream TIDINGS; a unique topic keeps runs apart.
    let transport = match NatsTransport::connect(NatsConfig::new(&url)).await {
        Ok(t) => t,
        Err(e) => {
            tidings_testkit::services::skip_or_fail(test, &format!("{url} is unreachable: {e}"));
            return;
        }
    };
    let topic = unique("cli").replace('-', "_");
    let group = unique("cli-readers");
    let mut deliveries = transport
        .subscribe(Subscription::new(group, topic.clone()))
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let store = tidings_log::LogStore::open(dir.path()).unwrap();
    append_events(&store, 12).await;
    let store_events: Vec<RecordedEvent> = store.read_all(ReadAll::new(0, 100)).await.unwrap();
    store.close().await.unwrap();
    drop(store);

    let mut child = Command::new(BIN)
        .arg("relay")
        .arg("--data")
        .arg(dir.path())
        .args(["--to", &url, "--topic", &topic, "--name", "cli"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stderr: the banner, then the metrics address.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut metrics = None;
    for _ in 0..5 {
        let mut line = String::new();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(addr) = line.trim().strip_prefix("metrics on http://") {
            metrics = Some(addr.trim_end_matches("/metrics").to_owned());
            break;
        }
    }
    let metrics = metrics.expect("the metrics address on stderr");

    let seen = drain(&mut deliveries, 12, Duration::from_secs(1)).await;
    assert_exactly_once(&store_events, &seen);

    // The metrics say so too (once the relay has caught up).
    let mut text = String::new();
    for _ in 0..50 {
        let mut conn = std::net::TcpStream::connect(&metrics).unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        text.clear();
        conn.read_to_string(&mut text).unwrap();
        if text.contains("tidings_relay_published_total 12")
            && text.contains("tidings_relay_lag_events 0")
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(text.contains("tidings_relay_published_total 12"), "{text}");
    assert!(text.contains("tidings_relay_lag_events 0"), "{text}");
    assert!(text.contains("tidings_relay_retries_total 0"), "{text}");
    assert!(text.contains("tidings_relay_position "), "{text}");

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let code = child.wait().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(code.success(), "exit {code:?}; stdout {out}");
    assert!(out.contains("stopped: relayed 12 events"), "{out}");
}
