//! CloudEvents 1.0 mapping, both ways.
//!
//! | Tidings envelope        | CloudEvents attribute           |
//! |-------------------------|---------------------------------|
//! | `event_id`              | `id`                            |
//! | `source`                | `source`                        |
//! | `event_type`            | `type`                          |
//! | —                       | `specversion` (always `"1.0"`)  |
//! | `timestamp`             | `time`                          |
//! | (JSON payloads)         | `datacontenttype: application/json` |
//! | `data`                  | `data` (or `data_base64` on input) |
//! | `metadata.correlation_id` | extension `correlationid`     |
//! | `metadata.causation_id` | extension `causationid`         |
//! | `metadata.user_id`      | extension `userid`              |
//! | `event_version`         | extension `eventversion`        |
//! | `metadata.extra[k]`     | extension `k` (when `k` is a valid attribute name) |
//!
//! A [`RecordedEvent`] also carries where the store recorded it, as four extensions
//! ([`recorded_to_structured`]), the same ones a transport message's
//! [`crate::transport::Origin`] travels as (`transport::wire`):
//!
//! | Recorded coordinate     | CloudEvents extension           |
//! |-------------------------|---------------------------------|
//! | `stream`                | `tidingsstream`                 |
//! | `revision`              | `tidingsrevision` (a decimal string: CloudEvents integers are 32-bit) |
//! | `position`              | `tidingsposition` (a decimal string, likewise) |
//! | `recorded_at`           | `tidingsrecordedat` (RFC 3339)  |
//!
//! The store assigns these, so [`from_structured`] and [`from_binary`] ignore them: a
//! CloudEvent read from one store can be appended to another as it is.
//!
//! CloudEvents ids are any string, Tidings ids are UUIDs. An incoming id that is a UUID
//! is kept; any other id becomes a name-based UUID (v5) of `source` and `id`, so the same
//! CloudEvent always maps to the same Tidings id (re-sending it is idempotent), and the
//! original id is kept in metadata under `ceid` and given back on the way out.
//! Payloads are JSON: `datacontenttype` must be absent, `application/json` or end in
//! `+json`.

use base64::Engine as _;
use jiff::Timestamp;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Event, Metadata, NewEvent, Payload};
use crate::RecordedEvent;

/// The CloudEvents spec version this module speaks.
pub const SPEC_VERSION: &str = "1.0";
/// Metadata key keeping a CloudEvent id that was not a UUID.
pub const ORIGINAL_ID_KEY: &str = "ceid";

const CORRELATION: &str = "correlationid";
const CAUSATION: &str = "causationid";
const USER: &str = "userid";
const EVENT_VERSION: &str = "eventversion";
const JSON: &str = "application/json";

/// Extension attribute carrying a recorded event's stream.
pub const STREAM_EXTENSION: &str = "tidingsstream";
/// Extension attribute carrying a recorded event's revision in its stream (a decimal string).
pub const REVISION_EXTENSION: &str = "tidingsrevision";
/// Extension attribute carrying a recorded event's global position (a decimal string).
pub const POSITION_EXTENSION: &str = "tidingsposition";
/// Extension attribute carrying when the store committed a recorded event (RFC 3339).
pub const RECORDED_AT_EXTENSION: &str = "tidingsrecordedat";

/// True for the extensions only a store assigns (ignored on input, never taken from
/// metadata on output).
fn is_recorded_coordinate(name: &str) -> bool {
    matches!(
        name,
        STREAM_EXTENSION | REVISION_EXTENSION | POSITION_EXTENSION | RECORDED_AT_EXTENSION
    )
}

