//! Dead letters on JetStream: the settle that stores them, and listing, replaying and
//! deleting them.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, AckKind, stream::LastRawMessageErrorKind};
use futures::FutureExt;
use futures::future::BoxFuture;
use jiff::Timestamp;
use tidings_core::transport::{
    BoxError, DeadLetter, Settle, TransportError, check_topic, is_valid_name, wire,
};
use tracing::Instrument;

use crate::{MSG_ID, NatsTransport};

/// The dead-letter header with why the group gave the message up (`%`-escaped: `%`,
/// CR, LF and other control characters become `%XX`).
pub const DEAD_REASON: &str = "Tidings-Dead-Reason";
/// The dead-letter header with how many times the group had received the message.
pub const DEAD_ATTEMPTS: &str = "Tidings-Dead-Attempts";
/// The dead-letter header with the topic the message was published to.
pub const DEAD_TOPIC: &str = "Tidings-Dead-Topic";
/// The dead-letter header with the group that gave the message up.
pub const DEAD_GROUP: &str = "Tidings-Dead-Group";
/// The dead-letter header with when the group gave the message up (RFC 3339).
pub const DEAD_AT: &str = "Tidings-Dead-At";

/// The longest reason kept, in bytes; longer ones are cut at a character boundary.
const MAX_REASON: usize = 8 * 1024;

/// A dead letter as it is stored, whether or not it is a valid event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDeadLetter {
    /// Its id: the sequence in the dead-letter stream.
    pub id: String,
    /// The group that gave it up.
    pub group: String,
    /// The topic it was published to.
    pub topic: String,
    /// Why it was given up.
    pub reason: String,
    /// How many times it had been delivered to the group.
    pub attempts: u32,
    /// When it was given up (`None` when the header is missing or unreadable).
    pub dead_at: Option<Timestamp>,
    /// The message's own headers (the `ce-*` and origin headers of a valid event),
    /// without the dead-letter and `Nats-*` headers.
    pub headers: Vec<(String, String)>,
    /// The message's body.
    pub body: Vec<u8>,
}

impl RawDeadLetter {
    /// The dead letter as an event, or why it is not one.
    pub fn decode(&self) -> Result<DeadLetter, tidings_core::event::cloudevents::CloudEventError> {
        let (event, origin) = wire::decode_message(
            self.headers
                .iter()
                .map(|(k, v)| (AsRef::<str>::as_ref(k), v.as_str())),
            &self.body,
        )?;
        Ok(DeadLetter {
            id: self.id.clone(),
            group: self.group.clone(),
            topic: self.topic.clone(),
            event,
            origin,
            reason: self.reason.clone(),
            attempts: self.attempts,
            dead_at: self.dead_at.unwrap_or(Timestamp::UNIX_EPOCH),
        })
    }
}

/// A delivered message and where its dead letter goes.
pub(crate) struct Letter {
    pub(crate) js: jetstream::Context,
    /// `<prefix>-dlq.<group>`.
    pub(crate) subject: String,
    /// Unique per delivered message and group: storing it twice keeps one.
    pub(crate) msg_id: String,
    pub(crate) group: String,
    pub(crate) topic: String,
    pub(crate) attempts: u32,
    pub(crate) message: async_nats::Message,
}

impl Letter {
    /// Publishes the dead letter and waits for JetStream's ack.
    pub(crate) async fn store(self, reason: String) -> Result<(), BoxError> {
        let mut headers = own_headers(self.message.headers.as_ref());
        headers.insert(DEAD_REASON, escape(truncate(&reason, MAX_REASON)));
        headers.insert(DEAD_ATTEMPTS, self.attempts.to_string());
        headers.insert(DEAD_TOPIC, self.topic.as_str());
        headers.insert(DEAD_GROUP, self.group.as_str());
        headers.insert(DEAD_AT, Timestamp::now().to_string());
        headers.insert(MSG_ID, self.msg_id.as_str());
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers, self.message.payload)
            .await?
            .await?;
        tracing::info!(
            dead_letter = ack.sequence,
            duplicate = ack.duplicate,
            "dead-lettered"
        );
        Ok(())
    }
}

/// Settles a JetStream delivery; dead letters go to the group's dead-letter subject.
pub(crate) struct NatsSettle {
    pub(crate) acker: jetstream::message::Acker,
    pub(crate) letter: Option<Letter>,
}

