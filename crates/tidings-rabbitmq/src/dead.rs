//! Dead letters: each group's dead-letter queue `<exchange>.<group>.dead`, what
//! [`Settle::dead_letter`] puts there, and [`DeadLetters`] over it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Confirmation};
use tidings_core::event::{Event, Metadata, Payload};
use tidings_core::transport::{
    BoxError, DeadLetter, DeadLetters, Settle, TransportError, is_valid_name, wire,
};
use tracing::Instrument;

use crate::connection::Inner;
use crate::{RabbitError, RabbitTransport, header_count, header_text};

/// The header naming the topic a message was published to. Set on dead letters and on
/// replays (which reach the group's queue through the default exchange, whose routing
/// key is the queue's name, not the topic).
pub const TOPIC_HEADER: &str = "tidings-topic";
/// The header with a dead letter's id (a UUID assigned when it is dead-lettered).
pub const DEAD_ID_HEADER: &str = "tidings-dead-id";
/// The header with why a message was dead-lettered.
pub const DEAD_REASON_HEADER: &str = "tidings-dead-reason";
/// The header with how many times the message had been delivered to its group.
pub const DEAD_ATTEMPTS_HEADER: &str = "tidings-dead-attempts";
/// The header with when the message was dead-lettered (RFC 3339).
pub const DEAD_AT_HEADER: &str = "tidings-dead-at";
/// The header naming the group that gave the message up.
pub const DEAD_GROUP_HEADER: &str = "tidings-dead-group";

const DEAD_PREFIX: &str = "tidings-dead-";

/// What a delivery keeps so that it can be dead-lettered with a reason.
pub(crate) struct Received {
    pub(crate) inner: Arc<Inner>,
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) attempt: u32,
    pub(crate) properties: BasicProperties,
    pub(crate) body: Vec<u8>,
}

impl Received {
    /// Publishes the message to its group's dead-letter queue with `reason`, and waits
    /// for the broker's confirm.
    async fn publish_dead(&self, reason: &str) -> Result<(), RabbitError> {
        let mut headers = carried_headers(&self.properties);
        let text = |v: &str| AMQPValue::LongString(LongString::from(v));
        headers.insert(
            DEAD_ID_HEADER.into(),
            text(&uuid::Uuid::new_v4().to_string()),
        );
        headers.insert(DEAD_REASON_HEADER.into(), text(reason));
        headers.insert(
            DEAD_ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(self.attempt.into()),
        );
        headers.insert(DEAD_AT_HEADER.into(), text(&Timestamp::now().to_string()));
        headers.insert(DEAD_GROUP_HEADER.into(), text(&self.group));
        headers.insert(TOPIC_HEADER.into(), text(&self.topic));
        let queue = dead_queue_name(&self.inner.config.exchange, &self.group);
        publish_to_queue(
            &self.inner,
            &queue,
            &self.body,
            self.properties.clone().with_headers(headers),
        )
        .await
    }
}

/// The headers of a message minus the broker's (`x-…`) and earlier dead-letter ones.
fn carried_headers(properties: &BasicProperties) -> FieldTable {
    let mut out = FieldTable::default();
    if let Some(headers) = properties.headers() {
        for (k, v) in headers.inner() {
            let k = k.as_str();
            if k.starts_with("x-") || k.starts_with(DEAD_PREFIX) {
                continue;
            }
            out.insert(k.into(), v.clone());
        }
    }
    out
}

/// Publishes persistently to `queue` through the default exchange, mandatory (an
/// unroutable message — the queue is gone — is an error), and waits for the confirm.
async fn publish_to_queue(
    inner: &Inner,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), RabbitError> {
    let live = inner.live().await?;
    let confirm = inner
        .bounded("a dead letter's confirm", async {
            Ok(live
                .publisher
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    properties.with_delivery_mode(2),
                )
                .await?
                .await?)
        })
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(RabbitError::Unroutable {
            queue: queue.to_owned(),
        }),
        Confirmation::Nack(_) => Err(RabbitError::Nacked),
        Confirmation::NotRequested => Err(RabbitError::NotConfirmed),
    }
}