/// Why a CloudEvent could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudEventError {
    /// The structured body is not a JSON object.
    #[error("a structured CloudEvent must be a JSON object")]
    NotAnObject,
    /// A required attribute is missing or empty.
    #[error("CloudEvent attribute {0:?} is required")]
    Missing(&'static str),
    /// `specversion` is not 1.0.
    #[error("CloudEvents specversion {0:?} is not supported; use \"1.0\"")]
    SpecVersion(String),
    /// An attribute has the wrong JSON type or an invalid value.
    #[error("CloudEvent attribute {name:?} is invalid: {reason}")]
    InvalidAttribute {
        /// The attribute.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The content type is not JSON.
    #[error("datacontenttype {0:?} is not supported; payloads must be JSON")]
    UnsupportedContentType(String),
    /// The data is not valid JSON (or not valid base64).
    #[error("CloudEvent data is not valid: {0}")]
    InvalidData(String),
}

fn is_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_json_content_type(ct: &str) -> bool {
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == JSON || essence.ends_with("+json") || essence == "text/json"
}

/// The CloudEvent's id for an event (the original non-UUID id when there was one).
fn outgoing_id(event: &Event) -> String {
    event
        .metadata
        .extra
        .get(ORIGINAL_ID_KEY)
        .cloned()
        .unwrap_or_else(|| event.event_id.to_string())
}

/// Maps an incoming CloudEvent id onto a Tidings id, keeping non-UUID ids in metadata.
fn incoming_id(id: &str, source: &str, metadata: &mut Metadata) -> Uuid {
    match Uuid::parse_str(id) {
        Ok(u) => u,
        Err(_) => {
            metadata
                .extra
                .insert(ORIGINAL_ID_KEY.to_owned(), id.to_owned());
            Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("{source}\n{id}").as_bytes())
        }
    }
}

