//! [`AggregateRoot`]: one loaded aggregate, its version and its uncommitted events.

use std::fmt;

use super::Aggregate;
use super::repository::RepositoryError;
use tidings_core::event::Event;
use tidings_core::event::domain::DomainEvent;
use tidings_core::event::upcast::Upcasters;
use tidings_core::store::{ExpectedVersion, Revision};
use tidings_core::stream::StreamId;

/// An aggregate as loaded from its stream, with the events it has decided since.
pub struct AggregateRoot<A: Aggregate> {
    stream: StreamId,
    state: A,
    version: Option<Revision>,
    uncommitted: Vec<A::Event>,
}

impl<A: Aggregate + fmt::Debug> fmt::Debug for AggregateRoot<A>
where
    A::Event: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AggregateRoot")
            .field("stream", &self.stream)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("uncommitted", &self.uncommitted)
            .finish()
    }
}

impl<A: Aggregate> AggregateRoot<A> {
    /// A new aggregate on `stream`, with no events.
    pub fn new(stream: StreamId) -> Self {
        Self::from_state(stream, A::default(), None)
    }

    /// An aggregate with a known state at `version` (as restored from a snapshot).
    pub fn from_state(stream: StreamId, state: A, version: Option<Revision>) -> Self {
        Self {
            stream,
            state,
            version,
            uncommitted: Vec::new(),
        }
    }

    /// Handles `command`: on success its events are applied to the state and kept as
    /// uncommitted, and returned; on refusal nothing changes.
    pub fn execute(&mut self, command: A::Command) -> Result<&[A::Event], A::Error> {
        let events = self.state.handle(command)?;
        for e in &events {
            self.state.apply(e);
        }
        let start = self.uncommitted.len();
        self.uncommitted.extend(events);
        Ok(&self.uncommitted[start..])
    }

    /// The stream.
    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    /// The state, including uncommitted events.
    pub fn state(&self) -> &A {
        &self.state
    }

    /// The revision of the last stored event this root has seen (None: no stored events).
    pub fn version(&self) -> Option<Revision> {
        self.version
    }

    /// What a save expects the stream to be at.
    pub fn expected_version(&self) -> ExpectedVersion {
        self.version
            .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
    }

    /// Events decided and not yet saved, oldest first.
    pub fn uncommitted(&self) -> &[A::Event] {
        &self.uncommitted
    }

    /// Marks the uncommitted events as stored at `version` (what a save does on success).
    pub fn mark_committed(&mut self, version: Revision) {
        self.uncommitted.clear();
        self.version = Some(version);
    }

    /// Applies one stored event at `revision`: upcast, decoded, folded into the state.
    /// On error nothing changes.
    pub fn apply_stored(
        &mut self,
        event: Event,
        revision: Revision,
        upcasters: &Upcasters,
    ) -> Result<(), RepositoryError> {
        let event = upcasters
            .upcast(event)
            .map_err(|source| RepositoryError::Upcast {
                stream: self.stream.clone(),
                revision,
                source,
            })?;
        let decoded = A::Event::from_event(&event).map_err(|source| RepositoryError::Decode {
            stream: self.stream.clone(),
            revision,
            source,
        })?;
        self.state.apply(&decoded);
        self.version = Some(revision);
        Ok(())
    }
}