impl Settle for NatsSettle {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        async move { self.acker.ack().await }.boxed()
    }

    fn nack(self: Box<Self>, delay: Duration) -> BoxFuture<'static, Result<(), BoxError>> {
        let delay = (!delay.is_zero()).then_some(delay);
        async move { self.acker.ack_with(AckKind::Nak(delay)).await }.boxed()
    }

    fn reject(self: Box<Self>) -> BoxFuture<'static, Result<(), BoxError>> {
        async move { self.acker.ack_with(AckKind::Term).await }.boxed()
    }

    fn dead_letter(self: Box<Self>, reason: String) -> BoxFuture<'static, Result<(), BoxError>> {
        async move {
            let NatsSettle { acker, letter } = *self;
            if let Some(letter) = letter {
                // Stored first; if that fails the original stays unsettled and comes
                // again after the ack wait.
                letter.store(reason).await?;
            }
            // Confirmed, so that Ok means the group is done with it. Should the TERM be
            // lost anyway, the redelivery's dead letter has the same `Nats-Msg-Id` and
            // is dropped as a duplicate.
            acker.double_ack_with(AckKind::Term).await
        }
        .boxed()
    }
}

/// The headers of `headers` that belong to the message: not the dead-letter ones, nor
/// JetStream's `Nats-*` (a copied `Nats-Msg-Id` would deduplicate across groups).
fn own_headers(headers: Option<&HeaderMap>) -> HeaderMap {
    let mut own = HeaderMap::new();
    for (k, vs) in headers.iter().flat_map(|h| h.iter()) {
        let name = AsRef::<str>::as_ref(k);
        if is_ours(name) {
            continue;
        }
        for v in vs {
            own.append(name, v.as_str());
        }
    }
    own
}

