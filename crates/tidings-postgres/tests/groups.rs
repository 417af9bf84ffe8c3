//! PgGroups against a real PostgreSQL: settings, leases, strategies, settlements,
//! parking and replay, with two `PgGroups` on separate pools standing for two processes
//! sharing one group. Each test works in a fresh schema and drops it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_json::json;
use tidings::{EventAppender, ExpectedVersion, Filter, StreamId};
use tidings_core::group::{
    GroupError, GroupMessage, GroupSettings, Groups, MemberLease, ParkedSelection, Settlement,
    StartFrom, Strategy,
};
use tidings_postgres::{PgGroups, PgStore};
use tidings_testkit::conformance::{event, stream};

use common::{database, fresh_schema, store_in};

/// A guard against hangs in fetches that must get something; not a speed assertion.
const PATIENCE: Duration = Duration::from_secs(20);

/// One schema with a store and its groups; `other()` opens a second "process".
struct Fixture {
    url: String,
    schema: String,
    store: PgStore,
    groups: PgGroups,
}

impl Fixture {
    async fn new(test: &str) -> Option<Self> {
        let url = database(test).await?;
        let schema = fresh_schema();
        let store = store_in(&url, &schema).await;
        let groups = store.groups().poll_interval(Duration::from_millis(20));
        Some(Self {
            url,
            schema,
            store,
            groups,
        })
    }

    /// Groups on the same schema through a pool, listener and store of their own.
    async fn other(&self) -> PgGroups {
        PgGroups::connect_with(
            PgStore::builder(&self.url)
                .schema(&self.schema)
                .max_connections(4),
        )
        .await
        .unwrap()
        .poll_interval(Duration::from_millis(20))
    }

    async fn append(&self, stream_name: &str, n: usize) {
        let events = (0..n)
            .map(|i| event("Happened", json!({ "i": i })))
            .collect();
        self.store
            .append(&stream(stream_name), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }

    async fn drop(self) {
        self.store.drop_schema().await.unwrap();
    }
}

fn settings(strategy: Strategy) -> GroupSettings {
    GroupSettings {
        strategy,
        ..GroupSettings::default()
    }
}

/// Fetches until `n` messages came (each fetch waiting), or panics after PATIENCE.
async fn fetch_n(groups: &PgGroups, lease: &MemberLease, n: usize) -> Vec<GroupMessage> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} messages came within {PATIENCE:?}",
            got.len()
        );
        got.extend(
            groups
                .fetch(lease, n - got.len(), Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    got
}

async fn ack(groups: &PgGroups, lease: &MemberLease, messages: &[GroupMessage]) {
    let report = groups
        .settle(
            lease,
            messages.iter().map(|m| (m.id, Settlement::Ack)).collect(),
        )
        .await
        .unwrap();
    assert_eq!(report.settled, messages.len(), "{report:?}");
    assert!(report.stale.is_empty(), "{report:?}");
}

fn streams_and_revisions(messages: &[GroupMessage]) -> Vec<(String, u64)> {
    messages
        .iter()
        .map(|m| (m.event.stream.to_string(), m.event.revision))
        .collect()
}

#[tokio::test]
async fn settings_are_validated_stored_and_shared() {
    let Some(fx) = Fixture::new("settings_are_validated_stored_and_shared").await else {
        return;
    };
    let g = &fx.groups;
    assert!(matches!(
        g.create("-bad", GroupSettings::default()).await,
        Err(GroupError::InvalidName { .. })
    ));
    let bad = GroupSettings {
        buffer: 0,
        ..GroupSettings::default()
    };
    match g.create("billing", bad).await {
        Err(GroupError::InvalidSettings { field, .. }) => assert_eq!(field, "buffer"),
        other => panic!("{other:?}"),
    }
    assert!(g.list().await.unwrap().is_empty(), "a refused create wrote");

    let s = GroupSettings {
        lease: Duration::from_secs(3),
        filter: Filter::all().stream_prefix("order-"),
        ..settings(Strategy::RoundRobin)
    };
    let info = g.create("billing", s.clone()).await.unwrap();
    assert_eq!(info.settings, s);
    assert!(matches!(
        g.create("billing", GroupSettings::default()).await,
        Err(GroupError::AlreadyExists { .. })
    ));
    g.create("audit", GroupSettings::default()).await.unwrap();

    // Another process sees the same groups.
    let other = fx.other().await;
    let names: Vec<String> = other
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["audit", "billing"]);
    assert_eq!(other.describe("billing").await.unwrap().settings, s);

    let changed = GroupSettings {
        lease: Duration::from_secs(7),
        ..s.clone()
    };
    other.update("billing", changed.clone()).await.unwrap();
    assert_eq!(g.describe("billing").await.unwrap().settings, changed);
    let lease = g.join("billing", "w").await.unwrap();
    assert_eq!(lease.lease, Duration::from_secs(7));

    match g
        .update(
            "billing",
            GroupSettings {
                start: StartFrom::End,
                ..changed.clone()
            },
        )
        .await
    {
        Err(GroupError::InvalidSettings { field, .. }) => assert_eq!(field, "start"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        g.update("nope", GroupSettings::default()).await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        g.update(
            "billing",
            GroupSettings {
                sequenced_parking: true,
                ..changed.clone()
            }
        )
        .await,
        Err(GroupError::InvalidSettings { .. })
    ));
    assert_eq!(g.describe("billing").await.unwrap().settings, changed);

    g.delete("billing").await.unwrap();
    assert!(matches!(
        g.delete("billing").await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        other.heartbeat(&lease).await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        g.fetch(&lease, 1, Duration::ZERO).await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        g.describe("billing").await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        g.join("billing", "w").await,
        Err(GroupError::NotFound { .. })
    ));
    // A group made again under the same name is a new group: old leases do not hold.
    g.create("billing", GroupSettings::default()).await.unwrap();
    assert!(matches!(
        g.heartbeat(&lease).await,
        Err(GroupError::LeaseExpired { .. })
    ));
    fx.drop().await;
}

