//! Hosted consumer groups over the in-memory store: settings kept in the store, leases,
//! delivery ids, message timeouts, strategies, settlements, parking (sequenced too),
//! deleting and recreating, restarts, and the group worker.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tidings::bus::{HandlerError, handler_fn};
use tidings::consumer::{GroupWorker, HostedGroups};
use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
use tidings_core::group::{
    GroupError, GroupMessage, GroupSettings, Groups, MemberLease, ParkedSelection, Settlement,
    StartFrom, Strategy,
};

const LONG: Duration = Duration::from_secs(60);

async fn append(store: &InMemoryStore, stream: &str, n: u64) {
    let e = Enricher::new("test")
        .enrich(NewEvent::new("Happened", json!({ "n": n })))
        .unwrap();
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            vec![e],
        )
        .await
        .unwrap();
}

fn n_of(m: &GroupMessage) -> u64 {
    m.event.data.to_value()["n"].as_u64().unwrap()
}

fn quick() -> GroupSettings {
    GroupSettings {
        lease: Duration::from_secs(5),
        message_timeout: Duration::from_secs(600),
        max_retries: 2,
        retry_base: Duration::from_millis(100),
        retry_cap: Duration::from_millis(400),
        ..GroupSettings::default()
    }
}

/// Fetches until `want` messages came (each fetch waits long, bounded by completion).
async fn fetch_n(
    groups: &HostedGroups<InMemoryStore>,
    lease: &MemberLease,
    want: usize,
) -> Vec<GroupMessage> {
    let mut out = Vec::new();
    while out.len() < want {
        let got = groups.fetch(lease, want - out.len(), LONG).await.unwrap();
        assert!(!got.is_empty(), "no message within a minute");
        out.extend(got);
    }
    out
}

/// Fetches and acknowledges one message at a time until `want` came; their numbers.
async fn fetch_acking(
    groups: &HostedGroups<InMemoryStore>,
    lease: &MemberLease,
    want: usize,
) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < want {
        let got = fetch_n(groups, lease, 1).await;
        ack_all(groups, lease, &got).await;
        out.push(n_of(&got[0]));
    }
    out
}

async fn ack_all(groups: &HostedGroups<InMemoryStore>, lease: &MemberLease, ms: &[GroupMessage]) {
    let report = groups
        .settle(lease, ms.iter().map(|m| (m.id, Settlement::Ack)).collect())
        .await
        .unwrap();
    assert_eq!(report.settled, ms.len());
    assert!(report.stale.is_empty());
}

#[tokio::test(start_paused = true)]
async fn create_list_describe_and_validation() {
    let store = InMemoryStore::new();
    for n in 0..3 {
        append(&store, "a", n).await;
    }
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    let info = groups.create("billing", quick()).await.unwrap();
    assert_eq!(info.name, "billing");
    assert!(matches!(
        groups.create("billing", quick()).await,
        Err(GroupError::AlreadyExists { .. })
    ));
    assert!(matches!(
        groups.create("$bad", quick()).await,
        Err(GroupError::InvalidName { .. })
    ));
    let bad = GroupSettings {
        buffer: 0,
        ..quick()
    };
    assert!(matches!(
        groups.create("other", bad).await,
        Err(GroupError::InvalidSettings { .. })
    ));
    assert_eq!(groups.list().await.unwrap().len(), 1);
    assert!(matches!(
        groups.describe("nope").await,
        Err(GroupError::NotFound { .. })
    ));
    // The head counts system events too (the group's creation record, say).
    let d = groups.describe("billing").await.unwrap();
    assert_eq!((d.head, d.checkpoint, d.lag), (4, 0, 4));
    let lease = groups.join("billing", "w1").await.unwrap();
    assert!(matches!(
        groups.fetch(&lease, 0, LONG).await,
        Err(GroupError::InvalidRequest(_))
    ));
    let ms = fetch_n(&groups, &lease, 1).await;
    let d = groups.describe("billing").await.unwrap();
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].name, "w1");
    assert_eq!(d.members[0].in_flight, 1);
    assert_eq!(d.in_flight, 1);
    ack_all(&groups, &lease, &ms).await;
    let d = groups.describe("billing").await.unwrap();
    assert_eq!((d.checkpoint, d.lag, d.in_flight), (1, 3, 0));
    // Updating may not move the start; other settings apply.
    let moved = GroupSettings {
        start: StartFrom::End,
        ..quick()
    };
    assert!(matches!(
        groups.update("billing", moved).await,
        Err(GroupError::InvalidSettings { field, .. }) if field == "start"
    ));
    let rr = GroupSettings {
        strategy: Strategy::RoundRobin,
        ..quick()
    };
    groups.update("billing", rr).await.unwrap();
    assert_eq!(
        groups.list().await.unwrap()[0].settings.strategy,
        Strategy::RoundRobin
    );
}

