//! [`StreamId`]: the validated name of a stream.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest stream name, in bytes of UTF-8.
pub const MAX_STREAM_NAME_BYTES: usize = 256;

/// Why a stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    /// The name is empty.
    #[error("stream name is empty")]
    Empty,
    /// The name is longer than [`MAX_STREAM_NAME_BYTES`].
    #[error("stream name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name contains a control character.
    #[error("stream name contains a control character at byte {offset}")]
    ControlCharacter {
        /// Byte offset of the first control character.
        offset: usize,
    },
    /// The name starts with `$`, which is reserved for the system's own streams.
    #[error("stream name {name:?} starts with '$', which is reserved for system streams")]
    Reserved {
        /// The refused name.
        name: String,
    },
}

/// The name of a stream: non-empty, at most 256 bytes, no control characters.
/// Names starting with `$` belong to the system and can only be made with
/// [`StreamId::system`].
///
/// ```
/// use tidings::StreamId;
/// let s = StreamId::new("order-123").unwrap();
/// assert_eq!(s.as_str(), "order-123");
/// assert!(StreamId::new("$all").is_err());
/// assert!(StreamId::new("").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// A user stream name.
    pub fn new(name: &str) -> Result<Self, StreamIdError> {
        if name.starts_with('$') {
            return Err(StreamIdError::Reserved {
                name: name.to_owned(),
            });
        }
        Self::check_shape(name)?;
        Ok(Self(Arc::from(name)))
    }

    /// A system stream name; it must start with `$`.
    pub fn system(name: &str) -> Result<Self, StreamIdError> {
        Self::check_shape(name)?;
        if !name.starts_with('$') {
            return Err(StreamIdError::Reserved {
                name: name.to_owned(),
            });
        }
        Ok(Self(Arc::from(name)))
    }

    /// Any well-formed name, user or system (what a store reads back).
    pub fn parse_any(name: &str) -> Result<Self, StreamIdError> {
        Self::check_shape(name)?;
        Ok(Self(Arc::from(name)))
    }

    fn check_shape(name: &str) -> Result<(), StreamIdError> {
        if name.is_empty() {
            return Err(StreamIdError::Empty);
        }
        if name.len() > MAX_STREAM_NAME_BYTES {
            return Err(StreamIdError::TooLong {
                len: name.len(),
                max: MAX_STREAM_NAME_BYTES,
            });
        }
        if let Some((offset, _)) = name.char_indices().find(|(_, c)| c.is_control()) {
            return Err(StreamIdError::ControlCharacter { offset });
        }
        Ok(())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True for `$`-prefixed system streams.
    pub fn is_system(&self) -> bool {
        self.0.starts_with('$')
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for StreamId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for StreamId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for StreamId {
    type Err = StreamIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for StreamId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse_any(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names() {
        assert_eq!(StreamId::new(""), Err(StreamIdError::Empty));
        assert!(matches!(
            StreamId::new(&"x".repeat(257)),
            Err(StreamIdError::TooLong { len: 257, .. })
        ));
        assert!(StreamId::new(&"é".repeat(128)).is_ok());
        assert!(StreamId::new(&"é".repeat(129)).is_err());
        assert_eq!(
            StreamId::new("a\nb"),
            Err(StreamIdError::ControlCharacter { offset: 1 })
        );
        assert!(matches!(
            StreamId::new("$parked"),
            Err(StreamIdError::Reserved { .. })
        ));
        assert!(StreamId::system("$parked").unwrap().is_system());
        assert!(StreamId::system("parked").is_err());
    }
}
