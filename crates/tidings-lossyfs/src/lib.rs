//! A FUSE file system that behaves like a disk whose write cache loses power: what a
//! program wrote but did not sync is gone after [`LossyDisk::cut_power`].
//!
//! It exists to run real programs (the `tidings serve` binary) through power cuts and
//! check that everything they acknowledged was durable. The rules (decision record
//! 0016):
//!
//! - `fdatasync`/`fsync` of a file makes its bytes and size durable;
//! - `fsync` of a directory makes its entries durable (creates, renames, unlinks in it);
//! - nothing else does: not `close`, not `rename`, not a later sync of another file;
//! - [`LossyDisk::cut_power`] freezes the durable state, and every request fails with
//!   `EIO` from then on (a dead disk acknowledges nothing);
//! - [`LossyDisk::power_on`] (with the file system unmounted) makes the visible state
//!   exactly the durable one — by default; [`LossyDisk::with_torn_writes`] also keeps a
//!   seeded random subset of the unsynced 512-byte sectors and of the directories'
//!   unsynced entries, as a disk that wrote part of its cache before dying.
//!
//! The binary `tidings-lossyfs MOUNTPOINT --control SOCKET` serves the same disk to other
//! processes, with `cut`, `restore`, `stats` and `quit` sent on a Unix socket.
//!
//! Everything lives in memory. Mounting needs `/dev/fuse` and either root (the mount is
//! made with `mount(2)` directly, no libfuse) or `fusermount3` from Debian's `fuse3`.
//!
//! ```no_run
//! # fn main() -> Result<(), tidings_lossyfs::LossyFsError> {
//! use tidings_lossyfs::LossyDisk;
//!
//! let disk = LossyDisk::new();
//! let dir = std::path::Path::new("/tmp/lossy");
//! let mut mount = disk.mount(dir)?;
//! std::fs::write(dir.join("unsynced"), b"gone after the cut").ok();
//! disk.cut_power();
//! mount.unmount()?;
//! let report = disk.power_on();
//! assert_eq!(report.nodes_lost, 1);
//! let _mount = disk.mount(dir)?; // an empty directory again
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

mod fs;
mod model;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use model::{CutReport, Op, Stats};

use crate::fs::{LossyFs, lock};
use crate::model::Model;

/// What can go wrong mounting or unmounting.
#[derive(Debug, thiserror::Error)]
pub enum LossyFsError {
    /// The kernel refused the mount (no `/dev/fuse`, not root and no `fusermount3`, not
    /// a directory…).
    #[error("cannot mount the lossy file system on {path}: {source}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The unmount failed, typically `EBUSY`: a process still has a file open there.
    #[error("cannot unmount the lossy file system from {path}: {source}")]
    Unmount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// [`LossyDisk::mount`] while the disk is mounted elsewhere.
    #[error("the lossy disk is already mounted on {0}")]
    AlreadyMounted(PathBuf),
}

/// The in-memory disk. Clones share it; it outlives its mounts, so a power cut can be
/// followed by a remount of what survived.
#[derive(Clone)]
pub struct LossyDisk {
    model: Arc<Mutex<Model>>,
    mounted: Arc<Mutex<Option<PathBuf>>>,
}

impl std::fmt::Debug for LossyDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossyDisk")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Default for LossyDisk {
    fn default() -> Self {
        Self::new()
    }
}

impl LossyDisk {
    /// An empty disk that keeps nothing unsynced at a power cut (the worst case).
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty disk that, at each power cut, keeps a random subset of the unsynced
    /// sectors of every surviving file and, for each directory with unsynced changes,
    /// either all of them or none, drawn from a generator seeded with `seed`.
    pub fn with_torn_writes(seed: u64) -> Self {
        Self::build(Some(seed))
    }

    fn build(seed: Option<u64>) -> Self {
        Self {
            model: Arc::new(Mutex::new(Model::new(seed))),
            mounted: Arc::new(Mutex::new(None)),
        }
    }

