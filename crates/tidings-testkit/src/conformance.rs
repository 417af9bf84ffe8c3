//! The store conformance suite: the semantics every backend keeps, as executable checks.
//!
//! A backend runs it from an integration test with a factory that gives a fresh, empty
//! store for each check (default [`tidings_core::Limits`]):
//!
//! ```no_run
//! # async fn demo() {
//! tidings_testkit::conformance::run_all(|| async { tidings::InMemoryStore::new() }).await;
//! # }
//! ```
//!
//! Each check panics with a message naming what broke. Checks that race tasks need a
//! multi-threaded tokio runtime.
//!
//! A backend whose promises differ where the contract allows it says so with
//! [`Capabilities`] and [`run_all_with`]; the checks that depend on a capability read it.
//! Today one does: whether global positions are gap-free (the embedded store, the
//! in-memory store) or may have gaps (PostgreSQL, where positions are claimed outside
//! the append's transaction, `docs/decisions/0020-postgres-claimed-positions.md`). Either
//! way positions increase in commit order as readers see them, each append's events are
//! contiguous, and no subscriber skips or repeats an event.
//!
//! ```no_run
//! # async fn demo() {
//! use tidings_testkit::conformance::{Capabilities, run_all_with};
//! run_all_with(Capabilities::default().gaps_allowed(), || async {
//!     tidings::InMemoryStore::new()
//! })
//! .await;
//! # }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use uuid::Uuid;

use tidings_core::event::{Enricher, Event, EventError, NewEvent, Payload};
use tidings_core::store::{
    Direction, EventStore, ExpectedVersion, Filter, ListStreams, ReadAll, ReadStream,
    RecordedEvent, Start, StoreError,
};
use tidings_core::stream::StreamId;

/// How long a subscription may stay silent before a check calls it stalled. A guard
/// against hangs, not a speed assertion.
const STALL: Duration = Duration::from_secs(60);

/// What a backend promises where the store contract leaves it a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Every position below the head holds an event: an append that is refused or fails
    /// leaves no gap. Without it, positions may skip numbers that will never hold an
    /// event; they still increase in the order readers see commits. Default: true.
    pub gap_free_positions: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            gap_free_positions: true,
        }
    }
}

impl Capabilities {
    /// The same, with positions that may have gaps.
    pub fn gaps_allowed(mut self) -> Self {
        self.gap_free_positions = false;
        self
    }
}

/// Runs every check, each on a fresh store, for a backend with the default
/// [`Capabilities`] (gap-free positions).
pub async fn run_all<S, F, Fut>(fresh: F)
where
    S: EventStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    run_all_with(Capabilities::default(), fresh).await;
}

/// Runs every check, each on a fresh store, for a backend with `capabilities`.
pub async fn run_all_with<S, F, Fut>(capabilities: Capabilities, mut fresh: F)
where
    S: EventStore,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    let caps = capabilities;
    append_and_read(fresh().await, caps).await;
    expected_versions(fresh().await).await;
    atomic_appends(fresh().await, caps).await;
    bad_input_changes_nothing(fresh().await).await;
    idempotent_appends(fresh().await).await;
    read_all_and_filters(fresh().await).await;
    correlation_reads(fresh().await).await;
    stream_listing(fresh().await).await;
    envelope_survives(fresh().await).await;
    subscriptions_catch_up_then_go_live(fresh().await).await;
    subscriptions_race_appends(fresh().await, caps).await;
    stream_subscriptions(fresh().await).await;
    concurrent_writers_one_winner_per_version(fresh().await).await;
}

/// A stream id, panicking on bad names (test input is fixed).
pub fn stream(name: &str) -> StreamId {
    StreamId::new(name).unwrap_or_else(|e| panic!("bad test stream name {name:?}: {e}"))
}

/// A complete event of `event_type` with `data`.
pub fn event(event_type: &str, data: serde_json::Value) -> Event {
    Enricher::new("conformance")
        .enrich(NewEvent::new(event_type, data))
        .unwrap_or_else(|e| panic!("bad test event: {e}"))
}

