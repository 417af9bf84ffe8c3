//! The file system mounted for real: what a program syncs survives a power cut, what it
//! does not sync is gone, and a dead disk refuses every request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use tidings_lossyfs::{LossyDisk, Mount};

const TEST: &str = "tidings-lossyfs mount";

/// Mounts `disk` on `dir`, or skips (fails under TIDINGS_REQUIRE_SERVICES=1) when this
/// machine cannot mount FUSE file systems.
fn mount(disk: &LossyDisk, dir: &Path) -> Option<Mount> {
    match disk.mount(dir) {
        Ok(m) => Some(m),
        Err(e) => {
            tidings_testkit::services::skip_or_fail(TEST, &format!("FUSE is unavailable: {e}"));
            None
        }
    }
}

fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    File::open(path)?.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn synced_data_and_entries_survive_a_power_cut_and_the_rest_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let disk = LossyDisk::new();
    let Some(mut m) = mount(&disk, dir) else {
        return;
    };

    std::fs::create_dir(dir.join("data")).unwrap();
    File::open(dir).unwrap().sync_all().unwrap(); // "data" is durable
    let data = dir.join("data");

    let mut kept = File::create(data.join("kept")).unwrap();
    kept.write_all(b"synced").unwrap();
    kept.sync_data().unwrap();
    kept.write_all(b" and more").unwrap(); // never synced
    File::create(data.join("created-late"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::write(data.join("unsynced-file"), b"x").unwrap();

    let tmp_snap = data.join("snap.tmp");
    let mut snap = File::create(&tmp_snap).unwrap();
    snap.write_all(b"snapshot").unwrap();
    snap.sync_data().unwrap();
    // Directory sync covers "kept", "created-late", "unsynced-file" (empty: its data
    // was not synced) and "snap.tmp"; the rename after it is not covered.
    File::open(&data).unwrap().sync_all().unwrap();
    std::fs::rename(&tmp_snap, data.join("snap")).unwrap();

    let big = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(data.join("kept"))
        .unwrap();
    big.write_all_at(b"SYNCED", 0).unwrap(); // overwrites synced bytes, unsynced
    assert_eq!(read(&data.join("kept")).unwrap(), b"SYNCED");

    disk.cut_power();
    let e = std::fs::read_dir(&data).map(|_| ()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "a dead disk answers EIO: {e}");
    assert!(big.sync_data().is_err(), "and syncs nothing");
    drop((kept, snap, big));
    m.unmount().unwrap();
    let report = disk.power_on();
    let mut m = mount(&disk, dir).unwrap();

    assert_eq!(read(&data.join("kept")).unwrap(), b"synced");
    assert_eq!(read(&data.join("created-late")).unwrap(), b"");
    assert_eq!(read(&data.join("unsynced-file")).unwrap(), b"");
    assert_eq!(read(&data.join("snap.tmp")).unwrap(), b"snapshot");
    assert_eq!(
        read(&data.join("snap")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(report.nodes_lost, 0, "{report:?}");
    assert!(report.files_reverted >= 2, "{report:?}");
    assert_eq!(report.dirs_reverted, 1, "{report:?}");
    let stats = disk.stats();
    assert_eq!(stats.cuts, 1);
    assert!(stats.refused >= 2 && stats.file_syncs >= 3 && stats.dir_syncs >= 2);
    m.unmount().unwrap();
}

#[test]
fn a_directory_never_synced_in_its_parent_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let disk = LossyDisk::new();
    let Some(mut m) = mount(&disk, dir) else {
        return;
    };
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    let mut f = File::create(dir.join("a/b/f")).unwrap();
    f.write_all(b"x").unwrap();
    f.sync_all().unwrap();
    File::open(dir.join("a/b")).unwrap().sync_all().unwrap();
    drop(f);
    disk.cut_power();
    m.unmount().unwrap();
    let report = disk.power_on();
    let mut m = mount(&disk, dir).unwrap();
    assert!(!dir.join("a").exists());
    assert_eq!(report.nodes_lost, 3);
    m.unmount().unwrap();
}

#[test]
fn a_busy_mount_refuses_to_unmount_and_can_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let disk = LossyDisk::new();
    let Some(mut m) = mount(&disk, dir) else {
        return;
    };
    assert!(disk.mount(dir).is_err(), "one mount at a time");
    let f = File::create(dir.join("open")).unwrap();
    let e = m.unmount().unwrap_err();
    assert!(e.to_string().contains("cannot unmount"), "{e}");
    assert!(dir.join("open").exists(), "still mounted");
    drop(f);
    m.unmount().unwrap();
    m.unmount().unwrap();
    assert!(!dir.join("open").exists());
}
