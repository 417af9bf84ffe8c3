//! # tidings-rabbitmq
//!
//! The Tidings bus [`Transport`] on RabbitMQ, with publisher confirms, per-group dead
//! letters ([`DeadLetters`](tidings_core::transport::DeadLetters)) and reconnection.
//!
//! ```text
//! topic "orders" ──publish──► durable topic exchange <exchange>, routing key "orders"
//!                             (persistent; confirmed by the broker before publish returns)
//! group "billing" ◄─consume── durable quorum queue "<exchange>.billing",
//!                             bound with each of the group's topics, manual acks;
//!                             dead-letter exchange "" (the default exchange) with
//!                             routing key "<exchange>.billing.dead", at-least-once
//! dead letters    ◄────────── durable classic queue "<exchange>.billing.dead"
//!                             (dead_letter(reason) publishes here, confirmed, then acks;
//!                              reject() reaches it through the broker's dead-lettering)
//! replay          ──────────► default exchange, routing key "<exchange>.billing":
//!                             that group only
//! ```
//!
//! A message is an event in CloudEvents binary mode ([`tidings_core::transport::wire`]):
//! `ce-*` AMQP headers, `content-type: application/json`, `message-id` and `type`
//! properties and the JSON payload as the body. Subscribers of one group consume from the
//! same queue, so they compete (prefetch bounds what each holds). Each subscriber has its
//! own channel: dropping its [`BrokerMessages`] closes it and RabbitMQ requeues what it
//! held. A nack waits for its delay and then requeues.
//! [`BrokerMessage::attempt`](tidings_core::transport::BrokerMessage::attempt) comes from
//! the quorum queue's `x-delivery-count`.
//!
//! ## Dead letters
//!
//! [`BrokerMessage::dead_letter`](tidings_core::transport::BrokerMessage::dead_letter)
//! publishes the message — same body and headers, the origin's included — to the group's
//! dead-letter queue with `tidings-dead-id` (a fresh UUID: the dead letter's id),
//! `tidings-dead-reason`, `tidings-dead-attempts`, `tidings-dead-at`,
//! `tidings-dead-group` and `tidings-topic`, waits for the publisher confirm, and only
//! then acks the original. If the publish fails, the error is returned and the original
//! stays unsettled, so it is delivered again: a dead letter is never lost, and at worst
//! kept twice (when the ack after a confirmed publish fails). A reject does not requeue:
//! the broker dead-letters it to the same queue (reason `rejected`, from its `x-death`
//! header; its id is built from that record and the message id; its attempts read 1,
//! because the broker does not keep the delivery count when it dead-letters — give up
//! with `dead_letter(reason)` to keep it), unless
//! [`RabbitConfig::dead_letter_exchange`] sends rejects to an exchange of your own, in
//! which case they are not listed. A delivered message that is not a valid event is
//! dead-lettered with reason `not a valid event: …` (and surfaces once as
//! [`TransportError::Decode`]; the stream goes on). Listing reads the queue with
//! `basic.get` and requeues what it read (see [`RabbitTransport`]'s
//! [`DeadLetters`](tidings_core::transport::DeadLetters) implementation).
//!
//! The dead-letter queue is a *classic* queue: listing requeues every message it reads,
//! which on a quorum queue would count as a failed delivery each time (RabbitMQ 4 drops or
//! dead-letters a quorum queue's message after 20 by default), and a classic queue puts
//! requeued messages back in their place, which keeps the list in order. It is durable and
//! holds persistent messages, but it lives on one node.
//!
//! ## Deduplication
//!
//! RabbitMQ does not deduplicate by event id, so
//! [`Transport::deduplicates_by_event_id`] is false: a publish retried after an
//! unconfirmed one, a replay, or a redelivery after a lost ack can each deliver an event
//! twice. Consumers deduplicate by event id with an inbox (idempotent handling).
//!
//! ## What a confirm means (durability)
//!
//! [`Transport::publish`] returns once RabbitMQ sent its publisher confirm for a
//! persistent message (delivery mode 2). For a message routed to a durable classic queue
//! the confirm is sent after the message is written to disk (fsynced); for a quorum queue,
//! after a majority of its replicas have written it to their Raft log and fsynced. Group
//! queues are declared as **quorum** queues (`x-queue-type: quorum`): replicated across
//! the cluster's nodes (on a single node, durable on that node), with a real
//! `x-delivery-count`. A message routed to no queue (no group is bound to its topic yet)
//! is confirmed too, and is gone: subscribe before publishing. RabbitMQ cannot change an
//! existing queue's type or arguments: declaring `<exchange>.<group>` over a queue made
//! with other arguments (for instance a classic queue, or one without this dead-letter
//! set-up) fails with `PRECONDITION_FAILED`, reported as [`RabbitError::QueueMismatch`]
//! inside [`TransportError::Subscribe`]; move the messages and delete the old queue (or use
//! another exchange name) to migrate.
//!
//! ## Reconnection
//!
//! The transport reconnects by itself when the connection drops, waiting between attempts
//! with exponential backoff and jitter ([`RabbitConfig::reconnect_backoff`]).
//! - A publish while the broker is unreachable fails promptly with
//!   [`TransportError::Publish`] (within the connect timeout at worst; at once while
//!   waiting out the backoff, with [`RabbitError::Disconnected`] as its source). It is not
//!   retried inside: the caller (such as an outbox relay) retries, which is safe because
//!   consumers deduplicate by event id.
//! - An open subscription ([`BrokerMessages`]) keeps going: it re-declares its topology
//!   and consumes again once the broker is back. Messages it held unacked are delivered
//!   again by the broker (to it or another subscriber); settling a delivery received
//!   before the drop fails with [`TransportError::Settle`]. AMQP acks have no reply: an
//!   ack that returned just before the connection dropped may not have reached the
//!   broker, and its message is then delivered again (consumers deduplicate).
//! - [`RabbitTransport::connect`] does not retry: a broker that is down at start is
//!   [`TransportError::Connect`], within the connect timeout.
//! - No call waits forever on a connection that went quiet (a half-open socket, lost
//!   frames): a publish and its confirm, a settlement, starting a subscription, a
//!   dead-letter scan and closing each have [`RabbitConfig::request_timeout`]. Past it
//!   the call fails with [`RabbitError::Timeout`] and the connection is dropped, so the
//!   next call reconnects.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tidings_core::TransportError> {
//! use futures::StreamExt;
//! use tidings_core::transport::{Message, Subscription, Transport};
//! use tidings_rabbitmq::{RabbitConfig, RabbitTransport};
//! let bus = RabbitTransport::connect(RabbitConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")).await?;
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