#[tokio::test]
async fn every_event_the_filter_passes_is_delivered_and_the_checkpoint_follows() {
    let Some(fx) =
        Fixture::new("every_event_the_filter_passes_is_delivered_and_the_checkpoint_follows").await
    else {
        return;
    };
    fx.append("order-1", 3).await;
    fx.append("invoice-1", 2).await;
    fx.store
        .append(
            &StreamId::system("$stats").unwrap(),
            ExpectedVersion::Any,
            vec![event("Stat", json!({}))],
        )
        .await
        .unwrap();
    fx.append("order-2", 1).await;
    let g = &fx.groups;
    g.create("all", settings(Strategy::RoundRobin))
        .await
        .unwrap();
    g.create(
        "orders",
        GroupSettings {
            filter: Filter::all().stream_prefix("order-"),
            ..settings(Strategy::RoundRobin)
        },
    )
    .await
    .unwrap();

    let all = g.join("all", "w").await.unwrap();
    let got = fetch_n(g, &all, 6).await;
    let positions: Vec<u64> = got.iter().map(|m| m.event.position).collect();
    assert_eq!(
        positions,
        [0, 1, 2, 3, 4, 6],
        "system events are not delivered"
    );
    assert!(got.iter().all(|m| m.attempt == 1 && !m.replay));
    let ids: HashSet<u64> = got.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 6, "each hand-out has its own id");
    assert!(g.fetch(&all, 10, Duration::ZERO).await.unwrap().is_empty());

    let d = g.describe("all").await.unwrap();
    assert_eq!((d.checkpoint, d.head, d.lag, d.in_flight), (0, 7, 7, 6));
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].in_flight, 6);
    assert_eq!(d.members[0].name, "w");
    assert!(d.members[0].lease_left > Duration::ZERO);
    ack(g, &all, &got[..2]).await;
    assert_eq!(g.describe("all").await.unwrap().checkpoint, 2);
    ack(g, &all, &got[2..]).await;
    let d = g.describe("all").await.unwrap();
    assert_eq!((d.checkpoint, d.lag, d.in_flight, d.parked), (7, 0, 0, 0));

    let orders = g.join("orders", "w").await.unwrap();
    let got = fetch_n(g, &orders, 4).await;
    assert_eq!(
        streams_and_revisions(&got),
        [
            ("order-1".to_owned(), 0),
            ("order-1".to_owned(), 1),
            ("order-1".to_owned(), 2),
            ("order-2".to_owned(), 0)
        ]
    );
    ack(g, &orders, &got).await;
    assert_eq!(g.describe("orders").await.unwrap().checkpoint, 7);
    fx.drop().await;
}

