//! The consumer-group conformance suite: what every [`Groups`] backend keeps, as
//! executable checks (the semantics listed in [`tidings_core::group`]).
//!
//! A backend runs it from an integration test with a [`GroupHarness`]: a fresh store
//! with its groups for each check, and a way to reopen the groups over the same store
//! as after a restart.
//!
//! ```no_run
//! # async fn demo<H: tidings_testkit::group_conformance::GroupHarness>(harness: H) {
//! tidings_testkit::group_conformance::run_all(&harness).await;
//! # }
//! ```
//!
//! Each check panics with a message naming what broke. Waits are hang guards
//! ([`STALL`]), never speed assertions; a check that something is *not* delivered
//! waits [`QUIET`] for it. Leases and timeouts are the shortest the settings allow
//! (100 ms). The checks spawn tasks, so they need a multi-threaded tokio runtime.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use crate::seed::{TestRng, seed};
use tidings_core::event::{Enricher, Event, NewEvent};
use tidings_core::group::{
    GroupError, GroupMessage, GroupSettings, Groups, MemberLease, ParkedSelection, Settlement,
    StartFrom, Strategy,
};
use tidings_core::handler::BoxFuture;
use tidings_core::store::{EventAppender, ExpectedVersion, Filter, Position};
use tidings_core::stream::StreamId;

/// How long a check waits for something that must happen before it calls the backend
/// stalled.
pub const STALL: Duration = Duration::from_secs(30);

/// How long a check waits to see that something does *not* happen.
pub const QUIET: Duration = Duration::from_millis(400);

/// A backend under test: fresh stores with their groups, and restarts.
pub trait GroupHarness: Send + Sync {
    /// The store the groups follow; the checks append to it.
    type Store: EventAppender + Clone + Send + Sync + 'static;
    /// The groups.
    type Groups: Groups + 'static;

    /// An empty store and its groups.
    fn fresh(&self) -> BoxFuture<'_, (Self::Store, Self::Groups)>;

    /// Closes `old` as a process exit would (saving what it saves on shutdown) and
    /// opens the groups of `store` again.
    fn reopen<'a>(
        &'a self,
        store: &'a Self::Store,
        old: Self::Groups,
    ) -> BoxFuture<'a, Self::Groups>;
}

/// Runs every check, each on a fresh store.
pub async fn run_all<H: GroupHarness>(h: &H) {
    administration(h).await;
    every_event_is_delivered_and_settled(h).await;
    start_positions(h).await;
    pinned_keeps_one_message_per_stream_out(h).await;
    round_robin_hands_out_any_ready_message(h).await;
    retries_count_attempts_then_park(h).await;
    park_and_skip(h).await;
    stale_and_foreign_ids_change_nothing(h).await;
    a_lapsed_lease_hands_messages_to_others(h).await;
    leaving_gives_messages_back_without_an_attempt(h).await;
    a_message_timeout_takes_the_message_back(h).await;
    parked_messages_replay_and_delete(h).await;
    sequenced_parking_holds_the_stream_and_replay_restores_order(h).await;
    groups_survive_a_restart(h).await;
    a_replay_survives_a_restart(h).await;
    bad_requests_are_refused(h).await;
    competing_members_settle_every_event(h).await;
}

// ---------------------------------------------------------------------------------
// helpers

fn event(event_type: &str, n: u64) -> Event {
    match Enricher::new("group-conformance").enrich(NewEvent::new(event_type, json!({ "n": n }))) {
        Ok(e) => e,
        Err(e) => panic!("building a test event: {e}"),
    }
}

async fn append<S: EventAppender>(store: &S, stream: &str, event_type: &str, count: u64) {
    let id = StreamId::new(stream).unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    for n in 0..count {
        if let Err(e) = store
            .append(&id, ExpectedVersion::Any, vec![event(event_type, n)])
            .await
        {
            panic!("append to {stream}: {e}");
        }
    }
}

fn fast() -> GroupSettings {
    GroupSettings {
        lease: Duration::from_secs(30),
        message_timeout: Duration::from_secs(60),
        retry_base: Duration::ZERO,
        retry_cap: Duration::ZERO,
        ..GroupSettings::default()
    }
}

async fn create<G: Groups>(g: &G, name: &str, settings: GroupSettings) {
    if let Err(e) = g.create(name, settings).await {
        panic!("create {name}: {e}");
    }
}

async fn join<G: Groups>(g: &G, group: &str, name: &str) -> MemberLease {
    g.join(group, name)
        .await
        .unwrap_or_else(|e| panic!("join {group} as {name}: {e}"))
}

