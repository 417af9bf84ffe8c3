//! Consumer groups: distribution, ordering, ack/nack, checkpoints across restarts,
//! retries and their schedule, parking and replay, the circuit breaker, idempotency.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tidings::bus::{HandlerError, handler_fn};
use tidings::consumer::{
    BreakerState, CheckpointError, CheckpointStore, CircuitBreaker, ConsumerError, ConsumerGroup,
    Idempotent, InMemoryCheckpoints, Jitter, JitterRng, RetryPolicy, SeenEvents, StoreCheckpoints,
    parked,
};
use tidings::{
    Enricher, EventAppender, EventReader, ExpectedVersion, InMemoryStore, ManualClock, NewEvent,
    ReadStream, StreamId,
};
use tidings_testkit::seed::{TestRng, rounds, seed};
use tokio::time::Instant;

fn sid(name: &str) -> StreamId {
    StreamId::new(name).unwrap()
}

async fn append(store: &InMemoryStore, stream: &str, event_type: &str, n: u64) {
    let e = Enricher::new("test")
        .enrich(NewEvent::new(event_type, json!({ "n": n })))
        .unwrap();
    store
        .append(&sid(stream), ExpectedVersion::Any, vec![e])
        .await
        .unwrap();
}

fn quick_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy::new(attempts)
        .base(Duration::from_millis(10))
        .cap(Duration::from_millis(100))
        .jitter(Jitter::None)
}

