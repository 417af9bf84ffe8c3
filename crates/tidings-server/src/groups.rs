//! Consumer groups over HTTP, so that a member may be written in any language.
//!
//! The routes call the server's [`Groups`] (for `tidings serve`, groups hosted over the
//! embedded store, or kept in PostgreSQL): see the crate documentation for the table of
//! routes and [`groups_sse`](crate::groups_sse) for the Server-Sent Events route. A member
//! is named by its group and member id in the path; its lease is kept alive by every
//! fetch and settlement, and by `POST …/heartbeat`.
//!
//! Request bodies are JSON; a body that does not parse, or carries an unknown field, is
//! answered 400 with the offending field in `field` and changes nothing. Errors of the
//! groups themselves are mapped by [`group_problem`]: invalid names, settings and
//! requests 400, unknown groups and parked messages 404, an existing group and a lost
//! race 409, a lapsed lease 410 (`urn:tidings:problem:lease-expired`), and a failing
//! store or backend 503.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tidings::event::cloudevents::recorded_to_structured;
use tidings::group::{
    DeliveryId, GroupDescription, GroupError, GroupMessage, GroupSettings, Groups, MemberLease,
    ParkedId, ParkedSelection, Settlement, validate_group_name,
};

use crate::format::{CLOUDEVENTS_BATCH, ReadFormat, Shape, negotiate, vary_accept};
use crate::problem::Problem;
use crate::routes::{encode_segment, query};
use crate::{AppState, EventStore};

/// Messages a fetch asks for when the request does not say.
pub const DEFAULT_FETCH: usize = 16;
/// The most messages one fetch (or one stream's unsettled window) may ask for.
pub const MAX_FETCH: usize = 1_000;
/// How long a fetch waits for a first message when the request does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The longest a fetch waits; longer requests are cut to this.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// Parked messages listed when the request does not say.
pub const DEFAULT_PARKED_LIMIT: usize = 100;
/// The most parked messages one request lists.
pub const MAX_PARKED_LIMIT: usize = 10_000;

/// The answer to a group error: status, problem type and the values that name it.
pub fn group_problem(e: GroupError) -> Problem {
    let detail = e.to_string();
    match e {
        GroupError::InvalidName { name, reason } => {
            Problem::bad_request("invalid-group-name", detail)
                .with("field", "name")
                .with("name", name)
                .with("reason", reason)
        }
        GroupError::InvalidSettings { field, reason } => {
            Problem::bad_request("invalid-group-settings", detail)
                .with("field", field)
                .with("reason", reason)
        }
        GroupError::InvalidRequest(reason) => {
            Problem::bad_request("invalid-request", detail).with("reason", reason)
        }
        GroupError::NotFound { group } => {
            Problem::not_found("group-not-found", detail).with("group", group)
        }
        GroupError::ParkedNotFound { group, id } => Problem::not_found("parked-not-found", detail)
            .with("group", group)
            .with("id", id),
        GroupError::AlreadyExists { group } => {
            Problem::new(StatusCode::CONFLICT, "group-exists", detail).with("group", group)
        }
        GroupError::Conflict { group, reason } => {
            Problem::new(StatusCode::CONFLICT, "group-conflict", detail)
                .with("group", group)
                .with("reason", reason)
        }
        GroupError::LeaseExpired { group, member } => {
            Problem::new(StatusCode::GONE, "lease-expired", detail)
                .with("group", group)
                .with("member", member)
        }
        GroupError::Store(e) => Problem::unavailable("group-store-unavailable", e.to_string(), 1),
        GroupError::Backend(_) => Problem::unavailable("group-backend-unavailable", detail, 1),
        // A failure this server does not name yet.
        _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "group-failure", detail),
    }
}

impl From<GroupError> for Problem {
    fn from(e: GroupError) -> Self {
        group_problem(e)
    }
}

impl<S: EventStore> AppState<S> {
    /// The groups this server serves, or the problem that says it serves none.
    pub(crate) fn served_groups(&self) -> Result<Arc<dyn Groups>, Problem> {
        self.groups().cloned().ok_or_else(|| {
            Problem::new(
                StatusCode::NOT_IMPLEMENTED,
                "groups-not-served",
                "this server hosts no consumer groups (`tidings serve` hosts them; an embedding \
                 application passes them to AppState::with_groups)",
            )
        })
    }
}

/// The lease of `member` in `group`, as the path names it. The backend knows the
/// member's real lease; the duration is not consulted to renew it.
pub(crate) fn lease_of(group: String, member: String) -> MemberLease {
    MemberLease {
        group,
        member,
        lease: Duration::ZERO,
    }
}

