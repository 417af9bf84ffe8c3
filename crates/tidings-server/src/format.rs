//! What the read routes answer in: the Tidings JSON or CloudEvents, chosen by `Accept`.
//!
//! `GET /streams/{stream}`, `GET /streams/{stream}/{revision}`, `GET /all` and
//! `GET /correlations/{id}` offer three media types:
//!
//! | `Accept` | answer |
//! |---|---|
//! | absent, `application/json`, `application/*`, `*/*` | the Tidings JSON (unchanged) |
//! | `application/cloudevents-batch+json` | a JSON array of structured CloudEvents |
//! | `application/cloudevents+json` | one structured CloudEvent on the one-event route; the batch (with its own content type) on the list routes |
//!
//! Each CloudEvent is [`tidings::event::cloudevents::recorded_to_structured`] of the
//! recorded event, so the stream, revision, position and recording time travel as the
//! `tidingsstream`, `tidingsrevision`, `tidingsposition` and `tidingsrecordedat`
//! extensions (the names a transport message's origin uses too).
//!
//! The choice is the offer with the highest `q`, then the most specific matching range,
//! then the one the client listed first, then the order above. Entries that cannot be
//! parsed (no `/`, a `q` that is not a number from 0 to 1, bytes that are not visible
//! ASCII) are skipped; a header with nothing usable is treated as absent. A header naming
//! only types the route cannot produce gets 406 `not-acceptable`.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tidings::RecordedEvent;
use tidings::event::cloudevents::recorded_to_structured;

use crate::problem::Problem;

/// The media type of one structured CloudEvent.
pub const CLOUDEVENT: &str = "application/cloudevents+json";
/// The media type of a batch of structured CloudEvents.
pub const CLOUDEVENTS_BATCH: &str = "application/cloudevents-batch+json";
const JSON: &str = "application/json";

/// The form of a read route's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFormat {
    /// The Tidings JSON: recorded events inside the route's page object.
    Json,
    /// A JSON array of structured CloudEvents.
    CloudEventsBatch,
    /// One structured CloudEvent (the one-event route only).
    CloudEvent,
}

/// Whether the route answers one event or a list of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    One,
    List,
}

/// One media range of an `Accept` header.
#[derive(Debug, Clone, PartialEq)]
struct Range {
    kind: String,
    subtype: String,
    q: f32,
}

/// The media ranges of every `Accept` header, in order, skipping what cannot be parsed.
fn ranges(headers: &HeaderMap) -> Vec<Range> {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(parse_range)
        .collect()
}

fn parse_range(item: &str) -> Option<Range> {
    let mut parts = item.split(';');
    let media = parts.next()?.trim().to_ascii_lowercase();
    let (kind, subtype) = media.split_once('/')?;
    let (kind, subtype) = (kind.trim(), subtype.trim());
    if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
        return None;
    }
    let mut q = 1.0;
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("q") {
            q = value.trim().parse::<f32>().ok()?;
            if !(0.0..=1.0).contains(&q) {
                return None;
            }
        }
    }
    Some(Range {
        kind: kind.to_owned(),
        subtype: subtype.to_owned(),
        q,
    })
}

/// How specifically `range` matches `media` (0: not at all).
fn specificity(range: &Range, media: &str) -> u8 {
    let Some((kind, subtype)) = media.split_once('/') else {
        return 0;
    };
    match (range.kind.as_str(), range.subtype.as_str()) {
        ("*", "*") => 1,
        (k, "*") if k == kind => 2,
        (k, s) if k == kind && s == subtype => 3,
        _ => 0,
    }
}