#[tokio::test(start_paused = true)]
async fn members_share_work_once_each_in_stream_order() {
    let seed = seed("members_share_work_once_each_in_stream_order");
    let mut rng = TestRng::new(seed);
    for round in 0..rounds(8) {
        let store = InMemoryStore::new();
        let streams = 1 + rng.below(6);
        let total = 20 + rng.below(60);
        let mut expected: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for n in 0..total {
            let s = format!("order-{}", rng.below(streams));
            append(&store, &s, "OrderCreated", n).await;
            expected.entry(s).or_default().push(n);
        }
        let group = ConsumerGroup::builder("workers", store.clone())
            .retry(quick_retries(u32::MAX))
            .breaker(CircuitBreaker::disabled())
            .buffer(1 + rng.below(16) as usize)
            .seed(seed)
            .start()
            .await
            .unwrap();
        let members = 1 + rng.below(5);
        let rng = Arc::new(Mutex::new(TestRng::new(rng.next_u64())));
        // Per stream: the payload numbers acked, in ack order; which events are out now.
        let acked: Arc<Mutex<BTreeMap<String, Vec<u64>>>> = Arc::default();
        let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
        let streams_out: Arc<Mutex<HashSet<String>>> = Arc::default();
        let per_member: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
        let mut tasks = Vec::new();
        for _ in 0..members {
            let member = group.join();
            let (rng, acked, in_flight, streams_out, per_member) = (
                rng.clone(),
                acked.clone(),
                in_flight.clone(),
                streams_out.clone(),
                per_member.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while let Some(d) = member.next().await.unwrap() {
                    let n = d.event().data.to_value()["n"].as_u64().unwrap();
                    let stream = d.event().stream.to_string();
                    assert!(in_flight.lock().unwrap().insert(n), "event {n} out twice");
                    assert!(
                        streams_out.lock().unwrap().insert(stream.clone()),
                        "two events of {stream} out at once"
                    );
                    let (work, action) = {
                        let mut r = rng.lock().unwrap();
                        (r.below(5), r.below(10))
                    };
                    tokio::time::sleep(Duration::from_millis(work)).await;
                    in_flight.lock().unwrap().remove(&n);
                    streams_out.lock().unwrap().remove(&stream);
                    match action {
                        0 => d.nack("flaky").await.unwrap(),
                        1 => d.release(),
                        _ => {
                            acked.lock().unwrap().entry(stream).or_default().push(n);
                            *per_member.lock().unwrap().entry(member.id()).or_default() += 1;
                            d.ack().await.unwrap();
                        }
                    }
                }
            }));
        }
        while group.stats().acked < total {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        group.shutdown().await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*acked.lock().unwrap(), expected, "round {round}");
        let stats = group.stats();
        assert_eq!(stats.acked, total);
        assert_eq!(stats.parked, 0);
        assert_eq!(
            stats.delivered,
            stats.acked + stats.retried + stats.released
        );
        // Everything acknowledged: the checkpoint is past the last event (and maybe past
        // the group's own checkpoint records, which follow in the log).
        assert!(stats.checkpoint >= total);
        assert_eq!(
            per_member.lock().unwrap().values().sum::<u64>(),
            total,
            "round {round}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn checkpoint_passes_only_a_contiguous_acked_prefix_and_restart_redelivers_the_rest() {
    let store = InMemoryStore::new();
    for n in 0..5 {
        append(&store, &format!("order-{n}"), "OrderCreated", n).await;
    }
    let group = ConsumerGroup::builder("billing", store.clone())
        .start()
        .await
        .unwrap();
    let member = group.join();
    let mut out = Vec::new();
    for _ in 0..5 {
        out.push(member.next().await.unwrap().unwrap());
    }
    let positions: Vec<u64> = out.iter().map(|d| d.event().position).collect();
    assert_eq!(positions, [0, 1, 2, 3, 4]);
    let mut out: Vec<_> = out.into_iter().map(Some).collect();
    for i in [1, 2, 4] {
        out[i].take().unwrap().ack().await.unwrap();
    }
    assert_eq!(group.stats().checkpoint, 0, "position 0 is still out");
    out[0].take().unwrap().ack().await.unwrap();
    assert_eq!(group.stats().checkpoint, 3, "3 is still out");
    // Crash: position 3 was never acknowledged.
    std::mem::forget(out[3].take());
    drop(member);
    group.shutdown().await.unwrap();
    drop(group);

    let checkpoints = StoreCheckpoints::new(store.clone());
    let saved = checkpoints.load("billing").await.unwrap().unwrap();
    assert_eq!((saved.next, saved.settled), (3, vec![4]));
    let group = ConsumerGroup::builder("billing", store.clone())
        .start()
        .await
        .unwrap();
    let member = group.join();
    let d = member.next().await.unwrap().unwrap();
    assert_eq!(d.event().position, 3, "only the unacknowledged event again");
    d.ack().await.unwrap();
    // 4 was acknowledged before the crash: not delivered again; nor are the group's own
    // checkpoint records.
    let nothing = tokio::time::timeout(Duration::from_secs(60), member.next()).await;
    assert!(nothing.is_err());
    assert!(group.stats().checkpoint >= 5);
    assert_eq!(group.stats().delivered, 1);
}

