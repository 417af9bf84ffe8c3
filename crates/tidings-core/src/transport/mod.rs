//! The bus transport contract: events between processes through a message broker.
//!
//! A [`Transport`] publishes [`Message`]s (an [`Event`] plus the topic it is routed to)
//! and hands out [`BrokerMessages`] to consumer groups. Every backend keeps the same
//! semantics, checked by `tidings_testkit::transport_conformance`:
//!
//! - [`Transport::publish`] returns only once the broker has confirmed the message
//!   (a JetStream publish ack, a RabbitMQ publisher confirm).
//! - A consumer group is durable and named. Its subscribers compete: each message goes to
//!   one of them. Two groups each receive every message published to their topics after
//!   the group was first subscribed.
//! - A message is settled with [`BrokerMessage::ack`]. [`BrokerMessage::nack`] asks for it again
//!   (after a delay), [`BrokerMessage::reject`] gives it up (a broker may dead-letter it). A
//!   delivery dropped unsettled — a crashed consumer — is delivered again, and
//!   [`BrokerMessage::attempt`] tells how many times it has been delivered.
//! - Backends that can ([`Transport::deduplicates_by_event_id`]) drop a second publish
//!   of the same event id.
//! - A message published from a store (by the outbox relay) carries its [`Origin`] —
//!   stream, revision and global position — so a consumer in another process sees the
//!   same [`RecordedEvent`] a subscriber of the store would ([`BrokerMessage::recorded`]).
//! - [`BrokerMessage::dead_letter`] gives a message up with a reason. Backends that keep
//!   dead letters ([`DeadLetters`]) list them with that reason, replay them to their group
//!   and delete them.
//!
//! On the wire a message is the CloudEvents binary mode of its event ([`wire`]): `ce-*`
//! headers, a JSON content type and the payload as the body.

mod memory;
mod topic;
pub mod wire;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use tracing::Instrument;

use jiff::Timestamp;

use crate::event::Event;
use crate::event::cloudevents::CloudEventError;
use crate::store::{Position, RecordedEvent, Revision};
use crate::stream::StreamId;

pub use memory::InMemoryTransport;
pub use topic::{TopicMap, is_valid_name};

/// A backend's own error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The broker URL (without credentials).
        url: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A topic or group name the backend cannot use.
    #[error("{kind} name {name:?} is invalid: {reason}")]
    InvalidName {
        /// `"topic"` or `"group"`.
        kind: &'static str,
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The broker did not confirm a publish; the message may or may not be stored.
    #[error("publishing event {event_id} to topic {topic:?} was not confirmed: {source}")]
    Publish {
        /// The topic.
        topic: String,
        /// The event's id: republishing it is safe where the backend deduplicates.
        event_id: uuid::Uuid,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A consumer group could not be set up or read from.
    #[error("consumer group {group:?}: {source}")]
    Subscribe {
        /// The group.
        group: String,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// An ack, nack or reject did not reach the broker; the message will come again.
    #[error("settling a delivery of event {event_id} failed: {source}")]
    Settle {
        /// The delivered event's id.
        event_id: uuid::Uuid,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A message on the topic is not a Tidings event in CloudEvents binary mode.
    #[error("a message on topic {topic:?} is not a valid event: {source}")]
    Decode {
        /// The topic it arrived on.
        topic: String,
        /// What is wrong with it.
        #[source]
        source: CloudEventError,
    },
}

/// Where a message's event sits in the store it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The event's stream.
    pub stream: StreamId,
    /// Its revision in the stream.
    pub revision: Revision,
    /// Its position in the store's global log.
    pub position: Position,
    /// When the store committed it.
    pub recorded_at: Timestamp,
}

impl Origin {
    /// Where `event` sits.
    pub fn of(event: &RecordedEvent) -> Self {
        Self {
            stream: event.stream.clone(),
            revision: event.revision,
            position: event.position,
            recorded_at: event.recorded_at,
        }
    }
}

/// An event and the topic it is published to.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Where the message goes; consumer groups subscribe to topics.
    pub topic: String,
    /// The event.
    pub event: Event,
    /// Where the event sits in the store it came from, when it came from one.
    pub origin: Option<Origin>,
}

impl Message {
    /// A message for `topic`.
    pub fn new(topic: impl Into<String>, event: Event) -> Self {
        Self {
            topic: topic.into(),
            event,
            origin: None,
        }
    }

    /// A message for the topic that `topics` assigns to the event's type.
    pub fn routed(topics: &TopicMap, event: Event) -> Self {
        Self {
            topic: topics.topic_for(&event.event_type).to_owned(),
            event,
            origin: None,
        }
    }

    /// A message for `topic` carrying a recorded event and where the store keeps it.
    pub fn recorded(topic: impl Into<String>, event: &RecordedEvent) -> Self {
        Self {
            topic: topic.into(),
            event: event.event.clone(),
            origin: Some(Origin::of(event)),
        }
    }
}

/// Which consumer group to join and which topics it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The durable group's name: subscribers with the same group compete for messages.
    pub group: String,
    /// Exact topic names the group receives.
    pub topics: Vec<String>,
}

