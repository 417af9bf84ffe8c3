//! The wire format: an event in CloudEvents binary mode.
//!
//! ```text
//! headers:  ce-specversion: 1.0          ce-id: <event id>       ce-source: <source>
//!           ce-type: <event type>        ce-time: <RFC 3339>     ce-eventversion: <version>
//!           ce-correlationid / ce-causationid / ce-userid / ce-<extra key> (when set)
//!           content-type: application/json
//! body:     the payload's JSON text, unchanged
//! ```
//!
//! Backends put the headers where their protocol keeps headers (NATS message headers,
//! AMQP message headers) and read them back with [`decode`].

use crate::event::cloudevents::{self, CloudEventError};
use crate::event::{Event, Payload};

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