/// Chooses the answer's form from the request's `Accept` headers.
pub(crate) fn negotiate(headers: &HeaderMap, shape: Shape) -> Result<ReadFormat, Problem> {
    let ranges = ranges(headers);
    if ranges.is_empty() {
        return Ok(ReadFormat::Json);
    }
    let offers = [
        (ReadFormat::Json, JSON),
        (ReadFormat::CloudEventsBatch, CLOUDEVENTS_BATCH),
        (ReadFormat::CloudEvent, CLOUDEVENT),
    ];
    // (q, specificity, client order (lower first), offer order (lower first))
    let mut best: Option<(f32, u8, usize, usize, ReadFormat)> = None;
    for (offer_index, (format, media)) in offers.into_iter().enumerate() {
        // The most specific range matching the offer decides its q.
        let matched = ranges
            .iter()
            .enumerate()
            .map(|(i, r)| (specificity(r, media), i, r.q))
            .filter(|(s, _, _)| *s > 0)
            .max_by_key(|(s, i, _)| (*s, std::cmp::Reverse(*i)));
        let Some((spec, client_index, q)) = matched else {
            continue;
        };
        if q <= 0.0 {
            continue;
        }
        let better = match best {
            None => true,
            Some((bq, bs, bi, bo, _)) => {
                (
                    q,
                    spec,
                    std::cmp::Reverse(client_index),
                    std::cmp::Reverse(offer_index),
                ) > (bq, bs, std::cmp::Reverse(bi), std::cmp::Reverse(bo))
            }
        };
        if better {
            best = Some((q, spec, client_index, offer_index, format));
        }
    }
    match best.map(|b| b.4) {
        Some(ReadFormat::CloudEvent) if shape == Shape::List => Ok(ReadFormat::CloudEventsBatch),
        Some(format) => Ok(format),
        None => Err(not_acceptable(headers, shape)),
    }
}

fn not_acceptable(headers: &HeaderMap, shape: Shape) -> Problem {
    let sent = headers
        .get_all(header::ACCEPT)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(", ");
    let offered = match shape {
        Shape::One => vec![JSON, CLOUDEVENT, CLOUDEVENTS_BATCH],
        Shape::List => vec![JSON, CLOUDEVENTS_BATCH, CLOUDEVENT],
    };
    Problem::new(
        StatusCode::NOT_ACCEPTABLE,
        "not-acceptable",
        format!(
            "Accept {sent:?} names nothing this route answers in: ask for {}",
            offered.join(", ")
        ),
    )
    .with("accept", sent)
    .with("available", offered)
}

/// One recorded event as a structured CloudEvent response.
pub(crate) fn cloudevent_response(event: &RecordedEvent) -> Response {
    let body = recorded_to_structured(event).to_string();
    with_content_type(body, CLOUDEVENT)
}

/// Recorded events as a CloudEvents batch response.
pub(crate) fn batch_response(events: &[RecordedEvent]) -> Response {
    let batch: Vec<serde_json::Value> = events.iter().map(recorded_to_structured).collect();
    let body = serde_json::Value::Array(batch).to_string();
    with_content_type(body, CLOUDEVENTS_BATCH)
}

