//! The writer thread: the loop that takes requests from the store's bounded channel,
//! forms a commit group of the appends waiting (up to a byte budget) and commits it
//! under the writer's lock, then handles an index snapshot or close request.
//!
//! ```text
//! channel:  [ append | append | append | snapshot | append … ]
//!             └───── one group ──────┘   └control┘
//! loop:     poll ≤ 40 µs, then block ─► take what waits ─► lock ─► commit_group
//!           (the last call takes in what arrived meanwhile) ─► control request, if any
//! ```
//!
//! An append on an otherwise idle store may take the same lock and commit itself, inline
//! (see `LogStore::append`); both go through [`Writer::commit_group`].

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{Append, Finish, Writer};
use crate::error::LogError;

/// What the writer is asked to do.
pub(crate) enum Request {
    /// Commit an append.
    Append(Append),
    /// Write an index snapshot now.
    SnapshotIndex(oneshot::Sender<Result<(), LogError>>),
    /// Finish what is queued, write an index snapshot and stop.
    Close(oneshot::Sender<Result<(), LogError>>),
}

fn lock(core: &Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    core.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits for the next request: briefly by polling, so a writer that appends again right
/// after its acknowledgement does not pay for putting this thread to sleep and waking
/// it, then by blocking.
fn next_request(rx: &mut mpsc::Receiver<Request>) -> Option<Request> {
    let spin_until = std::time::Instant::now() + std::time::Duration::from_micros(40);
    loop {
        match rx.try_recv() {
            Ok(r) => return Some(r),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if std::time::Instant::now() >= spin_until {
            return rx.blocking_recv();
        }
        std::thread::yield_now();
    }
}

/// An append request as a member of a group (adding its size to `bytes`), or `None`
/// after putting a control request in `control`.
fn as_append(req: Request, bytes: &mut usize, control: &mut Option<Request>) -> Option<Append> {
    match req {
        Request::Append(append) => {
            *bytes += append.size;
            Some(append)
        }
        other => {
            *control = Some(other);
            None
        }
    }
}

/// The writer thread's loop: takes the waiting requests as one group and commits it
/// under the writer's lock (which an append on an otherwise idle store may also take,
/// to commit inline: see `LogStore::append`).
pub(crate) fn run(core: Arc<Mutex<Writer>>, mut rx: mpsc::Receiver<Request>) {
    while let Some(first) = next_request(&mut rx) {
        let mut group = Vec::new();
        let mut bytes = 0usize;
        let mut control = None;
        let mut next = Some(first);
        let max_group_bytes = lock(&core).cfg.max_group_bytes;
        while let Some(req) = next.take() {
            let Some(append) = as_append(req, &mut bytes, &mut control) else {
                break;
            };
            group.push(append);
            if bytes < max_group_bytes {
                next = rx.try_recv().ok();
            }
        }
        let mut w = lock(&core);
        if !group.is_empty() {
            // The last call: appends that arrived while this group was being checked
            // and encoded join it (up to the byte budget), so under load a group takes
            // in the writers acknowledged by the previous group as they come back.
            let mut more = || {
                if control.is_some() || bytes >= max_group_bytes {
                    return None;
                }
                as_append(rx.try_recv().ok()?, &mut bytes, &mut control)
            };
            w.commit_group(group, &mut more, Finish::OnSyncThread);
        }
        match control {
            Some(Request::Close(reply)) => {
                let _ = reply.send(w.shut_down());
                return;
            }
            Some(Request::SnapshotIndex(reply)) => {
                let _ = reply.send(w.snapshot_index(0));
            }
            _ => {}
        }
    }
    // Every handle is gone: leave a snapshot so the next open is fast.
    if let Err(e) = lock(&core).shut_down() {
        tracing::warn!(error = %e, "could not write the index snapshot on close");
    }
}