/// Fetches until `n` messages came, or panics after [`STALL`].
async fn fetch_n<G: Groups>(g: &G, lease: &MemberLease, n: usize, what: &str) -> Vec<GroupMessage> {
    let deadline = Instant::now() + STALL;
    let mut got = Vec::new();
    while got.len() < n {
        if Instant::now() > deadline {
            panic!(
                "{what}: stalled with {} of {n} messages: {got:?}",
                got.len()
            );
        }
        match g
            .fetch(lease, n - got.len(), Duration::from_millis(100))
            .await
        {
            Ok(batch) => got.extend(batch),
            Err(e) => panic!("{what}: fetch failed: {e}"),
        }
    }
    got
}

/// Fetches for [`QUIET`] and returns what came (checks expect nothing).
async fn fetch_quiet<G: Groups>(g: &G, lease: &MemberLease) -> Vec<GroupMessage> {
    let deadline = Instant::now() + QUIET;
    let mut got = Vec::new();
    while Instant::now() < deadline {
        match g.fetch(lease, 100, Duration::from_millis(50)).await {
            Ok(batch) => got.extend(batch),
            Err(e) => panic!("fetch failed: {e}"),
        }
    }
    got
}

async fn settle<G: Groups>(g: &G, lease: &MemberLease, msgs: &[GroupMessage], how: Settlement) {
    let batch = msgs.iter().map(|m| (m.id, how.clone())).collect();
    match g.settle(lease, batch).await {
        Ok(r) => assert!(r.stale.is_empty(), "settling {how:?}: stale {:?}", r.stale),
        Err(e) => panic!("settling {how:?}: {e}"),
    }
}

fn key(m: &GroupMessage) -> (String, u64) {
    (m.event.stream.to_string(), m.event.revision)
}