fn events(n: usize, event_type: &str) -> Vec<Event> {
    (0..n)
        .map(|i| event(event_type, json!({ "i": i })))
        .collect()
}

async fn append_ok<S: EventStore>(
    store: &S,
    s: &StreamId,
    expected: ExpectedVersion,
    evs: Vec<Event>,
) -> tidings_core::AppendResult {
    store
        .append(s, expected, evs)
        .await
        .unwrap_or_else(|e| panic!("append to {s} with {expected} failed: {e}"))
}

async fn read<S: EventStore>(store: &S, s: &StreamId, opts: ReadStream) -> Vec<RecordedEvent> {
    store
        .read_stream(s, opts)
        .await
        .unwrap_or_else(|e| panic!("read of {s} failed: {e}"))
}

async fn all<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store
        .read_all(ReadAll::new(0, usize::MAX))
        .await
        .unwrap_or_else(|e| panic!("read_all failed: {e}"))
}

fn revisions(evs: &[RecordedEvent]) -> Vec<u64> {
    evs.iter().map(|e| e.revision).collect()
}

/// Appends answer revisions and positions; reads go both ways with `from` and `limit`.
/// Positions are 0, 1, 2… when they are gap-free, and increase in any case.
pub async fn append_and_read<S: EventStore>(store: S, caps: Capabilities) {
    let a = stream("order-1");
    let b = stream("order-2");
    assert_eq!(
        store.head().await.ok().flatten(),
        None,
        "a fresh store has no head"
    );
    assert_eq!(store.stream_version(&a).await.ok().flatten(), None);
    assert!(read(&store, &a, ReadStream::forward()).await.is_empty());

    let r1 = append_ok(&store, &a, ExpectedVersion::NoStream, events(3, "A")).await;
    assert_eq!(
        (r1.first_revision, r1.next_expected_version),
        (0, 2),
        "first append of three events"
    );
    assert_eq!(
        r1.position,
        r1.first_position + 2,
        "an append is contiguous"
    );
    let r2 = append_ok(&store, &b, ExpectedVersion::Any, events(1, "B")).await;
    assert_eq!((r2.first_revision, r2.next_expected_version), (0, 0));
    assert!(r2.first_position > r1.position, "positions increase");
    let r3 = append_ok(&store, &a, ExpectedVersion::Exact(2), events(2, "A")).await;
    assert_eq!((r3.first_revision, r3.next_expected_version), (3, 4));
    assert!(r3.first_position > r2.position, "positions increase");
    assert_eq!(r3.position, r3.first_position + 1);
    if caps.gap_free_positions {
        assert_eq!(
            (r1.first_position, r1.position),
            (0, 2),
            "gap-free positions"
        );
        assert_eq!(r2.position, 3, "gap-free positions");
        assert_eq!(
            (r3.first_position, r3.position),
            (4, 5),
            "gap-free positions"
        );
    }
    assert_eq!(store.stream_version(&a).await.ok().flatten(), Some(4));
    assert_eq!(store.head().await.ok().flatten(), Some(r3.position));

    let fwd = read(&store, &a, ReadStream::forward()).await;
    assert_eq!(revisions(&fwd), vec![0, 1, 2, 3, 4]);
    let p1 = r1.first_position;
    assert_eq!(
        fwd.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![p1, p1 + 1, p1 + 2, r3.first_position, r3.position]
    );
    assert!(fwd.iter().all(|e| e.stream == a));
    let back = read(&store, &a, ReadStream::backward()).await;
    assert_eq!(revisions(&back), vec![4, 3, 2, 1, 0]);
    let page = read(&store, &a, ReadStream::forward().from(1).limit(2)).await;
    assert_eq!(revisions(&page), vec![1, 2]);
    let page = read(&store, &a, ReadStream::backward().from(3).limit(2)).await;
    assert_eq!(revisions(&page), vec![3, 2]);
    let past_end = read(&store, &a, ReadStream::forward().from(99)).await;
    assert!(past_end.is_empty(), "reading past the end gives nothing");
    let back_past_end = read(&store, &a, ReadStream::backward().from(99).limit(1)).await;
    assert_eq!(
        revisions(&back_past_end),
        vec![4],
        "backward from beyond the end starts at the last"
    );
    assert!(
        read(&store, &a, ReadStream::forward().limit(0))
            .await
            .is_empty()
    );
    assert_eq!(ReadStream::backward().direction, Direction::Backward);
}