/// The extension attributes an event carries.
fn extensions(event: &Event) -> Vec<(String, String)> {
    let m = &event.metadata;
    let mut out = vec![(EVENT_VERSION.to_owned(), event.event_version.clone())];
    for (k, v) in [
        (CORRELATION, &m.correlation_id),
        (CAUSATION, &m.causation_id),
        (USER, &m.user_id),
    ] {
        if let Some(v) = v {
            out.push((k.to_owned(), v.clone()));
        }
    }
    for (k, v) in &m.extra {
        let reserved = matches!(
            k.as_str(),
            "id" | "source"
                | "type"
                | "specversion"
                | "time"
                | "datacontenttype"
                | "data"
                | "data_base64"
        ) || k == ORIGINAL_ID_KEY
            || is_recorded_coordinate(k);
        if is_attribute_name(k) && !reserved {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// Applies one extension attribute to the event being built.
fn apply_extension(event: &mut NewEvent, name: &str, value: String) {
    match name {
        CORRELATION => event.metadata.correlation_id = Some(value),
        CAUSATION => event.metadata.causation_id = Some(value),
        USER => event.metadata.user_id = Some(value),
        EVENT_VERSION => event.event_version = Some(value),
        _ => {
            event.metadata.extra.insert(name.to_owned(), value);
        }
    }
}

/// The structured-mode JSON of an event.
///
/// ```
/// let json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"),
///     "/../../fixtures/order-created.json")).unwrap();
/// let event: tidings::Event = serde_json::from_str(&json).unwrap();
/// let ce = tidings::event::cloudevents::to_structured(&event);
/// assert_eq!(ce["type"], "OrderCreated");
/// assert_eq!(ce["correlationid"], "corr-123");
/// let back = tidings::event::cloudevents::from_structured(ce).unwrap();
/// assert_eq!(back.event_id, Some(event.event_id));
/// ```
pub fn to_structured(event: &Event) -> Value {
    let mut map = Map::new();
    map.insert("specversion".into(), SPEC_VERSION.into());
    map.insert("id".into(), outgoing_id(event).into());
    map.insert("source".into(), event.source.clone().into());
    map.insert("type".into(), event.event_type.clone().into());
    map.insert("time".into(), event.timestamp.to_string().into());
    map.insert("datacontenttype".into(), JSON.into());
    map.insert("data".into(), event.data.to_value());
    for (k, v) in extensions(event) {
        map.insert(k, v.into());
    }
    Value::Object(map)
}

/// The structured-mode JSON of a recorded event: [`to_structured`] of its envelope plus
/// the `tidingsstream`, `tidingsrevision`, `tidingsposition` and `tidingsrecordedat`
/// extensions.
///
/// ```
/// let json = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"),
///     "/../../fixtures/order-created.json")).unwrap();
/// let event: tidings::Event = serde_json::from_str(&json).unwrap();
/// let recorded = tidings::RecordedEvent {
///     stream: tidings::StreamId::new("order-1").unwrap(),
///     revision: 3,
///     position: 42,
///     recorded_at: event.timestamp,
///     event,
/// };
/// let ce = tidings::event::cloudevents::recorded_to_structured(&recorded);
/// assert_eq!(ce["type"], "OrderCreated");
/// assert_eq!(ce["tidingsstream"], "order-1");
/// assert_eq!(ce["tidingsrevision"], "3");
/// assert_eq!(ce["tidingsposition"], "42");
/// assert_eq!(ce["tidingsrecordedat"], "2024-01-15T10:30:00Z");
/// // The store assigns the coordinates: they are not read back as metadata.
/// let back = tidings::event::cloudevents::from_structured(ce).unwrap();
/// assert!(back.metadata.extra.is_empty());
/// ```
pub fn recorded_to_structured(event: &RecordedEvent) -> Value {
    let mut value = to_structured(&event.event);
    if let Value::Object(map) = &mut value {
        map.insert(STREAM_EXTENSION.into(), event.stream.as_str().into());
        map.insert(REVISION_EXTENSION.into(), event.revision.to_string().into());
        map.insert(POSITION_EXTENSION.into(), event.position.to_string().into());
        map.insert(
            RECORDED_AT_EXTENSION.into(),
            event.recorded_at.to_string().into(),
        );
    }
    value
}

fn string_attribute(name: &str, value: Value) -> Result<String, CloudEventError> {
    match value {
        Value::String(s) => Ok(s),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        other => Err(CloudEventError::InvalidAttribute {
            name: name.to_owned(),
            reason: format!("expected a string, got {other}"),
        }),
    }
}

fn parse_time(value: &str) -> Result<Timestamp, CloudEventError> {
    value
        .parse::<Timestamp>()
        .map_err(|e| CloudEventError::InvalidAttribute {
            name: "time".into(),
            reason: format!("{value:?} is not an RFC 3339 timestamp: {e}"),
        })
}

fn required(name: &'static str, value: Option<String>) -> Result<String, CloudEventError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or(CloudEventError::Missing(name))
}

/// A producer event from a structured-mode CloudEvent (one element of a batch, too).
pub fn from_structured(value: Value) -> Result<NewEvent, CloudEventError> {
    let Value::Object(map) = value else {
        return Err(CloudEventError::NotAnObject);
    };
    let mut id = None;
    let mut source = None;
    let mut ty = None;
    let mut spec = None;
    let mut time = None;
    let mut content_type = None;
    let mut data = None;
    let mut data_base64 = None;
    let mut event = NewEvent::default();
    let mut ext = Vec::new();
    for (k, v) in map {
        match k.as_str() {
            "id" => id = Some(string_attribute(&k, v)?),
            "source" => source = Some(string_attribute(&k, v)?),
            "type" => ty = Some(string_attribute(&k, v)?),
            "specversion" => spec = Some(string_attribute(&k, v)?),
            "time" => time = Some(string_attribute(&k, v)?),
            "datacontenttype" => content_type = Some(string_attribute(&k, v)?),
            "data" => data = Some(v),
            "data_base64" => data_base64 = Some(string_attribute(&k, v)?),
            _ => {
                if v.is_null() || is_recorded_coordinate(&k) {
                    continue;
                }
                ext.push((k.clone(), string_attribute(&k, v)?));
            }
        }
    }
    let spec = required("specversion", spec)?;
    if spec != SPEC_VERSION {
        return Err(CloudEventError::SpecVersion(spec));
    }
    let id = required("id", id)?;
    let source = required("source", source)?;
    let ty = required("type", ty)?;
    if let Some(ct) = &content_type
        && !is_json_content_type(ct)
    {
        return Err(CloudEventError::UnsupportedContentType(ct.clone()));
    }
    for (k, v) in ext {
        if !is_attribute_name(&k) {
            return Err(CloudEventError::InvalidAttribute {
                name: k,
                reason: "extension names are 1 to 20 lowercase letters or digits".into(),
            });
        }
        apply_extension(&mut event, &k, v);
    }
    event.data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(CloudEventError::InvalidData(
                "data and data_base64 are both present".into(),
            ));
        }
        (Some(v), None) => Some(Payload::from_value(&v)),
        (None, Some(b64)) => Some(decode_base64_json(&b64)?),
        (None, None) => None,
    };
    event.event_id = Some(incoming_id(&id, &source, &mut event.metadata));
    event.event_type = Some(ty);
    event.source = Some(source);
    event.timestamp = time.as_deref().map(parse_time).transpose()?;
    Ok(event)
}

fn decode_base64_json(b64: &str) -> Result<Payload, CloudEventError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| CloudEventError::InvalidData(format!("data_base64 is not base64: {e}")))?;
    json_body(&bytes)
}

fn json_body(bytes: &[u8]) -> Result<Payload, CloudEventError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| CloudEventError::InvalidData(format!("data is not UTF-8: {e}")))?;
    Payload::parse(text).map_err(|e| CloudEventError::InvalidData(format!("data is not JSON: {e}")))
}

