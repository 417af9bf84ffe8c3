//! # tidings-nats
//!
//! The Tidings bus [`Transport`] on NATS JetStream.
//!
//! ```text
//! topic "orders"  ──publish──►  subject "<prefix>.orders"  in stream <stream>
//!                               (Nats-Msg-Id = event id: JetStream drops duplicates
//!                                within the stream's duplicate window)
//! group "billing" ◄──pull────   durable pull consumer "billing" on the stream,
//!                               filter subjects = the group's topics, explicit acks
//! ```
//!
//! A publish returns once JetStream has acknowledged it (the message is stored). A
//! message is an event in CloudEvents binary mode ([`tidings_core::transport::wire`]): `ce-*`
//! NATS headers and the JSON payload as the body. Subscribers of one group pull from the
//! same durable consumer, so they compete; an unacked message comes again after the ack
//! wait; a nack is a JetStream `NAK` with the requested delay and a reject is a `TERM`.
//! [`BrokerMessage::attempt`](tidings_core::transport::BrokerMessage::attempt) is JetStream's exact
//! delivery count.
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
//!     delivery?.ack().await?;
//! }
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tidings_core::transport::{
    BoxError, BrokerMessage, BrokerMessages, Message, Settle, Subscription, Transport,
    TransportError, check_topic, wire,
};
use tracing::Instrument;

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
}

impl NatsConfig {
    /// The server at `url`, stream `TIDINGS`, subjects `tidings.<topic>`, ack wait 30 s,
    /// duplicate window 2 min, unlimited redeliveries, pulls of 64 messages.
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
        }
    }

    /// The JetStream stream holding every topic (created if missing).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = name.into();
        self
    }

    /// The subject prefix: topic `t` is subject `<prefix>.t`.
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
}

/// A [`Transport`] over one JetStream stream. Cheap to clone.
#[derive(Debug, Clone)]
pub struct NatsTransport {
    js: jetstream::Context,
    config: Arc<NatsConfig>,
    /// Servers before 2.10 know one filter subject per consumer only.
    multi_filter: bool,
}

impl NatsTransport {
    /// Connects and creates the stream if it does not exist.
    pub async fn connect(config: NatsConfig) -> Result<Self, TransportError> {
        let connect_error = |source: BoxError| TransportError::Connect {
            url: config.url.clone(),
            source,
        };
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .connect(config.url.as_str())
            .await
            .map_err(|e| connect_error(Box::new(e)))?;
        let multi_filter = server_at_least(&client.server_info().version, (2, 10));
        let js = jetstream::new(client);
        js.get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            duplicate_window: config.duplicate_window,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| connect_error(Box::new(e)))?;
        Ok(Self {
            js,
            config: Arc::new(config),
            multi_filter,
        })
    }

    /// Deletes the stream and with it every consumer group (tests clean up with this).
    pub async fn delete_stream(&self) -> Result<(), TransportError> {
        self.js
            .delete_stream(&self.config.stream)
            .await
            .map(|_| ())
            .map_err(|e| TransportError::Connect {
                url: self.config.url.clone(),
                source: Box::new(e),
            })
    }

    /// The JetStream stream's name.
    pub fn stream_name(&self) -> &str {
        &self.config.stream
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.config.subject_prefix)
    }

    fn topic_of<'a>(&self, subject: &'a str) -> &'a str {
        subject
            .strip_prefix(self.config.subject_prefix.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(subject)
    }
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
            let consumer: consumer::PullConsumer = this
                .js
                .create_consumer_on_stream(
                    consumer::pull::Config {
                        durable_name: Some(group.clone()),
                        filter_subject,
                        filter_subjects,
                        deliver_policy: consumer::DeliverPolicy::New,
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: this.config.ack_wait,
                        max_deliver: this.config.max_deliver.unwrap_or(-1),
                        ..Default::default()
                    },
                    this.config.stream.as_str(),
                )
                .await
                .map_err(|e| failed(Box::new(e)))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(this.config.batch)
                .messages()
                .await
                .map_err(|e| failed(Box::new(e)))?;
            let stream = messages
                .then(move |item| {
                    let this = this.clone();
                    let group = group.clone();
                    let wanted = wanted.clone();
                    async move {
                        let message = item.map_err(|e| TransportError::Subscribe {
                            group: group.clone(),
                            source: Box::new(e),
                        })?;
                        if let Some(wanted) = &wanted {
                            let topic = this.topic_of(message.subject.as_str());
                            if !wanted.iter().any(|w| w == topic) {
                                message.ack().await.map_err(|source| {
                                    TransportError::Subscribe {
                                        group: group.clone(),
                                        source,
                                    }
                                })?;
                                return Ok(None);
                            }
                        }
                        this.delivery(&group, message).await.map(Some)
                    }
                })
                .filter_map(|r| std::future::ready(r.transpose()));
            Ok(BrokerMessages::new(stream))
        }
    }

    fn deduplicates_by_event_id(&self) -> bool {
        true
    }
}

impl NatsTransport {
    async fn delivery(
        &self,
        group: &str,
        message: jetstream::Message,
    ) -> Result<BrokerMessage, TransportError> {
        let attempt = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let (message, acker) = message.split();
        let topic = self.topic_of(message.subject.as_str()).to_owned();
        let span = tracing::info_span!("transport.receive", backend = "nats", group,
            topic = %topic, attempt);
        let _entered = span.enter();
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
        match decoded {
            Ok((event, origin)) => {
                tracing::debug!(event_id = %event.event_id, "delivering");
                Ok(
                    BrokerMessage::new(event, topic, attempt, NatsSettle(acker))
                        .with_origin(origin),
                )
            }
            Err(source) => {
                // A message that is not an event would come back forever: terminate it.
                tracing::warn!(error = %source, "undecodable message terminated");
                drop(_entered);
                if let Err(e) = acker.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "terminating an undecodable message failed");
                }
                Err(TransportError::Decode { topic, source })
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

struct NatsSettle(jetstream::message::Acker);

impl Settle for NatsSettle {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        async move { self.0.ack().await }.boxed()
    }

    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BoxError>> {
        let delay = (!delay.is_zero()).then_some(delay);
        async move { self.0.ack_with(AckKind::Nak(delay)).await }.boxed()
    }

    fn reject(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        async move { self.0.ack_with(AckKind::Term).await }.boxed()
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