/// `Any`, `NoStream`, `StreamExists` and `Exact` accept and refuse as documented, and a
/// refusal names the actual version.
pub async fn expected_versions<S: EventStore>(store: S) {
    let s = stream("account-1");
    let wrong =
        |r: Result<tidings_core::AppendResult, StoreError>, want_actual: Option<u64>| match r {
            Err(StoreError::WrongExpectedVersion { actual, stream, .. }) => {
                assert_eq!(actual, want_actual, "error names the actual version");
                assert_eq!(stream.as_str(), "account-1");
            }
            other => panic!("expected WrongExpectedVersion, got {other:?}"),
        };
    wrong(
        store
            .append(&s, ExpectedVersion::StreamExists, events(1, "A"))
            .await,
        None,
    );
    wrong(
        store
            .append(&s, ExpectedVersion::Exact(0), events(1, "A"))
            .await,
        None,
    );
    append_ok(&store, &s, ExpectedVersion::NoStream, events(1, "A")).await;
    wrong(
        store
            .append(&s, ExpectedVersion::NoStream, events(1, "A"))
            .await,
        Some(0),
    );
    wrong(
        store
            .append(&s, ExpectedVersion::Exact(1), events(1, "A"))
            .await,
        Some(0),
    );
    append_ok(&store, &s, ExpectedVersion::StreamExists, events(1, "A")).await;
    append_ok(&store, &s, ExpectedVersion::Exact(1), events(1, "A")).await;
    append_ok(&store, &s, ExpectedVersion::Any, events(1, "A")).await;
    wrong(
        store
            .append(&s, ExpectedVersion::Exact(2), events(1, "A"))
            .await,
        Some(3),
    );
    assert_eq!(store.stream_version(&s).await.ok().flatten(), Some(3));
    assert_eq!(all(&store).await.len(), 4, "refused appends wrote nothing");
}

/// A multi-event append is contiguous in the global log; a refused one leaves no trace.
pub async fn atomic_appends<S: EventStore>(store: S, caps: Capabilities) {
    let a = stream("batch-a");
    let b = stream("batch-b");
    let ra = append_ok(&store, &a, ExpectedVersion::Any, events(50, "A")).await;
    let rb = append_ok(&store, &b, ExpectedVersion::Any, events(50, "B")).await;
    let log = all(&store).await;
    assert_eq!(log.len(), 100);
    for (i, e) in log.iter().enumerate() {
        let want = if i < 50 {
            ra.first_position + i as u64
        } else {
            rb.first_position + i as u64 - 50
        };
        assert_eq!(e.position, want, "an append's events are contiguous");
        if caps.gap_free_positions {
            assert_eq!(e.position, i as u64, "positions are gap-free");
        }
        let (want_stream, want_rev) = if i < 50 { (&a, i) } else { (&b, i - 50) };
        assert_eq!((&e.stream, e.revision), (want_stream, want_rev as u64));
    }
    let mut bad = events(3, "A");
    bad[2].event_type.clear();
    assert!(store.append(&a, ExpectedVersion::Any, bad).await.is_err());
    assert_eq!(
        all(&store).await.len(),
        100,
        "one bad event refuses the whole append"
    );
}

