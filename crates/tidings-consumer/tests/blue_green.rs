//! Blue/green projection rebuilds: a reader running beside a rebuild never sees an empty
//! or partial read model (and the in-place reset rebuild does show it one); a rebuild
//! interrupted half-way resumes after a restart with exact counts; two rebuilds of one
//! projection cannot both swap.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tidings::bus::HandlerError;
use tidings::consumer::{CheckpointStore, InMemoryCheckpoints, StoreCheckpoints};
use tidings::projection::builtin::{Categories, EventTypes};
use tidings::projection::{
    CheckpointPolicy, Projection, ProjectionError, ProjectionRunner, StoredModel, StoredVersions,
    VersionedProjection, VersionedRunner, load_versions,
};
use tidings::{
    Enricher, EventAppender, EventReader, ExpectedVersion, InMemoryStore, NewEvent, ReadStream,
    RecordedEvent, StreamId,
};

const STREAM: &str = "item-1";
const BEFORE: u64 = 1_500;
const DURING: u64 = 300;

async fn append(store: &InMemoryStore, stream: &str, n: u64) {
    let enricher = Enricher::new("test");
    let events = (0..n)
        .map(|i| {
            enricher
                .enrich(NewEvent::new("ItemAdded", json!({ "i": i })))
                .unwrap()
        })
        .collect();
    store
        .append(
            &StreamId::new(stream).unwrap(),
            ExpectedVersion::Any,
            events,
        )
        .await
        .unwrap();
}

/// The events of one stream, applied in order: `count` events means revisions
/// `0..count`, and `apply` refuses a gap. It yields after each event, so a reader task
/// on the same single-threaded runtime runs between any two events.
#[derive(Debug, Default)]
struct Sequence {
    count: u64,
}

impl Projection for Sequence {
    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.stream.as_str() == STREAM {
            if event.revision != self.count {
                return Err(HandlerError::new(format!(
                    "gap: revision {} after {} events",
                    event.revision, self.count
                )));
            }
            self.count += 1;
        }
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn reset(&mut self) -> Result<(), HandlerError> {
        self.count = 0;
        Ok(())
    }
}

/// In-memory versions of [`Sequence`] (each opens empty; checkpoints in memory too).
#[derive(Default)]
struct SequenceVersions {
    retired: Arc<Mutex<Vec<u32>>>,
}

impl VersionedProjection for SequenceVersions {
    type Model = Sequence;
    async fn open(&self, _version: u32) -> Result<Sequence, HandlerError> {
        Ok(Sequence::default())
    }
    async fn retire(&self, version: u32) -> Result<(), HandlerError> {
        self.retired.lock().unwrap().push(version);
        Ok(())
    }
}

/// What a reader saw: (version, events in the model), in order.
type Observations = Vec<(u32, u64)>;

/// The reader's contract: every observation holds at least the `floor` events the
/// model had before the rebuild began, counts never drop, versions never go back.
fn check(observations: &Observations, floor: u64) -> Result<(), String> {
    let mut last = (0, 0);
    for (i, &(version, count)) in observations.iter().enumerate() {
        if count < floor {
            return Err(format!(
                "observation {i}: version {version} holds {count} events, fewer than the {floor} before the rebuild"
            ));
        }
        if count < last.1 || version < last.0 {
            return Err(format!(
                "observation {i}: (version {version}, {count} events) after (version {}, {} events)",
                last.0, last.1
            ));
        }
        last = (version, count);
    }
    Ok(())
}

