//! Typed domain events: Rust types that map to and from the envelope.
//!
//! A [`DomainEvent`] knows, once, every event type it stands for and the schema version of
//! each ([`DomainEvent::SCHEMA`]). Encoding gives a [`NewEvent`] with the right
//! `eventType`, `eventVersion` and `data`; decoding checks type and version against the
//! schema and refuses anything else with a typed [`DecodeError`]. Stored events of older
//! versions are brought up to date by [`crate::event::upcast::Upcasters`] before decoding.
//!
//! The [`domain_event!`](crate::domain_event) macro implements the trait for a serde enum
//! tagged as `#[serde(tag = "eventType", content = "data")]` (one variant per event type,
//! the variant's fields are the payload) or for a plain struct (the struct's name is the
//! type, its fields the payload), so applications write no match arms.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tidings::event::domain::{DecodeError, DomainEvent};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! #[serde(tag = "eventType", content = "data", rename_all_fields = "camelCase")]
//! enum OrderEvent {
//!     OrderCreated { order_id: String, customer_id: String },
//!     OrderConfirmed { order_id: String },
//! }
//! tidings::domain_event!(OrderEvent { OrderCreated => "2.0", OrderConfirmed => "1.0" });
//!
//! let created = OrderEvent::OrderCreated { order_id: "order-123".into(), customer_id: "c".into() };
//! let new_event = created.to_new_event().unwrap();
//! assert_eq!(new_event.event_type.as_deref(), Some("OrderCreated"));
//! assert_eq!(new_event.event_version.as_deref(), Some("2.0"));
//!
//! let event = tidings::Enricher::new("order-service").enrich(new_event).unwrap();
//! assert_eq!(OrderEvent::from_event(&event).unwrap(), created);
//!
//! let mut old = event.clone();
//! old.event_version = "1.0".into();
//! assert!(matches!(OrderEvent::from_event(&old), Err(DecodeError::UnknownVersion { .. })));
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Event, NewEvent, Payload};

/// One event type a [`DomainEvent`] stands for, with the schema version it reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventSchema {
    /// The `eventType`, such as `"OrderCreated"`.
    pub event_type: &'static str,
    /// The current schema version of its `data`, such as `"2.0"`.
    pub version: &'static str,
}

/// Why a domain event could not be turned into an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Serialization failed.
    #[error("event {event_type} could not be serialized: {reason}")]
    Serialize {
        /// The event's type.
        event_type: String,
        /// What serde said.
        reason: String,
    },
    /// The serialized form is not `{"eventType": .., "data": ..}` for the declared type
    /// (for instance a serde `rename` that disagrees with the declared name, or a variant
    /// without fields, which has no data).
    #[error(
        "event {event_type} did not serialize as {{\"eventType\": {event_type:?}, \"data\": ..}}: {reason}"
    )]
    NotTagged {
        /// The declared type.
        event_type: String,
        /// What was wrong.
        reason: String,
    },
}

/// Why an envelope could not be turned into a domain event. Nothing is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The event type is not one this Rust type stands for.
    #[error("unknown event type {event_type:?}; known types: {}", known.join(", "))]
    UnknownType {
        /// The refused type.
        event_type: String,
        /// The types this Rust type knows.
        known: Vec<&'static str>,
    },
    /// The type is known but this schema version is not (and no upcaster reached the
    /// current one).
    #[error(
        "event {event_type} has schema version {version:?}; this code reads version {expected:?}"
    )]
    UnknownVersion {
        /// The event's type.
        event_type: String,
        /// The refused version.
        version: String,
        /// The version this code reads.
        expected: &'static str,
    },
    /// Type and version are known but the data does not have the declared shape.
    #[error("event {event_type} version {version} has malformed data: {reason}")]
    Malformed {
        /// The event's type.
        event_type: String,
        /// Its version.
        version: String,
        /// What serde said.
        reason: String,
    },
}