#[tokio::test]
async fn groups_start_at_the_beginning_the_end_or_a_position() {
    let Some(fx) = Fixture::new("groups_start_at_the_beginning_the_end_or_a_position").await else {
        return;
    };
    fx.append("a", 4).await;
    let g = &fx.groups;
    for (name, start) in [
        ("from-end", StartFrom::End),
        ("from-2", StartFrom::Position(2)),
        ("from-start", StartFrom::Beginning),
    ] {
        g.create(
            name,
            GroupSettings {
                start,
                ..settings(Strategy::RoundRobin)
            },
        )
        .await
        .unwrap();
    }
    fx.append("a", 1).await;
    for (name, want) in [
        ("from-end", vec![4]),
        ("from-2", vec![2, 3, 4]),
        ("from-start", vec![0, 1, 2, 3, 4]),
    ] {
        let lease = g.join(name, "w").await.unwrap();
        let got = fetch_n(g, &lease, want.len()).await;
        let positions: Vec<u64> = got.iter().map(|m| m.event.position).collect();
        assert_eq!(positions, want, "{name}");
    }
    fx.drop().await;
}

#[tokio::test]
async fn pinned_keeps_each_stream_with_one_member_across_processes() {
    let Some(fx) = Fixture::new("pinned_keeps_each_stream_with_one_member_across_processes").await
    else {
        return;
    };
    for s in ["a", "b", "c"] {
        fx.append(s, 3).await;
    }
    let a = &fx.groups;
    let b = fx.other().await;
    a.create("pinned", settings(Strategy::Pinned))
        .await
        .unwrap();
    let ma = a.join("pinned", "in-a").await.unwrap();
    let mb = b.join("pinned", "in-b").await.unwrap();

    // One message per stream at a time, whichever process asks.
    let first = a.fetch(&ma, 10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        streams_and_revisions(&first),
        [
            ("a".to_owned(), 0),
            ("b".to_owned(), 0),
            ("c".to_owned(), 0)
        ]
    );
    assert!(b.fetch(&mb, 10, Duration::ZERO).await.unwrap().is_empty());

    // Settling one stream's message frees that stream only, for the other process too.
    ack(a, &ma, &first[1..2]).await;
    let next = b.fetch(&mb, 10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(streams_and_revisions(&next), [("b".to_owned(), 1)]);

    // Drain with both processes; per stream, revisions come in order.
    ack(a, &ma, &[first[0].clone(), first[2].clone()]).await;
    ack(&b, &mb, &next).await;
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    seen.entry("b".to_owned()).or_default().extend([0, 1]);
    seen.entry("a".to_owned()).or_default().push(0);
    seen.entry("c".to_owned()).or_default().push(0);
    let mut turn = 0;
    while seen.values().map(Vec::len).sum::<usize>() < 9 {
        let (g, lease) = if turn % 2 == 0 { (a, &ma) } else { (&b, &mb) };
        turn += 1;
        assert!(turn < 200, "did not drain: {seen:?}");
        let got = g
            .fetch(lease, 10, Duration::from_millis(200))
            .await
            .unwrap();
        let streams: HashSet<String> = got.iter().map(|m| m.event.stream.to_string()).collect();
        assert_eq!(
            streams.len(),
            got.len(),
            "two of one stream at once: {got:?}"
        );
        for m in &got {
            seen.entry(m.event.stream.to_string())
                .or_default()
                .push(m.event.revision);
        }
        ack(g, lease, &got).await;
    }
    for (s, revisions) in &seen {
        assert_eq!(revisions, &[0, 1, 2], "stream {s}");
    }
    fx.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_members_in_two_processes_split_the_work() {
    let Some(fx) = Fixture::new("round_robin_members_in_two_processes_split_the_work").await else {
        return;
    };
    let total = 60;
    for i in 0..total / 3 {
        fx.append(&format!("s-{i}"), 3).await;
    }
    fx.groups
        .create("rr", settings(Strategy::RoundRobin))
        .await
        .unwrap();
    let processes = [fx.groups.clone(), fx.other().await];
    let mut workers = Vec::new();
    for (i, g) in processes.into_iter().enumerate() {
        workers.push(tokio::spawn(async move {
            let lease = g.join("rr", &format!("p{i}")).await.unwrap();
            let mut positions = Vec::new();
            let mut idle = 0;
            while idle < 3 {
                let got = g
                    .fetch(&lease, 4, Duration::from_millis(300))
                    .await
                    .unwrap();
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                positions.extend(got.iter().map(|m| m.event.position));
                ack(&g, &lease, &got).await;
                // Let the other process take a turn.
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            positions
        }));
    }
    let mut all = Vec::new();
    let mut per_process = Vec::new();
    for w in workers {
        let got = w.await.unwrap();
        per_process.push(got.len());
        all.extend(got);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (0..total as u64).collect::<Vec<_>>(),
        "each event once"
    );
    assert!(
        per_process.iter().all(|n| *n > 0),
        "both processes worked: {per_process:?}"
    );
    let d = fx.groups.describe("rr").await.unwrap();
    assert_eq!((d.checkpoint, d.lag, d.in_flight), (total as u64, 0, 0));
    fx.drop().await;
}

#[tokio::test]
async fn a_lapsed_lease_hands_its_messages_to_others_and_fences_the_member() {
    let Some(fx) =
        Fixture::new("a_lapsed_lease_hands_its_messages_to_others_and_fences_the_member").await
    else {
        return;
    };
    fx.append("a", 2).await;
    let g = &fx.groups;
    g.create(
        "g",
        GroupSettings {
            lease: Duration::from_millis(300),
            ..settings(Strategy::Pinned)
        },
    )
    .await
    .unwrap();
    // The member that dies: it fetches and is never heard from again.
    let dead_process = fx.other().await;
    let dead = dead_process.join("g", "dies").await.unwrap();
    let held = dead_process
        .fetch(&dead, 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(streams_and_revisions(&held), [("a".to_owned(), 0)]);

    let live = g.join("g", "lives").await.unwrap();
    let got = fetch_n(g, &live, 1).await;
    assert_eq!(streams_and_revisions(&got), [("a".to_owned(), 0)]);
    assert_eq!(
        got[0].attempt, 2,
        "a lapsed lease counts one failed attempt"
    );
    assert_ne!(got[0].id, held[0].id, "a new hand-out has a new id");

    // Whatever the lapsed member does changes nothing.
    for result in [
        dead_process
            .settle(&dead, vec![(held[0].id, Settlement::Ack)])
            .await
            .map(drop),
        dead_process.heartbeat(&dead).await,
        dead_process.fetch(&dead, 1, Duration::ZERO).await.map(drop),
    ] {
        assert!(
            matches!(result, Err(GroupError::LeaseExpired { .. })),
            "{result:?}"
        );
    }
    dead_process.leave(&dead).await.unwrap();
    let d = g.describe("g").await.unwrap();
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].name, "lives");
    assert_eq!(d.members[0].in_flight, 1);
    ack(g, &live, &got).await;
    let next = fetch_n(g, &live, 1).await;
    assert_eq!(streams_and_revisions(&next), [("a".to_owned(), 1)]);
    fx.drop().await;
}

#[tokio::test]
async fn heartbeats_keep_a_lease_and_leaving_releases_without_an_attempt() {
    let Some(fx) =
        Fixture::new("heartbeats_keep_a_lease_and_leaving_releases_without_an_attempt").await
    else {
        return;
    };
    fx.append("a", 1).await;
    let g = &fx.groups;
    g.create(
        "g",
        GroupSettings {
            lease: Duration::from_millis(400),
            ..settings(Strategy::RoundRobin)
        },
    )
    .await
    .unwrap();
    let m = g.join("g", "m").await.unwrap();
    let got = fetch_n(g, &m, 1).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        g.heartbeat(&m).await.unwrap();
    }
    // Longer than the lease has passed, but the heartbeats kept it.
    let other = g.join("g", "other").await.unwrap();
    assert!(g.fetch(&other, 1, Duration::ZERO).await.unwrap().is_empty());

    g.leave(&m).await.unwrap();
    g.leave(&m).await.unwrap();
    let again = fetch_n(g, &other, 1).await;
    assert_eq!(again[0].event.position, got[0].event.position);
    assert_eq!(again[0].attempt, 1, "leaving does not count an attempt");
    assert!(matches!(
        g.settle(&m, vec![(got[0].id, Settlement::Ack)]).await,
        Err(GroupError::LeaseExpired { .. })
    ));
    fx.drop().await;
}

#[tokio::test]
async fn a_message_held_past_its_timeout_goes_back_and_its_old_id_is_stale() {
    let Some(fx) =
        Fixture::new("a_message_held_past_its_timeout_goes_back_and_its_old_id_is_stale").await
    else {
        return;
    };
    fx.append("a", 1).await;
    let g = &fx.groups;
    g.create(
        "g",
        GroupSettings {
            message_timeout: Duration::from_millis(200),
            ..settings(Strategy::RoundRobin)
        },
    )
    .await
    .unwrap();
    let slow = g.join("g", "slow").await.unwrap();
    let first = fetch_n(g, &slow, 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Past the timeout the message is not the member's any more, swept or not.
    let report = g
        .settle(&slow, vec![(first[0].id, Settlement::Ack)])
        .await
        .unwrap();
    assert_eq!(report.settled, 0);
    assert_eq!(report.stale, [first[0].id]);

    let other = fx.other().await;
    let quick = other.join("g", "quick").await.unwrap();
    let second = fetch_n(&other, &quick, 1).await;
    assert_eq!(second[0].event.position, first[0].event.position);
    assert_eq!(second[0].attempt, 2, "a timeout counts one failed attempt");
    // The slow member still has its lease, and its old id stays stale.
    let report = g
        .settle(&slow, vec![(first[0].id, Settlement::Ack)])
        .await
        .unwrap();
    assert_eq!(report.stale, [first[0].id]);
    // Nor can it settle the new hand-out, which is not its own.
    let report = g
        .settle(&slow, vec![(second[0].id, Settlement::Ack)])
        .await
        .unwrap();
    assert_eq!(report.stale, [second[0].id]);
    assert_eq!(g.describe("g").await.unwrap().in_flight, 1);
    ack(&other, &quick, &second).await;
    assert_eq!(g.describe("g").await.unwrap().checkpoint, 1);
    fx.drop().await;
}

#[tokio::test]
async fn retries_back_off_and_park_after_the_last_attempt() {
    let Some(fx) = Fixture::new("retries_back_off_and_park_after_the_last_attempt").await else {
        return;
    };
    fx.append("a", 1).await;
    fx.append("b", 1).await;
    let g = &fx.groups;
    g.create(
        "quick",
        GroupSettings {
            max_retries: 2,
            retry_base: Duration::from_millis(20),
            ..settings(Strategy::RoundRobin)
        },
    )
    .await
    .unwrap();
    g.create(
        "slow",
        GroupSettings {
            retry_base: Duration::from_secs(600),
            retry_cap: Duration::from_secs(600),
            ..settings(Strategy::RoundRobin)
        },
    )
    .await
    .unwrap();

    // A long backoff keeps the message back.
    let s = g.join("slow", "w").await.unwrap();
    let got = fetch_n(g, &s, 2).await;
    let reason = |r: &str| Settlement::Retry {
        reason: r.to_owned(),
    };
    g.settle(&s, vec![(got[0].id, reason("later"))])
        .await
        .unwrap();
    ack(g, &s, &got[1..]).await;
    assert!(
        g.fetch(&s, 10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(g.describe("slow").await.unwrap().checkpoint, 0);

    // max_retries 2: attempts 1, 2 and 3, then parked with the last reason.
    let q = g.join("quick", "w").await.unwrap();
    let first = fetch_n(g, &q, 2).await;
    ack(g, &q, &first[1..]).await;
    let mut current = first[0].clone();
    for attempt in 1..=3u32 {
        assert_eq!(current.attempt, attempt);
        let report = g
            .settle(&q, vec![(current.id, reason(&format!("failed {attempt}")))])
            .await
            .unwrap();
        assert_eq!(report.settled, 1);
        if attempt < 3 {
            current = fetch_n(g, &q, 1).await.remove(0);
        }
    }
    assert!(
        g.fetch(&q, 1, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    let parked = g.parked("quick", 10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].reason, "failed 3");
    assert_eq!(parked[0].attempts, 3);
    assert!(!parked[0].held);
    assert_eq!(parked[0].event.position, 0);
    let d = g.describe("quick").await.unwrap();
    assert_eq!((d.parked, d.checkpoint, d.in_flight), (1, 2, 0));
    fx.drop().await;
}

#[tokio::test]
async fn park_skip_replay_and_delete_parked() {
    let Some(fx) = Fixture::new("park_skip_replay_and_delete_parked").await else {
        return;
    };
    fx.append("a", 3).await;
    fx.append("b", 2).await;
    let g = &fx.groups;
    g.create("g", settings(Strategy::RoundRobin)).await.unwrap();
    let m = g.join("g", "w").await.unwrap();
    let got = fetch_n(g, &m, 5).await;
    let park = |r: &str| Settlement::Park {
        reason: r.to_owned(),
    };
    let report = g
        .settle(
            &m,
            vec![
                (got[0].id, park("bad a0")),
                (got[1].id, Settlement::Skip),
                (got[2].id, park("bad a2")),
                (got[3].id, park("bad b0")),
                (got[4].id, Settlement::Ack),
                (got[4].id, Settlement::Ack),
                (999_999_999, Settlement::Ack),
            ],
        )
        .await
        .unwrap();
    assert_eq!(report.settled, 5);
    assert_eq!(report.stale, [got[4].id, 999_999_999]);

    let parked = g.parked("g", 10).await.unwrap();
    let listed: Vec<(u64, &str, u32)> = parked
        .iter()
        .map(|p| (p.event.position, p.reason.as_str(), p.attempts))
        .collect();
    assert_eq!(
        listed,
        [(0, "bad a0", 1), (2, "bad a2", 1), (3, "bad b0", 1)]
    );
    assert_eq!(g.parked("g", 2).await.unwrap().len(), 2);
    let d = g.describe("g").await.unwrap();
    assert_eq!(
        (d.parked, d.checkpoint),
        (3, 5),
        "parked messages are settled"
    );

    // Unknown ids are refused and change nothing.
    match g
        .replay_parked("g", ParkedSelection::Ids(vec![parked[0].id, 424_242]))
        .await
    {
        Err(GroupError::ParkedNotFound { id, .. }) => assert_eq!(id, 424_242),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        g.delete_parked("g", ParkedSelection::Ids(vec![424_242]))
            .await,
        Err(GroupError::ParkedNotFound { .. })
    ));
    assert!(g.fetch(&m, 10, Duration::ZERO).await.unwrap().is_empty());

    // Replay two of them: delivered again as replays with fresh attempts, oldest first.
    let two = vec![parked[0].id, parked[1].id];
    assert_eq!(
        g.replay_parked("g", ParkedSelection::Ids(two.clone()))
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        g.replay_parked("g", ParkedSelection::Ids(two))
            .await
            .unwrap(),
        0,
        "already queued"
    );
    assert_eq!(
        g.describe("g").await.unwrap().parked,
        3,
        "queued ones stay listed"
    );
    let replayed = fetch_n(g, &m, 2).await;
    let positions: Vec<u64> = replayed.iter().map(|r| r.event.position).collect();
    assert_eq!(positions, [0, 2]);
    assert!(replayed.iter().all(|r| r.replay && r.attempt == 1));
    // Acknowledged, a replay leaves the list; parked again, it stays.
    g.settle(
        &m,
        vec![
            (replayed[0].id, Settlement::Ack),
            (replayed[1].id, park("still bad")),
        ],
    )
    .await
    .unwrap();
    let parked = g.parked("g", 10).await.unwrap();
    let listed: Vec<(u64, &str)> = parked
        .iter()
        .map(|p| (p.event.position, p.reason.as_str()))
        .collect();
    assert_eq!(listed, [(3, "bad b0"), (2, "still bad")]);

    assert_eq!(
        g.delete_parked("g", ParkedSelection::Ids(vec![parked[0].id]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(g.delete_parked("g", ParkedSelection::All).await.unwrap(), 1);
    assert!(g.parked("g", 10).await.unwrap().is_empty());
    assert_eq!(g.replay_parked("g", ParkedSelection::All).await.unwrap(), 0);
    fx.drop().await;
}

#[tokio::test]
async fn sequenced_parking_holds_a_stream_behind_its_parked_event_and_replay_restores_order() {
    let Some(fx) = Fixture::new(
        "sequenced_parking_holds_a_stream_behind_its_parked_event_and_replay_restores_order",
    )
    .await
    else {
        return;
    };
    fx.append("s", 3).await; // 0, 1, 2
    fx.append("t", 1).await; // 3
    let g = &fx.groups;
    g.create(
        "g",
        GroupSettings {
            sequenced_parking: true,
            ..settings(Strategy::Pinned)
        },
    )
    .await
    .unwrap();
    let m = g.join("g", "w").await.unwrap();
    let got = fetch_n(g, &m, 2).await;
    assert_eq!(
        streams_and_revisions(&got),
        [("s".to_owned(), 0), ("t".to_owned(), 0)]
    );
    g.settle(
        &m,
        vec![
            (
                got[0].id,
                Settlement::Park {
                    reason: "poison".to_owned(),
                },
            ),
            (got[1].id, Settlement::Ack),
        ],
    )
    .await
    .unwrap();
    fx.append("t", 1).await; // 4
    fx.append("s", 1).await; // 5
    let flowing = fetch_n(g, &m, 1).await;
    assert_eq!(streams_and_revisions(&flowing), [("t".to_owned(), 1)]);
    ack(g, &m, &flowing).await;
    assert!(
        g.fetch(&m, 10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );

    let parked = g.parked("g", 10).await.unwrap();
    let listed: Vec<(u64, bool, u32)> = parked
        .iter()
        .map(|p| (p.event.position, p.held, p.attempts))
        .collect();
    assert_eq!(
        listed,
        [(0, false, 1), (1, true, 0), (2, true, 0), (5, true, 0)]
    );
    assert_eq!(parked[0].reason, "poison");

    assert_eq!(g.replay_parked("g", ParkedSelection::All).await.unwrap(), 4);
    let mut order = Vec::new();
    while order.len() < 4 {
        let got = g.fetch(&m, 10, PATIENCE).await.unwrap();
        assert_eq!(got.len(), 1, "one at a time for one stream: {got:?}");
        assert!(got[0].replay);
        order.push(got[0].event.revision);
        ack(g, &m, &got).await;
    }
    assert_eq!(order, [0, 1, 2, 3]);
    let d = g.describe("g").await.unwrap();
    assert_eq!((d.parked, d.checkpoint, d.lag), (0, 6, 0));
    fx.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_wakes_for_an_append_by_another_process() {
    let Some(fx) = Fixture::new("a_waiting_fetch_wakes_for_an_append_by_another_process").await
    else {
        return;
    };
    let g = fx.groups.clone();
    g.create("g", settings(Strategy::Pinned)).await.unwrap();
    let other = fx.other().await;
    let m = other.join("g", "waiter").await.unwrap();
    let waiting = tokio::spawn(async move { other.fetch(&m, 10, PATIENCE).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    fx.append("late", 1).await;
    let got = waiting.await.unwrap().unwrap();
    assert_eq!(streams_and_revisions(&got), [("late".to_owned(), 0)]);
    fx.drop().await;
}

#[tokio::test]
async fn a_stuck_session_makes_a_fetch_fail_instead_of_hanging() {
    let Some(fx) = Fixture::new("a_stuck_session_makes_a_fetch_fail_instead_of_hanging").await
    else {
        return;
    };
    let g = fx
        .groups
        .clone()
        .timeouts(Duration::from_millis(200), Duration::from_secs(5));
    g.create("g", GroupSettings::default()).await.unwrap();
    let m = g.join("g", "w").await.unwrap();
    // Another session locks the member's row and sits on it.
    let mut stuck = fx.store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM tidings_group_members FOR UPDATE")
        .execute(&mut *stuck)
        .await
        .unwrap();
    match g.fetch(&m, 1, Duration::ZERO).await {
        Err(GroupError::Backend(message)) => {
            assert!(message.contains("lock_timeout (200 ms)"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    stuck.rollback().await.unwrap();
    assert!(g.fetch(&m, 1, Duration::ZERO).await.unwrap().is_empty());
    fx.drop().await;
}

#[tokio::test]
async fn bad_requests_change_nothing() {
    let Some(fx) = Fixture::new("bad_requests_change_nothing").await else {
        return;
    };
    let g = &fx.groups;
    g.create("g", GroupSettings::default()).await.unwrap();
    let m = g.join("g", "w").await.unwrap();
    assert!(matches!(
        g.fetch(&m, 0, Duration::ZERO).await,
        Err(GroupError::InvalidRequest(_))
    ));
    let forged = MemberLease {
        member: "not-a-member".to_owned(),
        ..m.clone()
    };
    assert!(matches!(
        g.fetch(&forged, 1, Duration::ZERO).await,
        Err(GroupError::LeaseExpired { .. })
    ));
    let elsewhere = MemberLease {
        group: "h".to_owned(),
        ..m.clone()
    };
    assert!(matches!(
        g.heartbeat(&elsewhere).await,
        Err(GroupError::NotFound { .. })
    ));
    g.create("h", GroupSettings::default()).await.unwrap();
    assert!(matches!(
        g.heartbeat(&elsewhere).await,
        Err(GroupError::LeaseExpired { .. })
    ));
    assert!(matches!(
        g.parked("nope", 10).await,
        Err(GroupError::NotFound { .. })
    ));
    let d = g.describe("g").await.unwrap();
    assert_eq!(d.members.len(), 1);
    let counts: HashMap<String, usize> = d
        .members
        .iter()
        .map(|m| (m.name.clone(), m.in_flight))
        .collect();
    assert_eq!(counts["w"], 0);
    fx.drop().await;
}

/// The shared consumer-group suite. Each check gets a fresh schema; a restart is a
/// new `PgGroups` with a pool of its own after the old one closed (left its members).
struct Harness {
    url: String,
    schemas: common::Schemas,
}

impl tidings_testkit::group_conformance::GroupHarness for Harness {
    type Store = PgStore;
    type Groups = PgGroups;

    fn fresh(&self) -> tidings_core::handler::BoxFuture<'_, (PgStore, PgGroups)> {
        Box::pin(async move {
            let store = store_in(&self.url, &self.schemas.fresh()).await;
            let groups = store.groups();
            (store, groups)
        })
    }

    fn reopen<'a>(
        &'a self,
        store: &'a PgStore,
        old: PgGroups,
    ) -> tidings_core::handler::BoxFuture<'a, PgGroups> {
        Box::pin(async move {
            old.close().await.unwrap();
            PgGroups::connect_with(
                PgStore::builder(&self.url)
                    .schema(store.schema())
                    .max_connections(4),
            )
            .await
            .unwrap()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_conformance_suite() {
    let Some(url) = database("the_group_conformance_suite").await else {
        return;
    };
    let harness = Harness {
        url: url.clone(),
        schemas: common::Schemas::default(),
    };
    tidings_testkit::group_conformance::run_all(&harness).await;
    harness.schemas.drop_all(&url).await;
}

/// A process whose worker dies mid-message (its task aborted, its pool closed, never
/// leaving): once its lease lapses, the worker of another process handles what it held,
/// with one more attempt, and every event is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_process_workers_messages_go_to_the_other_process() {
    use std::sync::{Arc, Mutex};
    use tidings::bus::handler_fn;
    use tidings::consumer::GroupWorker;

    let Some(fx) = Fixture::new("a_dead_process_workers_messages_go_to_the_other_process").await
    else {
        return;
    };
    for s in 0..10 {
        fx.append(&format!("w-{s}"), 2).await;
    }
    fx.groups
        .create(
            "work",
            GroupSettings {
                lease: Duration::from_millis(300),
                ..settings(Strategy::Pinned)
            },
        )
        .await
        .unwrap();

    // The doomed process takes a batch and hangs in its handler.
    let doomed_store = PgStore::builder(&fx.url)
        .schema(&fx.schema)
        .max_connections(2)
        .connect()
        .await
        .unwrap();
    let doomed = Arc::new(doomed_store.groups());
    let (took, mut taken) = tokio::sync::mpsc::unbounded_channel::<(String, u64)>();
    let worker = GroupWorker::new(Arc::clone(&doomed), "work", "doomed").batch(4);
    let dying = tokio::spawn(async move {
        let handler = handler_fn(move |e: tidings::RecordedEvent| {
            let took = took.clone();
            async move {
                let _ = took.send((e.stream.to_string(), e.revision));
                std::future::pending::<()>().await;
                Ok(())
            }
        });
        worker.run(&handler, std::future::pending()).await
    });
    let first = tokio::time::timeout(PATIENCE, taken.recv())
        .await
        .unwrap()
        .unwrap();
    dying.abort();
    let _ = dying.await;
    doomed_store.close().await;

    // The surviving process handles everything, the dead one's message included.
    let handled: Arc<Mutex<Vec<(String, u64, u32)>>> = Arc::default();
    let seen = Arc::clone(&handled);
    let survivor = Arc::new(fx.other().await);
    let worker = GroupWorker::new(Arc::clone(&survivor), "work", "survivor");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        let handler = handler_fn(move |e: tidings::RecordedEvent| {
            let seen = Arc::clone(&seen);
            async move {
                let attempt = tidings::handler::current_attempt().unwrap_or(0);
                seen.lock()
                    .unwrap()
                    .push((e.stream.to_string(), e.revision, attempt));
                Ok(())
            }
        });
        worker
            .run(&handler, async move {
                let _ = stopped.await;
            })
            .await
    });
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let d = fx.groups.describe("work").await.unwrap();
        if d.lag == 0 && d.in_flight == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stalled: {d:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let handled = handled.lock().unwrap().clone();
    let mut keys: Vec<(String, u64)> = handled.iter().map(|(s, r, _)| (s.clone(), *r)).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 20, "every event handled: {handled:?}");
    let retried: Vec<u32> = handled
        .iter()
        .filter(|(s, r, _)| (s, *r) == (&first.0, first.1))
        .map(|(_, _, a)| *a)
        .collect();
    assert_eq!(
        retried,
        [2],
        "the dead worker's message came with one more attempt"
    );
    fx.drop().await;
}