#[tokio::test(start_paused = true)]
async fn two_instances_cannot_both_advance_one_checkpoint() {
    let store = InMemoryStore::new();
    append(&store, "order-1", "OrderCreated", 0).await;
    let a = ConsumerGroup::builder("billing", store.clone())
        .start()
        .await
        .unwrap();
    let b = ConsumerGroup::builder("billing", store.clone())
        .start()
        .await
        .unwrap();
    let (ma, mb) = (a.join(), b.join());
    let (da, db) = (
        ma.next().await.unwrap().unwrap(),
        mb.next().await.unwrap().unwrap(),
    );
    da.ack().await.unwrap();
    let err = db.ack().await.unwrap_err();
    assert!(
        matches!(
            err,
            ConsumerError::Checkpoint(CheckpointError::Conflict { .. })
        ),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn nack_retries_on_the_backoff_schedule_then_parks_with_metadata() {
    let store = InMemoryStore::new();
    append(&store, "order-7", "OrderCreated", 0).await;
    append(&store, "order-7", "OrderShipped", 1).await;
    let seed = 42;
    let policy = RetryPolicy::new(4)
        .base(Duration::from_millis(100))
        .cap(Duration::from_millis(250))
        .jitter(Jitter::Full);
    let mut rng = JitterRng::new(seed);
    let schedule: Vec<Duration> = (1..4).map(|n| policy.delay(n, &mut rng)).collect();
    for (n, d) in schedule.iter().enumerate() {
        let full = Duration::from_millis(100 << n).min(Duration::from_millis(250));
        assert!(*d <= full);
    }
    let group = ConsumerGroup::builder("shipping", store.clone())
        .retry(policy)
        .breaker(CircuitBreaker::disabled())
        .seed(seed)
        .clock(ManualClock::new(jiff::Timestamp::UNIX_EPOCH))
        .checkpoints(InMemoryCheckpoints::new())
        .start()
        .await
        .unwrap();
    let member = group.join();
    let mut last = Instant::now();
    let mut waited = Vec::new();
    for attempt in 1..=4 {
        let d = member.next().await.unwrap().unwrap();
        assert_eq!(d.event().position, 0, "the stream's next event waits");
        assert_eq!(d.attempt(), attempt);
        if attempt > 1 {
            waited.push(Instant::now() - last);
        }
        last = Instant::now();
        d.nack(&format!("carrier timeout #{attempt}"))
            .await
            .unwrap();
    }
    assert_eq!(waited, schedule);
    let d = member.next().await.unwrap().unwrap();
    assert_eq!((d.event().position, d.attempt()), (1, 1));
    d.ack().await.unwrap();

    let stats = group.stats();
    assert_eq!(
        (stats.delivered, stats.retried, stats.parked, stats.acked),
        (5, 3, 1, 1)
    );
    assert_eq!(stats.checkpoint, 2);
    let list = group.parked().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].attempts, 4);
    assert_eq!(list[0].reason, "carrier timeout #4");
    assert_eq!(list[0].parked_at, jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(list[0].event.stream.as_str(), "order-7");
    assert_eq!((list[0].event.position, list[0].event.revision), (0, 0));
    let raw = store
        .read_stream(group.parked_stream(), ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(raw[0].event_type, parked::PARKED_EVENT_TYPE);
    let meta = &raw[0].metadata;
    assert_eq!(meta.extra["originalStream"], "order-7");
    assert_eq!(meta.extra["originalPosition"], "0");
    assert_eq!(meta.extra["parkedAttempts"], "4");
    assert_eq!(
        meta.causation_id.as_deref(),
        Some(list[0].event.event_id.to_string().as_str())
    );
}

#[tokio::test(start_paused = true)]
async fn parked_events_replay_and_are_resolved() {
    let store = InMemoryStore::new();
    append(&store, "order-1", "OrderCreated", 0).await;
    append(&store, "order-2", "OrderCreated", 1).await;
    let group = ConsumerGroup::builder("emails", store.clone())
        .retry(quick_retries(2))
        .start()
        .await
        .unwrap();
    let member = group.join();
    for _ in 0..2 {
        let d = member.next().await.unwrap().unwrap();
        d.park("template missing").await.unwrap();
    }
    assert_eq!(group.parked().await.unwrap().len(), 2);
    assert_eq!(group.stats().checkpoint, 2, "parked events are settled");

    // Replay only order-1's; it succeeds and is resolved.
    let queued = group
        .replay_parked_where(|p| p.event.stream.as_str() == "order-1")
        .await
        .unwrap();
    assert_eq!(queued, 1);
    assert_eq!(
        group.replay_parked_where(|_| true).await.unwrap(),
        1,
        "order-1's is already queued"
    );
    let d = member.next().await.unwrap().unwrap();
    assert!(d.is_replay());
    assert_eq!((d.event().stream.as_str(), d.attempt()), ("order-1", 1));
    d.ack().await.unwrap();
    // order-2's replay fails twice and is parked anew.
    for attempt in 1..=2 {
        let d = member.next().await.unwrap().unwrap();
        assert_eq!(
            (d.event().stream.as_str(), d.attempt()),
            ("order-2", attempt)
        );
        d.nack("still missing").await.unwrap();
    }
    let list = group.parked().await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].event.stream.as_str(), "order-2");
    assert_eq!(list[0].reason, "still missing");
    let types: Vec<String> = store
        .read_stream(group.parked_stream(), ReadStream::forward())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event.event_type)
        .collect();
    assert_eq!(
        types,
        [
            "$Parked",
            "$Parked",
            "$ParkedResolved",
            "$Parked",
            "$ParkedResolved"
        ]
    );
    let stats = group.stats();
    assert_eq!((stats.parked, stats.replayed), (3, 2));
    assert_eq!(stats.checkpoint, 2, "replays do not move the checkpoint");
}

