//! # tidings-nats
//!
//! The Tidings bus [`Transport`] on NATS JetStream, with dead letters ([`DeadLetters`]).
//!
//! ```text
//! topic "orders"  ──publish──►  subject "<prefix>.orders"  in stream <stream>
//!                               (Nats-Msg-Id = event id: JetStream drops duplicates
//!                                within the stream's duplicate window, 2 min by default)
//! group "billing" ◄──pull────   durable pull consumer "billing" on <stream>,
//!                               filter subject = the group's topic, explicit acks
//!                 ◄──pull────   durable pull consumer "billing" on <stream>_REPLAY,
//!                               filter "<prefix>-replay.billing.>" (replayed dead letters)
//! dead_letter(reason) ───────►  subject "<prefix>-dlq.billing" in stream <stream>_DLQ,
//!                               then TERM of the original
//! ```
//!
//! ## Topology
//!
//! | stream | subjects | retention | what it holds |
//! |---|---|---|---|
//! | `<stream>` (`TIDINGS`) | `<prefix>.<topic>` (`tidings.>`) | limits | every published event |
//! | `<stream>_DLQ` | `<prefix>-dlq.<group>` | limits | each group's dead letters |
//! | `<stream>_REPLAY` | `<prefix>-replay.<group>.<topic>` | work queue | dead letters replayed to one group, until acked |
//!
//! Every stream is created with file storage and [`NatsConfig::replicas`] replicas (1 by
//! default: a single server; use 3 on a cluster). A group is two durable pull consumers
//! named after it, one on `<stream>` and one on `<stream>_REPLAY`; each subscriber pulls
//! from both, replays first. A replay goes through its own stream rather than a second
//! filter subject on the group's consumer because servers before 2.10 (the 2.9 that
//! Debian ships) take one filter subject per consumer.
//!
//! ## Settling
//!
//! A publish returns once JetStream has acknowledged it. A message is an event in
//! CloudEvents binary mode ([`tidings_core::transport::wire`]): `ce-*` NATS headers and
//! the JSON payload as the body. Subscribers of one group pull from the same durable
//! consumers, so they compete; an unacked message comes again after the ack wait; a nack
//! is a JetStream `NAK` with the requested delay.
//! [`BrokerMessage::attempt`](tidings_core::transport::BrokerMessage::attempt) is
//! JetStream's exact delivery count (a replayed dead letter starts again at 1).
//!
//! - **Ack**, **nack** and **reject** are sent without waiting for the server's
//!   confirmation (one message each, no round trip). One lost with the connection means
//!   the message comes again after the ack wait: delivery is at least once.
//! - **Reject** is a `TERM`: the group gives the message up and no dead letter is kept.
//!   It stays the cheap "drop this" it always was; use
//!   [`dead_letter`](tidings_core::transport::BrokerMessage::dead_letter) to keep it.
//! - **Dead letter** publishes the message — its `ce-*` and origin headers and body,
//!   unchanged — to `<prefix>-dlq.<group>` with the headers [`DEAD_REASON`],
//!   [`DEAD_ATTEMPTS`], [`DEAD_TOPIC`], [`DEAD_GROUP`] and [`DEAD_AT`], waits for
//!   JetStream's ack, and only then `TERM`s the original. When the dead-letter publish
//!   fails the error is returned and the original stays unsettled, so it is delivered
//!   again after the ack wait: a message is never lost between the two streams. The
//!   publish carries a `Nats-Msg-Id` made of the group, stream and stream sequence of
//!   the delivery, so dead-lettering the same delivery twice keeps one dead letter. The
//!   `TERM` that follows waits for the server's confirmation.
//! - **A message that is not a valid event** (not CloudEvents binary mode, or not a
//!   Tidings event) is dead-lettered the same way with the reason
//!   `not a valid event: …`, its raw headers and body kept, then `TERM`ed; the
//!   subscriber's stream yields [`TransportError::Decode`] for it and goes on. Such
//!   letters cannot be an [`Event`](tidings_core::Event), so
//!   [`DeadLetters::dead_letters`] leaves them out;
//!   [`NatsTransport::raw_dead_letters`] lists them (with all others), and
//!   [`DeadLetters::delete_dead_letter`] and [`DeadLetters::replay_dead_letter`] take
//!   their ids too.
//!
//! ## Dead letters
//!
//! A dead letter's id is its sequence in `<stream>_DLQ`. Listing reads the group's
//! subject oldest first with `STREAM.MSG.GET` (`next_by_subj`), so no consumer is
//! created. Replaying publishes the letter to `<prefix>-replay.<group>.<topic>` (only
//! that group's replay consumer reads it, as a first delivery), waits for the ack, then
//! deletes the letter; the replay's `Nats-Msg-Id` is derived from the letter's id, so a
//! replay retried after a failed delete is dropped as a duplicate (within the duplicate
//! window).
//!
//! ## Connection loss
//!
//! async-nats reconnects by itself (backoff up to 4 s, without limit). While it is
//! away, a publish fails after [`NatsConfig::request_timeout`] with
//! [`TransportError::Publish`]; the message may still be stored once the connection
//! comes back, so republishing it is the way to be sure, and safe: the event id is the
//! `Nats-Msg-Id`. An open subscription does not end: pull errors are logged at `warn`
//! and the pull is opened again with backoff (100 ms doubling to 5 s) until the server
//! answers. [`NatsTransport::connect`] to a server that is down fails at once with
//! [`TransportError::Connect`] (no retry on the first connect; at most
//! [`NatsConfig::connect_timeout`]).
//!
//! ## What an ack means (durability)
//!
//! JetStream acknowledges a publish once the message is stored by the stream (by a
//! quorum of replicas on a cluster) — written to the file, **not fsynced**. The server
//! flushes its files to disk on an interval: `sync_interval`, 2 minutes by default on
//! NATS 2.10 and later. Jepsen's analysis of JetStream 2.12.1 found acknowledged writes
//! lost after power failures (and file corruption) under that default, also on
//! three-node clusters. A deployment that needs an acked event to survive power loss
//! must set `jetstream { sync_interval: always }` in the server configuration (NATS
//! 2.10+; it costs throughput). NATS 2.9 — which Debian ships — has no such option: its
//! file store syncs on a fixed background interval, so on 2.9 an ack only survives a
//! crash of the server process, not of the machine. This crate never changes the
//! server's configuration.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidings_core::TransportError> {
//! use futures::StreamExt;
//! use tidings_core::transport::{Message, Subscription, Transport};
//! use tidings_nats::{NatsConfig, NatsTransport};
//! let bus = NatsTransport::connect(NatsConfig::new("nats://127.0.0.1:4222")).await?;
//! let mut deliveries = bus.subscribe(Subscription::new("billing", "orders")).await?;
//! # let event: tidings_core::Event = unimplemented!();
//! bus.publish(Message::new("orders", event)).await?;
//! if let Some(delivery) = deliveries.next().await {
//!     let delivery = delivery?;
//!     match handle(delivery.event()) {
//!         Ok(()) => delivery.ack().await?,
//!         Err(e) => delivery.dead_letter(e).await?,
//!     }
//! }
//! # Ok(()) }
//! # fn handle(_: &tidings_core::Event) -> Result<(), String> { Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod dead;
mod pull;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use futures::stream::PollNext;
use tidings_core::transport::{
    BoxError, BrokerMessage, BrokerMessages, DeadLetters, Message, Subscription, Transport,
    TransportError, check_topic, wire,
};
use tracing::Instrument;

