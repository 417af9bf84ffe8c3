//! The background tasks that move the head when appends commit.
//!
//! The head a handle shows is the visible head: one below the visibility horizon
//! (migration 0007), the lowest position still claimed by an append in flight. A
//! subscription that has read up to the head may move past it, so it must never be
//! ahead of a position that may still commit.
//!
//! Every handle's notifier runs `pg_notify('tidings:<schema>', <last position>)` after
//! its appends commit (`notifier.rs`), when a claim of theirs found a listener: each
//! listener holds a key in PostgreSQL's lock table while its session lives, taken before
//! it reads the horizon (migration 0008). The listener LISTENs on its own connection; when
//! it hears of a position above the head, it wakes the horizon task, which reads the
//! horizon (`horizon.sql`) and raises the head. Reads that start after a notification
//! arrived cover the commit it announced, and one read covers every notification heard
//! before it. While the horizon is held back by a claim, the horizon task also looks
//! again every [`HELD_POLL`]: the claim's append may be refused or fail, and announce
//! nothing. A claim ends with its transaction, also when its backend dies, so nothing
//! needs collecting.
//!
//! The listener starts at the first head watch, and the horizon task reads only while a
//! watch is held: a handle that only appends costs nothing for other processes' appends.
//!
//! Notifications sent while the connection is down are lost, so after every (re)connect
//! the listener first LISTENs, then wakes the horizon task: anything committed before its
//! read is covered by it, anything after by a notification.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgPool, Row};
use tidings_core::Position;
use tokio::sync::{Notify, watch};

use crate::row::unsigned;

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the horizon is read again while a claim holds it back.
pub(crate) const HELD_POLL: Duration = Duration::from_millis(100);

/// The head watch every handle of one store shares.
pub(crate) type HeadSender = Arc<watch::Sender<Option<Position>>>;

/// Raises the head to `position` unless it is already there (heads never move back).
pub(crate) fn advance(head: &HeadSender, position: Position) {
    head.send_if_modified(|h| {
        let moved = h.is_none_or(|h| h < position);
        if moved {
            *h = Some(position);
        }
        moved
    });
}

/// The visible head below a horizon (None: nothing below it).
pub(crate) fn head_from_next(horizon: i64) -> Option<Position> {
    unsigned(horizon).ok().and_then(|n| n.checked_sub(1))
}

/// What wakes the horizon task, and whether the head it keeps is stale.
#[derive(Default)]
pub(crate) struct HorizonWake {
    notify: Notify,
    /// Set when the task skipped a read because nobody watched the head: the next watcher
    /// must wake it ([`HorizonWake::watched`]).
    stale: AtomicBool,
    /// Set by the first head watch: the listener starts listening then.
    watched_once: AtomicBool,
    first_watch: Notify,
}

impl HorizonWake {
    /// Something may have moved the horizon.
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// The head may be behind this handle's own appends (their horizon was not read):
    /// the next watch reads it again.
    pub(crate) fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// A head watch was just taken: a stale head is read again at once, and the first
    /// one starts the listener.
    pub(crate) fn watched(&self) {
        if !self.watched_once.swap(true, Ordering::AcqRel) {
            self.first_watch.notify_one();
        }
        if self.stale.load(Ordering::Acquire) {
            self.notify.notify_one();
        }
    }
}

/// Reads the horizon whenever woken, and every [`HELD_POLL`] while a claim holds it back,
/// raising `head` to one below it. Runs until aborted.
///
/// Reads cost the database a query per wake in every handle, so they happen only while
/// someone watches the head (a subscription, a group fetch): otherwise the task only
/// marks the head stale, and the next [`HorizonWake::watched`] wakes it. The writer still
/// raises the head after its own appends, from the horizon their claims saw when it was
/// known (always while the head is watched).
pub(crate) async fn follow_horizon(pool: PgPool, head: HeadSender, wake: Arc<HorizonWake>) {
    loop {
        if head.receiver_count() == 0 {
            wake.stale.store(true, Ordering::Release);
            wake.notify.notified().await;
            continue;
        }
        wake.stale.store(false, Ordering::Release);
        let held = match refresh(&pool, &head).await {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "reading the visibility horizon failed; retrying");
                true
            }
        };
        if held {
            tokio::select! {
                _ = wake.notify.notified() => {}
                _ = tokio::time::sleep(HELD_POLL) => {}
            }
        } else {
            wake.notify.notified().await;
        }
    }
}

