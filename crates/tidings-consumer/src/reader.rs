//! The group's reader task: follows the log from the checkpoint and fills the buffer,
//! waiting while the buffer is full.

use std::sync::Arc;

use futures::StreamExt;

use super::checkpoint::CheckpointStore;
use super::error::ConsumerError;
use super::group::{Origin, Shared};
use tidings_core::store::{EventStore, Filter, Position, Start};

/// Stops the reader task when the last handle of the group is dropped.
pub(crate) struct ReaderGuard(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reader task: buffers matching, non-system events from `from` on.
pub(crate) async fn read_log<S: EventStore, C: CheckpointStore>(
    shared: Arc<Shared<S, C>>,
    from: Position,
    filter: Filter,
) {
    let mut events = std::pin::pin!(shared.store.subscribe_all(Start::At(from), filter));
    loop {
        loop {
            let changed = shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            {
                let st = shared.lock();
                if st.closed {
                    return;
                }
                if st.log_pending.len() < shared.buffer {
                    break;
                }
            }
            changed.await;
        }
        let item = events.next().await;
        let mut st = shared.lock();
        match item {
            Some(Ok(event)) => {
                st.read_upto = st.read_upto.max(event.position + 1);
                // Settled before a restart (saved with the checkpoint): skip.
                let settled = st.settled_above.contains(&event.position);
                if !event.stream.is_system() && !settled {
                    st.push(event, Origin::Log);
                }
            }
            Some(Err(source)) => {
                tracing::error!(group = %shared.name, error = %source, "consumer group subscription failed");
                st.failed = Some(ConsumerError::Subscription {
                    group: shared.name.clone(),
                    source,
                });
            }
            None => {
                st.failed = Some(ConsumerError::Subscription {
                    group: shared.name.clone(),
                    source: tidings_core::store::StoreError::Closed,
                });
            }
        }
        let stop = st.failed.is_some();
        drop(st);
        shared.changed.notify_waiters();
        if stop {
            return;
        }
    }
}
