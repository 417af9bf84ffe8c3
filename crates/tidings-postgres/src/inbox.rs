//! [`PgInbox`]: the transactional inbox on PostgreSQL.
//!
//! A consumer behind a broker or the outbox relay receives events at least once. The
//! inbox of `tidings-consumer` records a handled id *after* the handler, in a separate
//! write, so a crash between the two runs the handler again on the next delivery. When
//! the handler's effects live in PostgreSQL, [`PgInbox`] closes that gap: the id is
//! recorded in the same transaction as the handler's writes, so both commit or neither.

use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::store::PgStore;

/// How long [`PgInbox::prune`] is meant to keep ids unless told otherwise: 7 days.
pub const DEFAULT_INBOX_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The longest window [`PgInbox::prune`] applies (1000 years); longer ones are clamped to
/// it, keeping the cutoff within PostgreSQL's timestamps.
const MAX_RETENTION: Duration = Duration::from_secs(1000 * 366 * 24 * 60 * 60);

/// What [`PgInbox::handle_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Handled<T = ()> {
    /// The handler ran and its writes committed together with the id; its result.
    Done(T),
    /// The id was already recorded for this consumer: the handler did not run.
    AlreadyHandled,
}

impl<T> Handled<T> {
    /// Whether the handler ran (and committed) this time.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done(_))
    }
}

/// Why a [`PgInbox`] request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgInboxError {
    /// A database request failed. When `what` is `"commit"` and the connection was lost,
    /// whether the transaction committed is unknown; a later delivery of the same id
    /// finds out (it is either recorded, and skipped, or not, and handled).
    #[error("inbox {consumer}: {what} failed: {source}")]
    Database {
        /// The inbox's consumer name.
        consumer: String,
        /// What was being done.
        what: &'static str,
        /// The database's answer.
        #[source]
        source: sqlx::Error,
    },
}

/// Why [`PgInbox::handle_once`] failed. Either way nothing was committed (except after
/// a lost connection during the commit, see [`PgInboxError::Database`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError<E> {
    /// The inbox's own request (begin, record, commit) failed.
    #[error(transparent)]
    Inbox(#[from] PgInboxError),
    /// The handler failed: its writes and the id were rolled back, so a retry runs it
    /// again.
    #[error("handler failed (rolled back, the id is not recorded): {0}")]
    Handler(#[source] E),
}

/// The durable inbox of one consumer, in the `tidings_inbox` table of a [`PgStore`]'s
/// schema (created by the store's migrations).
///
/// **Exactly-once effects.** [`handle_once`](Self::handle_once) begins a transaction,
/// records the event id first (`INSERT … ON CONFLICT DO NOTHING`), runs the handler on
/// the same connection, and commits: the handler's writes and the "handled" mark commit
/// together or not at all. When the id is already recorded the handler does not run.
/// Inserting first means a concurrent duplicate (another instance handling the same
/// delivery) waits on the uncommitted row, then sees it and skips, instead of both
/// running. A failing handler rolls everything back, so a retry runs it again.
/// [`claim`](Self::claim) and [`record_in`](Self::record_in) are the same steps for
/// callers that manage the transaction themselves.
///
/// **Where the handler's writes go.** The store's connections use the store's schema as
/// their `search_path`; name tables in other schemas with their schema
/// (`public.invoices`). [`with_pool`](Self::with_pool) takes an application's own pool
/// instead, whose `search_path` must reach the store's schema.
///
/// **The window.** Ids are kept until [`prune`](Self::prune) deletes those recorded
/// longer ago than a retention (suggested: [`DEFAULT_INBOX_RETENTION`], 7 days); run it
/// periodically. A duplicate arriving after its id was pruned is handled again, so keep
/// the retention longer than the redelivery horizon (broker redeliveries, the outbox
/// relay's replays after a crash, a dead letter replayed by hand).
///
/// **As a consumer's inbox.** With the cargo feature `inbox`, `PgInbox` implements
/// `tidings_consumer::Inbox` (`seen` and `record`, each its own statement), so it can be
/// given to `BrokerConsumer::inbox`. Giving the consumer the same `PgInbox` the handler
/// calls `handle_once` on is coherent: `seen` skips known duplicates before the handler,
/// `handle_once` closes the gap, and the consumer's `record` afterwards finds the id
/// already there.
///
/// ```no_run
/// # async fn demo(store: tidings_postgres::PgStore, event_id: uuid::Uuid)
/// #     -> Result<(), Box<dyn std::error::Error>> {
/// use tidings_postgres::{Handled, PgInbox};
///
/// let inbox = PgInbox::new(&store, "billing");
/// let order = "order-123".to_owned();
/// let outcome = inbox
///     .handle_once(event_id, |conn| {
///         Box::pin(async move {
///             sqlx::query("INSERT INTO public.invoices (order_id) VALUES ($1)")
///                 .bind(order)
///                 .execute(&mut *conn)
///                 .await?;
///             Ok::<_, sqlx::Error>(())
///         })
///     })
///     .await?;
/// if outcome == Handled::AlreadyHandled {
///     println!("duplicate delivery of {event_id}: nothing done");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgInbox {
    pool: PgPool,
    consumer: String,
}

