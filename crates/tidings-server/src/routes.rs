//! Handlers of the JSON routes: append, reads and operations.

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tidings::{
    Direction, Filter, ListStreams, ReadAll, ReadStream, StoreError, StreamId, StreamIdError,
};

use crate::append::parse_append;
use crate::format::{
    ReadFormat, Shape, batch_response, cloudevent_response, negotiate, next_link, vary_accept,
};
use crate::problem::Problem;
use crate::{AppState, EventStore};

/// Default page size of reads.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page a read returns.
pub const MAX_LIMIT: usize = 10_000;

pub(crate) fn user_stream(name: &str) -> Result<StreamId, Problem> {
    StreamId::new(name).map_err(|e| stream_problem(name, e))
}

pub(crate) fn any_stream(name: &str) -> Result<StreamId, Problem> {
    StreamId::parse_any(name).map_err(|e| stream_problem(name, e))
}

fn stream_problem(name: &str, e: StreamIdError) -> Problem {
    Problem::bad_request(
        "invalid-stream",
        format!("stream name {name:?} is refused: {e}"),
    )
    .with("stream", name.to_owned())
}

fn limit(requested: Option<usize>) -> Result<usize, Problem> {
    match requested {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(Problem::bad_request(
            "invalid-query",
            "limit must be at least 1",
        )),
        Some(n) if n > MAX_LIMIT => Err(Problem::bad_request(
            "invalid-query",
            format!("limit {n} is above the largest page, {MAX_LIMIT}; page with from"),
        )
        .with("limit", MAX_LIMIT)),
        Some(n) => Ok(n),
    }
}

/// Turns a query-string rejection into a problem naming the parameter.
pub(crate) fn query<T>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, Problem> {
    q.map(|Query(t)| t).map_err(|e| {
        Problem::bad_request(
            "invalid-query",
            format!("the query string is refused: {}", e.body_text()),
        )
    })
}

pub(crate) async fn append<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let stream = user_stream(&stream)?;
    let admission = &state.inner.admission;
    let admitted = admission.admit(&headers, state.is_shutting_down(), state.metrics())?;
    let bytes = admission.read_body(body).await?;
    let request = parse_append(&headers, &bytes)?;
    let events = request
        .events
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            state.inner.enricher.enrich(e).map_err(|source| {
                Problem::from(tidings::StoreError::InvalidEvent { index, source })
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let count = events.len() as u64;
    let size: usize = events.iter().map(|e| e.encoded_len()).sum();
    let started = Instant::now();
    let result = deadline_append(&state, admitted, stream.clone(), request.expected, events).await;
    let took = started.elapsed();
    match result {
        Ok(r) => {
            state.metrics().record_append(count, size as u64, took);
            let body = json!({
                "stream": stream.as_str(),
                "firstRevision": r.first_revision,
                "nextExpectedVersion": r.next_expected_version,
                "firstPosition": r.first_position,
                "position": r.position,
                "count": count,
            });
            let location = format!(
                "/streams/{}/{}",
                encode_segment(stream.as_str()),
                r.first_revision
            );
            Ok((
                StatusCode::CREATED,
                [(header::LOCATION, location)],
                Json(body),
            )
                .into_response())
        }
        Err(e) => {
            state.metrics().record_append_failure(took);
            Err(e.into())
        }
    }
}

/// Runs the store's append within the append deadline. The store call runs in a task
/// of its own holding the append's admission, so an append that passes the deadline is
/// answered at once yet never cancelled mid-write: it keeps its slot (shutdown drains
/// it) and counts as stalled until the store answers.
async fn deadline_append<S: EventStore>(
    state: &AppState<S>,
    admitted: crate::admission::Admitted,
    stream: StreamId,
    expected: tidings::ExpectedVersion,
    events: Vec<tidings::Event>,
) -> Result<tidings::AppendResult, StoreError> {
    let deadline = state.config().append_timeout;
    let stalls = &state.inner.stalls;
    let tracked = stalls.track();
    let task_state = state.clone();
    let task_stream = stream.clone();
    let task = tokio::spawn(async move {
        let _held = (admitted, tracked);
        task_state
            .store()
            .append(&task_stream, expected, events)
            .await
    });
    let result = match tokio::time::timeout(deadline, task).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(failed)) => Err(StoreError::Backend(format!(
            "the append to {stream} failed inside the server: {failed}"
        ))),
        Err(_) => Err(StoreError::Timeout {
            operation: format!("append to {stream}"),
            after: deadline,
            outcome_unknown: true,
        }),
    };
    match &result {
        Ok(_) => stalls.succeeded(),
        Err(StoreError::Timeout { .. }) => {
            stalls.timed_out();
            state.metrics().record_append_timeout();
        }
        Err(_) => {}
    }
    result
}

