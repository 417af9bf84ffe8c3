//! Upcasting: stored events of an old schema version read in the current shape.
//!
//! Events are immutable once stored, so a schema change is handled on read: an
//! [`Upcaster`] turns the data of one event type from one version into the next, and
//! [`Upcasters`] applies them as a chain (`1.0 → 1.1 → 2.0`) until no upcaster matches.
//!
//! ```
//! use serde_json::json;
//! use tidings::event::upcast::{Upcaster, Upcasters};
//!
//! let upcasters = Upcasters::new()
//!     .with(Upcaster::new("OrderCreated", "1.0", "2.0", |mut data| {
//!         data["currency"] = json!("USD");
//!         Ok(data)
//!     }))
//!     .unwrap();
//! let stored = tidings::Enricher::new("order-service")
//!     .enrich(tidings::NewEvent::new("OrderCreated", json!({"orderId": "order-123"})))
//!     .unwrap();
//! let current = upcasters.upcast(stored).unwrap();
//! assert_eq!(current.event_version, "2.0");
//! assert_eq!(current.data.to_value()["currency"], "USD");
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::{Event, Payload};

type Transform = dyn Fn(Value) -> Result<Value, String> + Send + Sync;

/// Turns the data of one event type from one schema version into another.
#[derive(Clone)]
pub struct Upcaster {
    event_type: String,
    from: String,
    to: String,
    transform: Arc<Transform>,
}

impl fmt::Debug for Upcaster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Upcaster({} {} → {})",
            self.event_type, self.from, self.to
        )
    }
}

impl Upcaster {
    /// An upcaster of `event_type` data from version `from` to version `to`. The
    /// transform gets the old data and returns the new, or a reason it cannot.
    pub fn new(
        event_type: impl Into<String>,
        from: impl Into<String>,
        to: impl Into<String>,
        transform: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            event_type: event_type.into(),
            from: from.into(),
            to: to.into(),
            transform: Arc::new(transform),
        }
    }

    /// The event type it applies to.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The version it reads.
    pub fn from_version(&self) -> &str {
        &self.from
    }

    /// The version it writes.
    pub fn to_version(&self) -> &str {
        &self.to
    }
}

/// Why upcasting failed or an upcaster was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpcastError {
    /// Another upcaster already reads this type and version.
    #[error("an upcaster for {event_type} version {from} is already registered")]
    Duplicate {
        /// The event type.
        event_type: String,
        /// The version both read.
        from: String,
    },
    /// The upcaster would lead back to a version the chain has already passed.
    #[error("upcasters for {event_type} form a cycle through version {version}")]
    Cycle {
        /// The event type.
        event_type: String,
        /// A version on the cycle.
        version: String,
    },
    /// A transform refused the data.
    #[error("upcasting {event_type} from {from} to {to} failed: {reason}")]
    Failed {
        /// The event type.
        event_type: String,
        /// The version read.
        from: String,
        /// The version to write.
        to: String,
        /// What the transform said.
        reason: String,
    },
}

/// A set of upcasters, applied as a chain on read.
#[derive(Debug, Clone, Default)]
pub struct Upcasters {
    by_source: HashMap<(String, String), Upcaster>,
}

impl Upcasters {
    /// No upcasters: events are read as stored.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an upcaster. Refuses a second one for the same type and version, and one that
    /// would close a cycle; the set is unchanged then.
    pub fn with(mut self, upcaster: Upcaster) -> Result<Self, UpcastError> {
        self.add(upcaster)?;
        Ok(self)
    }

    /// Adds an upcaster in place (see [`Upcasters::with`]).
    pub fn add(&mut self, upcaster: Upcaster) -> Result<(), UpcastError> {
        let key = (upcaster.event_type.clone(), upcaster.from.clone());
        if self.by_source.contains_key(&key) {
            return Err(UpcastError::Duplicate {
                event_type: key.0,
                from: key.1,
            });
        }
        // Following the chain from the new upcaster's target must never come back to
        // its source.
        let mut version = upcaster.to.clone();
        let mut steps = 0;
        loop {
            if version == upcaster.from {
                return Err(UpcastError::Cycle {
                    event_type: key.0,
                    version,
                });
            }
            match self.by_source.get(&(key.0.clone(), version.clone())) {
                Some(next) if steps <= self.by_source.len() => {
                    version = next.to.clone();
                    steps += 1;
                }
                _ => break,
            }
        }
        self.by_source.insert(key, upcaster);
        Ok(())
    }

    /// How many upcasters there are.
    pub fn len(&self) -> usize {
        self.by_source.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_source.is_empty()
    }

    /// The version an event of `event_type` at `version` ends up at after the chain.
    pub fn target_version(&self, event_type: &str, version: &str) -> String {
        let mut version = version.to_owned();
        while let Some(u) = self
            .by_source
            .get(&(event_type.to_owned(), version.clone()))
        {
            version = u.to.clone();
        }
        version
    }

