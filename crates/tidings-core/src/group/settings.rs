//! [`GroupSettings`]: what a consumer group is created with, and their checks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{GroupError, millis};
use crate::store::{Filter, Position};

/// The longest group name.
pub const MAX_GROUP_NAME: usize = 100;

/// How messages are spread over members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// One member at a time per stream: per-stream order holds, streams spread
    /// across members.
    #[default]
    Pinned,
    /// Any ready message to the next member that asks; no per-stream order.
    RoundRobin,
}

/// Where a new group starts reading the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StartFrom {
    /// From the first event.
    #[default]
    Beginning,
    /// From the events appended after the group is created.
    End,
    /// From this log position (inclusive).
    Position(Position),
}

/// A consumer group's settings. JSON fields are camelCase, durations in whole
/// milliseconds (`leaseMs`, ...); unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupSettings {
    /// How messages are spread over members (default pinned).
    pub strategy: Strategy,
    /// Where the group starts (default: the beginning). Fixed at creation.
    pub start: StartFrom,
    /// Which events the group delivers (default: every non-system event).
    pub filter: Filter,
    /// A member's lease without a heartbeat (default 10 s; 100 ms to 1 h).
    #[serde(with = "millis", rename = "leaseMs")]
    pub lease: Duration,
    /// How long a member may hold a message (default 30 s; 100 ms to 24 h).
    #[serde(with = "millis", rename = "messageTimeoutMs")]
    pub message_timeout: Duration,
    /// Retries after the first attempt before a message is parked (default 10;
    /// at most 1,000).
    pub max_retries: u32,
    /// The first retry's backoff; each later one doubles, up to `retry_cap`
    /// (default 100 ms).
    #[serde(with = "millis", rename = "retryBaseMs")]
    pub retry_base: Duration,
    /// The longest backoff (default 30 s; at most 1 h).
    #[serde(with = "millis", rename = "retryCapMs")]
    pub retry_cap: Duration,
    /// Messages read ahead and not yet settled, at most (default 256; 1 to 65,536).
    pub buffer: usize,
    /// Park the later events of a stream behind a parked one (default off; needs
    /// the pinned strategy).
    pub sequenced_parking: bool,
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            strategy: Strategy::Pinned,
            start: StartFrom::Beginning,
            filter: Filter::all(),
            lease: Duration::from_secs(10),
            message_timeout: Duration::from_secs(30),
            max_retries: 10,
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_secs(30),
            buffer: 256,
            sequenced_parking: false,
        }
    }
}

impl GroupSettings {
    /// Checks every setting; the first one out of range is named in the error.
    pub fn validate(&self) -> Result<(), GroupError> {
        let bad = |field: &str, reason: String| {
            Err(GroupError::InvalidSettings {
                field: field.to_owned(),
                reason,
            })
        };
        let ms = |d: Duration| d.as_millis();
        if !(100..=3_600_000).contains(&ms(self.lease)) {
            return bad(
                "leaseMs",
                format!("{} ms is outside 100 ms to 1 h", ms(self.lease)),
            );
        }
        if !(100..=86_400_000).contains(&ms(self.message_timeout)) {
            return bad(
                "messageTimeoutMs",
                format!("{} ms is outside 100 ms to 24 h", ms(self.message_timeout)),
            );
        }
        if self.max_retries > 1_000 {
            return bad(
                "maxRetries",
                format!("{} is more than 1000", self.max_retries),
            );
        }
        if self.retry_cap > Duration::from_secs(3_600) {
            return bad(
                "retryCapMs",
                format!("{} ms is more than 1 h", ms(self.retry_cap)),
            );
        }
        if self.retry_base > self.retry_cap {
            return bad(
                "retryBaseMs",
                format!(
                    "{} ms is more than retryCapMs ({} ms)",
                    ms(self.retry_base),
                    ms(self.retry_cap)
                ),
            );
        }
        if !(1..=65_536).contains(&self.buffer) {
            return bad("buffer", format!("{} is outside 1 to 65536", self.buffer));
        }
        if self.filter.event_types.iter().any(String::is_empty) {
            return bad("filter", "an event type is empty".to_owned());
        }
        if self.filter.categories.iter().any(String::is_empty) {
            return bad("filter", "a category is empty".to_owned());
        }
        if self.filter.stream_prefix.as_deref() == Some("") {
            return bad("filter", "the stream prefix is empty".to_owned());
        }
        if self.sequenced_parking && self.strategy != Strategy::Pinned {
            return bad(
                "sequencedParking",
                "needs the pinned strategy, which keeps each stream in order".to_owned(),
            );
        }
        Ok(())
    }

