//! One test per kind of damaged file, each building that exact file and checking the
//! documented result. (A full disk is tested on the simulated disk, in the crate's
//! `fault_tests`, because a real one cannot be filled safely here.)
//!
//! | damage                                   | result                                                        |
//! |------------------------------------------|---------------------------------------------------------------|
//! | flipped bits in a record the open scans  | open fails: `LogError::Corrupt` with file and byte offset     |
//! | flipped bits in a snapshotted record    | open succeeds; reading it is `StoreError::Corrupt`; verify fails |
//! | torn write at the end                    | open truncates it, reports it; nothing acknowledged is lost    |
//! | truncated sealed segment                 | open fails: `LogError::Corrupt` naming the segment             |
//! | last segment cut below the snapshot    | open fails: `LogError::Corrupt` naming the segment             |
//! | missing index snapshot                 | rebuilt from the log, reported, saved again                    |
//! | stale index snapshot                   | a prefix is used and the rest scanned; a foreign one is rebuilt |
//! | any of the above, with salvage           | read-only open with every event before the damage              |
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::path::{Path, PathBuf};

use tidings::{
    Enricher, Event, EventAppender, EventReader, ExpectedVersion, NewEvent, ReadAll, StoreError,
    StreamId,
};
use tidings_log::{IndexCheck, IndexSource, LogError, LogStore, record, segment};

fn ev(i: usize) -> Event {
    Enricher::new("svc")
        .enrich(
            NewEvent::new("E", serde_json::json!({"i": i, "pad": "x".repeat(200)}))
                .with_correlation_id("c"),
        )
        .unwrap()
}

/// Writes `n` single-event appends and closes the store; returns every event.
async fn build(dir: &Path, n: usize, segment_size: u64) -> Vec<tidings::RecordedEvent> {
    let store = LogStore::builder(dir)
        .segment_size(segment_size)
        .open()
        .unwrap();
    for i in 0..n {
        let s = StreamId::new(&format!("s-{}", i % 3)).unwrap();
        store
            .append(&s, ExpectedVersion::Any, vec![ev(i)])
            .await
            .unwrap();
    }
    let all = store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap();
    store.close().await.unwrap();
    all
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// Byte offsets of the frames in a segment file.
fn frame_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = segment::HEADER_LEN as usize;
    let mut v = Vec::new();
    while let Ok(f) = record::decode_frame(&bytes[at..]) {
        v.push(at as u64);
        at += f.header.len as usize;
    }
    v
}

fn flip(path: &Path, offset: u64) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= 0x10;
    std::fs::write(path, b).unwrap();
}

fn remove_snapshot(dir: &Path) {
    std::fs::remove_file(dir.join("index.ckpt")).unwrap();
}

fn open_err(dir: &Path) -> (PathBuf, u64) {
    match LogStore::open(dir) {
        Err(LogError::Corrupt { file, offset, .. }) => (file, offset),
        Err(e) => panic!("expected corruption, got {e}"),
        Ok(_) => panic!("expected corruption, the store opened"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_bits_in_a_middle_record_fail_the_open_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 30, 1 << 20).await;
    let seg = segments(dir.path()).remove(0);
    let at = frame_offsets(&seg)[15];
    flip(&seg, at + 60);
    remove_snapshot(dir.path());
    let (file, offset) = open_err(dir.path());
    assert_eq!((file, offset), (seg.clone(), at));

    let report = tidings_log::verify(dir.path()).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.damage.as_ref().map(|d| d.offset), Some(at));

    let salvaged = LogStore::builder(dir.path()).salvage(true).open().unwrap();
    assert_eq!(
        salvaged.recovery_report().damage.as_ref().map(|d| d.offset),
        Some(at)
    );
    let kept = salvaged
        .read_all(ReadAll::new(0, usize::MAX))
        .await
        .unwrap();
    assert_eq!(kept, all[..15]);
    let refused = salvaged
        .append(
            &StreamId::new("s-0").unwrap(),
            ExpectedVersion::Any,
            vec![ev(0)],
        )
        .await;
    assert!(matches!(refused, Err(StoreError::Stopped(_))));
}