/// Reads a JSON body into `T`; a parse failure names the field it failed at.
fn parse_body<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    if parsed.is_ok()
        && let Err(e) = de.end()
    {
        return Err(Problem::bad_request(
            "invalid-json",
            format!("the request body is not {what}: {e}"),
        ));
    }
    parsed.map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let mut p = Problem::bad_request(
            "invalid-json",
            if field == "." {
                format!("the request body is not {what}: {inner}")
            } else {
                format!("the request body is not {what}: at {field}: {inner}")
            },
        );
        if field != "." {
            p = p.with("field", field);
        }
        p
    })
}

/// Like [`parse_body`], but an empty body is `None`.
fn parse_optional<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<Option<T>, Problem> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_body(bytes, what).map(Some)
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

fn created(location: String, body: Value) -> Response {
    (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response()
}

fn to_json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

// ---------- groups ----------

pub(crate) async fn list<S: EventStore>(
    State(state): State<AppState<S>>,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?.list().await?;
    Ok(Json(json!({ "groups": groups })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateGroup {
    name: String,
    #[serde(default)]
    settings: Option<GroupSettings>,
}

#[tracing::instrument(name = "groups.create", skip_all, fields(group))]
pub(crate) async fn create<S: EventStore>(
    State(state): State<AppState<S>>,
    body: Bytes,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let request: CreateGroup = parse_body(&body, "{\"name\": …, \"settings\": {…}}")?;
    tracing::Span::current().record("group", request.name.as_str());
    validate_group_name(&request.name)?;
    let settings = request.settings.unwrap_or_default();
    settings.validate()?;
    let info = groups.create(&request.name, settings).await?;
    let location = format!("/groups/{}", encode_segment(&info.name));
    Ok(created(location, to_json(&info)))
}

#[tracing::instrument(name = "groups.describe", skip_all, fields(group = %group))]
pub(crate) async fn describe<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(group): Path<String>,
) -> Result<Response, Problem> {
    let description = state.served_groups()?.describe(&group).await?;
    Ok(Json(description).into_response())
}

/// `PUT /groups/{group}`: the fields the body names replace the current ones; the others
/// keep their values (so a body need not repeat the start position, which may not
/// change).
#[tracing::instrument(name = "groups.update", skip_all, fields(group = %group))]
pub(crate) async fn update<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let changes: serde_json::Map<String, Value> =
        parse_body(&body, "a JSON object of group settings")?;
    // Unknown fields and bad values are refused before the group is read.
    let _: GroupSettings = parse_body(&body, "group settings")?;
    let current = groups.describe(&group).await?.settings;
    let mut merged = match to_json(&current) {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    merged.extend(changes);
    let settings: GroupSettings = serde_json::from_value(Value::Object(merged)).map_err(|e| {
        Problem::bad_request(
            "invalid-json",
            format!("the settings do not combine with the group's: {e}"),
        )
    })?;
    settings.validate()?;
    let info = groups.update(&group, settings).await?;
    Ok(Json(info).into_response())
}

#[tracing::instrument(name = "groups.delete", skip_all, fields(group = %group))]
pub(crate) async fn delete<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(group): Path<String>,
) -> Result<Response, Problem> {
    state.served_groups()?.delete(&group).await?;
    Ok(no_content())
}

// ---------- members ----------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    #[serde(default)]
    name: Option<String>,
}

#[tracing::instrument(name = "groups.join", skip_all, fields(group = %group))]
pub(crate) async fn join<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let request: JoinRequest = parse_optional(&body, "{\"name\": \"…\"}")?.unwrap_or_default();
    let name = request.name.unwrap_or_else(|| "http".to_owned());
    let lease = groups.join(&group, &name).await?;
    let location = format!(
        "/groups/{}/members/{}",
        encode_segment(&lease.group),
        encode_segment(&lease.member)
    );
    Ok(created(location, to_json(&lease)))
}

#[tracing::instrument(name = "groups.heartbeat", skip_all, fields(group = %group, member = %member))]
pub(crate) async fn heartbeat<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((group, member)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    groups.heartbeat(&lease_of(group, member)).await?;
    Ok(no_content())
}

#[tracing::instrument(name = "groups.leave", skip_all, fields(group = %group, member = %member))]
pub(crate) async fn leave<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((group, member)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    groups.leave(&lease_of(group, member)).await?;
    Ok(no_content())
}

