//! The store contract on real files: appends, reads, idempotency, reopen, segments,
//! subscriptions and limits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use futures::StreamExt;
use tidings::{
    Enricher, Event, EventAppender, EventReader, EventSubscriber, ExpectedVersion, Filter, Limits,
    ListStreams, NewEvent, ReadAll, ReadStream, Start, StoreError, StreamId,
};
use tidings_log::{IndexSource, LogStore};

fn ev(t: &str, corr: Option<&str>) -> Event {
    let mut n = NewEvent::new(t, serde_json::json!({"orderId": "order-1", "n": 1}));
    if let Some(c) = corr {
        n = n.with_correlation_id(c);
    }
    Enricher::new("svc").enrich(n).unwrap()
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn append_read_and_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .segment_size(1 << 20)
        .open()
        .unwrap();
    let a = sid("order-a");
    let r = store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![ev("A", Some("c1")), ev("B", None)],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            r.first_revision,
            r.next_expected_version,
            r.first_position,
            r.position
        ),
        (0, 1, 0, 1)
    );
    let err = store
        .append(&a, ExpectedVersion::Exact(0), vec![ev("C", None)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::WrongExpectedVersion {
                actual: Some(1),
                ..
            }
        ),
        "{err}"
    );
    let r = store
        .append(&a, ExpectedVersion::Exact(1), vec![ev("C", Some("c1"))])
        .await
        .unwrap();
    assert_eq!(r.position, 2);
    store
        .append(&sid("user-1"), ExpectedVersion::Any, vec![ev("U", None)])
        .await
        .unwrap();

    let fwd = store.read_stream(&a, ReadStream::forward()).await.unwrap();
    assert_eq!(
        fwd.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    assert_eq!(fwd[1].event_type, "B");
    let back = store
        .read_stream(&a, ReadStream::backward().from(1).limit(5))
        .await
        .unwrap();
    assert_eq!(back.iter().map(|e| e.revision).collect::<Vec<_>>(), [1, 0]);
    let from1 = store
        .read_stream(&a, ReadStream::forward().from(1).limit(1))
        .await
        .unwrap();
    assert_eq!(from1[0].revision, 1);
    assert!(
        store
            .read_stream(&sid("none"), ReadStream::forward())
            .await
            .unwrap()
            .is_empty()
    );

    let all = store.read_all(ReadAll::new(0, 100)).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        [0, 1, 2, 3]
    );
    let only_c = store
        .read_all(ReadAll::new(0, 100).filter(Filter::all().event_type("C")))
        .await
        .unwrap();
    assert_eq!(only_c.len(), 1);
    let users = store
        .read_all(ReadAll::new(1, 100).filter(Filter::all().stream_prefix("user-")))
        .await
        .unwrap();
    assert_eq!(users[0].position, 3);
    let corr = store.read_correlation("c1", 0, 10).await.unwrap();
    assert_eq!(corr.iter().map(|e| e.position).collect::<Vec<_>>(), [0, 2]);
    assert_eq!(store.stream_version(&a).await.unwrap(), Some(2));
    assert_eq!(store.head().await.unwrap(), Some(3));
    let streams = store
        .list_streams(ListStreams {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        streams
            .iter()
            .map(|s| s.stream.as_str())
            .collect::<Vec<_>>(),
        ["order-a", "user-1"]
    );
    assert_eq!(
        fwd[0].event,
        store.read_all(ReadAll::new(0, 1)).await.unwrap()[0].event
    );
    store.close().await.unwrap();
    let err = store
        .append(&a, ExpectedVersion::Any, vec![ev("D", None)])
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::Closed);
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_reappend_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = sid("order-x");
    let batch = vec![ev("A", None), ev("B", None)];
    let first = {
        let store = LogStore::builder(dir.path())
            .segment_size(1 << 20)
            .open()
            .unwrap();
        let r = store
            .append(&s, ExpectedVersion::NoStream, batch.clone())
            .await
            .unwrap();
        assert_eq!(
            store
                .append(&s, ExpectedVersion::NoStream, batch.clone())
                .await
                .unwrap(),
            r
        );
        r
    };
    let store = LogStore::builder(dir.path())
        .segment_size(1 << 20)
        .open()
        .unwrap();
    assert_eq!(store.recovery_report().index, IndexSource::Snapshot);
    assert_eq!(store.recovery_report().frames_scanned, 0);
    assert_eq!(
        store
            .append(&s, ExpectedVersion::NoStream, batch.clone())
            .await
            .unwrap(),
        first
    );
    let partial = vec![batch[0].clone(), ev("C", None)];
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, partial).await,
        Err(StoreError::DuplicateEventId { .. })
    ));
    assert!(matches!(
        store
            .append(&sid("other"), ExpectedVersion::Any, vec![batch[0].clone()])
            .await,
        Err(StoreError::DuplicateEventId { .. })
    ));
    assert_eq!(store.read_all(ReadAll::new(0, 10)).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn many_segments_concurrent_writers_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        LogStore::builder(dir.path())
            .segment_size(8192)
            .open()
            .unwrap()
    };
    let store = open();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let s = sid(&format!("w-{w}"));
            for i in 0..40u64 {
                let n = 1 + (i % 3) as usize;
                let events = (0..n).map(|_| ev("E", Some("c"))).collect();
                store
                    .append(&s, ExpectedVersion::Any, events)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap();
    assert!(all.iter().enumerate().all(|(i, e)| e.position == i as u64));
    let total = all.len();
    drop(store);
    let names = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(names > 5, "expected several segments, found {names} files");
    for reopen in 0..2 {
        let store = open();
        let again = store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap();
        assert_eq!(again, all, "reopen {reopen}");
        for w in 0..8 {
            let s = store
                .read_stream(&sid(&format!("w-{w}")), ReadStream::backward())
                .await
                .unwrap();
            assert!(s.windows(2).all(|p| p[0].revision == p[1].revision + 1));
        }
        assert_eq!(
            store
                .read_correlation("c", 0, usize::MAX)
                .await
                .unwrap()
                .len(),
            total
        );
    }
    let report = tidings_log::verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.events, total as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscriptions_catch_up_then_go_live() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .segment_size(1 << 20)
        .open()
        .unwrap();
    let s = sid("order-s");
    store
        .append(&s, ExpectedVersion::Any, vec![ev("A", None)])
        .await
        .unwrap();
    let mut all = Box::pin(store.subscribe_all(Start::Beginning, Filter::all()));
    let mut one = Box::pin(store.subscribe_stream(&s, Start::Beginning));
    assert_eq!(all.next().await.unwrap().unwrap().position, 0);
    assert_eq!(one.next().await.unwrap().unwrap().revision, 0);
    let writer = store.clone();
    let s2 = s.clone();
    tokio::spawn(async move {
        for _ in 0..3 {
            writer
                .append(&s2, ExpectedVersion::Any, vec![ev("B", None)])
                .await
                .unwrap();
        }
    });
    for p in 1..4 {
        assert_eq!(all.next().await.unwrap().unwrap().position, p);
        assert_eq!(one.next().await.unwrap().unwrap().revision, p);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .limits(Limits {
            max_event_bytes: 200,
            max_append_bytes: 400,
        })
        .open()
        .unwrap();
    let big = Enricher::new("s")
        .enrich(NewEvent::new("A", serde_json::json!("x".repeat(300))))
        .unwrap();
    let s = sid("l");
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![big]).await,
        Err(StoreError::InvalidEvent { index: 0, .. })
    ));
    let small = || {
        Enricher::new("s")
            .enrich(NewEvent::new("A", serde_json::json!("x".repeat(100))))
            .unwrap()
    };
    assert!(matches!(
        store
            .append(&s, ExpectedVersion::Any, (0..4).map(|_| small()).collect())
            .await,
        Err(StoreError::AppendTooLarge { max: 400, .. })
    ));
    assert!(matches!(
        store.append(&s, ExpectedVersion::Any, vec![]).await,
        Err(StoreError::EmptyAppend)
    ));
    assert_eq!(store.head().await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_cannot_open_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _store = LogStore::builder(dir.path())
        .segment_size(1 << 20)
        .open()
        .unwrap();
    assert!(
        LogStore::builder(dir.path())
            .segment_size(1 << 20)
            .open()
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_in_use_is_reported_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _store = LogStore::builder(dir.path())
        .segment_size(1 << 20)
        .open()
        .unwrap();
    match LogStore::open(dir.path()) {
        Err(tidings_log::LogError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected LogError::Locked, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_snapshot_keeps_the_directory_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .segment_size(1 << 20)
        .open()
        .unwrap();
    store
        .append(&sid("s-1"), ExpectedVersion::Any, vec![ev("A", None)])
        .await
        .unwrap();
    store.snapshot_index().await.unwrap();
    assert!(
        LogStore::open(dir.path()).is_err(),
        "a snapshot must not release the directory lock"
    );
    store.close().await.unwrap();
    let reopened = LogStore::open(dir.path()).unwrap();
    assert_eq!(reopened.head().await.unwrap(), Some(0));
}

/// Appends alone on an idle store are committed on the appending thread; concurrent
/// ones go through the writer thread. Mixed, they keep one gap-free order, and both
/// survive a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_and_queued_commits_share_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .segment_size(64 << 10)
        .open()
        .unwrap();
    let mut expected_events = 0u64;
    for round in 0..6u64 {
        for i in 0..20u64 {
            let r = store
                .append(
                    &sid(&format!("alone-{round}")),
                    ExpectedVersion::Any,
                    vec![ev("Alone", None)],
                )
                .await
                .unwrap();
            assert_eq!(r.first_position, expected_events);
            assert_eq!(r.first_revision, i);
            expected_events += 1;
        }
        let mut tasks = Vec::new();
        for w in 0..16u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let s = sid(&format!("burst-{round}-{w}"));
                for _ in 0..5 {
                    store
                        .append(
                            &s,
                            ExpectedVersion::Any,
                            (0..3).map(|_| ev("Burst", None)).collect(),
                        )
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        expected_events += 16 * 5 * 3;
    }
    let stats = store.write_stats();
    assert_eq!(stats.events, expected_events);
    assert!(
        stats.inline_groups >= 6 * 20,
        "lone appends commit inline: {stats:?}"
    );
    assert!(
        stats.groups > stats.inline_groups,
        "bursts go through the writer thread: {stats:?}"
    );
    assert!(
        stats.syncs > 0 && stats.syncs <= stats.groups,
        "one fdatasync makes one or more groups durable: {stats:?}"
    );
    let check = |all: Vec<tidings::RecordedEvent>| {
        assert_eq!(all.len() as u64, expected_events);
        for (i, e) in all.iter().enumerate() {
            assert_eq!(e.position, i as u64);
        }
    };
    check(store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap());
    store.close().await.unwrap();
    drop(store);
    let reopened = LogStore::open(dir.path()).unwrap();
    check(
        reopened
            .read_all(ReadAll::new(0, usize::MAX))
            .await
            .unwrap(),
    );
    assert_eq!(reopened.stream_count().unwrap(), 6 + 6 * 16);
}

/// Appends `n` single events one after another to stream `s-1` of a fresh store,
/// checking their positions.
async fn append_lone(store: &LogStore, n: u64) {
    for i in 0..n {
        let r = store
            .append(&sid("s-1"), ExpectedVersion::Any, vec![ev("A", None)])
            .await
            .unwrap();
        assert_eq!(r.position, i);
    }
}

/// On a current-thread runtime (or outside Tokio) nothing may block the only thread:
/// every append goes through the writer thread.
#[test]
fn a_current_thread_runtime_never_commits_inline() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = LogStore::open(dir.path()).unwrap();
        append_lone(&store, 10).await;
        let stats = store.write_stats();
        assert_eq!((stats.inline_groups, stats.events), (0, 10));
        store.close().await.unwrap();
    });
    let store = LogStore::open(dir.path()).unwrap();
    let r = futures::executor::block_on(store.append(
        &sid("s-1"),
        ExpectedVersion::Exact(9),
        vec![ev("B", None)],
    ))
    .unwrap();
    assert_eq!(r.position, 10);
    assert_eq!(store.write_stats().inline_groups, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn inline_commits_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .inline_commits(false)
        .open()
        .unwrap();
    append_lone(&store, 5).await;
    let stats = store.write_stats();
    assert_eq!((stats.inline_groups, stats.groups, stats.events), (0, 5, 5));
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_after_close_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    store
        .append(&sid("s-1"), ExpectedVersion::Any, vec![ev("A", None)])
        .await
        .unwrap();
    store.close().await.unwrap();
    let err = store
        .append(&sid("s-1"), ExpectedVersion::Any, vec![ev("B", None)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Closed), "{err}");
    assert_eq!(store.write_stats().events, 1);
}

/// A snapshot moves the ids it covers into the sorted base table; re-appends of ids on
/// either side of it are still recognised.
#[tokio::test(flavor = "multi_thread")]
async fn ids_stay_idempotent_across_index_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .segment_size(64 << 10)
        .index_snapshot_every(7)
        .open()
        .unwrap();
    let mut sent = Vec::new();
    for i in 0..60u64 {
        let e = ev("E", None);
        let r = store
            .append(
                &sid(&format!("s-{}", i % 4)),
                ExpectedVersion::Any,
                vec![e.clone()],
            )
            .await
            .unwrap();
        sent.push((i % 4, e, r));
        if i == 30 {
            store.snapshot_index().await.unwrap();
        }
    }
    for (s, e, r) in &sent {
        let again = store
            .append(
                &sid(&format!("s-{s}")),
                ExpectedVersion::Any,
                vec![e.clone()],
            )
            .await
            .unwrap();
        assert_eq!(again, *r, "re-append of {}", e.event_id);
    }
    assert_eq!(store.head().await.unwrap(), Some(59));
}

