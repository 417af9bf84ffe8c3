//! Live subscriptions as Server-Sent Events.
//!
//! Each event goes out as one SSE message whose `id` is the event's global position and
//! whose `data` is the recorded event's JSON. A client that reconnects with
//! `Last-Event-ID: N` gets every matching event after position N: the subscription is the
//! store's catch-up-then-live read, so there is no gap and no duplicate. Idle connections
//! get `: heartbeat` comments; on shutdown every subscription ends cleanly.
//!
//! With `?format=cloudevents` each `data` is instead the event as one structured
//! CloudEvent ([`tidings::event::cloudevents::recorded_to_structured`]: the stream,
//! revision, position and recording time ride along as the `tidingsstream`,
//! `tidingsrevision`, `tidingsposition` and `tidingsrecordedat` extensions). `?format=json` is the default. The format is a query
//! parameter because `EventSource` cannot set request headers; ids and `Last-Event-ID`
//! resumption are the same in both formats.

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tidings::event::cloudevents::recorded_to_structured;
use tidings::store::EventStreamItem;
use tidings::{Position, ReadStream, Start, StreamId};

use crate::problem::Problem;
use crate::routes::{ReadAllQuery, any_stream, filter_of, query};
use crate::{AppState, EventStore};

fn last_event_id(headers: &HeaderMap) -> Result<Option<Position>, Problem> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = v.to_str().unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        Problem::bad_request(
            "invalid-last-event-id",
            format!("Last-Event-ID {text:?} is not a global position"),
        )
    })
}

/// What each SSE message's `data` holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SseFormat {
    /// The recorded event's Tidings JSON.
    #[default]
    Json,
    /// The recorded event as one structured CloudEvent.
    CloudEvents,
}

#[derive(Debug, Deserialize)]
pub(crate) struct FormatQuery {
    #[serde(default)]
    format: SseFormat,
}

type Rejection = axum::extract::rejection::QueryRejection;

pub(crate) async fn subscribe_all<S: EventStore>(
    State(state): State<AppState<S>>,
    headers: HeaderMap,
    q: Result<Query<ReadAllQuery>, Rejection>,
    f: Result<Query<FormatQuery>, Rejection>,
) -> Result<Response, Problem> {
    let q = query(q)?;
    let format = query(f)?.format;
    let start = match (last_event_id(&headers)?, q.from) {
        (Some(last), _) => Start::At(last + 1),
        (None, Some(from)) => Start::At(from),
        (None, None) => Start::End,
    };
    let filter = filter_of(
        q.event_type.as_deref(),
        q.stream_prefix.as_deref(),
        q.category.as_deref(),
    );
    let events = state.store().subscribe_all(start, filter);
    Ok(respond(&state, events, None, format))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamSubscribeQuery {
    from: Option<u64>,
    #[serde(rename = "type")]
    event_type: Option<String>,
}

pub(crate) async fn subscribe_stream<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    q: Result<Query<StreamSubscribeQuery>, Rejection>,
    f: Result<Query<FormatQuery>, Rejection>,
) -> Result<Response, Problem> {
    let q = query(q)?;
    let format = query(f)?.format;
    let stream = any_stream(&stream)?;
    let start = match (last_event_id(&headers)?, q.from) {
        (Some(last), _) => Start::At(revision_after_position(&state, &stream, last).await?),
        (None, Some(from)) => Start::At(from),
        (None, None) => Start::End,
    };
    let types = filter_of(q.event_type.as_deref(), None, None);
    let events = state.store().subscribe_stream(&stream, start);
    Ok(respond(&state, events, Some(types), format))
}

/// The first revision of `stream` whose global position is after `position`.
async fn revision_after_position<S: EventStore>(
    state: &AppState<S>,
    stream: &StreamId,
    position: Position,
) -> Result<u64, Problem> {
    // Revisions and positions grow together, so page backward from the end until an
    // event at or before `position` is found.
    let mut from: Option<u64> = None;
    loop {
        let page = state
            .store()
            .read_stream(
                stream,
                ReadStream {
                    from,
                    direction: tidings::Direction::Backward,
                    limit: 512,
                },
            )
            .await?;
        let Some(last) = page.last() else {
            return Ok(0);
        };
        if let Some(e) = page.iter().find(|e| e.position <= position) {
            return Ok(e.revision + 1);
        }
        match last.revision.checked_sub(1) {
            Some(r) => from = Some(r),
            None => return Ok(0),
        }
    }
}

struct SubscriberGuard<S>(AppState<S>);

impl<S> Drop for SubscriberGuard<S> {
    fn drop(&mut self) {
        self.0.inner.metrics.subscriber_closed();
    }
}

fn respond<S: EventStore>(
    state: &AppState<S>,
    events: impl Stream<Item = EventStreamItem> + Send + 'static,
    types: Option<tidings::Filter>,
    format: SseFormat,
) -> Response {
    state.metrics().subscriber_opened();
    let guard = SubscriberGuard(state.clone());
    let mut shutdown = state.shutdown_watch();
    let closed = async move {
        let _ = shutdown.wait_for(|&down| down).await;
    };
    let body = events
        .take_until(Box::pin(closed))
        .filter(move |item| {
            let keep = match (item, &types) {
                (Ok(e), Some(f)) => f.matches(e.stream.as_str(), &e.event_type),
                _ => true,
            };
            std::future::ready(keep)
        })
        .map(move |item| -> Result<SseEvent, Infallible> {
            let metrics = &guard.0.inner.metrics;
            Ok(match item {
                Ok(e) => {
                    metrics.record_sse_event();
                    let data = match format {
                        SseFormat::Json => {
                            serde_json::to_string(&e).unwrap_or_else(|_| "{}".to_owned())
                        }
                        SseFormat::CloudEvents => recorded_to_structured(&e).to_string(),
                    };
                    SseEvent::default().id(e.position.to_string()).data(data)
                }
                Err(e) => SseEvent::default()
                    .event("error")
                    .data(Problem::from(e).body().to_string()),
            })
        });
    Sse::new(body)
        .keep_alive(
            KeepAlive::new()
                .interval(state.config().heartbeat)
                .text("heartbeat"),
        )
        .into_response()
}
