//! The group transactions. Each runs with `lock_timeout` and `statement_timeout` set
//! for the transaction only (`SET LOCAL`), so a session holding a lock cannot hang it.
//!
//! ```text
//! fetch   BEGIN; SET LOCAL …
//!           group_renew.sql    lease live? renew it (locks the member row); settings
//!           group_reclaim.sql  lapsed leases and timed-out messages back to ready/parked
//!           group_top_up.sql   read the log into the window (skipped when the cursor is
//!                              locked by another fetch, or the log has not moved)
//!           group_hold.sql     sequenced parking only
//!           group_pick.sql     ready → out under fresh delivery ids, with the events
//!         COMMIT
//! settle  BEGIN; SET LOCAL …; group_renew; group_settle_lock (FOR UPDATE, fenced by
//!         delivery id, member, state and timeout); group_settle_apply; [group_hold]; COMMIT
//! ```

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, Postgres, Transaction};
use tidings_core::event::timestamp_from_micros;
use tidings_core::group::{
    DeliveryId, GroupDescription, GroupError, GroupInfo, GroupMessage, GroupSettings, MemberInfo,
    MemberLease, ParkedMessage, ParkedSelection, SettleReport, Settlement, StartFrom, Strategy,
};
use tidings_core::{Position, StoreError};
use uuid::Uuid;

use super::{PgGroups, lock, log_may_have_more, settle_plan};
use crate::row::{get, recorded_event, signed, unsigned};

/// Most log positions one fetch looks at when topping up the window, so a filter that
/// matches little cannot make one statement scan the whole log.
const SCAN_WINDOW: i64 = 10_000;

/// A message a member holds, as `group_settle_lock.sql` found it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Held {
    pub(super) position: i64,
    pub(super) attempts: u32,
}

/// Settlements as columns for `group_settle_apply.sql`.
#[derive(Debug, Default)]
pub(super) struct SettleRows {
    pub(super) positions: Vec<i64>,
    pub(super) actions: Vec<&'static str>,
    pub(super) attempts: Vec<i32>,
    pub(super) delays_ms: Vec<i64>,
    pub(super) reasons: Vec<Option<String>>,
}

impl SettleRows {
    pub(super) fn push(
        &mut self,
        position: i64,
        action: &'static str,
        attempts: u32,
        delay: Duration,
        reason: Option<String>,
    ) {
        self.positions.push(position);
        self.actions.push(action);
        self.attempts
            .push(i32::try_from(attempts).unwrap_or(i32::MAX));
        self.delays_ms.push(millis(delay));
        self.reasons.push(reason);
    }
}

/// What one run of the fetch transaction got.
pub(super) struct Fetched {
    pub(super) messages: Vec<GroupMessage>,
    /// The top-up stopped at its scan window: run again at once.
    pub(super) more_to_read: bool,
    /// The group's lease length now.
    pub(super) lease: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A database failure as a group error that says what was being done and, for the
/// timeouts, which one fired.
fn backend(groups: &PgGroups, what: &str) -> impl Fn(sqlx::Error) -> GroupError {
    let what = what.to_owned();
    let lock_ms = groups.lock_timeout.as_millis();
    let statement_ms = groups.statement_timeout.as_millis();
    move |e| {
        let message = match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => format!(
                "{what}: another session held a lock on the group's rows for longer than \
                 lock_timeout ({lock_ms} ms); nothing was changed, try again"
            ),
            sqlx::Error::Database(db) if db.code().as_deref() == Some("57014") => format!(
                "{what}: a statement ran longer than statement_timeout ({statement_ms} ms); \
                 nothing was changed, try again"
            ),
            sqlx::Error::PoolTimedOut => {
                format!("{what}: no database connection became free in time")
            }
            sqlx::Error::PoolClosed => format!("{what}: the store was closed"),
            sqlx::Error::Database(db) => format!(
                "{what}: {}: {}",
                db.code().as_deref().unwrap_or("?"),
                db.message()
            ),
            other => format!("{what}: {other}"),
        };
        GroupError::Backend(message)
    }
}

fn corrupt(what: String) -> GroupError {
    GroupError::Store(StoreError::Corrupt(what))
}

