//! Consumer groups shared by processes (`--workload groups`): acknowledged events per
//! second with one and four members, in-process ([`HostedGroups`] called directly)
//! and over HTTP (a server in this process, members speaking its routes as another
//! process would), and the time a dead member's message takes to reach another
//! member (its lease expiring).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tidings::bus::{HandlerError, handler_fn};
use tidings::consumer::{GroupWorker, HostedGroups};
use tidings::group::{GroupSettings, Groups, Settlement, Strategy};
use tidings::{Event, EventStore, RecordedEvent};
use tokio::time::Instant;

use super::workloads::{micros, populate};
use super::{Row, Target, bar};
use crate::remote_groups::RemoteGroups;

/// The workloads of `--workload groups`, in the order they run.
pub(super) const WORKLOADS: [&str; 5] = [
    "groups-hosted-1",
    "groups-hosted-4",
    "groups-http-1",
    "groups-http-4",
    "groups-redelivery",
];

/// The lease the redelivery workload gives its members.
const REDELIVERY_LEASE: Duration = Duration::from_secs(1);

/// A server on a loopback port serving `store` and `groups`, until dropped.
struct LocalServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl LocalServer {
    async fn start<S: EventStore>(store: S, groups: Arc<dyn Groups>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = tidings_server::AppState::with_groups(
            store,
            groups,
            tidings_server::ServerConfig::default(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = tidings_server::serve(listener, state, shutdown).await {
                tracing::error!(error = %e, "bench server failed");
            }
        });
        Ok(Self {
            url,
            stop: Some(stop),
            task,
        })
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Runs the groups workload `name` on `store`: `n` events (streams of ten), no-op
/// handlers.
pub(super) async fn run<S: EventStore>(
    store: &S,
    template: &Event,
    name: &str,
    n: u64,
) -> anyhow::Result<Row> {
    let groups = HostedGroups::open(store.clone())
        .await
        .context("opening the store's consumer groups")?;
    let row = match name {
        "groups-hosted-1" | "groups-hosted-4" => {
            populate(store, template, "populating", n, 4, 10, true).await?;
            let members = if name.ends_with('1') { 1 } else { 4 };
            let groups: Arc<dyn Groups> = Arc::new(groups.clone());
            throughput(groups, name, n, members, "in-process").await?
        }
        "groups-http-1" | "groups-http-4" => {
            populate(store, template, "populating", n, 4, 10, true).await?;
            let members = if name.ends_with('1') { 1 } else { 4 };
            let server = LocalServer::start(store.clone(), Arc::new(groups.clone())).await?;
            let remote: Arc<dyn Groups> = Arc::new(RemoteGroups::new(&server.url, None)?);
            let row = throughput(remote, name, n, members, "over HTTP").await;
            server.stop().await;
            row?
        }
        "groups-redelivery" => {
            let server = LocalServer::start(store.clone(), Arc::new(groups.clone())).await?;
            let remote = RemoteGroups::new(&server.url, None)?;
            let row = redelivery(store, template, &remote, name).await;
            server.stop().await;
            row?
        }
        other => anyhow::bail!("unknown groups workload {other}"),
    };
    groups.shutdown().await?;
    Ok(row)
}

/// `members` workers with a no-op handler acknowledge every event of the store.
async fn throughput(
    groups: Arc<dyn Groups>,
    name: &str,
    n: u64,
    members: usize,
    how: &str,
) -> anyhow::Result<Row> {
    let settings = GroupSettings {
        buffer: 4_096,
        ..GroupSettings::default()
    };
    groups.create(name, settings).await?;
    let handled = Arc::new(AtomicU64::new(0));
    let pb = bar(n, name);
    let cpu_before = super::disk::cpu_seconds();
    let start = Instant::now();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for m in 0..members {
        let worker = GroupWorker::new(groups.clone(), name, format!("bench-{m}")).batch(256);
        let handled = handled.clone();
        let mut stopped = stopped.clone();
        workers.push(tokio::spawn(async move {
            let handler = handler_fn(move |_e: RecordedEvent| {
                let handled = handled.clone();
                async move {
                    handled.fetch_add(1, Ordering::Relaxed);
                    Ok::<(), HandlerError>(())
                }
            });
            worker
                .run(&handler, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        }));
    }
    loop {
        let done = handled.load(Ordering::Relaxed);
        pb.set_position(done);
        if done >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(true);
    for w in workers {
        w.await??;
    }
    // Everything settled: the workers acknowledged their last batches as they left.
    let secs = start.elapsed().as_secs_f64();
    let cpu = super::disk::cpu_seconds() - cpu_before;
    pb.finish_and_clear();
    let d = groups.describe(name).await?;
    anyhow::ensure!(
        d.in_flight == 0,
        "{name}: {} messages still in flight after the run",
        d.in_flight
    );
    groups.delete(name).await?;
    Ok(Row::new(
        name,
        &Target::Log(std::path::PathBuf::new()),
        n,
        members,
        256,
        secs,
        n as f64 / secs,
        &[],
    )
    .with(|r| {
        r.note = Some(format!(
            "{members} member(s) {how}, pinned, streams of 10 events, no-op handler, fetch and settle 256 at a time; CPU {:.2} µs per acked event (all threads, server included)",
            cpu * 1e6 / n.max(1) as f64
        ));
    }))
}

/// A member takes a message and dies (it never calls again); another member, long-
/// polling, gets the message once the dead one's lease has lapsed. Times the gap from
/// the dead member's last call to the redelivery, over several rounds.
async fn redelivery<S: EventStore>(
    store: &S,
    template: &Event,
    groups: &RemoteGroups,
    name: &str,
) -> anyhow::Result<Row> {
    let rounds: u64 = 10;
    let settings = GroupSettings {
        lease: REDELIVERY_LEASE,
        strategy: Strategy::RoundRobin,
        ..GroupSettings::default()
    };
    groups.create(name, settings).await?;
    let survivor = groups.join(name, "survivor").await?;
    let pb = bar(rounds, name);
    let start = Instant::now();
    let mut gaps = Vec::new();
    for round in 0..rounds {
        // One message at a time, so the survivor can only get the dead member's.
        let stream = tidings::StreamId::new(&format!("redelivery-{round}"))?;
        store
            .append(
                &stream,
                tidings::ExpectedVersion::NoStream,
                vec![super::workloads::fresh(template)],
            )
            .await?;
        let dying = groups.join(name, "dying").await?;
        let taken = groups.fetch(&dying, 1, Duration::from_secs(5)).await?;
        let died = Instant::now();
        let Some(held) = taken.first() else {
            anyhow::bail!("{name}: the dying member got no message");
        };
        // The survivor keeps its lease by long-polling; the message comes back once the
        // dying member's lease has lapsed.
        loop {
            let got = groups
                .fetch(&survivor, 1, Duration::from_millis(200))
                .await?;
            if let Some(m) = got.first() {
                let gap = died.elapsed();
                anyhow::ensure!(
                    m.event.event_id == held.event.event_id,
                    "{name}: the survivor got another message than the dead member's"
                );
                groups
                    .settle(&survivor, vec![(m.id, Settlement::Ack)])
                    .await?;
                gaps.push(micros(gap));
                break;
            }
            anyhow::ensure!(
                died.elapsed() < REDELIVERY_LEASE * 30,
                "{name}: the dead member's message never came back"
            );
        }
        pb.inc(1);
    }
    let secs = start.elapsed().as_secs_f64();
    pb.finish_and_clear();
    groups.leave(&survivor).await?;
    groups.delete(name).await?;
    let max = gaps.iter().copied().max().unwrap_or(0);
    Ok(Row::new(
        name,
        &Target::Log(std::path::PathBuf::new()),
        rounds,
        2,
        1,
        secs,
        rounds as f64 / secs,
        &gaps,
    )
    .with(|r| {
        r.note = Some(format!(
            "lease {} ms; time from a member's last call to its message reaching another member over HTTP; max {:.0} ms",
            REDELIVERY_LEASE.as_millis(),
            f64::from(max) / 1e3
        ));
    }))
}