/// Filtered reads through the type and category postings give what a brute-force filter
/// of the whole log gives: fresh, after a reopen from the snapshot with a tail appended
/// since, and after a rebuild from the log.
#[tokio::test(flavor = "multi_thread")]
async fn filtered_reads_match_a_brute_force_filter_across_reopen_and_recovery() {
    const TYPES: [&str; 4] = ["Rare", "A", "B", "C"];
    const STREAMS: [&str; 6] = ["order-1", "order-2", "user-1", "user", "ord-1", "-x"];
    let dir = tempfile::tempdir().unwrap();
    let filters = || {
        vec![
            Filter::all().event_type("Rare"),
            Filter::all().event_type("A").event_type("C"),
            Filter::all().category("order"),
            Filter::all().category("user").category(""),
            Filter::all().category("ord").event_type("B"),
            Filter::all().category("order").stream_prefix("order-2"),
            Filter::all().event_type("B").stream_prefix("user"),
            Filter::all().event_type("Missing"),
            Filter::all().category("nothing"),
        ]
    };
    async fn check(store: &LogStore, filters: &[Filter], when: &str) {
        let all = store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap();
        for f in filters {
            for (from, limit) in [(0, usize::MAX), (0, 3), (17, 5), (40, 1000), (1000, 10)] {
                let got = store
                    .read_all(ReadAll::new(from, limit).filter(f.clone()))
                    .await
                    .unwrap();
                let want: Vec<_> = all
                    .iter()
                    .filter(|e| e.position >= from && f.matches(e.stream.as_str(), &e.event_type))
                    .take(limit)
                    .map(|e| (e.position, e.event_id))
                    .collect();
                let got: Vec<_> = got.iter().map(|e| (e.position, e.event_id)).collect();
                assert_eq!(got, want, "{when}: {f:?} from {from} limit {limit}");
            }
        }
    }
    let append = |store: LogStore, round: usize| async move {
        for i in 0..30usize {
            let n = i + round * 30;
            let events: Vec<Event> = (0..1 + n % 3)
                .map(|k| ev(TYPES[(n * 7 + k) % TYPES.len()], None))
                .collect();
            store
                .append(
                    &sid(STREAMS[n % STREAMS.len()]),
                    ExpectedVersion::Any,
                    events,
                )
                .await
                .unwrap();
        }
    };
    let open = || {
        LogStore::builder(dir.path())
            .segment_size(4 << 10)
            .open()
            .unwrap()
    };
    let store = open();
    append(store.clone(), 0).await;
    check(&store, &filters(), "fresh").await;
    store.snapshot_index().await.unwrap();
    append(store.clone(), 1).await;
    drop(store);
    let store = open();
    assert_eq!(store.recovery_report().index, IndexSource::Snapshot);
    check(&store, &filters(), "snapshot plus tail").await;
    append(store.clone(), 2).await;
    check(&store, &filters(), "appended after reopen").await;
    store.close().await.unwrap();
    drop(store);
    std::fs::remove_file(dir.path().join(tidings_log::index_snapshot::FILE_NAME)).unwrap();
    let store = open();
    assert!(matches!(
        store.recovery_report().index,
        IndexSource::Rebuilt(_)
    ));
    check(&store, &filters(), "rebuilt from the log").await;
}