/// A Rust type that maps to and from the event envelope.
///
/// Implement it with [`domain_event!`](crate::domain_event) for serde types, or by hand:
/// only [`event_type`](Self::event_type), [`encode_data`](Self::encode_data) and
/// [`decode_data`](Self::decode_data) are required; the checks live in the provided methods.
pub trait DomainEvent: Sized + Send + Sync + 'static {
    /// Every event type this Rust type stands for, each with its current schema version.
    const SCHEMA: &'static [EventSchema];

    /// This value's event type (one of [`Self::SCHEMA`]).
    fn event_type(&self) -> &'static str;

    /// This value's `data`.
    fn encode_data(&self) -> Result<Payload, EncodeError>;

    /// Builds a value from `data` of `event_type`, which [`Self::from_event`] has already
    /// checked to be in [`Self::SCHEMA`] at its current version.
    fn decode_data(event_type: &str, data: &Payload) -> Result<Self, DecodeError>;

    /// The schema entry for `event_type`, if this type knows it.
    fn schema_of(event_type: &str) -> Option<EventSchema> {
        Self::SCHEMA
            .iter()
            .find(|s| s.event_type == event_type)
            .copied()
    }

    /// The schema version this value is written with.
    fn event_version(&self) -> &'static str {
        Self::schema_of(self.event_type()).map_or(super::DEFAULT_EVENT_VERSION, |s| s.version)
    }

    /// The producer's envelope: type, version and data set; the rest left to the enricher.
    fn to_new_event(&self) -> Result<NewEvent, EncodeError> {
        Ok(
            NewEvent::new(self.event_type(), self.encode_data()?)
                .with_version(self.event_version()),
        )
    }

    /// Decodes an envelope, refusing unknown types and versions.
    fn from_event(event: &Event) -> Result<Self, DecodeError> {
        let schema =
            Self::schema_of(&event.event_type).ok_or_else(|| DecodeError::UnknownType {
                event_type: event.event_type.clone(),
                known: Self::SCHEMA.iter().map(|s| s.event_type).collect(),
            })?;
        if schema.version != event.event_version {
            return Err(DecodeError::UnknownVersion {
                event_type: event.event_type.clone(),
                version: event.event_version.clone(),
                expected: schema.version,
            });
        }
        Self::decode_data(&event.event_type, &event.data).map_err(|e| match e {
            DecodeError::Malformed { reason, .. } => DecodeError::Malformed {
                event_type: event.event_type.clone(),
                version: event.event_version.clone(),
                reason,
            },
            other => other,
        })
    }
}

/// Encodes a serde value tagged as `{"eventType": event_type, "data": ..}` and returns
/// its data (what [`domain_event!`](crate::domain_event) uses for enums).
pub fn encode_tagged<T: Serialize>(value: &T, event_type: &str) -> Result<Payload, EncodeError> {
    let tree = serde_json::to_value(value).map_err(|e| EncodeError::Serialize {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    })?;
    let not_tagged = |reason: &str| EncodeError::NotTagged {
        event_type: event_type.to_owned(),
        reason: reason.to_owned(),
    };
    let serde_json::Value::Object(mut map) = tree else {
        return Err(not_tagged("it is not a JSON object"));
    };
    match map.get("eventType") {
        Some(serde_json::Value::String(t)) if t == event_type => {}
        Some(other) => {
            return Err(not_tagged(&format!("its eventType is {other}")));
        }
        None => return Err(not_tagged("it has no eventType")),
    }
    let data = map
        .remove("data")
        .ok_or_else(|| not_tagged("it has no data (variants must carry fields)"))?;
    Ok(Payload::from_value(&data))
}

/// Decodes `data` of `event_type` into a serde value tagged as
/// `{"eventType": .., "data": ..}` (what [`domain_event!`](crate::domain_event) uses for
/// enums).
pub fn decode_tagged<T: DeserializeOwned>(
    event_type: &str,
    data: &Payload,
) -> Result<T, DecodeError> {
    let malformed = |reason: String| DecodeError::Malformed {
        event_type: event_type.to_owned(),
        version: String::new(),
        reason,
    };
    let tag = serde_json::to_string(event_type).map_err(|e| malformed(e.to_string()))?;
    let text = format!(r#"{{"eventType":{tag},"data":{}}}"#, data.as_str());
    serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))
}

/// Decodes `data` into a plain serde value (what [`domain_event!`](crate::domain_event)
/// uses for structs).
pub fn decode_plain<T: DeserializeOwned>(
    event_type: &str,
    data: &Payload,
) -> Result<T, DecodeError> {
    data.deserialize().map_err(|e| DecodeError::Malformed {
        event_type: event_type.to_owned(),
        version: String::new(),
        reason: e.to_string(),
    })
}

/// Encodes a plain serde value as data (what [`domain_event!`](crate::domain_event) uses
/// for structs).
pub fn encode_plain<T: Serialize>(value: &T, event_type: &str) -> Result<Payload, EncodeError> {
    Payload::from_serialize(value).map_err(|e| EncodeError::Serialize {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    })
}