impl Subscription {
    /// Group `group` reading `topic`.
    pub fn new(group: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            topics: vec![topic.into()],
        }
    }

    /// Also reads `topic`.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topics.push(topic.into());
        self
    }

    /// Checks the group and topic names against [`is_valid_name`].
    pub fn validate(&self) -> Result<(), TransportError> {
        if let Err(reason) = is_valid_name(&self.group) {
            return Err(TransportError::InvalidName {
                kind: "group",
                name: self.group.clone(),
                reason,
            });
        }
        if self.topics.is_empty() {
            return Err(TransportError::InvalidName {
                kind: "topic",
                name: String::new(),
                reason: "a subscription needs at least one topic",
            });
        }
        for t in &self.topics {
            check_topic(t)?;
        }
        Ok(())
    }
}

/// Checks a topic name against [`is_valid_name`].
pub fn check_topic(topic: &str) -> Result<(), TransportError> {
    is_valid_name(topic).map_err(|reason| TransportError::InvalidName {
        kind: "topic",
        name: topic.to_owned(),
        reason,
    })
}

/// How a backend settles one delivery. Implemented by each backend; users call the
/// methods on [`BrokerMessage`].
pub trait Settle: Send + 'static {
    /// Acknowledges: the message is done.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>>;
    /// Asks for the message again, no sooner than `delay`.
    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BoxError>>;
    /// Gives the message up: it is not delivered to this group again (a backend may
    /// dead-letter it).
    fn reject(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>>;
    /// Gives the message up into the group's dead letters, keeping `reason` and the
    /// attempts made. Backends without dead letters reject it.
    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), BoxError>> {
        let _ = reason;
        self.reject()
    }
}

/// One message handed to one subscriber of a group, waiting to be settled.
///
/// Dropping it unsettled is a crash as far as the broker knows: the message is
/// delivered again (at once, when the subscription drops, or after the backend's ack
/// wait).
pub struct BrokerMessage {
    event: Event,
    origin: Option<Origin>,
    topic: String,
    attempt: u32,
    settle: Box<dyn Settle>,
    span: tracing::Span,
}

impl fmt::Debug for BrokerMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerMessage")
            .field("event_id", &self.event.event_id)
            .field("event_type", &self.event.event_type)
            .field("topic", &self.topic)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl BrokerMessage {
    /// A delivery of `event` from `topic`, the `attempt`-th time (from 1), settled
    /// through `settle`. For backends.
    /// Opens the delivery's `transport.deliver` span (a child of the current span).
    pub fn new(event: Event, topic: impl Into<String>, attempt: u32, settle: impl Settle) -> Self {
        let topic = topic.into();
        let attempt = attempt.max(1);
        let span = tracing::info_span!("transport.deliver", topic = %topic,
            event_id = %event.event_id, event_type = %event.event_type, attempt,
            outcome = tracing::field::Empty);
        Self {
            event,
            origin: None,
            topic,
            attempt,
            settle: Box::new(settle),
            span,
        }
    }

    /// Sets where the event sits in the store it came from. For backends.
    pub fn with_origin(mut self, origin: Option<Origin>) -> Self {
        self.origin = origin;
        self
    }

    /// Where the event sits in the store it came from, when the message says.
    pub fn origin(&self) -> Option<&Origin> {
        self.origin.as_ref()
    }

    /// The event as a store recorded it, for handlers written against
    /// [`RecordedEvent`]. A message published from a store (it has an [`Origin`]) gives
    /// back exactly what the store holds. A message published directly has no place in
    /// a store: its stream is its topic, its revision and position are 0, and its
    /// recording time is the event's timestamp. Fails only when such a topic is not a
    /// valid stream name (topics checked by [`is_valid_name`] always are).
    pub fn recorded(&self) -> Result<RecordedEvent, crate::stream::StreamIdError> {
        Ok(match &self.origin {
            Some(o) => RecordedEvent {
                stream: o.stream.clone(),
                revision: o.revision,
                position: o.position,
                recorded_at: o.recorded_at,
                event: self.event.clone(),
            },
            None => RecordedEvent {
                stream: StreamId::new(&self.topic)?,
                revision: 0,
                position: 0,
                recorded_at: self.event.timestamp,
                event: self.event.clone(),
            },
        })
    }

    /// The delivery's `transport.deliver` span (topic, event id and type, attempt, and
    /// the outcome once settled). Run the handler in it:
    /// `handle(delivery.event()).instrument(delivery.span().clone())`.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The topic it arrived on.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// How many times the message has been delivered to this group, this time included:
    /// 1 on the first delivery. Backends that only know "redelivered" report 2 for any
    /// redelivery, so read it as "at least".
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this is a redelivery.
    pub fn is_redelivery(&self) -> bool {
        self.attempt > 1
    }

    /// Acknowledges the message: it is done for this group.
    pub async fn ack(self) -> Result<(), TransportError> {
        let event_id = self.event.event_id;
        self.span.record("outcome", "ack");
        self.settle
            .ack()
            .instrument(self.span)
            .await
            .map_err(|source| TransportError::Settle { event_id, source })
    }

    /// Asks for the message again, no sooner than `delay` (zero: at once).
    pub async fn nack(self, delay: Duration) -> Result<(), TransportError> {
        let event_id = self.event.event_id;
        self.span.record("outcome", "nack");
        self.settle
            .nack(delay)
            .instrument(self.span)
            .await
            .map_err(|source| TransportError::Settle { event_id, source })
    }

    /// Gives the message up for this group (the broker may dead-letter it).
    pub async fn reject(self) -> Result<(), TransportError> {
        let event_id = self.event.event_id;
        self.span.record("outcome", "reject");
        self.settle
            .reject()
            .instrument(self.span)
            .await
            .map_err(|source| TransportError::Settle { event_id, source })
    }

    /// Gives the message up into its group's dead letters with `reason` (a backend
    /// without dead letters rejects it). [`DeadLetters`] lists, replays and deletes them.
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<(), TransportError> {
        let event_id = self.event.event_id;
        self.span.record("outcome", "dead-letter");
        self.settle
            .dead_letter(reason.into())
            .instrument(self.span)
            .await
            .map_err(|source| TransportError::Settle { event_id, source })
    }

    /// The event, dropping the delivery unsettled (it will come again).
    pub fn into_event(self) -> Event {
        self.event
    }
}

