//! [`PgGroups`]: consumer groups kept in PostgreSQL, shared by every process that
//! reaches the schema.
//!
//! ```text
//! tidings_groups          name, settings (jsonb), read_upto: the group's cursor on the log
//! tidings_group_members   member uuid, group, name, expires_at (database clock)
//! tidings_group_messages  the group's window: (group, position) → state ready | out | parked,
//!                         attempts, ready_at, delivery_id + member + out_until while out,
//!                         parked_id + reason + held while in the parked list
//! ```
//!
//! A fetch is one short transaction (`sql/queries/group_*.sql`): renew the lease (which
//! also proves it is live), sweep lapsed leases and timed-out messages, top the window up
//! from the log (one fetch at a time per group; the others skip), park held messages
//! (sequenced parking), and hand out ready messages with `FOR UPDATE SKIP LOCKED`.
//! Settling locks the messages by delivery id *and* member *and* state, so a member whose
//! message was taken back changes nothing. Nothing lives in a process's memory that
//! another process needs: two processes are two members like any others. Design,
//! indexes and costs: `docs/decisions/0014-postgres-groups.md`.

mod tx;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tidings_core::group::{
    DeliveryId, GroupDescription, GroupError, GroupInfo, GroupMessage, GroupSettings, Groups,
    MemberLease, ParkedMessage, ParkedSelection, SettleReport, Settlement, validate_group_name,
};
use tidings_core::handler::BoxFuture;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::error::PgStoreError;
use crate::options::PgStoreBuilder;
use crate::store::PgStore;

/// How long a group transaction waits for a row lock before failing, unless told
/// otherwise.
pub const DEFAULT_GROUP_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one statement of a group transaction may run before failing, unless told
/// otherwise.
pub const DEFAULT_GROUP_STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting fetch looks again when nothing woke it, unless told otherwise.
pub const DEFAULT_GROUP_POLL: Duration = Duration::from_millis(100);

/// Consumer groups in the store's PostgreSQL schema: settings, members, leases,
/// in-flight messages and parked lists live in tables, so every process that connects
/// to the schema shares them. Implements [`Groups`]; the contract's module docs give the
/// semantics.
///
/// Clones share one pool and one wake-up signal. A fetch that waits wakes when the log
/// moves (the store's `LISTEN`/`NOTIFY`), when this process settles or releases
/// messages, and otherwise every [`poll_interval`](Self::poll_interval).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tidings_core::group::{GroupSettings, Groups, Settlement};
/// use tidings_postgres::PgGroups;
///
/// let groups = PgGroups::connect("postgres://postgres@127.0.0.1:5432/test").await?;
/// groups.create("billing", GroupSettings::default()).await?;
/// let lease = groups.join("billing", "worker-1").await?;
/// for message in groups.fetch(&lease, 10, Duration::from_secs(1)).await? {
///     println!("{} at {}", message.event.event_type, message.event.position);
///     groups.settle(&lease, vec![(message.id, Settlement::Ack)]).await?;
/// }
/// groups.leave(&lease).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PgGroups {
    store: PgStore,
    shared: Arc<Shared>,
    poll: Duration,
    lock_timeout: Duration,
    statement_timeout: Duration,
}

/// What the clones of one [`PgGroups`] share: a speed-up, never needed for correctness.
#[derive(Default)]
struct Shared {
    /// Woken when this process makes messages ready (settle, leave, replay, update).
    ready: Notify,
    /// Each group's cursor as last seen here: a fetch skips reading the log while the
    /// head it knows of is below it.
    read_upto: Mutex<HashMap<i64, u64>>,
    /// Members joined through this handle and not yet left, by member id, for
    /// [`PgGroups::close`].
    joined: Mutex<HashMap<String, MemberLease>>,
}

impl std::fmt::Debug for PgGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgGroups")
            .field("schema", &self.store.schema())
            .field("poll", &self.poll)
            .field("lock_timeout", &self.lock_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// The consumer groups of this store's schema, sharing its pool and its head watch.
    pub fn groups(&self) -> PgGroups {
        PgGroups::new(self)
    }
}

impl PgGroups {
    /// The groups of `store`'s schema.
    pub fn new(store: &PgStore) -> Self {
        Self {
            store: store.clone(),
            shared: Arc::default(),
            poll: DEFAULT_GROUP_POLL,
            lock_timeout: DEFAULT_GROUP_LOCK_TIMEOUT,
            statement_timeout: DEFAULT_GROUP_STATEMENT_TIMEOUT,
        }
    }

    /// Connects to `url` (schema `tidings`), creating the tables if needed.
    pub async fn connect(url: &str) -> Result<Self, PgStoreError> {
        Self::connect_with(PgStore::builder(url)).await
    }