/// Every rejected input is a typed error and changes nothing.
pub async fn bad_input_changes_nothing<S: EventStore>(store: S) {
    let s = stream("bad-1");
    append_ok(&store, &s, ExpectedVersion::Any, events(1, "A")).await;
    let before = all(&store).await;

    let r = store.append(&s, ExpectedVersion::Any, vec![]).await;
    assert!(
        matches!(r, Err(StoreError::EmptyAppend)),
        "empty append: {r:?}"
    );

    let mut no_type = event("A", json!({}));
    no_type.event_type = String::new();
    let r = store.append(&s, ExpectedVersion::Any, vec![no_type]).await;
    assert!(
        matches!(
            r,
            Err(StoreError::InvalidEvent {
                index: 0,
                source: EventError::MissingType
            })
        ),
        "missing type: {r:?}"
    );

    let mut no_data = event("A", json!({}));
    no_data.data = Payload::null();
    let r = store
        .append(
            &s,
            ExpectedVersion::Any,
            vec![event("A", json!(1)), no_data],
        )
        .await;
    assert!(
        matches!(
            r,
            Err(StoreError::InvalidEvent {
                index: 1,
                source: EventError::MissingData
            })
        ),
        "null data: {r:?}"
    );

    let mut huge = event("A", json!(1));
    huge.data = Payload::from_value(&json!("x".repeat(2 << 20)));
    let r = store.append(&s, ExpectedVersion::Any, vec![huge]).await;
    assert!(
        matches!(
            r,
            Err(StoreError::InvalidEvent {
                source: EventError::TooLarge { .. },
                ..
            })
        ),
        "oversize event"
    );

    let big: Vec<Event> = (0..17)
        .map(|_| event("A", json!("y".repeat(1_000_000))))
        .collect();
    let r = store.append(&s, ExpectedVersion::Any, big).await;
    assert!(
        matches!(r, Err(StoreError::AppendTooLarge { .. })),
        "oversize append"
    );

    let e = event("A", json!(1));
    let r = store
        .append(&s, ExpectedVersion::Any, vec![e.clone(), e])
        .await;
    assert!(
        matches!(r, Err(StoreError::DuplicateEventId { .. })),
        "same id twice in one append: {r:?}"
    );

    let r = store
        .append(&s, ExpectedVersion::Exact(7), events(1, "A"))
        .await;
    assert!(matches!(r, Err(StoreError::WrongExpectedVersion { .. })));

    assert_eq!(
        all(&store).await,
        before,
        "refused appends changed the store"
    );
    assert_eq!(store.stream_version(&s).await.ok().flatten(), Some(0));
}

/// Re-appending the same ids with the same expected version answers the original result
/// and writes nothing; partial overlaps and other versions are refused.
pub async fn idempotent_appends<S: EventStore>(store: S) {
    let s = stream("idem-1");
    let first = events(3, "A");
    let r1 = append_ok(&store, &s, ExpectedVersion::NoStream, first.clone()).await;
    let r2 = append_ok(&store, &s, ExpectedVersion::NoStream, first.clone()).await;
    assert_eq!(r1, r2, "a repeated append answers the original result");
    let r3 = append_ok(&store, &s, ExpectedVersion::Any, first.clone()).await;
    assert_eq!(r1, r3, "a repeat with Any is idempotent too");

    let second = events(2, "A");
    let r4 = append_ok(&store, &s, ExpectedVersion::Exact(2), second.clone()).await;
    let r5 = append_ok(&store, &s, ExpectedVersion::Exact(2), second.clone()).await;
    assert_eq!(r4, r5);
    assert_eq!(
        read(&store, &s, ReadStream::forward()).await.len(),
        5,
        "no duplicates"
    );

    let r = store
        .append(&s, ExpectedVersion::Exact(4), second.clone())
        .await;
    assert!(
        matches!(
            r,
            Err(StoreError::WrongExpectedVersion {
                actual: Some(4),
                ..
            })
        ),
        "same ids at another expected version: {r:?}"
    );
    let mixed = vec![second[0].clone(), event("A", json!("new"))];
    let r = store.append(&s, ExpectedVersion::Any, mixed).await;
    assert!(
        matches!(r, Err(StoreError::DuplicateEventId { .. })),
        "mixed: {r:?}"
    );
    let r = store
        .append(&stream("idem-2"), ExpectedVersion::Any, first[..1].to_vec())
        .await;
    assert!(
        matches!(r, Err(StoreError::DuplicateEventId { .. })),
        "an id recorded in another stream: {r:?}"
    );
    let partial = store
        .append(&s, ExpectedVersion::NoStream, first[1..].to_vec())
        .await;
    assert!(
        partial.is_err(),
        "a subset at the wrong version is refused: {partial:?}"
    );
    assert_eq!(all(&store).await.len(), 5, "nothing was duplicated");
}