/// The dead-letter queue of `group` on `exchange`.
pub(crate) fn dead_queue_name(exchange: &str, group: &str) -> String {
    format!("{exchange}.{group}.dead")
}

/// Settles one delivery on its subscriber's channel.
pub(crate) struct RabbitSettle {
    pub(crate) acker: Acker,
    pub(crate) received: Received,
}

/// An ack, nack or reject's outcome: lapin answers `false` without sending anything when
/// the delivery's channel is gone, in which case the broker delivers the message again.
fn settled(outcome: Result<bool, lapin::Error>) -> Result<(), RabbitError> {
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(RabbitError::ChannelGone),
        Err(e) => Err(RabbitError::from(e)),
    }
}

/// A settlement within the request timeout.
async fn settle_within(
    inner: &Inner,
    what: &'static str,
    settlement: impl Future<Output = Result<bool, lapin::Error>>,
) -> Result<(), BoxError> {
    inner
        .bounded(what, async { settled(settlement.await) })
        .await
        .map_err(|e| Box::new(e) as BoxError)
}

impl Settle for RabbitSettle {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        async move {
            let inner = &self.received.inner;
            settle_within(inner, "an ack", self.acker.ack(BasicAckOptions::default())).await
        }
        .boxed()
    }

    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BoxError>> {
        let requeue = |acker: Acker, inner: Arc<Inner>| async move {
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            settle_within(&inner, "a nack", acker.nack(requeue)).await
        };
        let inner = self.received.inner.clone();
        if delay.is_zero() {
            return requeue(self.acker, inner).boxed();
        }
        // RabbitMQ has no delayed requeue without a plugin: hold the message unacked for
        // the delay (it stays counted against the prefetch), then requeue it.
        let acker = self.acker;
        tokio::spawn(
            async move {
                tokio::time::sleep(delay).await;
                if let Err(e) = requeue(acker, inner).await {
                    tracing::warn!(error = %e, "delayed nack failed; the message comes back when the channel closes");
                }
            }
            .in_current_span(),
        );
        futures::future::ready(Ok(())).boxed()
    }

    fn reject(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        async move {
            let reject = self.acker.reject(BasicRejectOptions { requeue: false });
            settle_within(&self.received.inner, "a reject", reject).await
        }
        .boxed()
    }

    /// Publishes to the group's dead-letter queue (confirmed), then acks. When the
    /// publish fails the delivery stays unsettled, so the broker delivers it again.
    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), BoxError>> {
        async move {
            if !self.acker.usable() {
                // Its channel is gone: the broker delivers it again; keep no copy.
                return Err(Box::new(RabbitError::ChannelGone) as BoxError);
            }
            self.received
                .publish_dead(&reason)
                .await
                .map_err(|e| Box::new(e) as BoxError)?;
            let inner = &self.received.inner;
            settle_within(inner, "an ack", self.acker.ack(BasicAckOptions::default())).await
        }
        .boxed()
    }
}