    /// Connects with `options` (schema, pool size, ...), creating the tables if needed.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), tidings_postgres::PgStoreError> {
    /// use tidings_postgres::{PgGroups, PgStore};
    /// let groups = PgGroups::connect_with(
    ///     PgStore::builder("postgres://postgres@127.0.0.1:5432/test").schema("orders"),
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(options: PgStoreBuilder) -> Result<Self, PgStoreError> {
        Ok(Self::new(&options.connect().await?))
    }

    /// How often a waiting fetch looks again when nothing woke it (default 100 ms, at
    /// least 1 ms). Wake-ups for appends and for this process's settlements come at
    /// once; this bounds the wait for other processes' settlements, retry backoffs and
    /// lapsed leases.
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(1));
        self
    }

    /// How long a group transaction waits for a row lock (default 2 s) and how long one
    /// of its statements may run (default 10 s), so a stuck session cannot hang a
    /// fetch: past either, the call fails with [`GroupError::Backend`] and changes
    /// nothing. Each is at least 1 ms.
    pub fn timeouts(mut self, lock: Duration, statement: Duration) -> Self {
        self.lock_timeout = lock.max(Duration::from_millis(1));
        self.statement_timeout = statement.max(Duration::from_millis(1));
        self
    }

    /// The store the groups read.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// Leaves every group as each member joined through this handle (or its clones)
    /// and not yet left, so their messages go to other members at once: call it on a
    /// graceful shutdown. A process that dies without it loses nothing either; its
    /// members' messages move once their leases lapse. Returns the first failure
    /// after trying every member.
    pub async fn close(&self) -> Result<(), GroupError> {
        let leases: Vec<MemberLease> = lock(&self.shared.joined).values().cloned().collect();
        let mut first_error = None;
        for lease in leases {
            if let Err(e) = self.leave(&lease).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits up to `wait` for messages, running the fetch transaction whenever
    /// something may have changed.
    async fn fetch_waiting(
        &self,
        lease: &MemberLease,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<GroupMessage>, GroupError> {
        if max == 0 {
            return Err(GroupError::InvalidRequest(
                "fetch asks for at least 1 message".to_owned(),
            ));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut head = self.store.head_watch();
        loop {
            head.borrow_and_update();
            let ready = self.shared.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            let got = tx::fetch_once(self, lease, max).await?;
            let now = tokio::time::Instant::now();
            if !got.messages.is_empty() || now >= deadline {
                return Ok(got.messages);
            }
            if got.more_to_read {
                continue;
            }
            // A nap shorter than the lease keeps the lease alive while waiting.
            let nap = self.poll.min(got.lease / 3).min(deadline - now);
            tokio::select! {
                changed = head.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(nap).await;
                    }
                }
                () = &mut ready => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }
}

/// Whether an event with `position` may be in the log past the group's cursor, as far
/// as this process has heard.
fn log_may_have_more(head: Option<u64>, read_upto: Option<u64>) -> bool {
    match (head, read_upto) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(head), Some(upto)) => head >= upto,
    }
}

/// Turns a settlement batch into rows for `group_settle_apply.sql`.
fn settle_plan(
    settings: &GroupSettings,
    held: &HashMap<DeliveryId, tx::Held>,
    settlements: Vec<(DeliveryId, Settlement)>,
) -> (tx::SettleRows, Vec<DeliveryId>, bool) {
    let mut rows = tx::SettleRows::default();
    let mut stale = Vec::new();
    let mut parked = false;
    let mut seen = std::collections::HashSet::new();
    for (id, settlement) in settlements {
        let Some(h) = held.get(&id).filter(|_| seen.insert(id)) else {
            stale.push(id);
            continue;
        };
        let (action, attempts, delay, reason) = match settlement {
            Settlement::Ack | Settlement::Skip => ("done", h.attempts, Duration::ZERO, None),
            Settlement::Retry { reason } => {
                let failed = h.attempts.saturating_add(1);
                if failed > settings.max_retries {
                    parked = true;
                    ("park", failed, Duration::ZERO, Some(reason))
                } else {
                    ("retry", failed, settings.backoff(failed), Some(reason))
                }
            }
            Settlement::Park { reason } => {
                parked = true;
                (
                    "park",
                    h.attempts.saturating_add(1),
                    Duration::ZERO,
                    Some(reason),
                )
            }
        };
        rows.push(h.position, action, attempts, delay, reason);
    }
    (rows, stale, parked)
}

impl Groups for PgGroups {
    fn create(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> BoxFuture<'_, Result<GroupInfo, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            validate_group_name(&name)?;
            settings.validate()?;
            tx::create(self, &name, &settings).await?;
            Ok(GroupInfo { name, settings })
        })
    }

    fn update(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> BoxFuture<'_, Result<GroupInfo, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            validate_group_name(&name)?;
            settings.validate()?;
            tx::update(self, &name, &settings).await?;
            self.shared.ready.notify_waiters();
            Ok(GroupInfo { name, settings })
        })
    }

    fn delete(&self, name: &str) -> BoxFuture<'_, Result<(), GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            validate_group_name(&name)?;
            let id = tx::delete(self, &name).await?;
            lock(&self.shared.read_upto).remove(&id);
            Ok(())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>, GroupError>> {
        Box::pin(tx::list(self))
    }

    fn describe(&self, name: &str) -> BoxFuture<'_, Result<GroupDescription, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            validate_group_name(&name)?;
            tx::describe(self, &name).await
        })
    }

    fn join(
        &self,
        group: &str,
        member_name: &str,
    ) -> BoxFuture<'_, Result<MemberLease, GroupError>> {
        let group = group.to_owned();
        let member_name = member_name.to_owned();
        Box::pin(async move {
            validate_group_name(&group)?;
            let lease = tx::join(self, &group, &member_name).await?;
            lock(&self.shared.joined).insert(lease.member.clone(), lease.clone());
            Ok(lease)
        })
    }

    fn heartbeat(&self, lease: &MemberLease) -> BoxFuture<'_, Result<(), GroupError>> {
        let lease = lease.clone();
        Box::pin(async move { tx::heartbeat(self, &lease).await })
    }

    fn leave(&self, lease: &MemberLease) -> BoxFuture<'_, Result<(), GroupError>> {
        let lease = lease.clone();
        Box::pin(async move {
            let released = tx::leave(self, &lease).await?;
            lock(&self.shared.joined).remove(&lease.member);
            if released {
                self.shared.ready.notify_waiters();
            }
            Ok(())
        })
    }

    fn fetch(
        &self,
        lease: &MemberLease,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<GroupMessage>, GroupError>> {
        let lease = lease.clone();
        let span = tracing::debug_span!(
            "group_fetch",
            group = %lease.group,
            member = %lease.member,
            max,
            wait_ms = wait.as_millis() as u64
        );
        Box::pin(async move { self.fetch_waiting(&lease, max, wait).await }.instrument(span))
    }

    fn settle(
        &self,
        lease: &MemberLease,
        settlements: Vec<(DeliveryId, Settlement)>,
    ) -> BoxFuture<'_, Result<SettleReport, GroupError>> {
        let lease = lease.clone();
        let span = tracing::debug_span!(
            "group_settle",
            group = %lease.group,
            member = %lease.member,
            settlements = settlements.len()
        );
        Box::pin(
            async move {
                let report = tx::settle(self, &lease, settlements).await?;
                if report.settled > 0 {
                    self.shared.ready.notify_waiters();
                }
                Ok(report)
            }
            .instrument(span),
        )
    }

    fn parked(
        &self,
        group: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ParkedMessage>, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move {
            validate_group_name(&group)?;
            tx::parked(self, &group, limit).await
        })
    }

    fn replay_parked(
        &self,
        group: &str,
        which: ParkedSelection,
    ) -> BoxFuture<'_, Result<u64, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move {
            validate_group_name(&group)?;
            let n = tx::replay_parked(self, &group, which).await?;
            if n > 0 {
                self.shared.ready.notify_waiters();
            }
            Ok(n)
        })
    }

    fn delete_parked(
        &self,
        group: &str,
        which: ParkedSelection,
    ) -> BoxFuture<'_, Result<u64, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move {
            validate_group_name(&group)?;
            tx::delete_parked(self, &group, which).await
        })
    }
}