    /// Mounts the disk on the directory `mountpoint` (which should be empty), served
    /// by a background thread of this process until the returned [`Mount`] is
    /// unmounted or dropped.
    pub fn mount(&self, mountpoint: &Path) -> Result<Mount, LossyFsError> {
        let mut mounted = self.mounted.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = mounted.as_ref() {
            return Err(LossyFsError::AlreadyMounted(at.clone()));
        }
        let owner = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        let fs = LossyFs {
            model: self.model.clone(),
            owner,
        };
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("tidings-lossyfs".into()),
            fuser::MountOption::Subtype("tidings-lossyfs".into()),
        ];
        let session =
            fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| LossyFsError::Mount {
                path: mountpoint.to_owned(),
                source,
            })?;
        *mounted = Some(mountpoint.to_owned());
        Ok(Mount {
            session: Some(session),
            path: mountpoint.to_owned(),
            mounted: self.mounted.clone(),
        })
    }

    /// Cuts the power: from now on nothing more becomes durable, and every request to
    /// the file system fails with `EIO` until [`Self::power_on`]. Calling it again
    /// while the power is off changes nothing.
    pub fn cut_power(&self) {
        lock(&self.model).cut();
    }

    /// Cuts the power when the `nth` request of kind `op` (counted from now, from 1)
    /// arrives, before it is served: that request and every later one fail with `EIO`.
    /// This places a cut at an exact point of a program's I/O (between a write and its
    /// sync, between a rename and the directory sync…), where a cut by the clock would
    /// mostly find the program idle. Replaces a trigger armed before; [`Self::power_on`]
    /// disarms it.
    pub fn cut_power_at(&self, op: Op, nth: u64) {
        lock(&self.model).arm(op, nth);
    }

    /// Whether the power is on.
    pub fn powered(&self) -> bool {
        lock(&self.model).powered
    }

    /// Brings the power back: the disk's visible state becomes its durable state (see
    /// the crate doc), and requests are served again. Call it between
    /// [`Mount::unmount`] and the next [`Self::mount`]: the kernel's caches of the old
    /// mount would still show the lost state. When the power is on, the cut is implied
    /// (so `power_on` alone is a cut and a restart).
    pub fn power_on(&self) -> CutReport {
        let mut m = lock(&self.model);
        m.cut();
        m.power_on()
    }

    /// What the file system did so far.
    pub fn stats(&self) -> Stats {
        lock(&self.model).stats
    }
}

/// A mounted [`LossyDisk`]. Dropping it unmounts, detaching the mount when it is busy
/// (use [`Mount::unmount`] to see a failure).
#[derive(Debug)]
pub struct Mount {
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
    mounted: Arc<Mutex<Option<PathBuf>>>,
}

impl Mount {
    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and waits for the serving thread to finish. Fails, and stays mounted so
    /// that the call can be retried, while a process has a file open on it. Unmounting
    /// again changes nothing.
    pub fn unmount(&mut self) -> Result<(), LossyFsError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let err = |source| LossyFsError::Unmount {
            path: self.path.clone(),
            source,
        };
        // Unmounting here first keeps the session when the mount is busy, so the caller
        // can retry; without root, fuser goes through `fusermount3 -u`.
        match rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::empty()) {
            // The serving thread ends when the kernel closes the connection; how its
            // last read of the device ended does not change that the mount is gone.
            Ok(()) => drop(session.join()),
            Err(rustix::io::Errno::PERM) => {
                if let Err(e) = session.umount_and_join() {
                    // fusermount failed (or the thread did): the mount may be gone or
                    // not; there is no session left to retry with either way.
                    *self.mounted.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    return Err(err(e));
                }
            }
            Err(e) => {
                let e = err(e.into());
                self.session = Some(session);
                return Err(e);
            }
        }
        *self.mounted.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.unmount().is_err() {
            // Busy: detach it so the directory is usable again once the last user exits.
            let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
            *self.mounted.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }
}