async fn begin(
    groups: &PgGroups,
    what: &str,
) -> Result<Transaction<'static, Postgres>, GroupError> {
    let sql = format!(
        "BEGIN; SET LOCAL lock_timeout = '{}ms'; SET LOCAL statement_timeout = '{}ms'",
        groups.lock_timeout.as_millis(),
        groups.statement_timeout.as_millis()
    );
    groups
        .store
        .pool()
        .begin_with(AssertSqlSafe(sql))
        .await
        .map_err(backend(groups, what))
}

async fn commit(
    groups: &PgGroups,
    tx: Transaction<'static, Postgres>,
    what: &str,
) -> Result<(), GroupError> {
    tx.commit().await.map_err(backend(groups, what))
}

fn parse_settings(group: &str, json: &str) -> Result<GroupSettings, GroupError> {
    serde_json::from_str(json)
        .map_err(|e| corrupt(format!("consumer group {group:?}: stored settings: {e}")))
}

fn settings_json(settings: &GroupSettings) -> Result<String, GroupError> {
    serde_json::to_string(settings)
        .map_err(|e| GroupError::Backend(format!("settings to JSON: {e}")))
}

fn not_found(group: &str) -> GroupError {
    GroupError::NotFound {
        group: group.to_owned(),
    }
}

fn lease_expired(lease: &MemberLease) -> GroupError {
    GroupError::LeaseExpired {
        group: lease.group.clone(),
        member: lease.member.clone(),
    }
}

/// The group's id, or `NotFound`.
async fn group_id(
    groups: &PgGroups,
    conn: &mut sqlx::PgConnection,
    group: &str,
) -> Result<i64, GroupError> {
    sqlx::query_scalar("SELECT id FROM tidings_groups WHERE name = $1")
        .bind(group)
        .fetch_optional(conn)
        .await
        .map_err(backend(groups, "find group"))?
        .ok_or_else(|| not_found(group))
}

/// Renews `lease` inside `tx`: the group's id and settings, or why not (`NotFound`
/// when the group is gone, `LeaseExpired` otherwise).
async fn renew(
    groups: &PgGroups,
    tx: &mut Transaction<'static, Postgres>,
    lease: &MemberLease,
) -> Result<(i64, GroupSettings), GroupError> {
    let Ok(member) = Uuid::parse_str(&lease.member) else {
        return Err(lease_expired(lease));
    };
    let row = sqlx::query(include_str!("../../sql/queries/group_renew.sql"))
        .bind(&lease.group)
        .bind(member)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend(groups, "renew lease"))?;
    match row {
        Some(row) => {
            let id: i64 = get(&row, "id")?;
            let json: String = get(&row, "settings")?;
            Ok((id, parse_settings(&lease.group, &json)?))
        }
        None => {
            group_id(groups, tx, &lease.group).await?;
            Err(lease_expired(lease))
        }
    }
}

async fn reclaim(
    groups: &PgGroups,
    tx: &mut Transaction<'static, Postgres>,
    id: i64,
    settings: &GroupSettings,
) -> Result<u64, GroupError> {
    let taken = sqlx::query(include_str!("../../sql/queries/group_reclaim.sql"))
        .bind(id)
        .bind(i32::try_from(settings.max_retries).unwrap_or(i32::MAX))
        .execute(&mut **tx)
        .await
        .map_err(backend(groups, "take back lapsed messages"))?
        .rows_affected();
    if taken > 0 {
        tracing::debug!(
            group = id,
            taken,
            "took back messages of lapsed leases or timeouts"
        );
    }
    Ok(taken)
}

async fn hold(
    groups: &PgGroups,
    tx: &mut Transaction<'static, Postgres>,
    id: i64,
) -> Result<(), GroupError> {
    sqlx::query(include_str!("../../sql/queries/group_hold.sql"))
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(backend(groups, "hold events behind parked ones"))?;
    Ok(())
}

