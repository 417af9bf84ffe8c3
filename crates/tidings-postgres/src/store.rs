//! [`PgStore`]: the store contract on PostgreSQL.

use std::sync::Arc;

use futures::Stream;
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tidings_core::backend::validate_append;
use tidings_core::event::timestamp_from_micros;
use tidings_core::store::EventStreamItem;
use tidings_core::store::subscription::{self, HeadWatch};
use tidings_core::{
    AppendResult, Direction, Event, EventAppender, EventReader, EventSubscriber, ExpectedVersion,
    Filter, Limits, ListStreams, Position, ReadAll, ReadStream, RecordedEvent, Revision, Start,
    StoreError, StreamId, StreamInfo,
};
use tokio::sync::{oneshot, watch};
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::append::Append;
use crate::error::{PgStoreError, store_error};
use crate::listener::{self, HeadSender, HorizonWake, head_from_next};
use crate::migrate;
use crate::notifier;
use crate::options::{PgStoreBuilder, channel};
use crate::row::{get, recorded_event, signed, unsigned};
use crate::writer::{self, Queue, Reports, Request};

/// An event store in a PostgreSQL schema. Clones are cheap and share one connection pool,
/// one writer, one head watch and one notification listener.
///
/// Appends are transactions: acknowledged only once committed. Positions are claimed
/// inside the append's transaction as advisory locks that other sessions see at once,
/// and readers stop below the lowest position still claimed (the visibility horizon;
/// `docs/decisions/0022-postgres-advisory-claims.md`),
/// so subscriptions built on [`tidings_core::store::subscription`] never skip or repeat an
/// event, including events appended by other processes, which the store hears through
/// `LISTEN`/`NOTIFY`. A refused or failed append may leave a gap in positions.
///
/// Concurrent appends through one handle are committed together (group commit), each
/// decided as if it ran alone, in the order it was called. A subscription from
/// [`Start::End`] starts after the last commit this handle has heard of: its own appends
/// at once (while its head is watched, or no other append was claiming positions at the
/// time), other processes' a moment after they commit. An append that committed just
/// before the call but was not yet heard of is delivered too (never missed).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use tidings_core::{Enricher, EventAppender, EventReader, ExpectedVersion, NewEvent, ReadStream,
///     StreamId};
/// use tidings_postgres::PgStore;
///
/// let store = PgStore::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// let order = StreamId::new("order-123")?;
/// let created = Enricher::new("order-service")
///     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))?;
/// store.append(&order, ExpectedVersion::NoStream, vec![created]).await?;
/// let events = store.read_stream(&order, ReadStream::forward()).await?;
/// assert_eq!(events[0].event_type, "OrderCreated");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// The append writer's connections (with lock and statement timeouts).
    writer_pool: PgPool,
    /// The notifier's connection.
    notifier_pool: PgPool,
    head: HeadSender,
    writer: Queue,
    schema: String,
    limits: Limits,
    listener: AbortHandle,
    horizon: AbortHandle,
    horizon_wake: Arc<HorizonWake>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
        self.horizon.abort();
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.schema)
            .field("head", &*self.inner.head.borrow())
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects to `url` with default options: schema `tidings`, 10 connections, default
    /// [`Limits`]. Creates the schema and applies migrations if needed.
    pub async fn connect(url: &str) -> Result<Self, PgStoreError> {
        Self::builder(url).connect().await
    }

    /// Options for a store at `url` (`postgres://user@host:port/database`).
    pub fn builder(url: &str) -> PgStoreBuilder {
        PgStoreBuilder::new(url)
    }

    pub(crate) async fn open(options: PgStoreBuilder) -> Result<Self, PgStoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(options.connect_options("pool")?)
            .await
            .map_err(PgStoreError::Connect)?;
        migrate::migrate(&pool, &options.schema).await?;
        let head: HeadSender = Arc::new(watch::channel(None).0);
        listener::refresh(&pool, &head)
            .await
            .map_err(PgStoreError::Database)?;
        let wake = Arc::new(HorizonWake::default());
        let horizon = tokio::spawn(listener::follow_horizon(
            pool.clone(),
            Arc::clone(&head),
            Arc::clone(&wake),
        ))
        .abort_handle();
        let horizon_wake = Arc::clone(&wake);

        let listener_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(options.connect_options("listener")?);
        let channel = channel(&options.schema);
        let listener = tokio::spawn(listener::run(
            listener_pool,
            channel.clone(),
            Arc::clone(&head),
            Arc::clone(&wake),
        ))
        .abort_handle();
        // Announcements commit without waiting for the flush: a notification is a hint
        // to read the horizon, and a lost one costs a poll at worst.
        let notifier_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(
                options
                    .connect_options("notifier")?
                    .options([("synchronous_commit", "off")]),
            );
        let announce = notifier::spawn(notifier_pool.clone(), channel);
        // Appends run on connections of their own, which carry the lock and statement
        // timeouts: a lock held elsewhere fails an append instead of stalling it forever.
        let deadlines = options.deadlines;
        // No ping before each use: an append is one round trip, and a broken connection
        // fails it like any lost connection (outcome unknown, retry is safe).
        let writer_pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .test_before_acquire(false)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(options.connect_options("writer")?.options([
                ("lock_timeout", millis(deadlines.lock)),
                ("statement_timeout", millis(deadlines.statement)),
            ]));
        let writer = writer::spawn(
            writer_pool.clone(),
            pool.clone(),
            deadlines,
            Reports {
                head: Arc::clone(&head),
                wake,
                announce,
            },
            options.limits,
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                writer_pool,
                notifier_pool,
                head,
                writer,
                schema: options.schema,
                limits: options.limits,
                listener,
                horizon,
                horizon_wake,
            }),
        })
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The limits appends are checked against.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// A receiver that sees the visible head move (one below the visibility horizon):
    /// at once after this process's appends, and after a notification for other
    /// processes' appends. Other processes' appends are followed only while some watch
    /// is held; taking one reads the horizon again at once if it was not followed.
    pub fn head_watch(&self) -> HeadWatch {
        let watch = self.inner.head.subscribe();
        self.inner.horizon_wake.watched();
        watch
    }

    /// The connection pool (for health checks and operational queries).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Deletes this store's schema and every event in it. For tests and tooling; the
    /// handle (and its clones) must not be used afterwards.
    pub async fn drop_schema(self) -> Result<(), PgStoreError> {
        migrate::drop_schema(&self.inner.pool).await
    }

    /// Closes the pool: waits for connections in use to come back, then closes them all.
    /// Requests made afterwards fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.listener.abort();
        self.inner.horizon.abort();
        self.inner.pool.close().await;
        self.inner.writer_pool.close().await;
        self.inner.notifier_pool.close().await;
    }

    /// The visibility horizon now (`horizon.sql`). A query that reads events below it
    /// must run afterwards, as a statement of its own, so that its snapshot sees every
    /// append that settled below it.
    async fn horizon(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(include_str!("../sql/queries/horizon.sql"))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| store_error("read the visibility horizon", e))?;
        row.try_get("horizon")
            .map_err(|e| StoreError::Corrupt(format!("visibility horizon: {e}")))
    }

    async fn fetch_events(
        &self,
        what: &str,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        query
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| store_error(what, e))?
            .iter()
            .map(recorded_event)
            .collect()
    }
}