impl std::fmt::Debug for PgInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgInbox")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl PgInbox {
    /// The inbox of `consumer` in `store`'s schema, on the store's pool. Consumers with
    /// different names keep separate ids; instances sharing a name share them.
    pub fn new(store: &PgStore, consumer: impl Into<String>) -> Self {
        Self::with_pool(store.pool().clone(), consumer)
    }

    /// The inbox of `consumer` on `pool`, whose connections' `search_path` must include a
    /// schema migrated by [`PgStore::connect`] (for instance `-c search_path=app,tidings`
    /// in the URL's `options`), so the handler's unqualified tables resolve as the
    /// application expects.
    pub fn with_pool(pool: PgPool, consumer: impl Into<String>) -> Self {
        Self {
            pool,
            consumer: consumer.into(),
        }
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn db(&self, what: &'static str) -> impl FnOnce(sqlx::Error) -> PgInboxError + '_ {
        move |source| PgInboxError::Database {
            consumer: self.consumer.clone(),
            what,
            source,
        }
    }

    /// Runs `handler` once for `event_id`: records the id and runs the handler in one
    /// transaction, committed together. Returns [`Handled::Done`] with the handler's
    /// result, or [`Handled::AlreadyHandled`] without running it when the id was
    /// recorded before (or by a concurrent call, which this one waits for).
    ///
    /// The handler gets the transaction's connection and returns a boxed future
    /// borrowing it (`|conn| Box::pin(async move { … })`); values it needs are moved in.
    /// When it fails, the transaction is rolled back and its error comes back as
    /// [`HandleError::Handler`]. The handler must pass its statements' errors on: after a
    /// failed statement PostgreSQL aborts the transaction, and committing it then records
    /// neither the effect nor the id. See the type's example.
    pub async fn handle_once<T, E, F>(
        &self,
        event_id: Uuid,
        handler: F,
    ) -> Result<Handled<T>, HandleError<E>>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, E>>,
    {
        let Some(mut tx) = self.claim(event_id).await? else {
            return Ok(Handled::AlreadyHandled);
        };
        match handler(&mut tx).await {
            Ok(value) => {
                tx.commit().await.map_err(self.db("commit"))?;
                Ok(Handled::Done(value))
            }
            Err(e) => {
                if let Err(rollback) = tx.rollback().await {
                    // Not committed either way; the connection is discarded.
                    tracing::warn!(consumer = %self.consumer, %event_id, error = %rollback,
                        "inbox: rollback after a failed handler failed");
                }
                Err(HandleError::Handler(e))
            }
        }
    }

    /// Begins a transaction and records `event_id` in it. `None` when the id was already
    /// recorded (no transaction is left open). Otherwise the caller makes its writes on
    /// the transaction and commits it; dropping it or rolling back forgets the id again.
    pub async fn claim(
        &self,
        event_id: Uuid,
    ) -> Result<Option<Transaction<'static, Postgres>>, PgInboxError> {
        let mut tx = self.pool.begin().await.map_err(self.db("begin"))?;
        if self.record_in(&mut tx, event_id).await? {
            Ok(Some(tx))
        } else {
            tx.rollback().await.map_err(self.db("rollback"))?;
            tracing::debug!(consumer = %self.consumer, %event_id, "inbox: already handled");
            Ok(None)
        }
    }

    /// Records `event_id` on `conn` (typically inside the caller's transaction). Returns
    /// `true` when it was recorded now, `false` when it already was. While another
    /// transaction holds an uncommitted record of the same id, this waits for it.
    pub async fn record_in(
        &self,
        conn: &mut PgConnection,
        event_id: Uuid,
    ) -> Result<bool, PgInboxError> {
        let done = sqlx::query(include_str!("../sql/queries/inbox_record.sql"))
            .bind(&self.consumer)
            .bind(event_id)
            .execute(conn)
            .await
            .map_err(self.db("record"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether `event_id` is recorded (and not pruned) for this consumer.
    pub async fn is_handled(&self, event_id: Uuid) -> Result<bool, PgInboxError> {
        sqlx::query_scalar(include_str!("../sql/queries/inbox_seen.sql"))
            .bind(&self.consumer)
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .map_err(self.db("look up"))
    }

    /// Records `event_id` in its own transaction. `true` when it was recorded now.
    pub async fn mark_handled(&self, event_id: Uuid) -> Result<bool, PgInboxError> {
        let mut conn = self.pool.acquire().await.map_err(self.db("connect"))?;
        self.record_in(&mut conn, event_id).await
    }

    /// Deletes this consumer's ids recorded longer ago than `older_than` (by the
    /// database's clock); returns how many. A duplicate of a pruned id is handled again.
    /// [`DEFAULT_INBOX_RETENTION`] (7 days) is the suggested window.
    pub async fn prune(&self, older_than: Duration) -> Result<u64, PgInboxError> {
        let micros = i64::try_from(older_than.min(MAX_RETENTION).as_micros()).unwrap_or(i64::MAX);
        let done = sqlx::query(include_str!("../sql/queries/inbox_prune.sql"))
            .bind(&self.consumer)
            .bind(micros)
            .execute(&self.pool)
            .await
            .map_err(self.db("prune"))?;
        let pruned = done.rows_affected();
        tracing::debug!(consumer = %self.consumer, pruned, "inbox pruned");
        Ok(pruned)
    }
}

/// `seen` and `record` outside any caller transaction (each one statement): the window
/// of `tidings_consumer`'s inboxes, closed only by [`PgInbox::handle_once`].
#[cfg(feature = "inbox")]
impl tidings_consumer::Inbox for PgInbox {
    async fn seen(&self, id: Uuid) -> Result<bool, tidings_consumer::InboxError> {
        self.is_handled(id).await.map_err(|e| self.backend(e))
    }

    async fn record(&self, id: Uuid) -> Result<(), tidings_consumer::InboxError> {
        self.mark_handled(id)
            .await
            .map(drop)
            .map_err(|e| self.backend(e))
    }
}

#[cfg(feature = "inbox")]
impl PgInbox {
    fn backend(&self, e: PgInboxError) -> tidings_consumer::InboxError {
        tidings_consumer::InboxError::Backend {
            name: self.consumer.clone(),
            message: e.to_string(),
        }
    }
}
