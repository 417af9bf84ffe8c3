//! The event envelope every service agrees on.
//!
//! A producer builds a [`NewEvent`] (only type and data are required). An [`Enricher`]
//! validates it and fills what is missing — id (UUID v7), timestamp, schema version and
//! source — into a complete [`Event`], never overwriting what the producer set. A store
//! records it as a [`crate::RecordedEvent`]. The JSON form is the camelCase shape of
//! `fixtures/order-created.json`; [`cloudevents`] maps it onto CloudEvents 1.0.

pub mod cloudevents;
pub mod domain;
mod payload;
pub mod upcast;

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use payload::Payload;

/// Longest event type, in bytes.
pub const MAX_EVENT_TYPE_BYTES: usize = 256;
/// The schema version given to events that do not state one.
pub const DEFAULT_EVENT_VERSION: &str = "1.0";

/// Correlation, causation and user metadata, plus free-form string pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    /// The business transaction this event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The id of the event or action that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The user on whose behalf the event happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Anything else, as string pairs.
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// Total length in bytes of every key and value (the size a store accounts for).
    pub fn encoded_len(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        opt(&self.correlation_id)
            + opt(&self.causation_id)
            + opt(&self.user_id)
            + self
                .extra
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// True when nothing is set.
    pub fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.user_id.is_none()
            && self.extra.is_empty()
    }
}

/// A complete event: what stores append and what handlers receive.
///
/// ```
/// let json = r#"{"eventId":"123e4567-e89b-12d3-a456-426614174000","eventType":"OrderCreated",
///   "eventVersion":"1.0","timestamp":"2024-01-15T10:30:00Z","source":"order-service",
///   "data":{"orderId":"order-123"},"metadata":{"correlationId":"corr-123"}}"#;
/// let event: tidings::Event = serde_json::from_str(json).unwrap();
/// assert_eq!(event.event_type, "OrderCreated");
/// assert_eq!(event.metadata.correlation_id.as_deref(), Some("corr-123"));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Unique id; UUID v7 unless the producer supplied one.
    pub event_id: Uuid,
    /// What happened, in the past tense: `OrderCreated`.
    pub event_type: String,
    /// The schema version of `data`, such as `"1.0"`.
    pub event_version: String,
    /// When it happened (UTC, microsecond precision once stored).
    pub timestamp: Timestamp,
    /// The service that produced it.
    pub source: String,
    /// The payload, as JSON text.
    pub data: Payload,
    /// Correlation, causation and user metadata.
    #[serde(default)]
    pub metadata: Metadata,
}

impl Event {
    /// Bytes a store accounts for this event: id, type, version, source, data, metadata
    /// and the timestamp. Every backend applies [`Limits`] to this number.
    pub fn encoded_len(&self) -> usize {
        16 + 8
            + self.event_type.len()
            + self.event_version.len()
            + self.source.len()
            + self.data.len()
            + self.metadata.encoded_len()
    }

    /// Checks the event against the rules every store applies.
    pub fn validate(&self, limits: &Limits) -> Result<(), EventError> {
        validate_event_type(&self.event_type)?;
        if self.data.is_null() || self.data.is_empty() {
            return Err(EventError::MissingData);
        }
        if self.event_version.is_empty() {
            return Err(EventError::InvalidVersion {
                version: self.event_version.clone(),
            });
        }
        self.check_no_nul()?;
        let size = self.encoded_len();
        if size > limits.max_event_bytes {
            return Err(EventError::TooLarge {
                event_type: self.event_type.clone(),
                size,
                max: limits.max_event_bytes,
            });
        }
        Ok(())
    }