    /// Applies every matching upcaster in turn; an event no upcaster matches is returned
    /// as it is. The envelope's other fields are kept.
    pub fn upcast(&self, mut event: Event) -> Result<Event, UpcastError> {
        if self.by_source.is_empty() {
            return Ok(event);
        }
        let mut data: Option<Value> = None;
        while let Some(u) = self
            .by_source
            .get(&(event.event_type.clone(), event.event_version.clone()))
        {
            let failed = |reason: String| UpcastError::Failed {
                event_type: event.event_type.clone(),
                from: u.from.clone(),
                to: u.to.clone(),
                reason,
            };
            let old = match data.take() {
                Some(d) => d,
                None => serde_json::from_str(event.data.as_str())
                    .map_err(|e| failed(format!("stored data is not valid JSON: {e}")))?,
            };
            let new = (u.transform)(old).map_err(failed)?;
            data = Some(new);
            event.event_version = u.to.clone();
        }
        if let Some(data) = data {
            event.data = Payload::from_value(&data);
        }
        Ok(event)
    }

    /// Upcasts a recorded event, keeping its stream, revision and position.
    pub fn upcast_recorded(
        &self,
        mut recorded: crate::RecordedEvent,
    ) -> Result<crate::RecordedEvent, UpcastError> {
        recorded.event = self.upcast(recorded.event)?;
        Ok(recorded)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{Enricher, NewEvent};

    fn stored(t: &str, v: &str, data: Value) -> Event {
        Enricher::new("s")
            .enrich(NewEvent::new(t, data).with_version(v))
            .unwrap()
    }

    fn chain() -> Upcasters {
        Upcasters::new()
            .with(Upcaster::new("OrderCreated", "1.0", "1.1", |mut d| {
                d["currency"] = json!("USD");
                Ok(d)
            }))
            .unwrap()
            .with(Upcaster::new("OrderCreated", "1.1", "2.0", |mut d| {
                let total = d["totalAmount"]
                    .as_f64()
                    .ok_or("totalAmount is not a number")?;
                d["totalCents"] = json!((total * 100.0).round() as i64);
                Ok(d)
            }))
            .unwrap()
    }

    #[test]
    fn chain_runs_to_the_current_version_and_keeps_the_envelope() {
        let old = stored("OrderCreated", "1.0", json!({"totalAmount": 59.98}));
        let new = chain().upcast(old.clone()).unwrap();
        assert_eq!(new.event_version, "2.0");
        assert_eq!(new.data.to_value()["currency"], "USD");
        assert_eq!(new.data.to_value()["totalCents"], 5998);
        assert_eq!(
            (new.event_id, &new.metadata, new.timestamp),
            (old.event_id, &old.metadata, old.timestamp)
        );
        assert_eq!(chain().target_version("OrderCreated", "1.0"), "2.0");
    }

    #[test]
    fn events_without_upcasters_pass_unchanged() {
        let current = stored("OrderCreated", "2.0", json!({"a": 1}));
        assert_eq!(chain().upcast(current.clone()).unwrap(), current);
        let other = stored("OrderConfirmed", "1.0", json!({"a": 1}));
        assert_eq!(chain().upcast(other.clone()).unwrap(), other);
    }

    #[test]
    fn a_failing_transform_is_a_typed_error() {
        let old = stored("OrderCreated", "1.0", json!({"totalAmount": "lots"}));
        assert!(matches!(
            chain().upcast(old),
            Err(UpcastError::Failed { ref from, ref to, .. }) if from == "1.1" && to == "2.0"
        ));
    }

    #[test]
    fn stored_data_that_is_not_json_is_a_typed_error() {
        let mut old = stored("OrderCreated", "1.0", json!({}));
        old.data = Payload::from_trusted_json("{broken");
        assert!(matches!(
            chain().upcast(old),
            Err(UpcastError::Failed { ref reason, .. }) if reason.contains("not valid JSON")
        ));
    }

    #[test]
    fn duplicates_and_cycles_are_refused_and_change_nothing() {
        let mut set = chain();
        let dup = Upcaster::new("OrderCreated", "1.0", "3.0", Ok);
        assert!(matches!(set.add(dup), Err(UpcastError::Duplicate { .. })));
        let back = Upcaster::new("OrderCreated", "2.0", "1.0", Ok);
        assert!(matches!(set.add(back), Err(UpcastError::Cycle { .. })));
        let selfloop = Upcaster::new("X", "1.0", "1.0", Ok);
        assert!(matches!(set.add(selfloop), Err(UpcastError::Cycle { .. })));
        assert_eq!(set.len(), 2);
        assert_eq!(set.target_version("OrderCreated", "1.0"), "2.0");
    }
}
