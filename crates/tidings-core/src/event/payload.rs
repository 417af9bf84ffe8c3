//! [`Payload`]: an event's data, kept as the exact JSON text the producer sent.
//!
//! Stores move payloads as opaque bytes; nothing on the append or read path parses them
//! into a tree. They are parsed once, when a payload is first built from untrusted text,
//! and again only when an application asks for a typed value.

use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// Valid JSON text, shared cheaply between clones.
///
/// Payloads built from text are kept compact: whitespace between tokens is removed
/// (strings, numbers and key order are kept exactly), so two payloads are equal when
/// their compact texts are.
///
/// ```
/// use tidings::Payload;
/// let p = Payload::parse(r#"{"orderId":"order-123"}"#).unwrap();
/// assert_eq!(p.to_value()["orderId"], "order-123");
/// assert!(Payload::parse("{not json").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Payload(Arc<str>);

impl Payload {
    /// Checks that `json` is one valid JSON value and keeps its text as it is.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        let _: &RawValue = serde_json::from_str(json)?;
        Ok(Self(Arc::from(compact(json))))
    }

    /// Serializes any value to compact JSON.
    pub fn from_serialize<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self(Arc::from(serde_json::to_string(value)?)))
    }

    /// Builds a payload from a JSON tree (always succeeds).
    pub fn from_value(value: &serde_json::Value) -> Self {
        Self(Arc::from(value.to_string()))
    }

    /// Wraps text the caller has already checked to be valid JSON — for a backend that
    /// reads back what it validated and checksummed itself. Invalid text here does not
    /// cause memory unsafety, only an error when the payload is later serialized or parsed.
    pub fn from_trusted_json(json: impl Into<Arc<str>>) -> Self {
        Self(json.into())
    }

    /// The JSON `null`.
    pub fn null() -> Self {
        Self(Arc::from("null"))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON text as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// Length of the JSON text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty text (never the case for a parsed payload).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when the payload is the JSON `null` (surrounding whitespace ignored).
    pub fn is_null(&self) -> bool {
        self.0.trim() == "null"
    }

    /// Parses the payload into a JSON tree.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }

    /// Parses the payload into a typed value.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Self::from_value(&value)
    }
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Self(Arc::from(compact(raw.get()))))
    }
}

/// Removes whitespace outside strings from valid JSON text.
fn compact(json: &str) -> std::borrow::Cow<'_, str> {
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let bytes = json.as_bytes();
    let mut in_string = false;
    let mut escaped = false;
    let needs_work = bytes.iter().any(|&b| {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            false
        } else if b == b'"' {
            in_string = true;
            false
        } else {
            is_ws(b)
        }
    });
    if !needs_work {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            out.push(c);
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_text_exactly() {
        let p = Payload::parse(r#"{ "a" : 1.0, "s": "x \" y\\" , "n":[ 1e3 ] }"#).unwrap();
        assert_eq!(p.as_str(), r#"{"a":1.0,"s":"x \" y\\","n":[1e3]}"#);
        let wrapped = serde_json::to_string(&serde_json::json!({"x": 1})).unwrap();
        assert_eq!(wrapped, r#"{"x":1}"#);
    }

    #[test]
    fn rejects_invalid_and_trailing() {
        assert!(Payload::parse("").is_err());
        assert!(Payload::parse("{} {}").is_err());
        assert!(Payload::parse("[1,").is_err());
    }

    #[test]
    fn serializes_raw_inside_other_json() {
        #[derive(Serialize, Deserialize)]
        struct W {
            data: Payload,
        }
        let w: W = serde_json::from_str(r#"{"data": {"k":[1,2]}}"#).unwrap();
        assert_eq!(w.data.as_str(), r#"{"k":[1,2]}"#);
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            r#"{"data":{"k":[1,2]}}"#
        );
        assert!(Payload::null().is_null());
    }
}
