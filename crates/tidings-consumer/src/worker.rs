//! [`GroupWorker`]: a member of a consumer group of any [`Groups`] backend that runs a
//! handler on what it fetches.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tidings_core::group::{GroupError, GroupMessage, Groups, MemberLease, Settlement};
use tidings_core::handler::{EventHandler, call_handler};

/// Messages fetched at a time by default.
pub const DEFAULT_WORKER_BATCH: usize = 64;
/// How long a fetch waits for the first message by default.
pub const DEFAULT_WORKER_WAIT: Duration = Duration::from_secs(1);

/// What a [`GroupWorker`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStats {
    /// Messages the handler handled (acknowledged).
    pub handled: u64,
    /// Messages the handler failed on (settled for a retry).
    pub failed: u64,
    /// Settlements the group reported stale: the message had been taken back
    /// (message timeout, lapsed lease) and goes, or went, to another member.
    pub stale: u64,
    /// Times the worker joined again after its lease lapsed.
    pub rejoined: u64,
}

/// Joins a consumer group as one member and runs a handler on every message it
/// fetches, until told to stop; works over any [`Groups`] backend (hosted in this
/// process, PostgreSQL, a server's HTTP routes).
///
/// - A heartbeat every third of the lease keeps the lease alive while batches are
///   handled; if it lapses anyway, the worker joins again.
/// - Each message is handled through [`call_handler`] in a `tracing` span
///   `group_handler` (group, member, event, attempt), with the event as the
///   [`Cause`](tidings_core::handler::Cause) and the attempt as the current one.
/// - A batch is settled in one call: success acknowledges, failure (or a panic)
///   settles for a retry with the error's message.
/// - On shutdown the worker finishes the message in hand, settles what it handled,
///   and leaves: the rest of its batch goes to other members at once.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
/// use tidings::bus::handler_fn;
/// use tidings::consumer::{GroupWorker, HostedGroups};
/// use tidings_core::group::{GroupSettings, Groups};
/// let store = InMemoryStore::new();
/// let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
/// store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
/// let groups = Arc::new(HostedGroups::open(store).await.unwrap());
/// groups.create("emails", GroupSettings::default()).await.unwrap();
///
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// let worker = GroupWorker::new(groups.clone(), "emails", "mailer");
/// let run = tokio::spawn(async move {
///     worker.run(&handler_fn(|_e| async { Ok(()) }), async { stopped.await.ok(); }).await
/// });
/// while groups.stats("emails").unwrap().acked == 0 {
///     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
/// }
/// stop.send(()).unwrap();
/// assert_eq!(run.await.unwrap().unwrap().handled, 1);
/// # });
/// ```
pub struct GroupWorker<G: Groups + ?Sized> {
    groups: Arc<G>,
    group: String,
    member_name: String,
    batch: usize,
    wait: Duration,
}

impl<G: Groups + ?Sized> std::fmt::Debug for GroupWorker<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWorker")
            .field("group", &self.group)
            .field("member_name", &self.member_name)
            .field("batch", &self.batch)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

impl<G: Groups + ?Sized> GroupWorker<G> {
    /// A worker that joins `group` of `groups` as `member_name`.
    pub fn new(groups: Arc<G>, group: impl Into<String>, member_name: impl Into<String>) -> Self {
        Self {
            groups,
            group: group.into(),
            member_name: member_name.into(),
            batch: DEFAULT_WORKER_BATCH,
            wait: DEFAULT_WORKER_WAIT,
        }
    }

    /// Fetches up to `max` messages at a time (default [`DEFAULT_WORKER_BATCH`]; at
    /// least 1).
    pub fn batch(mut self, max: usize) -> Self {
        self.batch = max.max(1);
        self
    }

