//! Turning an append request (headers and body) into events and an expected version.
//!
//! `POST /streams/{stream}` takes four content modes, chosen by the request:
//!
//! | request                                        | mode                         |
//! |------------------------------------------------|------------------------------|
//! | `Content-Type: application/cloudevents+json`   | CloudEvents structured       |
//! | `Content-Type: application/cloudevents-batch+json` | CloudEvents batched      |
//! | a `ce-specversion` header                       | CloudEvents binary           |
//! | `application/json`, any `+json`, or none       | Tidings envelope (one or many) |
//!
//! Parsing is a pure function of headers and body ([`parse_append`]), so the property
//! tests can feed it anything: every failure is a [`Problem`] with a 4xx status.

use axum::http::{HeaderMap, StatusCode, header};
use tidings::event::cloudevents::{self, CloudEventError};
use tidings::{ExpectedVersion, NewEvent};

use crate::problem::Problem;

/// The request header carrying the expected version.
pub const EXPECTED_VERSION: &str = "expected-version";

/// How an append request's events were encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// Tidings envelope JSON: one object or an array.
    Envelope,
    /// CloudEvents structured mode: one event as `application/cloudevents+json`.
    Structured,
    /// CloudEvents batched mode: an array as `application/cloudevents-batch+json`.
    Batched,
    /// CloudEvents binary mode: attributes in `ce-*` headers, data as the body.
    Binary,
}

/// A parsed append request.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    /// What the writer expects of the stream.
    pub expected: ExpectedVersion,
    /// The events, not yet enriched.
    pub events: Vec<NewEvent>,
    /// How they came.
    pub mode: ContentMode,
}

/// Parses an append request's headers and body.
pub fn parse_append(headers: &HeaderMap, body: &[u8]) -> Result<AppendRequest, Problem> {
    let expected = expected_version(headers)?;
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            Problem::bad_request(
                "invalid-header",
                "Content-Type is not visible ASCII; send application/json",
            )
        })?),
    };
    let essence = content_type.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    });
    let mode = match essence.as_deref() {
        Some("application/cloudevents+json") => ContentMode::Structured,
        Some("application/cloudevents-batch+json") => ContentMode::Batched,
        _ if headers.contains_key("ce-specversion") => ContentMode::Binary,
        None | Some("application/json") | Some("") => ContentMode::Envelope,
        Some(other)
            if other.ends_with("+json") && !other.starts_with("application/cloudevents") =>
        {
            ContentMode::Envelope
        }
        Some(other) => {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                format!(
                    "Content-Type {other} is not accepted: send application/json (Tidings events), \
                     application/cloudevents+json, application/cloudevents-batch+json, \
                     or a CloudEvent in binary mode with ce-* headers"
                ),
            )
            .with("contentType", other.to_owned()));
        }
    };
    let events = match mode {
        ContentMode::Envelope => parse_envelopes(body)?,
        ContentMode::Structured => {
            let value = parse_json(body)?;
            vec![cloudevents::from_structured(value).map_err(|e| cloud_event_problem(e, None))?]
        }
        ContentMode::Batched => {
            let value = parse_json(body)?;
            let serde_json::Value::Array(items) = value else {
                return Err(Problem::bad_request(
                    "invalid-batch",
                    "a CloudEvents batch must be a JSON array of structured events",
                ));
            };
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    cloudevents::from_structured(item).map_err(|e| cloud_event_problem(e, Some(i)))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        ContentMode::Binary => {
            let pairs = headers
                .iter()
                .filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
            vec![
                cloudevents::from_binary(pairs, content_type, body)
                    .map_err(|e| cloud_event_problem(e, None))?,
            ]
        }
    };
    if events.is_empty() {
        return Err(Problem::unprocessable(
            "empty-append",
            "the request carries no events; send one event object or a non-empty array",
        ));
    }
    Ok(AppendRequest {
        expected,
        events,
        mode,
    })
}

/// Reads the `Expected-Version` header (absent: `any`).
pub fn expected_version(headers: &HeaderMap) -> Result<ExpectedVersion, Problem> {
    let Some(value) = headers.get(EXPECTED_VERSION) else {
        return Ok(ExpectedVersion::Any);
    };
    let text = value.to_str().unwrap_or("\u{fffd}");
    text.parse().map_err(|_| {
        Problem::bad_request(
            "invalid-expected-version",
            format!(
                "Expected-Version {text:?} is not an expected version: use any, no-stream, \
                 stream-exists or a revision number"
            ),
        )
        .with("expectedVersion", text.to_owned())
    })
}

fn parse_json(body: &[u8]) -> Result<serde_json::Value, Problem> {
    serde_json::from_slice(body).map_err(|e| json_problem(&e, None))
}

fn parse_envelopes(body: &[u8]) -> Result<Vec<NewEvent>, Problem> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            serde_json::from_slice::<Vec<NewEvent>>(body).map_err(|e| json_problem(&e, None))
        }
        Some(b'{') => serde_json::from_slice::<NewEvent>(body)
            .map(|e| vec![e])
            .map_err(|e| json_problem(&e, Some(0))),
        None => Err(Problem::bad_request(
            "malformed-json",
            "the request body is empty; send an event object or an array of them",
        )),
        Some(_) => Err(Problem::bad_request(
            "malformed-json",
            "the request body must be a JSON object (one event) or an array of events",
        )),
    }
}

fn json_problem(e: &serde_json::Error, index: Option<usize>) -> Problem {
    use serde_json::error::Category;
    let at = format!("line {} column {}", e.line(), e.column());
    let p = match e.classify() {
        Category::Data => Problem::unprocessable(
            "invalid-event",
            format!("an event does not have the envelope's shape: {e}"),
        ),
        Category::Syntax | Category::Eof | Category::Io => {
            Problem::bad_request("malformed-json", format!("the body is not valid JSON: {e}"))
        }
    };
    let p = p
        .with("line", e.line())
        .with("column", e.column())
        .with("at", at);
    match index {
        Some(i) => p.with("index", i),
        None => p,
    }
}

fn cloud_event_problem(e: CloudEventError, index: Option<usize>) -> Problem {
    let p = match &e {
        CloudEventError::UnsupportedContentType(ct) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("the CloudEvent is refused: {e}; Tidings stores JSON data"),
        )
        .with("contentType", ct.clone()),
        _ => Problem::unprocessable(
            "invalid-cloudevent",
            format!("the CloudEvent is refused: {e}"),
        ),
    };
    match index {
        Some(i) => p.with("index", i),
        None => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn envelope_one_or_many() {
        let one = parse_append(&HeaderMap::new(), br#"{"eventType":"A","data":{}}"#).unwrap();
        assert_eq!((one.events.len(), one.mode), (1, ContentMode::Envelope));
        let many = parse_append(
            &headers(&[
                ("content-type", "application/json"),
                ("expected-version", "3"),
            ]),
            br#"[{"eventType":"A","data":1},{"eventType":"B","data":2}]"#,
        )
        .unwrap();
        assert_eq!(many.events.len(), 2);
        assert_eq!(many.expected, ExpectedVersion::Exact(3));
    }

    #[test]
    fn errors_are_4xx_with_reasons() {
        let e = parse_append(&HeaderMap::new(), b"{nope").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        let e = parse_append(&HeaderMap::new(), br#"{"eventType":5}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        let e = parse_append(&HeaderMap::new(), b"[]").unwrap_err();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        let e = parse_append(&headers(&[("expected-version", "-2")]), b"{}").unwrap_err();
        assert_eq!(e.slug, "invalid-expected-version");
        let e = parse_append(&headers(&[("content-type", "text/plain")]), b"x").unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
