//! The conformance suite against several handles on one schema, taking turns: as if each
//! call came from another process. Appends race across separate pools and writers (no
//! group commit between them), and subscriptions hear other handles' appends only
//! through NOTIFY.
//!
//! One exception: a subscription from `Start::End` goes to the handle that appended
//! last. `Start::End` starts after the last commit the handle has *heard of*; another
//! process's commit from a moment ago may not have been announced yet and is then
//! delivered too (never missed). The suite checks the strict single-process meaning.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

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

use common::{Schemas, database, live_claims};

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

    fn limits(&self) -> tidings::Limits {
        self.appender().limits()
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
    let caps = tidings_testkit::conformance::Capabilities::default().gaps_allowed();
    tidings_testkit::conformance::run_all_with(caps, || {
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

/// One task per handle, so every append runs alone (the one-call path): writers racing on
/// one stream with `Exact` still get exactly one winner per version. A writer that loses
/// the race after claiming positions leaves them as a gap (decisions 0020, 0022), so
/// positions only increase with revisions; every claim is settled afterwards, and
/// `read_all` (below the horizon) gives the stream's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lone_appends_race_across_handles() {
    let Some(url) = database("lone_appends_race_across_handles").await else {
        return;
    };
    let schema = common::fresh_schema();
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(common::store_in(&url, &schema).await);
    }
    let s = tidings_testkit::conformance::stream("contended-1");
    let seed = tidings_testkit::conformance::event("Seed", serde_json::json!(0));
    handles[0]
        .append(&s, ExpectedVersion::NoStream, vec![seed])
        .await
        .unwrap_or_else(|e| panic!("seed: {e}"));
    let mut tasks = Vec::new();
    for (w, h) in handles.iter().cloned().enumerate() {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            for i in 0..40 {
                let current = h.stream_version(&s).await.ok().flatten();
                let expected = current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                // Every fifth try uses Any, which always wins, to mix both kinds.
                let expected = if i % 5 == 4 {
                    ExpectedVersion::Any
                } else {
                    expected
                };
                let e = tidings_testkit::conformance::event("Won", serde_json::json!([w, i]));
                match h.append(&s, expected, vec![e.clone()]).await {
                    Ok(r) => wins.push((r.next_expected_version, r.position, e.event_id)),
                    Err(StoreError::WrongExpectedVersion { .. }) => {}
                    Err(other) => panic!("writer {w}: {other}"),
                }
            }
            wins
        }));
    }
    let mut wins = Vec::new();
    for t in tasks {
        wins.extend(t.await.unwrap_or_else(|e| panic!("writer task: {e}")));
    }
    wins.sort();
    let log = handles[0]
        .read_stream(&s, ReadStream::forward())
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(
        log.len(),
        wins.len() + 1,
        "every win is recorded, nothing else"
    );
    for (i, ((rev, pos, id), e)) in wins.iter().zip(&log[1..]).enumerate() {
        assert_eq!(*rev, i as u64 + 1, "one winner per revision");
        assert_eq!((e.revision, e.position, e.event_id), (*rev, *pos, *id));
    }
    assert!(
        log.windows(2).all(|w| w[0].position < w[1].position),
        "positions increase with revisions"
    );
    assert_eq!(
        live_claims(&handles[0]).await,
        0,
        "every claim ended with its transaction"
    );
    let all = handles[0]
        .read_all(tidings::ReadAll::new(0, usize::MAX))
        .await
        .unwrap_or_else(|e| panic!("read all: {e}"));
    assert_eq!(all, log, "read_all reaches every committed event");
    let last = handles.pop().unwrap_or_else(|| panic!("no handles"));
    drop(handles);
    last.drop_schema()
        .await
        .unwrap_or_else(|e| panic!("drop schema: {e}"));
}

/// Creators racing on new streams from separate handles (the one-call path: the stream
/// row is inserted with `ON CONFLICT DO NOTHING`, and the loser declines to the full
/// transaction): exactly one `NoStream` append wins each stream, every other one is
/// refused with the winner's version, and no claim is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creators_race_on_new_streams_one_wins() {
    let Some(url) = database("creators_race_on_new_streams_one_wins").await else {
        return;
    };
    let schema = common::fresh_schema();
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(common::store_in(&url, &schema).await);
    }
    const STREAMS: usize = 20;
    let mut tasks = Vec::new();
    for (w, h) in handles.iter().cloned().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for i in 0..STREAMS {
                let s = tidings_testkit::conformance::stream(&format!("new-{i}"));
                let e = tidings_testkit::conformance::event("Created", serde_json::json!([w, i]));
                match h
                    .append(&s, ExpectedVersion::NoStream, vec![e.clone()])
                    .await
                {
                    Ok(r) => won.push((i, r.position, e.event_id)),
                    Err(StoreError::WrongExpectedVersion {
                        actual: Some(0), ..
                    }) => {}
                    Err(other) => panic!("creator {w}, stream {i}: {other}"),
                }
            }
            won
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        won.extend(t.await.unwrap_or_else(|e| panic!("creator task: {e}")));
    }
    won.sort();
    assert_eq!(
        won.iter().map(|(i, _, _)| *i).collect::<Vec<_>>(),
        (0..STREAMS).collect::<Vec<_>>(),
        "exactly one creator wins each stream"
    );
    for (i, position, id) in &won {
        let s = tidings_testkit::conformance::stream(&format!("new-{i}"));
        let events = handles[0]
            .read_stream(&s, ReadStream::forward())
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert_eq!(events.len(), 1, "stream new-{i} holds the winner only");
        assert_eq!((events[0].position, events[0].event_id), (*position, *id));
    }
    assert_eq!(
        live_claims(&handles[0]).await,
        0,
        "every claim ended with its transaction"
    );
    let last = handles.pop().unwrap_or_else(|| panic!("no handles"));
    drop(handles);
    last.drop_schema()
        .await
        .unwrap_or_else(|e| panic!("drop schema: {e}"));
}