/// Waits until `check` holds for the group's description.
async fn eventually<G: Groups>(
    g: &G,
    group: &str,
    what: &str,
    check: impl Fn(&tidings_core::group::GroupDescription) -> bool,
) {
    let deadline = Instant::now() + STALL;
    loop {
        let d = g
            .describe(group)
            .await
            .unwrap_or_else(|e| panic!("{what}: describe: {e}"));
        if check(&d) {
            return;
        }
        if Instant::now() > deadline {
            panic!("{what}: never held; last description: {d:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn parked_eventually<G: Groups>(
    g: &G,
    group: &str,
    n: usize,
    what: &str,
) -> Vec<tidings_core::group::ParkedMessage> {
    let deadline = Instant::now() + STALL;
    loop {
        let p = g
            .parked(group, 1000)
            .await
            .unwrap_or_else(|e| panic!("{what}: parked: {e}"));
        if p.len() == n {
            return p;
        }
        if Instant::now() > deadline {
            panic!("{what}: expected {n} parked, have {}: {p:?}", p.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// checks

/// Create, list, describe, update and delete, with their refusals.
pub async fn administration<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "order-1", "OrderPlaced", 2).await;
    create(&g, "billing", fast()).await;
    assert!(
        matches!(
            g.create("billing", fast()).await,
            Err(GroupError::AlreadyExists { .. })
        ),
        "a second create of one name must be refused"
    );
    assert!(
        matches!(
            g.create("$bad name", fast()).await,
            Err(GroupError::InvalidName { .. })
        ),
        "a bad name must be refused"
    );
    let bad = GroupSettings {
        buffer: 0,
        ..fast()
    };
    match g.create("other", bad).await {
        Err(GroupError::InvalidSettings { field, .. }) => assert_eq!(field, "buffer"),
        other => panic!("bad settings must be refused with the field named: {other:?}"),
    }
    assert!(
        matches!(g.describe("other").await, Err(GroupError::NotFound { .. })),
        "a refused create must create nothing"
    );
    let list = g.list().await.unwrap_or_else(|e| panic!("list: {e}"));
    assert_eq!(
        list.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["billing"]
    );
    assert_eq!(list[0].settings, fast());

    let d = g
        .describe("billing")
        .await
        .unwrap_or_else(|e| panic!("describe: {e}"));
    assert_eq!(d.name, "billing");
    assert_eq!((d.in_flight, d.parked), (0, 0));
    assert!(d.members.is_empty());
    eventually(&g, "billing", "the head counts the two events", |d| {
        d.head >= 2
    })
    .await;

    let changed = GroupSettings {
        lease: Duration::from_secs(7),
        strategy: Strategy::RoundRobin,
        ..fast()
    };
    let info = g
        .update("billing", changed.clone())
        .await
        .unwrap_or_else(|e| panic!("update: {e}"));
    assert_eq!(info.settings, changed);
    assert_eq!(
        g.describe("billing").await.map(|d| d.settings).ok(),
        Some(changed.clone())
    );
    let moved = GroupSettings {
        start: StartFrom::Position(1),
        ..changed.clone()
    };
    match g.update("billing", moved).await {
        Err(GroupError::InvalidSettings { field, .. }) => assert_eq!(field, "start"),
        other => panic!("the start position may not change: {other:?}"),
    }
    assert!(matches!(
        g.update("nobody", fast()).await,
        Err(GroupError::NotFound { .. })
    ));

    // Deleting drops the group with its state; a new group of that name starts fresh.
    let m = join(&g, "billing", "m").await;
    let msgs = fetch_n(&g, &m, 2, "before delete").await;
    settle(&g, &m, &msgs[..1], Settlement::Ack).await;
    settle(
        &g,
        &m,
        &msgs[1..],
        Settlement::Park {
            reason: "bad".into(),
        },
    )
    .await;
    parked_eventually(&g, "billing", 1, "before delete").await;
    g.delete("billing")
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert!(matches!(
        g.describe("billing").await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        g.delete("billing").await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(
        g.fetch(&m, 1, Duration::ZERO).await.is_err(),
        "a member of a deleted group must not fetch"
    );
    // (Round-robin, so that both events of the one stream come in one fetch.)
    let round_robin = GroupSettings {
        strategy: Strategy::RoundRobin,
        ..fast()
    };
    create(&g, "billing", round_robin).await;
    assert!(
        g.parked("billing", 10)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty(),
        "a recreated group must not inherit the old parked list"
    );
    let m = join(&g, "billing", "m").await;
    let again = fetch_n(&g, &m, 2, "after recreate").await;
    assert_eq!(
        again.iter().map(key).collect::<Vec<_>>(),
        [("order-1".to_owned(), 0), ("order-1".to_owned(), 1)],
        "a recreated group starts from its own start position"
    );
}

/// Every matching event comes once, attempt 1; acknowledging all of them moves the
/// checkpoint to the head and leaves nothing in flight.
pub async fn every_event_is_delivered_and_settled<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "order-1", "OrderPlaced", 3).await;
    append(&store, "order-2", "OrderPlaced", 2).await;
    append(&store, "audit-1", "Audited", 2).await;
    let settings = GroupSettings {
        filter: Filter::all().event_type("OrderPlaced"),
        strategy: Strategy::RoundRobin,
        ..fast()
    };
    create(&g, "orders", settings).await;
    let m = join(&g, "orders", "m").await;
    let msgs = fetch_n(&g, &m, 5, "five OrderPlaced").await;
    assert!(msgs.iter().all(|m| m.attempt == 1 && !m.replay), "{msgs:?}");
    assert!(msgs.iter().all(|m| m.event.event_type == "OrderPlaced"));
    let keys: HashSet<_> = msgs.iter().map(key).collect();
    assert_eq!(keys.len(), 5, "each event once: {msgs:?}");
    let ids: HashSet<_> = msgs.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 5, "each hand-out its own id");
    eventually(&g, "orders", "five in flight with the member", |d| {
        d.in_flight == 5 && d.members.len() == 1 && d.members[0].in_flight == 5
    })
    .await;
    assert!(fetch_quiet(&g, &m).await.is_empty(), "nothing else matches");
    settle(&g, &m, &msgs, Settlement::Ack).await;
    eventually(&g, "orders", "all settled: no lag", |d| {
        d.in_flight == 0 && d.lag == 0 && d.checkpoint == d.head && d.head >= 7
    })
    .await;
    append(&store, "order-3", "OrderPlaced", 1).await;
    let later = fetch_n(&g, &m, 1, "a later event").await;
    assert_eq!(key(&later[0]), ("order-3".to_owned(), 0));
}

/// `Beginning`, `End` and `Position(p)`.
pub async fn start_positions<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "s-1", "E", 4).await;
    let head = {
        create(&g, "probe", fast()).await;
        let mut head = 0;
        eventually(&g, "probe", "head", |d| d.head >= 4).await;
        if let Ok(d) = g.describe("probe").await {
            head = d.head;
        }
        head
    };
    create(
        &g,
        "from-end",
        GroupSettings {
            start: StartFrom::End,
            ..fast()
        },
    )
    .await;
    // Position of the third event: positions are the log's, so find it by reading
    // the group that starts at the beginning.
    let probe = join(&g, "probe", "p").await;
    let all = fetch_quiet(&g, &probe).await;
    assert_eq!(all.len(), 1, "pinned: one of the stream at a time");
    let mut positions: Vec<Position> = vec![all[0].event.position];
    settle(&g, &probe, &all, Settlement::Ack).await;
    for _ in 0..3 {
        let next = fetch_n(&g, &probe, 1, "probe").await;
        positions.push(next[0].event.position);
        settle(&g, &probe, &next, Settlement::Ack).await;
    }
    create(
        &g,
        "from-third",
        GroupSettings {
            start: StartFrom::Position(positions[2]),
            ..fast()
        },
    )
    .await;
    let third = join(&g, "from-third", "t").await;
    let got = fetch_n(&g, &third, 1, "from the third").await;
    assert_eq!(key(&got[0]), ("s-1".to_owned(), 2));

    let end = join(&g, "from-end", "e").await;
    assert!(
        fetch_quiet(&g, &end).await.is_empty(),
        "End skips what was there ({head})"
    );
    append(&store, "s-2", "E", 1).await;
    let got = fetch_n(&g, &end, 1, "from the end").await;
    assert_eq!(key(&got[0]), ("s-2".to_owned(), 0));
}

/// Pinned: one message per stream out at a time; the next comes after a settle, to
/// any member.
pub async fn pinned_keeps_one_message_per_stream_out<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    for s in ["a-1", "a-2", "a-3"] {
        append(&store, s, "E", 3).await;
    }
    create(&g, "pinned", fast()).await;
    let m1 = join(&g, "pinned", "one").await;
    let m2 = join(&g, "pinned", "two").await;
    let first = fetch_n(&g, &m1, 3, "heads of three streams").await;
    let mut heads: Vec<_> = first.iter().map(key).collect();
    heads.sort();
    assert_eq!(
        heads,
        [
            ("a-1".to_owned(), 0),
            ("a-2".to_owned(), 0),
            ("a-3".to_owned(), 0)
        ]
    );
    assert!(
        fetch_quiet(&g, &m1).await.is_empty(),
        "no second event of a stream while its first is out"
    );
    assert!(
        fetch_quiet(&g, &m2).await.is_empty(),
        "nor to another member"
    );
    let a1 = first
        .iter()
        .filter(|m| m.event.stream.as_str() == "a-1")
        .cloned()
        .collect::<Vec<_>>();
    settle(&g, &m1, &a1, Settlement::Ack).await;
    let next = fetch_n(&g, &m2, 1, "a-1's next, to the other member").await;
    assert_eq!(key(&next[0]), ("a-1".to_owned(), 1));
    // A retry holds the stream too: the retried event comes before the next one.
    settle(
        &g,
        &m2,
        &next,
        Settlement::Retry {
            reason: "later".into(),
        },
    )
    .await;
    let again = fetch_n(&g, &m2, 1, "the retry").await;
    assert_eq!(
        (key(&again[0]), again[0].attempt),
        (("a-1".to_owned(), 1), 2)
    );
}

/// Round-robin: several events of one stream may be out at once.
pub async fn round_robin_hands_out_any_ready_message<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "rr-1", "E", 6).await;
    create(
        &g,
        "rr",
        GroupSettings {
            strategy: Strategy::RoundRobin,
            ..fast()
        },
    )
    .await;
    let m1 = join(&g, "rr", "one").await;
    let m2 = join(&g, "rr", "two").await;
    let a = fetch_n(&g, &m1, 3, "three to the first").await;
    let b = fetch_n(&g, &m2, 3, "three to the second").await;
    let all: HashSet<_> = a.iter().chain(&b).map(key).collect();
    assert_eq!(all.len(), 6, "six distinct events out at once");
}