impl EventAppender for PgStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, StoreError> {
        let span = tracing::debug_span!(
            "append",
            schema = %self.inner.schema,
            %stream,
            %expected,
            events = events.len()
        );
        async {
            let size = validate_append(stream, &events, &self.inner.limits)?;
            let (reply, answer) = oneshot::channel();
            let request = Request {
                append: Append {
                    stream: stream.clone(),
                    expected,
                    events,
                },
                size,
                reply,
            };
            self.inner
                .writer
                .send(request)
                .await
                .map_err(|_| StoreError::Closed)?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
        .instrument(span)
        .await
    }

    fn limits(&self) -> Limits {
        self.inner.limits
    }
}

impl EventReader for PgStore {
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let limit = signed(options.limit as u64);
        let query = match options.direction {
            Direction::Forward => {
                sqlx::query(include_str!("../sql/queries/read_stream_forward.sql"))
                    .bind(stream.as_str())
                    .bind(signed(options.from.unwrap_or(0)))
            }
            Direction::Backward => {
                sqlx::query(include_str!("../sql/queries/read_stream_backward.sql"))
                    .bind(stream.as_str())
                    .bind(signed(options.from.unwrap_or(u64::MAX)))
            }
        };
        self.fetch_events("read stream", query.bind(limit)).await
    }

    async fn read_all(&self, options: ReadAll) -> Result<Vec<RecordedEvent>, StoreError> {
        let horizon = self.horizon().await?;
        let query = sqlx::query(include_str!("../sql/queries/read_all.sql"))
            .bind(signed(options.from))
            .bind(options.filter.event_types)
            .bind(options.filter.stream_prefix)
            .bind(signed(options.limit as u64))
            .bind(options.filter.categories)
            .bind(horizon);
        self.fetch_events("read all", query).await
    }

    async fn read_correlation(
        &self,
        correlation_id: &str,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let horizon = self.horizon().await?;
        let query = sqlx::query(include_str!("../sql/queries/read_correlation.sql"))
            .bind(correlation_id)
            .bind(signed(from))
            .bind(signed(limit as u64))
            .bind(horizon);
        self.fetch_events("read correlation", query).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<Option<Revision>, StoreError> {
        let version: Option<Option<i64>> =
            sqlx::query_scalar(include_str!("../sql/queries/stream_version.sql"))
                .bind(stream.as_str())
                .fetch_optional(&self.inner.pool)
                .await
                .map_err(|e| store_error("stream version", e))?;
        version
            .flatten()
            .map(unsigned)
            .transpose()
            .map_err(|_| StoreError::Corrupt(format!("stream {stream} has a negative version")))
    }

    async fn list_streams(&self, options: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        let rows = sqlx::query(include_str!("../sql/queries/list_streams.sql"))
            .bind(options.prefix)
            .bind(options.after)
            .bind(signed(options.limit as u64))
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| store_error("list streams", e))?;
        rows.iter()
            .map(|row| {
                let name: String = get(row, "name")?;
                let corrupt = |what: &str| StoreError::Corrupt(format!("stream {name}: {what}"));
                let revision: i64 = get(row, "last_revision")?;
                let position: i64 = get(row, "last_position")?;
                Ok(StreamInfo {
                    stream: StreamId::parse_any(&name).map_err(|e| corrupt(&e.to_string()))?,
                    last_revision: unsigned(revision).map_err(|_| corrupt("negative revision"))?,
                    last_position: unsigned(position).map_err(|_| corrupt("negative position"))?,
                    last_written: timestamp_from_micros(get(row, "last_written")?),
                })
            })
            .collect()
    }

    async fn head(&self) -> Result<Option<Position>, StoreError> {
        Ok(head_from_next(self.horizon().await?))
    }
}

impl EventSubscriber for PgStore {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        subscription::subscribe_all(self.clone(), self.head_watch(), start, filter)
    }

    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        subscription::subscribe_stream(self.clone(), self.head_watch(), stream.clone(), start)
    }
}

/// A duration as a PostgreSQL setting in milliseconds (`5000ms`).
fn millis(d: std::time::Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}
