//! Starts the real server on an ephemeral port for integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use futures::Stream;
use tidings::store::EventStreamItem;
use tidings::{
    AppendResult, Event, EventAppender, EventReader, EventSubscriber, ExpectedVersion, Filter,
    InMemoryStore, ListStreams, Position, ReadAll, ReadStream, RecordedEvent, Revision, Start,
    StoreError, StreamId, StreamInfo,
};
use tidings_server::{AppState, ServerConfig};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

/// A running server.
pub struct TestServer<S = InMemoryStore> {
    pub base: String,
    pub state: AppState<S>,
    shutdown: Option<oneshot::Sender<()>>,
    pub handle: Option<JoinHandle<std::io::Result<()>>>,
}

impl<S: tidings::EventStore> TestServer<S> {
    pub async fn start_with(store: S, config: ServerConfig) -> Self {
        Self::start_state(AppState::new(store, config)).await
    }

    pub async fn start_state(state: AppState<S>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(tidings_server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Self {
            base,
            state,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signals shutdown (like SIGTERM) without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits until the server has returned.
    pub async fn stop(mut self) -> std::io::Result<()> {
        self.signal_shutdown();
        self.handle.take().unwrap().await.unwrap()
    }
}

impl TestServer<InMemoryStore> {
    pub async fn start() -> Self {
        Self::start_with(InMemoryStore::new(), ServerConfig::default()).await
    }

    pub async fn start_config(config: ServerConfig) -> Self {
        Self::start_with(InMemoryStore::new(), config).await
    }

    /// A server whose consumer groups are hosted over its in-memory store.
    pub async fn start_groups(config: ServerConfig) -> Self {
        let store = InMemoryStore::new();
        let groups = tidings::consumer::HostedGroups::open(store.clone())
            .await
            .unwrap();
        Self::start_state(AppState::with_groups(store, Arc::new(groups), config)).await
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// Reads `TIDINGS_SEED` or picks a seed, and prints it so a failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("TIDINGS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with TIDINGS_SEED={seed})");
    seed
}

#[allow(unused_imports)] // Not every test binary that includes this module needs them.
pub use tidings_testkit::services::{services_required, skip_or_fail};

/// An in-memory store whose appends wait for a permit: lets tests hold appends in flight.
#[derive(Clone)]
pub struct GatedStore {
    pub inner: InMemoryStore,
    pub gate: Arc<Semaphore>,
    pub entered: Arc<Semaphore>,
}

impl GatedStore {
    pub fn new() -> Self {
        Self {
            inner: InMemoryStore::new(),
            gate: Arc::new(Semaphore::new(0)),
            entered: Arc::new(Semaphore::new(0)),
        }
    }
}

impl EventAppender for GatedStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, StoreError> {
        self.entered.add_permits(1);
        self.gate.acquire().await.unwrap().forget();
        self.inner.append(stream, expected, events).await
    }

    fn limits(&self) -> tidings::Limits {
        self.inner.limits()
    }
}

impl EventReader for GatedStore {
    async fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_stream(stream, options).await
    }
    async fn read_all(&self, options: ReadAll) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(options).await
    }
    async fn read_correlation(
        &self,
        id: &str,
        from: Position,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_correlation(id, from, limit).await
    }
    async fn stream_version(&self, stream: &StreamId) -> Result<Option<Revision>, StoreError> {
        self.inner.stream_version(stream).await
    }
    async fn list_streams(&self, options: ListStreams) -> Result<Vec<StreamInfo>, StoreError> {
        self.inner.list_streams(options).await
    }
    async fn head(&self) -> Result<Option<Position>, StoreError> {
        self.inner.head().await
    }
}

impl EventSubscriber for GatedStore {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        self.inner.subscribe_all(start, filter)
    }
    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = EventStreamItem> + Send + 'static {
        self.inner.subscribe_stream(stream, start)
    }
}

/// A minimal Server-Sent Events reader: (id, data) pairs, skipping comments.
pub struct SseReader {
    response: reqwest::Response,
    buf: Vec<u8>,
    pub comments: usize,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: Vec::new(),
            comments: 0,
        }
    }

    /// Reads until at least one comment (heartbeat) has arrived and no message is pending.
    pub async fn wait_comment(&mut self) {
        while self.comments == 0 {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                assert!(raw.starts_with(b":"), "expected a comment, got a message");
                self.comments += 1;
                continue;
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buf.extend(bytes.iter().filter(|&&b| b != b'\r')),
                _ => panic!("the stream ended before a heartbeat"),
            }
        }
    }

    /// The next message (id, event, data); None when the stream ends.
    pub async fn next(&mut self) -> Option<(Option<String>, Option<String>, String)> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(raw).unwrap();
                let (mut id, mut event, mut data) = (None, None, String::new());
                let mut comment_only = true;
                for line in text.lines() {
                    if line.starts_with(':') {
                        continue;
                    }
                    comment_only = false;
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if comment_only {
                    self.comments += 1;
                    continue;
                }
                return Some((id, event, data));
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buf.extend(bytes.iter().filter(|&&b| b != b'\r')),
                _ => return None,
            }
        }
    }
}