#[tokio::test(start_paused = true)]
async fn breaker_opens_pauses_delivery_and_closes_after_a_good_trial() {
    let store = InMemoryStore::new();
    for n in 0..3 {
        append(&store, &format!("order-{n}"), "OrderCreated", n).await;
    }
    let group = ConsumerGroup::builder("payments", store.clone())
        .retry(quick_retries(100))
        .breaker(CircuitBreaker::new(2, Duration::from_secs(10)))
        .start()
        .await
        .unwrap();
    let (m1, m2) = (group.join(), group.join());
    m1.next()
        .await
        .unwrap()
        .unwrap()
        .nack("gateway 503")
        .await
        .unwrap();
    assert_eq!(group.stats().breaker, BreakerState::Closed);
    m1.next()
        .await
        .unwrap()
        .unwrap()
        .nack("gateway 503")
        .await
        .unwrap();
    assert_eq!(group.stats().breaker, BreakerState::Open);
    let opened = Instant::now();

    // Open: nothing is delivered, so nothing burns attempts.
    assert!(
        tokio::time::timeout(Duration::from_millis(9_999), m1.next())
            .await
            .is_err()
    );
    assert_eq!(group.stats().delivered, 2);
    let trial = m1.next().await.unwrap().unwrap();
    assert_eq!(Instant::now() - opened, Duration::from_secs(10));
    assert!(trial.is_trial());
    assert_eq!(group.stats().breaker, BreakerState::HalfOpen);
    // Only the trial goes out while half-open.
    assert!(
        tokio::time::timeout(Duration::from_secs(60), m2.next())
            .await
            .is_err()
    );
    trial.nack("gateway 503").await.unwrap();
    assert_eq!(group.stats().breaker, BreakerState::Open);
    assert_eq!(group.stats().breaker_opened, 2);

    let trial = m2.next().await.unwrap().unwrap();
    assert!(trial.is_trial());
    trial.ack().await.unwrap();
    assert_eq!(group.stats().breaker, BreakerState::Closed);
    let mut rest = 0;
    while group.stats().acked < 3 {
        m1.next().await.unwrap().unwrap().ack().await.unwrap();
        rest += 1;
    }
    assert_eq!(rest, 2);
    assert_eq!(group.stats().parked, 0);
}