/// `read_all` pages by position and filters by type and stream prefix.
pub async fn read_all_and_filters<S: EventStore>(store: S) {
    for i in 0..10 {
        let s = stream(&format!(
            "{}-{i}",
            if i % 2 == 0 { "order" } else { "user" }
        ));
        let t = if i % 3 == 0 { "Created" } else { "Updated" };
        append_ok(&store, &s, ExpectedVersion::Any, events(2, t)).await;
    }
    let log = all(&store).await;
    let from = log[5].position;
    let page = store
        .read_all(ReadAll::new(from, 4))
        .await
        .unwrap_or_default();
    assert_eq!(
        page.iter().map(|e| e.position).collect::<Vec<_>>(),
        log[5..9].iter().map(|e| e.position).collect::<Vec<_>>(),
        "a page from a position"
    );
    let beyond = store
        .read_all(ReadAll::new(log[19].position + 1, 10))
        .await
        .unwrap_or_default();
    assert!(beyond.is_empty());

    let by_type = store
        .read_all(ReadAll::new(0, 100).filter(Filter::all().event_type("Created")))
        .await
        .unwrap_or_default();
    assert_eq!(by_type.len(), 8, "streams 0,3,6,9 × 2 events");
    assert!(by_type.iter().all(|e| e.event_type == "Created"));
    let by_prefix = store
        .read_all(ReadAll::new(0, 100).filter(Filter::all().stream_prefix("order-")))
        .await
        .unwrap_or_default();
    assert_eq!(by_prefix.len(), 10);
    assert!(by_prefix.windows(2).all(|w| w[0].position < w[1].position));
    let both = store
        .read_all(
            ReadAll::new(0, 3).filter(Filter::all().event_type("Created").stream_prefix("user-")),
        )
        .await
        .unwrap_or_default();
    assert_eq!(
        both.iter().map(|e| e.stream.as_str()).collect::<Vec<_>>(),
        vec!["user-3", "user-3", "user-9"],
        "filtered reads honour the limit"
    );
    let from_mid = store
        .read_all(ReadAll::new(7, 100).filter(Filter::all().event_type("Created")))
        .await
        .unwrap_or_default();
    assert!(from_mid.iter().all(|e| e.position >= 7));

    let by_category = store
        .read_all(ReadAll::new(0, 100).filter(Filter::all().category("user")))
        .await
        .unwrap_or_default();
    assert_eq!(by_category.len(), 10, "category user: the user- streams");
    assert!(
        by_category
            .iter()
            .all(|e| e.stream.as_str().starts_with("user-"))
    );
    assert!(
        by_category
            .windows(2)
            .all(|w| w[0].position < w[1].position)
    );
    let none = store
        .read_all(ReadAll::new(0, 100).filter(Filter::all().category("use")))
        .await
        .unwrap_or_default();
    assert!(
        none.is_empty(),
        "a category is the whole name before '-', not a prefix"
    );
    let two = store
        .read_all(
            ReadAll::new(0, 100).filter(
                Filter::all()
                    .category("user")
                    .category("order")
                    .event_type("Created"),
            ),
        )
        .await
        .unwrap_or_default();
    assert_eq!(two.len(), 8);
    assert!(two.windows(2).all(|w| w[0].position < w[1].position));
}