/// With a tiny in-memory budget the index lives in its file almost entirely: merged in
/// the background as the log grows, and written during the scan when the file is lost.
/// Every lookup answers the same, and `verify` agrees with the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_in_memory_index_answers_like_a_whole_one() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        LogStore::builder(dir.path())
            .segment_size(8 << 10)
            .index_snapshot_every(1)
            .index_memory_events(40)
            .open()
            .unwrap()
    };
    let store = open();
    let mut ids = Vec::new();
    let mut first_append = None;
    for n in 0..240usize {
        let stream = sid(&format!("{}-{}", ["order", "user", "cart"][n % 3], n % 17));
        let events: Vec<Event> = (0..1 + n % 3)
            .map(|k| ev(["A", "B"][(n + k) % 2], (n % 5 == 0).then_some("c-1")))
            .collect();
        ids.extend(events.iter().map(|e| e.event_id));
        first_append.get_or_insert_with(|| (stream.clone(), events.clone()));
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let (replay_stream, replay) = first_append.unwrap();
    let check = |store: LogStore, ids: Vec<uuid::Uuid>, when: &'static str| {
        let (replay_stream, replay) = (replay_stream.clone(), replay.clone());
        async move {
            let all = store.read_all(ReadAll::new(0, 10_000)).await.unwrap();
            assert_eq!(all.len(), ids.len(), "{when}");
            for (e, id) in all.iter().zip(&ids) {
                assert_eq!(e.event_id, *id, "{when}");
                let s = store
                    .read_stream(&e.stream, ReadStream::forward())
                    .await
                    .unwrap();
                assert_eq!(s[e.revision as usize].event_id, e.event_id, "{when}");
            }
            let corr = store.read_correlation("c-1", 0, 10_000).await.unwrap();
            let want: Vec<_> = all
                .iter()
                .filter(|e| e.metadata.correlation_id.as_deref() == Some("c-1"))
                .map(|e| e.position)
                .collect();
            assert_eq!(
                corr.iter().map(|e| e.position).collect::<Vec<_>>(),
                want,
                "{when}"
            );
            let typed = store
                .read_all(
                    ReadAll::new(0, 10_000).filter(Filter::all().event_type("B").category("user")),
                )
                .await
                .unwrap();
            let want: Vec<_> = all
                .iter()
                .filter(|e| e.event_type == "B" && e.stream.as_str().starts_with("user-"))
                .map(|e| e.position)
                .collect();
            assert_eq!(
                typed.iter().map(|e| e.position).collect::<Vec<_>>(),
                want,
                "{when}"
            );
            let streams = store
                .list_streams(ListStreams {
                    limit: 1000,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(streams.len(), 51, "{when}");
            assert_eq!(store.stream_count().unwrap(), 51, "{when}");
            // A replayed append is answered from the index file, not appended again.
            let again = store
                .append(&replay_stream, ExpectedVersion::Any, replay)
                .await
                .unwrap();
            assert_eq!(again.first_position, 0, "{when}");
            assert_eq!(
                store.head().await.unwrap(),
                Some(ids.len() as u64 - 1),
                "{when}"
            );
            store
        }
    };
    let store = check(store, ids.clone(), "merged while appending").await;
    store.close().await.unwrap();
    drop(store);
    let report = tidings_log::verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(
        matches!(report.index, tidings_log::IndexCheck::Current { .. }),
        "{report:?}"
    );
    std::fs::remove_file(dir.path().join(tidings_log::index_snapshot::FILE_NAME)).unwrap();
    let store = open();
    assert!(matches!(
        store.recovery_report().index,
        IndexSource::Rebuilt(_)
    ));
    assert!(
        store.recovery_report().index_files_written > 0,
        "{:?}",
        store.recovery_report()
    );
    let store = check(store, ids, "rebuilt within the budget").await;
    store.close().await.unwrap();
}

/// A store in `dir` that leaves up to `tail` events after its index file.
fn open_with_tail(dir: &std::path::Path, tail: u64) -> LogStore {
    LogStore::builder(dir)
        .segment_size(1 << 20)
        .index_tail_events(tail)
        .open()
        .unwrap()
}

/// The index file's inode: it changes when the file is written anew.
fn index_inode(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir.join("index.ckpt")).unwrap().ino()
}