/// Reads the horizon and raises `head` below it. True while a claim holds it back.
pub(crate) async fn refresh(pool: &PgPool, head: &HeadSender) -> Result<bool, sqlx::Error> {
    let row = sqlx::query(include_str!("../sql/queries/horizon.sql"))
        .fetch_one(pool)
        .await?;
    let horizon: i64 = row.try_get("horizon")?;
    let next: i64 = row.try_get("next_position")?;
    if let Some(position) = head_from_next(horizon) {
        advance(head, position);
    }
    Ok(horizon < next)
}

/// Listens on `channel` for ever, reconnecting with backoff, and wakes the horizon task
/// for every position above the head it hears of. Runs until aborted.
///
/// It starts listening at the first head watch: every notification costs each listening
/// session a wake-up, in PostgreSQL and here, and a handle that only appends needs none.
pub(crate) async fn run(pool: PgPool, channel: String, head: HeadSender, wake: Arc<HorizonWake>) {
    if !wake.watched_once.load(Ordering::Acquire) {
        wake.first_watch.notified().await;
    }
    let mut backoff = MIN_BACKOFF;
    loop {
        let Err(e) = listen(&pool, &channel, &head, &wake, &mut backoff).await;
        tracing::warn!(
            channel,
            error = %e,
            retry_in = ?backoff,
            "notification listener lost its connection; appends from other processes are \
             seen again after it reconnects"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn listen(
    pool: &PgPool,
    channel: &str,
    head: &HeadSender,
    wake: &HorizonWake,
    backoff: &mut Duration,
) -> Result<Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    mark_listening(&mut listener).await?;
    wake.wake();
    *backoff = MIN_BACKOFF;
    tracing::debug!(channel, "listening for appends");
    loop {
        match listener.try_recv().await? {
            Some(n) => match n.payload().parse::<Position>() {
                Ok(position) => {
                    if head.borrow().is_none_or(|h| h < position) {
                        wake.wake();
                    }
                }
                Err(_) => {
                    tracing::warn!(
                        channel,
                        payload = n.payload(),
                        "ignoring a foreign notification"
                    )
                }
            },
            // The connection dropped and was re-established (LISTEN included): whatever
            // was announced meanwhile is read from the table.
            None => {
                mark_listening(&mut listener).await?;
                wake.wake();
            }
        }
    }
}

/// Takes the listener's key on the listener's session (`listen_key.sql`): writers of
/// every process announce their commits only while a session holds it, and the horizon
/// read that follows covers the appends of writers that found none.
async fn mark_listening(listener: &mut PgListener) -> Result<(), sqlx::Error> {
    sqlx::query(include_str!("../sql/queries/listen_key.sql"))
        .execute(listener)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_only_moves_forward() {
        let head: HeadSender = Arc::new(watch::channel(None).0);
        let mut rx = head.subscribe();
        advance(&head, 3);
        assert_eq!(*rx.borrow_and_update(), Some(3));
        advance(&head, 2);
        assert!(!rx.has_changed().unwrap_or(true), "moved back");
        advance(&head, 0);
        assert_eq!(*rx.borrow(), Some(3));
        advance(&head, 4);
        assert_eq!(*rx.borrow_and_update(), Some(4));
        assert_eq!(head_from_next(0), None);
        assert_eq!(head_from_next(5), Some(4));
        assert_eq!(head_from_next(-1), None);
    }
}