pub use dead::{DEAD_AT, DEAD_ATTEMPTS, DEAD_GROUP, DEAD_REASON, DEAD_TOPIC, RawDeadLetter};

/// The JetStream header that makes a publish idempotent.
const MSG_ID: &str = "Nats-Msg-Id";

/// Where and how to run the transport. Defaults suit production; tests shorten
/// `ack_wait` and use a unique stream and prefix.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    url: String,
    stream: String,
    subject_prefix: String,
    ack_wait: Duration,
    duplicate_window: Duration,
    max_deliver: Option<i64>,
    batch: usize,
    connect_timeout: Duration,
    request_timeout: Duration,
    replicas: usize,
}

impl NatsConfig {
    /// The server at `url`, stream `TIDINGS`, subjects `tidings.<topic>`, ack wait 30 s,
    /// duplicate window 2 min, unlimited redeliveries, pulls of 64 messages, requests
    /// (publish acks included) bounded by 5 s, one replica.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "TIDINGS".into(),
            subject_prefix: "tidings".into(),
            ack_wait: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(120),
            max_deliver: None,
            batch: 64,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            replicas: 1,
        }
    }

    /// The JetStream stream holding every topic (created if missing). The dead letters
    /// live in `<name>_DLQ` and the replays in `<name>_REPLAY`.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// The subject prefix: topic `t` is subject `<prefix>.t`; dead letters of group `g`
    /// are `<prefix>-dlq.g`, replays to it `<prefix>-replay.g.t`.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subject_prefix = prefix.into();
        self
    }

    /// How long a delivery may stay unsettled before JetStream delivers it again.
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// How long JetStream remembers event ids to drop duplicate publishes.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Stops delivering a message after this many attempts (JetStream `max_deliver`).
    pub fn max_deliver(mut self, attempts: u32) -> Self {
        self.max_deliver = Some(i64::from(attempts));
        self
    }

    /// How many messages one subscriber pulls at a time (at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// How long to wait for the server when connecting.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for JetStream's answer to a request or a publish before failing
    /// it (while the connection is down, a publish fails after this long).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How many servers keep each stream the transport creates (at least 1; 3 on a
    /// cluster for a stream that survives losing a server). Streams that exist already
    /// keep theirs.
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }
}