/// Percent-decodes a binary-mode header value (CloudEvents HTTP binding, section 3.1.3.2).
fn percent_decode(value: &str) -> Result<String, CloudEventError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(CloudEventError::InvalidAttribute {
                    name: "header".into(),
                    reason: format!("bad percent-encoding in {value:?}"),
                });
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| CloudEventError::InvalidAttribute {
        name: "header".into(),
        reason: format!("{value:?} does not decode to UTF-8"),
    })
}

/// A producer event from a binary-mode CloudEvent: `ce-*` headers (names matched
/// case-insensitively; other headers ignored), the `Content-Type` and the body as data.
pub fn from_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<NewEvent, CloudEventError> {
    let mut map = Map::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let Some(attr) = lower.strip_prefix("ce-") else {
            continue;
        };
        if matches!(attr, "data" | "data_base64" | "datacontenttype") {
            continue;
        }
        map.insert(attr.to_owned(), Value::String(percent_decode(value)?));
    }
    if let Some(ct) = content_type
        && !is_json_content_type(ct)
    {
        return Err(CloudEventError::UnsupportedContentType(ct.to_owned()));
    }
    let mut event = from_structured(Value::Object(map))?;
    if !body.is_empty() {
        event.data = Some(json_body(body)?);
    }
    Ok(event)
}