    /// The backoff before the retry that follows failed attempt `attempt` (from 1):
    /// `min(retry_cap, retry_base · 2^(attempt-1))`, without jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.retry_base
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.retry_cap)
    }
}

/// Checks a group name: 1 to 100 characters of ASCII letters, digits, `.`, `_` and
/// `-`, starting with a letter or a digit.
pub fn validate_group_name(name: &str) -> Result<(), GroupError> {
    let bad = |reason: &str| {
        Err(GroupError::InvalidName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_GROUP_NAME {
        return bad("it is longer than 100 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return bad("it must start with a letter or a digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return bad("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_read_back_from_empty_json() {
        let s: GroupSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(s, GroupSettings::default());
        assert!(s.validate().is_ok());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["leaseMs"], 10_000);
        assert_eq!(json["strategy"], "pinned");
        assert_eq!(json["start"], "beginning");
    }

    #[test]
    fn json_spells_strategies_and_starts() {
        let s: GroupSettings = serde_json::from_str(
            r#"{"strategy":"round-robin","start":{"position":42},"leaseMs":500}"#,
        )
        .unwrap();
        assert_eq!(s.strategy, Strategy::RoundRobin);
        assert_eq!(s.start, StartFrom::Position(42));
        assert_eq!(s.lease, Duration::from_millis(500));
        let end: GroupSettings = serde_json::from_str(r#"{"start":"end"}"#).unwrap();
        assert_eq!(end.start, StartFrom::End);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<GroupSettings>(r#"{"leaseMillis":5}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `leaseMillis`"), "{e}");
    }

    #[test]
    fn each_out_of_range_setting_is_named() {
        let cases: Vec<(GroupSettings, &str)> = vec![
            (
                GroupSettings {
                    lease: Duration::from_millis(99),
                    ..Default::default()
                },
                "leaseMs",
            ),
            (
                GroupSettings {
                    message_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "messageTimeoutMs",
            ),
            (
                GroupSettings {
                    max_retries: 1_001,
                    ..Default::default()
                },
                "maxRetries",
            ),
            (
                GroupSettings {
                    retry_cap: Duration::from_secs(3_601),
                    ..Default::default()
                },
                "retryCapMs",
            ),
            (
                GroupSettings {
                    retry_base: Duration::from_secs(2),
                    retry_cap: Duration::from_secs(1),
                    ..Default::default()
                },
                "retryBaseMs",
            ),
            (
                GroupSettings {
                    buffer: 0,
                    ..Default::default()
                },
                "buffer",
            ),
            (
                GroupSettings {
                    buffer: 65_537,
                    ..Default::default()
                },
                "buffer",
            ),
            (
                GroupSettings {
                    filter: Filter::all().event_type(""),
                    ..Default::default()
                },
                "filter",
            ),
            (
                GroupSettings {
                    sequenced_parking: true,
                    strategy: Strategy::RoundRobin,
                    ..Default::default()
                },
                "sequencedParking",
            ),
        ];
        for (settings, field) in cases {
            match settings.validate() {
                Err(GroupError::InvalidSettings { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = GroupSettings {
            retry_base: Duration::from_millis(100),
            retry_cap: Duration::from_millis(350),
            ..Default::default()
        };
        let got: Vec<u128> = (1..=5).map(|a| s.backoff(a).as_millis()).collect();
        assert_eq!(got, [100, 200, 350, 350, 350]);
        assert_eq!(s.backoff(u32::MAX), Duration::from_millis(350));
    }

    #[test]
    fn group_names() {
        for ok in ["billing", "a", "orders.v2", "x_1-y"] {
            assert!(validate_group_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "$all", "a b", "é", &"a".repeat(101)] {
            assert!(
                matches!(
                    validate_group_name(bad),
                    Err(GroupError::InvalidName { .. })
                ),
                "{bad}"
            );
        }
    }
}