/// A [`Transport`] over one JetStream stream, with its dead letters ([`DeadLetters`]).
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsTransport {
    js: jetstream::Context,
    config: Arc<NatsConfig>,
    /// Servers before 2.10 know one filter subject per consumer only.
    multi_filter: bool,
}

impl NatsTransport {
    /// Connects and creates the streams if they do not exist. A server that cannot be
    /// reached fails at once with [`TransportError::Connect`].
    pub async fn connect(config: NatsConfig) -> Result<Self, TransportError> {
        let connect_error = |source: BoxError| TransportError::Connect {
            url: config.url.clone(),
            source,
        };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Disconnected => {
                        tracing::warn!(backend = "nats", "connection lost; reconnecting");
                    }
                    async_nats::Event::Connected => {
                        tracing::info!(backend = "nats", "connected");
                    }
                    other => tracing::debug!(backend = "nats", event = %other, "client event"),
                }
            })
            .connect(config.url.as_str())
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        let multi_filter = server_at_least(&client.server_info().version, (2, 10));
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client);
        let streams = [
            (
                config.stream.clone(),
                format!("{}.>", config.subject_prefix),
                stream::RetentionPolicy::Limits,
            ),
            (
                dlq_stream(&config),
                format!("{}-dlq.>", config.subject_prefix),
                stream::RetentionPolicy::Limits,
            ),
            (
                replay_stream(&config),
                format!("{}-replay.>", config.subject_prefix),
                stream::RetentionPolicy::WorkQueue,
            ),
        ];
        for (name, subject, retention) in streams {
            js.get_or_create_stream(stream::Config {
                name,
                subjects: vec![subject],
                retention,
                duplicate_window: config.duplicate_window,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        }
        Ok(Self {
            js,
            config: Arc::new(config),
            multi_filter,
        })
    }

    /// Deletes the streams (events, dead letters, replays) and with them every consumer
    /// group (tests clean up with this). Tries all three; returns the first failure.
    pub async fn delete_stream(&self) -> Result<(), TransportError> {
        let mut first = Ok(());
        for name in [
            self.config.stream.clone(),
            dlq_stream(&self.config),
            replay_stream(&self.config),
        ] {
            let r = self.js.delete_stream(&name).await;
            if let Err(e) = r
                && first.is_ok()
            {
                first = Err(TransportError::Connect {
                    url: self.config.url.clone(),
                    source: Box::new(e),
                });
            }
        }
        first
    }

    /// The JetStream stream's name.
    pub fn stream_name(&self) -> &str {
        &self.config.stream
    }

    /// The name of the stream keeping the dead letters (`<stream>_DLQ`).
    pub fn dead_letter_stream_name(&self) -> String {
        dlq_stream(&self.config)
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.config.subject_prefix)
    }

    fn dlq_subject(&self, group: &str) -> String {
        format!("{}-dlq.{group}", self.config.subject_prefix)
    }

    fn replay_prefix(&self, group: &str) -> String {
        format!("{}-replay.{group}.", self.config.subject_prefix)
    }

    /// The topic of a subject in the main stream or the group's replay subjects.
    fn topic_of<'a>(&self, group: &str, subject: &'a str) -> &'a str {
        if let Some(t) = subject.strip_prefix(self.replay_prefix(group).as_str()) {
            return t;
        }
        subject
            .strip_prefix(self.config.subject_prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(subject)
    }
}

