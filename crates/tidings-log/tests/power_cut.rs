//! The store on a file system that loses everything not synced at a power cut
//! (`tidings-lossyfs`): a new store's directory must itself be durable, whoever created
//! it, or a power cut takes every acknowledged event away with it. (The power-cut soak
//! of the whole server is `crates/tidings-cli/tests/power_cut.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::path::Path;

use tidings::{
    Enricher, EventAppender, EventReader, ExpectedVersion, NewEvent, ReadStream, StreamId,
};
use tidings_log::LogStore;
use tidings_lossyfs::{LossyDisk, Mount};

const TEST: &str = "tidings-log power_cut";

fn mount(disk: &LossyDisk, dir: &Path) -> Option<Mount> {
    match disk.mount(dir) {
        Ok(m) => Some(m),
        Err(e) => {
            tidings_testkit::services::skip_or_fail(
                TEST,
                &format!("FUSE is unavailable here: {e}"),
            );
            None
        }
    }
}

/// Opens a store in `data` (created by `precreate` or by the store), appends one event,
/// cuts the power and checks the event is there after it.
async fn survives_a_cut(data_under_mount: &str, precreate: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path();
    let disk = LossyDisk::new();
    let Some(mut m) = mount(&disk, mnt) else {
        return;
    };
    let data = mnt.join(data_under_mount);
    if precreate {
        std::fs::create_dir_all(&data).unwrap(); // never synced in its parent
    }
    let store = LogStore::builder(&data)
        .segment_size(64 << 10)
        .open()
        .unwrap();
    let stream = StreamId::new("power-cut").unwrap();
    let event = Enricher::new("power-cut")
        .enrich(NewEvent::new("Acknowledged", serde_json::json!({"n": 1})))
        .unwrap();
    let id = event.event_id;
    store
        .append(&stream, ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    disk.cut_power();
    let _ = store.close().await; // fails: the disk is dead
    drop(store);
    unmount(&mut m);
    disk.power_on();
    let mut m = disk.mount(mnt).unwrap();
    let store = LogStore::open(&data).unwrap_or_else(|e| {
        panic!("{data_under_mount} (precreated: {precreate}): the store does not open: {e}")
    });
    let events = store
        .read_stream(&stream, ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.event.event_id).collect::<Vec<_>>(),
        vec![id],
        "{data_under_mount} (precreated: {precreate}): the acknowledged event is gone"
    );
    store.close().await.unwrap();
    drop(store);
    unmount(&mut m);
}

/// Unmounts, waiting for the store's last threads to let go of their files.
fn unmount(m: &mut Mount) {
    let mut tries = 0;
    while let Err(e) = m.unmount() {
        tries += 1;
        assert!(tries < 500, "{e}");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_store_directory_is_durable_in_its_parent() {
    survives_a_cut("data", false).await;
    survives_a_cut("a/b/data", false).await;
    survives_a_cut("data", true).await;
}