/// Events are found by correlation id, in commit order.
pub async fn correlation_reads<S: EventStore>(store: S) {
    let tagged = |t: &str, c: &str| {
        Enricher::new("conformance")
            .enrich(NewEvent::new(t, json!({})).with_correlation_id(c))
            .unwrap_or_else(|e| panic!("{e}"))
    };
    append_ok(
        &store,
        &stream("o-1"),
        ExpectedVersion::Any,
        vec![tagged("A", "tx-1")],
    )
    .await;
    append_ok(
        &store,
        &stream("p-1"),
        ExpectedVersion::Any,
        vec![tagged("B", "tx-2")],
    )
    .await;
    let cd = append_ok(
        &store,
        &stream("p-1"),
        ExpectedVersion::Any,
        vec![tagged("C", "tx-1"), tagged("D", "tx-1")],
    )
    .await;
    let tx = store
        .read_correlation("tx-1", 0, 100)
        .await
        .unwrap_or_default();
    assert_eq!(
        tx.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(),
        vec!["A", "C", "D"]
    );
    let later = store
        .read_correlation("tx-1", cd.first_position, 1)
        .await
        .unwrap_or_default();
    assert_eq!(
        later.iter().map(|e| e.position).collect::<Vec<_>>(),
        vec![cd.first_position]
    );
    assert!(
        store
            .read_correlation("nope", 0, 10)
            .await
            .unwrap_or_default()
            .is_empty()
    );
}

/// Streams are listed in name order, by prefix, with paging.
pub async fn stream_listing<S: EventStore>(store: S) {
    let mut last_of_c = None;
    for name in ["b-2", "a-1", "b-1", "c-1", "b-3"] {
        let r = append_ok(&store, &stream(name), ExpectedVersion::Any, events(2, "A")).await;
        if name == "c-1" {
            last_of_c = Some(r.position);
        }
    }
    let list = |prefix: Option<&str>, after: Option<&str>, limit| ListStreams {
        prefix: prefix.map(str::to_owned),
        after: after.map(str::to_owned),
        limit,
    };
    let names = |v: Vec<tidings_core::StreamInfo>| {
        v.into_iter()
            .map(|i| i.stream.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    let every = store
        .list_streams(list(None, None, 100))
        .await
        .unwrap_or_default();
    assert_eq!(every.len(), 5);
    assert!(every.iter().all(|i| i.last_revision == 1));
    assert_eq!(names(every), vec!["a-1", "b-1", "b-2", "b-3", "c-1"]);
    let b = store
        .list_streams(list(Some("b-"), None, 2))
        .await
        .unwrap_or_default();
    assert_eq!(names(b), vec!["b-1", "b-2"]);
    let next = store
        .list_streams(list(Some("b-"), Some("b-2"), 2))
        .await
        .unwrap_or_default();
    assert_eq!(names(next), vec!["b-3"]);
    let info = store
        .list_streams(list(Some("c-"), None, 1))
        .await
        .unwrap_or_default();
    assert_eq!(info.first().map(|i| i.last_position), last_of_c);
}

/// Everything in the envelope comes back exactly: id, type, version, timestamp to the
/// microsecond, source, data text and all metadata.
pub async fn envelope_survives<S: EventStore>(store: S) {
    let fixture = r#"{"eventId":"123e4567-e89b-12d3-a456-426614174000","eventType":"OrderCreated",
      "eventVersion":"1.0","timestamp":"2024-01-15T10:30:00.123456Z","source":"order-service",
      "data":{"orderId":"order-123","items":[{"productId":"product-789","quantity":2,"price":29.99}],
      "totalAmount":59.98,"note":"ünïcode ✓ \"quoted\""},
      "metadata":{"correlationId":"corr-123","causationId":"user-action-456","userId":"user-789",
      "tenant":"acme"}}"#;
    let original: Event = serde_json::from_str(fixture).unwrap_or_else(|e| panic!("{e}"));
    let s = stream("order-123");
    append_ok(
        &store,
        &s,
        ExpectedVersion::NoStream,
        vec![original.clone()],
    )
    .await;
    let back = read(&store, &s, ReadStream::forward()).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].event, original, "the envelope came back changed");
    assert_eq!(
        back[0].data.as_str(),
        original.data.as_str(),
        "payload text is kept exactly"
    );
    let id = Uuid::parse_str("123e4567-e89b-12d3-a456-426614174000").ok();
    assert_eq!(Some(back[0].event_id), id);
}