fn dlq_stream(config: &NatsConfig) -> String {
    format!("{}_DLQ", config.stream)
}

fn replay_stream(config: &NatsConfig) -> String {
    format!("{}_REPLAY", config.stream)
}

impl Transport for NatsTransport {
    fn publish(&self, message: Message) -> impl Future<Output = Result<(), TransportError>> + Send {
        let span = tracing::info_span!("transport.publish", backend = "nats",
            topic = %message.topic, event_id = %message.event.event_id,
            event_type = %message.event.event_type);
        async move {
            check_topic(&message.topic)?;
            let event_id = message.event.event_id;
            let failed = |source: BoxError| TransportError::Publish {
                topic: message.topic.clone(),
                event_id,
                source,
            };
            let w = wire::encode_message(&message);
            let mut headers = HeaderMap::new();
            for (k, v) in w.headers {
                headers.insert(k, v);
            }
            headers.insert(MSG_ID, event_id.to_string());
            let ack = self
                .js
                .publish_with_headers(self.subject(&message.topic), headers, w.body.into())
                .await
                .map_err(|e| failed(Box::new(e)))?
                .await
                .map_err(|e| failed(Box::new(e)))?;
            if ack.duplicate {
                tracing::debug!(
                    sequence = ack.sequence,
                    "duplicate event id dropped by JetStream"
                );
            }
            Ok(())
        }
        .instrument(span)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> impl Future<Output = Result<BrokerMessages, TransportError>> + Send {
        let this = self.clone();
        async move {
            subscription.validate()?;
            let group = subscription.group.clone();
            let failed = |source: BoxError| TransportError::Subscribe {
                group: group.clone(),
                source,
            };
            let subjects: Vec<String> = subscription
                .topics
                .iter()
                .map(|t| this.subject(t))
                .collect();
            // One subject, or a server that takes many: the server filters. Otherwise the
            // consumer reads every topic and acks the ones the group did not ask for.
            let (filter_subject, filter_subjects, wanted) = match subjects.as_slice() {
                [one] => (one.clone(), Vec::new(), None),
                _ if this.multi_filter => (String::new(), subjects, None),
                _ => (
                    format!("{}.>", this.config.subject_prefix),
                    Vec::new(),
                    Some(subscription.topics.clone()),
                ),
            };
            let max_deliver = this.config.max_deliver.unwrap_or(-1);
            let main = pull::Pull {
                js: this.js.clone(),
                stream: this.config.stream.clone(),
                group: group.clone(),
                batch: this.config.batch,
                config: consumer::pull::Config {
                    durable_name: Some(group.clone()),
                    filter_subject,
                    filter_subjects,
                    deliver_policy: consumer::DeliverPolicy::New,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: this.config.ack_wait,
                    max_deliver,
                    ..Default::default()
                },
            };
            // The replay stream is a work queue: its consumers start at the first
            // message, so a replay made while no subscriber ran is not missed.
            let replays = pull::Pull {
                js: this.js.clone(),
                stream: replay_stream(&this.config),
                group: group.clone(),
                batch: this.config.batch,
                config: consumer::pull::Config {
                    durable_name: Some(group.clone()),
                    filter_subject: format!("{}>", this.replay_prefix(&group)),
                    deliver_policy: consumer::DeliverPolicy::All,
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: this.config.ack_wait,
                    max_deliver,
                    ..Default::default()
                },
            };
            let main = main.open().await.map_err(&failed)?;
            let replays = replays.open().await.map_err(&failed)?;
            // Replays first: a replay made before a publish is seen before it.
            let merged =
                futures::stream::select_with_strategy(replays, main, |_: &mut ()| PollNext::Left);
            let stream = merged
                .then(move |message| {
                    let this = this.clone();
                    let group = group.clone();
                    let wanted = wanted.clone();
                    async move {
                        if let Some(wanted) = &wanted {
                            let topic = this.topic_of(&group, message.subject.as_str());
                            let replayed = message
                                .subject
                                .as_str()
                                .starts_with(this.replay_prefix(&group).as_str());
                            if !replayed && !wanted.iter().any(|w| w == topic) {
                                if let Err(e) = message.ack().await {
                                    tracing::warn!(group, error = %e,
                                        "acking a message of a topic the group does not read failed");
                                }
                                return None;
                            }
                        }
                        this.delivery(&group, message).await
                    }
                })
                .filter_map(std::future::ready);
            Ok(BrokerMessages::new(stream))
        }
    }

    fn deduplicates_by_event_id(&self) -> bool {
        true
    }
}

impl NatsTransport {
    /// The delivery of `message`, or `None` when there is nothing to hand out. A message
    /// that is not a valid event is dead-lettered and reported as
    /// [`TransportError::Decode`].
    async fn delivery(
        &self,
        group: &str,
        message: jetstream::Message,
    ) -> Option<Result<BrokerMessage, TransportError>> {
        let (attempt, source_stream, source_seq) = match message.info() {
            Ok(i) => (
                u32::try_from(i.delivered).unwrap_or(u32::MAX),
                i.stream.to_owned(),
                i.stream_sequence,
            ),
            Err(_) => (1, String::new(), 0),
        };
        let (message, acker) = message.split();
        let topic = self.topic_of(group, message.subject.as_str()).to_owned();
        let span = tracing::info_span!("transport.receive", backend = "nats", group,
            topic = %topic, attempt);
        let headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .filter_map(|(k, vs)| vs.first().map(|v| (k.to_string(), v.as_str().to_owned())))
            .collect();
        let decoded = wire::decode_message(
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            &message.payload,
        );
        let letter = dead::Letter {
            js: self.js.clone(),
            subject: self.dlq_subject(group),
            msg_id: format!("{group}:{source_stream}:{source_seq}"),
            group: group.to_owned(),
            topic: topic.clone(),
            attempts: attempt,
            message,
        };
        match decoded {
            Ok((event, origin)) => {
                span.in_scope(|| tracing::debug!(event_id = %event.event_id, "delivering"));
                let settle = dead::NatsSettle {
                    acker,
                    letter: Some(letter),
                };
                Some(Ok(
                    BrokerMessage::new(event, topic, attempt, settle).with_origin(origin)
                ))
            }
            Err(source) => {
                // A message that is not an event would come back forever: dead-letter it
                // with why, then terminate it. If the dead letter cannot be stored, leave
                // it unsettled so it comes again.
                async {
                    let reason = format!("not a valid event: {source}");
                    tracing::warn!(error = %source, "undecodable message goes to the dead letters");
                    match letter.store(reason).await {
                        Ok(()) => {
                            if let Err(e) = acker.ack_with(jetstream::AckKind::Term).await {
                                tracing::warn!(error = %e,
                                    "terminating an undecodable message failed; it will come again");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e,
                            "dead-lettering an undecodable message failed; it will come again"),
                    }
                }
                .instrument(span)
                .await;
                Some(Err(TransportError::Decode { topic, source }))
            }
        }
    }
}

/// Whether a server version such as `2.9.10` is at least `min` (major, minor).
fn server_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

impl DeadLetters for NatsTransport {
    fn dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<tidings_core::transport::DeadLetter>, TransportError>> + Send
    {
        let this = self.clone();
        let group = group.to_owned();
        async move { this.list_dead_letters(&group, limit).await }
    }

    fn replay_dead_letter(
        &self,
        group: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, TransportError>> + Send {
        let this = self.clone();
        let (group, id) = (group.to_owned(), id.to_owned());
        async move { this.replay(&group, &id).await }
    }

    fn delete_dead_letter(
        &self,
        group: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, TransportError>> + Send {
        let this = self.clone();
        let (group, id) = (group.to_owned(), id.to_owned());
        async move { this.delete(&group, &id).await }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_versions() {
        assert!(!super::server_at_least("2.9.10", (2, 10)));
        assert!(super::server_at_least("2.10.0", (2, 10)));
        assert!(super::server_at_least("2.11.1-beta", (2, 10)));
        assert!(super::server_at_least("3.0.0", (2, 10)));
    }
}