/// The binary-mode form of an event: `ce-*` headers (values percent-encoded where the
/// binding requires), the content type and the body.
pub fn to_binary(event: &Event) -> (Vec<(String, String)>, &'static str, Vec<u8>) {
    let mut headers = vec![
        ("ce-specversion".to_owned(), SPEC_VERSION.to_owned()),
        ("ce-id".to_owned(), percent_encode(&outgoing_id(event))),
        ("ce-source".to_owned(), percent_encode(&event.source)),
        ("ce-type".to_owned(), percent_encode(&event.event_type)),
        ("ce-time".to_owned(), event.timestamp.to_string()),
    ];
    for (k, v) in extensions(event) {
        headers.push((format!("ce-{k}"), percent_encode(&v)));
    }
    (headers, JSON, event.data.as_bytes().to_vec())
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Enricher;

    fn fixture() -> Event {
        serde_json::from_str(include_str!("../../../../fixtures/order-created.json")).unwrap()
    }

    #[test]
    fn structured_round_trip_keeps_everything() {
        let mut event = fixture();
        event.metadata.extra.insert("tenant".into(), "acme".into());
        let ce = to_structured(&event);
        let back = Enricher::new("x")
            .enrich(from_structured(ce).unwrap())
            .unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn recorded_coordinates_go_out_and_are_ignored_coming_in() {
        let mut event = fixture();
        // Metadata cannot impersonate the coordinates.
        event
            .metadata
            .extra
            .insert(STREAM_EXTENSION.into(), "forged".into());
        let recorded = RecordedEvent {
            stream: crate::StreamId::new("order-1").unwrap(),
            revision: 7,
            position: u64::MAX,
            recorded_at: event.timestamp,
            event: event.clone(),
        };
        let ce = recorded_to_structured(&recorded);
        assert_eq!(ce[STREAM_EXTENSION], "order-1");
        assert_eq!(ce[REVISION_EXTENSION], "7");
        assert_eq!(ce[POSITION_EXTENSION], u64::MAX.to_string());
        assert_eq!(ce[RECORDED_AT_EXTENSION], event.timestamp.to_string());
        let mut plain = to_structured(&event);
        for k in [
            STREAM_EXTENSION,
            REVISION_EXTENSION,
            POSITION_EXTENSION,
            RECORDED_AT_EXTENSION,
        ] {
            assert!(plain.get(k).is_none(), "{k} is only for recorded events");
            plain[k] = ce[k].clone();
        }
        assert_eq!(
            plain, ce,
            "the recorded form is the envelope's form plus three"
        );
        let back = Enricher::new("x")
            .enrich(from_structured(ce).unwrap())
            .unwrap();
        event.metadata.extra.remove(STREAM_EXTENSION);
        assert_eq!(back, event);
        let binary = from_binary(
            [
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
                ("ce-type", "T"),
                ("ce-tidingsposition", "9"),
            ],
            None,
            b"{}",
        )
        .unwrap();
        assert!(!binary.metadata.extra.contains_key(POSITION_EXTENSION));
    }

    #[test]
    fn recorded_extensions_are_the_transport_origin_headers() {
        use crate::transport::{Message, Origin, wire};
        let event = fixture();
        let recorded = RecordedEvent {
            stream: crate::StreamId::new("order-1").unwrap(),
            revision: 3,
            position: 41,
            recorded_at: "2024-01-15T10:30:01.5Z".parse().unwrap(),
            event: event.clone(),
        };
        let ce = recorded_to_structured(&recorded);
        let mut message = Message::new("orders", event);
        message.origin = Some(Origin::of(&recorded));
        let headers = wire::encode_message(&message).headers;
        for (extension, header) in [
            (STREAM_EXTENSION, wire::ORIGIN_STREAM),
            (REVISION_EXTENSION, wire::ORIGIN_REVISION),
            (POSITION_EXTENSION, wire::ORIGIN_POSITION),
            (RECORDED_AT_EXTENSION, wire::ORIGIN_RECORDED_AT),
        ] {
            assert_eq!(format!("ce-{extension}"), header);
            let value = headers.iter().find(|(k, _)| k == header).unwrap();
            assert_eq!(ce[extension], value.1.as_str(), "{extension}");
        }
    }

    #[test]
    fn binary_round_trip_keeps_everything() {
        let mut event = fixture();
        event.source = "urn:svc with space/é".into();
        let (headers, ct, body) = to_binary(&event);
        let pairs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let back = from_binary(pairs, Some(ct), &body).unwrap();
        assert_eq!(Enricher::new("x").enrich(back).unwrap(), event);
    }

    #[test]
    fn non_uuid_ids_map_stably_and_come_back() {
        let ce = serde_json::json!({"specversion":"1.0","id":"A234-1234","source":"/s",
            "type":"T","data":{"a":1}});
        let a = from_structured(ce.clone()).unwrap();
        let b = from_structured(ce).unwrap();
        assert_eq!(a.event_id, b.event_id);
        let event = Enricher::new("x").enrich(a).unwrap();
        assert_eq!(to_structured(&event)["id"], "A234-1234");
    }

    #[test]
    fn refuses_bad_cloudevents() {
        let base = serde_json::json!({"specversion":"1.0","id":"1","source":"/s","type":"T"});
        let with = |k: &str, v: Value| {
            let mut m = base.clone();
            m[k] = v;
            from_structured(m)
        };
        assert_eq!(
            from_structured(Value::Null),
            Err(CloudEventError::NotAnObject)
        );
        assert!(matches!(
            with("specversion", "0.3".into()),
            Err(CloudEventError::SpecVersion(_))
        ));
        assert_eq!(with("id", "".into()), Err(CloudEventError::Missing("id")));
        let mut no_source = base.clone();
        no_source.as_object_mut().unwrap().remove("source");
        assert_eq!(
            from_structured(no_source),
            Err(CloudEventError::Missing("source"))
        );
        assert!(matches!(
            with("time", "yesterday".into()),
            Err(CloudEventError::InvalidAttribute { .. })
        ));
        assert!(matches!(
            with("datacontenttype", "text/plain".into()),
            Err(CloudEventError::UnsupportedContentType(_))
        ));
        assert!(matches!(
            with("data_base64", "!!!".into()),
            Err(CloudEventError::InvalidData(_))
        ));
        assert!(matches!(
            with("Bad-Name", "x".into()),
            Err(CloudEventError::InvalidAttribute { .. })
        ));
        assert!(matches!(
            with("ext", serde_json::json!({"nested": 1})),
            Err(CloudEventError::InvalidAttribute { .. })
        ));
        assert!(matches!(
            from_binary(
                [
                    ("ce-specversion", "1.0"),
                    ("ce-id", "1"),
                    ("ce-source", "/s"),
                    ("ce-type", "T")
                ],
                Some("application/json"),
                b"{oops"
            ),
            Err(CloudEventError::InvalidData(_))
        ));
        assert!(matches!(
            from_binary([("ce-id", "%zz")], None, b""),
            Err(CloudEventError::InvalidAttribute { .. })
        ));
    }

    #[test]
    fn base64_data_is_accepted() {
        let ce = serde_json::json!({"specversion":"1.0","id":"1","source":"/s","type":"T",
            "datacontenttype":"application/json","data_base64":"eyJhIjoxfQ=="});
        assert_eq!(
            from_structured(ce).unwrap().data.unwrap().as_str(),
            r#"{"a":1}"#
        );
    }
}