/// Reads the log into the window. True when the cursor stopped short of the head
/// because of the scan window.
async fn top_up(
    groups: &PgGroups,
    tx: &mut Transaction<'static, Postgres>,
    id: i64,
    settings: &GroupSettings,
) -> Result<bool, GroupError> {
    let head = *groups.store.head_watch().borrow();
    let known = lock(&groups.shared.read_upto).get(&id).copied();
    if !log_may_have_more(head, known) {
        return Ok(false);
    }
    // The horizon first, in a statement of its own: the top-up's snapshot, taken after
    // it, sees every event that settled below it.
    let horizon: i64 = sqlx::query(include_str!("../../sql/queries/horizon.sql"))
        .fetch_one(&mut **tx)
        .await
        .map_err(backend(groups, "read the visibility horizon"))
        .and_then(|row| get(&row, "horizon").map_err(GroupError::from))?;
    let row = sqlx::query(include_str!("../../sql/queries/group_top_up.sql"))
        .bind(id)
        .bind(signed(settings.buffer as u64))
        .bind(&settings.filter.event_types)
        .bind(&settings.filter.stream_prefix)
        .bind(SCAN_WINDOW)
        .bind(&settings.filter.categories)
        .bind(horizon)
        .fetch_optional(&mut **tx)
        .await
        .map_err(backend(groups, "read the log into the group"))?;
    let Some(row) = row else {
        return Ok(false);
    };
    let read_upto: i64 = get(&row, "read_upto")?;
    let log_head: i64 = get(&row, "head")?;
    if let Ok(upto) = unsigned(read_upto) {
        lock(&groups.shared.read_upto).insert(id, upto);
    }
    let read: i64 = get(&row, "read")?;
    let room: i64 = get(&row, "room")?;
    // Stopped by the scan window (not by a full buffer): look further at once.
    Ok(read_upto < log_head && read < room)
}

pub(super) async fn fetch_once(
    groups: &PgGroups,
    lease: &MemberLease,
    max: usize,
) -> Result<Fetched, GroupError> {
    let mut tx = begin(groups, "begin fetch").await?;
    let (id, settings) = renew(groups, &mut tx, lease).await?;
    reclaim(groups, &mut tx, id, &settings).await?;
    let more_to_read = top_up(groups, &mut tx, id, &settings).await?;
    if settings.sequenced_parking {
        hold(groups, &mut tx, id).await?;
    }
    let member = Uuid::parse_str(&lease.member).map_err(|_| lease_expired(lease))?;
    let rows = sqlx::query(include_str!("../../sql/queries/group_pick.sql"))
        .bind(id)
        .bind(member)
        .bind(signed(max as u64))
        .bind(settings.strategy == Strategy::Pinned)
        .bind(settings.sequenced_parking)
        .bind(millis(settings.message_timeout))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend(groups, "hand out messages"))?;
    commit(groups, tx, "commit fetch").await?;
    let mut messages = rows
        .iter()
        .map(group_message)
        .collect::<Result<Vec<_>, _>>()?;
    messages.sort_by_key(|m| m.event.position);
    Ok(Fetched {
        messages,
        more_to_read,
        lease: settings.lease,
    })
}

fn group_message(row: &PgRow) -> Result<GroupMessage, GroupError> {
    let id: i64 = get(row, "delivery_id")?;
    let attempts: i32 = get(row, "attempts")?;
    Ok(GroupMessage {
        id: unsigned(id).map_err(|_| corrupt(format!("delivery id {id}")))?,
        attempt: u32::try_from(attempts).unwrap_or(0).saturating_add(1),
        replay: get(row, "replay")?,
        event: recorded_event(row)?,
    })
}

pub(super) async fn settle(
    groups: &PgGroups,
    lease: &MemberLease,
    settlements: Vec<(DeliveryId, Settlement)>,
) -> Result<SettleReport, GroupError> {
    let mut tx = begin(groups, "begin settle").await?;
    let (id, settings) = renew(groups, &mut tx, lease).await?;
    let member = Uuid::parse_str(&lease.member).map_err(|_| lease_expired(lease))?;
    let ids: Vec<i64> = settlements.iter().map(|(d, _)| signed(*d)).collect();
    let rows = sqlx::query(include_str!("../../sql/queries/group_settle_lock.sql"))
        .bind(id)
        .bind(member)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend(groups, "find the messages to settle"))?;
    let mut held = HashMap::with_capacity(rows.len());
    for row in &rows {
        let delivery: i64 = get(row, "delivery_id")?;
        let attempts: i32 = get(row, "attempts")?;
        held.insert(
            unsigned(delivery).map_err(|_| corrupt(format!("delivery id {delivery}")))?,
            Held {
                position: get(row, "position")?,
                attempts: u32::try_from(attempts).unwrap_or(0),
            },
        );
    }
    let (plan, stale, parked) = settle_plan(&settings, &held, settlements);
    let settled = plan.positions.len();
    if settled > 0 {
        sqlx::query(include_str!("../../sql/queries/group_settle_apply.sql"))
            .bind(id)
            .bind(&plan.positions)
            .bind(&plan.actions)
            .bind(&plan.attempts)
            .bind(&plan.delays_ms)
            .bind(&plan.reasons)
            .execute(&mut *tx)
            .await
            .map_err(backend(groups, "settle messages"))?;
        if parked && settings.sequenced_parking {
            hold(groups, &mut tx, id).await?;
        }
    }
    commit(groups, tx, "commit settle").await?;
    Ok(SettleReport { settled, stale })
}

