//! A group member's messages as Server-Sent Events.
//!
//! `GET /groups/{group}/members/{member}/stream?max=N` sends each message the member is
//! given as one SSE message: `event: message`, `id:` the delivery id, `data:` the
//! [`GroupMessage`] JSON. The member settles them with the settle routes, as a polling
//! member does. At most `max` (default 16, at most 1,000) messages are out unsettled at
//! once: the stream fetches more as the member settles through this server, and checks
//! the member's holdings with the group's description while it waits (which also notices
//! messages taken back after a timeout).
//!
//! While the connection is open the server keeps the member's lease alive (each fetch
//! renews it, and it heartbeats while the window is full). When the connection closes
//! the member does not leave: its lease lapses after the group's lease time, so a client
//! may reconnect to the same member meanwhile. A client done with the member leaves with
//! `DELETE /groups/{group}/members/{member}`. Idle connections get `: heartbeat`
//! comments; a failure (the lease lapsed, the group was deleted) is sent as an
//! `event: error` whose data is a problem document, and ends the stream.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tidings::group::{DeliveryId, GroupError, GroupMessage, Groups, MemberLease};
use tokio::sync::{Notify, mpsc, watch};

use crate::groups::{fetch_max, lease_of};
use crate::problem::Problem;
use crate::routes::query;
use crate::{AppState, EventStore};

/// What one open stream has handed out and not yet seen settled.
#[derive(Default)]
struct Window {
    held: Mutex<HashSet<DeliveryId>>,
    changed: Notify,
}

impl Window {
    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<DeliveryId>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type MemberKey = (String, String);

/// The open member streams, so that a settlement through any route frees room in the
/// streams of its member.
#[derive(Default)]
pub(crate) struct GroupStreams {
    open: Mutex<HashMap<MemberKey, Vec<Weak<Window>>>>,
}

impl GroupStreams {
    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<MemberKey, Vec<Weak<Window>>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(&self, group: &str, member: &str) -> Arc<Window> {
        let window = Arc::new(Window::default());
        let mut open = self.open();
        open.retain(|_, windows| {
            windows.retain(|w| w.strong_count() > 0);
            !windows.is_empty()
        });
        open.entry((group.to_owned(), member.to_owned()))
            .or_default()
            .push(Arc::downgrade(&window));
        window
    }

    /// `member` of `group` no longer holds `ids` (settled, or reported stale).
    pub(crate) fn released(&self, group: &str, member: &str, ids: &HashSet<DeliveryId>) {
        let windows: Vec<Arc<Window>> = self
            .open()
            .get(&(group.to_owned(), member.to_owned()))
            .map(|ws| ws.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for window in windows {
            window.held().retain(|id| !ids.contains(id));
            window.changed.notify_one();
        }
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct StreamQuery {
    max: Option<usize>,
}

#[tracing::instrument(name = "groups.stream", skip_all, fields(group = %group, member = %member))]
pub(crate) async fn stream<S: EventStore>(
    State(state): State<AppState<S>>,
    Path((group, member)): Path<(String, String)>,
    q: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let groups = state.served_groups()?;
    let max = fetch_max(query(q)?.max)?;
    // The group and the lease are checked before the stream starts, so that a wrong
    // path is a plain problem answer rather than an error event.
    let lease_time = groups.describe(&group).await?.settings.lease;
    let lease = lease_of(group, member);
    groups.heartbeat(&lease).await?;
    let window = state
        .inner
        .group_streams
        .register(&lease.group, &lease.member);
    let (tx, rx) = mpsc::channel::<SseEvent>(16);
    let feeder = Feeder {
        groups,
        lease,
        max,
        // Renew well within the lease, whatever its length.
        renew: (lease_time / 3).max(Duration::from_millis(20)),
        window,
        tx,
    };
    tokio::spawn(feeder.run(state.shutdown_watch()));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), rx))
    });
    Ok(Sse::new(body)
        .keep_alive(
            KeepAlive::new()
                .interval(state.config().heartbeat)
                .text("heartbeat"),
        )
        .into_response())
}

/// The task behind one stream: fetches into the window and sends what it gets.
struct Feeder {
    groups: Arc<dyn Groups>,
    lease: MemberLease,
    max: usize,
    renew: Duration,
    window: Arc<Window>,
    tx: mpsc::Sender<SseEvent>,
}

impl Feeder {
    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let closed = async {
            tokio::select! {
                _ = self.tx.closed() => {},
                _ = shutdown.wait_for(|&down| down) => {},
            }
        };
        tokio::pin!(closed);
        loop {
            let room = self.max.saturating_sub(self.window.held().len());
            let step = async {
                if room > 0 {
                    self.fetch(room).await
                } else {
                    self.wait_for_room().await
                }
            };
            tokio::select! {
                () = &mut closed => return,
                r = step => if let Err(e) = r {
                    // The client may be gone already; then there is no one to tell.
                    let problem = Problem::from(e).body().to_string();
                    let _ = self.tx.send(SseEvent::default().event("error").data(problem)).await;
                    return;
                },
            }
        }
    }

    async fn fetch(&self, room: usize) -> Result<(), GroupError> {
        let messages = self.groups.fetch(&self.lease, room, self.renew).await?;
        for m in messages {
            self.window.held().insert(m.id);
            if self.tx.send(message_event(&m)).await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Waits until a settlement frees room, heartbeating meanwhile; each heartbeat also
    /// checks the window against what the member holds (messages taken back after a
    /// timeout are never settled through it).
    async fn wait_for_room(&self) -> Result<(), GroupError> {
        tokio::select! {
            () = self.window.changed.notified() => Ok(()),
            () = tokio::time::sleep(self.renew) => {
                self.groups.heartbeat(&self.lease).await?;
                let held = self
                    .groups
                    .describe(&self.lease.group)
                    .await?
                    .members
                    .into_iter()
                    .find(|m| m.member == self.lease.member)
                    .map_or(0, |m| m.in_flight);
                let mut window = self.window.held();
                let surplus = window.len().saturating_sub(held);
                let gone: Vec<DeliveryId> = window.iter().copied().take(surplus).collect();
                for id in gone {
                    window.remove(&id);
                }
                Ok(())
            }
        }
    }
}

fn message_event(m: &GroupMessage) -> SseEvent {
    let data = serde_json::to_string(m).unwrap_or_else(|_| "{}".to_owned());
    SseEvent::default()
        .event("message")
        .id(m.id.to_string())
        .data(data)
}
