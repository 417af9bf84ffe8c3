//! [`AggregateCommandHandler`]: sends a saga's commands to event-sourced aggregates
//! through a [`Repository`], once per command id.

use std::fmt;

use tidings_aggregate::{Aggregate, CommandError, Repository, SnapshotStore};
use tidings_core::event::Metadata;
use tidings_core::handler::{BoxFuture, HandlerError, current_cause};
use tidings_core::store::{EventAppender, EventReader, ReadStream};
use tidings_core::stream::StreamId;

use super::command::{CommandEnvelope, CommandHandler};

/// The metadata key under which an aggregate's events name the saga command that caused
/// them.
pub const COMMAND_ID_KEY: &str = "commandId";

/// How far back (in events of the aggregate's stream) a repeated command is recognised.
pub const DEDUPE_WINDOW: usize = 256;

/// A [`CommandHandler`] that decodes a saga command into an aggregate's command and the
/// stream it is for, and executes it with the repository (load, handle, save with the
/// expected version).
///
/// A command arrives again after a failure or a crash; its events carry its id under
/// [`COMMAND_ID_KEY`] in their metadata, and a command whose id is among the last
/// [`DEDUPE_WINDOW`] events of the stream is not executed again. A refused command is an
/// error, so the saga instance stalls until it is resolved: when the saga must react to
/// refusals, let the aggregate record them as events instead.
pub struct AggregateCommandHandler<A: Aggregate, S, P, F> {
    repository: Repository<A, S, P>,
    decode: F,
}

impl<A: Aggregate, S, P, F> fmt::Debug for AggregateCommandHandler<A, S, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateCommandHandler")
            .field("aggregate", &A::TYPE)
            .finish_non_exhaustive()
    }
}

impl<A, S, P, F> AggregateCommandHandler<A, S, P, F>
where
    A: Aggregate,
    F: Fn(&CommandEnvelope) -> Result<(StreamId, A::Command), HandlerError> + Send + Sync,
{
    /// A handler executing on `repository` what `decode` makes of each command.
    pub fn new(repository: Repository<A, S, P>, decode: F) -> Self {
        Self { repository, decode }
    }
}

impl<A, S, P, F> CommandHandler for AggregateCommandHandler<A, S, P, F>
where
    A: Aggregate,
    S: EventAppender + EventReader + 'static,
    P: SnapshotStore + 'static,
    F: Fn(&CommandEnvelope) -> Result<(StreamId, A::Command), HandlerError> + Send + Sync + 'static,
{
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let (stream, aggregate_command) = (self.decode)(command)?;
            let id = command.command_id.to_string();
            let recent = self
                .repository
                .store()
                .read_stream(&stream, ReadStream::backward().limit(DEDUPE_WINDOW))
                .await?;
            if recent
                .iter()
                .any(|e| e.metadata.extra.get(COMMAND_ID_KEY) == Some(&id))
            {
                return Ok(());
            }
            let mut metadata = Metadata::default();
            metadata.extra.insert(COMMAND_ID_KEY.to_owned(), id);
            if let Some(cause) = current_cause() {
                cause.apply_to(&mut metadata);
            }
            match self
                .repository
                .execute(&stream, aggregate_command, metadata)
                .await
            {
                Ok(_) => Ok(()),
                Err(CommandError::Rejected(e)) => Err(HandlerError::new(format!(
                    "{} {stream} refused command {} ({}): {e}",
                    A::TYPE,
                    command.command.name,
                    command.command_id
                ))),
                Err(CommandError::Repository(e)) => Err(HandlerError::from_error(e)),
            }
        })
    }
}
