//! # tidings-rabbitmq
//!
//! The Tidings bus [`Transport`] on RabbitMQ, with publisher confirms.
//!
//! ```text
//! topic "orders" ──publish──► topic exchange <exchange>, routing key "orders"
//!                             (persistent; confirmed by the broker before publish returns)
//! group "billing" ◄─consume── durable quorum queue "<exchange>.billing",
//!                             bound with each of the group's topics, manual acks
//! ```
//!
//! A message is an event in CloudEvents binary mode ([`tidings_core::transport::wire`]): `ce-*`
//! AMQP headers, `content-type: application/json`, `message-id` and `type` properties
//! and the JSON payload as the body. Subscribers of one group consume from the same
//! queue, so they compete (prefetch bounds what each holds). Each subscriber has its own
//! channel: dropping its [`BrokerMessages`] closes it and RabbitMQ requeues what it held. A
//! nack waits for its delay and then requeues; a reject does not requeue, so the queue's
//! dead-letter exchange (when [`RabbitConfig::dead_letter_exchange`] names one) gets the
//! message. [`BrokerMessage::attempt`](tidings_core::transport::BrokerMessage::attempt) comes from the
//! quorum queue's `x-delivery-count`. RabbitMQ does not deduplicate by event id.
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

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lapin::Acker;
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tidings_core::transport::{
    BoxError, BrokerMessage, BrokerMessages, Message, Settle, Subscription, Transport,
    TransportError, check_topic, wire,
};
use tracing::Instrument;

/// Where and how to run the transport.
#[derive(Debug, Clone)]
pub struct RabbitConfig {
    url: String,
    exchange: String,
    prefetch: u16,
    dead_letter_exchange: Option<String>,
    connect_timeout: Duration,
}

impl RabbitConfig {
    /// The broker at `url` (`amqp://user:pass@host:5672/%2f`), exchange `tidings`,
    /// prefetch 32 per subscriber, no dead-letter exchange.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            exchange: "tidings".into(),
            prefetch: 32,
            dead_letter_exchange: None,
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The topic exchange every topic is published to; group queues are named
    /// `<exchange>.<group>`.
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self
    }

    /// How many unsettled deliveries one subscriber may hold (at least 1).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The exchange rejected messages go to (set on queues when they are created).
    pub fn dead_letter_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.dead_letter_exchange = Some(exchange.into());
        self
    }

    /// How long to wait for the broker when connecting.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
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

/// A [`Transport`] over one RabbitMQ topic exchange. Cheap to clone.
#[derive(Clone)]
pub struct RabbitTransport {
    connection: Arc<Connection>,
    publisher: Channel,
    config: Arc<RabbitConfig>,
    queues: Arc<Mutex<BTreeSet<String>>>,
}

impl std::fmt::Debug for RabbitTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitTransport")
            .field("url", &self.config.redacted_url())
            .field("exchange", &self.config.exchange)
            .finish_non_exhaustive()
    }
}

fn boxed(e: lapin::Error) -> BoxError {
    Box::new(e)
}

impl RabbitTransport {
    /// Connects, opens a confirming publisher channel and declares the exchange.
    pub async fn connect(config: RabbitConfig) -> Result<Self, TransportError> {
        let url = config.redacted_url();
        let connect_error = |source: BoxError| TransportError::Connect {
            url: url.clone(),
            source,
        };
        let connection = tokio::time::timeout(
            config.connect_timeout,
            Connection::connect(&config.url, ConnectionProperties::default()),
        )
        .await
        .map_err(|_| connect_error("timed out".into()))?
        .map_err(|e| connect_error(boxed(e)))?;
        let publisher = connection
            .create_channel()
            .await
            .map_err(|e| connect_error(boxed(e)))?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| connect_error(boxed(e)))?;
        publisher
            .exchange_declare(
                config.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| connect_error(boxed(e)))?;
        Ok(Self {
            connection: Arc::new(connection),
            publisher,
            config: Arc::new(config),
            queues: Arc::default(),
        })
    }

    /// The queue of consumer group `group`.
    pub fn queue_name(&self, group: &str) -> String {
        format!("{}.{group}", self.config.exchange)
    }

    /// The exchange's name.
    pub fn exchange_name(&self) -> &str {
        &self.config.exchange
    }

    /// Deletes the queues this transport declared and the exchange (tests clean up with
    /// this).
    pub async fn delete_topology(&self) -> Result<(), TransportError> {
        let queues: Vec<String> = self
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let failed = |source: BoxError| TransportError::Connect {
            url: self.config.redacted_url(),
            source,
        };
        for q in queues {
            self.publisher
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(|e| failed(boxed(e)))?;
        }
        self.publisher
            .exchange_delete(
                self.config.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await
            .map_err(|e| failed(boxed(e)))?;
        Ok(())
    }

    /// Closes the connection.
    pub async fn close(&self) -> Result<(), TransportError> {
        self.connection
            .close(200, "bye".into())
            .await
            .map_err(|e| TransportError::Connect {
                url: self.config.redacted_url(),
                source: boxed(e),
            })
    }

    async fn open_subscriber(&self, subscription: &Subscription) -> Result<Channel, BoxError> {
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let queue = self.queue_name(&subscription.group);
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if let Some(dlx) = &self.config.dead_letter_exchange {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.as_str().into()),
            );
        }
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.clone());
        for topic in &subscription.topics {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    self.config.exchange.as_str().into(),
                    topic.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(channel)
    }
}

