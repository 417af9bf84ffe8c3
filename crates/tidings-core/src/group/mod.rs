//! Consumer groups shared by processes: the contract every group backend keeps.
//!
//! A consumer group is a named, durable subscription to a store's log whose members
//! share the work. Members may live in any process (and, over the server's HTTP routes,
//! in any language): each holds a *lease* that it keeps alive by heartbeats, fetches
//! messages, and settles each one by its [`DeliveryId`]. The [`Groups`] trait is the
//! place where a store's groups live:
//!
//! - `HostedGroups` (in `tidings-consumer`) hosts the groups of any event store in one
//!   process; `tidings serve` hosts them for the embedded store and serves them over
//!   HTTP.
//! - `PgGroups` (in `tidings-postgres`) keeps them in PostgreSQL, so every process that
//!   reaches the database is a member directly.
//! - The CLI's remote groups speak to a server's HTTP routes.
//!
//! # Semantics every backend keeps
//!
//! The shared conformance suite (`tidings_testkit::group_conformance`) checks these.
//!
//! 1. **What is delivered.** Every non-system event that passes the group's
//!    [`Filter`](crate::store::Filter), from its [`StartFrom`] on, until it is *settled*: acknowledged,
//!    skipped or parked. At-least-once: an event whose settlement was lost (a member
//!    died, a lease or a message timed out) is delivered again.
//! 2. **One holder at a time.** A message is out with at most one member at a time.
//!    Its [`DeliveryId`] names that one hand-out: once the message is given to
//!    someone else (lease expiry, message timeout), settling the old id changes
//!    nothing and is reported as stale.
//! 3. **Strategies.** [`Strategy::Pinned`] keeps each stream with one member at a time:
//!    an event is handed out only once every earlier event of its stream (that the
//!    group delivers) is settled, so per-stream order holds, and different streams
//!    spread across members. [`Strategy::RoundRobin`] hands out any ready event to
//!    the next member that asks, without per-stream order.
//! 4. **Leases.** A member's lease lasts [`GroupSettings::lease`] from its last
//!    [`join`](Groups::join), [`heartbeat`](Groups::heartbeat), [`fetch`](Groups::fetch)
//!    or [`settle`](Groups::settle). When it lapses, the member is gone: its messages
//!    are given to others, each counting one failed attempt (a message that keeps
//!    killing its consumers is parked in the end), and every later call with that
//!    lease fails with [`GroupError::LeaseExpired`]. Nothing a member does after its
//!    lease is gone changes the group.
//! 5. **Message timeout.** A message held longer than
//!    [`GroupSettings::message_timeout`] is taken back and counts one failed attempt.
//! 6. **Settlements.** [`Settlement::Ack`] settles. [`Settlement::Retry`] counts a
//!    failed attempt and delivers the message again after a backoff; the attempt after
//!    `max_retries` retries parks it instead, with the last reason.
//!    [`Settlement::Park`] parks it now. [`Settlement::Skip`] settles it unhandled.
//! 7. **Parking.** A parked message keeps the original event, the reason and the
//!    attempts. [`replay_parked`](Groups::replay_parked) delivers parked messages again
//!    with fresh attempts (oldest first, per-stream order kept among them under
//!    `Pinned`); a replayed message leaves the parked list once it is acknowledged or
//!    skipped, and returns to it if it is parked again.
//!    [`delete_parked`](Groups::delete_parked) drops them for good.
//! 8. **Sequenced parking** ([`GroupSettings::sequenced_parking`], `Pinned` only).
//!    Once an event is parked, the later events of its stream are parked behind it
//!    ([`ParkedMessage::held`]) without being delivered, while other streams flow.
//!    A replay of the stream's parked events delivers them in their original order.
//! 9. **Durability.** Group settings, the settled state and the parked list survive
//!    restarts of every process. Settled state is saved with fenced writes
//!    (expected versions or row versions): a process that lost its place cannot move
//!    the group.
//!
//! ```
//! use std::time::Duration;
//! use tidings_core::group::{GroupSettings, Strategy};
//! let settings = GroupSettings {
//!     strategy: Strategy::RoundRobin,
//!     lease: Duration::from_secs(5),
//!     ..GroupSettings::default()
//! };
//! assert!(settings.validate().is_ok());
//! let bad = GroupSettings { sequenced_parking: true, ..settings };
//! assert_eq!(bad.validate().unwrap_err().to_string(),
//!     "invalid group settings: sequencedParking: needs the pinned strategy, which keeps each stream in order");
//! ```