/// Dead-letters a message that is not a valid event, with `reason`; rejects it (to the
/// queue's dead-letter exchange) when that fails.
pub(crate) fn dead_letter_undecodable(acker: Acker, received: Received, reason: String) {
    tokio::spawn(
        async move {
            match received.publish_dead(&reason).await {
                Ok(()) => {
                    let ack = acker.ack(BasicAckOptions::default());
                    if let Err(e) = settle_within(&received.inner, "an ack", ack).await {
                        tracing::warn!(error = %e, "acking a dead-lettered undecodable message failed");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead-lettering an undecodable message failed; rejecting it");
                    let reject = acker.reject(BasicRejectOptions { requeue: false });
                    if let Err(e) = settle_within(&received.inner, "a reject", reject).await {
                        tracing::warn!(error = %e, "rejecting an undecodable message failed");
                    }
                }
            }
        }
        .in_current_span(),
    );
}

/// A dead-letter queue held open for a scan: messages taken with `basic.get` and not
/// acked stay invisible to other readers until they are released.
struct Scan {
    channel: Channel,
    queue: String,
    held: Vec<Delivery>,
}

impl Scan {
    /// Opens a scan of `group`'s dead-letter queue; `None` when the queue does not exist.
    async fn open(inner: &Inner, group: &str) -> Result<Option<Self>, RabbitError> {
        let queue = dead_queue_name(&inner.config.exchange, group);
        let live = inner.live().await?;
        inner
            .bounded("opening a dead-letter scan", async {
                let channel = live.connection.create_channel().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                match channel
                    .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                    .await
                {
                    Ok(_) => Ok(Some(Self {
                        channel,
                        queue,
                        held: Vec::new(),
                    })),
                    Err(e) if crate::amqp_code(&e) == Some(404) => Ok(None),
                    Err(e) => Err(e.into()),
                }
            })
            .await
    }

    /// The next message (held), or `None` at the end of the queue.
    async fn next(&mut self, inner: &Inner) -> Result<Option<&Delivery>, RabbitError> {
        let get = self.channel.basic_get(
            self.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        );
        let got = inner
            .bounded("a dead-letter scan's get", async { Ok(get.await?) })
            .await?;
        Ok(match got {
            Some(m) => {
                self.held.push(m.delivery);
                self.held.last()
            }
            None => None,
        })
    }

    /// Acks held message `tag`: it leaves the queue.
    async fn remove(&mut self, inner: &Inner, tag: u64) -> Result<(), RabbitError> {
        let ack = self.channel.basic_ack(tag, BasicAckOptions::default());
        inner
            .bounded("removing a dead letter", async { Ok(ack.await?) })
            .await?;
        self.held.retain(|d| d.delivery_tag != tag);
        Ok(())
    }

    /// Requeues every held message (classic queues put them back where they were) and
    /// closes the channel. Were this to fail, closing or losing the channel requeues
    /// them too.
    async fn release(self, inner: &Inner) {
        if let Some(last) = self.held.iter().map(|d| d.delivery_tag).max() {
            let requeue = BasicNackOptions {
                multiple: true,
                requeue: true,
            };
            let nack = self.channel.basic_nack(last, requeue);
            let nack = inner.bounded("requeueing scanned dead letters", async { Ok(nack.await?) });
            if let Err(e) = nack.await {
                tracing::warn!(error = %e, "requeueing scanned dead letters failed");
            }
        }
        let close = self.channel.close(200, "scan done".into());
        let close = inner.bounded("closing a dead-letter scan", async { Ok(close.await?) });
        if let Err(e) = close.await {
            tracing::debug!(error = %e, "closing a dead-letter scan channel");
        }
    }
}

/// The id of a dead letter: the UUID assigned by [`Settle::dead_letter`], or for a
/// message the broker dead-lettered (a reject), its `x-death` record and message id.
fn letter_id(d: &Delivery) -> String {
    let headers = d.properties.headers().clone().unwrap_or_default();
    if let Some(id) = headers.inner().get(DEAD_ID_HEADER).and_then(header_text) {
        return id;
    }
    let message_id = d
        .properties
        .message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    match last_death(&headers) {
        Some(death) => format!(
            "x-death:{message_id}:{}:{}:{}:{}",
            death.queue, death.reason, death.time, death.count
        ),
        None => format!("message:{message_id}"),
    }
}

struct Death {
    queue: String,
    reason: String,
    time: u64,
    count: u32,
    routing_key: Option<String>,
}

/// The most recent `x-death` record (RabbitMQ keeps it first).
fn last_death(headers: &FieldTable) -> Option<Death> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(death) = deaths.as_slice().first()? else {
        return None;
    };
    let d = death.inner();
    let text = |k: &str| d.get(k).and_then(header_text).unwrap_or_default();
    let time = match d.get("time") {
        Some(AMQPValue::Timestamp(t)) => *t,
        _ => 0,
    };
    let routing_key = match d.get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().first().and_then(header_text),
        _ => None,
    };
    Some(Death {
        queue: text("queue"),
        reason: text("reason"),
        time,
        count: d.get("count").and_then(header_count).unwrap_or(1),
        routing_key,
    })
}