    /// NUL characters cannot be stored by every backend (PostgreSQL text cannot hold
    /// them), so no envelope string may contain one. Payloads are JSON, where a NUL is
    /// always escaped.
    fn check_no_nul(&self) -> Result<(), EventError> {
        let m = &self.metadata;
        let fields = [
            ("source", Some(self.source.as_str())),
            ("eventVersion", Some(self.event_version.as_str())),
            ("metadata.correlationId", m.correlation_id.as_deref()),
            ("metadata.causationId", m.causation_id.as_deref()),
            ("metadata.userId", m.user_id.as_deref()),
        ];
        let extra = m.extra.iter().flat_map(|(k, v)| {
            [
                ("metadata", Some(k.as_str())),
                ("metadata", Some(v.as_str())),
            ]
        });
        for (field, value) in fields.into_iter().chain(extra) {
            if value.is_some_and(|v| v.contains('\0')) {
                return Err(EventError::NulCharacter {
                    field: field.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The timestamp in integer microseconds since the Unix epoch (how stores keep it).
    pub fn timestamp_micros(&self) -> i64 {
        timestamp_to_micros(self.timestamp)
    }
}

/// Integer microseconds since the Unix epoch, truncating finer precision.
pub fn timestamp_to_micros(ts: Timestamp) -> i64 {
    ts.as_microsecond()
}

/// The timestamp for integer microseconds since the Unix epoch (clamped to jiff's range).
pub fn timestamp_from_micros(micros: i64) -> Timestamp {
    Timestamp::from_microsecond(micros).unwrap_or(if micros < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    })
}

/// Truncates a timestamp to whole microseconds, the precision every store keeps.
pub fn truncate_to_micros(ts: Timestamp) -> Timestamp {
    timestamp_from_micros(timestamp_to_micros(ts))
}

fn validate_event_type(event_type: &str) -> Result<(), EventError> {
    if event_type.is_empty() {
        return Err(EventError::MissingType);
    }
    if event_type.len() > MAX_EVENT_TYPE_BYTES {
        return Err(EventError::TypeTooLong {
            len: event_type.len(),
            max: MAX_EVENT_TYPE_BYTES,
        });
    }
    if let Some((offset, _)) = event_type.char_indices().find(|(_, c)| c.is_control()) {
        return Err(EventError::TypeControlCharacter { offset });
    }
    Ok(())
}

/// An event as a producer writes it: only type and data are required.
///
/// ```
/// use tidings::{Enricher, NewEvent};
/// let enricher = Enricher::new("order-service");
/// let event = enricher
///     .enrich(NewEvent::new("OrderCreated", serde_json::json!({"orderId": "order-123"})))
///     .unwrap();
/// assert_eq!(event.source, "order-service");
/// assert_eq!(event.event_version, "1.0");
/// assert_eq!(event.event_id.get_version_num(), 7);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    /// The producer's own id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// What happened. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// Schema version; defaults to `"1.0"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_version: Option<String>,
    /// When it happened; defaults to now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
    /// Producing service; defaults to the enricher's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The payload. Required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Payload>,
    /// Metadata.
    #[serde(default, skip_serializing_if = "Metadata::is_empty")]
    pub metadata: Metadata,
}

impl NewEvent {
    /// An event of `event_type` carrying `data`.
    pub fn new(event_type: impl Into<String>, data: impl Into<Payload>) -> Self {
        Self {
            event_type: Some(event_type.into()),
            data: Some(data.into()),
            ..Self::default()
        }
    }

    /// Sets the event id.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.event_id = Some(id);
        self
    }

    /// Sets the schema version.
    pub fn with_version(mut self, version: impl Into<String>) -> Self {
        self.event_version = Some(version.into());
        self
    }

    /// Sets the source.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the timestamp.
    pub fn with_timestamp(mut self, timestamp: Timestamp) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.correlation_id = Some(id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.causation_id = Some(id.into());
        self
    }

    /// Sets the user id.
    pub fn with_user_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.user_id = Some(id.into());
        self
    }

    /// Adds a free-form metadata pair.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.extra.insert(key.into(), value.into());
        self
    }
}

impl From<Event> for NewEvent {
    fn from(e: Event) -> Self {
        Self {
            event_id: Some(e.event_id),
            event_type: Some(e.event_type),
            event_version: Some(e.event_version),
            timestamp: Some(e.timestamp),
            source: Some(e.source),
            data: Some(e.data),
            metadata: e.metadata,
        }
    }
}