async fn next_event<St>(sub: &mut St, what: &str) -> RecordedEvent
where
    St: futures::Stream<Item = tidings_core::store::EventStreamItem> + Unpin,
{
    match tokio::time::timeout(STALL, sub.next()).await {
        Ok(Some(Ok(e))) => e,
        Ok(Some(Err(e))) => panic!("{what}: subscription failed: {e}"),
        Ok(None) => panic!("{what}: subscription ended"),
        Err(_) => panic!("{what}: subscription stalled for {STALL:?}"),
    }
}

/// A subscription delivers history, then new events, in order; `Start::End` and
/// `Start::At` start where they say; filters apply; a dropped subscription resumed from
/// its last position + 1 misses nothing.
pub async fn subscriptions_catch_up_then_go_live<S: EventStore>(store: S) {
    let a = stream("sub-a");
    let old = append_ok(&store, &a, ExpectedVersion::Any, events(5, "Old")).await;
    let p0 = old.first_position;
    let mut from_start = Box::pin(store.subscribe_all(Start::Beginning, Filter::all()));
    let mut from_end = Box::pin(store.subscribe_all(Start::End, Filter::all()));
    let mut from_3 = Box::pin(store.subscribe_all(Start::At(p0 + 3), Filter::all()));
    let mut only_new =
        Box::pin(store.subscribe_all(Start::Beginning, Filter::all().event_type("New")));
    for p in p0..p0 + 5 {
        assert_eq!(next_event(&mut from_start, "catch-up").await.position, p);
    }
    assert_eq!(next_event(&mut from_3, "at 3").await.position, p0 + 3);
    let new = append_ok(
        &store,
        &stream("sub-b"),
        ExpectedVersion::Any,
        events(2, "New"),
    )
    .await;
    for p in new.first_position..=new.position {
        assert_eq!(next_event(&mut from_start, "live").await.position, p);
        assert_eq!(next_event(&mut from_end, "from end").await.position, p);
        assert_eq!(next_event(&mut only_new, "filtered").await.position, p);
    }
    assert_eq!(next_event(&mut from_3, "at 3").await.position, p0 + 4);
    drop(from_start);
    let more = append_ok(&store, &a, ExpectedVersion::Any, events(3, "Old")).await;
    let mut resumed = Box::pin(store.subscribe_all(Start::At(new.position + 1), Filter::all()));
    for p in more.first_position..=more.position {
        assert_eq!(next_event(&mut resumed, "resumed").await.position, p);
    }
}

/// Subscriptions made while writers append see every event exactly once, in order.
pub async fn subscriptions_race_appends<S: EventStore>(store: S, caps: Capabilities) {
    const WRITERS: usize = 4;
    const APPENDS: usize = 40;
    const TOTAL: u64 = (WRITERS * APPENDS * 2) as u64;
    append_ok(
        &store,
        &stream("race-0"),
        ExpectedVersion::Any,
        events(2, "Seed"),
    )
    .await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = stream(&format!("race-w{w}"));
            for _ in 0..APPENDS {
                append_ok(&store, &s, ExpectedVersion::Any, events(2, "Raced")).await;
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(Box::pin(
            store.subscribe_all(Start::Beginning, Filter::all()),
        ));
        tokio::task::yield_now().await;
    }
    let mut delivered = Vec::new();
    for (i, sub) in subs.iter_mut().enumerate() {
        let mut seen = HashSet::new();
        let mut positions = Vec::new();
        for want in 0..TOTAL + 2 {
            let e = next_event(sub, "racing subscription").await;
            if caps.gap_free_positions {
                assert_eq!(e.position, want, "subscription {i} skipped or repeated");
            }
            assert!(
                positions.last().is_none_or(|p| *p < e.position),
                "subscription {i} went back from {:?} to {}",
                positions.last(),
                e.position
            );
            assert!(
                seen.insert(e.event_id),
                "subscription {i} delivered an event twice"
            );
            positions.push(e.position);
        }
        delivered.push(positions);
    }
    for t in tasks {
        t.await
            .unwrap_or_else(|e| panic!("writer task failed: {e}"));
    }
    let log: Vec<u64> = all(&store).await.iter().map(|e| e.position).collect();
    for (i, positions) in delivered.iter().enumerate() {
        assert_eq!(positions, &log, "subscription {i} and read_all disagree");
    }
}

