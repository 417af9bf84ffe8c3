//! Tests on the simulated disk: power loss at random cut points, a full disk, a failing
//! fsync. Randomized tests print their seed; `TIDINGS_SEED=<n>` replays one, and
//! `TIDINGS_SOAK=<factor>` multiplies the rounds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tidings_core::{
    AppendResult, Enricher, Event, EventAppender, EventReader, ExpectedVersion, NewEvent, ReadAll,
    StoreError, StreamId,
};
use uuid::Uuid;

use crate::storage::sim::{Rng, SimStorage};
use crate::{LogStore, index_snapshot};

fn event(batch: &str, n: usize) -> Event {
    Enricher::new("sim")
        .enrich(
            NewEvent::new(
                "Tested",
                serde_json::json!({"batch": batch, "pad": "x".repeat(n * 37 % 300)}),
            )
            .with_meta("batch", batch)
            .with_meta("n", n.to_string()),
        )
        .unwrap_or_else(|e| panic!("test event: {e}"))
}

fn sid(s: &str) -> StreamId {
    StreamId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

/// An acknowledged append: its result and its event ids.
#[derive(Clone, Debug)]
struct Acked {
    stream: StreamId,
    result: AppendResult,
    ids: Vec<Uuid>,
}

const DIR: &str = "/sim/store";

fn open(disk: &SimStorage) -> Result<LogStore, crate::LogError> {
    LogStore::builder(DIR)
        .segment_size(16 << 10)
        .index_snapshot_every(25)
        .storage(disk.clone())
        .open()
}

/// Checks the invariants after a crash: acknowledged appends present exactly once where
/// they were acknowledged, no partial batch, gap-free order.
async fn check_after_crash(store: &LogStore, acked: &[Acked]) {
    let all = store
        .read_all(ReadAll::new(0, usize::MAX))
        .await
        .unwrap_or_else(|e| panic!("read_all after recovery: {e}"));
    let mut by_id = HashMap::new();
    for (i, e) in all.iter().enumerate() {
        assert_eq!(
            e.position, i as u64,
            "global order has a gap or a repeat at {i}"
        );
        assert!(
            by_id.insert(e.event_id, e).is_none(),
            "event {} appears twice",
            e.event_id
        );
    }
    for a in acked {
        for (k, id) in a.ids.iter().enumerate() {
            let e = by_id
                .get(id)
                .unwrap_or_else(|| panic!("acknowledged event {id} of {a:?} is missing"));
            assert_eq!(
                e.position,
                a.result.first_position + k as u64,
                "position of {id}"
            );
            assert_eq!(
                e.revision,
                a.result.first_revision + k as u64,
                "revision of {id}"
            );
            assert_eq!(e.stream, a.stream);
        }
    }
    let mut batches: HashMap<&str, Vec<u64>> = HashMap::new();
    for e in &all {
        let b = e
            .metadata
            .extra
            .get("batch")
            .map(String::as_str)
            .unwrap_or("");
        batches.entry(b).or_default().push(e.position);
    }
    for e in &all {
        let b = e
            .metadata
            .extra
            .get("batch")
            .map(String::as_str)
            .unwrap_or("");
        let n: usize = e
            .metadata
            .extra
            .get("n")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let ps = &batches[b];
        assert_eq!(ps.len(), n, "batch {b} is partly visible: {ps:?}");
        assert!(
            ps.windows(2).all(|w| w[1] == w[0] + 1),
            "batch {b} is not contiguous"
        );
    }
}

#[test]
fn power_loss_at_random_cut_points_keeps_every_acknowledged_append() {
    let seed = tidings_testkit::seed::seed("power_loss_at_random_cut_points");
    let mut rng = Rng(seed);
    let rounds = tidings_testkit::seed::rounds(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut cuts = 0;
    let mut torn = 0;
    for round in 0..rounds {
        let disk = SimStorage::new();
        let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
        let writers = 1 + rng.below(4) as usize;
        let per_writer = 5 + rng.below(40) as usize;
        let snapshots_wanted = 1 + rng.below(4);
        let store = open(&disk).unwrap_or_else(|e| panic!("round {round}: open: {e}"));
        let acked_count = Arc::new(AtomicUsize::new(0));
        disk.capture_before_syncs(acked_count.clone(), 150, rng.next_u64());
        let mut snapshots = Vec::new();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for w in 0..writers {
                let store = store.clone();
                let acked = acked.clone();
                let acked_count = acked_count.clone();
                let mut wr = Rng(rng.next_u64());
                tasks.push(tokio::spawn(async move {
                    for i in 0..per_writer {
                        let n = 1 + wr.below(5) as usize;
                        let batch = format!("{round}-{w}-{i}");
                        let events: Vec<Event> = (0..n).map(|_| event(&batch, n)).collect();
                        let ids = events.iter().map(|e| e.event_id).collect();
                        let stream = sid(&format!("s-{w}-{}", wr.below(3)));
                        match store.append(&stream, ExpectedVersion::Any, events).await {
                            Ok(result) => {
                                let mut list = acked.lock().unwrap_or_else(|p| p.into_inner());
                                list.push(Acked {
                                    stream,
                                    result,
                                    ids,
                                });
                                acked_count.store(list.len(), Ordering::SeqCst);
                            }
                            Err(e) => panic!("append failed: {e}"),
                        }
                    }
                }));
            }
            // Cut the power at random moments while the writers run.
            for _ in 0..snapshots_wanted {
                for _ in 0..rng.below(20) {
                    tokio::task::yield_now().await;
                }
                tokio::time::sleep(std::time::Duration::from_micros(rng.below(2000))).await;
                let guard = acked.lock().unwrap_or_else(|p| p.into_inner());
                let after = disk.power_loss(&mut rng);
                snapshots.push((after, guard.clone()));
            }
            for t in tasks {
                t.await.unwrap_or_else(|e| panic!("{e}"));
            }
        });
        drop(store);
        let all_acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (image, marker) in disk.captured() {
            snapshots.push((image, all_acked[..marker].to_vec()));
        }
        snapshots.push((disk.power_loss(&mut rng), all_acked));
        for (after, acked) in snapshots {
            cuts += 1;
            let store = open(&after)
                .unwrap_or_else(|e| panic!("round {round}: reopen after power loss: {e}"));
            torn += usize::from(store.recovery_report().torn_tail.is_some());
            rt.block_on(check_after_crash(&store, &acked));
            // The recovered store takes appends and survives another power loss.
            rt.block_on(async {
                store
                    .append(&sid("after"), ExpectedVersion::Any, vec![event("after", 1)])
                    .await
                    .unwrap_or_else(|e| panic!("append after recovery: {e}"));
            });
            let again = after.power_loss(&mut rng);
            drop(store);
            let store = open(&again).unwrap_or_else(|e| panic!("second reopen: {e}"));
            rt.block_on(check_after_crash(&store, &acked));
        }
    }
    println!("{cuts} cut points, {torn} torn tails recovered");
    assert!(cuts >= rounds);
}