/// Implements [`DomainEvent`](crate::event::domain::DomainEvent) for a serde type, with
/// the schema version of each event type declared once.
///
/// For an enum serialized as `#[serde(tag = "eventType", content = "data")]`, list every
/// variant with its version; the variant's name is the event type:
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// #[serde(tag = "eventType", content = "data")]
/// enum UserEvent {
///     UserRegistered { email: String },
///     UserRenamed { name: String },
/// }
/// tidings::domain_event!(UserEvent { UserRegistered => "1.0", UserRenamed => "1.1" });
/// ```
///
/// For a struct, name it with `struct`; its name is the event type:
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct ServiceStarted { service_name: String }
/// tidings::domain_event!(struct ServiceStarted => "1.0");
/// ```
#[macro_export]
macro_rules! domain_event {
    (struct $ty:ident => $version:literal) => {
        impl $crate::event::domain::DomainEvent for $ty {
            const SCHEMA: &'static [$crate::event::domain::EventSchema] =
                &[$crate::event::domain::EventSchema {
                    event_type: stringify!($ty),
                    version: $version,
                }];
            fn event_type(&self) -> &'static str {
                stringify!($ty)
            }
            fn encode_data(
                &self,
            ) -> ::std::result::Result<$crate::Payload, $crate::event::domain::EncodeError> {
                $crate::event::domain::encode_plain(self, stringify!($ty))
            }
            fn decode_data(
                event_type: &str,
                data: &$crate::Payload,
            ) -> ::std::result::Result<Self, $crate::event::domain::DecodeError> {
                $crate::event::domain::decode_plain(event_type, data)
            }
        }
    };
    ($ty:ident { $($variant:ident => $version:literal),+ $(,)? }) => {
        impl $crate::event::domain::DomainEvent for $ty {
            const SCHEMA: &'static [$crate::event::domain::EventSchema] = &[$(
                $crate::event::domain::EventSchema {
                    event_type: stringify!($variant),
                    version: $version,
                }
            ),+];
            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant { .. } => stringify!($variant),)+
                }
            }
            fn encode_data(
                &self,
            ) -> ::std::result::Result<$crate::Payload, $crate::event::domain::EncodeError> {
                $crate::event::domain::encode_tagged(self, self.event_type())
            }
            fn decode_data(
                event_type: &str,
                data: &$crate::Payload,
            ) -> ::std::result::Result<Self, $crate::event::domain::DecodeError> {
                $crate::event::domain::decode_tagged(event_type, data)
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::Enricher;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "eventType", content = "data", rename_all_fields = "camelCase")]
    enum Shop {
        OrderCreated { order_id: String, total_amount: f64 },
        OrderConfirmed { order_id: String },
        ItemAdded(Item),
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Item {
        product_id: String,
    }

    crate::domain_event!(Shop { OrderCreated => "2.0", OrderConfirmed => "1.0", ItemAdded => "1.0" });

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct ServiceStarted {
        service_name: String,
    }
    crate::domain_event!(struct ServiceStarted => "1.1");

    #[derive(Serialize, Deserialize)]
    #[serde(tag = "eventType", content = "data")]
    enum Renamed {
        #[serde(rename = "Other")]
        Thing { a: u8 },
    }
    crate::domain_event!(Renamed { Thing => "1.0" });

    fn envelope(e: &impl DomainEvent) -> Event {
        Enricher::new("test")
            .enrich(e.to_new_event().unwrap())
            .unwrap()
    }

    #[test]
    fn enum_round_trips_through_the_envelope() {
        for e in [
            Shop::OrderCreated {
                order_id: "order-1".into(),
                total_amount: 59.98,
            },
            Shop::OrderConfirmed {
                order_id: "order-1".into(),
            },
            Shop::ItemAdded(Item {
                product_id: "p".into(),
            }),
        ] {
            let env = envelope(&e);
            assert_eq!(env.event_type, e.event_type());
            assert_eq!(env.event_version, e.event_version());
            assert_eq!(Shop::from_event(&env).unwrap(), e);
        }
        let env = envelope(&Shop::OrderCreated {
            order_id: "o".into(),
            total_amount: 1.0,
        });
        assert_eq!(env.event_version, "2.0");
        assert_eq!(env.data.to_value()["orderId"], "o");
        assert!(env.data.to_value().get("eventType").is_none());
    }

    #[test]
    fn struct_round_trips() {
        let e = ServiceStarted {
            service_name: "order-service".into(),
        };
        let env = envelope(&e);
        assert_eq!(
            (env.event_type.as_str(), env.event_version.as_str()),
            ("ServiceStarted", "1.1")
        );
        assert_eq!(ServiceStarted::from_event(&env).unwrap(), e);
    }

    #[test]
    fn unknown_type_version_and_malformed_data_are_typed_errors() {
        let mut env = envelope(&Shop::OrderConfirmed {
            order_id: "o".into(),
        });
        env.event_type = "OrderShipped".into();
        assert!(matches!(
            Shop::from_event(&env),
            Err(DecodeError::UnknownType { ref event_type, ref known })
                if event_type == "OrderShipped" && known.len() == 3
        ));
        env.event_type = "OrderConfirmed".into();
        env.event_version = "0.9".into();
        assert_eq!(
            Shop::from_event(&env),
            Err(DecodeError::UnknownVersion {
                event_type: "OrderConfirmed".into(),
                version: "0.9".into(),
                expected: "1.0"
            })
        );
        env.event_version = "1.0".into();
        env.data = Payload::parse(r#"{"orderNumber": 5}"#).unwrap();
        assert!(matches!(
            Shop::from_event(&env),
            Err(DecodeError::Malformed { ref version, .. }) if version == "1.0"
        ));
        env.event_type = "ServiceStarted".into();
        env.event_version = "1.1".into();
        assert!(matches!(
            ServiceStarted::from_event(&env),
            Err(DecodeError::Malformed { .. })
        ));
    }

    #[test]
    fn a_rename_that_disagrees_with_the_declared_name_is_an_encode_error() {
        assert!(matches!(
            Renamed::Thing { a: 1 }.to_new_event(),
            Err(EncodeError::NotTagged { .. })
        ));
    }
}