/// Retry counts attempts with a backoff, and the attempt after `max_retries` retries
/// parks the message with the last reason.
pub async fn retries_count_attempts_then_park<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "r-1", "E", 1).await;
    create(
        &g,
        "retry",
        GroupSettings {
            max_retries: 2,
            ..fast()
        },
    )
    .await;
    let m = join(&g, "retry", "m").await;
    for attempt in 1..=3 {
        let got = fetch_n(&g, &m, 1, "the next attempt").await;
        assert_eq!(got[0].attempt, attempt, "attempts count from 1");
        settle(
            &g,
            &m,
            &got,
            Settlement::Retry {
                reason: format!("failure {attempt}"),
            },
        )
        .await;
    }
    let parked = parked_eventually(&g, "retry", 1, "parked after the retries").await;
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].reason, "failure 3");
    assert!(!parked[0].held);
    assert_eq!(
        (parked[0].event.stream.as_str(), parked[0].event.revision),
        ("r-1", 0)
    );
    assert!(
        fetch_quiet(&g, &m).await.is_empty(),
        "a parked message is not delivered"
    );
    eventually(&g, "retry", "the parked count", |d| {
        d.parked == 1 && d.lag == 0
    })
    .await;
}

/// Park parks now with its reason; skip settles without parking.
pub async fn park_and_skip<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "p-1", "E", 2).await;
    create(&g, "ps", fast()).await;
    let m = join(&g, "ps", "m").await;
    let first = fetch_n(&g, &m, 1, "first").await;
    settle(
        &g,
        &m,
        &first,
        Settlement::Park {
            reason: "cannot parse".into(),
        },
    )
    .await;
    let second = fetch_n(&g, &m, 1, "second flows after a park").await;
    assert_eq!(key(&second[0]), ("p-1".to_owned(), 1));
    settle(&g, &m, &second, Settlement::Skip).await;
    let parked = parked_eventually(&g, "ps", 1, "one parked").await;
    assert_eq!(
        (parked[0].reason.as_str(), parked[0].attempts),
        ("cannot parse", 1)
    );
    eventually(&g, "ps", "skip settles", |d| d.lag == 0 && d.in_flight == 0).await;
}