#[tokio::test(start_paused = true)]
async fn idempotent_handler_handles_redelivered_events_once() {
    let store = InMemoryStore::new();
    for n in 0..6 {
        append(&store, &format!("order-{}", n % 2), "OrderCreated", n).await;
    }
    let calls: Arc<Mutex<Vec<u64>>> = Arc::default();
    let seen = SeenEvents::with_capacity(100);
    let make_handler = || {
        let calls = calls.clone();
        Idempotent::with_seen(
            handler_fn(move |e: tidings::RecordedEvent| {
                let calls = calls.clone();
                async move {
                    calls.lock().unwrap().push(e.position);
                    Ok::<(), HandlerError>(())
                }
            }),
            seen.clone(),
        )
    };
    let checkpoints = InMemoryCheckpoints::new();
    // Checkpoints rarely: a restart redelivers what was acked since the last save.
    let start = || {
        ConsumerGroup::builder("ledger", store.clone())
            .checkpoints(checkpoints.clone())
            .checkpoint_every(100)
            .start()
    };
    let group = start().await.unwrap();
    let handler = make_handler();
    let member = group.join();
    let worker = tokio::spawn(async move { member.run(&handler).await });
    while group.stats().acked < 6 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(group); // crash: no checkpoint saved
    worker.abort();
    assert_eq!(checkpoints.load("ledger").await.unwrap(), None);

    let group = start().await.unwrap();
    let handler = Arc::new(make_handler());
    let member = group.join();
    let h = handler.clone();
    let worker = tokio::spawn(async move { member.run(&h).await });
    while group.stats().acked < 6 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    group.shutdown().await.unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(handler.skipped(), 6, "every redelivery was a duplicate");
    let mut calls = calls.lock().unwrap().clone();
    calls.sort_unstable();
    assert_eq!(calls, [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        checkpoints.load("ledger").await.unwrap().map(|c| c.next),
        Some(6)
    );
}

#[tokio::test(start_paused = true)]
async fn run_nacks_failures_and_counts_members() {
    let store = InMemoryStore::new();
    append(&store, "order-1", "OrderCreated", 0).await;
    let group = ConsumerGroup::builder("audit", store.clone())
        .retry(quick_retries(3))
        .start()
        .await
        .unwrap();
    let member = group.join();
    assert_eq!(group.stats().members, 1);
    let extra = group.join();
    assert_eq!(group.stats().members, 2);
    drop(extra);
    assert_eq!(group.stats().members, 1);
    let handler = handler_fn(|_e| async { panic!("bug in handler") });
    let g = group.clone();
    let worker = tokio::spawn(async move { member.run(&handler).await });
    while g.stats().parked == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    group.shutdown().await.unwrap();
    worker.await.unwrap().unwrap();
    let parked = group.parked().await.unwrap();
    assert_eq!(parked[0].reason, "handler panicked: bug in handler");
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(group.stats().members, 0);
}

#[test]
fn seen_events_is_bounded() {
    let seen = SeenEvents::with_capacity(3);
    for n in 0..10u128 {
        assert!(seen.insert(uuid::Uuid::from_u128(n)));
    }
    assert_eq!(seen.len(), 3);
    assert!(!seen.contains(uuid::Uuid::from_u128(6)));
    assert!(seen.contains(uuid::Uuid::from_u128(9)));
}

#[tokio::test(start_paused = true)]
async fn randomized_crashes_never_redeliver_acknowledged_events() {
    let seed = seed("randomized_crashes_never_redeliver_acknowledged_events");
    let mut rng = TestRng::new(seed);
    for round in 0..rounds(10) {
        let store = InMemoryStore::new();
        let total = 1 + rng.below(50);
        for n in 0..total {
            append(
                &store,
                &format!("order-{}", rng.below(5)),
                "OrderCreated",
                n,
            )
            .await;
        }
        let mut acked: HashSet<u64> = HashSet::new();
        let mut restarts = 0;
        while (acked.len() as u64) < total {
            restarts += 1;
            let group = ConsumerGroup::builder("ledger", store.clone())
                .buffer(64)
                .retry(quick_retries(u32::MAX))
                .breaker(CircuitBreaker::disabled())
                .start()
                .await
                .unwrap();
            let member = group.join();
            let mut held = Vec::new();
            // After a few restarts, run to the end without crashing.
            let steps = if restarts > 5 {
                u64::MAX
            } else {
                rng.below(2 * total)
            };
            for _ in 0..steps {
                let Ok(next) = tokio::time::timeout(Duration::from_secs(1), member.next()).await
                else {
                    break; // nothing ready: every head is held
                };
                let d = next.unwrap().unwrap();
                let n = d.event().data.to_value()["n"].as_u64().unwrap();
                assert!(
                    !acked.contains(&n),
                    "round {round}: acked event {n} delivered again"
                );
                match rng.below(10) {
                    0..=5 => {
                        d.ack().await.unwrap();
                        acked.insert(n);
                    }
                    6 => d.nack("flaky").await.unwrap(),
                    7 => d.release(),
                    _ => held.push(d),
                }
                if acked.len() as u64 == total {
                    break;
                }
            }
            // Crash: deliveries out are lost with the process.
            held.into_iter().for_each(std::mem::forget);
            drop(member);
            drop(group);
        }
        assert_eq!(acked.len() as u64, total, "round {round}");
    }
}
