//! What a saga decides: [`SagaCommand`]s, and how commands reach their handlers
//! ([`Command`], [`CommandEnvelope`], [`CommandHandler`]).

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use tidings_core::event::{NewEvent, Payload};
use tidings_core::handler::{BoxFuture, HandlerError};
use tidings_core::stream::StreamId;

/// One thing a saga wants done after handling an event or a timeout: publish an event,
/// send a command, schedule a timeout, cancel one, or finish.
///
/// The runtime records a step's commands together with the saga's new state in one
/// append, then carries them out: publishing and sending are retried, with the same
/// ids, until they succeed, so they happen at least once and, because the ids repeat,
/// effectively once where the receiver is idempotent.
#[derive(Debug, Clone, PartialEq)]
pub enum SagaCommand {
    /// Append `event` to `stream` (expected version: any). When the event has no id the
    /// runtime gives it one derived from the step, so a repeat appends nothing.
    Publish {
        /// Where.
        stream: StreamId,
        /// What (boxed: an envelope is much larger than the other commands).
        event: Box<NewEvent>,
    },
    /// Send a command to the [`CommandHandler`] registered under its name.
    Send(Command),
    /// Call [`Saga::handle_timeout`](super::Saga::handle_timeout) with `id` once `after`
    /// has passed on the runtime's clock (rescheduling an id replaces its due time).
    ScheduleTimeout {
        /// The timer's id within the instance.
        id: String,
        /// How long from now.
        after: Duration,
    },
    /// Forget the timer `id` (nothing happens when there is none).
    CancelTimeout {
        /// The timer's id.
        id: String,
    },
    /// The instance is done: its pending timers are dropped, later events for it are
    /// ignored, and it leaves the runtime's set of live instances.
    Complete,
}

impl SagaCommand {
    /// Publish `event` to `stream`.
    pub fn publish(stream: StreamId, event: NewEvent) -> Self {
        Self::Publish {
            stream,
            event: Box::new(event),
        }
    }

    /// Send the command `name` with `payload`.
    pub fn send(name: impl Into<String>, payload: impl Into<Payload>) -> Self {
        Self::Send(Command {
            name: name.into(),
            payload: payload.into(),
        })
    }

    /// Schedule the timer `id` to fire after `after`.
    pub fn schedule_timeout(id: impl Into<String>, after: Duration) -> Self {
        Self::ScheduleTimeout {
            id: id.into(),
            after,
        }
    }

    /// Cancel the timer `id`.
    pub fn cancel_timeout(id: impl Into<String>) -> Self {
        Self::CancelTimeout { id: id.into() }
    }
}

/// A command as a saga writes it: a name that selects the handler, and a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Command {
    /// Which handler, such as `"ProcessPayment"`.
    pub name: String,
    /// The command's data.
    pub payload: Payload,
}

/// A command as its handler receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommandEnvelope {
    /// The same on every attempt to send this command: handlers use it to do the work
    /// once (for example as, or to derive, the id of the event they publish).
    pub command_id: Uuid,
    /// The saga that sent it.
    pub saga: String,
    /// The saga instance that sent it.
    pub instance: String,
    /// The command.
    pub command: Command,
}

impl CommandEnvelope {
    /// The `n`th event id a handler should give what it publishes for this command:
    /// the same on every attempt, different for every command.
    ///
    /// ```
    /// use tidings::saga::{Command, CommandEnvelope};
    /// let envelope = CommandEnvelope {
    ///     command_id: uuid::Uuid::nil(),
    ///     saga: "order".into(),
    ///     instance: "order-123".into(),
    ///     command: Command { name: "ProcessPayment".into(), payload: serde_json::json!({}).into() },
    /// };
    /// assert_eq!(envelope.event_id(0), envelope.event_id(0));
    /// assert_ne!(envelope.event_id(0), envelope.event_id(1));
    /// ```
    pub fn event_id(&self, n: u32) -> Uuid {
        Uuid::new_v5(&self.command_id, &n.to_be_bytes())
    }
}

/// Carries out the commands of one name.
///
/// A handler may be called more than once with the same
/// [`command_id`](CommandEnvelope::command_id) (after a failure or a crash); it must do
/// the work once. It runs with the saga's triggering event as the current
/// [`Cause`](tidings_core::handler::Cause), so a publisher (`tidings::bus::Publisher`) inside it sets
/// causation and correlation.
pub trait CommandHandler: Send + Sync + 'static {
    /// Handles one command. An error leaves it pending: it is sent again later.
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// A [`CommandHandler`] made from an async closure; see [`command_fn`].
pub struct FnCommandHandler<F>(F);

impl<F> fmt::Debug for FnCommandHandler<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnCommandHandler")
    }
}

/// Wraps an async closure taking the envelope (a clone) as a command handler.
///
/// ```
/// use tidings::saga::{CommandEnvelope, command_fn};
/// let handler = command_fn(|command: CommandEnvelope| async move {
///     tracing::info!(id = %command.command_id, "charging");
///     Ok(())
/// });
/// # let _ = handler;
/// ```
pub fn command_fn<F, Fut>(f: F) -> FnCommandHandler<F>
where
    F: Fn(CommandEnvelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    FnCommandHandler(f)
}

impl<F, Fut> CommandHandler for FnCommandHandler<F>
where
    F: Fn(CommandEnvelope) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin((self.0)(command.clone()))
    }
}

impl<H: CommandHandler + ?Sized> CommandHandler for std::sync::Arc<H> {
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        (**self).handle(command)
    }
}
