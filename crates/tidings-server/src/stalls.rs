//! Appends that take too long: which are in flight past the append deadline, and when
//! one last timed out. `/ready` and `/metrics` read them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Appends in flight and the last timeout.
#[derive(Default)]
pub(crate) struct Stalls {
    next: AtomicU64,
    in_flight: Mutex<HashMap<u64, Instant>>,
    /// When an append last timed out, until an append succeeds after it.
    last_timeout: Mutex<Option<Instant>>,
}

/// An append in flight, counted until dropped.
pub(crate) struct Tracked {
    stalls: Arc<Stalls>,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        lock(&self.stalls.in_flight).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stalls {
    /// Counts an append as in flight from now until the returned guard is dropped.
    pub(crate) fn track(self: &Arc<Self>) -> Tracked {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.in_flight).insert(id, Instant::now());
        Tracked {
            stalls: Arc::clone(self),
            id,
        }
    }

    /// An append timed out.
    pub(crate) fn timed_out(&self) {
        *lock(&self.last_timeout) = Some(Instant::now());
    }

    /// An append succeeded: the store takes appends again.
    pub(crate) fn succeeded(&self) {
        *lock(&self.last_timeout) = None;
    }

    /// Appends in flight for longer than `deadline`.
    pub(crate) fn stalled(&self, deadline: Duration) -> usize {
        lock(&self.in_flight)
            .values()
            .filter(|started| started.elapsed() > deadline)
            .count()
    }

    /// Why appends look stalled, if they do: an append in flight past `deadline`, or a
    /// timeout within the last `deadline` not followed by a successful append.
    pub(crate) fn reason(&self, deadline: Duration) -> Option<String> {
        let stalled = self.stalled(deadline);
        if stalled > 0 {
            return Some(format!(
                "{stalled} append(s) in flight for longer than the append deadline ({} ms)",
                deadline.as_millis()
            ));
        }
        let last = *lock(&self.last_timeout);
        match last {
            Some(at) if at.elapsed() <= deadline => Some(format!(
                "an append timed out {} ms ago and none has succeeded since; the store may be \
                 stalled (a lock held elsewhere, a slow disk or database)",
                at.elapsed().as_millis()
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_marks_appends_stalled_until_one_succeeds() {
        let stalls = Arc::new(Stalls::default());
        let deadline = Duration::from_secs(3600);
        assert_eq!(stalls.reason(deadline), None);
        let tracked = stalls.track();
        assert_eq!(stalls.stalled(deadline), 0);
        assert_eq!(
            stalls.stalled(Duration::ZERO),
            1,
            "older than a zero deadline"
        );
        drop(tracked);
        assert_eq!(stalls.stalled(Duration::ZERO), 0);
        stalls.timed_out();
        assert!(stalls.reason(deadline).is_some());
        stalls.succeeded();
        assert_eq!(stalls.reason(deadline), None);
    }
}
