//! What the client commands need of a store, over a local store or a server.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::Value;
use tidings::{
    AppendResult, Direction, Event, EventStore, ExpectedVersion, ListStreams, Position, ReadAll,
    ReadStream, RecordedEvent, Start, StoreError, StreamId, StreamInfo,
};

/// The operations behind the client commands.
pub trait Client: Send + Sync {
    /// Appends complete events (ids kept).
    fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<AppendResult, ClientError>> + Send;
    /// Reads a stream page.
    fn read_stream(
        &self,
        stream: &str,
        options: ReadStream,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;
    /// Reads a page of the global log.
    fn read_all(
        &self,
        from: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;
    /// Lists streams.
    fn list_streams(
        &self,
        prefix: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StreamInfo>>> + Send;
    /// Every event of a correlation id.
    fn correlation(&self, id: &str) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;
    /// The head position.
    fn head(&self) -> impl Future<Output = Result<Option<Position>>> + Send;
    /// Live events from `from` (a position for all, a revision for a stream; None: new only).
    fn subscribe(
        &self,
        stream: Option<&str>,
        from: Option<u64>,
    ) -> impl Future<Output = Result<BoxStream<'static, Result<RecordedEvent>>>> + Send;
}

/// An append failure, kept typed so import can tell a conflict from a failure.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store refused the append.
    #[error("{detail}")]
    Refused {
        /// The problem type's slug, e.g. `duplicate-event-id`.
        slug: String,
        /// What the store said.
        detail: String,
    },
    /// Anything else.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

fn slug_of(e: &StoreError) -> &'static str {
    match e {
        StoreError::WrongExpectedVersion { .. } => "wrong-expected-version",
        StoreError::DuplicateEventId { .. } => "duplicate-event-id",
        StoreError::InvalidEvent { .. } => "invalid-event",
        StoreError::InvalidStream(_) => "invalid-stream",
        StoreError::AppendTooLarge { .. } => "append-too-large",
        StoreError::Timeout { .. } => "append-timeout",
        _ => "store-failure",
    }
}

/// A store opened in this process.
pub struct Local<S>(pub S);

fn stream_id(name: &str) -> Result<StreamId> {
    StreamId::parse_any(name).map_err(|e| anyhow!("stream name {name:?}: {e}"))
}

impl<S: EventStore> Client for Local<S> {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, ClientError> {
        let id = StreamId::new(stream).map_err(|e| ClientError::Refused {
            slug: "invalid-stream".into(),
            detail: e.to_string(),
        })?;
        self.0
            .append(&id, expected, events)
            .await
            .map_err(|e| ClientError::Refused {
                slug: slug_of(&e).into(),
                detail: e.to_string(),
            })
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        Ok(self.0.read_stream(&stream_id(stream)?, options).await?)
    }

    async fn read_all(&self, from: Position, limit: usize) -> Result<Vec<RecordedEvent>> {
        Ok(self.0.read_all(ReadAll::new(from, limit)).await?)
    }

    async fn list_streams(
        &self,
        prefix: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        Ok(self
            .0
            .list_streams(ListStreams {
                prefix,
                after,
                limit,
            })
            .await?)
    }

    async fn correlation(&self, id: &str) -> Result<Vec<RecordedEvent>> {
        Ok(self.0.read_correlation(id, 0, usize::MAX).await?)
    }

    async fn head(&self) -> Result<Option<Position>> {
        Ok(self.0.head().await?)
    }

    async fn subscribe(
        &self,
        stream: Option<&str>,
        from: Option<u64>,
    ) -> Result<BoxStream<'static, Result<RecordedEvent>>> {
        let start = from.map_or(Start::End, Start::At);
        Ok(match stream {
            Some(s) => self
                .0
                .subscribe_stream(&stream_id(s)?, start)
                .map_err(anyhow::Error::from)
                .boxed(),
            None => self
                .0
                .subscribe_all(start, tidings::Filter::all())
                .map_err(anyhow::Error::from)
                .boxed(),
        })
    }
}

/// A Tidings server reached over HTTP.
#[derive(Clone)]
pub struct Remote {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// Parses one recorded event from JSON text.
pub fn parse_recorded(text: &str) -> serde_json::Result<RecordedEvent> {
    serde_json::from_str(text)
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new", alias = "streams")]
    events: Vec<T>,
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Remote {
    /// A client of the server at `base` (e.g. `http://127.0.0.1:7400`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--server {base}: use a URL like http://127.0.0.1:7400");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { base, http, token })
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.get(format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = req.send().await.with_context(|| {
            format!(
                "cannot reach the server at {} (is `tidings serve` running?)",
                self.base
            )
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let detail = body["detail"].as_str().unwrap_or("no detail").to_owned();
        let slug = body["type"]
            .as_str()
            .and_then(|t| t.rsplit(':').next())
            .unwrap_or("")
            .to_owned();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(anyhow!(
                "the server answered {status}: {detail} (pass --token or set TIDINGS_TOKEN)"
            )
            .into());
        }
        if status.is_client_error() && !slug.is_empty() {
            return Err(ClientError::Refused {
                slug,
                detail: format!("{status}: {detail}"),
            });
        }
        Err(anyhow!("the server answered {status}: {detail}").into())
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let r = self.send(self.get(path)).await.map_err(|e| anyhow!(e))?;
        Ok(r.json().await?)
    }
}

impl Client for Remote {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<AppendResult, ClientError> {
        let mut req = self
            .http
            .post(format!("{}/streams/{}", self.base, enc(stream)))
            .header("expected-version", expected.to_string())
            .json(&events);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let r = self.send(req).await?;
        Ok(r.json().await.map_err(anyhow::Error::from)?)
    }

    async fn read_stream(&self, stream: &str, options: ReadStream) -> Result<Vec<RecordedEvent>> {
        let mut path = format!(
            "/streams/{}?limit={}&direction={}",
            enc(stream),
            options.limit.min(tidings_server_max_limit()),
            if options.direction == Direction::Backward {
                "backward"
            } else {
                "forward"
            }
        );
        if let Some(f) = options.from {
            path.push_str(&format!("&from={f}"));
        }
        match self.send(self.get(&path)).await {
            Ok(r) => Ok(r.json::<Page<RecordedEvent>>().await?.events),
            Err(ClientError::Refused { slug, .. }) if slug == "stream-not-found" => Ok(Vec::new()),
            Err(e) => Err(anyhow!(e)),
        }
    }

    async fn read_all(&self, from: Position, limit: usize) -> Result<Vec<RecordedEvent>> {
        let page: Page<RecordedEvent> = self
            .get_json(&format!(
                "/all?from={from}&limit={}",
                limit.min(tidings_server_max_limit())
            ))
            .await?;
        Ok(page.events)
    }

    async fn list_streams(
        &self,
        prefix: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<Vec<StreamInfo>> {
        let mut path = format!("/streams?limit={}", limit.min(tidings_server_max_limit()));
        if let Some(p) = prefix {
            path.push_str(&format!("&prefix={}", enc(&p)));
        }
        if let Some(a) = after {
            path.push_str(&format!("&after={}", enc(&a)));
        }
        let page: Page<StreamInfo> = self.get_json(&path).await?;
        Ok(page.events)
    }

    async fn correlation(&self, id: &str) -> Result<Vec<RecordedEvent>> {
        match self
            .send(self.get(&format!("/correlations/{}", enc(id))))
            .await
        {
            Ok(r) => Ok(r.json::<Page<RecordedEvent>>().await?.events),
            Err(ClientError::Refused { slug, .. }) if slug == "correlation-not-found" => {
                Ok(Vec::new())
            }
            Err(e) => Err(anyhow!(e)),
        }
    }

    async fn head(&self) -> Result<Option<Position>> {
        let v: Value = self.get_json("/stats").await?;
        Ok(v["head"].as_u64())
    }

    async fn subscribe(
        &self,
        stream: Option<&str>,
        from: Option<u64>,
    ) -> Result<BoxStream<'static, Result<RecordedEvent>>> {
        let mut path = match stream {
            Some(s) => format!("/subscribe/streams/{}", enc(s)),
            None => "/subscribe/all".to_owned(),
        };
        if let Some(f) = from {
            path.push_str(&format!("?from={f}"));
        }
        let this = self.clone();
        let first = this.send(this.get(&path)).await.map_err(|e| anyhow!(e))?;
        let state = SseState {
            client: this,
            path,
            response: Some(first),
            buffer: Vec::new(),
            last_id: None,
        };
        Ok(futures::stream::unfold(state, next_sse_event).boxed())
    }
}

fn tidings_server_max_limit() -> usize {
    1000
}

struct SseState {
    client: Remote,
    path: String,
    response: Option<reqwest::Response>,
    buffer: Vec<u8>,
    last_id: Option<String>,
}

/// Reads the next `data:` message, reconnecting with `Last-Event-ID` when the
/// connection drops so no event is missed or repeated.
async fn next_sse_event(mut s: SseState) -> Option<(Result<RecordedEvent>, SseState)> {
    loop {
        if let Some(end) = s.buffer.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = s.buffer.drain(..end + 2).collect();
            let message = String::from_utf8_lossy(&raw);
            let mut data = String::new();
            let mut id = None;
            let mut kind = None;
            for line in message.lines() {
                if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.strip_prefix(' ').unwrap_or(d));
                } else if let Some(i) = line.strip_prefix("id:") {
                    id = Some(i.trim().to_owned());
                } else if let Some(k) = line.strip_prefix("event:") {
                    kind = Some(k.trim().to_owned());
                }
            }
            if data.is_empty() {
                continue;
            }
            if kind.as_deref() == Some("error") {
                return Some((Err(anyhow!("the subscription failed: {data}")), s));
            }
            if id.is_some() {
                s.last_id = id;
            }
            let parsed = parse_recorded(&data).context("a subscription message is not an event");
            return Some((parsed, s));
        }
        let Some(response) = s.response.as_mut() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut req = s.client.get(&s.path);
            if let Some(id) = &s.last_id {
                req = req.header("last-event-id", id.clone());
            }
            match s.client.send(req).await {
                Ok(r) => s.response = Some(r),
                Err(e) => eprintln!("reconnecting to the server: {e}"),
            }
            continue;
        };
        match response.chunk().await {
            Ok(Some(bytes)) => s.buffer.extend(bytes.iter().filter(|&&b| b != b'\r')),
            Ok(None) | Err(_) => {
                s.response = None;
                s.buffer.clear();
            }
        }
    }
}