mod settings;

pub use settings::{GroupSettings, StartFrom, Strategy, validate_group_name};

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::handler::BoxFuture;
use crate::store::{Position, RecordedEvent, StoreError};

/// Names one hand-out of one message to one member. A new hand-out of the same event
/// (after a retry, a lease expiry or a message timeout) has a new id.
pub type DeliveryId = u64;

/// Names a parked message in its group's parked list.
pub type ParkedId = u64;

/// A member's hold on its place in a group, from [`Groups::join`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberLease {
    /// The group.
    pub group: String,
    /// The member's id, unique in the group (chosen by the backend).
    pub member: String,
    /// How long the lease lasts without a heartbeat.
    #[serde(with = "millis", rename = "leaseMs")]
    pub lease: Duration,
}

/// A message handed to a member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupMessage {
    /// What to settle it by.
    pub id: DeliveryId,
    /// Which attempt this is, from 1.
    pub attempt: u32,
    /// True when it is a replay of a parked message.
    pub replay: bool,
    /// The event.
    pub event: RecordedEvent,
}

/// How a member settles a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Settlement {
    /// Handled.
    Ack,
    /// Failed: try again after a backoff, or park it after the last attempt.
    Retry {
        /// Why it failed.
        reason: String,
    },
    /// Cannot be handled: park it now.
    Park {
        /// Why.
        reason: String,
    },
    /// Settled without handling it.
    Skip,
}

/// What [`Groups::settle`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettleReport {
    /// How many settlements were applied.
    pub settled: usize,
    /// Delivery ids this member no longer holds (taken back after a timeout, or
    /// never its own): nothing was done for them.
    pub stale: Vec<DeliveryId>,
}

/// A message in a group's parked list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParkedMessage {
    /// Names it for a replay or a delete.
    pub id: ParkedId,
    /// When it was parked.
    pub parked_at: jiff::Timestamp,
    /// The last failure's reason.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// True when it was parked behind an earlier parked event of its stream
    /// (sequenced parking) without being delivered.
    pub held: bool,
    /// The original event.
    pub event: RecordedEvent,
}

/// Which messages a replay or a delete names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ParkedSelection {
    /// Every parked message.
    All,
    /// These.
    Ids(Vec<ParkedId>),
}

/// A group as [`Groups::list`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub settings: GroupSettings,
}

/// A member as [`Groups::describe`] shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    /// Its id.
    pub member: String,
    /// The name it joined with.
    pub name: String,
    /// Messages it holds.
    pub in_flight: usize,
    /// Time left on its lease.
    #[serde(with = "millis", rename = "leaseLeftMs")]
    pub lease_left: Duration,
}

/// A group's state now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDescription {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub settings: GroupSettings,
    /// Every event before this log position is settled.
    pub checkpoint: Position,
    /// The log's next position now.
    pub head: Position,
    /// Log positions between the checkpoint and the head: an upper bound on the
    /// events still to settle (it counts events the filter leaves out).
    pub lag: u64,
    /// Live members.
    pub members: Vec<MemberInfo>,
    /// Messages out with members.
    pub in_flight: usize,
    /// Messages in the parked list.
    pub parked: u64,
}

