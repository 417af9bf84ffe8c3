//! The group's reader task: follows the log from the checkpoint and fills the buffer,
//! waiting while the buffer is full.

use std::sync::Arc;

use futures::StreamExt;

use super::checkpoint::CheckpointStore;
use super::delivery::hold_behind;
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
                if st.log_pending.len() < st.buffer {
                    break;
                }
            }
            changed.await;
        }
        let item = events.next().await;
        let (stop, hold) = {
            let mut st = shared.lock();
            let mut hold = Vec::new();
            match item {
                Some(Ok(event)) => {
                    st.read_upto = st.read_upto.max(event.position + 1);
                    // Settled before a restart (saved with the checkpoint): skip.
                    let settled = st.settled_above.contains(&event.position);
                    let wanted = st.filter.matches(event.stream.as_str(), &event.event_type);
                    if !event.stream.is_system() && !settled && wanted {
                        let stream = event.stream.clone();
                        st.push(event, Origin::Log);
                        hold = hold_behind(&mut st, &stream);
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
            (st.failed.is_some(), hold)
        };
        shared.changed.notify_waiters();
        if stop {
            return;
        }
        // Sequenced parking: the stream has unresolved parked events, so this one is
        // parked behind them without being delivered.
        for seq in hold {
            let reason = {
                let st = shared.lock();
                let first = st.entries.get(&seq).map(|e| e.event.stream.clone());
                first.map(|s| format!("held behind the parked events of stream {s}"))
            };
            if let Some(reason) = reason {
                if let Err(e) = shared.park_entry(seq, &reason, 0, true).await {
                    tracing::warn!(group = %shared.name, error = %e, "could not park a held event; it is delivered instead");
                }
            }
        }
    }
}