/// A held dead-letter message as a [`DeadLetter`].
fn to_dead_letter(group: &str, d: &Delivery) -> DeadLetter {
    let headers = d.properties.headers().clone().unwrap_or_default();
    let h = headers.inner();
    let death = last_death(&headers);
    let topic = h
        .get(TOPIC_HEADER)
        .and_then(header_text)
        .or_else(|| death.as_ref().and_then(|x| x.routing_key.clone()))
        .unwrap_or_else(|| d.routing_key.as_str().to_owned());
    let reason = h
        .get(DEAD_REASON_HEADER)
        .and_then(header_text)
        .or_else(|| death.as_ref().map(|x| x.reason.clone()))
        .unwrap_or_else(|| "unknown".to_owned());
    // A reject dead-lettered by the broker: the quorum queue's x-delivery-count
    // counts the deliveries before the last one.
    let attempts = h
        .get(DEAD_ATTEMPTS_HEADER)
        .and_then(header_count)
        .or_else(|| {
            h.get("x-delivery-count")
                .and_then(header_count)
                .map(|n| n.saturating_add(1))
        })
        .unwrap_or(1);
    let dead_at = h
        .get(DEAD_AT_HEADER)
        .and_then(header_text)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .or_else(|| {
            death
                .as_ref()
                .and_then(|x| i64::try_from(x.time).ok())
                .and_then(|t| Timestamp::from_second(t).ok())
        })
        .unwrap_or(Timestamp::UNIX_EPOCH);
    let mut wire_headers: Vec<(String, String)> = h
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with("x-") && !k.as_str().starts_with("tidings-"))
        .filter_map(|(k, v)| header_text(v).map(|v| (k.as_str().to_owned(), v)))
        .collect();
    if let Some(ct) = d.properties.content_type() {
        wire_headers.push((wire::CONTENT_TYPE.to_owned(), ct.as_str().to_owned()));
    }
    let (event, origin) = match wire::decode_message(
        wire_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        &d.data,
    ) {
        Ok(decoded) => decoded,
        Err(e) => (undecodable_event(d, &e.to_string(), dead_at), None),
    };
    DeadLetter {
        id: letter_id(d),
        group: group.to_owned(),
        topic,
        event,
        origin,
        reason,
        attempts,
        dead_at,
    }
}

/// The event type a dead letter that is not a valid event is listed with.
pub const UNDECODABLE_EVENT_TYPE: &str = "tidings.undecodable";

/// Stands in for a dead letter whose message is not a valid event: type
/// [`UNDECODABLE_EVENT_TYPE`], the message id as event id when it is a UUID, and the
/// decoding error and body (as lossy UTF-8) as data. A replay republishes the original
/// message, not this.
fn undecodable_event(d: &Delivery, error: &str, at: Timestamp) -> Event {
    let event_id = d
        .properties
        .message_id()
        .as_ref()
        .and_then(|m| m.as_str().parse().ok())
        .unwrap_or_default();
    let body = String::from_utf8_lossy(&d.data);
    Event {
        event_id,
        event_type: UNDECODABLE_EVENT_TYPE.to_owned(),
        event_version: tidings_core::event::DEFAULT_EVENT_VERSION.to_owned(),
        timestamp: at,
        source: "tidings-rabbitmq".to_owned(),
        data: Payload::from_value(&serde_json::json!({"error": error, "body": body})),
        metadata: Metadata::default(),
    }
}

fn check_group(group: &str) -> Result<(), TransportError> {
    is_valid_name(group).map_err(|reason| TransportError::InvalidName {
        kind: "group",
        name: group.to_owned(),
        reason,
    })
}

fn failed(group: &str) -> impl Fn(RabbitError) -> TransportError + '_ {
    move |e| TransportError::Subscribe {
        group: group.to_owned(),
        source: Box::new(e),
    }
}