/// Why a group operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The group name is not usable.
    #[error("invalid group name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A setting is out of range or contradicts another.
    #[error("invalid group settings: {field}: {reason}")]
    InvalidSettings {
        /// The setting, as its JSON field is spelled.
        field: String,
        /// Why.
        reason: String,
    },
    /// A request argument is out of range (a fetch of 0 messages, say).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No such group.
    #[error("consumer group {group:?} does not exist")]
    NotFound {
        /// The group.
        group: String,
    },
    /// A group of that name exists already.
    #[error("consumer group {group:?} exists already")]
    AlreadyExists {
        /// The group.
        group: String,
    },
    /// The member's lease is gone (it lapsed, or the member left): join again.
    #[error("member {member} of consumer group {group:?} has no lease any more; join again")]
    LeaseExpired {
        /// The group.
        group: String,
        /// The member.
        member: String,
    },
    /// A parked id names nothing in the parked list.
    #[error("consumer group {group:?} has no parked message {id}")]
    ParkedNotFound {
        /// The group.
        group: String,
        /// The id.
        id: ParkedId,
    },
    /// Another process moved the group's state first (a fenced write lost); the
    /// caller's view is stale. Nothing was changed.
    #[error("consumer group {group:?} was changed by another process: {reason}")]
    Conflict {
        /// The group.
        group: String,
        /// What conflicted.
        reason: String,
    },
    /// The store beneath failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The backend failed (connection, query, protocol).
    #[error("group backend failure: {0}")]
    Backend(String),
}

/// Where a store's consumer groups live, shared by every member that reaches it.
///
/// Object-safe, so a server can hold `Arc<dyn Groups>` whatever the backend. The
/// module documentation gives the semantics every implementation keeps.
pub trait Groups: Send + Sync {
    /// Creates a group with validated settings.
    fn create(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> BoxFuture<'_, Result<GroupInfo, GroupError>>;

    /// Changes a group's settings. The strategy, the filter and sequenced parking
    /// apply to what is handed out from now on; the start position only mattered at
    /// creation and may not change.
    fn update(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> BoxFuture<'_, Result<GroupInfo, GroupError>>;

    /// Deletes a group with its settled state and its parked list. Its members'
    /// next calls fail.
    fn delete(&self, name: &str) -> BoxFuture<'_, Result<(), GroupError>>;

    /// Every group, by name.
    fn list(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>, GroupError>>;

    /// One group's state now: checkpoint, lag, members, in-flight and parked counts.
    fn describe(&self, name: &str) -> BoxFuture<'_, Result<GroupDescription, GroupError>>;

    /// Joins `group` as a new member called `member_name` (for people reading
    /// `describe`; it need not be unique).
    fn join(
        &self,
        group: &str,
        member_name: &str,
    ) -> BoxFuture<'_, Result<MemberLease, GroupError>>;

    /// Keeps the lease alive.
    fn heartbeat(&self, lease: &MemberLease) -> BoxFuture<'_, Result<(), GroupError>>;

    /// Leaves: the member's messages go to others at once, without counting an
    /// attempt. Leaving twice is not an error.
    fn leave(&self, lease: &MemberLease) -> BoxFuture<'_, Result<(), GroupError>>;

    /// Up to `max` messages for this member (`max` ≥ 1), waiting up to `wait` for the
    /// first; an empty list when none came in time. Renews the lease.
    fn fetch(
        &self,
        lease: &MemberLease,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<GroupMessage>, GroupError>>;

    /// Settles messages this member holds. Renews the lease. Ids it does not hold
    /// are reported as stale and change nothing.
    fn settle(
        &self,
        lease: &MemberLease,
        settlements: Vec<(DeliveryId, Settlement)>,
    ) -> BoxFuture<'_, Result<SettleReport, GroupError>>;

    /// Up to `limit` parked messages, oldest first.
    fn parked(
        &self,
        group: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ParkedMessage>, GroupError>>;

    /// Delivers the selected parked messages again, with fresh attempts. Returns how
    /// many were queued (messages already queued by an earlier replay are not counted
    /// again).
    fn replay_parked(
        &self,
        group: &str,
        which: ParkedSelection,
    ) -> BoxFuture<'_, Result<u64, GroupError>>;

    /// Removes the selected parked messages for good. Returns how many.
    fn delete_parked(
        &self,
        group: &str,
        which: ParkedSelection,
    ) -> BoxFuture<'_, Result<u64, GroupError>>;
}

/// A `Duration` as whole milliseconds in JSON.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes whole milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