#[tokio::test]
async fn a_reader_beside_a_blue_green_rebuild_never_sees_an_empty_or_partial_model() {
    let store = InMemoryStore::new();
    append(&store, STREAM, BEFORE).await;
    let versions = SequenceVersions::default();
    let retired = Arc::clone(&versions.retired);
    let mut runner = VersionedRunner::builder("sequence", store.clone(), versions)
        .checkpoints(InMemoryCheckpoints::new())
        .open()
        .await
        .unwrap();
    runner.catch_up().await.unwrap();
    let live = runner.live();
    assert_eq!(live.read().await.count, BEFORE);

    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (live, done) = (live.clone(), Arc::clone(&done));
        async move {
            let mut seen = Observations::new();
            while !done.load(Ordering::SeqCst) {
                let view = live.read().await;
                seen.push((view.version(), view.count));
                drop(view);
                tokio::task::yield_now().await;
            }
            seen
        }
    });
    // Events keep coming while the rebuild runs.
    let writer = tokio::spawn({
        let store = store.clone();
        async move {
            for _ in 0..DURING {
                append(&store, STREAM, 1).await;
                tokio::task::yield_now().await;
            }
        }
    });

    let report = runner.rebuild().await.unwrap();
    writer.await.unwrap();
    runner.catch_up().await.unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await; // the reader looks at the new version
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    assert_eq!((report.from_version, report.to_version), (1, 2));
    assert_eq!(report.retired, vec![1]);
    assert_eq!(*retired.lock().unwrap(), vec![1]);
    let during = seen.iter().filter(|(v, _)| *v == 1).count();
    let after = seen.iter().filter(|(v, _)| *v == 2).count();
    assert!(
        during > 100 && after > 0,
        "the reader ran beside the rebuild: {during} observations of version 1, {after} of version 2"
    );
    check(&seen, BEFORE).unwrap();
    // The old version followed the events written during the rebuild.
    assert!(
        seen.iter().any(|&(v, c)| v == 1 && c > BEFORE),
        "version 1 was kept current"
    );
    let view = live.read().await;
    assert_eq!((view.version(), view.count), (2, BEFORE + DURING));
}

/// The in-place rebuild (`reset`, then replay) under the same reader: it fails the
/// contract, which shows the contract can fail.
#[derive(Clone, Default)]
struct SharedSequence(Arc<tokio::sync::RwLock<Sequence>>);

impl Projection for SharedSequence {
    async fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.write().await.apply(event).await
    }
    async fn reset(&mut self) -> Result<(), HandlerError> {
        self.0.write().await.reset().await
    }
}

#[tokio::test]
async fn the_same_reader_beside_a_reset_rebuild_sees_an_empty_model() {
    let store = InMemoryStore::new();
    append(&store, STREAM, BEFORE).await;
    let shared = SharedSequence::default();
    let mut runner = ProjectionRunner::new("sequence", store.clone(), shared.clone())
        .checkpoints(InMemoryCheckpoints::new());
    runner.catch_up().await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let (model, done) = (shared.0.clone(), Arc::clone(&done));
        async move {
            let mut seen = Observations::new();
            while !done.load(Ordering::SeqCst) {
                seen.push((1, model.read().await.count));
                tokio::task::yield_now().await;
            }
            seen
        }
    });
    tokio::task::yield_now().await; // the reader looks once before the rebuild
    runner.rebuild().await.unwrap();
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert_eq!(seen.first(), Some(&(1, BEFORE)));
    let err = check(&seen, BEFORE).expect_err("a reset rebuild shows a partial model");
    // Right after the reset: the model held nothing but the first replayed event.
    let least = seen.iter().map(|&(_, c)| c).min();
    assert_eq!(least, Some(1), "{err}");
}

/// Counts events like [`EventTypes`], and fails at position `FAIL_AT` while it is set:
/// a crash half-way through a rebuild.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Flaky {
    events: u64,
}

static FAIL_AT: AtomicU64 = AtomicU64::new(u64::MAX);

impl StoredModel for Flaky {
    fn apply(&mut self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.position == FAIL_AT.load(Ordering::SeqCst) {
            return Err(HandlerError::new("the process died here"));
        }
        self.events += 1;
        Ok(())
    }
}

