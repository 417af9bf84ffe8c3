//! A pull from a durable consumer that outlives connection loss: errors are logged and
//! the pull is opened again with backoff, so the stream of messages never ends.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{Stream, StreamExt};
use tidings_core::transport::BoxError;

/// The first wait before opening a failed pull again.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A durable pull consumer on a stream, and how to (re)open a pull from it.
pub(crate) struct Pull {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: String,
    pub(crate) group: String,
    pub(crate) batch: usize,
    pub(crate) config: consumer::pull::Config,
}

impl Pull {
    /// Creates (or updates) the consumer and starts pulling. Fails when the server does
    /// not answer; after that, the stream keeps itself going.
    pub(crate) async fn open(
        self,
    ) -> Result<impl Stream<Item = jetstream::Message> + Send + 'static, BoxError> {
        let first = self.pull().await?;
        Ok(futures::stream::unfold(
            (self, Some(first), FIRST_BACKOFF),
            |(this, mut current, mut backoff)| async move {
                loop {
                    let Some(messages) = current.as_mut() else {
                        tokio::time::sleep(backoff).await;
                        match this.pull().await {
                            Ok(m) => {
                                tracing::info!(group = %this.group, stream = %this.stream,
                                    "pulling again");
                                current = Some(m);
                            }
                            Err(e) => {
                                tracing::warn!(group = %this.group, stream = %this.stream,
                                    error = %e, retry_in = ?backoff, "opening a pull failed");
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                        }
                        continue;
                    };
                    match messages.next().await {
                        Some(Ok(m)) => {
                            backoff = FIRST_BACKOFF;
                            return Some((m, (this, current, backoff)));
                        }
                        Some(Err(e)) => {
                            tracing::warn!(group = %this.group, stream = %this.stream,
                                error = %e, retry_in = ?backoff,
                                "pulling failed; opening the pull again");
                            current = None;
                        }
                        None => {
                            tracing::warn!(group = %this.group, stream = %this.stream,
                                retry_in = ?backoff, "the pull ended; opening it again");
                            current = None;
                        }
                    }
                }
            },
        ))
    }

    async fn pull(&self) -> Result<consumer::pull::Stream, BoxError> {
        let consumer: consumer::PullConsumer = self
            .js
            .create_consumer_on_stream(self.config.clone(), self.stream.as_str())
            .await?;
        Ok(consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .messages()
            .await?)
    }
}