/// A lock on what the clones share, even after a panic elsewhere (it holds hints).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_read_only_when_it_may_have_moved() {
        assert!(log_may_have_more(None, None));
        assert!(!log_may_have_more(None, Some(0)));
        assert!(log_may_have_more(Some(4), Some(4)));
        assert!(!log_may_have_more(Some(3), Some(4)));
    }

    #[test]
    fn settlements_become_rows_and_stale_ids() {
        let settings = GroupSettings {
            max_retries: 1,
            ..GroupSettings::default()
        };
        let held: HashMap<DeliveryId, tx::Held> = [
            (
                1,
                tx::Held {
                    position: 10,
                    attempts: 0,
                },
            ),
            (
                2,
                tx::Held {
                    position: 11,
                    attempts: 1,
                },
            ),
            (
                3,
                tx::Held {
                    position: 12,
                    attempts: 0,
                },
            ),
        ]
        .into_iter()
        .collect();
        let retry = || Settlement::Retry {
            reason: "boom".to_owned(),
        };
        let (rows, stale, parked) = settle_plan(
            &settings,
            &held,
            vec![
                (1, retry()),
                (2, retry()),
                (3, Settlement::Ack),
                (3, Settlement::Ack),
                (9, Settlement::Skip),
            ],
        );
        assert_eq!(stale, vec![3, 9]);
        assert!(
            parked,
            "the second failure of a message with 1 retry parks it"
        );
        assert_eq!(rows.actions, vec!["retry", "park", "done"]);
        assert_eq!(rows.attempts, vec![1, 2, 0]);
        assert_eq!(rows.delays_ms, vec![100, 0, 0]);
    }
}