#[tokio::test]
async fn a_rebuild_interrupted_half_way_resumes_after_a_restart_with_exact_counts() {
    let store = InMemoryStore::new();
    for s in 0..10 {
        append(&store, &format!("item-{s}"), 200).await;
    }
    let open = |store: InMemoryStore| async move {
        VersionedRunner::builder(
            "flaky",
            store.clone(),
            StoredVersions::<_, Flaky>::new("flaky", store),
        )
        .checkpoint_policy(CheckpointPolicy::EveryEvents(100))
        .open()
        .await
        .unwrap()
    };
    let mut first = open(store.clone()).await;
    first.catch_up().await.unwrap();
    first.save_checkpoint().await.unwrap();
    let live = first.live();
    assert_eq!(live.read().await.model().events, 2_000);

    FAIL_AT.store(1_250, Ordering::SeqCst);
    let err = first.rebuild().await.unwrap_err();
    assert!(
        matches!(
            err,
            ProjectionError::Apply {
                position: 1_250,
                ..
            }
        ),
        "{err}"
    );
    // Readers still have version 1, whole.
    let view = live.read().await;
    assert_eq!((view.version(), view.model().events), (1, 2_000));
    drop(view);
    let versions = load_versions(&store, "flaky").await.unwrap();
    assert_eq!((versions.live, versions.building), (1, Some(2)));
    FAIL_AT.store(u64::MAX, Ordering::SeqCst);

    // Restart: a new runner serves version 1 as saved, and resumes version 2.
    drop(first);
    let mut second = open(store.clone()).await;
    assert_eq!(second.live_version(), 1);
    assert_eq!(second.live().read().await.model().events, 2_000);
    let report = second.rebuild().await.unwrap();
    assert!(report.resumed);
    assert_eq!((report.from_version, report.to_version), (1, 2));
    assert!(
        report.applied > 0 && report.applied < 2_000,
        "resumed from its checkpoint, applied {}",
        report.applied
    );
    assert_eq!(second.live().read().await.model().events, 2_000);
    let checkpoint = StoreCheckpoints::new(store.clone())
        .load("flaky-v2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.next, report.position);

    // Another restart serves version 2; the next rebuild fills version 3.
    drop(second);
    let mut third = open(store.clone()).await;
    assert_eq!(third.live_version(), 2);
    assert_eq!(third.live().read().await.model().events, 2_000);
    let report = third.rebuild().await.unwrap();
    assert_eq!(
        (report.to_version, report.resumed, report.applied),
        (3, false, 2_000)
    );
    assert_eq!(report.retired, vec![2]);
    let history: Vec<String> = store
        .read_stream(
            &StreamId::system("$projection-flaky").unwrap(),
            ReadStream::forward(),
        )
        .await
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e.event_type, e.data))
        .collect();
    assert_eq!(
        history,
        [
            r#"$ProjectionVersionStarted {"version":2}"#,
            r#"$ProjectionVersionStarted {"version":2}"#,
            r#"$ProjectionVersionLive {"version":2}"#,
            r#"$ProjectionVersionRetired {"version":1}"#,
            r#"$ProjectionVersionStarted {"version":3}"#,
            r#"$ProjectionVersionLive {"version":3}"#,
            r#"$ProjectionVersionRetired {"version":2}"#,
        ]
    );
}

#[tokio::test]
async fn two_rebuilds_of_one_projection_cannot_both_swap() {
    let store = InMemoryStore::new();
    append(&store, "order-1", 3).await;
    append(&store, "user-1", 2).await;
    let open = |store: InMemoryStore| async move {
        VersionedRunner::builder(
            "categories",
            store.clone(),
            StoredVersions::<_, Categories>::new("categories", store),
        )
        .open()
        .await
        .unwrap()
    };
    let mut a = open(store.clone()).await;
    let mut b = open(store.clone()).await;
    a.rebuild().await.unwrap();
    let err = b.rebuild().await.unwrap_err();
    assert!(
        matches!(err, ProjectionError::VersionConflict { .. }),
        "{err}"
    );
    let view = a.live().read().await.model().clone();
    assert_eq!(
        view.get("order").map(|c| (c.streams, c.events)),
        Some((1, 3))
    );
    assert_eq!(
        view.get("user").map(|c| (c.streams, c.events)),
        Some((1, 2))
    );
}

#[tokio::test]
async fn built_in_models_count_exactly_when_events_are_applied_again() {
    let store = InMemoryStore::new();
    append(&store, "order-1", 4).await;
    let open = |store: InMemoryStore| async move {
        VersionedRunner::builder(
            "event-types",
            store.clone(),
            StoredVersions::<_, EventTypes>::new("event-types", store),
        )
        .checkpoints(InMemoryCheckpoints::new()) // lost on restart: every event comes again
        .open()
        .await
        .unwrap()
    };
    let mut runner = open(store.clone()).await;
    runner.catch_up().await.unwrap();
    drop(runner);
    let mut again = open(store.clone()).await;
    assert_eq!(again.catch_up().await.unwrap(), 4);
    let live = again.live();
    let view = live.read().await;
    assert_eq!(view.model().count("ItemAdded"), 4);
    assert_eq!(view.next(), 4);
}