pub(super) async fn create(
    groups: &PgGroups,
    name: &str,
    settings: &GroupSettings,
) -> Result<(), GroupError> {
    let start: Option<i64> = match settings.start {
        StartFrom::Beginning => Some(0),
        StartFrom::End => None,
        StartFrom::Position(p) => Some(signed(p)),
    };
    let mut tx = begin(groups, "begin create group").await?;
    let created: Option<i64> =
        sqlx::query_scalar(include_str!("../../sql/queries/group_create.sql"))
            .bind(name)
            .bind(settings_json(settings)?)
            .bind(start)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend(groups, "create group"))?;
    if created.is_none() {
        return Err(GroupError::AlreadyExists {
            group: name.to_owned(),
        });
    }
    commit(groups, tx, "commit create group").await
}

pub(super) async fn update(
    groups: &PgGroups,
    name: &str,
    settings: &GroupSettings,
) -> Result<(), GroupError> {
    let mut tx = begin(groups, "begin update group").await?;
    let row = sqlx::query("SELECT id, settings::text AS settings FROM tidings_groups WHERE name = $1 FOR NO KEY UPDATE")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend(groups, "lock group"))?
        .ok_or_else(|| not_found(name))?;
    let id: i64 = get(&row, "id")?;
    let old = parse_settings(name, &get::<String>(&row, "settings")?)?;
    if old.start != settings.start {
        return Err(GroupError::InvalidSettings {
            field: "start".to_owned(),
            reason: "a group's start is fixed when it is created".to_owned(),
        });
    }
    sqlx::query("UPDATE tidings_groups SET settings = $2::jsonb WHERE id = $1")
        .bind(id)
        .bind(settings_json(settings)?)
        .execute(&mut *tx)
        .await
        .map_err(backend(groups, "update group"))?;
    if old.filter != settings.filter {
        sqlx::query(include_str!("../../sql/queries/group_drop_unmatched.sql"))
            .bind(id)
            .bind(&settings.filter.event_types)
            .bind(&settings.filter.stream_prefix)
            .bind(&settings.filter.categories)
            .execute(&mut *tx)
            .await
            .map_err(backend(groups, "drop messages the new filter leaves out"))?;
    }
    commit(groups, tx, "commit update group").await
}

pub(super) async fn delete(groups: &PgGroups, name: &str) -> Result<i64, GroupError> {
    let mut tx = begin(groups, "begin delete group").await?;
    let id: i64 = sqlx::query_scalar("DELETE FROM tidings_groups WHERE name = $1 RETURNING id")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend(groups, "delete group"))?
        .ok_or_else(|| not_found(name))?;
    for sql in [
        "DELETE FROM tidings_group_members WHERE group_id = $1",
        "DELETE FROM tidings_group_messages WHERE group_id = $1",
    ] {
        sqlx::query(sql)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend(groups, "delete group"))?;
    }
    commit(groups, tx, "commit delete group").await?;
    Ok(id)
}

pub(super) async fn list(groups: &PgGroups) -> Result<Vec<GroupInfo>, GroupError> {
    let rows =
        sqlx::query("SELECT name, settings::text AS settings FROM tidings_groups ORDER BY name")
            .fetch_all(groups.store.pool())
            .await
            .map_err(backend(groups, "list groups"))?;
    rows.iter()
        .map(|row| {
            let name: String = get(row, "name")?;
            let settings = parse_settings(&name, &get::<String>(row, "settings")?)?;
            Ok(GroupInfo { name, settings })
        })
        .collect()
}