mod connection;
mod dead;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Consumer};
use tidings_core::transport::{
    BoxError, BrokerMessage, BrokerMessages, Message, Subscription, Transport, TransportError,
    check_topic, wire,
};
use tracing::Instrument;

use connection::{Backoff, Inner};
pub use dead::{
    DEAD_AT_HEADER, DEAD_ATTEMPTS_HEADER, DEAD_GROUP_HEADER, DEAD_ID_HEADER, DEAD_REASON_HEADER,
    TOPIC_HEADER, UNDECODABLE_EVENT_TYPE,
};

/// Where and how to run the transport.
#[derive(Debug, Clone)]
pub struct RabbitConfig {
    url: String,
    exchange: String,
    prefetch: u16,
    dead_letter_exchange: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl RabbitConfig {
    /// The broker at `url` (`amqp://user:pass@host:5672/%2f`), exchange `tidings`,
    /// prefetch 32 per subscriber, rejects dead-lettered to each group's dead-letter
    /// queue, a 5 s connect timeout, a 30 s request timeout, reconnect backoff from
    /// 200 ms to 30 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            exchange: "tidings".into(),
            prefetch: 32,
            dead_letter_exchange: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            reconnect_min: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(30),
        }
    }

    /// The topic exchange every topic is published to; group queues are named
    /// `<exchange>.<group>`, their dead-letter queues `<exchange>.<group>.dead`.
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self
    }

    /// How many unsettled deliveries one subscriber may hold (at least 1).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Sends rejected messages to this exchange (with their routing key) instead of the
    /// group's dead-letter queue; set on queues when they are created. Such rejects are
    /// not listed by [`DeadLetters`](tidings_core::transport::DeadLetters); messages given
    /// up with a reason still are.
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.dead_letter_exchange = Some(exchange.into());
        self
    }

    /// How long to wait for the broker when connecting (and reconnecting).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one exchange with the broker may take: a publish and its confirm, a
    /// settlement, declaring a subscription's queues, a dead-letter scan's step, closing.
    /// Past it the call fails with [`RabbitError::Timeout`] and the connection is
    /// dropped, so that the next call opens a new one: a half-open connection never
    /// holds a caller forever. A publish that timed out may still have reached the
    /// broker; retrying it with the same event id is safe for consumers that
    /// deduplicate (see the crate documentation on duplicates).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The wait between reconnection attempts: `min` after the first failure, doubling
    /// up to `max`, each wait scaled by a random factor in [0.5, 1).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min.max(Duration::from_millis(1));
        self.reconnect_max = max.max(self.reconnect_min);
        self
    }

    /// The URL without its password, for messages.
    fn redacted_url(&self) -> String {
        match (self.url.find("://"), self.url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***{}", &self.url[..scheme], &self.url[at..])
            }
            _ => self.url.clone(),
        }
    }
}