    /// Waits up to `wait` in each fetch for the first message (default
    /// [`DEFAULT_WORKER_WAIT`]).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Joins, then handles messages until `shutdown` completes; leaves and returns what
    /// it did. Fails when the group does not exist (or is deleted meanwhile); other
    /// failures of the backend are logged and tried again after a pause.
    pub async fn run<H: EventHandler + ?Sized>(
        &self,
        handler: &H,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<WorkerStats, GroupError> {
        let lease = Mutex::new(self.groups.join(&self.group, &self.member_name).await?);
        let current = || lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let heartbeat = async {
            loop {
                let l = current();
                tokio::time::sleep((l.lease / 3).max(Duration::from_millis(10))).await;
                if let Err(e) = self.groups.heartbeat(&l).await {
                    tracing::debug!(group = %self.group, member = %l.member, error = %e, "heartbeat failed");
                }
            }
        };
        let work = self.work(handler, shutdown, &lease);
        let result = tokio::select! {
            r = work => r,
            () = heartbeat => Ok(WorkerStats::default()),
        };
        let l = current();
        if let Err(e) = self.groups.leave(&l).await {
            tracing::debug!(group = %self.group, member = %l.member, error = %e, "leave failed");
        }
        result
    }

    async fn work<H: EventHandler + ?Sized>(
        &self,
        handler: &H,
        shutdown: impl Future<Output = ()> + Send,
        lease: &Mutex<MemberLease>,
    ) -> Result<WorkerStats, GroupError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut stats = WorkerStats::default();
        let current = || lease.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut pause = Duration::from_millis(100);
        loop {
            let l = current();
            let fetched = tokio::select! {
                () = &mut shutdown => return Ok(stats),
                r = self.groups.fetch(&l, self.batch, self.wait) => r,
            };
            let messages = match fetched {
                Ok(m) => {
                    pause = Duration::from_millis(100);
                    m
                }
                Err(GroupError::LeaseExpired { .. }) => {
                    self.rejoin(lease, &mut stats).await?;
                    continue;
                }
                Err(e @ (GroupError::NotFound { .. } | GroupError::InvalidRequest(_))) => {
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(group = %self.group, member = %l.member, error = %e, "fetch failed; trying again");
                    tokio::select! {
                        () = &mut shutdown => return Ok(stats),
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let mut settlements = Vec::with_capacity(messages.len());
            let mut stopping = false;
            for m in &messages {
                if futures::poll!(&mut shutdown).is_ready() {
                    stopping = true;
                    break;
                }
                match self.handle(handler, &l, m).await {
                    Ok(()) => {
                        stats.handled += 1;
                        settlements.push((m.id, Settlement::Ack));
                    }
                    Err(reason) => {
                        stats.failed += 1;
                        settlements.push((m.id, Settlement::Retry { reason }));
                    }
                }
            }
            if !settlements.is_empty() {
                match self.groups.settle(&l, settlements).await {
                    Ok(report) => stats.stale += report.stale.len() as u64,
                    Err(GroupError::LeaseExpired { .. }) if !stopping => {
                        self.rejoin(lease, &mut stats).await?;
                    }
                    Err(e @ GroupError::NotFound { .. }) => return Err(e),
                    Err(e) => {
                        tracing::warn!(group = %self.group, member = %l.member, error = %e, "settle failed; the messages come again");
                    }
                }
            }
            if stopping {
                return Ok(stats);
            }
        }
    }

    async fn rejoin(
        &self,
        lease: &Mutex<MemberLease>,
        stats: &mut WorkerStats,
    ) -> Result<(), GroupError> {
        let fresh = self.groups.join(&self.group, &self.member_name).await?;
        tracing::info!(group = %self.group, member = %fresh.member, "lease lapsed; joined again");
        *lease.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        stats.rejoined += 1;
        Ok(())
    }

    async fn handle<H: EventHandler + ?Sized>(
        &self,
        handler: &H,
        lease: &MemberLease,
        m: &GroupMessage,
    ) -> Result<(), String> {
        let event = &m.event;
        let span = tracing::info_span!(
            "group_handler",
            group = %self.group,
            member = %lease.member,
            member_name = %self.member_name,
            event_type = %event.event_type,
            event_id = %event.event_id,
            stream = %event.stream,
            position = event.position,
            attempt = m.attempt,
            replay = m.replay,
            outcome = tracing::field::Empty,
        );
        let result = call_handler(handler, event, Some(m.attempt), &span).await;
        result.map_err(|e| {
            tracing::warn!(parent: &span, error = %e, "group handler failed");
            e.message().to_owned()
        })
    }
}