pub(super) async fn describe(
    groups: &PgGroups,
    name: &str,
) -> Result<GroupDescription, GroupError> {
    let mut tx = begin(groups, "begin describe group").await?;
    let id = group_id(groups, &mut tx, name).await?;
    let row = sqlx::query("SELECT settings::text AS settings FROM tidings_groups WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .map_err(backend(groups, "describe group"))?;
    let settings = parse_settings(name, &get::<String>(&row, "settings")?)?;
    reclaim(groups, &mut tx, id, &settings).await?;
    if settings.sequenced_parking {
        hold(groups, &mut tx, id).await?;
    }
    let row = sqlx::query(include_str!("../../sql/queries/group_describe.sql"))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend(groups, "describe group"))?
        .ok_or_else(|| not_found(name))?;
    let members = sqlx::query(include_str!("../../sql/queries/group_members.sql"))
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend(groups, "describe members"))?;
    commit(groups, tx, "commit describe group").await?;

    let position = |column: &str| -> Result<Position, GroupError> {
        let n: i64 = get(&row, column)?;
        unsigned(n).map_err(|_| corrupt(format!("consumer group {name:?}: {column} {n}")))
    };
    let count = |r: &PgRow, column: &str| -> Result<u64, GroupError> {
        let n: i64 = get(r, column)?;
        Ok(unsigned(n).unwrap_or(0))
    };
    let read_upto = position("read_upto")?;
    let head = position("head")?;
    let first_unsettled: Option<i64> = get(&row, "first_unsettled")?;
    let checkpoint = first_unsettled
        .and_then(|p| unsigned(p).ok())
        .map_or(read_upto, |p| p.min(read_upto));
    let members = members
        .iter()
        .map(|m| {
            let member: Uuid = get(m, "member")?;
            Ok(MemberInfo {
                member: member.to_string(),
                name: get(m, "name")?,
                in_flight: count(m, "in_flight")? as usize,
                lease_left: Duration::from_millis(count(m, "left_ms")?),
            })
        })
        .collect::<Result<Vec<_>, GroupError>>()?;
    Ok(GroupDescription {
        name: name.to_owned(),
        settings,
        checkpoint,
        head,
        lag: head.saturating_sub(checkpoint),
        members,
        in_flight: count(&row, "in_flight")? as usize,
        parked: count(&row, "parked")?,
    })
}

pub(super) async fn join(
    groups: &PgGroups,
    group: &str,
    member_name: &str,
) -> Result<MemberLease, GroupError> {
    let member = Uuid::new_v4();
    let row = sqlx::query(include_str!("../../sql/queries/group_join.sql"))
        .bind(member)
        .bind(group)
        .bind(member_name)
        .fetch_optional(groups.store.pool())
        .await
        .map_err(backend(groups, "join group"))?
        .ok_or_else(|| not_found(group))?;
    let lease_ms: i64 = get(&row, "lease_ms")?;
    Ok(MemberLease {
        group: group.to_owned(),
        member: member.to_string(),
        lease: Duration::from_millis(unsigned(lease_ms).unwrap_or(0)),
    })
}

pub(super) async fn heartbeat(groups: &PgGroups, lease: &MemberLease) -> Result<(), GroupError> {
    let mut tx = begin(groups, "begin heartbeat").await?;
    renew(groups, &mut tx, lease).await?;
    commit(groups, tx, "commit heartbeat").await
}

/// Leaves; true when messages may have been released.
pub(super) async fn leave(groups: &PgGroups, lease: &MemberLease) -> Result<bool, GroupError> {
    let Ok(member) = Uuid::parse_str(&lease.member) else {
        return Ok(false);
    };
    let mut tx = begin(groups, "begin leave").await?;
    let row = sqlx::query(include_str!("../../sql/queries/group_leave.sql"))
        .bind(&lease.group)
        .bind(member)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend(groups, "leave group"))?;
    let mut released = false;
    if let Some(row) = row {
        let id: i64 = get(&row, "id")?;
        let live: bool = get(&row, "live")?;
        if live {
            released = sqlx::query(include_str!("../../sql/queries/group_release.sql"))
                .bind(id)
                .bind(member)
                .execute(&mut *tx)
                .await
                .map_err(backend(groups, "release messages"))?
                .rows_affected()
                > 0;
        }
    }
    commit(groups, tx, "commit leave").await?;
    Ok(released)
}