/// What went wrong on the RabbitMQ side: the source inside a [`TransportError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RabbitError {
    /// The connection is down and the next reconnection attempt is not due yet.
    #[error("not connected to RabbitMQ; reconnecting (next attempt in {retry_in:?})")]
    Disconnected {
        /// When the next attempt is due.
        retry_in: Duration,
    },
    /// [`RabbitTransport::close`] was called.
    #[error("the transport is closed")]
    Closed,
    /// Connecting took longer than the connect timeout.
    #[error("connecting timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// A queue exists with other arguments than the ones this crate declares (such as
    /// another queue type).
    #[error(
        "queue {queue:?} exists with other arguments (queue type or dead-lettering) than \
         this transport declares; RabbitMQ cannot change them: migrate its messages and \
         delete it, or use another exchange name: {source}"
    )]
    QueueMismatch {
        /// The queue.
        queue: String,
        /// The broker's answer.
        #[source]
        source: lapin::Error,
    },
    /// A message published to a queue by name was not routed: the queue does not exist.
    #[error("queue {queue:?} does not exist")]
    Unroutable {
        /// The queue.
        queue: String,
    },
    /// The broker refused a publish (negative confirm).
    #[error("the broker nacked the message")]
    Nacked,
    /// The delivery's channel closed (the connection dropped, or its subscriber went
    /// away): it cannot be settled any more, and the broker delivers it again.
    #[error("the delivery's channel is closed; the broker delivers the message again")]
    ChannelGone,
    /// The broker did not answer within the request timeout; the connection was
    /// dropped. For a publish, the message may or may not have been kept.
    #[error("RabbitMQ did not answer {what} within {after:?}; the connection was dropped")]
    Timeout {
        /// The request that got no answer.
        what: &'static str,
        /// The request timeout.
        after: Duration,
    },
    /// The channel was not in confirm mode.
    #[error("publisher confirms are not enabled")]
    NotConfirmed,
    /// An AMQP error.
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
}

/// The AMQP reply code of a channel or connection error (404, 406, …).
fn amqp_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

/// A [`Transport`] over one RabbitMQ topic exchange. Cheap to clone; clones share one
/// connection, which is reopened when it drops.
#[derive(Clone)]
pub struct RabbitTransport {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RabbitTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitTransport")
            .field("url", &self.inner.config.redacted_url())
            .field("exchange", &self.inner.config.exchange)
            .finish_non_exhaustive()
    }
}

