//! The wire format: an event in CloudEvents binary mode.
//!
//! ```text
//! headers:  ce-specversion: 1.0          ce-id: <event id>       ce-source: <source>
//!           ce-type: <event type>        ce-time: <RFC 3339>     ce-eventversion: <version>
//!           ce-correlationid / ce-causationid / ce-userid / ce-<extra key> (when set)
//!           ce-tidingsstream / ce-tidingsrevision / ce-tidingsposition /
//!           ce-tidingsrecordedat (when the message has an origin in a store)
//!           content-type: application/json
//! body:     the payload's JSON text, unchanged
//! ```
//!
//! Backends put the headers where their protocol keeps headers (NATS message headers,
//! AMQP message headers) and read them back with [`decode`].

use crate::event::cloudevents::{self, CloudEventError};
use crate::event::{Event, Payload};
use crate::stream::StreamId;

use super::{Message, Origin};

/// The header carrying the origin's stream.
pub const ORIGIN_STREAM: &str = "ce-tidingsstream";
/// The header carrying the origin's revision.
pub const ORIGIN_REVISION: &str = "ce-tidingsrevision";
/// The header carrying the origin's global position.
pub const ORIGIN_POSITION: &str = "ce-tidingsposition";
/// The header carrying when the origin's store committed the event (RFC 3339).
pub const ORIGIN_RECORDED_AT: &str = "ce-tidingsrecordedat";

/// The header naming the body's content type.
pub const CONTENT_TYPE: &str = "content-type";

/// An event ready for a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireMessage {
    /// `ce-*` headers and `content-type`.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Vec<u8>,
}

/// The wire form of `event`.
pub fn encode(event: &Event) -> WireMessage {
    let (mut headers, content_type, body) = cloudevents::to_binary(event);
    headers.push((CONTENT_TYPE.to_owned(), content_type.to_owned()));
    WireMessage { headers, body }
}

/// The wire form of `message`: its event, plus its origin's headers when it has one.
pub fn encode_message(message: &Message) -> WireMessage {
    let mut wire = encode(&message.event);
    if let Some(o) = &message.origin {
        wire.headers.extend([
            (ORIGIN_STREAM.to_owned(), o.stream.as_str().to_owned()),
            (ORIGIN_REVISION.to_owned(), o.revision.to_string()),
            (ORIGIN_POSITION.to_owned(), o.position.to_string()),
            (ORIGIN_RECORDED_AT.to_owned(), o.recorded_at.to_string()),
        ]);
    }
    wire
}

/// The event and its origin (None when the message carries none) back from a message's
/// headers and body. An origin whose headers are partial or malformed is an error, not
/// silently dropped.
pub fn decode_message<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) -> Result<(Event, Option<Origin>), CloudEventError> {
    let mut rest = Vec::new();
    let (mut stream, mut revision, mut position, mut recorded_at) = (None, None, None, None);
    for (k, v) in headers {
        let slot = if k.eq_ignore_ascii_case(ORIGIN_STREAM) {
            &mut stream
        } else if k.eq_ignore_ascii_case(ORIGIN_REVISION) {
            &mut revision
        } else if k.eq_ignore_ascii_case(ORIGIN_POSITION) {
            &mut position
        } else if k.eq_ignore_ascii_case(ORIGIN_RECORDED_AT) {
            &mut recorded_at
        } else {
            rest.push((k, v));
            continue;
        };
        *slot = Some(v);
    }
    let event = decode(rest, body)?;
    let invalid = |name: &str, reason: String| CloudEventError::InvalidAttribute {
        name: name.to_owned(),
        reason,
    };
    let origin = match (stream, revision, position, recorded_at) {
        (None, None, None, None) => None,
        (Some(stream), Some(revision), Some(position), Some(recorded_at)) => Some(Origin {
            stream: StreamId::parse_any(stream)
                .map_err(|e| invalid("tidingsstream", e.to_string()))?,
            revision: revision
                .parse()
                .map_err(|e| invalid("tidingsrevision", format!("{e}")))?,
            position: position
                .parse()
                .map_err(|e| invalid("tidingsposition", format!("{e}")))?,
            recorded_at: recorded_at
                .parse()
                .map_err(|e| invalid("tidingsrecordedat", format!("{e}")))?,
        }),
        _ => {
            return Err(invalid(
                "tidingsstream",
                "an origin needs its stream, revision, position and recording time".to_owned(),
            ));
        }
    };
    Ok((event, origin))
}

/// The event back from its headers (any order; unknown headers are ignored) and body.
pub fn decode<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &[u8],
) -> Result<Event, CloudEventError> {
    let mut content_type = None;
    let mut ce = Vec::new();
    for (k, v) in headers {
        if k.eq_ignore_ascii_case(CONTENT_TYPE) {
            content_type = Some(v);
        } else {
            ce.push((k, v));
        }
    }
    let new = cloudevents::from_binary(ce, content_type, body)?;
    let missing = CloudEventError::Missing;
    Ok(Event {
        event_id: new.event_id.ok_or(missing("id"))?,
        event_type: new.event_type.ok_or(missing("type"))?,
        event_version: new
            .event_version
            .unwrap_or_else(|| crate::event::DEFAULT_EVENT_VERSION.to_owned()),
        timestamp: new.timestamp.ok_or(missing("time"))?,
        source: new.source.ok_or(missing("source"))?,
        data: new.data.unwrap_or_else(Payload::null),
        metadata: new.metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Enricher, NewEvent};

    #[test]
    fn round_trip() {
        let event = Enricher::new("svc")
            .enrich(
                NewEvent::new("OrderCreated", serde_json::json!({"a": [1, "é"]}))
                    .with_correlation_id("c 1")
                    .with_causation_id("k")
                    .with_user_id("u")
                    .with_meta("tenant", "acme"),
            )
            .unwrap();
        let w = encode(&event);
        let back = decode(
            w.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &w.body,
        )
        .unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn an_origin_round_trips_and_stays_out_of_the_metadata() {
        let event = Enricher::new("svc")
            .enrich(NewEvent::new("OrderCreated", serde_json::json!({})).with_meta("k", "v"))
            .unwrap();
        let origin = Origin {
            stream: StreamId::new("order-1").unwrap(),
            revision: 3,
            position: 41,
            recorded_at: event.timestamp,
        };
        let mut message = Message::new("orders", event.clone());
        message.origin = Some(origin.clone());
        let w = encode_message(&message);
        let (back, o) = decode_message(
            w.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &w.body,
        )
        .unwrap();
        assert_eq!((back, o), (event.clone(), Some(origin)));
        let plain = encode_message(&Message::new("orders", event.clone()));
        let (_, none) = decode_message(
            plain.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &plain.body,
        )
        .unwrap();
        assert_eq!(none, None);
        let mut partial = plain.headers.clone();
        partial.push((ORIGIN_STREAM.to_owned(), "order-1".to_owned()));
        assert!(
            decode_message(
                partial.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &plain.body
            )
            .is_err()
        );
    }

    #[test]
    fn missing_time_is_an_error() {
        let r = decode(
            [
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "s"),
                ("ce-type", "T"),
            ],
            b"{}",
        );
        assert_eq!(r, Err(CloudEventError::Missing("time")));
    }
}