/// Percent-encodes one path segment.
pub(crate) fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReadStreamQuery {
    from: Option<u64>,
    limit: Option<usize>,
    direction: Option<Direction>,
}

pub(crate) async fn read_stream<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<ReadStreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let format = negotiate(&headers, Shape::List)?;
    let q = query(q)?;
    let stream = any_stream(&stream)?;
    let limit = limit(q.limit)?;
    let direction = q.direction.unwrap_or_default();
    let store = state.store();
    let Some(version) = store.stream_version(&stream).await? else {
        return Err(Problem::not_found(
            "stream-not-found",
            format!("stream {stream} has no events"),
        )
        .with("stream", stream.as_str()));
    };
    let options = ReadStream {
        from: q.from,
        direction,
        limit,
    };
    let events = store.read_stream(&stream, options).await?;
    let next = match direction {
        Direction::Forward => events
            .last()
            .map(|e| e.revision + 1)
            .filter(|&n| n <= version),
        Direction::Backward => events.last().and_then(|e| e.revision.checked_sub(1)),
    };
    let next = if events.len() < limit { None } else { next };
    if format != ReadFormat::Json {
        return Ok(batch_page(&events, &uri, next));
    }
    Ok(vary_accept(
        Json(json!({
            "stream": stream.as_str(),
            "version": version,
            "direction": direction,
            "events": events,
            "next": next,
        }))
        .into_response(),
    ))
}

/// A page of events as a CloudEvents batch; the next page, if any, in a `Link` header.
fn batch_page(events: &[tidings::RecordedEvent], uri: &Uri, next: Option<u64>) -> Response {
    let mut response = batch_response(events);
    if let Some(link) = next.and_then(|n| next_link(uri, n)) {
        response.headers_mut().insert(header::LINK, link);
    }
    vary_accept(response)
}

