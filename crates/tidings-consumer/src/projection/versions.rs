//! `$projection-<name>`: which version of a versioned projection's read model is live.
//!
//! The stream is a short history of one projection's versions, one small record per
//! change, each `{"version": N}`:
//!
//! | type | meaning |
//! |---|---|
//! | `$ProjectionVersionStarted` | a rebuild began (or resumed) filling version N |
//! | `$ProjectionVersionLive` | readers were moved to version N |
//! | `$ProjectionVersionRetired` | version N's storage was dropped |
//!
//! Every record is appended with the stream version its writer last read, so two
//! rebuilds of one projection cannot both swap: the second gets
//! [`ProjectionError::VersionConflict`]. No stream means version 1 is live and nothing
//! else exists.

use serde::Serialize;
use tidings_core::event::{Clock, Event, Metadata, Payload, SystemClock};
use tidings_core::store::{
    EventAppender, EventReader, ExpectedVersion, ReadStream, Revision, StoreError,
};
use tidings_core::stream::StreamId;

use super::ProjectionError;

/// The record type of a rebuild that began (or resumed) filling a version.
pub const VERSION_STARTED_EVENT_TYPE: &str = "$ProjectionVersionStarted";
/// The record type of a swap: readers now go to this version.
pub const VERSION_LIVE_EVENT_TYPE: &str = "$ProjectionVersionLive";
/// The record type of a version whose storage was dropped after a swap.
pub const VERSION_RETIRED_EVENT_TYPE: &str = "$ProjectionVersionRetired";

/// What `$projection-<name>` says about a projection's versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectionVersions {
    /// The version readers are served from (1 before any swap).
    pub live: u32,
    /// A version a rebuild began filling and did not swap in (an interrupted rebuild,
    /// which the next rebuild resumes).
    pub building: Option<u32>,
    /// Every version ever started or live, ascending.
    pub known: Vec<u32>,
    /// Versions whose storage was dropped, ascending.
    pub retired: Vec<u32>,
    /// The stream's version (None: no record yet); the next record expects it.
    pub revision: Option<Revision>,
}

impl Default for ProjectionVersions {
    fn default() -> Self {
        Self {
            live: 1,
            building: None,
            known: vec![1],
            retired: Vec::new(),
            revision: None,
        }
    }
}

impl ProjectionVersions {
    /// The version a new rebuild fills: the interrupted one if any, else one above every
    /// version known.
    pub fn rebuild_target(&self) -> u32 {
        self.building.unwrap_or_else(|| {
            self.known
                .iter()
                .copied()
                .chain([self.live])
                .max()
                .unwrap_or(1)
                .saturating_add(1)
        })
    }

    /// Versions that readers left and whose storage was not dropped yet (a swap
    /// interrupted before it retired them).
    pub fn stale(&self) -> Vec<u32> {
        self.known
            .iter()
            .copied()
            .filter(|v| *v != self.live && Some(*v) != self.building)
            .filter(|v| !self.retired.contains(v))
            .collect()
    }

    fn apply(&mut self, event_type: &str, version: u32) {
        if !self.known.contains(&version) {
            self.known.push(version);
            self.known.sort_unstable();
        }
        match event_type {
            VERSION_STARTED_EVENT_TYPE => {
                self.building = Some(version);
            }
            VERSION_LIVE_EVENT_TYPE => {
                self.live = version;
                if self.building == Some(version) {
                    self.building = None;
                }
            }
            VERSION_RETIRED_EVENT_TYPE => {
                if !self.retired.contains(&version) {
                    self.retired.push(version);
                    self.retired.sort_unstable();
                }
                if self.building == Some(version) {
                    self.building = None;
                }
            }
            _ => {}
        }
    }
}

/// Checks that `name` can name a versioned projection: a valid stream name that does not
/// itself end like a version (`-v<digits>`), so `<name>-v<N>` is never ambiguous.
pub(super) fn check_name(name: &str) -> Result<(), ProjectionError> {
    let invalid = |reason: String| ProjectionError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.starts_with('$') {
        return Err(invalid(
            "it must be non-empty and not start with `$`".into(),
        ));
    }
    if let Some((_, digits)) = name.rsplit_once("-v") {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(
                "it ends in `-v<digits>`, the suffix of its versions".into(),
            ));
        }
    }
    versions_stream(name).map(|_| ())
}