/// Size limits every store enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single event, as counted by [`Event::encoded_len`]. Default 1 MiB.
    pub max_event_bytes: usize,
    /// Largest append (all its events together). Default 16 MiB.
    pub max_append_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1 << 20,
            max_append_bytes: 16 << 20,
        }
    }
}

/// Why an event was refused. Nothing is written when any event of an append is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// `eventType` is missing or empty.
    #[error("event must have an eventType")]
    MissingType,
    /// `eventType` is longer than the limit.
    #[error("eventType is {len} bytes long; the limit is {max}")]
    TypeTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `eventType` contains a control character.
    #[error("eventType contains a control character at byte {offset}")]
    TypeControlCharacter {
        /// Byte offset of the character.
        offset: usize,
    },
    /// `data` is missing or null.
    #[error("event must have data (null is not data)")]
    MissingData,
    /// `eventVersion` is empty.
    #[error("eventVersion {version:?} is not a schema version")]
    InvalidVersion {
        /// The refused version.
        version: String,
    },
    /// An envelope string contains a NUL character.
    #[error("{field} contains a NUL character")]
    NulCharacter {
        /// The field holding it.
        field: String,
    },
    /// The event is larger than the store accepts.
    #[error("event {event_type} is {size} bytes; the limit is {max}")]
    TooLarge {
        /// Type of the refused event.
        event_type: String,
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// Where timestamps come from: the system clock, or a test's.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that stands still until told to move (for tests and simulations).
#[derive(Debug, Clone)]
pub struct ManualClock(std::sync::Arc<std::sync::Mutex<Timestamp>>);

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(start)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let span = jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::MAX);
        *t = t.checked_add(span).unwrap_or(Timestamp::MAX);
    }

    /// Sets the clock.
    pub fn set(&self, to: Timestamp) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Fills in what producers left out of their events: id, timestamp, schema version and
/// source.
///
/// It does not validate: the store does, once, for every append
/// (`tidings_core::backend::validate_append`), with the store's own [`Limits`].
#[derive(Clone)]
pub struct Enricher {
    source: String,
    default_version: String,
    clock: std::sync::Arc<dyn Clock>,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("source", &self.source)
            .field("default_version", &self.default_version)
            .finish_non_exhaustive()
    }
}

impl Enricher {
    /// An enricher naming `source` as the producing service.
    pub fn new(source: impl Into<String>) -> Self {
        Self {
            source: source.into(),
            default_version: DEFAULT_EVENT_VERSION.to_owned(),
            clock: std::sync::Arc::new(SystemClock),
        }
    }

