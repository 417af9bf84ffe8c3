//! RFC 9457 problem details: every error the API answers with.
//!
//! A [`Problem`] has a stable `type` URI (`urn:tidings:problem:<slug>`), a `title` shared
//! by every problem of that type, a `detail` written for the person who sent the request,
//! and extension members carrying the values needed to fix it (`expected` and `actual` on a
//! version conflict, `limit` on an oversize body, `index` on a refused event).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use tidings::{ExpectedVersion, StoreError};

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An error answer of the API, rendered as `application/problem+json`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {slug}: {detail}")]
pub struct Problem {
    /// The HTTP status.
    pub status: StatusCode,
    /// Short machine name of the problem type (`wrong-expected-version`).
    pub slug: &'static str,
    /// What went wrong with this request, in words.
    pub detail: String,
    /// Extension members: the values needed to fix the request.
    pub extensions: Box<Map<String, Value>>,
    /// Seconds after which a retry may succeed (sets `Retry-After`).
    pub retry_after: Option<u64>,
}

impl Problem {
    /// A problem of `status` and type `slug`.
    pub fn new(status: StatusCode, slug: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            slug,
            detail: detail.into(),
            extensions: Box::default(),
            retry_after: None,
        }
    }

    /// Adds an extension member.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// Sets `Retry-After`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// 400: the request is malformed.
    pub fn bad_request(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, slug, detail)
    }

    /// 422: the request is well formed but its events are refused.
    pub fn unprocessable(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, slug, detail)
    }

    /// 404: nothing here.
    pub fn not_found(slug: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, slug, detail)
    }

    /// 503: try again later.
    pub fn unavailable(slug: &'static str, detail: impl Into<String>, retry: u64) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, slug, detail).retry_after(retry)
    }

    /// The `type` URI.
    pub fn type_uri(&self) -> String {
        format!("urn:tidings:problem:{}", self.slug)
    }

    /// The problem document.
    pub fn body(&self) -> Value {
        let mut doc = Map::new();
        doc.insert("type".into(), Value::String(self.type_uri()));
        doc.insert(
            "title".into(),
            Value::String(self.status.canonical_reason().unwrap_or("Error").to_owned()),
        );
        doc.insert("status".into(), json!(self.status.as_u16()));
        doc.insert("detail".into(), Value::String(self.detail.clone()));
        for (k, v) in self.extensions.iter() {
            doc.insert(k.clone(), v.clone());
        }
        Value::Object(doc)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn version_json(v: ExpectedVersion) -> Value {
    match v {
        ExpectedVersion::Exact(n) => json!(n),
        other => json!(other.to_string()),
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        let detail = e.to_string();
        match e {
            StoreError::WrongExpectedVersion {
                stream,
                expected,
                actual,
            } => Problem::new(StatusCode::CONFLICT, "wrong-expected-version", format!(
                "stream {stream} is at version {}, but the request expected {expected}; read the stream and retry with Expected-Version: {}",
                actual.map_or_else(|| "none (no events)".to_owned(), |a| a.to_string()),
                actual.map_or_else(|| "no-stream".to_owned(), |a| a.to_string()),
            ))
            .with("stream", stream.as_str())
            .with("expected", version_json(expected))
            .with("actual", actual.map_or(Value::Null, |a| json!(a))),
            StoreError::InvalidEvent { index, source } => {
                Problem::unprocessable("invalid-event", detail)
                    .with("index", index)
                    .with("reason", source.to_string())
            }
            StoreError::InvalidStream(_) => Problem::bad_request("invalid-stream", detail),
            StoreError::EmptyAppend => Problem::unprocessable(
                "empty-append",
                "the request carries no events; send one event object or a non-empty array",
            ),
            StoreError::AppendTooLarge { size, max } => {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "append-too-large", detail)
                    .with("size", size)
                    .with("limit", max)
            }
            StoreError::DuplicateEventId {
                stream,
                event_id,
                reason,
            } => Problem::new(StatusCode::CONFLICT, "duplicate-event-id", detail)
                .with("stream", stream.as_str())
                .with("eventId", event_id.to_string())
                .with("reason", reason),
            StoreError::Timeout {
                operation,
                after,
                outcome_unknown,
            } => {
                let outcome = if outcome_unknown {
                    "its outcome is unknown: it may still be written"
                } else {
                    "the store reports that nothing was written, but treat the outcome as unknown"
                };
                Problem::unavailable(
                    "append-timeout",
                    format!(
                        "{operation} did not finish within {} ms; {outcome}. Retrying with the \
                         same event ids is safe: the store deduplicates by event id, so the \
                         events are written at most once",
                        after.as_millis()
                    ),
                    2,
                )
                .with("timeoutMs", after.as_millis() as u64)
                .with("outcomeUnknown", outcome_unknown)
            }
            StoreError::Busy(_) => Problem::unavailable("store-busy", detail, 1),
            StoreError::Closed => Problem::unavailable("store-closed", detail, 5),
            StoreError::Stopped(_) => Problem::unavailable("store-stopped", detail, 60),
            StoreError::Corrupt(_) => {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "store-corrupt", detail)
            }
            // `StoreError::Backend`, and any store failure this server does not name yet.
            _ => {
                Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "store-failure", detail)
            }
        }
    }
}