fn with_content_type(body: String, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Marks a negotiated response as varying with `Accept`.
pub(crate) fn vary_accept(mut response: Response) -> Response {
    response
        .headers_mut()
        .append(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// A `Link: <…>; rel="next"` header value: the request's path and query with `from`
/// replaced by `next`.
pub(crate) fn next_link(uri: &axum::http::Uri, next: u64) -> Option<HeaderValue> {
    let mut query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some("from"))
        .collect();
    let from = format!("from={next}");
    query.push(&from);
    let link = format!("<{}?{}>; rel=\"next\"", uri.path(), query.join("&"));
    HeaderValue::from_str(&link).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, HeaderValue::from_static(v));
        }
        h
    }

    fn one(values: &[&'static str]) -> Result<ReadFormat, StatusCode> {
        negotiate(&accept(values), Shape::One).map_err(|p| p.status)
    }

    fn list(values: &[&'static str]) -> Result<ReadFormat, StatusCode> {
        negotiate(&accept(values), Shape::List).map_err(|p| p.status)
    }

    #[test]
    fn defaults_to_json() {
        assert_eq!(one(&[]), Ok(ReadFormat::Json));
        assert_eq!(list(&["*/*"]), Ok(ReadFormat::Json));
        assert_eq!(list(&["application/*"]), Ok(ReadFormat::Json));
        assert_eq!(list(&["application/json"]), Ok(ReadFormat::Json));
        assert_eq!(
            list(&["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"]),
            Ok(ReadFormat::Json)
        );
    }

    #[test]
    fn cloudevents_when_asked() {
        assert_eq!(list(&[CLOUDEVENTS_BATCH]), Ok(ReadFormat::CloudEventsBatch));
        assert_eq!(one(&[CLOUDEVENTS_BATCH]), Ok(ReadFormat::CloudEventsBatch));
        assert_eq!(one(&[CLOUDEVENT]), Ok(ReadFormat::CloudEvent));
        assert_eq!(list(&[CLOUDEVENT]), Ok(ReadFormat::CloudEventsBatch));
        assert_eq!(
            one(&["Application/CloudEvents+JSON ; charset=utf-8"]),
            Ok(ReadFormat::CloudEvent)
        );
    }

    #[test]
    fn q_values_and_order() {
        assert_eq!(
            list(&["application/json;q=0.5, application/cloudevents-batch+json"]),
            Ok(ReadFormat::CloudEventsBatch)
        );
        assert_eq!(
            list(&["application/cloudevents-batch+json;q=0.1, */*"]),
            Ok(ReadFormat::Json)
        );
        // Equal q: the more specific range, then the client's order.
        assert_eq!(
            list(&["*/*, application/cloudevents-batch+json"]),
            Ok(ReadFormat::CloudEventsBatch)
        );
        assert_eq!(
            one(&["application/cloudevents+json, application/json"]),
            Ok(ReadFormat::CloudEvent)
        );
        assert_eq!(
            one(&["application/json", "application/cloudevents+json"]),
            Ok(ReadFormat::Json)
        );
        // q=0 refuses a type even when a wildcard would take it.
        assert_eq!(
            list(&["application/json;q=0, */*"]),
            Ok(ReadFormat::CloudEventsBatch)
        );
    }

    #[test]
    fn refuses_what_it_cannot_produce() {
        assert_eq!(list(&["text/html"]), Err(StatusCode::NOT_ACCEPTABLE));
        assert_eq!(
            one(&["application/json;q=0"]),
            Err(StatusCode::NOT_ACCEPTABLE)
        );
        assert_eq!(
            list(&["text/event-stream"]),
            Err(StatusCode::NOT_ACCEPTABLE)
        );
    }

    #[test]
    fn malformed_headers_never_panic() {
        for bad in [
            "",
            ",,,",
            ";q=1",
            "application",
            "*/json",
            "/",
            "a/b;q=x",
            "a/b;q=2",
            "a/b;q",
            "application/json;q=-1",
            ";;;;",
            "\t",
            "é/é",
        ] {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(bad) {
                h.insert(header::ACCEPT, v);
            }
            let _ = negotiate(&h, Shape::One);
            let _ = negotiate(&h, Shape::List);
        }
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_bytes(b"\xff\xfe/x").unwrap(),
        );
        assert_eq!(negotiate(&h, Shape::List).unwrap(), ReadFormat::Json);
        assert_eq!(list(&["nonsense, ;q=1"]), Ok(ReadFormat::Json));
    }

    #[test]
    fn next_link_replaces_from() {
        let uri: axum::http::Uri = "/all?from=3&limit=2&type=A".parse().unwrap();
        assert_eq!(
            next_link(&uri, 9).unwrap(),
            "</all?limit=2&type=A&from=9>; rel=\"next\""
        );
        let uri: axum::http::Uri = "/streams/s".parse().unwrap();
        assert_eq!(
            next_link(&uri, 1).unwrap(),
            "</streams/s?from=1>; rel=\"next\""
        );
    }
}