/// Settling ids the member does not hold reports them stale and changes nothing.
pub async fn stale_and_foreign_ids_change_nothing<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "x-1", "E", 1).await;
    create(&g, "stale", fast()).await;
    let m1 = join(&g, "stale", "one").await;
    let m2 = join(&g, "stale", "two").await;
    let got = fetch_n(&g, &m1, 1, "one").await;
    let id = got[0].id;
    let r = g
        .settle(&m2, vec![(id, Settlement::Ack)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.settled, r.stale.clone()),
        (0, vec![id]),
        "another member's id is stale"
    );
    let r = g
        .settle(&m1, vec![(id + 1_000_000, Settlement::Ack)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.stale, vec![id + 1_000_000], "an unknown id is stale");
    eventually(&g, "stale", "still in flight", |d| d.in_flight == 1).await;
    let r = g
        .settle(&m1, vec![(id, Settlement::Ack), (id, Settlement::Ack)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (r.settled, r.stale.clone()),
        (1, vec![id]),
        "a second settle of one id is stale"
    );
}

/// A member that stops heartbeating loses its lease: its messages go to another
/// member with one more attempt, and nothing it does afterwards counts.
pub async fn a_lapsed_lease_hands_messages_to_others<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "l-1", "E", 2).await;
    create(
        &g,
        "lease",
        GroupSettings {
            lease: Duration::from_millis(1_000),
            ..fast()
        },
    )
    .await;
    let dying = join(&g, "lease", "dying").await;
    let held = fetch_n(&g, &dying, 1, "the dying member's message").await;
    let alive = join(&g, "lease", "alive").await;
    // `alive` keeps its lease by fetching; the message comes once `dying`'s lapses.
    let got = fetch_n(&g, &alive, 1, "redelivery after the lease lapsed").await;
    assert_eq!(key(&got[0]), key(&held[0]));
    assert_eq!(got[0].attempt, 2, "a lapsed lease counts an attempt");
    assert_ne!(got[0].id, held[0].id);
    match g.settle(&dying, vec![(held[0].id, Settlement::Ack)]).await {
        Err(GroupError::LeaseExpired { .. }) => {}
        Ok(r) => assert_eq!(r.settled, 0, "a lapsed member must not settle: {r:?}"),
        Err(e) => panic!("settle after lapse: {e}"),
    }
    assert!(matches!(
        g.heartbeat(&dying).await,
        Err(GroupError::LeaseExpired { .. })
    ));
    assert!(matches!(
        g.fetch(&dying, 1, Duration::ZERO).await,
        Err(GroupError::LeaseExpired { .. })
    ));
    eventually(&g, "lease", "only the live member is listed", |d| {
        d.members.len() == 1 && d.members[0].name == "alive"
    })
    .await;
    settle(&g, &alive, &got, Settlement::Ack).await;
    let next = fetch_n(&g, &alive, 1, "the stream goes on").await;
    assert_eq!(key(&next[0]), ("l-1".to_owned(), 1));
}

/// A member that leaves gives its messages back at once, without counting an attempt.
pub async fn leaving_gives_messages_back_without_an_attempt<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "v-1", "E", 1).await;
    create(&g, "leave", fast()).await;
    let m1 = join(&g, "leave", "one").await;
    let m2 = join(&g, "leave", "two").await;
    let held = fetch_n(&g, &m1, 1, "held").await;
    g.leave(&m1).await.unwrap_or_else(|e| panic!("leave: {e}"));
    g.leave(&m1)
        .await
        .unwrap_or_else(|e| panic!("leaving twice is fine: {e}"));
    let got = fetch_n(&g, &m2, 1, "given back").await;
    assert_eq!((key(&got[0]), got[0].attempt), (key(&held[0]), 1));
}

