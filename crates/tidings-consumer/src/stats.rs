//! [`ConsumerStats`]: a consumer group's counters and state, for logs and metrics.

use serde::Serialize;

use super::breaker::BreakerState;
use tidings_core::store::Position;

/// A snapshot of a consumer group's counters (totals since the group started) and
/// current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStats {
    /// Deliveries handed to members (every attempt counts).
    pub delivered: u64,
    /// Deliveries acknowledged.
    pub acked: u64,
    /// Failed deliveries scheduled for another attempt.
    pub retried: u64,
    /// Events parked (after their last attempt, or on request).
    pub parked: u64,
    /// Parked events queued again by a replay.
    pub replayed: u64,
    /// Deliveries given back unsettled (released or dropped).
    pub released: u64,
    /// The saved checkpoint: the next position to consider after a restart.
    pub checkpoint: Position,
    /// The breaker's state.
    #[serde(serialize_with = "ser_display")]
    pub breaker: BreakerState,
    /// How many times the breaker has opened.
    pub breaker_opened: u64,
    /// Events read and not yet settled (buffered, in flight or waiting for a retry).
    pub pending: usize,
    /// Deliveries out with members now.
    pub in_flight: usize,
    /// Members in the group now.
    pub members: usize,
}

fn ser_display<S: serde::Serializer>(v: &BreakerState, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}
