//! [`LogError`]: what opening, checking or closing a log can fail with.

use std::io;
use std::path::PathBuf;

use tidings_core::StoreError;

/// An error of the embedded store, with the file and byte offset a person needs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// An I/O operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A record or file failed its checks somewhere other than a torn tail.
    #[error("corruption in {file} at byte {offset}: {reason}")]
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The store's directory is in use by another process (another store holds its
    /// lock).
    #[error("{path} is in use by another process")]
    Locked {
        /// The store's directory.
        path: PathBuf,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The store stopped after an I/O failure (fail-closed).
    #[error("store is stopped after an unrecoverable failure: {0}")]
    Stopped(String),
    /// The store is closed.
    #[error("store is closed")]
    Closed,
}

impl LogError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }

    /// What the store records as the reason it stopped, when this error stops it: the
    /// reason itself for [`LogError::Stopped`], the message otherwise.
    pub(crate) fn into_stop_reason(self) -> String {
        match self {
            Self::Stopped(reason) => reason,
            other => other.to_string(),
        }
    }
}

impl From<LogError> for StoreError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Corrupt { .. } => StoreError::Corrupt(e.to_string()),
            LogError::Stopped(m) => StoreError::Stopped(m),
            LogError::Closed => StoreError::Closed,
            other => StoreError::Backend(other.to_string()),
        }
    }
}