/// Appends `n` events to the new stream `stream`.
async fn append_new(store: &LogStore, stream: &str, n: usize) {
    let events = (0..n).map(|_| ev("A", None)).collect();
    store
        .append(&sid(stream), ExpectedVersion::NoStream, events)
        .await
        .unwrap();
}

/// A close rewrites the index file only when more than `index_tail_events` events
/// follow it: a store closed with nothing new, or with a short tail, keeps its file (a
/// rewrite is a pass over the whole index) and the next open reads the tail from the
/// log, without writing the file either. A longer tail is merged at close, and a store
/// without a file gets one at its first close.
#[tokio::test(flavor = "multi_thread")]
async fn a_close_rewrites_the_index_file_only_for_a_long_tail() {
    let dir = tempfile::tempdir().unwrap();
    let open = || open_with_tail(dir.path(), 2);
    let inode = || index_inode(dir.path());
    let store = open();
    append_new(&store, "order-1", 1).await;
    store.close().await.unwrap();
    let written = inode();

    let store = open();
    assert_eq!(store.recovery_report().index, IndexSource::Snapshot);
    store.close().await.unwrap();
    assert_eq!(inode(), written, "an unchanged index was rewritten");

    // Two events after the file: a short tail, left to the log.
    let store = open();
    append_new(&store, "order-2", 1).await;
    append_new(&store, "order-3", 1).await;
    store.close().await.unwrap();
    assert_eq!(inode(), written, "a short tail was merged at close");
    let store = open();
    assert_eq!(store.recovery_report().index, IndexSource::Snapshot);
    assert_eq!(store.recovery_report().frames_scanned, 2);
    for s in ["order-1", "order-2", "order-3"] {
        assert_eq!(store.stream_version(&sid(s)).await.unwrap(), Some(0), "{s}");
    }
    store.close().await.unwrap();
    assert_eq!(
        inode(),
        written,
        "an open that read a short tail wrote the file"
    );

    // One more: three events after the file, merged at close.
    let store = open();
    append_new(&store, "order-4", 1).await;
    store.close().await.unwrap();
    assert_ne!(inode(), written, "a long tail was not merged at close");
    let store = open();
    assert_eq!(store.recovery_report().frames_scanned, 0);
    assert_eq!(store.head().await.unwrap(), Some(3));
    assert_eq!(
        store.stream_version(&sid("order-4")).await.unwrap(),
        Some(0)
    );
    store.close().await.unwrap();
}