#[test]
fn a_full_disk_stops_the_store_and_loses_nothing_acknowledged() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let disk = SimStorage::new();
    let store = open(&disk).unwrap_or_else(|e| panic!("{e}"));
    // Room for the first segment's remainder, not for a second one.
    disk.set_space_left(Some(4096));
    let mut acked = Vec::new();
    let mut refused = None;
    rt.block_on(async {
        for i in 0..200 {
            let events = vec![event(&format!("b{i}"), 1)];
            let ids = events.iter().map(|e| e.event_id).collect();
            match store
                .append(&sid("full"), ExpectedVersion::Any, events)
                .await
            {
                Ok(result) => acked.push(Acked {
                    stream: sid("full"),
                    result,
                    ids,
                }),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
    });
    let err = refused.unwrap_or_else(|| panic!("the disk never filled up"));
    assert!(
        matches!(&err, StoreError::Stopped(m) if m.contains("No space")),
        "{err}"
    );
    let again = rt.block_on(store.append(&sid("full"), ExpectedVersion::Any, vec![event("x", 1)]));
    assert!(
        matches!(again, Err(StoreError::Stopped(_))),
        "a stopped store must refuse appends"
    );
    assert!(store.stopped().is_some());
    assert!(!acked.is_empty());
    drop(store);
    disk.set_space_left(None);
    let store = open(&disk).unwrap_or_else(|e| panic!("reopen once space is back: {e}"));
    rt.block_on(check_after_crash(&store, &acked));
    let store2 = store.clone();
    rt.block_on(async move {
        store2
            .append(&sid("full"), ExpectedVersion::Any, vec![event("y", 1)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
}

#[test]
fn a_failed_fsync_stops_the_store_and_is_never_retried() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let disk = SimStorage::new();
    let store = open(&disk).unwrap_or_else(|e| panic!("{e}"));
    let mut acked = Vec::new();
    rt.block_on(async {
        for i in 0..10 {
            let events = vec![event(&format!("ok{i}"), 1)];
            let ids = events.iter().map(|e| e.event_id).collect();
            let result = store
                .append(&sid("f"), ExpectedVersion::Any, events)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            acked.push(Acked {
                stream: sid("f"),
                result,
                ids,
            });
        }
        // Lone appends on a multi-threaded runtime commit inline: the failing fsync
        // below happens on the appending thread, not the writer thread.
        assert_eq!(store.write_stats().inline_groups, 10);
        disk.fail_syncs();
        let e = store
            .append(&sid("f"), ExpectedVersion::Any, vec![event("bad", 1)])
            .await;
        assert!(
            matches!(&e, Err(StoreError::Stopped(m)) if m.contains("syncing")),
            "{e:?}"
        );
        let e = store
            .append(&sid("f"), ExpectedVersion::Any, vec![event("bad2", 1)])
            .await;
        assert!(matches!(e, Err(StoreError::Stopped(_))));
    });
    let after = disk.power_loss(&mut Rng(7));
    drop(store);
    let store = open(&after).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(check_after_crash(&store, &acked));
}

#[test]
fn a_segment_whose_creation_was_cut_short_is_removed() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let disk = SimStorage::new();
    let store = open(&disk).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        store
            .append(&sid("a"), ExpectedVersion::Any, vec![event("a", 1)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
    drop(store);
    // A new, empty segment with a zeroed header, as a crash right after creating it leaves.
    let path = Path::new(DIR).join(crate::segment::file_name(1));
    let f = crate::storage::Storage::open(&disk, &path, crate::storage::OpenMode::CreateNew)
        .unwrap_or_else(|e| panic!("{e}"));
    f.allocate(4096).unwrap_or_else(|e| panic!("{e}"));
    crate::storage::Storage::sync_dir(&disk, Path::new(DIR)).unwrap_or_else(|e| panic!("{e}"));
    index_snapshot::remove(&disk, Path::new(DIR)).unwrap_or_else(|e| panic!("{e}"));
    let store = open(&disk).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rt.block_on(store.head()).unwrap_or_else(|e| panic!("{e}")),
        Some(0)
    );
    assert!(
        !crate::storage::Storage::exists(&disk, &path),
        "the unwritten segment is gone"
    );
}

/// A store whose appends all go through the writer thread (and so through the sync
/// thread), never inline.
fn open_queued(disk: &SimStorage) -> LogStore {
    LogStore::builder(DIR)
        .segment_size(1 << 20)
        .inline_commits(false)
        .storage(disk.clone())
        .open()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Releases held syncs when dropped, so a failing assertion ends the test instead of
/// leaving the store's threads waiting at the gate.
struct ReleaseSyncs(SimStorage);

impl Drop for ReleaseSyncs {
    fn drop(&mut self) {
        self.0.release_syncs();
    }
}

/// Waits (up to a generous bound, so a broken store fails instead of hanging) until
/// more than `bytes` are written and not synced: the writer has written a group behind
/// one that is being synced.
async fn written_beyond(disk: &SimStorage, bytes: usize) {
    for _ in 0..3000 {
        if disk.unsynced_bytes() > bytes {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("no group was written behind the one being synced");
}

/// Holds syncs and appends one event to `stream` in the background; returns once its
/// group is written and its sync is waiting, with the task and the unsynced bytes.
async fn append_held_at_sync(
    store: &LogStore,
    disk: &SimStorage,
    stream: &str,
    e: Event,
) -> (
    tokio::task::JoinHandle<Result<AppendResult, StoreError>>,
    usize,
) {
    disk.hold_syncs();
    let s = store.clone();
    let stream = sid(stream);
    let task = tokio::spawn(async move { s.append(&stream, ExpectedVersion::Any, vec![e]).await });
    let d = disk.clone();
    tokio::task::spawn_blocking(move || d.wait_for_held_syncs(1))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let written = disk.unsynced_bytes();
    assert!(written > 0, "a group is written before its sync");
    (task, written)
}

#[test]
fn a_group_written_behind_one_being_synced_is_acknowledged_after_it() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let disk = SimStorage::new();
    let store = open_queued(&disk);
    let (first_id, images) = rt.block_on(async {
        // Several sectors long, so a power loss can drop part of it and keep the next.
        let first = Enricher::new("sim")
            .enrich(
                NewEvent::new("Tested", serde_json::json!({"pad": "x".repeat(4000)}))
                    .with_meta("batch", "first")
                    .with_meta("n", "1"),
            )
            .unwrap_or_else(|e| panic!("test event: {e}"));
        let first_id = first.event_id;
        let retry = first.clone();
        let _release = ReleaseSyncs(disk.clone());
        let (a, written) = append_held_at_sync(&store, &disk, "p", first).await;
        // Checked against the group being synced: the stream's next revision, and a
        // retry of its event (an idempotent replay).
        let s = store.clone();
        let b = tokio::spawn(async move {
            s.append(
                &sid("p"),
                ExpectedVersion::Exact(0),
                vec![event("second", 2)],
            )
            .await
        });
        written_beyond(&disk, written).await;
        let s = store.clone();
        let c =
            tokio::spawn(
                async move { s.append(&sid("p"), ExpectedVersion::Any, vec![retry]).await },
            );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!a.is_finished(), "acknowledged before its sync");
        assert!(!b.is_finished(), "acknowledged before its sync");
        assert!(
            !c.is_finished(),
            "a replay of an event not yet durable was acknowledged"
        );
        // A power loss now may keep any part of both groups: recovery must never take
        // the second for proof that the first was synced (which would make a torn first
        // group "corruption"), and never keep the second without the first.
        let images: Vec<SimStorage> = (0..200).map(|k| disk.power_loss(&mut Rng(k))).collect();
        disk.release_syncs();
        let a = a.await.unwrap_or_else(|e| panic!("{e}"));
        let b = b.await.unwrap_or_else(|e| panic!("{e}"));
        let c = c.await.unwrap_or_else(|e| panic!("{e}"));
        let a = a.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.first_revision, a.first_position), (0, 0));
        let b = b.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((b.first_revision, b.first_position), (1, 1));
        assert_eq!(c.unwrap_or_else(|e| panic!("{e}")), a);
        assert_eq!(disk.unsynced_bytes(), 0);
        (first_id, images)
    });
    for (k, img) in images.iter().enumerate() {
        let store = open(img).unwrap_or_else(|e| panic!("image {k}: {e}"));
        let all = rt
            .block_on(store.read_all(ReadAll::new(0, 10)))
            .unwrap_or_else(|e| panic!("image {k}: {e}"));
        assert!(all.len() <= 2, "image {k}");
        if let Some(e) = all.first() {
            assert_eq!(
                e.event_id, first_id,
                "image {k}: the second group without the first"
            );
        }
    }
    drop(store);
    let store = open(&disk.power_loss(&mut Rng(3))).unwrap_or_else(|e| panic!("{e}"));
    let all = rt
        .block_on(store.read_all(ReadAll::new(0, 10)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 2);
}

#[test]
fn a_failed_sync_fails_every_group_behind_it() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let disk = SimStorage::new();
    let store = open_queued(&disk);
    rt.block_on(async {
        let _release = ReleaseSyncs(disk.clone());
        let (a, written) = append_held_at_sync(&store, &disk, "a", event("a", 1)).await;
        let s = store.clone();
        let b = tokio::spawn(async move {
            s.append(&sid("b"), ExpectedVersion::Any, vec![event("b", 1)])
                .await
        });
        written_beyond(&disk, written).await;
        disk.fail_syncs();
        disk.release_syncs();
        for r in [a, b] {
            let r = r.await.unwrap_or_else(|e| panic!("{e}"));
            assert!(
                matches!(&r, Err(StoreError::Stopped(m)) if m.contains("syncing")),
                "{r:?}"
            );
        }
        let r = store
            .append(&sid("c"), ExpectedVersion::Any, vec![event("c", 1)])
            .await;
        assert!(matches!(r, Err(StoreError::Stopped(m)) if m.contains("syncing")));
    });
    let after = disk.power_loss(&mut Rng(5));
    drop(store);
    let store = open(&after).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(check_after_crash(&store, &[]));
}

#[test]
fn an_append_not_durable_within_its_deadline_times_out_and_a_retry_is_deduplicated() {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("{e}"));
    let disk = SimStorage::new();
    let store = LogStore::builder(DIR)
        .segment_size(1 << 20)
        .inline_commits(false)
        .append_timeout(std::time::Duration::from_millis(200))
        .storage(disk.clone())
        .open()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let event = Enricher::new("sim")
            .enrich(NewEvent::new("Tested", serde_json::json!({"n": 1})))
            .unwrap_or_else(|e| panic!("test event: {e}"));
        let release = ReleaseSyncs(disk.clone());
        disk.hold_syncs();
        let stream = sid("deadline");
        let first = store
            .append(&stream, ExpectedVersion::Any, vec![event.clone()])
            .await;
        match first {
            Err(StoreError::Timeout {
                outcome_unknown: true,
                after,
                ..
            }) => assert_eq!(after, std::time::Duration::from_millis(200)),
            other => panic!("expected a timeout with an unknown outcome, got {other:?}"),
        }
        // The write was not withdrawn: once the disk syncs again it becomes durable,
        // and a retry with the same event id answers it instead of writing it twice.
        drop(release);
        let retry = store
            .append(&stream, ExpectedVersion::Any, vec![event.clone()])
            .await
            .unwrap_or_else(|e| panic!("retry: {e}"));
        assert_eq!(retry.first_revision, 0);
        let events = store
            .read_stream(&stream, tidings_core::ReadStream::forward())
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert_eq!(events.len(), 1, "the event is stored exactly once");
        assert_eq!(events[0].event_id, event.event_id);
    });
}