#[tokio::test(flavor = "multi_thread")]
async fn flipped_bits_under_the_index_snapshot_are_reported_by_reads_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 30, 1 << 20).await;
    let seg = segments(dir.path()).remove(0);
    let at = frame_offsets(&seg)[10];
    flip(&seg, at + 60);
    let store = LogStore::open(dir.path()).unwrap();
    let err = store
        .read_all(ReadAll::new(0, usize::MAX))
        .await
        .unwrap_err();
    match err {
        StoreError::Corrupt(m) => assert!(m.contains(&format!("at byte {at}")), "{m}"),
        other => panic!("expected corruption, got {other}"),
    }
    assert_eq!(
        store.read_all(ReadAll::new(11, 5)).await.unwrap().len(),
        5,
        "other records still read"
    );
    drop(store);
    let report = tidings_log::verify(dir.path()).unwrap();
    assert!(!report.is_ok());
    assert_eq!(report.damage.map(|d| (d.file, d.offset)), Some((seg, at)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_torn_tail_is_truncated_and_reported_without_losing_acknowledged_data() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 12, 1 << 20).await;
    let seg = segments(dir.path()).remove(0);
    let offs = frame_offsets(&seg);
    let last = *offs.last().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    let len = record::peek_len(&bytes[last as usize..]).unwrap() as usize;
    // Half of a copy of the last frame, written after it: a write cut by a crash.
    let end = last as usize + len;
    let mut torn = bytes.clone();
    torn[end..end + len / 2].copy_from_slice(&bytes[last as usize..last as usize + len / 2]);
    std::fs::write(&seg, torn).unwrap();
    let store = LogStore::open(dir.path()).unwrap();
    let t = store
        .recovery_report()
        .torn_tail
        .clone()
        .expect("a torn tail is reported");
    assert_eq!((t.file, t.offset), (seg.clone(), end as u64));
    assert_eq!(
        store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap(),
        all
    );
    store
        .append(
            &StreamId::new("s-1").unwrap(),
            ExpectedVersion::Any,
            vec![ev(99)],
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    drop(store);
    assert!(tidings_log::verify(dir.path()).unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_sealed_segment_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 60, 8192).await;
    let segs = segments(dir.path());
    assert!(segs.len() >= 3);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&segs[0])
        .unwrap();
    f.set_len(3000).unwrap();
    drop(f);
    let (file, offset) = open_err(dir.path());
    assert_eq!((file, offset), (segs[0].clone(), 3000));
    remove_snapshot(dir.path());
    let (file, _) = open_err(dir.path());
    assert_eq!(file, segs[0]);
    let salvaged = LogStore::builder(dir.path()).salvage(true).open().unwrap();
    let kept = salvaged
        .read_all(ReadAll::new(0, usize::MAX))
        .await
        .unwrap();
    assert!(!kept.is_empty() && kept.len() < all.len());
    assert_eq!(kept, all[..kept.len()]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_last_segment_cut_below_the_index_snapshot_fails_the_open() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 20, 1 << 20).await;
    let seg = segments(dir.path()).remove(0);
    let cut = frame_offsets(&seg)[10] + 5;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(cut).unwrap();
    drop(f);
    assert_eq!(open_err(dir.path()), (seg, cut));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_index_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let all = build(dir.path(), 50, 8192).await;
    remove_snapshot(dir.path());
    assert_eq!(
        tidings_log::verify(dir.path()).unwrap().index,
        IndexCheck::Missing
    );
    let store = LogStore::builder(dir.path())
        .segment_size(8192)
        .open()
        .unwrap();
    assert!(matches!(
        store.recovery_report().index,
        IndexSource::Rebuilt(_)
    ));
    assert_eq!(
        store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap(),
        all
    );
    assert_eq!(
        store
            .read_correlation("c", 0, usize::MAX)
            .await
            .unwrap()
            .len(),
        50
    );
    assert!(
        dir.path().join("index.ckpt").exists(),
        "the rebuilt index is saved"
    );
    drop(store);
    let report = tidings_log::verify(dir.path()).unwrap();
    assert_eq!(report.index, IndexCheck::Current { covered: 50 });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_index_is_used_as_a_prefix_and_a_foreign_one_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 20, 8192).await;
    let old = std::fs::read(dir.path().join("index.ckpt")).unwrap();
    let store = LogStore::builder(dir.path())
        .segment_size(8192)
        .open()
        .unwrap();
    for i in 0..40 {
        store
            .append(
                &StreamId::new("later").unwrap(),
                ExpectedVersion::Any,
                vec![ev(i)],
            )
            .await
            .unwrap();
    }
    let all = store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    std::fs::write(dir.path().join("index.ckpt"), &old).unwrap();
    let store = LogStore::builder(dir.path())
        .segment_size(8192)
        .open()
        .unwrap();
    assert_eq!(store.recovery_report().index, IndexSource::Snapshot);
    assert!(store.recovery_report().frames_scanned >= 40);
    assert_eq!(
        store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap(),
        all
    );
    assert_eq!(
        store
            .stream_version(&StreamId::new("later").unwrap())
            .await
            .unwrap(),
        Some(39)
    );
    drop(store);

    let other = tempfile::tempdir().unwrap();
    build(other.path(), 5, 1 << 20).await;
    std::fs::copy(
        other.path().join("index.ckpt"),
        dir.path().join("index.ckpt"),
    )
    .unwrap();
    assert!(matches!(
        tidings_log::verify(dir.path()).unwrap().index,
        IndexCheck::Stale(_) | IndexCheck::Mismatch(_)
    ));
    let store = LogStore::builder(dir.path())
        .segment_size(8192)
        .open()
        .unwrap();
    assert!(matches!(
        store.recovery_report().index,
        IndexSource::Rebuilt(_)
    ));
    assert_eq!(
        store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap(),
        all
    );
}

/// Reads of sealed segments go through a memory mapping; they still check every frame's
/// checksum, so bits flipped on disk under an open store (in place, the file keeping its
/// length) are a typed error, not wrong data.
#[tokio::test(flavor = "multi_thread")]
async fn bits_flipped_under_an_open_store_are_caught_by_mapped_reads() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::builder(dir.path())
        .segment_size(64 << 10)
        .open()
        .unwrap();
    for i in 0..400 {
        let s = StreamId::new(&format!("s-{}", i % 3)).unwrap();
        store
            .append(&s, ExpectedVersion::Any, vec![ev(i)])
            .await
            .unwrap();
    }
    let before = store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap();
    assert_eq!(before.len(), 400);
    let sealed = &segments(dir.path())[0];
    let at = frame_offsets(sealed)[5] + 40;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(sealed)
        .unwrap();
    let mut byte = [0u8; 1];
    std::fs::File::open(sealed)
        .unwrap()
        .read_exact_at(&mut byte, at)
        .unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();
    match store.read_all(ReadAll::new(0, usize::MAX)).await {
        Err(StoreError::Corrupt(m)) => assert!(m.contains(&sealed.display().to_string()), "{m}"),
        other => panic!("expected corruption, got {other:?}"),
    }
    file.write_all_at(&byte, at).unwrap();
    assert_eq!(
        store.read_all(ReadAll::new(0, usize::MAX)).await.unwrap(),
        before
    );
}
