//! [`RemoteGroups`]: a server's consumer groups over its HTTP routes, as [`Groups`].
//!
//! The CLI's `group`, `parked` and `group consume` commands use it with `--server`, and
//! so do the bench's HTTP workloads: a member in this process of a group hosted by a
//! server elsewhere.

use std::time::Duration;

use anyhow::{Result, bail};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tidings::group::{
    DeliveryId, GroupDescription, GroupError, GroupInfo, GroupMessage, GroupSettings, Groups,
    MemberLease, ParkedMessage, ParkedSelection, SettleReport, Settlement,
};
use tidings::handler::BoxFuture;

/// A server's consumer groups.
#[derive(Clone, Debug)]
pub struct RemoteGroups {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct GroupList {
    groups: Vec<GroupInfo>,
}

#[derive(Deserialize)]
struct Messages {
    messages: Vec<GroupMessage>,
}

#[derive(Deserialize)]
struct ParkedList {
    parked: Vec<ParkedMessage>,
}

#[derive(Deserialize)]
struct Queued {
    queued: u64,
}

#[derive(Deserialize)]
struct Deleted {
    deleted: u64,
}

impl RemoteGroups {
    /// The groups of the server at `base` (e.g. `http://127.0.0.1:7400`).
    pub fn new(base: &str, token: Option<String>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            bail!("--server {base}: use a URL like http://127.0.0.1:7400");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self { base, http, token })
    }

    /// Sends a request and reads a JSON answer (`None` for an empty one).
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        group: &str,
    ) -> Result<Option<T>, GroupError> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let response = req.send().await.map_err(|e| {
            GroupError::Backend(format!("cannot reach the server at {}: {e}", self.base))
        })?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let text = response
            .text()
            .await
            .map_err(|e| GroupError::Backend(format!("reading the answer: {e}")))?;
        if status.is_success() {
            if text.trim().is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| GroupError::Backend(format!("unreadable answer to {path}: {e}")));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Err(problem_to_error(status, &body, group))
    }

    async fn must<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        group: &str,
    ) -> Result<T, GroupError> {
        self.call(method, path, body, group)
            .await?
            .ok_or_else(|| GroupError::Backend(format!("{path}: the server answered nothing")))
    }

    fn member_path(lease: &MemberLease) -> String {
        format!(
            "/groups/{}/members/{}",
            enc(&lease.group),
            enc(&lease.member)
        )
    }
}

/// The typed error for a problem+json answer.
fn problem_to_error(status: StatusCode, body: &Value, group: &str) -> GroupError {
    let detail = body["detail"]
        .as_str()
        .or_else(|| body["title"].as_str())
        .unwrap_or("no detail")
        .to_owned();
    let group = group.to_owned();
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            if let Some(rest) = detail.strip_prefix("invalid group settings: ") {
                let (field, reason) = rest.split_once(": ").unwrap_or(("settings", rest));
                GroupError::InvalidSettings {
                    field: field.to_owned(),
                    reason: reason.to_owned(),
                }
            } else if detail.starts_with("invalid group name") {
                GroupError::InvalidName {
                    name: group,
                    reason: detail,
                }
            } else {
                GroupError::InvalidRequest(detail)
            }
        }
        StatusCode::NOT_FOUND => match body["id"].as_u64() {
            Some(id) if detail.contains("parked") => GroupError::ParkedNotFound { group, id },
            _ if detail.contains("parked") => GroupError::ParkedNotFound { group, id: 0 },
            _ => GroupError::NotFound { group },
        },
        StatusCode::CONFLICT if detail.contains("exists already") => {
            GroupError::AlreadyExists { group }
        }
        StatusCode::CONFLICT => GroupError::Conflict {
            group,
            reason: detail,
        },
        StatusCode::GONE => GroupError::LeaseExpired {
            group,
            member: body["member"].as_str().unwrap_or_default().to_owned(),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => GroupError::Backend(format!(
            "the server answered {status}: {detail} (pass --token or set TIDINGS_TOKEN)"
        )),
        _ => GroupError::Backend(format!("the server answered {status}: {detail}")),
    }
}

fn selection(which: &ParkedSelection) -> Value {
    match which {
        ParkedSelection::All => json!({}),
        ParkedSelection::Ids(ids) => json!({ "ids": ids }),
    }
}