    /// Uses another clock.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = std::sync::Arc::new(clock);
        self
    }

    /// Uses another default schema version.
    pub fn with_default_version(mut self, version: impl Into<String>) -> Self {
        self.default_version = version.into();
        self
    }

    /// The configured source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The clock in use.
    pub fn clock(&self) -> &std::sync::Arc<dyn Clock> {
        &self.clock
    }

    /// Fills id, timestamp, version and source when missing. Fails only when the event
    /// has no type (or an empty one) or no data, without which it is not an event;
    /// everything else is checked by the store when the event is appended.
    pub fn enrich(&self, event: NewEvent) -> Result<Event, EventError> {
        let event_type = event
            .event_type
            .filter(|t| !t.is_empty())
            .ok_or(EventError::MissingType)?;
        let data = event.data.ok_or(EventError::MissingData)?;
        let event = Event {
            event_id: event.event_id.unwrap_or_else(Uuid::now_v7),
            event_type,
            event_version: event
                .event_version
                .unwrap_or_else(|| self.default_version.clone()),
            timestamp: truncate_to_micros(event.timestamp.unwrap_or_else(|| self.clock.now())),
            source: event.source.unwrap_or_else(|| self.source.clone()),
            data,
            metadata: event.metadata,
        };
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../../../fixtures/order-created.json");

    #[test]
    fn fixture_round_trips_to_equal_json() {
        let event: Event = serde_json::from_str(FIXTURE).unwrap();
        assert_eq!(event.event_type, "OrderCreated");
        assert_eq!(event.metadata.user_id.as_deref(), Some("user-789"));
        let back = serde_json::to_value(&event).unwrap();
        let original: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
        assert_eq!(back, original);
        let again: Event = serde_json::from_value(back).unwrap();
        assert_eq!(again, event);
    }

    #[test]
    fn enrichment_fills_missing_and_keeps_given() {
        let clock = ManualClock::new("2024-01-15T10:30:00.123456789Z".parse().unwrap());
        let e = Enricher::new("svc").with_clock(clock);
        let filled = e.enrich(NewEvent::new("A", serde_json::json!({}))).unwrap();
        assert_eq!(filled.source, "svc");
        assert_eq!(filled.event_version, DEFAULT_EVENT_VERSION);
        assert_eq!(filled.timestamp.to_string(), "2024-01-15T10:30:00.123456Z");
        let id = Uuid::nil();
        let ts: Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
        let kept = e
            .enrich(
                NewEvent::new("A", serde_json::json!(1))
                    .with_id(id)
                    .with_source("other")
                    .with_version("2.0")
                    .with_timestamp(ts),
            )
            .unwrap();
        assert_eq!(
            (
                kept.event_id,
                kept.source.as_str(),
                kept.event_version.as_str()
            ),
            (id, "other", "2.0")
        );
        assert_eq!(kept.timestamp, ts);
    }

    #[test]
    fn bad_events_are_refused_by_the_one_validation_point() {
        // The enricher refuses only what is not an event (no type, no data); every other
        // check is the store's, through `validate_append`.
        let stream = crate::StreamId::new("s-1").unwrap();
        let checked = |enricher: &Enricher, event: NewEvent, limits: Limits| {
            let event = enricher.enrich(event)?;
            match crate::backend::validate_append(&stream, std::slice::from_ref(&event), &limits) {
                Ok(_) => Ok(event),
                Err(crate::StoreError::InvalidEvent { index: 0, source }) => Err(source),
                Err(other) => panic!("not an event error: {other}"),
            }
        };
        let e = Enricher::new("svc");
        let default = Limits::default();
        let no_type = NewEvent {
            data: Some(Payload::null()),
            ..NewEvent::default()
        };
        assert_eq!(checked(&e, no_type, default), Err(EventError::MissingType));
        let no_data = NewEvent {
            event_type: Some("A".into()),
            ..NewEvent::default()
        };
        assert_eq!(checked(&e, no_data, default), Err(EventError::MissingData));
        assert_eq!(
            checked(&e, NewEvent::new("A", Payload::null()), default),
            Err(EventError::MissingData)
        );
        assert_eq!(
            checked(&e, NewEvent::new("", serde_json::json!(1)), default),
            Err(EventError::MissingType)
        );
        assert!(matches!(
            checked(
                &e,
                NewEvent::new("x".repeat(257), serde_json::json!(1)),
                default
            ),
            Err(EventError::TypeTooLong { len: 257, .. })
        ));
        assert!(matches!(
            checked(&e, NewEvent::new("A\tB", serde_json::json!(1)), default),
            Err(EventError::TypeControlCharacter { offset: 1 })
        ));
        assert_eq!(
            checked(
                &e,
                NewEvent::new("A", serde_json::json!(1)).with_user_id("a\0b"),
                default
            ),
            Err(EventError::NulCharacter {
                field: "metadata.userId".into()
            })
        );
        assert!(matches!(
            checked(
                &e,
                NewEvent::new("A", serde_json::json!(1)).with_meta("k", "\0"),
                default
            ),
            Err(EventError::NulCharacter { .. })
        ));
        let small = Limits {
            max_event_bytes: 100,
            max_append_bytes: 1000,
        };
        assert!(matches!(
            checked(
                &e,
                NewEvent::new("A", serde_json::json!("x".repeat(100))),
                small
            ),
            Err(EventError::TooLarge { max: 100, .. })
        ));
    }

    #[test]
    fn missing_fields_in_json_are_typed_errors_not_parse_errors() {
        let n: NewEvent = serde_json::from_str(r#"{"data":{"a":1}}"#).unwrap();
        assert_eq!(Enricher::new("s").enrich(n), Err(EventError::MissingType));
    }
}