pub(super) async fn parked(
    groups: &PgGroups,
    group: &str,
    limit: usize,
) -> Result<Vec<ParkedMessage>, GroupError> {
    let mut tx = begin(groups, "begin list parked").await?;
    let id = group_id(groups, &mut tx, group).await?;
    let sequenced: Option<bool> = sqlx::query_scalar(
        "SELECT (settings ->> 'sequencedParking')::boolean FROM tidings_groups WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&mut *tx)
    .await
    .map_err(backend(groups, "list parked"))?;
    if sequenced == Some(true) {
        hold(groups, &mut tx, id).await?;
    }
    let rows = sqlx::query(include_str!("../../sql/queries/group_parked.sql"))
        .bind(id)
        .bind(signed(limit as u64))
        .fetch_all(&mut *tx)
        .await
        .map_err(backend(groups, "list parked"))?;
    commit(groups, tx, "commit list parked").await?;
    rows.iter()
        .map(|row| {
            let parked_id: i64 = get(row, "parked_id")?;
            let attempts: i32 = get(row, "attempts")?;
            Ok(ParkedMessage {
                id: unsigned(parked_id).map_err(|_| corrupt(format!("parked id {parked_id}")))?,
                parked_at: timestamp_from_micros(get(row, "parked_at_us")?),
                reason: get(row, "reason")?,
                attempts: u32::try_from(attempts).unwrap_or(0),
                held: get(row, "held")?,
                event: recorded_event(row)?,
            })
        })
        .collect()
}

/// The selection as bind values, after checking every named id is in the parked list.
async fn selection(
    groups: &PgGroups,
    tx: &mut Transaction<'static, Postgres>,
    group: &str,
    id: i64,
    which: &ParkedSelection,
) -> Result<(bool, Vec<i64>), GroupError> {
    match which {
        ParkedSelection::All => Ok((true, Vec::new())),
        ParkedSelection::Ids(ids) => {
            let ids: Vec<i64> = ids.iter().map(|i| signed(*i)).collect();
            let missing: Option<i64> =
                sqlx::query_scalar(include_str!("../../sql/queries/group_parked_missing.sql"))
                    .bind(id)
                    .bind(&ids)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(backend(groups, "find parked messages"))?;
            match missing {
                Some(m) => Err(GroupError::ParkedNotFound {
                    group: group.to_owned(),
                    id: unsigned(m).unwrap_or(0),
                }),
                None => Ok((false, ids)),
            }
        }
    }
}

pub(super) async fn replay_parked(
    groups: &PgGroups,
    group: &str,
    which: ParkedSelection,
) -> Result<u64, GroupError> {
    let mut tx = begin(groups, "begin replay parked").await?;
    let id = group_id(groups, &mut tx, group).await?;
    let (all, ids) = selection(groups, &mut tx, group, id, &which).await?;
    let n = sqlx::query(include_str!("../../sql/queries/group_replay.sql"))
        .bind(id)
        .bind(all)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(backend(groups, "replay parked"))?
        .rows_affected();
    commit(groups, tx, "commit replay parked").await?;
    Ok(n)
}

pub(super) async fn delete_parked(
    groups: &PgGroups,
    group: &str,
    which: ParkedSelection,
) -> Result<u64, GroupError> {
    let mut tx = begin(groups, "begin delete parked").await?;
    let id = group_id(groups, &mut tx, group).await?;
    let (all, ids) = selection(groups, &mut tx, group, id, &which).await?;
    let n = sqlx::query(include_str!("../../sql/queries/group_delete_parked.sql"))
        .bind(id)
        .bind(all)
        .bind(&ids)
        .execute(&mut *tx)
        .await
        .map_err(backend(groups, "delete parked"))?
        .rows_affected();
    commit(groups, tx, "commit delete parked").await?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_rows_saturate() {
        let mut rows = SettleRows::default();
        rows.push(1, "retry", u32::MAX, Duration::MAX, None);
        assert_eq!(rows.attempts, vec![i32::MAX]);
        assert_eq!(rows.delays_ms, vec![i64::MAX]);
    }
}