impl RabbitTransport {
    /// Connects, opens a confirming publisher channel and declares the exchange. Fails
    /// with [`TransportError::Connect`] within the connect timeout when the broker cannot
    /// be reached.
    pub async fn connect(config: RabbitConfig) -> Result<Self, TransportError> {
        let url = config.redacted_url();
        let inner = Inner::connect(config)
            .await
            .map_err(|e| TransportError::Connect {
                url,
                source: Box::new(e),
            })?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The queue of consumer group `group`.
    pub fn queue_name(&self, group: &str) -> String {
        format!("{}.{group}", self.inner.config.exchange)
    }

    /// The dead-letter queue of consumer group `group`.
    pub fn dead_letter_queue_name(&self, group: &str) -> String {
        dead::dead_queue_name(&self.inner.config.exchange, group)
    }

    /// The exchange's name.
    pub fn exchange_name(&self) -> &str {
        &self.inner.config.exchange
    }

    fn connect_error(&self, e: RabbitError) -> TransportError {
        TransportError::Connect {
            url: self.inner.config.redacted_url(),
            source: Box::new(e),
        }
    }

    /// Deletes the queues this transport declared (with their dead-letter queues) and
    /// the exchange (tests clean up with this).
    pub async fn delete_topology(&self) -> Result<(), TransportError> {
        let queues: Vec<String> = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let live = self.inner.live().await.map_err(|e| self.connect_error(e))?;
        self.inner
            .bounded("deleting the topology", async {
                for q in queues {
                    live.publisher
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await?;
                }
                live.publisher
                    .exchange_delete(
                        self.inner.config.exchange.as_str().into(),
                        ExchangeDeleteOptions::default(),
                    )
                    .await?;
                Ok(())
            })
            .await
            .map_err(|e| self.connect_error(e))
    }

    /// Closes the connection; the transport does not reconnect afterwards.
    pub async fn close(&self) -> Result<(), TransportError> {
        self.inner.close().await.map_err(|e| self.connect_error(e))
    }
}

/// Declares a queue, reporting `PRECONDITION_FAILED` as [`RabbitError::QueueMismatch`].
async fn declare_queue(
    channel: &Channel,
    queue: &str,
    args: FieldTable,
) -> Result<(), RabbitError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    match channel.queue_declare(queue.into(), options, args).await {
        Ok(_) => Ok(()),
        Err(source) if amqp_code(&source) == Some(406) => Err(RabbitError::QueueMismatch {
            queue: queue.to_owned(),
            source,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Declares a group's dead-letter queue and queue, binds its topics, and starts
/// consuming on a channel of its own.
async fn start_consumer(
    inner: &Inner,
    subscription: &Subscription,
) -> Result<(Consumer, ChannelGuard), RabbitError> {
    let live = inner.live().await?;
    inner
        .bounded(
            "starting a subscription",
            declare_and_consume(inner, &live, subscription),
        )
        .await
}

async fn declare_and_consume(
    inner: &Inner,
    live: &connection::Live,
    subscription: &Subscription,
) -> Result<(Consumer, ChannelGuard), RabbitError> {
    let config = &inner.config;
    let channel = live.connection.create_channel().await?;
    let guard = ChannelGuard(channel.clone());
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    let queue = format!("{}.{}", config.exchange, subscription.group);
    let dead_queue = dead::dead_queue_name(&config.exchange, &subscription.group);
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("classic".into()),
    );
    declare_queue(&channel, &dead_queue, dead_args).await?;
    inner.remember_queue(&dead_queue);
    let mut args = FieldTable::default();
    let text = |s: &str| AMQPValue::LongString(LongString::from(s));
    args.insert("x-queue-type".into(), text("quorum"));
    match &config.dead_letter_exchange {
        Some(dlx) => {
            args.insert("x-dead-letter-exchange".into(), text(dlx));
        }
        None => {
            args.insert("x-dead-letter-exchange".into(), text(""));
            args.insert("x-dead-letter-routing-key".into(), text(&dead_queue));
        }
    }
    // At-least-once dead-lettering: the quorum queue keeps a rejected message until its
    // dead-letter queue confirms it (this needs the reject-publish overflow).
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
    declare_queue(&channel, &queue, args).await?;
    inner.remember_queue(&queue);
    for topic in &subscription.topics {
        channel
            .queue_bind(
                queue.as_str().into(),
                config.exchange.as_str().into(),
                topic.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((consumer, guard))
}

/// Closes a subscriber's channel when its deliveries are dropped, so RabbitMQ requeues
/// what it held.
struct ChannelGuard(Channel);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let channel = self.0.clone();
        if !channel.status().connected() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = channel.close(200, "subscriber dropped".into()).await {
                    tracing::debug!(error = %e, "closing a subscriber channel");
                }
            });
        }
    }
}

fn header_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

fn header_count(value: &AMQPValue) -> Option<u32> {
    let n: i64 = match *value {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    };
    u32::try_from(n).ok()
}

fn to_delivery(
    inner: &Arc<Inner>,
    group: &str,
    d: lapin::message::Delivery,
) -> Result<BrokerMessage, TransportError> {
    let empty = FieldTable::default();
    let table = d.properties.headers().as_ref().unwrap_or(&empty);
    // A replay arrives through the default exchange: its topic is in a header.
    let topic = table
        .inner()
        .get(TOPIC_HEADER)
        .and_then(header_text)
        .unwrap_or_else(|| d.routing_key.as_str().to_owned());
    // x-delivery-count counts earlier deliveries; classic queues only say "redelivered".
    let earlier = table
        .inner()
        .get("x-delivery-count")
        .and_then(header_count)
        .unwrap_or(u32::from(d.redelivered));
    let attempt = earlier.saturating_add(1);
    let span = tracing::info_span!("transport.receive", backend = "rabbitmq", group,
        topic = %topic, attempt);
    let _entered = span.enter();
    let mut headers: Vec<(String, String)> = table
        .inner()
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with("tidings-"))
        .filter_map(|(k, v)| header_text(v).map(|v| (k.as_str().to_owned(), v)))
        .collect();
    if let Some(ct) = d.properties.content_type() {
        headers.push((wire::CONTENT_TYPE.to_owned(), ct.as_str().to_owned()));
    }
    let decoded = wire::decode_message(
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &d.data,
    );
    let received = dead::Received {
        inner: inner.clone(),
        group: group.to_owned(),
        topic: topic.clone(),
        attempt,
        properties: d.properties,
        body: d.data,
    };
    match decoded {
        Ok((event, origin)) => {
            tracing::debug!(event_id = %event.event_id, "delivering");
            let settle = dead::RabbitSettle {
                acker: d.acker,
                received,
            };
            Ok(BrokerMessage::new(event, topic, attempt, settle).with_origin(origin))
        }
        Err(source) => {
            tracing::warn!(error = %source, "a message that is not a valid event goes to the dead letters");
            dead::dead_letter_undecodable(
                d.acker,
                received,
                format!("not a valid event: {source}"),
            );
            Err(TransportError::Decode { topic, source })
        }
    }
}