/// Closes a subscriber's channel when its deliveries are dropped, so RabbitMQ requeues
/// what it held.
struct ChannelGuard(Channel);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let channel = self.0.clone();
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

fn to_delivery(group: &str, d: lapin::message::Delivery) -> Result<BrokerMessage, TransportError> {
    let topic = d.routing_key.as_str().to_owned();
    let empty = FieldTable::default();
    let table = d.properties.headers().as_ref().unwrap_or(&empty);
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
        .filter_map(|(k, v)| header_text(v).map(|v| (k.as_str().to_owned(), v)))
        .collect();
    if let Some(ct) = d.properties.content_type() {
        headers.push((wire::CONTENT_TYPE.to_owned(), ct.as_str().to_owned()));
    }
    match wire::decode_message(
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &d.data,
    ) {
        Ok((event, origin)) => {
            tracing::debug!(event_id = %event.event_id, "delivering");
            Ok(
                BrokerMessage::new(event, topic, attempt, RabbitSettle(d.acker))
                    .with_origin(origin),
            )
        }
        Err(source) => {
            tracing::warn!(error = %source, "undecodable message rejected");
            let acker = d.acker;
            tokio::spawn(async move {
                if let Err(e) = acker.reject(BasicRejectOptions { requeue: false }).await {
                    tracing::warn!(error = %e, "rejecting an undecodable message failed");
                }
            });
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
            let confirm = self
                .publisher
                .basic_publish(
                    self.config.exchange.as_str().into(),
                    message.topic.as_str().into(),
                    BasicPublishOptions::default(),
                    &w.body,
                    properties,
                )
                .await
                .map_err(|e| failed(boxed(e)))?
                .await
                .map_err(|e| failed(boxed(e)))?;
            match confirm {
                Confirmation::Ack(_) => Ok(()),
                Confirmation::Nack(_) => Err(failed("the broker nacked the message".into())),
                Confirmation::NotRequested => {
                    Err(failed("publisher confirms are not enabled".into()))
                }
            }
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
            let channel = this.open_subscriber(&subscription).await.map_err(failed)?;
            let guard = ChannelGuard(channel.clone());
            let consumer = channel
                .basic_consume(
                    this.queue_name(&group).as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| failed(boxed(e)))?;
            let stream = consumer.map(move |item| {
                let _keep_channel_open = &guard;
                match item {
                    Ok(d) => to_delivery(&group, d),
                    Err(e) => Err(TransportError::Subscribe {
                        group: group.clone(),
                        source: boxed(e),
                    }),
                }
            });
            Ok(BrokerMessages::new(stream))
        }
    }
}

struct RabbitSettle(Acker);

impl Settle for RabbitSettle {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        async move {
            self.0
                .ack(BasicAckOptions::default())
                .await
                .map(|_| ())
                .map_err(boxed)
        }
        .boxed()
    }

    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BoxError>> {
        let requeue = |acker: Acker| async move {
            acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
                .map(|_| ())
                .map_err(boxed)
        };
        if delay.is_zero() {
            return requeue(self.0).boxed();
        }
        // RabbitMQ has no delayed requeue without a plugin: hold the message unacked for
        // the delay (it stays counted against the prefetch), then requeue it.
        let acker = self.0;
        tokio::spawn(
            async move {
                tokio::time::sleep(delay).await;
                if let Err(e) = requeue(acker).await {
                    tracing::warn!(error = %e, "delayed nack failed; the message comes back when the channel closes");
                }
            }
            .in_current_span(),
        );
        futures::future::ready(Ok(())).boxed()
    }

    fn reject(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        async move {
            self.0
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(|_| ())
                .map_err(boxed)
        }
        .boxed()
    }
}