/// The system stream `$projection-<name>` that records which version of projection
/// `name` is live.
pub fn versions_stream(name: &str) -> Result<StreamId, ProjectionError> {
    StreamId::system(&format!("$projection-{name}")).map_err(|e| ProjectionError::InvalidName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// Reads `$projection-<name>`: the live version, an interrupted rebuild, the retired
/// versions.
pub async fn load_versions<S: EventReader>(
    store: &S,
    name: &str,
) -> Result<ProjectionVersions, ProjectionError> {
    let stream = versions_stream(name)?;
    let mut state = ProjectionVersions::default();
    let mut from = 0;
    loop {
        let page = store
            .read_stream(
                &stream,
                ReadStream::forward()
                    .from(from)
                    .limit(tidings_core::store::PAGE),
            )
            .await
            .map_err(|source| ProjectionError::Store {
                projection: name.to_owned(),
                source,
            })?;
        let Some(last) = page.last().map(|e| e.revision) else {
            return Ok(state);
        };
        for record in &page {
            let version = record
                .data
                .to_value()
                .get("version")
                .and_then(serde_json::Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0)
                .ok_or_else(|| ProjectionError::CorruptVersions {
                    projection: name.to_owned(),
                    revision: record.revision,
                    reason: format!("no positive integer \"version\" in {}", record.data),
                })?;
            state.apply(&record.event_type, version);
            state.revision = Some(record.revision);
        }
        from = last + 1;
    }
}

/// Appends one record to `$projection-<name>` if the stream is still at `state.revision`,
/// and applies it to `state`.
pub(super) async fn record<S: EventAppender>(
    store: &S,
    name: &str,
    state: &mut ProjectionVersions,
    event_type: &str,
    version: u32,
) -> Result<(), ProjectionError> {
    let stream = versions_stream(name)?;
    let expected = state
        .revision
        .map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
    let event = system_record(event_type, serde_json::json!({ "version": version }));
    match store.append(&stream, expected, vec![event]).await {
        Ok(r) => {
            state.apply(event_type, version);
            state.revision = Some(r.next_expected_version);
            Ok(())
        }
        Err(StoreError::WrongExpectedVersion { expected, .. }) => {
            Err(ProjectionError::VersionConflict {
                projection: name.to_owned(),
                expected,
            })
        }
        Err(source) => Err(ProjectionError::Store {
            projection: name.to_owned(),
            source,
        }),
    }
}

/// A record of the projection machinery for a system stream.
pub(super) fn system_record(event_type: &str, data: serde_json::Value) -> Event {
    Event {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.to_owned(),
        event_version: "1.0".to_owned(),
        timestamp: SystemClock.now(),
        source: "tidings-consumer".to_owned(),
        data: Payload::from(data),
        metadata: Metadata::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_end_like_a_version_are_refused() {
        assert!(check_name("orders").is_ok());
        assert!(check_name("event-types").is_ok());
        assert!(check_name("orders-v").is_ok());
        assert!(check_name("orders-vip").is_ok());
        assert!(matches!(
            check_name("orders-v2"),
            Err(ProjectionError::InvalidName { .. })
        ));
        assert!(check_name("").is_err());
        assert!(check_name("$orders").is_err());
    }

    #[test]
    fn the_history_folds_into_live_building_and_stale_versions() {
        let mut s = ProjectionVersions::default();
        assert_eq!((s.live, s.building, s.rebuild_target()), (1, None, 2));
        s.apply(VERSION_STARTED_EVENT_TYPE, 2);
        assert_eq!((s.live, s.building, s.rebuild_target()), (1, Some(2), 2));
        s.apply(VERSION_LIVE_EVENT_TYPE, 2);
        assert_eq!((s.live, s.building, s.stale()), (2, None, vec![1]));
        s.apply(VERSION_RETIRED_EVENT_TYPE, 1);
        assert_eq!((s.stale(), s.rebuild_target()), (vec![], 3));
    }
}
