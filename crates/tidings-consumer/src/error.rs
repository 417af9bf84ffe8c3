//! [`ConsumerError`]: what stops a consumer group or one of its operations.

use tidings_core::store::{Revision, StoreError};
use tidings_core::stream::{StreamId, StreamIdError};

use super::checkpoint::CheckpointError;

/// Why a consumer-group operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The group's name does not make valid system stream names.
    #[error("consumer group name {name:?} is not usable: {source}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: StreamIdError,
    },
    /// The group's subscription failed; the group delivers nothing more.
    #[error("consumer group {group}: subscription failed: {source}")]
    Subscription {
        /// The group.
        group: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// Writing or reading the parked stream failed. A delivery being parked stays
    /// in the group, to be delivered again.
    #[error("consumer group {group}: parked stream {stream}: {source}")]
    Parked {
        /// The group.
        group: String,
        /// The parked stream.
        stream: StreamId,
        /// The store's error.
        #[source]
        source: StoreError,
    },
    /// A record in the parked stream could not be decoded.
    #[error("parked stream {stream} revision {revision} is unreadable: {reason}")]
    CorruptParked {
        /// The parked stream.
        stream: StreamId,
        /// The record's revision.
        revision: Revision,
        /// What is wrong with it.
        reason: String,
    },
    /// The group's checkpoint could not be loaded or saved.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}
