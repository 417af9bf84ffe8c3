//! The `$groups` system stream: every hosted group's settings, as records.
//!
//! ```text
//! $GroupCreated  {"name", "settings", "start": resolved start position}
//! $GroupUpdated  {"name", "settings"}
//! $GroupDeleted  {"name"}
//! ```
//!
//! A group's *incarnation* is the revision of its `$GroupCreated` record: its checkpoint
//! (`$checkpoint-<name>@<incarnation>`) and parked stream (`$parked-<name>@<incarnation>`)
//! carry it, so a group created again under a deleted one's name starts fresh. Every
//! record is appended with the stream version the writer last read, so two processes
//! cannot both change the groups without one of them seeing the other's change first.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tidings_core::event::{Event, Metadata, Payload};
use tidings_core::group::{GroupError, GroupSettings};
use tidings_core::store::{
    EventStore, ExpectedVersion, Position, ReadStream, Revision, StoreError,
};
use tidings_core::stream::StreamId;

/// The system stream that keeps hosted groups' settings.
pub const GROUPS_STREAM: &str = "$groups";

const CREATED: &str = "$GroupCreated";
const UPDATED: &str = "$GroupUpdated";
const DELETED: &str = "$GroupDeleted";

/// A group as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Registered {
    pub(crate) incarnation: Revision,
    pub(crate) settings: GroupSettings,
    /// Where it starts when it has no checkpoint yet.
    pub(crate) start: Position,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<GroupSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<Position>,
}

/// What a change to the registry is.
pub(crate) enum Change<'a> {
    Created {
        settings: &'a GroupSettings,
        start: Position,
    },
    Updated {
        settings: &'a GroupSettings,
    },
    Deleted,
}

pub(crate) fn stream() -> Result<StreamId, GroupError> {
    StreamId::system(GROUPS_STREAM).map_err(|e| GroupError::Backend(e.to_string()))
}

/// Reads the registry: every live group and the stream's version.
pub(crate) async fn load<S: EventStore>(
    store: &S,
) -> Result<(BTreeMap<String, Registered>, Option<Revision>), GroupError> {
    let records = store.read_stream(&stream()?, ReadStream::forward()).await?;
    let mut groups = BTreeMap::new();
    let mut version = None;
    for r in records {
        version = Some(r.revision);
        let corrupt = |reason: String| {
            GroupError::Backend(format!(
                "{GROUPS_STREAM} revision {} is unreadable: {reason}",
                r.revision
            ))
        };
        let record: Record = r.data.deserialize().map_err(|e| corrupt(e.to_string()))?;
        match r.event_type.as_str() {
            CREATED => {
                let (Some(settings), Some(start)) = (record.settings, record.start) else {
                    return Err(corrupt("a creation without settings or start".to_owned()));
                };
                groups.insert(
                    record.name,
                    Registered {
                        incarnation: r.revision,
                        settings,
                        start,
                    },
                );
            }
            UPDATED => {
                let Some(settings) = record.settings else {
                    return Err(corrupt("an update without settings".to_owned()));
                };
                if let Some(g) = groups.get_mut(&record.name) {
                    g.settings = settings;
                }
            }
            DELETED => {
                groups.remove(&record.name);
            }
            _ => {}
        }
    }
    Ok((groups, version))
}

/// Appends one change, expecting the stream at `version`. Returns the record's
/// revision, or None when another process changed the registry first.
pub(crate) async fn append<S: EventStore>(
    store: &S,
    version: Option<Revision>,
    name: &str,
    change: Change<'_>,
) -> Result<Option<Revision>, GroupError> {
    let (event_type, record) = match change {
        Change::Created { settings, start } => (
            CREATED,
            Record {
                name: name.to_owned(),
                settings: Some(settings.clone()),
                start: Some(start),
            },
        ),
        Change::Updated { settings } => (
            UPDATED,
            Record {
                name: name.to_owned(),
                settings: Some(settings.clone()),
                start: None,
            },
        ),
        Change::Deleted => (
            DELETED,
            Record {
                name: name.to_owned(),
                settings: None,
                start: None,
            },
        ),
    };
    let data = Payload::from_serialize(&record).map_err(|e| GroupError::Backend(e.to_string()))?;
    let event = Event {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.to_owned(),
        event_version: "1.0".to_owned(),
        timestamp: jiff::Timestamp::now(),
        source: "tidings-consumer".to_owned(),
        data,
        metadata: Metadata::default(),
    };
    let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
    match store.append(&stream()?, expected, vec![event]).await {
        Ok(r) => Ok(Some(r.next_expected_version)),
        Err(StoreError::WrongExpectedVersion { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}