/// `max` of a fetch or a stream: 1 to [`MAX_FETCH`], [`DEFAULT_FETCH`] when absent.
pub(crate) fn fetch_max(max: Option<usize>) -> Result<usize, Problem> {
    match max {
        None => Ok(DEFAULT_FETCH),
        Some(n) if (1..=MAX_FETCH).contains(&n) => Ok(n),
        Some(n) => Err(Problem::bad_request(
            "invalid-query",
            format!("max {n} is outside 1 to {MAX_FETCH}"),
        )
        .with("field", "max")
        .with("limit", MAX_FETCH)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FetchQuery {
    max: Option<usize>,
    wait_ms: Option<u64>,
}

#[tracing::instrument(name = "groups.fetch", skip_all, fields(group = %group, member = %member))]
pub(crate) async fn fetch<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((group, member)): Path<(String, String)>,
    headers: HeaderMap,
    q: Result<Query<FetchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let format = negotiate(&headers, Shape::List)?;
    let q = query(q)?;
    let max = fetch_max(q.max)?;
    let wait = q
        .wait_ms
        .map_or(DEFAULT_WAIT, Duration::from_millis)
        .min(MAX_WAIT);
    let lease = lease_of(group, member);
    let mut shutdown = state.shutdown_watch();
    let messages = tokio::select! {
        r = groups.fetch(&lease, max, wait) => r?,
        _ = shutdown.wait_for(|&down| down) => {
            return Err(Problem::unavailable("shutting-down", "the server is shutting down", 5));
        }
    };
    if format == ReadFormat::Json {
        return Ok(vary_accept(
            Json(json!({ "messages": messages })).into_response(),
        ));
    }
    let batch: Vec<Value> = messages.iter().map(message_cloudevent).collect();
    Ok(vary_accept(
        (
            [(header::CONTENT_TYPE, CLOUDEVENTS_BATCH)],
            Value::Array(batch).to_string(),
        )
            .into_response(),
    ))
}

/// A message as a structured CloudEvent: the event, plus what to settle it by in the
/// `tidingsdeliveryid`, `tidingsattempt` and `tidingsreplay` extensions.
pub(crate) fn message_cloudevent(m: &GroupMessage) -> Value {
    let mut ce = recorded_to_structured(&m.event);
    if let Value::Object(map) = &mut ce {
        map.insert("tidingsdeliveryid".into(), m.id.to_string().into());
        map.insert("tidingsattempt".into(), m.attempt.to_string().into());
        map.insert("tidingsreplay".into(), m.replay.to_string().into());
    }
    ce
}

// ---------- settlements ----------

#[derive(Debug, Deserialize)]
struct SettleItem {
    id: DeliveryId,
    #[serde(flatten)]
    settlement: Settlement,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettleRequest {
    settlements: Vec<SettleItem>,
}

/// Settles for `lease` and tells the member's open streams which ids it no longer holds.
async fn settle_for<S: EventStore>(
    state: &AppState<S>,
    groups: &dyn Groups,
    lease: &MemberLease,
    settlements: Vec<(DeliveryId, Settlement)>,
) -> Result<tidings::group::SettleReport, Problem> {
    let ids: HashSet<DeliveryId> = settlements.iter().map(|(id, _)| *id).collect();
    let report = groups.settle(lease, settlements).await?;
    state
        .inner
        .group_streams
        .released(&lease.group, &lease.member, &ids);
    Ok(report)
}

#[tracing::instrument(name = "groups.settle", skip_all, fields(group = %group, member = %member))]
pub(crate) async fn settle<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((group, member)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let request: SettleRequest = parse_body(
        &body,
        "{\"settlements\": [{\"id\": …, \"action\": \"ack\"|\"retry\"|\"park\"|\"skip\", \"reason\": …}]}",
    )?;
    let settlements = request
        .settlements
        .into_iter()
        .map(|s| (s.id, s.settlement))
        .collect();
    let lease = lease_of(group, member);
    let report = settle_for(&state, groups.as_ref(), &lease, settlements).await?;
    Ok(Json(report).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

#[tracing::instrument(name = "groups.settle_one", skip_all, fields(group = %group, member = %member, id = %id))]
pub(crate) async fn settle_one<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((group, member, id, action)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let id: DeliveryId = id.parse().map_err(|_| {
        Problem::bad_request(
            "invalid-request",
            format!("{id:?} is not a delivery id; ids are the numbers fetch answered with"),
        )
        .with("field", "id")
    })?;
    let reason = parse_optional::<ReasonBody>(&body, "{\"reason\": \"…\"}")?
        .unwrap_or_default()
        .reason;
    let settlement = match action.as_str() {
        "ack" => Settlement::Ack,
        "skip" => Settlement::Skip,
        "retry" => Settlement::Retry {
            reason: reason.unwrap_or_else(|| "retried over HTTP".to_owned()),
        },
        "park" => Settlement::Park {
            reason: reason.unwrap_or_else(|| "parked over HTTP".to_owned()),
        },
        other => {
            return Err(Problem::not_found(
                "route-not-found",
                format!("{other:?} is not a settlement: use ack, retry, park or skip"),
            )
            .with("field", "action"));
        }
    };
    let lease = lease_of(group, member);
    let report = settle_for(&state, groups.as_ref(), &lease, vec![(id, settlement)]).await?;
    if report.stale.contains(&id) {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "stale-delivery",
            format!(
                "member {} of consumer group {:?} no longer holds delivery {id} (it timed out \
                 and went to another member, or was never its own); nothing was done",
                lease.member, lease.group
            ),
        )
        .with("group", lease.group)
        .with("member", lease.member)
        .with("id", id));
    }
    Ok(no_content())
}

// ---------- parked ----------

#[derive(Debug, Deserialize)]
pub(crate) struct ParkedQuery {
    limit: Option<usize>,
}

#[tracing::instrument(name = "groups.parked", skip_all, fields(group = %group))]
pub(crate) async fn parked<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(group): Path<String>,
    q: Result<Query<ParkedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let limit = match query(q)?.limit {
        None => DEFAULT_PARKED_LIMIT,
        Some(n) if (1..=MAX_PARKED_LIMIT).contains(&n) => n,
        Some(n) => {
            return Err(Problem::bad_request(
                "invalid-query",
                format!("limit {n} is outside 1 to {MAX_PARKED_LIMIT}"),
            )
            .with("field", "limit")
            .with("limit", MAX_PARKED_LIMIT));
        }
    };
    let parked = groups.parked(&group, limit).await?;
    Ok(Json(json!({ "parked": parked })).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionBody {
    #[serde(default)]
    ids: Option<Vec<ParkedId>>,
}

/// `{"ids": [...]}` names those; an empty body, `{}` or `"ids": null` names all.
fn selection(body: &[u8]) -> Result<ParkedSelection, Problem> {
    let body: SelectionBody =
        parse_optional(body, "{\"ids\": [...]} (or empty, for all)")?.unwrap_or_default();
    Ok(body.ids.map_or(ParkedSelection::All, ParkedSelection::Ids))
}

fn parked_id(id: &str) -> Result<ParkedId, Problem> {
    id.parse().map_err(|_| {
        Problem::bad_request(
            "invalid-request",
            format!("{id:?} is not a parked message id; ids are the numbers the parked list shows"),
        )
        .with("field", "id")
    })
}

#[tracing::instrument(name = "groups.replay_parked", skip_all, fields(group = %group))]
pub(crate) async fn replay_parked<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let which = selection(&body)?;
    let queued = groups.replay_parked(&group, which).await?;
    Ok(Json(json!({ "queued": queued })).into_response())
}

#[tracing::instrument(name = "groups.delete_parked", skip_all, fields(group = %group))]
pub(crate) async fn delete_parked<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let which = selection(&body)?;
    let deleted = groups.delete_parked(&group, which).await?;
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

#[tracing::instrument(name = "groups.replay_parked_one", skip_all, fields(group = %group, id = %id))]
pub(crate) async fn replay_parked_one<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let id = parked_id(&id)?;
    let queued = groups
        .replay_parked(&group, ParkedSelection::Ids(vec![id]))
        .await?;
    Ok(Json(json!({ "queued": queued })).into_response())
}

#[tracing::instrument(name = "groups.delete_parked_one", skip_all, fields(group = %group, id = %id))]
pub(crate) async fn delete_parked_one<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((group, id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let id = parked_id(&id)?;
    let deleted = groups
        .delete_parked(&group, ParkedSelection::Ids(vec![id]))
        .await?;
    if deleted == 0 {
        return Err(GroupError::ParkedNotFound { group, id }.into());
    }
    Ok(no_content())
}

/// Every group's state now, for `/metrics`; groups that cannot be described (deleted
/// meanwhile, a backend failure) are left out.
pub(crate) async fn describe_all<S: EventStore>(state: &AppState<S>) -> Vec<GroupDescription> {
    let Some(groups) = state.groups() else {
        return Vec::new();
    };
    let Ok(list) = groups.list().await else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(list.len());
    for info in list {
        if let Ok(d) = groups.describe(&info.name).await {
            out.push(d);
        }
    }
    out
}
