//! The handler vocabulary every consumer shares: [`EventHandler`], what reacts to an
//! event; [`HandlerError`], how it fails; and [`Cause`], the event being handled, which
//! what the handler publishes inherits as its causation.
//!
//! A handler is written once against these types and runs unchanged whatever feeds it:
//! the in-process bus, a dispatcher, a consumer group, a projection or a saga.

pub mod attempt;
pub mod causation;

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::store::RecordedEvent;

pub use attempt::{current_attempt, with_attempt};
pub use causation::{Cause, current_cause, with_cause};

/// A boxed, sendable future (what handlers and middleware return).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a handler failed. Carries a message and, when there is one, the underlying error.
#[derive(Debug, Clone)]
pub struct HandlerError {
    message: String,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl HandlerError {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// A failure caused by `error`.
    pub fn from_error(error: impl Error + Send + Sync + 'static) -> Self {
        Self {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for HandlerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

macro_rules! handler_error_from {
    ($($ty:ty),+) => {$(
        impl From<$ty> for HandlerError {
            fn from(e: $ty) -> Self {
                Self::from_error(e)
            }
        }
    )+};
}

handler_error_from!(
    crate::store::StoreError,
    crate::event::EventError,
    crate::event::domain::DecodeError,
    crate::event::domain::EncodeError,
    crate::event::upcast::UpcastError,
    crate::stream::StreamIdError
);

/// Reacts to a dispatched event.
///
/// Implement it for a type, or wrap an async closure with [`handler_fn`].
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one event. An error is reported in the dispatch's outcome; it never stops
    /// other handlers.
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>>;
}

impl<H: EventHandler + ?Sized> EventHandler for Arc<H> {
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        (**self).handle(event)
    }
}

/// An [`EventHandler`] made from an async closure; see [`handler_fn`].
pub struct FnHandler<F>(F);

impl<F> fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnHandler")
    }
}

/// Wraps an async closure taking the event (a clone) as a handler.
///
/// ```
/// use tidings::bus::{HandlerError, handler_fn};
/// let h = handler_fn(|event: tidings::RecordedEvent| async move {
///     if event.data.is_null() {
///         return Err(HandlerError::new("no data"));
///     }
///     Ok(())
/// });
/// # let _ = h;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    FnHandler(f)
}

impl<F, Fut> EventHandler for FnHandler<F>
where
    F: Fn(RecordedEvent) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle<'a>(&'a self, event: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin((self.0)(event.clone()))
    }
}

/// Calls `handler` on `event` the way every consumer does: inside `span`, with the event
/// as the [`Cause`] of what the handler publishes, with `attempt` (when given) as the
/// [`current_attempt`], and with a panic turned into a [`HandlerError`] instead of
/// unwinding into the consumer. The span's `outcome` field is set to `ok` or `error`.
pub async fn call_handler<H: EventHandler + ?Sized>(
    handler: &H,
    event: &RecordedEvent,
    attempt: Option<u32>,
    span: &tracing::Span,
) -> Result<(), HandlerError> {
    use futures::FutureExt as _;
    use tracing::Instrument as _;
    let caused = with_cause(Cause::of(event), handler.handle(event));
    let run = async move {
        match attempt {
            Some(n) => with_attempt(n, caused).await,
            None => caused.await,
        }
    };
    let result = match std::panic::AssertUnwindSafe(run)
        .catch_unwind()
        .instrument(span.clone())
        .await
    {
        Ok(r) => r,
        Err(panic) => Err(HandlerError::new(format!(
            "handler panicked: {}",
            panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)")
        ))),
    };
    span.record("outcome", if result.is_ok() { "ok" } else { "error" });
    result
}