impl Groups for RemoteGroups {
    fn create(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> BoxFuture<'_, Result<GroupInfo, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let body = json!({ "name": name, "settings": settings });
            self.must(Method::POST, "/groups", Some(body), &name).await
        })
    }

    fn update(
        &self,
        name: &str,
        settings: GroupSettings,
    ) -> BoxFuture<'_, Result<GroupInfo, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let body =
                serde_json::to_value(&settings).map_err(|e| GroupError::Backend(e.to_string()))?;
            let path = format!("/groups/{}", enc(&name));
            self.must(Method::PUT, &path, Some(body), &name).await
        })
    }

    fn delete(&self, name: &str) -> BoxFuture<'_, Result<(), GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let path = format!("/groups/{}", enc(&name));
            self.call::<Value>(Method::DELETE, &path, None, &name)
                .await
                .map(|_| ())
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<GroupInfo>, GroupError>> {
        Box::pin(async move {
            let list: GroupList = self.must(Method::GET, "/groups", None, "").await?;
            Ok(list.groups)
        })
    }

    fn describe(&self, name: &str) -> BoxFuture<'_, Result<GroupDescription, GroupError>> {
        let name = name.to_owned();
        Box::pin(async move {
            let path = format!("/groups/{}", enc(&name));
            self.must(Method::GET, &path, None, &name).await
        })
    }

    fn join(
        &self,
        group: &str,
        member_name: &str,
    ) -> BoxFuture<'_, Result<MemberLease, GroupError>> {
        let (group, member_name) = (group.to_owned(), member_name.to_owned());
        Box::pin(async move {
            let path = format!("/groups/{}/members", enc(&group));
            let body = json!({ "name": member_name });
            self.must(Method::POST, &path, Some(body), &group).await
        })
    }

    fn heartbeat(&self, lease: &MemberLease) -> BoxFuture<'_, Result<(), GroupError>> {
        let lease = lease.clone();
        Box::pin(async move {
            let path = format!("{}/heartbeat", Self::member_path(&lease));
            self.call::<Value>(Method::POST, &path, None, &lease.group)
                .await
                .map(|_| ())
        })
    }

    fn leave(&self, lease: &MemberLease) -> BoxFuture<'_, Result<(), GroupError>> {
        let lease = lease.clone();
        Box::pin(async move {
            let path = Self::member_path(&lease);
            match self
                .call::<Value>(Method::DELETE, &path, None, &lease.group)
                .await
            {
                Ok(_) | Err(GroupError::LeaseExpired { .. }) => Ok(()),
                Err(e) => Err(e),
            }
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
            if max == 0 {
                return Err(GroupError::InvalidRequest(
                    "max must be at least 1".to_owned(),
                ));
            }
            let path = format!(
                "{}/messages?max={max}&waitMs={}",
                Self::member_path(&lease),
                wait.as_millis()
            );
            let m: Messages = self.must(Method::GET, &path, None, &lease.group).await?;
            Ok(m.messages)
        })
    }

    fn settle(
        &self,
        lease: &MemberLease,
        settlements: Vec<(DeliveryId, Settlement)>,
    ) -> BoxFuture<'_, Result<SettleReport, GroupError>> {
        let lease = lease.clone();
        Box::pin(async move {
            let mut items = Vec::with_capacity(settlements.len());
            for (id, s) in settlements {
                let mut v =
                    serde_json::to_value(&s).map_err(|e| GroupError::Backend(e.to_string()))?;
                v["id"] = json!(id);
                items.push(v);
            }
            let path = format!("{}/settle", Self::member_path(&lease));
            let body = json!({ "settlements": items });
            self.must(Method::POST, &path, Some(body), &lease.group)
                .await
        })
    }

    fn parked(
        &self,
        group: &str,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<ParkedMessage>, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move {
            let path = format!("/groups/{}/parked?limit={limit}", enc(&group));
            let p: ParkedList = self.must(Method::GET, &path, None, &group).await?;
            Ok(p.parked)
        })
    }

    fn replay_parked(
        &self,
        group: &str,
        which: ParkedSelection,
    ) -> BoxFuture<'_, Result<u64, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move {
            let path = format!("/groups/{}/parked/replay", enc(&group));
            let q: Queued = self
                .must(Method::POST, &path, Some(selection(&which)), &group)
                .await?;
            Ok(q.queued)
        })
    }

    fn delete_parked(
        &self,
        group: &str,
        which: ParkedSelection,
    ) -> BoxFuture<'_, Result<u64, GroupError>> {
        let group = group.to_owned();
        Box::pin(async move {
            let path = format!("/groups/{}/parked", enc(&group));
            let d: Deleted = self
                .must(Method::DELETE, &path, Some(selection(&which)), &group)
                .await?;
            Ok(d.deleted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_become_typed_errors() {
        let p = |detail: &str| json!({ "detail": detail });
        assert_eq!(
            problem_to_error(
                StatusCode::BAD_REQUEST,
                &p("invalid group settings: buffer: 0 is outside 1 to 65536"),
                "g"
            ),
            GroupError::InvalidSettings {
                field: "buffer".into(),
                reason: "0 is outside 1 to 65536".into()
            }
        );
        assert!(matches!(
            problem_to_error(
                StatusCode::NOT_FOUND,
                &p("consumer group \"g\" does not exist"),
                "g"
            ),
            GroupError::NotFound { .. }
        ));
        assert!(matches!(
            problem_to_error(
                StatusCode::NOT_FOUND,
                &json!({"detail": "consumer group \"g\" has no parked message 7", "id": 7}),
                "g"
            ),
            GroupError::ParkedNotFound { id: 7, .. }
        ));
        assert!(matches!(
            problem_to_error(
                StatusCode::CONFLICT,
                &p("consumer group \"g\" exists already"),
                "g"
            ),
            GroupError::AlreadyExists { .. }
        ));
        assert!(matches!(
            problem_to_error(StatusCode::GONE, &p("gone"), "g"),
            GroupError::LeaseExpired { .. }
        ));
        assert!(matches!(
            problem_to_error(StatusCode::SERVICE_UNAVAILABLE, &Value::Null, "g"),
            GroupError::Backend(_)
        ));
    }
}

/// The consumer-group conformance suite through a server: `RemoteGroups` speaking to
/// the routes of a server hosting an in-memory store's groups.
#[cfg(test)]
mod conformance {
    use std::sync::{Arc, Mutex};

    use tidings::InMemoryStore;
    use tidings::consumer::HostedGroups;
    use tidings_testkit::group_conformance::{GroupHarness, run_all};

    use super::*;

    struct Hosted {
        groups: HostedGroups<InMemoryStore>,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<()>,
    }

    /// Servers by URL, so `reopen` can stop the one behind a client.
    #[derive(Default)]
    struct ThroughServer {
        servers: Mutex<Vec<(String, Hosted)>>,
    }

    impl ThroughServer {
        async fn serve(&self, store: InMemoryStore) -> RemoteGroups {
            let groups = HostedGroups::open(store.clone()).await.unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let state = tidings_server::AppState::with_groups(
                store,
                Arc::new(groups.clone()),
                tidings_server::ServerConfig::default(),
            );
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                tidings_server::serve(listener, state, shutdown)
                    .await
                    .unwrap();
            });
            let hosted = Hosted { groups, stop, task };
            self.servers.lock().unwrap().push((url.clone(), hosted));
            RemoteGroups::new(&url, None).unwrap()
        }
    }

    impl GroupHarness for ThroughServer {
        type Store = InMemoryStore;
        type Groups = RemoteGroups;

        fn fresh(&self) -> BoxFuture<'_, (InMemoryStore, RemoteGroups)> {
            Box::pin(async move {
                let store = InMemoryStore::new();
                let groups = self.serve(store.clone()).await;
                (store, groups)
            })
        }

        fn reopen<'a>(
            &'a self,
            store: &'a InMemoryStore,
            old: RemoteGroups,
        ) -> BoxFuture<'a, RemoteGroups> {
            Box::pin(async move {
                let hosted = {
                    let mut servers = self.servers.lock().unwrap();
                    let i = servers.iter().position(|(u, _)| *u == old.base).unwrap();
                    servers.remove(i).1
                };
                hosted.groups.shutdown().await.unwrap();
                let _ = hosted.stop.send(());
                hosted.task.await.unwrap();
                self.serve(store.clone()).await
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_servers_groups_keep_the_group_semantics_over_http() {
        run_all(&ThroughServer::default()).await;
    }
}