impl Transport for RabbitTransport {
    fn publish(&self, message: Message) -> impl Future<Output = Result<(), TransportError>> + Send {
        let span = tracing::info_span!("transport.publish", backend = "rabbitmq",
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
            let mut headers = FieldTable::default();
            let mut content_type = String::new();
            for (k, v) in w.headers {
                if k == wire::CONTENT_TYPE {
                    content_type = v;
                } else {
                    headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
                }
            }
            let properties = BasicProperties::default()
                .with_content_type(ShortString::from(content_type))
                .with_message_id(ShortString::from(event_id.to_string()))
                .with_type(ShortString::from(message.event.event_type.as_str()))
                .with_delivery_mode(2)
                .with_headers(headers);
            let live = self.inner.live().await.map_err(|e| failed(Box::new(e)))?;
            let confirm = self
                .inner
                .bounded("a publish's confirm", async {
                    Ok(live
                        .publisher
                        .basic_publish(
                            self.inner.config.exchange.as_str().into(),
                            message.topic.as_str().into(),
                            BasicPublishOptions::default(),
                            &w.body,
                            properties,
                        )
                        .await?
                        .await?)
                })
                .await
                .map_err(|e| failed(Box::new(e)))?;
            match confirm {
                Confirmation::Ack(_) => Ok(()),
                Confirmation::Nack(_) => Err(failed(Box::new(RabbitError::Nacked))),
                Confirmation::NotRequested => Err(failed(Box::new(RabbitError::NotConfirmed))),
            }
        }
        .instrument(span)
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> impl Future<Output = Result<BrokerMessages, TransportError>> + Send {
        let inner = self.inner.clone();
        async move {
            subscription.validate()?;
            let group = subscription.group.clone();
            let current = start_consumer(&inner, &subscription).await.map_err(|e| {
                TransportError::Subscribe {
                    group: group.clone(),
                    source: Box::new(e),
                }
            })?;
            let state = Subscriber {
                backoff: Backoff::new(&inner.config),
                inner,
                subscription,
                current: Some(current),
            };
            Ok(BrokerMessages::new(futures::stream::unfold(
                state,
                |mut s| async move {
                    let item = s.next().await;
                    Some((item, s))
                },
            )))
        }
    }
}

/// One subscriber's consumer, restarted after the connection (or its channel) drops.
struct Subscriber {
    inner: Arc<Inner>,
    subscription: Subscription,
    current: Option<(Consumer, ChannelGuard)>,
    backoff: Backoff,
}

impl Subscriber {
    async fn next(&mut self) -> Result<BrokerMessage, TransportError> {
        let group = self.subscription.group.as_str();
        loop {
            let Some((consumer, _guard)) = &mut self.current else {
                match start_consumer(&self.inner, &self.subscription).await {
                    Ok(current) => {
                        tracing::info!(group, "consuming again after a reconnect");
                        self.backoff.reset();
                        self.current = Some(current);
                    }
                    Err(e) => {
                        let wait = self.backoff.step();
                        tracing::warn!(group, error = %e, retry_in = ?wait,
                            "resuming the subscription failed");
                        tokio::time::sleep(wait).await;
                    }
                }
                continue;
            };
            match consumer.next().await {
                Some(Ok(d)) => return to_delivery(&self.inner, group, d),
                Some(Err(e)) => {
                    tracing::warn!(group, error = %e, "the subscription dropped; resuming");
                }
                None => {
                    tracing::warn!(group, "the subscription ended; resuming");
                }
            }
            self.current = None;
            tokio::time::sleep(self.backoff.step()).await;
        }
    }
}