pub(crate) async fn read_event<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((stream, revision)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let format = negotiate(&headers, Shape::One)?;
    let stream = any_stream(&stream)?;
    let revision: u64 = revision.parse().map_err(|_| {
        Problem::bad_request(
            "invalid-revision",
            format!("{revision:?} is not a revision; revisions are numbers from 0"),
        )
    })?;
    let events = state
        .store()
        .read_stream(&stream, ReadStream::forward().from(revision).limit(1))
        .await?;
    match events.into_iter().next().filter(|e| e.revision == revision) {
        Some(e) => Ok(vary_accept(match format {
            ReadFormat::Json => Json(e).into_response(),
            ReadFormat::CloudEvent => cloudevent_response(&e),
            ReadFormat::CloudEventsBatch => batch_response(std::slice::from_ref(&e)),
        })),
        None => Err(Problem::not_found(
            "event-not-found",
            format!("stream {stream} has no event at revision {revision}"),
        )
        .with("stream", stream.as_str())
        .with("revision", revision)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReadAllQuery {
    pub(crate) from: Option<u64>,
    limit: Option<usize>,
    #[serde(rename = "type")]
    pub(crate) event_type: Option<String>,
    pub(crate) stream_prefix: Option<String>,
    pub(crate) category: Option<String>,
}

/// The filter of `type` and `category` (both comma-separated) and `streamPrefix`.
pub(crate) fn filter_of(
    event_type: Option<&str>,
    stream_prefix: Option<&str>,
    category: Option<&str>,
) -> Filter {
    let mut filter = Filter::all();
    let items = |list: Option<&str>| -> Vec<String> {
        list.unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    };
    for t in items(event_type) {
        filter = filter.event_type(t);
    }
    for c in items(category) {
        filter = filter.category(c);
    }
    if let Some(p) = stream_prefix.filter(|p| !p.is_empty()) {
        filter = filter.stream_prefix(p);
    }
    filter
}

pub(crate) async fn read_all<S: EventStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<ReadAllQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let format = negotiate(&headers, Shape::List)?;
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let from = q.from.unwrap_or(0);
    let filter = filter_of(
        q.event_type.as_deref(),
        q.stream_prefix.as_deref(),
        q.category.as_deref(),
    );
    let store = state.store();
    let head = store.head().await?;
    let events = store
        .read_all(ReadAll::new(from, limit).filter(filter))
        .await?;
    let next = if events.len() == limit {
        events.last().map(|e| e.position + 1)
    } else {
        None
    };
    if format != ReadFormat::Json {
        return Ok(batch_page(&events, &uri, next));
    }
    Ok(vary_accept(
        Json(json!({ "head": head, "events": events, "next": next })).into_response(),
    ))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

pub(crate) async fn list_streams<S: EventStore>(
    State(state): State<AppState<S>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let q = query(q)?;
    let limit = limit(q.limit)?;
    let streams = state
        .store()
        .list_streams(ListStreams {
            prefix: q.prefix.filter(|p| !p.is_empty()),
            after: q.after,
            limit,
        })
        .await?;
    let next = if streams.len() == limit {
        streams.last().map(|s| s.stream.as_str().to_owned())
    } else {
        None
    };
    Ok(Json(json!({ "streams": streams, "next": next })).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct CorrelationQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn correlation<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    q: Result<Query<CorrelationQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let format = negotiate(&headers, Shape::List)?;
    let q = query(q)?;
    let limit = limit(q.limit.or(Some(MAX_LIMIT)))?;
    let events = state
        .store()
        .read_correlation(&id, q.from.unwrap_or(0), limit)
        .await?;
    if events.is_empty() {
        return Err(Problem::not_found(
            "correlation-not-found",
            format!("no event carries correlationId {id:?}"),
        )
        .with("correlationId", id));
    }
    let next = if events.len() == limit {
        events.last().map(|e| e.position + 1)
    } else {
        None
    };
    if format != ReadFormat::Json {
        return Ok(batch_page(&events, &uri, next));
    }
    Ok(vary_accept(
        Json(json!({ "correlationId": id, "events": events, "next": next })).into_response(),
    ))
}

pub(crate) async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub(crate) async fn ready<S: EventStore>(State(state): State<AppState<S>>) -> Response {
    if state.is_shutting_down() {
        return Problem::unavailable("shutting-down", "the server is shutting down", 5)
            .into_response();
    }
    let deadline = state.config().append_timeout;
    if let Some(reason) = state.inner.stalls.reason(deadline) {
        return Problem::unavailable(
            "appends-stalled",
            format!("appends are stalled: {reason}"),
            1,
        )
        .with("appendsStalled", state.inner.stalls.stalled(deadline))
        .with("appendTimeoutMs", deadline.as_millis() as u64)
        .into_response();
    }
    match state.store().head().await {
        Ok(head) => Json(json!({ "status": "ready", "head": head })).into_response(),
        Err(e) => Problem::from(e).into_response(),
    }
}

/// `/metrics`: OpenMetrics text for scrapers that ask for it (Prometheus does), and
/// labelled as the Prometheus text format 0.0.4 for everyone else.
pub(crate) async fn metrics<S: EventStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
) -> Response {
    let head = state.store().head().await.ok().flatten();
    let size = state.config().store_size.as_ref().and_then(|f| f());
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    let stalled = state.inner.stalls.stalled(state.config().append_timeout);
    state.metrics().set_appends_stalled(stalled as u64);
    let groups = crate::groups::describe_all(&state).await;
    (
        [(header::CONTENT_TYPE, content_type)],
        state.metrics().encode_with_groups(head, size, &groups),
    )
        .into_response()
}

pub(crate) async fn stats<S: EventStore>(
    State(state): State<AppState<S>>,
) -> Result<Response, Problem> {
    let head = state.store().head().await?;
    let m = state.metrics();
    Ok(Json(json!({
        "head": head,
        "events": head.map_or(0, |h| h + 1),
        "storeBytes": state.config().store_size.as_ref().and_then(|f| f()),
        "store": state.config().store_description,
        "appends": m.appends(),
        "eventsAppended": m.events(),
        "bytesAppended": m.bytes(),
        "subscribers": m.subscribers(),
        "uptimeSeconds": state.inner.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response())
}

pub(crate) async fn openapi() -> Response {
    Json(crate::openapi::document()).into_response()
}

pub(crate) async fn not_found(uri: Uri) -> Problem {
    Problem::not_found(
        "route-not-found",
        format!("no route {}; see /openapi.json for the API", uri.path()),
    )
    .with("path", uri.path().to_owned())
}

pub(crate) async fn method_not_allowed(method: axum::http::Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!(
            "{method} is not allowed on {}; see /openapi.json",
            uri.path()
        ),
    )
    .with("method", method.to_string())
}