/// The deliveries of one subscriber, as a stream. Dropping it leaves the group; what it
/// delivered and nobody settled is delivered again.
pub struct BrokerMessages {
    inner: Pin<Box<dyn Stream<Item = Result<BrokerMessage, TransportError>> + Send>>,
}

impl fmt::Debug for BrokerMessages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerMessages").finish_non_exhaustive()
    }
}

impl BrokerMessages {
    /// Wraps a backend's stream.
    pub fn new(
        stream: impl Stream<Item = Result<BrokerMessage, TransportError>> + Send + 'static,
    ) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl Stream for BrokerMessages {
    type Item = Result<BrokerMessage, TransportError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// A message broker the bus runs over.
pub trait Transport: Send + Sync {
    /// Publishes one message, returning once the broker has confirmed it.
    fn publish(&self, message: Message) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Joins consumer group `subscription.group`, creating it (durable) if needed. When
    /// this returns, every message published afterwards to one of the topics reaches the
    /// group.
    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> impl Future<Output = Result<BrokerMessages, TransportError>> + Send;

    /// Whether a second publish of the same event id (within the backend's window) is
    /// dropped by the broker.
    fn deduplicates_by_event_id(&self) -> bool {
        false
    }
}

/// A message a consumer group gave up on, kept with why.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// The backend's id for it: what [`DeadLetters::replay_dead_letter`] and
    /// [`DeadLetters::delete_dead_letter`] take.
    pub id: String,
    /// The group that gave it up.
    pub group: String,
    /// The topic it was published to.
    pub topic: String,
    /// The event.
    pub event: Event,
    /// Where the event sits in the store it came from, when the message said.
    pub origin: Option<Origin>,
    /// Why it was given up: the consumer's last error.
    pub reason: String,
    /// How many times it had been delivered to the group.
    pub attempts: u32,
    /// When it was given up.
    pub dead_at: Timestamp,
}

/// The dead letters a broker keeps per consumer group: listed with their last error,
/// replayed to their group, or deleted.
pub trait DeadLetters: Send + Sync {
    /// Up to `limit` dead letters of `group`, oldest first.
    fn dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, TransportError>> + Send;

    /// Delivers dead letter `id` to `group` again (to that group only, as a first
    /// attempt) and removes it from the dead letters. `Ok(false)` when there is no such
    /// dead letter.
    fn replay_dead_letter(
        &self,
        group: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, TransportError>> + Send;

    /// Removes dead letter `id` of `group`. `Ok(false)` when there is no such dead letter.
    fn delete_dead_letter(
        &self,
        group: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, TransportError>> + Send;
}