/// With `index_tail_events(0)` every close after appends writes the file, and so does
/// an open that had to read events after it.
#[tokio::test(flavor = "multi_thread")]
async fn no_tail_is_left_when_none_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let open = |tail| open_with_tail(dir.path(), tail);
    let inode = || index_inode(dir.path());
    let store = open(0);
    append_new(&store, "order-1", 1).await;
    store.close().await.unwrap();
    let first = inode();
    // A tail left by a store that allowed one...
    let store = open(10);
    append_new(&store, "order-2", 1).await;
    store.close().await.unwrap();
    assert_eq!(inode(), first);
    // ...is written at once by an open that allows none.
    let store = open(0);
    assert_eq!(store.recovery_report().frames_scanned, 1);
    assert_ne!(inode(), first, "the tail read at open was not saved");
    store.close().await.unwrap();
    let store = open(0);
    assert_eq!(store.recovery_report().frames_scanned, 0);
    assert_eq!(
        store.stream_version(&sid("order-2")).await.unwrap(),
        Some(0)
    );
    store.close().await.unwrap();
}

/// Groups are written as whole pages around the page cache, starting at the page that
/// holds the previous group's end: appends of every size, in segments whose size is not
/// a multiple of a page (their last page goes through the cache), read back the same
/// before and after a reopen, while reads map the pages being written again.
#[tokio::test(flavor = "multi_thread")]
async fn groups_sharing_pages_read_back_in_segments_of_any_size() {
    for segment_size in [8192u64, 9_999, 70_001] {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            LogStore::builder(dir.path())
                .segment_size(segment_size)
                .open()
                .unwrap()
        };
        let store = open();
        let s = sid("pages-1");
        let mut expected = Vec::new();
        for i in 0..120usize {
            let events: Vec<Event> = (0..1 + i % 5)
                .map(|k| {
                    let body = "x".repeat((i * 37 + k * 101) % 1500);
                    let n = NewEvent::new("E", serde_json::json!({ "i": i, "body": body }));
                    Enricher::new("svc").enrich(n).unwrap()
                })
                .collect();
            expected.extend(events.iter().map(|e| e.event_id));
            store
                .append(&s, ExpectedVersion::Any, events)
                .await
                .unwrap();
            // Read everything after each append: the last page is mapped while the next
            // group writes it again.
            let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
            let ids: Vec<_> = read.iter().map(|e| e.event.event_id).collect();
            assert_eq!(ids, expected, "segment size {segment_size}, append {i}");
        }
        drop(store);
        let store = open();
        let read = store.read_stream(&s, ReadStream::forward()).await.unwrap();
        let ids: Vec<_> = read.iter().map(|e| e.event.event_id).collect();
        assert_eq!(ids, expected, "segment size {segment_size}, after reopen");
        store
            .append(&s, ExpectedVersion::Any, vec![ev("After", None)])
            .await
            .unwrap();
        drop(store);
        let report = tidings_log::verify(dir.path()).unwrap();
        assert!(report.is_ok(), "segment size {segment_size}: {report:?}");
        assert_eq!(report.events, expected.len() as u64 + 1);
    }
}