/// A message held past the message timeout comes again with one more attempt; its
/// old id is stale.
pub async fn a_message_timeout_takes_the_message_back<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "t-1", "E", 1).await;
    create(
        &g,
        "timeout",
        GroupSettings {
            message_timeout: Duration::from_millis(200),
            ..fast()
        },
    )
    .await;
    let m = join(&g, "timeout", "slow").await;
    let first = fetch_n(&g, &m, 1, "first").await;
    let again = fetch_n(&g, &m, 1, "after the timeout").await;
    assert_eq!((key(&again[0]), again[0].attempt), (key(&first[0]), 2));
    let r = g
        .settle(&m, vec![(first[0].id, Settlement::Ack)])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        r.stale,
        vec![first[0].id],
        "the timed-out hand-out is stale"
    );
    settle(&g, &m, &again, Settlement::Ack).await;
    eventually(&g, "timeout", "settled", |d| d.lag == 0 && d.in_flight == 0).await;
}

/// Replay delivers parked messages again with fresh attempts; acknowledged replays
/// leave the list; delete drops them; unknown ids are refused.
pub async fn parked_messages_replay_and_delete<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    for s in ["q-1", "q-2", "q-3"] {
        append(&store, s, "E", 1).await;
    }
    create(&g, "replay", fast()).await;
    let m = join(&g, "replay", "m").await;
    let msgs = fetch_n(&g, &m, 3, "three").await;
    settle(
        &g,
        &m,
        &msgs,
        Settlement::Park {
            reason: "down".into(),
        },
    )
    .await;
    let parked = parked_eventually(&g, "replay", 3, "three parked").await;
    let ids: Vec<_> = parked.iter().map(|p| p.id).collect();
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3);
    assert!(
        matches!(
            g.replay_parked("replay", ParkedSelection::Ids(vec![ids[0], 987_654_321]))
                .await,
            Err(GroupError::ParkedNotFound { .. })
        ),
        "an unknown parked id is refused"
    );
    assert!(
        fetch_quiet(&g, &m).await.is_empty(),
        "a refused replay queues nothing"
    );

    let queued = g
        .replay_parked("replay", ParkedSelection::Ids(vec![ids[0]]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(queued, 1);
    let got = fetch_n(&g, &m, 1, "the replayed one").await;
    assert!(got[0].replay);
    assert_eq!(got[0].attempt, 1, "a replay starts its attempts afresh");
    assert_eq!(key(&got[0]), (parked[0].event.stream.to_string(), 0));
    settle(&g, &m, &got, Settlement::Ack).await;
    parked_eventually(&g, "replay", 2, "the acknowledged replay left the list").await;

    let deleted = g
        .delete_parked("replay", ParkedSelection::Ids(vec![ids[1]]))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(deleted, 1);
    let left = parked_eventually(&g, "replay", 1, "one deleted").await;
    assert_eq!(left[0].id, ids[2]);
    assert!(matches!(
        g.delete_parked("replay", ParkedSelection::Ids(vec![ids[1]]))
            .await,
        Err(GroupError::ParkedNotFound { .. })
    ));

    // Replay all; parking the replay again keeps it listed.
    assert_eq!(
        g.replay_parked("replay", ParkedSelection::All).await.ok(),
        Some(1)
    );
    let got = fetch_n(&g, &m, 1, "replay all").await;
    settle(
        &g,
        &m,
        &got,
        Settlement::Park {
            reason: "still down".into(),
        },
    )
    .await;
    let left = parked_eventually(&g, "replay", 1, "parked again").await;
    assert_eq!(left[0].reason, "still down");
    assert_eq!(
        g.delete_parked("replay", ParkedSelection::All).await.ok(),
        Some(1)
    );
    parked_eventually(&g, "replay", 0, "all deleted").await;
    assert!(fetch_quiet(&g, &m).await.is_empty());
}

/// Sequenced parking: once an event is parked, its stream's later events are parked
/// behind it while other streams flow; a replay delivers them in order.
pub async fn sequenced_parking_holds_the_stream_and_replay_restores_order<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "seq-s", "E", 3).await;
    append(&store, "seq-t", "E", 3).await;
    create(
        &g,
        "sequenced",
        GroupSettings {
            sequenced_parking: true,
            ..fast()
        },
    )
    .await;
    let m = join(&g, "sequenced", "m").await;
    let mut handled_t = Vec::new();
    let deadline = Instant::now() + STALL;
    let mut poisoned = false;
    while handled_t.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "stalled: t handled {handled_t:?}"
        );
        let batch = g
            .fetch(&m, 10, Duration::from_millis(100))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for msg in batch {
            if msg.event.stream.as_str() == "seq-s" {
                assert!(
                    !poisoned && msg.event.revision == 0,
                    "only s's poison may come: {msg:?}"
                );
                poisoned = true;
                settle(
                    &g,
                    &m,
                    &[msg],
                    Settlement::Park {
                        reason: "poison".into(),
                    },
                )
                .await;
            } else {
                handled_t.push(msg.event.revision);
                settle(&g, &m, &[msg], Settlement::Ack).await;
            }
        }
    }
    assert_eq!(handled_t, [0, 1, 2], "the other stream flows in order");
    assert!(
        fetch_quiet(&g, &m).await.is_empty(),
        "s waits behind its parked event"
    );
    let parked = parked_eventually(&g, "sequenced", 3, "s's events parked behind").await;
    let list: Vec<_> = parked.iter().map(|p| (p.event.revision, p.held)).collect();
    assert_eq!(list, [(0, false), (1, true), (2, true)]);
    assert_eq!(parked[0].reason, "poison");

    g.replay_parked("sequenced", ParkedSelection::All)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut order = Vec::new();
    while order.len() < 3 {
        let got = fetch_n(&g, &m, 1, "replayed in order").await;
        assert_eq!(got.len(), 1);
        assert!(
            fetch_quiet(&g, &m).await.is_empty(),
            "one of the stream at a time"
        );
        order.push(got[0].event.revision);
        settle(&g, &m, &got, Settlement::Ack).await;
    }
    assert_eq!(order, [0, 1, 2], "replay restores the stream's order");
    parked_eventually(&g, "sequenced", 0, "all resolved").await;
    append(&store, "seq-s", "E", 1).await;
    let got = fetch_n(&g, &m, 1, "s flows again").await;
    assert_eq!(key(&got[0]), ("seq-s".to_owned(), 3));
}

