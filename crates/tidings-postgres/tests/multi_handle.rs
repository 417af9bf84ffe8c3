//! The conformance suite against several handles on one schema, taking turns: as if each
//! call came from another process. Appends race across separate pools and writers (no
//! group commit between them), and subscriptions hear other handles' appends only
//! through NOTIFY.
//!
//! One exception: a subscription from `Start::End` goes to the handle that appended
//! last. `Start::End` starts after the last commit the handle has *heard of*; another
//! process's commit from a moment ago may not have been announced yet and is then
//! delivered too (never missed). The suite checks the strict single-process meaning.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::Stream;
use tidings::store::EventStreamItem;
use tidings::{
    AppendResult, Event, EventAppender, EventReader, EventSubscriber, ExpectedVersion, Filter,
    ListStreams, Position, ReadAll, ReadStream, RecordedEvent, Revision, Start, StoreError,
    StreamId, StreamInfo,
};
use tidings_postgres::PgStore;

use common::{Schemas, database};

/// Handles on one schema; each call goes to the next.
#[derive(Clone)]
struct Handles {
    handles: Arc<Vec<PgStore>>,
    turn: Arc<AtomicUsize>,
    last_appender: Arc<AtomicUsize>,
}

impl Handles {
    fn next(&self) -> &PgStore {
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    fn appender(&self) -> &PgStore {
        let i = self.turn.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.last_appender.store(i, Ordering::Relaxed);
        &self.handles[i]
    }

    fn subscriber(&self, start: Start) -> &PgStore {
        match start {
            Start::End => &self.handles[self.last_appender.load(Ordering::Relaxed)],
            _ => self.next(),
        }
    }
}

impl EventAppender for Handles {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, StoreError> {
        self.appender().append(stream, expected, events).await
    }
}

impl EventReader for Handles {
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.next().read_stream(stream, options).await
    }
    async fn read_all(&self, options: ReadAll) -> Result<Vec<RecordedEvent>, StoreError> {
        self.next().read_all(options).await
    }
    async fn read_correlation(
        &self,
        correlation_id: &str,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.next()
            .read_correlation(correlation_id, from, limit)
            .await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<Revision>, StoreError> {
        self.next().stream_version(stream).await
    }
    async fn list_streams(&self, options: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        self.next().list_streams(options).await
    }
    async fn head(&self) -> Result<Option<Position>, StoreError> {
        self.next().head().await
    }
}

impl EventSubscriber for Handles {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        self.subscriber(start).subscribe_all(start, filter)
    }
    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        self.subscriber(start).subscribe_stream(stream, start)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_taking_turns_conform() {
    let Some(url) = database("handles_taking_turns_conform").await else {
        return;
    };
    let schemas = Schemas::default();
    tidings::testing::conformance::run_all(|| {
        let (url, schema) = (url.clone(), schemas.fresh());
        async move {
            let mut handles = Vec::new();
            for _ in 0..3 {
                handles.push(
                    PgStore::builder(&url)
                        .schema(&schema)
                        .max_connections(3)
                        .connect()
                        .await
                        .unwrap_or_else(|e| panic!("connect: {e}")),
                );
            }
            Handles {
                handles: Arc::new(handles),
                turn: Arc::new(AtomicUsize::new(0)),
                last_appender: Arc::new(AtomicUsize::new(0)),
            }
        }
    })
    .await;
    schemas.drop_all(&url).await;
}