#[tokio::test(start_paused = true)]
async fn start_positions() {
    let store = InMemoryStore::new();
    for n in 0..4 {
        append(&store, "a", n).await;
    }
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    let end = GroupSettings {
        start: StartFrom::End,
        ..quick()
    };
    groups.create("end", end).await.unwrap();
    let at = GroupSettings {
        start: StartFrom::Position(2),
        ..quick()
    };
    groups.create("at", at).await.unwrap();
    append(&store, "a", 4).await;
    let lease = groups.join("at", "w").await.unwrap();
    assert_eq!(fetch_acking(&groups, &lease, 3).await, [2, 3, 4]);
    // `End` was resolved at creation: a restart does not move it.
    drop(groups);
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    append(&store, "a", 5).await;
    let lease = groups.join("end", "w").await.unwrap();
    assert_eq!(fetch_acking(&groups, &lease, 2).await, [4, 5]);
}

#[tokio::test(start_paused = true)]
async fn pinned_keeps_stream_order_round_robin_spreads_a_stream() {
    let store = InMemoryStore::new();
    for n in 0..4 {
        append(&store, "s", n).await;
    }
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    groups.create("pinned", quick()).await.unwrap();
    let rr = GroupSettings {
        strategy: Strategy::RoundRobin,
        ..quick()
    };
    groups.create("rr", rr).await.unwrap();

    // Pinned: one event of the stream out at a time, in order.
    let a = groups.join("pinned", "a").await.unwrap();
    let b = groups.join("pinned", "b").await.unwrap();
    let first = groups.fetch(&a, 10, LONG).await.unwrap();
    assert_eq!(first.iter().map(n_of).collect::<Vec<_>>(), [0]);
    let none = groups
        .fetch(&b, 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(none.is_empty(), "the stream is with a");
    ack_all(&groups, &a, &first).await;
    let next = groups.fetch(&b, 10, LONG).await.unwrap();
    assert_eq!(next.iter().map(n_of).collect::<Vec<_>>(), [1]);

    // Round-robin: several events of one stream out at once, to several members.
    let a = groups.join("rr", "a").await.unwrap();
    let b = groups.join("rr", "b").await.unwrap();
    let ma = groups.fetch(&a, 2, LONG).await.unwrap();
    let mb = groups.fetch(&b, 2, LONG).await.unwrap();
    assert_eq!(ma.iter().map(n_of).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(mb.iter().map(n_of).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(groups.describe("rr").await.unwrap().in_flight, 4);
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_redelivers_with_an_attempt_counted_and_fences_the_member() {
    let store = InMemoryStore::new();
    append(&store, "s", 0).await;
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    groups.create("g", quick()).await.unwrap();
    let dead = groups.join("g", "dead").await.unwrap();
    let ms = fetch_n(&groups, &dead, 1).await;
    assert_eq!(ms[0].attempt, 1);
    let alive = groups.join("g", "alive").await.unwrap();
    // `alive` waits in fetch (which keeps its lease) while `dead` lapses.
    let again = fetch_n(&groups, &alive, 1).await;
    assert_eq!(n_of(&again[0]), 0);
    assert_eq!(again[0].attempt, 2);
    assert_ne!(again[0].id, ms[0].id);
    for call in [
        groups.heartbeat(&dead).await.err(),
        groups.fetch(&dead, 1, LONG).await.err(),
        groups
            .settle(&dead, vec![(ms[0].id, Settlement::Ack)])
            .await
            .err(),
    ] {
        assert!(
            matches!(call, Some(GroupError::LeaseExpired { .. })),
            "{call:?}"
        );
    }
    assert_eq!(groups.stats("g").unwrap().expired, 1);
    ack_all(&groups, &alive, &again).await;
}

#[tokio::test(start_paused = true)]
async fn lease_expiries_park_a_message_after_its_last_attempt() {
    let store = InMemoryStore::new();
    append(&store, "s", 0).await;
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    let settings = GroupSettings {
        max_retries: 1,
        ..quick()
    };
    groups.create("g", settings).await.unwrap();
    for _ in 0..2 {
        let m = groups.join("g", "crashy").await.unwrap();
        fetch_n(&groups, &m, 1).await;
        // Never heard from again.
    }
    let watcher = groups.join("g", "watcher").await.unwrap();
    let got = groups.fetch(&watcher, 1, LONG).await.unwrap();
    assert!(got.is_empty());
    let parked = groups.parked("g", 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].attempts, 2);
    assert!(parked[0].reason.contains("expired"), "{}", parked[0].reason);
    assert!(!parked[0].held);
}

#[tokio::test(start_paused = true)]
async fn message_timeout_takes_back_and_old_ids_are_stale() {
    let store = InMemoryStore::new();
    append(&store, "s", 0).await;
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    let settings = GroupSettings {
        message_timeout: Duration::from_secs(1),
        ..quick()
    };
    groups.create("g", settings).await.unwrap();
    let slow = groups.join("g", "slow").await.unwrap();
    let first = fetch_n(&groups, &slow, 1).await;
    // Keep the lease alive past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        groups.heartbeat(&slow).await.unwrap();
    }
    let second = fetch_n(&groups, &slow, 1).await;
    assert_eq!(second[0].attempt, 2);
    assert_ne!(second[0].id, first[0].id);
    let report = groups
        .settle(
            &slow,
            vec![(first[0].id, Settlement::Ack), (999_999, Settlement::Ack)],
        )
        .await
        .unwrap();
    assert_eq!(report.settled, 0);
    assert_eq!(report.stale, vec![first[0].id, 999_999]);
    assert_eq!(groups.describe("g").await.unwrap().in_flight, 1);
    ack_all(&groups, &slow, &second).await;
    assert_eq!(groups.stats("g").unwrap().timed_out, 1);
}

#[tokio::test(start_paused = true)]
async fn leave_gives_messages_back_without_an_attempt() {
    let store = InMemoryStore::new();
    append(&store, "s", 0).await;
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    groups.create("g", quick()).await.unwrap();
    let a = groups.join("g", "a").await.unwrap();
    fetch_n(&groups, &a, 1).await;
    groups.leave(&a).await.unwrap();
    groups.leave(&a).await.unwrap();
    let b = groups.join("g", "b").await.unwrap();
    let again = fetch_n(&groups, &b, 1).await;
    assert_eq!(again[0].attempt, 1);
    assert!(matches!(
        groups.heartbeat(&a).await,
        Err(GroupError::LeaseExpired { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn settlements_retry_park_skip_and_parked_list() {
    let store = InMemoryStore::new();
    for (s, n) in [("a", 0), ("b", 1), ("c", 2)] {
        append(&store, s, n).await;
    }
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    groups.create("g", quick()).await.unwrap();
    let m = groups.join("g", "m").await.unwrap();
    let ms = fetch_n(&groups, &m, 3).await;
    let by_n: BTreeMap<u64, &GroupMessage> = ms.iter().map(|m| (n_of(m), m)).collect();
    let report = groups
        .settle(
            &m,
            vec![
                (
                    by_n[&0].id,
                    Settlement::Retry {
                        reason: "flaky".into(),
                    },
                ),
                (
                    by_n[&1].id,
                    Settlement::Park {
                        reason: "poison".into(),
                    },
                ),
                (by_n[&2].id, Settlement::Skip),
            ],
        )
        .await
        .unwrap();
    assert_eq!(report.settled, 3);
    // Retried until max_retries (2) retries are used up, then parked.
    for attempt in 2..=3 {
        let again = fetch_n(&groups, &m, 1).await;
        assert_eq!((n_of(&again[0]), again[0].attempt), (0, attempt));
        groups
            .settle(
                &m,
                vec![(
                    again[0].id,
                    Settlement::Retry {
                        reason: format!("flaky {attempt}"),
                    },
                )],
            )
            .await
            .unwrap();
    }
    let parked = groups.parked("g", 10).await.unwrap();
    let reasons: Vec<(&str, u32)> = parked
        .iter()
        .map(|p| (p.reason.as_str(), p.attempts))
        .collect();
    assert_eq!(reasons, [("poison", 1), ("flaky 3", 3)]);
    assert_eq!(groups.parked("g", 1).await.unwrap().len(), 1);
    let stats = groups.stats("g").unwrap();
    assert_eq!(
        (stats.skipped, stats.parked, stats.retried),
        (1, 2, 2),
        "{stats:?}"
    );
    let d = groups.describe("g").await.unwrap();
    // Every event settled; the reader may not have passed the last parked record yet.
    assert_eq!(d.parked, 2);
    assert!(d.checkpoint >= 4 && d.checkpoint + d.lag == d.head, "{d:?}");

    // Unknown ids change nothing.
    assert!(matches!(
        groups
            .delete_parked("g", ParkedSelection::Ids(vec![parked[0].id, 12345]))
            .await,
        Err(GroupError::ParkedNotFound { id: 12345, .. })
    ));
    assert!(matches!(
        groups
            .replay_parked("g", ParkedSelection::Ids(vec![777]))
            .await,
        Err(GroupError::ParkedNotFound { .. })
    ));
    assert_eq!(groups.parked("g", 10).await.unwrap().len(), 2);

    // Replay one: delivered with fresh attempts, gone from the list once acked.
    let replayed = groups
        .replay_parked("g", ParkedSelection::Ids(vec![parked[1].id]))
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    assert_eq!(
        groups
            .replay_parked("g", ParkedSelection::Ids(vec![parked[1].id]))
            .await
            .unwrap(),
        0
    );
    let r = fetch_n(&groups, &m, 1).await;
    assert!(r[0].replay);
    assert_eq!((n_of(&r[0]), r[0].attempt), (0, 1));
    ack_all(&groups, &m, &r).await;
    let left = groups.parked("g", 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].reason, "poison");
    assert_eq!(
        groups
            .delete_parked("g", ParkedSelection::All)
            .await
            .unwrap(),
        1
    );
    assert!(groups.parked("g", 10).await.unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn sequenced_parking_holds_the_stream_and_replays_in_order() {
    let store = InMemoryStore::new();
    append(&store, "s", 0).await;
    append(&store, "t", 100).await;
    append(&store, "s", 1).await;
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    let settings = GroupSettings {
        sequenced_parking: true,
        ..quick()
    };
    groups.create("g", settings).await.unwrap();
    let m = groups.join("g", "m").await.unwrap();
    let first = fetch_n(&groups, &m, 2).await;
    assert_eq!(first.iter().map(n_of).collect::<Vec<_>>(), [0, 100]);
    let s0 = first.iter().find(|m| n_of(m) == 0).unwrap();
    groups
        .settle(
            &m,
            vec![(
                s0.id,
                Settlement::Park {
                    reason: "bad".into(),
                },
            )],
        )
        .await
        .unwrap();
    let t0 = first.iter().find(|m| n_of(m) == 100).unwrap();
    ack_all(&groups, &m, std::slice::from_ref(t0)).await;
    append(&store, "s", 2).await;
    append(&store, "t", 101).await;
    // The other stream flows; s's later events are parked behind s0.
    let next = fetch_n(&groups, &m, 1).await;
    assert_eq!(n_of(&next[0]), 101);
    ack_all(&groups, &m, &next).await;
    let parked = groups.parked("g", 10).await.unwrap();
    let listed: Vec<(u64, bool)> = parked
        .iter()
        .map(|p| (p.event.data.to_value()["n"].as_u64().unwrap(), p.held))
        .collect();
    assert_eq!(listed, [(0, false), (1, true), (2, true)]);
    let d = groups.describe("g").await.unwrap();
    assert!(d.checkpoint >= 5, "{d:?}");

    // Replay: s's events in their original order, one at a time.
    assert_eq!(
        groups
            .replay_parked("g", ParkedSelection::All)
            .await
            .unwrap(),
        3
    );
    append(&store, "s", 3).await;
    // s3 comes while s has parked events: held too (once the reader gets to it).
    let mut held = 0;
    for _ in 0..1000 {
        held = groups.parked("g", 10).await.unwrap().len();
        if held == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(held, 4);
    let mut order = Vec::new();
    for _ in 0..3 {
        let got = groups.fetch(&m, 10, LONG).await.unwrap();
        assert_eq!(got.len(), 1, "one event of the stream at a time");
        assert!(got[0].replay);
        order.push(n_of(&got[0]));
        ack_all(&groups, &m, &got).await;
    }
    assert_eq!(order, [0, 1, 2]);
    // Replay s3 too; then s flows.
    let parked = groups.parked("g", 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert!(parked[0].held);
    groups
        .replay_parked("g", ParkedSelection::All)
        .await
        .unwrap();
    let got = fetch_n(&groups, &m, 1).await;
    assert_eq!(n_of(&got[0]), 3);
    ack_all(&groups, &m, &got).await;
    append(&store, "s", 4).await;
    let got = fetch_n(&groups, &m, 1).await;
    assert!(!got[0].replay);
    assert_eq!(n_of(&got[0]), 4);
}

#[tokio::test(start_paused = true)]
async fn delete_fails_members_and_recreating_starts_fresh() {
    let store = InMemoryStore::new();
    append(&store, "s", 0).await;
    append(&store, "s", 1).await;
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    groups.create("g", quick()).await.unwrap();
    let m = groups.join("g", "m").await.unwrap();
    let ms = fetch_n(&groups, &m, 1).await;
    groups
        .settle(
            &m,
            vec![(ms[0].id, Settlement::Park { reason: "x".into() })],
        )
        .await
        .unwrap();
    let more = fetch_n(&groups, &m, 1).await;
    ack_all(&groups, &m, &more).await;
    groups.delete("g").await.unwrap();
    assert!(matches!(
        groups.delete("g").await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        groups.fetch(&m, 1, LONG).await,
        Err(GroupError::NotFound { .. })
    ));
    groups.create("g", quick()).await.unwrap();
    assert!(matches!(
        groups.heartbeat(&m).await,
        Err(GroupError::LeaseExpired { .. })
    ));
    assert!(groups.parked("g", 10).await.unwrap().is_empty());
    let m = groups.join("g", "m").await.unwrap();
    assert_eq!(fetch_acking(&groups, &m, 2).await, [0, 1]);
}

#[tokio::test(start_paused = true)]
async fn restart_keeps_settings_parked_list_and_settled_state() {
    let store = InMemoryStore::new();
    for n in 0..5 {
        append(&store, "s", n).await;
    }
    let settings = GroupSettings {
        strategy: Strategy::RoundRobin,
        ..quick()
    };
    {
        let groups = HostedGroups::open(store.clone()).await.unwrap();
        groups.create("g", settings.clone()).await.unwrap();
        let m = groups.join("g", "m").await.unwrap();
        let ms = fetch_n(&groups, &m, 4).await;
        let by_n: BTreeMap<u64, &GroupMessage> = ms.iter().map(|m| (n_of(m), m)).collect();
        groups
            .settle(
                &m,
                vec![
                    (by_n[&0].id, Settlement::Ack),
                    (
                        by_n[&1].id,
                        Settlement::Park {
                            reason: "no".into(),
                        },
                    ),
                    (by_n[&3].id, Settlement::Ack),
                ],
            )
            .await
            .unwrap();
        groups.shutdown().await.unwrap();
    }
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    let listed = groups.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].settings, settings);
    assert_eq!(groups.parked("g", 10).await.unwrap().len(), 1);
    let m = groups.join("g", "m").await.unwrap();
    let ms = fetch_n(&groups, &m, 2).await;
    let again: HashSet<u64> = ms.iter().map(n_of).collect();
    assert_eq!(again, HashSet::from([2, 4]));
    ack_all(&groups, &m, &ms).await;
    let none = groups
        .fetch(&m, 10, Duration::from_millis(500))
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test(start_paused = true)]
async fn another_process_changing_the_registry_is_seen_not_overwritten() {
    let store = InMemoryStore::new();
    let one = HostedGroups::open(store.clone()).await.unwrap();
    let two = HostedGroups::open(store.clone()).await.unwrap();
    one.create("a", quick()).await.unwrap();
    // `two` had not seen `a`: its append conflicts, it reloads, and refuses the name.
    assert!(matches!(
        two.create("a", quick()).await,
        Err(GroupError::AlreadyExists { .. })
    ));
    two.create("b", quick()).await.unwrap();
    let names: Vec<String> = two
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
    let three = HostedGroups::open(store.clone()).await.unwrap();
    assert_eq!(three.list().await.unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn workers_share_the_work_and_retry_failures() {
    let store = InMemoryStore::new();
    for n in 0..40 {
        append(&store, &format!("s-{}", n % 7), n).await;
    }
    let groups = Arc::new(HostedGroups::open(store.clone()).await.unwrap());
    groups.create("g", quick()).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let failed_once = Arc::new(Mutex::new(HashSet::new()));
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut runs = Vec::new();
    for w in 0..3 {
        let worker = GroupWorker::new(groups.clone(), "g", format!("w{w}")).batch(4);
        let (seen, failed_once) = (seen.clone(), failed_once.clone());
        let mut stopped = stop.subscribe();
        runs.push(tokio::spawn(async move {
            let handler = handler_fn(move |e| {
                let (seen, failed_once) = (seen.clone(), failed_once.clone());
                async move {
                    let n = e.data.to_value()["n"].as_u64().unwrap();
                    if n % 10 == 3 && failed_once.lock().unwrap().insert(n) {
                        return Err(HandlerError::new("first time fails"));
                    }
                    seen.lock().unwrap().push((e.stream.to_string(), n));
                    Ok(())
                }
            });
            worker
                .run(&handler, async move {
                    stopped.recv().await.ok();
                })
                .await
                .unwrap()
        }));
    }
    while groups.stats("g").unwrap().acked < 40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    let mut total = tidings::consumer::WorkerStats::default();
    for r in runs {
        let s = r.await.unwrap();
        total.handled += s.handled;
        total.failed += s.failed;
    }
    assert_eq!((total.handled, total.failed), (40, 4));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 40);
    // Per-stream order (pinned), even across retries.
    let mut per_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (s, n) in seen.iter() {
        per_stream.entry(s).or_default().push(*n);
    }
    for (s, ns) in per_stream {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "{s}");
    }
    assert!(groups.describe("g").await.unwrap().members.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_idle_group_stops_saving_its_checkpoint() {
    use tidings::EventReader;
    let store = InMemoryStore::new();
    append(&store, "s", 0).await;
    let groups = HostedGroups::open(store.clone()).await.unwrap();
    groups.create("g", quick()).await.unwrap();
    let m = groups.join("g", "m").await.unwrap();
    let ms = fetch_n(&groups, &m, 1).await;
    ack_all(&groups, &m, &ms).await;
    // The group's first incarnation is the first record of `$groups`.
    let checkpoints = StreamId::system("$checkpoint-g@0").unwrap();
    let mut saved = None;
    for _ in 0..1000 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        saved = store.stream_version(&checkpoints).await.unwrap();
        if saved.is_some() {
            break;
        }
    }
    assert!(saved.is_some(), "the checkpoint was never saved");
    // Each save is a record the group reads past; that alone is no reason to save.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let later = store.stream_version(&checkpoints).await.unwrap();
    assert!(later <= saved.map(|v| v + 1), "{saved:?} -> {later:?}");
}

/// A handler that blocks its thread past the lease starves the worker's heartbeat: the
/// lease lapses, the settle is refused, and the worker joins again and handles the
/// message a second time (at-least-once). Real time: the blocking is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lease_lapsed_joins_again() {
    let store = InMemoryStore::new();
    append(&store, "s", 0).await;
    let groups = Arc::new(HostedGroups::open(store.clone()).await.unwrap());
    let settings = GroupSettings {
        lease: Duration::from_millis(100),
        ..quick()
    };
    groups.create("g", settings).await.unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let calls = calls.clone();
        handler_fn(move |_e| {
            let calls = calls.clone();
            async move {
                let first = {
                    let mut calls = calls.lock().unwrap();
                    calls.push(tidings_core::handler::current_attempt());
                    calls.len() == 1
                };
                if first {
                    std::thread::sleep(Duration::from_millis(600));
                }
                Ok(())
            }
        })
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = GroupWorker::new(groups.clone(), "g", "sleepy").wait(Duration::from_millis(50));
    let run = tokio::spawn(async move {
        worker
            .run(&handler, async {
                stopped.await.ok();
            })
            .await
    });
    for _ in 0..3000 {
        if groups.stats("g").unwrap().acked == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(groups.stats("g").unwrap().acked, 1);
    stop.send(()).unwrap();
    let stats = run.await.unwrap().unwrap();
    assert!(stats.rejoined >= 1, "{stats:?}");
    assert_eq!(stats.handled, 2, "{stats:?}");
    assert!(stats.stale <= 1, "{stats:?}");
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0], Some(1));
    assert!(calls[1] >= Some(2), "{calls:?}");
}