/// Settings, settled state and the parked list survive a restart; what was in flight
/// comes again; what was acknowledged does not.
pub async fn groups_survive_a_restart<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    for s in ["k-1", "k-2", "k-3", "k-4"] {
        append(&store, s, "E", 1).await;
    }
    let settings = GroupSettings {
        strategy: Strategy::RoundRobin,
        ..fast()
    };
    create(&g, "durable", settings.clone()).await;
    let m = join(&g, "durable", "m").await;
    let msgs = fetch_n(&g, &m, 4, "four").await;
    let mut by_stream: BTreeMap<String, GroupMessage> = msgs
        .into_iter()
        .map(|m| (m.event.stream.to_string(), m))
        .collect();
    let acked = by_stream.remove("k-1").into_iter().collect::<Vec<_>>();
    let parked = by_stream.remove("k-2").into_iter().collect::<Vec<_>>();
    settle(&g, &m, &acked, Settlement::Ack).await;
    settle(
        &g,
        &m,
        &parked,
        Settlement::Park {
            reason: "kept".into(),
        },
    )
    .await;
    // k-3 and k-4 stay in flight across the restart.
    let g = h.reopen(&store, g).await;
    let list = g.list().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].settings, settings, "settings survive");
    let p = parked_eventually(&g, "durable", 1, "the parked list survives").await;
    assert_eq!(
        (p[0].event.stream.as_str(), p[0].reason.as_str()),
        ("k-2", "kept")
    );
    let m = join(&g, "durable", "m2").await;
    let again = fetch_n(&g, &m, 2, "what was in flight").await;
    let mut streams: Vec<_> = again.iter().map(|m| m.event.stream.to_string()).collect();
    streams.sort();
    assert_eq!(streams, ["k-3", "k-4"]);
    assert!(
        fetch_quiet(&g, &m).await.is_empty(),
        "acknowledged and parked events stay settled"
    );
}