/// Stream subscriptions deliver one stream's events by revision, history then live.
pub async fn stream_subscriptions<S: EventStore>(store: S) {
    let s = stream("watched-1");
    append_ok(&store, &s, ExpectedVersion::Any, events(3, "A")).await;
    append_ok(
        &store,
        &stream("other-1"),
        ExpectedVersion::Any,
        events(3, "A"),
    )
    .await;
    let mut from_start = Box::pin(store.subscribe_stream(&s, Start::Beginning));
    let mut from_1 = Box::pin(store.subscribe_stream(&s, Start::At(1)));
    let mut from_end = Box::pin(store.subscribe_stream(&s, Start::End));
    let mut not_yet = Box::pin(store.subscribe_stream(&stream("later-1"), Start::Beginning));
    for r in 0..3 {
        assert_eq!(
            next_event(&mut from_start, "stream catch-up")
                .await
                .revision,
            r
        );
    }
    assert_eq!(next_event(&mut from_1, "stream at 1").await.revision, 1);
    append_ok(
        &store,
        &stream("other-1"),
        ExpectedVersion::Any,
        events(1, "A"),
    )
    .await;
    append_ok(&store, &s, ExpectedVersion::Exact(2), events(2, "B")).await;
    append_ok(
        &store,
        &stream("later-1"),
        ExpectedVersion::Any,
        events(1, "C"),
    )
    .await;
    for r in 3..5 {
        let e = next_event(&mut from_start, "stream live").await;
        assert_eq!((e.revision, e.stream.as_str()), (r, "watched-1"));
        assert_eq!(next_event(&mut from_end, "stream end").await.revision, r);
    }
    assert_eq!(next_event(&mut from_1, "stream at 1").await.revision, 2);
    assert_eq!(next_event(&mut not_yet, "new stream").await.event_type, "C");
}

/// Writers racing with `Exact` on one stream: exactly one wins each version.
pub async fn concurrent_writers_one_winner_per_version<S: EventStore>(store: S) {
    const WRITERS: usize = 8;
    const TRIES: usize = 25;
    let s = stream("contended-1");
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for _ in 0..TRIES {
                let current = store.stream_version(&s).await.ok().flatten();
                let expected = current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                let e = event("Won", json!({ "writer": w }));
                match store.append(&s, expected, vec![e.clone()]).await {
                    Ok(r) => wins.push((r.next_expected_version, e.event_id)),
                    Err(StoreError::WrongExpectedVersion { .. }) => {}
                    Err(other) => panic!("writer {w}: unexpected error {other}"),
                }
                tokio::task::yield_now().await;
            }
            wins
        }));
    }
    let mut wins = Vec::new();
    for t in tasks {
        wins.extend(
            t.await
                .unwrap_or_else(|e| panic!("writer task failed: {e}")),
        );
    }
    wins.sort();
    let recorded = read(&store, &s, ReadStream::forward()).await;
    assert_eq!(
        wins.len(),
        recorded.len(),
        "every win is recorded, nothing else"
    );
    for (i, ((rev, id), e)) in wins.iter().zip(&recorded).enumerate() {
        assert_eq!(*rev, i as u64, "exactly one winner for revision {i}");
        assert_eq!((e.revision, e.event_id), (*rev, *id));
    }
    assert!(
        recorded.windows(2).all(|w| w[0].position < w[1].position),
        "a stream's positions grow with its revisions"
    );
    assert!(!wins.is_empty());
}
