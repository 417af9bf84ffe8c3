//! [`HostedGroups`]: consumer groups of any event store, hosted in this process for
//! members anywhere.

mod registry;

pub use registry::GROUPS_STREAM;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::breaker::CircuitBreaker;
use super::checkpoint::StoreCheckpoints;
use super::delivery::{Done, Failed, fail_entry};
use super::error::ConsumerError;
use super::group::{ConsumerGroup, Due, Hosting, Origin, Status, take_batch};
use super::parked::{ParkedEvent, Resolution, read_parked, replay_record, resolved_record};
use super::retry::{Jitter, RetryPolicy};
use registry::{Change, Registered};
use tidings_core::group::{
    DeliveryId, GroupDescription, GroupError, GroupInfo, GroupMessage, GroupSettings, Groups,
    MemberInfo, MemberLease, ParkedMessage, ParkedSelection, SettleReport, Settlement, StartFrom,
    validate_group_name,
};
use tidings_core::handler::BoxFuture;
use tidings_core::store::{EventStore, Position, Revision};
use tidings_core::stream::StreamId;

/// Settled events between checkpoint saves (besides the timer).
const CHECKPOINT_EVERY: u64 = 128;
/// How often a moved checkpoint is saved.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// How often a registry change is tried again after another process changed it.
const REGISTRY_ATTEMPTS: usize = 5;

/// A hosted group's counters (totals since this process started it) and state, for
/// logs and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupStats {
    /// Messages handed to members (every attempt counts).
    pub delivered: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Failed attempts that left a message to be tried again (retries, lease
    /// expiries, message timeouts).
    pub retried: u64,
    /// Messages parked (after their last attempt, or on request).
    pub parked: u64,
    /// Events parked behind an earlier parked one of their stream (sequenced
    /// parking), without delivery.
    pub held: u64,
    /// Messages settled unhandled.
    pub skipped: u64,
    /// Messages taken back after the message timeout.
    pub timed_out: u64,
    /// Messages taken back because their member's lease lapsed.
    pub expired: u64,
    /// Parked messages queued again by a replay.
    pub replayed: u64,
    /// Messages given back by members that left.
    pub released: u64,
    /// The saved checkpoint.
    pub checkpoint: Position,
    /// Messages read and not yet settled.
    pub pending: usize,
    /// Messages out with members now.
    pub in_flight: usize,
    /// Live members.
    pub members: usize,
}

/// The consumer groups of one store, hosted in this process for members anywhere;
/// clones share them. Implements [`Groups`]: members in this process call it directly
/// (or run a [`GroupWorker`](crate::GroupWorker)), members elsewhere reach it through
/// the server's HTTP routes.
///
/// Each hosted group runs the engine of [`ConsumerGroup`] (one reader following the
/// log into a bounded buffer, per-stream order, a fenced checkpoint, the parked
/// stream) and adds what members in other processes need: leases, delivery ids, a
/// message timeout, and the round-robin strategy.
///
/// - **Settings** live in the store's `$groups` stream (records created, updated,
///   deleted, appended with expected versions). [`HostedGroups::open`] loads them and
///   starts every group. A group's checkpoint (`$checkpoint-<name>@<n>`) and parked
///   stream (`$parked-<name>@<n>`) carry its incarnation `n` (the revision of its
///   creation record), so a group deleted and created again starts fresh.
/// - **Leases.** A member's lease is renewed by every call it makes. A timer per group
///   (and every member call, before anything else) takes back what lapsed members and
///   timed-out messages hold: ready again, one failed attempt counted, parked after
///   the last one. Leases live in this process only: after a restart members join
///   again.
/// - **Delivery ids** are fresh per hand-out; an id taken back is stale for good.
/// - **Checkpoints** are saved every 128 settled events, every 100 ms when they moved,
///   and on [`HostedGroups::shutdown`]; a restart delivers again what was settled
///   after the last save (at-least-once).
///
/// See `docs/decisions/0013-groups-across-processes.md`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::time::Duration;
/// use tidings::{Enricher, EventAppender, ExpectedVersion, InMemoryStore, NewEvent, StreamId};
/// use tidings::consumer::HostedGroups;
/// use tidings_core::group::{GroupSettings, Groups, Settlement};
/// let store = InMemoryStore::new();
/// let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
/// store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
///
/// let groups = HostedGroups::open(store).await.unwrap();
/// groups.create("billing", GroupSettings::default()).await.unwrap();
/// let lease = groups.join("billing", "worker-a").await.unwrap();
/// let messages = groups.fetch(&lease, 10, Duration::from_secs(1)).await.unwrap();
/// assert_eq!(messages[0].event.event_type, "OrderCreated");
/// let report = groups.settle(&lease, vec![(messages[0].id, Settlement::Ack)]).await.unwrap();
/// assert_eq!(report.settled, 1);
/// assert_eq!(groups.stats("billing").unwrap().acked, 1);
/// groups.shutdown().await.unwrap();
/// # });
/// ```
pub struct HostedGroups<S: EventStore> {
    inner: Arc<Inner<S>>,
}

