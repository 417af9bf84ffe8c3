//! The background task that moves the head when other processes commit.
//!
//! Every append runs `pg_notify('tidings:<schema>', <last position>)` in its transaction;
//! PostgreSQL delivers the notification after the commit is visible. This task LISTENs on
//! its own connection and raises the store's head watch to the position it hears.
//!
//! Notifications sent while the connection is down are lost, so after every (re)connect
//! the task first LISTENs, then reads the head from the table: anything committed before
//! the read is covered by it, anything after by a notification.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tidings_core::Position;
use tokio::sync::watch;

use crate::row::unsigned;

/// First wait before reconnecting; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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

/// The head as the table says: the last committed position (None: nothing committed).
pub(crate) fn head_from_next(next_position: i64) -> Option<Position> {
    unsigned(next_position).ok().and_then(|n| n.checked_sub(1))
}

/// Listens on `channel` for ever, reconnecting with backoff. Runs until aborted.
pub(crate) async fn run(pool: PgPool, channel: String, head: HeadSender) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Err(e) = listen(&pool, &channel, &head, &mut backoff).await;
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
    backoff: &mut Duration,
) -> Result<Infallible, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    resync(&mut listener, head).await?;
    *backoff = MIN_BACKOFF;
    tracing::debug!(channel, "listening for appends");
    loop {
        match listener.try_recv().await? {
            Some(n) => match n.payload().parse::<Position>() {
                Ok(position) => advance(head, position),
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
            None => resync(&mut listener, head).await?,
        }
    }
}

/// Reads the committed head on the listening connection and raises the watch to it.
async fn resync(listener: &mut PgListener, head: &HeadSender) -> Result<(), sqlx::Error> {
    let next: i64 = sqlx::query_scalar(include_str!("../sql/queries/head.sql"))
        .fetch_one(&mut *listener)
        .await?;
    if let Some(position) = head_from_next(next) {
        advance(head, position);
    }
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