fn is_ours(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("nats-") || lower.starts_with("tidings-dead-")
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| AsRef::<str>::as_ref(k).eq_ignore_ascii_case(name))
        .and_then(|(_, vs)| vs.first())
        .map(|v| v.as_str())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `%`, and control characters (a header value cannot hold CR or LF), as `%XX`.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '%' || c.is_ascii_control() {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn check_group(group: &str) -> Result<(), TransportError> {
    is_valid_name(group).map_err(|reason| TransportError::InvalidName {
        kind: "group",
        name: group.to_owned(),
        reason,
    })
}

fn group_error(group: &str, source: impl Into<BoxError>) -> TransportError {
    TransportError::Subscribe {
        group: group.to_owned(),
        source: source.into(),
    }
}

impl NatsTransport {
    /// Up to `limit` dead letters of `group`, oldest first, including those that are not
    /// valid events (which [`DeadLetters::dead_letters`](tidings_core::transport::DeadLetters::dead_letters)
    /// leaves out).
    pub async fn raw_dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<RawDeadLetter>, TransportError> {
        self.scan(group, limit, |_| true).await
    }

    pub(crate) async fn list_dead_letters(
        &self,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, TransportError> {
        let raw = self
            .scan(group, limit, |l| match l.decode() {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(id = %l.id, error = %e,
                        "dead letter is not a valid event; listed by raw_dead_letters only");
                    false
                }
            })
            .await?;
        Ok(raw.iter().filter_map(|l| l.decode().ok()).collect())
    }

    /// Reads the group's dead-letter subject from the start, keeping up to `limit`
    /// letters that `keep` accepts.
    async fn scan(
        &self,
        group: &str,
        limit: usize,
        mut keep: impl FnMut(&RawDeadLetter) -> bool,
    ) -> Result<Vec<RawDeadLetter>, TransportError> {
        check_group(group)?;
        let span = tracing::info_span!("transport.dead_letters", backend = "nats", group);
        async {
            let stream = self.dlq().await.map_err(|e| group_error(group, e))?;
            let subject = self.dlq_subject(group);
            let mut found = Vec::new();
            let mut next = 1;
            while found.len() < limit {
                let message = match stream
                    .get_first_raw_message_by_subject(&subject, next)
                    .await
                {
                    Ok(m) => m,
                    Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => break,
                    Err(e) => return Err(group_error(group, e)),
                };
                next = message.sequence + 1;
                let letter = raw_letter(group, message);
                if keep(&letter) {
                    found.push(letter);
                }
            }
            Ok(found)
        }
        .instrument(span)
        .await
    }

    /// The dead letter `id` of `group`, or `None`.
    async fn find(
        &self,
        stream: &jetstream::stream::Stream,
        group: &str,
        id: &str,
    ) -> Result<Option<jetstream::message::StreamMessage>, TransportError> {
        let Ok(sequence) = id.parse::<u64>() else {
            return Ok(None);
        };
        match stream.get_raw_message(sequence).await {
            Ok(m) if m.subject.as_str() == self.dlq_subject(group) => Ok(Some(m)),
            Ok(_) => Ok(None),
            Err(e) if matches!(e.kind(), LastRawMessageErrorKind::NoMessageFound) => Ok(None),
            Err(e) => Err(group_error(group, e)),
        }
    }

    pub(crate) async fn replay(&self, group: &str, id: &str) -> Result<bool, TransportError> {
        check_group(group)?;
        let span = tracing::info_span!("transport.replay", backend = "nats", group, id);
        async {
            let stream = self.dlq().await.map_err(|e| group_error(group, e))?;
            let Some(message) = self.find(&stream, group, id).await? else {
                return Ok(false);
            };
            let topic = header(&message.headers, DEAD_TOPIC)
                .unwrap_or_default()
                .to_owned();
            check_topic(&topic)?;
            let mut headers = own_headers(Some(&message.headers));
            headers.insert(
                MSG_ID,
                format!(
                    "replay:{}:{}",
                    stream.cached_info().config.name,
                    message.sequence
                ),
            );
            let subject = format!("{}{topic}", self.replay_prefix(group));
            self.js
                .publish_with_headers(subject, headers, message.payload)
                .await
                .map_err(|e| group_error(group, e))?
                .await
                .map_err(|e| group_error(group, e))?;
            // Replayed; a failure to delete leaves the letter listed, and replaying it
            // again within the duplicate window is dropped as a duplicate.
            stream
                .delete_message(message.sequence)
                .await
                .map_err(|e| group_error(group, e))?;
            tracing::info!(topic, "dead letter replayed");
            Ok(true)
        }
        .instrument(span)
        .await
    }

    pub(crate) async fn delete(&self, group: &str, id: &str) -> Result<bool, TransportError> {
        check_group(group)?;
        let span = tracing::info_span!("transport.delete_dead_letter", backend = "nats", group, id);
        async {
            let stream = self.dlq().await.map_err(|e| group_error(group, e))?;
            let Some(message) = self.find(&stream, group, id).await? else {
                return Ok(false);
            };
            match stream.delete_message(message.sequence).await {
                Ok(deleted) => Ok(deleted),
                // Deleted by someone else in between: not found is the answer.
                Err(e) => match self.find(&stream, group, id).await? {
                    None => Ok(false),
                    Some(_) => Err(group_error(group, e)),
                },
            }
        }
        .instrument(span)
        .await
    }

    async fn dlq(&self) -> Result<jetstream::stream::Stream, BoxError> {
        Ok(self.js.get_stream(self.dead_letter_stream_name()).await?)
    }
}

fn raw_letter(group: &str, message: jetstream::message::StreamMessage) -> RawDeadLetter {
    let h = &message.headers;
    RawDeadLetter {
        id: message.sequence.to_string(),
        group: group.to_owned(),
        topic: header(h, DEAD_TOPIC).unwrap_or_default().to_owned(),
        reason: unescape(header(h, DEAD_REASON).unwrap_or_default()),
        attempts: header(h, DEAD_ATTEMPTS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(1),
        dead_at: header(h, DEAD_AT).and_then(|t| t.parse().ok()),
        headers: h
            .iter()
            .filter(|(k, _)| !is_ours(AsRef::<str>::as_ref(k)))
            .flat_map(|(k, vs)| {
                vs.iter()
                    .map(move |v| (k.to_string(), v.as_str().to_owned()))
            })
            .collect(),
        body: message.payload.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_survive_escaping() {
        for r in ["plain", "100% sure", "line 1\r\nline 2\ttab", "é%0A", ""] {
            let e = escape(r);
            assert!(!e.contains(['\r', '\n']));
            assert_eq!(unescape(&e), r);
        }
    }

    #[test]
    fn long_reasons_are_cut_at_a_character() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 8), "abc");
    }

    #[test]
    fn jetstream_and_dead_letter_headers_are_not_the_message_s() {
        assert!(is_ours("Nats-Msg-Id"));
        assert!(is_ours("tidings-dead-reason"));
        assert!(!is_ours("ce-id"));
    }
}
