//! The connection behind a [`RabbitTransport`](crate::RabbitTransport): opened once,
//! reopened after it drops, with exponential backoff and jitter between attempts.

use std::collections::BTreeSet;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::time::Instant;

use crate::{RabbitConfig, RabbitError};

/// One open connection and its confirming publisher channel.
#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) connection: Arc<Connection>,
    pub(crate) publisher: Channel,
}

impl Live {
    fn usable(&self) -> bool {
        self.connection.status().connected() && self.publisher.status().connected()
    }
}

/// What the transport's clones share.
pub(crate) struct Inner {
    pub(crate) config: RabbitConfig,
    state: tokio::sync::Mutex<State>,
    /// Queues declared through this transport (group queues and their dead-letter
    /// queues), for [`RabbitTransport::delete_topology`](crate::RabbitTransport::delete_topology).
    pub(crate) queues: Mutex<BTreeSet<String>>,
    /// Serializes this process's scans of dead-letter queues (see `dead.rs`).
    pub(crate) scan_lock: tokio::sync::Mutex<()>,
}

struct State {
    live: Option<Live>,
    /// The wait before the next attempt after a failed one.
    backoff: Duration,
    /// No attempt before this instant (set after a failed attempt).
    retry_at: Option<Instant>,
    closed: bool,
}

impl Inner {
    /// Connects once: the transport starts only with a live connection.
    pub(crate) async fn connect(config: RabbitConfig) -> Result<Self, RabbitError> {
        let live = open(&config).await?;
        let backoff = config.reconnect_min;
        Ok(Self {
            config,
            state: tokio::sync::Mutex::new(State {
                live: Some(live),
                backoff,
                retry_at: None,
                closed: false,
            }),
            queues: Mutex::default(),
            scan_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The live connection, reconnecting when it dropped. While the broker stays
    /// unreachable, one caller per backoff period makes an attempt (bounded by the
    /// connect timeout); the others get [`RabbitError::Disconnected`] at once.
    pub(crate) async fn live(&self) -> Result<Live, RabbitError> {
        let mut s = self.state.lock().await;
        if s.closed {
            return Err(RabbitError::Closed);
        }
        if let Some(live) = &s.live {
            if live.usable() {
                return Ok(live.clone());
            }
            if live.connection.status().connected() {
                // Only the publisher channel closed (a channel error): reopen it.
                let connection = live.connection.clone();
                if let Ok(Ok(publisher)) = tokio::time::timeout(
                    self.config.connect_timeout,
                    publisher_channel(&connection, &self.config),
                )
                .await
                {
                    let live = Live {
                        connection,
                        publisher,
                    };
                    s.live = Some(live.clone());
                    return Ok(live);
                }
            }
            tracing::warn!(exchange = %self.config.exchange, "the connection to RabbitMQ dropped");
            s.live = None;
        }
        let now = Instant::now();
        if let Some(at) = s.retry_at
            && now < at
        {
            return Err(RabbitError::Disconnected { retry_in: at - now });
        }
        match open(&self.config).await {
            Ok(live) => {
                tracing::info!(exchange = %self.config.exchange, "reconnected to RabbitMQ");
                s.live = Some(live.clone());
                s.backoff = self.config.reconnect_min;
                s.retry_at = None;
                Ok(live)
            }
            Err(e) => {
                let wait = jittered(s.backoff);
                tracing::warn!(error = %e, retry_in = ?wait, "reconnecting to RabbitMQ failed");
                s.retry_at = Some(Instant::now() + wait);
                s.backoff = (s.backoff * 2).min(self.config.reconnect_max);
                Err(e)
            }
        }
    }

    /// Runs one exchange with the broker within the request timeout. Past it, the
    /// connection is dropped (the next call opens a new one) and the call fails with
    /// [`RabbitError::Timeout`]: lost frames or a half-open socket never hold a caller.
    pub(crate) async fn bounded<T>(
        &self,
        what: &'static str,
        request: impl Future<Output = Result<T, RabbitError>>,
    ) -> Result<T, RabbitError> {
        let after = self.config.request_timeout;
        match tokio::time::timeout(after, request).await {
            Ok(result) => result,
            Err(_) => {
                tracing::warn!(exchange = %self.config.exchange, what, ?after,
                    "RabbitMQ did not answer in time; dropping the connection");
                self.drop_connection().await;
                Err(RabbitError::Timeout { what, after })
            }
        }
    }

    /// Forgets the live connection so that the next call reconnects; the old one is
    /// closed in the background (its io loop ends when the socket does).
    async fn drop_connection(&self) {
        let old = self.state.lock().await.live.take();
        if let Some(old) = old
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let after = self.config.request_timeout;
            rt.spawn(async move {
                let _ = tokio::time::timeout(
                    after,
                    old.connection.close(200, "request timed out".into()),
                )
                .await;
            });
        }
    }

    /// Closes the connection; the transport does not reconnect afterwards.
    pub(crate) async fn close(&self) -> Result<(), RabbitError> {
        let live = {
            let mut s = self.state.lock().await;
            s.closed = true;
            s.live.take()
        };
        match live {
            Some(live) if live.connection.status().connected() => {
                let after = self.config.request_timeout;
                match tokio::time::timeout(after, live.connection.close(200, "bye".into())).await {
                    Ok(closed) => Ok(closed?),
                    Err(_) => Err(RabbitError::Timeout {
                        what: "closing the connection",
                        after,
                    }),
                }
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn remember_queue(&self, queue: &str) {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_owned());
    }
}

/// Opens a connection, its confirming publisher channel, and declares the exchange,
/// all within the connect timeout.
async fn open(config: &RabbitConfig) -> Result<Live, RabbitError> {
    let attempt = async {
        let connection = Connection::connect(&config.url, ConnectionProperties::default()).await?;
        let publisher = publisher_channel(&connection, config).await?;
        Ok::<_, RabbitError>(Live {
            connection: Arc::new(connection),
            publisher,
        })
    };
    tokio::time::timeout(config.connect_timeout, attempt)
        .await
        .map_err(|_| RabbitError::ConnectTimeout(config.connect_timeout))?
}

async fn publisher_channel(
    connection: &Connection,
    config: &RabbitConfig,
) -> Result<Channel, RabbitError> {
    let publisher = connection.create_channel().await?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
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
        .await?;
    Ok(publisher)
}

/// `base` scaled by a random factor in [0.5, 1.0), so that many clients cut off at once
/// do not come back in lockstep.
pub(crate) fn jittered(base: Duration) -> Duration {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    // 53 random bits as a fraction in [0, 1).
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(0.5 + fraction / 2.0)
}

/// A subscriber's own backoff between attempts to resume consuming.
pub(crate) struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(config: &RabbitConfig) -> Self {
        Self {
            next: config.reconnect_min,
            min: config.reconnect_min,
            max: config.reconnect_max,
        }
    }

    /// The next wait (jittered), doubling the one after.
    pub(crate) fn step(&mut self) -> Duration {
        let wait = jittered(self.next);
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter() {
        let config = RabbitConfig::new("amqp://x")
            .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(400));
        let mut b = Backoff::new(&config);
        for base in [100, 200, 400, 400] {
            let wait = b.step();
            let base = Duration::from_millis(base);
            assert!(wait >= base / 2 && wait < base, "{wait:?} for {base:?}");
        }
        b.reset();
        assert!(b.step() < Duration::from_millis(100));
    }
}