impl RabbitTransport {
    /// Scans `group`'s dead-letter queue, listing up to `limit` messages, until `found`
    /// picks one: `on_found` runs on it and, when it succeeds, the message is removed.
    /// Everything else read is released (requeued in place).
    async fn scan_dead<T>(
        &self,
        group: &str,
        mut found: impl FnMut(&Delivery) -> bool,
        on_found: impl AsyncFnOnce(&RabbitTransport, &Delivery) -> Result<T, RabbitError>,
        limit: usize,
    ) -> Result<(Vec<DeadLetter>, Option<T>), RabbitError> {
        let _one_scan_at_a_time = self.inner.scan_lock.lock().await;
        let Some(mut scan) = Scan::open(&self.inner, group).await? else {
            return Ok((Vec::new(), None));
        };
        let mut listed = Vec::new();
        let mut outcome = None;
        let result = async {
            while listed.len() < limit {
                let Some(d) = scan.next(&self.inner).await? else {
                    break;
                };
                if found(d) {
                    let tag = d.delivery_tag;
                    outcome = Some(on_found(self, d).await?);
                    scan.remove(&self.inner, tag).await?;
                    break;
                }
                listed.push(to_dead_letter(group, d));
            }
            Ok::<_, RabbitError>(())
        }
        .await;
        scan.release(&self.inner).await;
        result.map(|()| (listed, outcome))
    }
}

impl DeadLetters for RabbitTransport {
    /// Reads the group's dead-letter queue with `basic.get` (manual ack), holding each
    /// message, then requeues them all: classic queues put requeued messages back in
    /// their place, so the order is kept and nothing is consumed. Scans in one process
    /// take turns; a scan from another process running at the same time sees only the
    /// messages this one does not hold, so it may list fewer (and its replay or delete
    /// may answer `false` for a letter held here): retry it.
    fn dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetter>, TransportError>> + Send {
        let span = tracing::info_span!("transport.dead_letters", backend = "rabbitmq", group);
        async move {
            check_group(group)?;
            let (listed, _) = self
                .scan_dead(
                    group,
                    |_| false,
                    async |_, _| Ok::<(), RabbitError>(()),
                    limit,
                )
                .await
                .map_err(failed(group))?;
            Ok(listed)
        }
        .instrument(span)
    }

    /// Publishes the dead letter (confirmed) to the group's own queue through the
    /// default exchange — no other group sees it — without its `x-death` and dead-letter
    /// headers, so it is delivered as attempt 1; then removes it from the dead letters.
    /// If the publish fails the dead letter stays.
    fn replay_dead_letter(
        &self,
        group: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, TransportError>> + Send {
        let span = tracing::info_span!(
            "transport.replay_dead_letter",
            backend = "rabbitmq",
            group,
            id
        );
        async move {
            check_group(group)?;
            let queue = self.queue_name(group);
            let (_, replayed) = self
                .scan_dead(
                    group,
                    |d| letter_id(d) == id,
                    async |t: &RabbitTransport, d: &Delivery| {
                        let letter = to_dead_letter(group, d);
                        let mut headers = carried_headers(&d.properties);
                        headers.insert(
                            TOPIC_HEADER.into(),
                            AMQPValue::LongString(LongString::from(letter.topic.as_str())),
                        );
                        let properties =
                            d.properties.clone().with_headers(headers).with_message_id(
                                ShortString::from(
                                    d.properties
                                        .message_id()
                                        .as_ref()
                                        .map(|m| m.as_str().to_owned())
                                        .unwrap_or_else(|| letter.event.event_id.to_string()),
                                ),
                            );
                        publish_to_queue(&t.inner, &queue, &d.data, properties).await
                    },
                    usize::MAX,
                )
                .await
                .map_err(failed(group))?;
            Ok(replayed.is_some())
        }
        .instrument(span)
    }

    fn delete_dead_letter(
        &self,
        group: &str,
        id: &str,
    ) -> impl Future<Output = Result<bool, TransportError>> + Send {
        let span = tracing::info_span!(
            "transport.delete_dead_letter",
            backend = "rabbitmq",
            group,
            id
        );
        async move {
            check_group(group)?;
            let (_, deleted) = self
                .scan_dead(
                    group,
                    |d| letter_id(d) == id,
                    async |_, _| Ok::<(), RabbitError>(()),
                    usize::MAX,
                )
                .await
                .map_err(failed(group))?;
            Ok(deleted.is_some())
        }
        .instrument(span)
    }
}