/// A replay asked for before a restart still delivers after it (a command-line
/// `parked replay` is its own short process).
pub async fn a_replay_survives_a_restart<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    append(&store, "y-1", "E", 1).await;
    create(&g, "replayed", fast()).await;
    let m = join(&g, "replayed", "m").await;
    let got = fetch_n(&g, &m, 1, "one").await;
    settle(
        &g,
        &m,
        &got,
        Settlement::Park {
            reason: "later".into(),
        },
    )
    .await;
    parked_eventually(&g, "replayed", 1, "parked").await;
    g.leave(&m).await.unwrap_or_else(|e| panic!("leave: {e}"));
    assert_eq!(
        g.replay_parked("replayed", ParkedSelection::All).await.ok(),
        Some(1)
    );
    let g = h.reopen(&store, g).await;
    let m = join(&g, "replayed", "m2").await;
    let again = fetch_n(&g, &m, 1, "the replay, after the restart").await;
    assert!(again[0].replay, "{again:?}");
    assert_eq!(key(&again[0]), ("y-1".to_owned(), 0));
    settle(&g, &m, &again, Settlement::Ack).await;
    parked_eventually(&g, "replayed", 0, "the acknowledged replay left the list").await;
}

/// Refusals: unknown groups, fetch of nothing, a made-up lease.
pub async fn bad_requests_are_refused<H: GroupHarness>(h: &H) {
    let (_store, g) = h.fresh().await;
    assert!(matches!(
        g.join("missing", "m").await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        g.parked("missing", 10).await,
        Err(GroupError::NotFound { .. })
    ));
    assert!(matches!(
        g.replay_parked("missing", ParkedSelection::All).await,
        Err(GroupError::NotFound { .. })
    ));
    create(&g, "real", fast()).await;
    let m = join(&g, "real", "m").await;
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
    assert!(matches!(
        g.heartbeat(&forged).await,
        Err(GroupError::LeaseExpired { .. })
    ));
    g.heartbeat(&m)
        .await
        .unwrap_or_else(|e| panic!("a live lease heartbeats: {e}"));
}

/// Four members race over many streams with random failures (seeded by
/// `TIDINGS_SEED`): every event is acknowledged, and under `Pinned` each
/// stream's events are handed out in order, each only after the one before it was
/// acknowledged.
pub async fn competing_members_settle_every_event<H: GroupHarness>(h: &H) {
    let (store, g) = h.fresh().await;
    let streams = 12;
    let per_stream = 8;
    for s in 0..streams {
        append(&store, &format!("c-{s}"), "E", per_stream).await;
    }
    create(&g, "race", fast()).await;
    let g = Arc::new(g);
    let seed = seed("group_conformance::competing_members");
    let log = Arc::new(std::sync::Mutex::new(
        Vec::<(String, u64, &'static str)>::new(),
    ));
    let mut tasks = Vec::new();
    for member in 0..4u64 {
        let g = g.clone();
        let log = log.clone();
        let mut rng = TestRng::new(seed ^ member.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.push(tokio::spawn(async move {
            let lease = join(g.as_ref(), "race", &format!("m{member}")).await;
            let deadline = Instant::now() + STALL;
            loop {
                let acked = log
                    .lock()
                    .map(|l| l.iter().filter(|e| e.2 == "ack").count())
                    .unwrap_or(0);
                if acked as u64 >= streams * per_stream {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "member {member} stalled at {acked} acks"
                );
                let batch = g
                    .fetch(&lease, 4, Duration::from_millis(50))
                    .await
                    .unwrap_or_else(|e| panic!("member {member}: {e}"));
                for msg in batch {
                    let fail = rng.below(4) == 0;
                    let how = if fail {
                        Settlement::Retry {
                            reason: "flaky".into(),
                        }
                    } else {
                        Settlement::Ack
                    };
                    // Log before settling: the next of the stream cannot be handed
                    // out before this settle.
                    if let Ok(mut l) = log.lock() {
                        l.push((
                            msg.event.stream.to_string(),
                            msg.event.revision,
                            if fail { "retry" } else { "ack" },
                        ));
                    }
                    let r = g
                        .settle(&lease, vec![(msg.id, how)])
                        .await
                        .unwrap_or_else(|e| panic!("member {member}: {e}"));
                    assert!(r.stale.is_empty(), "member {member}: stale {r:?}");
                }
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            panic!("a member failed: {e}");
        }
    }
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    let mut next: HashMap<String, u64> = HashMap::new();
    let mut acks = 0;
    for (stream, revision, how) in &log {
        let expected = next.entry(stream.clone()).or_insert(0);
        assert_eq!(
            revision, expected,
            "{stream}: handed out {revision} while {expected} was not yet acknowledged (TIDINGS_SEED={seed})"
        );
        if *how == "ack" {
            *expected += 1;
            acks += 1;
        }
    }
    assert_eq!(
        acks,
        streams * per_stream,
        "every event acknowledged once (TIDINGS_SEED={seed})"
    );
    assert!(next.values().all(|&n| n == per_stream));
}
