//! Routing: which topic an event type goes to.

use std::collections::HashMap;

/// The topic for each event type, with a default topic for the rest.
///
/// ```
/// use tidings::transport::TopicMap;
/// let topics = TopicMap::new("events").route("OrderCreated", "orders");
/// assert_eq!(topics.topic_for("OrderCreated"), "orders");
/// assert_eq!(topics.topic_for("PaymentProcessed"), "events");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMap {
    default: String,
    routes: HashMap<String, String>,
}

impl TopicMap {
    /// Every event type goes to `default` until routed elsewhere.
    pub fn new(default: impl Into<String>) -> Self {
        Self {
            default: default.into(),
            routes: HashMap::new(),
        }
    }

    /// Sends `event_type` to `topic`.
    pub fn route(mut self, event_type: impl Into<String>, topic: impl Into<String>) -> Self {
        self.routes.insert(event_type.into(), topic.into());
        self
    }

    /// The topic for `event_type`.
    pub fn topic_for(&self, event_type: &str) -> &str {
        self.routes.get(event_type).unwrap_or(&self.default)
    }

    /// The default topic.
    pub fn default_topic(&self) -> &str {
        &self.default
    }

    /// Every topic an event can be routed to (the default first).
    pub fn topics(&self) -> Vec<&str> {
        let mut out = vec![self.default.as_str()];
        for t in self.routes.values() {
            if !out.contains(&t.as_str()) {
                out.push(t);
            }
        }
        out
    }
}

/// Whether `name` can be a topic or group on every backend: 1 to 200 ASCII letters,
/// digits, `-` and `_`. (No `.`: NATS subjects and AMQP routing keys split on it, and no
/// wildcards.)
pub fn is_valid_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("names cannot be empty");
    }
    if name.len() > 200 {
        return Err("names are at most 200 bytes");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("names use only ASCII letters, digits, '-' and '_'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("orders_v1-x").is_ok());
        assert!(is_valid_name("").is_err());
        assert!(is_valid_name("a.b").is_err());
        assert!(is_valid_name("a*").is_err());
        assert!(is_valid_name(&"a".repeat(201)).is_err());
    }

    #[test]
    fn topics_lists_default_first_without_duplicates() {
        let m = TopicMap::new("d").route("A", "x").route("B", "x");
        assert_eq!(m.topics(), vec!["d", "x"]);
    }
}
