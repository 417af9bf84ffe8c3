//! The notifier: one task per store handle that announces committed appends to other
//! processes, off the appends' own transactions.
//!
//! An append that notified in its own transaction would take PostgreSQL's notification
//! lock at commit and hold it across the WAL flush, so notifying commits would flush one
//! at a time (decision 0020); a third transaction per append, as migration 0005 did,
//! costs a round trip and a commit each. Instead the writer hands the highest position
//! it committed to this task, which sends `pg_notify('tidings:<schema>', <position>)` on
//! a connection of its own that commits without waiting for the flush
//! (`synchronous_commit = off`). At most one notification is in flight; positions
//! committed meanwhile are announced by one more notification after it, carrying the
//! highest of them (`docs/decisions/0022-postgres-advisory-claims.md`).
//!
//! Listeners lose nothing by the coalescing: a notification only wakes a handle's horizon
//! task, which reads the horizon afresh, and one read covers every commit before it.
//! While a notification cannot be sent (the connection is down), the task retries after
//! [`RETRY`]; listeners that are held back by a claim poll meanwhile (listener.rs).

use std::time::Duration;

use sqlx::PgPool;
use tidings_core::Position;
use tokio::sync::watch;

/// Wait before sending again after a failed notification.
const RETRY: Duration = Duration::from_millis(100);

/// The writer's side: the highest committed position it has announced or will.
pub(crate) type Announce = watch::Sender<Option<Position>>;

/// Starts the notifier on `pool` (one connection, `synchronous_commit = off`); it ends
/// when the returned sender is dropped.
pub(crate) fn spawn(pool: PgPool, channel: String) -> Announce {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(pool, channel, rx));
    tx
}

/// Records that every event up to `position` is committed; the notifier sends it (or a
/// higher one) soon.
pub(crate) fn announce(to: &Announce, position: Position) {
    to.send_if_modified(|p| {
        let moved = p.is_none_or(|p| p < position);
        if moved {
            *p = Some(position);
        }
        moved
    });
}

async fn run(pool: PgPool, channel: String, mut rx: watch::Receiver<Option<Position>>) {
    while rx.changed().await.is_ok() {
        let Some(position) = *rx.borrow_and_update() else {
            continue;
        };
        let sent = sqlx::query(include_str!("../sql/queries/notify.sql"))
            .bind(&channel)
            .bind(position.to_string())
            .execute(&pool)
            .await;
        if let Err(e) = sent {
            tracing::warn!(
                channel,
                position,
                error = %e,
                retry_in = ?RETRY,
                "announcing appends failed; other processes see them once it succeeds or \
                 at their next read"
            );
            tokio::time::sleep(RETRY).await;
            rx.mark_changed();
        }
    }
    pool.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_only_move_forward() {
        let (tx, mut rx) = watch::channel(None);
        announce(&tx, 3);
        assert_eq!(*rx.borrow_and_update(), Some(3));
        announce(&tx, 2);
        assert!(!rx.has_changed().unwrap_or(true), "moved back");
        announce(&tx, 5);
        announce(&tx, 7);
        assert_eq!(*rx.borrow_and_update(), Some(7), "coalesced to the highest");
    }
}
