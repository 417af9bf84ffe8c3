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

/// One problem type the API answers with: its slug (the `type` URI is
/// `urn:tidings:problem:<slug>`), its HTTP status, whether it carries `Retry-After`, and
/// what it means. [`PROBLEM_TYPES`] lists them all; `/openapi.json` publishes the list as
/// `x-problem-types` and as the `enum` of the Problem schema's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProblemType {
    /// Short machine name (`wrong-expected-version`).
    pub slug: &'static str,
    /// The HTTP status it is answered with (`invalid-request` and `internal-error` also
    /// stand for other 4xx / 5xx statuses the framework answers).
    pub status: u16,
    /// Whether the answer carries `Retry-After`.
    pub retry_after: bool,
    /// What it means, in words.
    pub meaning: &'static str,
}

impl ProblemType {
    /// The `type` URI.
    pub fn type_uri(&self) -> String {
        format!("urn:tidings:problem:{}", self.slug)
    }
}

/// Every problem type the server answers with, by status.
pub const PROBLEM_TYPES: &[ProblemType] = &[
    ProblemType {
        slug: "malformed-json",
        status: 400,
        retry_after: false,
        meaning: "the append body is not JSON, or not an event object or array",
    },
    ProblemType {
        slug: "invalid-json",
        status: 400,
        retry_after: false,
        meaning: "a consumer-group request body is not the JSON the route takes",
    },
    ProblemType {
        slug: "invalid-stream",
        status: 400,
        retry_after: false,
        meaning: "the stream name is not a valid stream id",
    },
    ProblemType {
        slug: "invalid-header",
        status: 400,
        retry_after: false,
        meaning: "a header is not visible ASCII",
    },
    ProblemType {
        slug: "invalid-batch",
        status: 400,
        retry_after: false,
        meaning: "a CloudEvents batch is not a JSON array of structured events",
    },
    ProblemType {
        slug: "invalid-expected-version",
        status: 400,
        retry_after: false,
        meaning: "Expected-Version is not any, no-stream, stream-exists or a revision",
    },
    ProblemType {
        slug: "invalid-last-event-id",
        status: 400,
        retry_after: false,
        meaning: "Last-Event-ID is not a global position",
    },
    ProblemType {
        slug: "invalid-query",
        status: 400,
        retry_after: false,
        meaning: "a query parameter is refused (e.g. limit out of range)",
    },
    ProblemType {
        slug: "invalid-revision",
        status: 400,
        retry_after: false,
        meaning: "the revision in the path is not a number",
    },
    ProblemType {
        slug: "invalid-request",
        status: 400,
        retry_after: false,
        meaning: "the request is refused (any 4xx the framework answers, e.g. a bad path parameter, or a refused group operation)",
    },
    ProblemType {
        slug: "invalid-group-name",
        status: 400,
        retry_after: false,
        meaning: "the consumer group name is not valid",
    },
    ProblemType {
        slug: "invalid-group-settings",
        status: 400,
        retry_after: false,
        meaning: "a consumer group setting is out of range",
    },
    ProblemType {
        slug: "unauthorized",
        status: 401,
        retry_after: false,
        meaning: "a bearer token is required, or the token is unknown",
    },
    ProblemType {
        slug: "forbidden",
        status: 403,
        retry_after: false,
        meaning: "the token's role does not cover this route",
    },
    ProblemType {
        slug: "route-not-found",
        status: 404,
        retry_after: false,
        meaning: "no such route",
    },
    ProblemType {
        slug: "asset-not-found",
        status: 404,
        retry_after: false,
        meaning: "the console has no such file",
    },
    ProblemType {
        slug: "stream-not-found",
        status: 404,
        retry_after: false,
        meaning: "the stream has no events",
    },
    ProblemType {
        slug: "event-not-found",
        status: 404,
        retry_after: false,
        meaning: "the stream has no event at that revision",
    },
    ProblemType {
        slug: "correlation-not-found",
        status: 404,
        retry_after: false,
        meaning: "no event carries that correlation id",
    },
    ProblemType {
        slug: "projection-not-found",
        status: 404,
        retry_after: false,
        meaning: "no such projection",
    },
    ProblemType {
        slug: "group-not-found",
        status: 404,
        retry_after: false,
        meaning: "no such consumer group",
    },
    ProblemType {
        slug: "parked-not-found",
        status: 404,
        retry_after: false,
        meaning: "no such parked message",
    },
    ProblemType {
        slug: "method-not-allowed",
        status: 405,
        retry_after: false,
        meaning: "the route does not take this method",
    },
    ProblemType {
        slug: "not-acceptable",
        status: 406,
        retry_after: false,
        meaning: "Accept names nothing the route answers in",
    },
    ProblemType {
        slug: "wrong-expected-version",
        status: 409,
        retry_after: false,
        meaning: "the stream is not at the expected version; `expected` and `actual` say where it is",
    },
    ProblemType {
        slug: "duplicate-event-id",
        status: 409,
        retry_after: false,
        meaning: "an event id is already stored with different content or in another place",
    },
    ProblemType {
        slug: "group-exists",
        status: 409,
        retry_after: false,
        meaning: "a consumer group of that name exists",
    },
    ProblemType {
        slug: "group-conflict",
        status: 409,
        retry_after: false,
        meaning: "the group operation conflicts with the group's state",
    },
    ProblemType {
        slug: "stale-delivery",
        status: 409,
        retry_after: false,
        meaning: "the message was delivered again since this member received it",
    },
    ProblemType {
        slug: "lease-expired",
        status: 410,
        retry_after: false,
        meaning: "the member's lease expired; join again",
    },
    ProblemType {
        slug: "append-too-large",
        status: 413,
        retry_after: false,
        meaning: "the append is larger than the store's limit",
    },
    ProblemType {
        slug: "body-too-large",
        status: 413,
        retry_after: false,
        meaning: "the request body is larger than the server's limit",
    },
    ProblemType {
        slug: "unsupported-media-type",
        status: 415,
        retry_after: false,
        meaning: "Content-Type is not one the route accepts",
    },
    ProblemType {
        slug: "invalid-event",
        status: 422,
        retry_after: false,
        meaning: "an event is refused; `index` says which and `reason` why",
    },
    ProblemType {
        slug: "empty-append",
        status: 422,
        retry_after: false,
        meaning: "the append carries no events",
    },
    ProblemType {
        slug: "invalid-cloudevent",
        status: 422,
        retry_after: false,
        meaning: "a CloudEvent is refused",
    },
    ProblemType {
        slug: "internal-error",
        status: 500,
        retry_after: false,
        meaning: "the server failed while handling the request (any 5xx the framework answers)",
    },
    ProblemType {
        slug: "store-failure",
        status: 500,
        retry_after: false,
        meaning: "the store failed",
    },
    ProblemType {
        slug: "store-corrupt",
        status: 500,
        retry_after: false,
        meaning: "the store found corrupt data",
    },
    ProblemType {
        slug: "group-failure",
        status: 500,
        retry_after: false,
        meaning: "the consumer groups failed",
    },
    ProblemType {
        slug: "groups-not-served",
        status: 501,
        retry_after: false,
        meaning: "this server hosts no consumer groups",
    },
    ProblemType {
        slug: "append-timeout",
        status: 503,
        retry_after: true,
        meaning: "the append did not finish within its deadline (the server's --append-timeout or the store's, e.g. PostgreSQL's lock timeout); its outcome may be unknown: retry with the same event ids",
    },
    ProblemType {
        slug: "append-queue-full",
        status: 503,
        retry_after: true,
        meaning: "too many appends, or too many body bytes, are pending",
    },
    ProblemType {
        slug: "appends-stalled",
        status: 503,
        retry_after: true,
        meaning: "/ready: appends are stalled past their deadline",
    },
    ProblemType {
        slug: "shutting-down",
        status: 503,
        retry_after: true,
        meaning: "the server is shutting down",
    },
    ProblemType {
        slug: "store-busy",
        status: 503,
        retry_after: true,
        meaning: "the store has no free connection or slot",
    },
    ProblemType {
        slug: "store-closed",
        status: 503,
        retry_after: true,
        meaning: "the store is closed",
    },
    ProblemType {
        slug: "store-stopped",
        status: 503,
        retry_after: true,
        meaning: "the store stopped after a failure and needs a restart",
    },
    ProblemType {
        slug: "projection-unavailable",
        status: 503,
        retry_after: true,
        meaning: "the projection cannot answer now",
    },
    ProblemType {
        slug: "group-store-unavailable",
        status: 503,
        retry_after: true,
        meaning: "the consumer groups' store failed; retry",
    },
    ProblemType {
        slug: "group-backend-unavailable",
        status: 503,
        retry_after: true,
        meaning: "the consumer groups' backend failed; retry",
    },
];

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slug literal a `Problem` is built with in this crate's sources: the first
    /// string literal after each `Problem::new(` (after its status), `bad_request(`,
    /// `unprocessable(`, `not_found(` or `unavailable(`.
    fn slugs_in_sources() -> Vec<(String, String)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![dir.clone()];
        let mut found = Vec::new();
        while let Some(path) = files.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).unwrap() {
                    files.push(entry.unwrap().path());
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // Tests build problems of their own (and this one names the calls).
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            for call in [
                "Problem::new(",
                "Problem::bad_request(",
                "Problem::unprocessable(",
                "Problem::not_found(",
                "Problem::unavailable(",
            ] {
                for (at, _) in text.match_indices(call) {
                    let rest = &text[at + call.len()..];
                    let Some(open) = rest.find('"') else { continue };
                    let args_before = &rest[..open];
                    // `Problem::new(status, slug, …)`: a literal slug comes after the
                    // status; a call whose slug is a variable is covered below.
                    if args_before.contains(')') || args_before.contains("slug") {
                        continue;
                    }
                    let close = rest[open + 1..].find('"').unwrap();
                    let slug = rest[open + 1..open + 1 + close].to_owned();
                    found.push((slug, format!("{}: {call}", path.display())));
                }
            }
        }
        found
    }

    #[test]
    fn every_problem_the_server_builds_is_listed() {
        let found = slugs_in_sources();
        assert!(found.len() > 40, "the source scan found only {found:?}");
        for (slug, place) in &found {
            assert!(
                PROBLEM_TYPES.iter().any(|t| t.slug == slug),
                "{place} builds problem type {slug:?}, which PROBLEM_TYPES does not list"
            );
        }
        // The fallback for framework rejections picks its slug by status class.
        for slug in ["invalid-request", "internal-error"] {
            assert!(PROBLEM_TYPES.iter().any(|t| t.slug == slug));
        }
        // And nothing is listed that the server never answers with.
        for t in PROBLEM_TYPES {
            assert!(
                found.iter().any(|(slug, _)| slug == t.slug),
                "PROBLEM_TYPES lists {:?}, which no code builds",
                t.slug
            );
        }
    }

    #[test]
    fn store_errors_map_to_listed_types_with_their_status() {
        use std::time::Duration;
        let errors = [
            StoreError::EmptyAppend,
            StoreError::Closed,
            StoreError::Timeout {
                operation: "append".into(),
                after: Duration::from_millis(300),
                outcome_unknown: false,
            },
        ];
        for e in errors {
            let p = Problem::from(e);
            let listed = PROBLEM_TYPES
                .iter()
                .find(|t| t.slug == p.slug)
                .unwrap_or_else(|| panic!("{} is not listed", p.slug));
            assert_eq!(listed.status, p.status.as_u16(), "{}", p.slug);
            assert_eq!(listed.retry_after, p.retry_after.is_some(), "{}", p.slug);
        }
    }

    #[test]
    fn slugs_are_unique() {
        let mut slugs: Vec<_> = PROBLEM_TYPES.iter().map(|t| t.slug).collect();
        slugs.sort_unstable();
        let n = slugs.len();
        slugs.dedup();
        assert_eq!(slugs.len(), n);
    }
}