impl<S: EventStore> Clone for HostedGroups<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: EventStore> std::fmt::Debug for HostedGroups<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.inner.groups().keys().cloned().collect();
        f.debug_struct("HostedGroups")
            .field("groups", &names)
            .finish_non_exhaustive()
    }
}

struct Inner<S: EventStore> {
    store: S,
    /// Serializes changes of the registry; holds the `$groups` version last seen.
    registry: tokio::sync::Mutex<Option<Revision>>,
    groups: RwLock<BTreeMap<String, Arc<Hosted<S>>>>,
}

impl<S: EventStore> Inner<S> {
    fn groups(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Hosted<S>>>> {
        self.groups.read().unwrap_or_else(|p| p.into_inner())
    }

    fn groups_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Hosted<S>>>> {
        self.groups.write().unwrap_or_else(|p| p.into_inner())
    }

    fn group(&self, name: &str) -> Result<Arc<Hosted<S>>, GroupError> {
        self.groups()
            .get(name)
            .cloned()
            .ok_or_else(|| GroupError::NotFound {
                group: name.to_owned(),
            })
    }
}

/// One member's lease.
#[derive(Debug)]
struct Slot {
    id: u64,
    name: String,
    expires: Instant,
    /// Fetches waiting now: a member waiting for messages is alive.
    fetching: u32,
}

#[derive(Debug, Default)]
struct Members {
    by_lease: HashMap<String, Slot>,
    /// Hand-outs not yet settled: delivery id to (member, entry).
    deliveries: HashMap<DeliveryId, (u64, u64)>,
    next_id: u64,
}

/// One running group.
struct Hosted<S: EventStore> {
    name: String,
    incarnation: Revision,
    start: Position,
    settings: Mutex<GroupSettings>,
    engine: ConsumerGroup<S, StoreCheckpoints<S>>,
    members: Mutex<Members>,
    ticker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl<S: EventStore> Drop for Hosted<S> {
    fn drop(&mut self) {
        if let Some(t) = self
            .ticker
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            t.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The engine's retry policy for `settings`: `max_retries` retries after the first
/// attempt, the settings' exponential backoff without jitter.
fn retry_policy(settings: &GroupSettings) -> RetryPolicy {
    RetryPolicy::new(settings.max_retries.saturating_add(1))
        .base(settings.retry_base)
        .cap(settings.retry_cap)
        .jitter(Jitter::None)
}

fn to_group_error(group: &str, e: ConsumerError) -> GroupError {
    use super::checkpoint::CheckpointError;
    match e {
        ConsumerError::Checkpoint(CheckpointError::Conflict { .. }) => GroupError::Conflict {
            group: group.to_owned(),
            reason: e.to_string(),
        },
        ConsumerError::Checkpoint(CheckpointError::Store { source, .. })
        | ConsumerError::Parked { source, .. }
        | ConsumerError::Subscription { source, .. } => GroupError::Store(source),
        other => GroupError::Backend(other.to_string()),
    }
}

fn parked_message(p: ParkedEvent) -> ParkedMessage {
    ParkedMessage {
        id: p.parked_revision,
        parked_at: p.parked_at,
        reason: p.reason,
        attempts: p.attempts,
        held: p.held,
        event: p.event,
    }
}

impl<S: EventStore> Hosted<S> {
    async fn start(
        store: &S,
        name: &str,
        registered: &Registered,
    ) -> Result<Arc<Self>, GroupError> {
        let settings = registered.settings.clone();
        let checkpoint_name = format!("{name}@{}", registered.incarnation);
        let parked_stream = StreamId::system(&format!("$parked-{checkpoint_name}"))
            .map_err(|e| GroupError::Backend(e.to_string()))?;
        let engine = ConsumerGroup::builder(name, store.clone())
            .filter(settings.filter.clone())
            .retry(retry_policy(&settings))
            .breaker(CircuitBreaker::disabled())
            .buffer(settings.buffer)
            .checkpoint_every(CHECKPOINT_EVERY)
            .hosting(Hosting {
                checkpoint_name,
                parked_stream,
                start: registered.start,
                strategy: settings.strategy,
                sequenced: settings.sequenced_parking,
            })
            .start()
            .await
            .map_err(|e| to_group_error(name, e))?;
        let hosted = Arc::new(Self {
            name: name.to_owned(),
            incarnation: registered.incarnation,
            start: registered.start,
            settings: Mutex::new(settings),
            engine,
            members: Mutex::new(Members::default()),
            ticker: Mutex::new(None),
        });
        let ticker = tokio::spawn(tick(Arc::downgrade(&hosted)));
        *lock(&hosted.ticker) = Some(ticker);
        Ok(hosted)
    }

    fn settings(&self) -> GroupSettings {
        lock(&self.settings).clone()
    }

    fn info(&self) -> GroupInfo {
        GroupInfo {
            name: self.name.clone(),
            settings: self.settings(),
        }
    }

    /// Applies changed settings to the running engine.
    fn apply(&self, settings: GroupSettings) {
        {
            let mut st = self.engine.shared.lock();
            st.strategy = settings.strategy;
            st.filter = settings.filter.clone();
            st.retry = retry_policy(&settings);
            st.buffer = settings.buffer;
            st.sequenced = settings.sequenced_parking;
        }
        *lock(&self.settings) = settings;
        self.engine.shared.changed.notify_waiters();
    }

    /// Fails when the engine stopped (a lost checkpoint write) or was closed.
    fn check_running(&self) -> Result<(), GroupError> {
        let st = self.engine.shared.lock();
        if let Some(e) = &st.failed {
            return Err(to_group_error(&self.name, e.clone()));
        }
        if st.closed {
            return Err(GroupError::NotFound {
                group: self.name.clone(),
            });
        }
        Ok(())
    }

    fn expired(&self, lease: &MemberLease) -> GroupError {
        GroupError::LeaseExpired {
            group: self.name.clone(),
            member: lease.member.clone(),
        }
    }

    /// Renews `lease` (after taking back what lapsed); its member's id.
    async fn renew(&self, lease: &MemberLease) -> Result<u64, GroupError> {
        self.sweep().await;
        self.check_running()?;
        self.touch(lease)
    }

    /// Renews `lease` without sweeping first.
    fn touch(&self, lease: &MemberLease) -> Result<u64, GroupError> {
        let period = lock(&self.settings).lease;
        let mut members = lock(&self.members);
        match members.by_lease.get_mut(&lease.member) {
            Some(slot) => {
                slot.expires = Instant::now() + period;
                Ok(slot.id)
            }
            None => Err(self.expired(lease)),
        }
    }

    /// Takes back what lapsed members and timed-out messages hold: each counts one
    /// failed attempt; those out of attempts are parked.
    async fn sweep(&self) {
        let now = Instant::now();
        let timeout = lock(&self.settings).message_timeout;
        let lapsed: Vec<(u64, String)> = {
            let mut members = lock(&self.members);
            let gone: Vec<String> = members
                .by_lease
                .iter()
                .filter(|(_, s)| s.expires <= now && s.fetching == 0)
                .map(|(k, _)| k.clone())
                .collect();
            let lapsed: Vec<(u64, String)> = gone
                .iter()
                .filter_map(|k| members.by_lease.remove(k).map(|s| (s.id, k.clone())))
                .collect();
            let ids: HashSet<u64> = lapsed.iter().map(|(id, _)| *id).collect();
            members.deliveries.retain(|_, (m, _)| !ids.contains(m));
            lapsed
        };
        let lapsed: HashMap<u64, String> = lapsed.into_iter().collect();
        let mut to_park = Vec::new();
        {
            let mut st = self.engine.shared.lock();
            let mut taken = Vec::new();
            for (seq, e) in &st.entries {
                if let Status::InFlight {
                    member,
                    delivery,
                    since,
                } = e.status
                {
                    if let Some(lease) = lapsed.get(&member) {
                        taken.push((
                            *seq,
                            delivery,
                            format!("lease of member {lease} expired"),
                            true,
                        ));
                    } else if since + timeout <= now {
                        let reason = format!(
                            "held longer than the message timeout ({} ms)",
                            timeout.as_millis()
                        );
                        taken.push((*seq, delivery, reason, false));
                    }
                }
            }
            if taken.is_empty() && lapsed.is_empty() {
                return;
            }
            for (seq, _, reason, lease) in &taken {
                if *lease {
                    st.counters.expired += 1;
                } else {
                    st.counters.timed_out += 1;
                }
                if let Failed::Park { attempts } = fail_entry(&mut st, *seq, now, false) {
                    to_park.push((*seq, reason.clone(), attempts));
                }
            }
            drop(st);
            let mut members = lock(&self.members);
            for (_, delivery, _, _) in &taken {
                members.deliveries.remove(delivery);
            }
        }
        for lease in lapsed.values() {
            tracing::info!(group = %self.name, member = %lease, "member lease expired");
        }
        self.engine.shared.changed.notify_waiters();
        for (seq, reason, attempts) in to_park {
            if let Err(e) = self
                .engine
                .shared
                .park_entry(seq, &reason, attempts, false)
                .await
            {
                tracing::warn!(group = %self.name, error = %e, "could not park a message; it is delivered again");
            }
        }
    }

    fn join(&self, member_name: &str) -> Result<MemberLease, GroupError> {
        self.check_running()?;
        let lease = lock(&self.settings).lease;
        let member = uuid::Uuid::now_v7().to_string();
        let mut members = lock(&self.members);
        members.next_id += 1;
        let id = members.next_id;
        members.by_lease.insert(
            member.clone(),
            Slot {
                id,
                name: member_name.to_owned(),
                expires: Instant::now() + lease,
                fetching: 0,
            },
        );
        drop(members);
        tracing::debug!(group = %self.name, %member, name = member_name, "member joined");
        Ok(MemberLease {
            group: self.name.clone(),
            member,
            lease,
        })
    }

    /// Removes the member and gives its messages back without counting an attempt.
    fn leave(&self, lease: &MemberLease) {
        let id = {
            let mut members = lock(&self.members);
            let Some(slot) = members.by_lease.remove(&lease.member) else {
                return;
            };
            members.deliveries.retain(|_, (m, _)| *m != slot.id);
            slot.id
        };
        let mut st = self.engine.shared.lock();
        let now = Instant::now();
        let mut released = 0;
        for e in st.entries.values_mut() {
            if matches!(e.status, Status::InFlight { member, .. } if member == id) {
                e.status = Status::Ready { not_before: now };
                released += 1;
            }
        }
        st.counters.released += released;
        drop(st);
        self.engine.shared.changed.notify_waiters();
        tracing::debug!(group = %self.name, member = %lease.member, released, "member left");
    }

    async fn fetch(
        &self,
        lease: &MemberLease,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<GroupMessage>, GroupError> {
        if max == 0 {
            return Err(GroupError::InvalidRequest(
                "a fetch asks for at least 1 message".to_owned(),
            ));
        }
        let id = self.renew(lease).await?;
        let _fetching = Fetching::new(self, &lease.member);
        let deadline = Instant::now() + wait;
        let shared = &self.engine.shared;
        loop {
            let changed = shared.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            let (handed, wake) = {
                let mut st = shared.lock();
                if let Some(e) = &st.failed {
                    return Err(to_group_error(&self.name, e.clone()));
                }
                if st.closed {
                    return Err(GroupError::NotFound {
                        group: self.name.clone(),
                    });
                }
                let now = Instant::now();
                take_batch(&mut st, id, now, max)
            };
            if !handed.is_empty() {
                let mut members = lock(&self.members);
                for h in &handed {
                    members.deliveries.insert(h.delivery, (id, h.seq));
                }
                if let Some(slot) = members.by_lease.get_mut(&lease.member) {
                    slot.expires = Instant::now() + lock(&self.settings).lease;
                } else {
                    // Left while waiting: give them back.
                    drop(members);
                    for h in &handed {
                        shared.release(h.seq, h.delivery);
                    }
                    return Err(self.expired(lease));
                }
                return Ok(handed
                    .into_iter()
                    .map(|h| GroupMessage {
                        id: h.delivery,
                        attempt: h.attempt,
                        replay: h.replay,
                        event: h.event,
                    })
                    .collect());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let until = wake.map_or(deadline, |t| t.min(deadline));
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    async fn settle(
        &self,
        lease: &MemberLease,
        settlements: Vec<(DeliveryId, Settlement)>,
    ) -> Result<SettleReport, GroupError> {
        let id = self.renew(lease).await?;
        let shared = &self.engine.shared;
        let mut report = SettleReport::default();
        for (delivery, settlement) in settlements {
            let seq = {
                let mut members = lock(&self.members);
                match members.deliveries.get(&delivery) {
                    Some(&(member, seq)) if member == id => {
                        members.deliveries.remove(&delivery);
                        Some(seq)
                    }
                    _ => None,
                }
            };
            let applied = match seq {
                None => false,
                Some(seq) => match &settlement {
                    Settlement::Ack => shared.settle_done(seq, delivery, Done::Acked).await,
                    Settlement::Skip => shared.settle_done(seq, delivery, Done::Skipped).await,
                    Settlement::Retry { reason } => {
                        shared.settle_failed(seq, delivery, reason).await
                    }
                    Settlement::Park { reason } => shared.settle_park(seq, delivery, reason).await,
                }
                .map_err(|e| to_group_error(&self.name, e))?,
            };
            if applied {
                report.settled += 1;
            } else {
                report.stale.push(delivery);
            }
        }
        self.touch(lease)?;
        Ok(report)
    }

    async fn describe(&self, store: &S) -> Result<GroupDescription, GroupError> {
        self.sweep().await;
        let head = store.head().await?.map_or(0, |h| h + 1);
        let parked = read_parked(store, &self.name, &self.engine.shared.parked_stream)
            .await
            .map_err(|e| to_group_error(&self.name, e))?
            .len() as u64;
        let now = Instant::now();
        let (checkpoint, held_by, in_flight) = {
            let st = self.engine.shared.lock();
            let mut held_by: HashMap<u64, usize> = HashMap::new();
            let mut in_flight = 0;
            for e in st.entries.values() {
                if let Status::InFlight { member, .. } = e.status {
                    *held_by.entry(member).or_default() += 1;
                    in_flight += 1;
                }
            }
            (st.checkpoint(), held_by, in_flight)
        };
        let mut members: Vec<MemberInfo> = lock(&self.members)
            .by_lease
            .iter()
            .map(|(lease, s)| MemberInfo {
                member: lease.clone(),
                name: s.name.clone(),
                in_flight: held_by.get(&s.id).copied().unwrap_or(0),
                lease_left: s.expires.saturating_duration_since(now),
            })
            .collect();
        members.sort_by(|a, b| a.member.cmp(&b.member));
        Ok(GroupDescription {
            name: self.name.clone(),
            settings: self.settings(),
            checkpoint,
            head,
            lag: head.saturating_sub(checkpoint),
            members,
            in_flight,
            parked,
        })
    }

    async fn parked_list(&self) -> Result<Vec<ParkedEvent>, GroupError> {
        read_parked(
            &self.engine.shared.store,
            &self.name,
            &self.engine.shared.parked_stream,
        )
        .await
        .map_err(|e| to_group_error(&self.name, e))
    }

    /// The parked ids `which` names, each checked to be listed.
    fn selected(
        &self,
        listed: &[ParkedEvent],
        which: &ParkedSelection,
    ) -> Result<HashSet<Revision>, GroupError> {
        let all: HashSet<Revision> = listed.iter().map(|p| p.parked_revision).collect();
        match which {
            ParkedSelection::All => Ok(all),
            ParkedSelection::Ids(ids) => {
                if let Some(missing) = ids.iter().find(|id| !all.contains(id)) {
                    return Err(GroupError::ParkedNotFound {
                        group: self.name.clone(),
                        id: *missing,
                    });
                }
                Ok(ids.iter().copied().collect())
            }
        }
    }

    async fn replay(&self, which: ParkedSelection) -> Result<u64, GroupError> {
        let listed = self.parked_list().await?;
        let chosen = self.selected(&listed, &which)?;
        if chosen.is_empty() {
            return Ok(0);
        }
        // Recorded first, so the replay survives a restart of this process: a group
        // that starts queues the requested parked events not yet resolved.
        let mut revisions: Vec<Revision> = chosen.iter().copied().collect();
        revisions.sort_unstable();
        let shared = &self.engine.shared;
        shared
            .append_parked(vec![replay_record(shared.clock.as_ref(), &revisions)])
            .await
            .map_err(|e| to_group_error(&self.name, e))?;
        let queued = self
            .engine
            .replay_parked_where(|p| chosen.contains(&p.parked_revision))
            .await
            .map_err(|e| to_group_error(&self.name, e))?;
        Ok(queued as u64)
    }

    async fn delete_parked(&self, which: ParkedSelection) -> Result<u64, GroupError> {
        let listed = self.parked_list().await?;
        let chosen = self.selected(&listed, &which)?;
        let doomed: Vec<&ParkedEvent> = listed
            .iter()
            .filter(|p| chosen.contains(&p.parked_revision))
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let shared = &self.engine.shared;
        let records = doomed
            .iter()
            .map(|p| {
                resolved_record(
                    shared.clock.as_ref(),
                    p.parked_revision,
                    Resolution::Deleted,
                )
            })
            .collect();
        shared
            .append_parked(records)
            .await
            .map_err(|e| to_group_error(&self.name, e))?;
        {
            let mut st = shared.lock();
            for p in &doomed {
                let rev = p.parked_revision;
                let queued = st.entries.iter().find_map(|(seq, e)| {
                    (e.origin == Origin::Parked(rev) && matches!(e.status, Status::Ready { .. }))
                        .then_some(*seq)
                });
                if let Some(seq) = queued {
                    st.entries.remove(&seq);
                }
                // A replay still out is settled later without counting again.
                st.replaying.remove(&rev);
                st.parked_resolved(&p.event.stream);
            }
        }
        shared.changed.notify_waiters();
        tracing::info!(group = %self.name, deleted = doomed.len(), "parked messages deleted");
        Ok(doomed.len() as u64)
    }

    fn stats(&self) -> GroupStats {
        let st = self.engine.shared.lock();
        let c = &st.counters;
        GroupStats {
            delivered: c.delivered,
            acked: c.acked,
            retried: c.retried,
            parked: c.parked,
            held: c.held,
            skipped: c.skipped,
            timed_out: c.timed_out,
            expired: c.expired,
            replayed: c.replayed,
            released: c.released,
            checkpoint: st.saved_checkpoint,
            pending: st.entries.len(),
            in_flight: st
                .entries
                .values()
                .filter(|e| matches!(e.status, Status::InFlight { .. }))
                .count(),
            members: lock(&self.members).by_lease.len(),
        }
    }

    /// Stops the group: members' calls fail, the checkpoint is saved.
    async fn stop(&self) -> Result<(), GroupError> {
        if let Some(t) = lock(&self.ticker).take() {
            t.abort();
        }
        self.engine
            .shutdown()
            .await
            .map_err(|e| to_group_error(&self.name, e))
    }
}

/// Marks a member as waiting in a fetch (alive) while it lives.
struct Fetching<'a, S: EventStore> {
    hosted: &'a Hosted<S>,
    member: &'a str,
}

impl<'a, S: EventStore> Fetching<'a, S> {
    fn new(hosted: &'a Hosted<S>, member: &'a str) -> Self {
        if let Some(slot) = lock(&hosted.members).by_lease.get_mut(member) {
            slot.fetching += 1;
        }
        Self { hosted, member }
    }
}

impl<S: EventStore> Drop for Fetching<'_, S> {
    fn drop(&mut self) {
        let lease = lock(&self.hosted.settings).lease;
        if let Some(slot) = lock(&self.hosted.members).by_lease.get_mut(self.member) {
            slot.fetching = slot.fetching.saturating_sub(1);
            slot.expires = Instant::now() + lease;
        }
    }
}

/// The group's timer: takes back what lapsed and saves a moved checkpoint.
async fn tick<S: EventStore>(hosted: Weak<Hosted<S>>) {
    let mut last_save = Instant::now();
    loop {
        let period = {
            let Some(h) = hosted.upgrade() else { return };
            let s = lock(&h.settings);
            (s.lease / 4)
                .min(s.message_timeout / 4)
                .min(CHECKPOINT_INTERVAL)
                .max(Duration::from_millis(10))
        };
        tokio::time::sleep(period).await;
        let Some(h) = hosted.upgrade() else { return };
        h.sweep().await;
        if last_save.elapsed() >= CHECKPOINT_INTERVAL {
            last_save = Instant::now();
            if let Err(e) = h.engine.shared.save_checkpoint_when(Due::Settled).await {
                tracing::warn!(group = %h.name, error = %e, "could not save the checkpoint");
            }
        }
    }
}

impl<S: EventStore> HostedGroups<S> {
    /// Hosts the groups of `store`: loads the settings kept in its `$groups` stream and
    /// starts every group. Call inside a Tokio runtime.
    pub async fn open(store: S) -> Result<Self, GroupError> {
        let (registered, version) = registry::load(&store).await?;
        let mut groups = BTreeMap::new();
        for (name, r) in &registered {
            groups.insert(name.clone(), Hosted::start(&store, name, r).await?);
        }
        tracing::info!(groups = groups.len(), "hosted consumer groups opened");
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                registry: tokio::sync::Mutex::new(version),
                groups: RwLock::new(groups),
            }),
        })
    }

    /// A group's counters and state now (None: no such group), for metrics.
    pub fn stats(&self, name: &str) -> Option<GroupStats> {
        self.inner.groups().get(name).map(|g| g.stats())
    }

    /// Stops every group and saves their checkpoints. Members' later calls fail with
    /// [`GroupError::NotFound`]; the settings stay in the store for the next
    /// [`open`](Self::open).
    pub async fn shutdown(&self) -> Result<(), GroupError> {
        let groups: Vec<Arc<Hosted<S>>> = self.inner.groups().values().cloned().collect();
        let mut first_error = None;
        for g in groups {
            if let Err(e) = g.stop().await {
                tracing::warn!(group = %g.name, error = %e, "could not save the checkpoint on shutdown");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Reloads the registry after another process changed it, and brings the running
    /// groups in line: starts new ones, stops deleted ones, applies changed settings.
    async fn refresh(&self, version: &mut Option<Revision>) -> Result<(), GroupError> {
        let (registered, v) = registry::load(&self.inner.store).await?;
        *version = v;
        let running: Vec<(String, Arc<Hosted<S>>)> = self
            .inner
            .groups()
            .iter()
            .map(|(k, g)| (k.clone(), g.clone()))
            .collect();
        for (name, g) in &running {
            match registered.get(name) {
                Some(r) if r.incarnation == g.incarnation => {
                    if r.settings != g.settings() {
                        g.apply(r.settings.clone());
                    }
                }
                _ => {
                    self.inner.groups_mut().remove(name);
                    g.stop().await.ok();
                }
            }
        }
        for (name, r) in &registered {
            if !self.inner.groups().contains_key(name) {
                let g = Hosted::start(&self.inner.store, name, r).await?;
                self.inner.groups_mut().insert(name.clone(), g);
            }
        }
        Ok(())
    }

    fn conflict(name: &str) -> GroupError {
        GroupError::Conflict {
            group: name.to_owned(),
            reason: format!("{GROUPS_STREAM} kept changing under this process"),
        }
    }

    async fn create_group(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> Result<GroupInfo, GroupError> {
        validate_group_name(name)?;
        settings.validate()?;
        let mut version = self.inner.registry.lock().await;
        for _ in 0..REGISTRY_ATTEMPTS {
            if self.inner.groups().contains_key(name) {
                return Err(GroupError::AlreadyExists {
                    group: name.to_owned(),
                });
            }
            let start = match settings.start {
                StartFrom::Beginning => 0,
                StartFrom::Position(p) => p,
                StartFrom::End => self.inner.store.head().await?.map_or(0, |h| h + 1),
            };
            let change = Change::Created {
                settings: &settings,
                start,
            };
            match registry::append(&self.inner.store, *version, name, change).await? {
                Some(revision) => {
                    *version = Some(revision);
                    let registered = Registered {
                        incarnation: revision,
                        settings: settings.clone(),
                        start,
                    };
                    let g = Hosted::start(&self.inner.store, name, &registered).await?;
                    let info = g.info();
                    self.inner.groups_mut().insert(name.to_owned(), g);
                    tracing::info!(group = name, start, "consumer group created");
                    return Ok(info);
                }
                None => self.refresh(&mut version).await?,
            }
        }
        Err(Self::conflict(name))
    }

    async fn update_group(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> Result<GroupInfo, GroupError> {
        validate_group_name(name)?;
        settings.validate()?;
        let mut version = self.inner.registry.lock().await;
        for _ in 0..REGISTRY_ATTEMPTS {
            let g = self.inner.group(name)?;
            if settings.start != g.settings().start {
                return Err(GroupError::InvalidSettings {
                    field: "start".to_owned(),
                    reason: "the start position is fixed when the group is created".to_owned(),
                });
            }
            let change = Change::Updated {
                settings: &settings,
            };
            match registry::append(&self.inner.store, *version, name, change).await? {
                Some(revision) => {
                    *version = Some(revision);
                    g.apply(settings);
                    tracing::info!(group = name, "consumer group updated");
                    return Ok(g.info());
                }
                None => self.refresh(&mut version).await?,
            }
        }
        Err(Self::conflict(name))
    }

    async fn delete_group(&self, name: &str) -> Result<(), GroupError> {
        let mut version = self.inner.registry.lock().await;
        for _ in 0..REGISTRY_ATTEMPTS {
            let g = self.inner.group(name)?;
            match registry::append(&self.inner.store, *version, name, Change::Deleted).await? {
                Some(revision) => {
                    *version = Some(revision);
                    self.inner.groups_mut().remove(name);
                    lock(&g.members).by_lease.clear();
                    if let Err(e) = g.stop().await {
                        // Deleted all the same: its checkpoint is never read again.
                        tracing::debug!(group = name, error = %e, "deleted group's last checkpoint not saved");
                    }
                    tracing::info!(group = name, start = g.start, "consumer group deleted");
                    return Ok(());
                }
                None => self.refresh(&mut version).await?,
            }
        }
        Err(Self::conflict(name))
    }
}

impl<S: EventStore> Groups for HostedGroups<S> {
    fn create(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> BoxFuture<'_, Result<GroupInfo, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move { self.create_group(&name, settings).await })
    }

    fn update(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> BoxFuture<'_, Result<GroupInfo, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move { self.update_group(&name, settings).await })
    }

    fn delete(&self, name: &str) -> BoxFuture<'_, Result<(), GroupError>> {
        let name = name.to_owned();
        Box::pin(async move { self.delete_group(&name).await })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>, GroupError>> {
        Box::pin(async move { Ok(self.inner.groups().values().map(|g| g.info()).collect()) })
    }

    fn describe(&self, name: &str) -> BoxFuture<'_, Result<GroupDescription, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let g = self.inner.group(&name)?;
            g.describe(&self.inner.store).await
        })
    }

    fn join(
        &self,
        group: &str,
        member_name: &str,
    ) -> BoxFuture<'_, Result<MemberLease, GroupError>> {
        let (group, member_name) = (group.to_owned(), member_name.to_owned());
        Box::pin(async move { self.inner.group(&group)?.join(&member_name) })
    }

    fn heartbeat(&self, lease: &MemberLease) -> BoxFuture<'_, Result<(), GroupError>> {
        let lease = lease.clone();
        Box::pin(async move {
            self.inner.group(&lease.group)?.renew(&lease).await?;
            Ok(())
        })
    }

    fn leave(&self, lease: &MemberLease) -> BoxFuture<'_, Result<(), GroupError>> {
        let lease = lease.clone();
        Box::pin(async move {
            self.inner.group(&lease.group)?.leave(&lease);
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
        Box::pin(async move {
            let g = self.inner.group(&lease.group)?;
            g.fetch(&lease, max, wait).await
        })
    }

    fn settle(
        &self,
        lease: &MemberLease,
        settlements: Vec<(DeliveryId, Settlement)>,
    ) -> BoxFuture<'_, Result<SettleReport, GroupError>> {
        let lease = lease.clone();
        Box::pin(async move {
            let g = self.inner.group(&lease.group)?;
            g.settle(&lease, settlements).await
        })
    }

    fn parked(
        &self,
        group: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ParkedMessage>, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move {
            let g = self.inner.group(&group)?;
            let list = g.parked_list().await?;
            Ok(list.into_iter().take(limit).map(parked_message).collect())
        })
    }

    fn replay_parked(
        &self,
        group: &str,
        which: ParkedSelection,
    ) -> BoxFuture<'_, Result<u64, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move { self.inner.group(&group)?.replay(which).await })
    }

    fn delete_parked(
        &self,
        group: &str,
        which: ParkedSelection,
    ) -> BoxFuture<'_, Result<u64, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move { self.inner.group(&group)?.delete_parked(which).await })
    }
}

#[cfg(test)]
mod tests;
