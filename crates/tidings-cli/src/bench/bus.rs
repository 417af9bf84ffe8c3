//! The bus workloads (`--bus nats://…|amqp://…`): the outbox relay and the raw transport
//! publishing with confirmations, append-to-handler latency in another process, and a
//! broker consumer acknowledging a backlog.
//!
//! Each workload connects with its own run-scoped topology (a JetStream stream and
//! subject prefix, or a RabbitMQ exchange, named `tidings-bench-<run>`), and deletes it
//! afterwards, whether the workload succeeded or not.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use tidings::bus::{HandlerError, handler_fn};
use tidings::consumer::BrokerConsumer;
use tidings::consumer::relay::OutboxRelay;
use tidings::transport::{Message, Subscription, TopicMap, Transport};
use tidings::{Event, EventAppender, EventReader, ExpectedVersion, RecordedEvent, StreamId};
use tidings_log::LogStore;

use super::workloads::{fresh, micros, populate};
use super::{Row, Target, bar};

/// The bus workloads, in the order `--workload bus` runs them.
pub(super) const WORKLOADS: [&str; 3] = ["relay", "bus-latency", "broker-consumer"];

/// Options of the hidden `tidings bench-consumer` (the other process of `bus-latency`).
#[derive(Debug, clap::Args)]
pub struct ConsumerArgs {
    /// nats://HOST:PORT or amqp://USER:PASS@HOST:PORT/VHOST.
    #[arg(long)]
    bus: String,
    /// The run's id: names the stream or exchange.
    #[arg(long)]
    run: String,
    /// The topic to consume.
    #[arg(long)]
    topic: String,
    /// The consumer group.
    #[arg(long)]
    group: String,
}

/// A broker, whichever the URL names, with a run-scoped topology.
#[derive(Clone)]
pub(super) enum Bus {
    Nats(Box<tidings_nats::NatsTransport>),
    Rabbit(tidings_rabbitmq::RabbitTransport),
}

/// Runs `$body` with `$t` bound to the bus's concrete transport.
macro_rules! with_bus {
    ($bus:expr, |$t:ident| $body:expr) => {
        match $bus {
            Bus::Nats(b) => {
                let $t = b.as_ref().clone();
                $body
            }
            Bus::Rabbit(b) => {
                let $t = b.clone();
                $body
            }
        }
    };
}

/// The short name of the broker a URL names (`nats` or `rmq`), or an error for any
/// other scheme.
pub(super) fn label(url: &str) -> anyhow::Result<&'static str> {
    match url.split("://").next().unwrap_or_default() {
        "nats" | "tls" if url.contains("://") => Ok("nats"),
        "amqp" | "amqps" if url.contains("://") => Ok("rmq"),
        _ => bail!("--bus {url:?}: expected nats://… or amqp://…"),
    }
}

fn topology_name(run: &str) -> String {
    format!("tidings-bench-{run}")
}

async fn connect(url: &str, run: &str) -> anyhow::Result<Bus> {
    let name = topology_name(run);
    Ok(match label(url)? {
        "nats" => Bus::Nats(Box::new(
            tidings_nats::NatsTransport::connect(
                tidings_nats::NatsConfig::new(url)
                    .stream(name.replace('-', "_").to_uppercase())
                    .subject_prefix(name),
            )
            .await?,
        )),
        _ => Bus::Rabbit(
            tidings_rabbitmq::RabbitTransport::connect(
                tidings_rabbitmq::RabbitConfig::new(url).exchange(name),
            )
            .await?,
        ),
    })
}

impl Bus {
    /// Deletes the run's streams (NATS) or queues and exchange (RabbitMQ).
    async fn clean_up(&self) -> anyhow::Result<()> {
        match self {
            Self::Nats(t) => t.delete_stream().await?,
            Self::Rabbit(t) => {
                t.delete_topology().await?;
                t.close().await?;
            }
        }
        Ok(())
    }
}

/// Creates consumer group `group` on `topic` (durable), so that what is published from
/// now on is kept for it, and leaves it at once.
async fn declare_group<T: Transport>(t: &T, group: &str, topic: &str) -> anyhow::Result<()> {
    let messages = t
        .subscribe(Subscription::new(group, topic))
        .await
        .with_context(|| format!("creating consumer group {group}"))?;
    drop(messages);
    Ok(())
}

/// The options the bus workloads take.
pub(super) struct BusOptions<'a> {
    pub(super) url: &'a str,
    pub(super) events: Option<u64>,
    pub(super) concurrency: Option<usize>,
    pub(super) rate: u64,
}

/// Runs bus workload `w` on a fresh embedded store in the target's `bench-<w>` directory
/// and a fresh topology on the broker, which is deleted afterwards.
pub(super) async fn run(
    w: &str,
    target: &Target,
    template: &Event,
    o: &BusOptions<'_>,
) -> anyhow::Result<Vec<Row>> {
    target.embedded_only(w)?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let bus = connect(o.url, &run)
        .await
        .with_context(|| format!("connecting to {}", o.url))?;
    let result = async {
        match w {
            "relay" => {
                let store = super::open_log(target.workdir(w)?)?;
                let n = o.events.unwrap_or(20_000);
                let rows = with_bus!(&bus, |t| relay(&store, t, template, n).await);
                store.close().await?;
                rows
            }
            "bus-latency" => {
                let store = super::open_log(target.workdir(w)?)?;
                let n = o.events.unwrap_or(2_000);
                let row = with_bus!(&bus, |t| {
                    bus_latency(&store, t, template, n, o.rate, o.url, &run).await
                });
                store.close().await?;
                row.map(|r| vec![r])
            }
            "broker-consumer" => {
                let n = o.events.unwrap_or(20_000);
                let c = o.concurrency.unwrap_or(1);
                with_bus!(&bus, |t| broker_consumer(t, template, n, c).await).map(|r| vec![r])
            }
            other => bail!("unknown bus workload {other}"),
        }
    }
    .await;
    let cleaned = bus.clean_up().await;
    let rows = result?;
    cleaned.context("deleting the run's topology on the broker")?;
    Ok(rows)
}

fn row(name: &str, events: u64, writers: usize, secs: f64, lat: &[u32]) -> Row {
    Row::new(
        name,
        &Target::Log(PathBuf::new()),
        events,
        writers,
        1,
        secs,
        events as f64 / secs.max(1e-9),
        lat,
    )
}

fn cpu_note(cpu: f64, n: u64) -> String {
    format!(
        "CPU {:.1} µs per event (this process, all threads; the broker's not counted)",
        cpu * 1e6 / n.max(1) as f64
    )
}

/// `relay`: `n` events in the store, then the outbox relay publishes them all with
/// confirmations until its lag is 0; then the raw transport publishes as many, one at a
/// time, each confirmed before the next (the relay's ceiling).
async fn relay<T: Transport + Clone + 'static>(
    store: &LogStore,
    t: T,
    template: &Event,
    n: u64,
) -> anyhow::Result<Vec<Row>> {
    const TOPIC: &str = "bench-relay";
    // A group on the topic, so that the broker keeps (stores) what is published.
    declare_group(&t, "bench-sink", TOPIC).await?;
    populate(store, template, "populating", n, 4, 100, true).await?;
    let n = store.head().await?.map_or(0, |h| h + 1);
    let relay = OutboxRelay::builder("bench", store.clone(), t.clone())
        .topics(TopicMap::new(TOPIC))
        .head_interval(Duration::from_millis(20))
        .build()?;
    let pb = bar(n, "relay");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cpu_before = super::disk::cpu_seconds();
    let start = Instant::now();
    let relay = std::sync::Arc::new(relay);
    let running = tokio::spawn({
        let relay = relay.clone();
        async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let mut watch = relay.watch();
    loop {
        let s = watch.borrow_and_update().clone();
        pb.set_position(s.relayed);
        if s.relayed >= n && s.lag == 0 {
            break;
        }
        if running.is_finished() {
            break;
        }
        if tokio::time::timeout(Duration::from_secs(60), watch.changed())
            .await
            .is_err()
        {
            bail!("the relay made no progress for 60 s: {s:?}");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = super::disk::cpu_seconds() - cpu_before;
    pb.finish_and_clear();
    let _ = stop.send(());
    let stats = running.await??;
    if stats.relayed < n {
        bail!("the relay stopped after {} of {n} events", stats.relayed);
    }
    let relay_row = row("relay", n, 1, secs, &[]).with(|r| {
        r.note = Some(format!(
            "outbox relay, store to broker, each publish confirmed, until lag 0 ({} retries); {}",
            stats.retries,
            cpu_note(cpu, n)
        ));
    });

    let pb = bar(n, "publish-raw");
    let events: Vec<Event> = (0..n).map(|_| fresh(template)).collect();
    let mut lat = Vec::with_capacity(n as usize);
    let cpu_before = super::disk::cpu_seconds();
    let start = Instant::now();
    for e in events {
        let t0 = Instant::now();
        t.publish(Message::new(TOPIC, e)).await?;
        lat.push(micros(t0.elapsed()));
        pb.inc(1);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = super::disk::cpu_seconds() - cpu_before;
    pb.finish_and_clear();
    let raw_row = row("publish-raw", n, 1, secs, &lat).with(|r| {
        r.note = Some(format!(
            "Transport::publish one at a time, each confirmed; latency per publish; {}",
            cpu_note(cpu, n)
        ));
    });
    Ok(vec![relay_row, raw_row])
}

/// `broker-consumer`: `n` events published to a fresh topic, then a broker consumer
/// with a no-op handler (in this process) acknowledges them all.
async fn broker_consumer<T: Transport + Clone + 'static>(
    t: T,
    template: &Event,
    n: u64,
    concurrency: usize,
) -> anyhow::Result<Row> {
    const TOPIC: &str = "bench-consume";
    const GROUP: &str = "bench-consumer";
    declare_group(&t, GROUP, TOPIC).await?;
    let pb = bar(n, "publishing");
    for _ in 0..n {
        t.publish(Message::new(TOPIC, fresh(template))).await?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    let noop = handler_fn(|_e: RecordedEvent| async { Ok::<(), HandlerError>(()) });
    let consumer = BrokerConsumer::builder(t, Subscription::new(GROUP, TOPIC), noop)
        .concurrency(concurrency)
        .build();
    let pb = bar(n, "broker-consumer");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let cpu_before = super::disk::cpu_seconds();
    let start = Instant::now();
    let running = tokio::spawn({
        let consumer = consumer.clone();
        async move {
            consumer
                .run(async {
                    let _ = stopped.await;
                })
                .await
        }
    });
    let mut last = (0, Instant::now());
    loop {
        let s = consumer.stats();
        pb.set_position(s.handled);
        if s.handled >= n {
            break;
        }
        if running.is_finished() {
            bail!(
                "the broker consumer stopped after {} of {n} events",
                s.handled
            );
        }
        if s.handled != last.0 {
            last = (s.handled, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(60) {
            bail!("the broker consumer made no progress for 60 s: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = super::disk::cpu_seconds() - cpu_before;
    pb.finish_and_clear();
    let _ = stop.send(());
    running.await??;
    let s = consumer.stats();
    Ok(row("broker-consumer", n, concurrency, secs, &[]).with(|r| {
        r.note = Some(format!(
            "backlog of {n}, no-op handler, concurrency {concurrency}, acked {} (retried {}, deferred {}); {}",
            s.handled,
            s.retried,
            s.deferred,
            cpu_note(cpu, n)
        ));
    }))
}

/// The next line from the consumer process, waiting at most `wait`.
async fn next_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    wait: Duration,
) -> anyhow::Result<String> {
    match tokio::time::timeout(wait, lines.recv()).await {
        Ok(Some(l)) => Ok(l),
        Ok(None) => bail!("the consumer process ended"),
        Err(_) => bail!("the consumer process said nothing for {wait:?}"),
    }
}

/// Unix time in nanoseconds (0 before 1970).
fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The child process of `bus-latency`, killed if it is still running when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `bus-latency`: a `tidings bench-consumer` process runs a broker consumer whose
/// handler prints each event id with the time it arrived; this process appends events
/// one at a time at `rate` per second to its store, from which an outbox relay
/// publishes them. Latency: the append's start to the handler's call, per event, by
/// the wall clock (both processes on this machine).
async fn bus_latency<T: Transport + Clone + 'static>(
    store: &LogStore,
    t: T,
    template: &Event,
    n: u64,
    rate: u64,
    url: &str,
    run: &str,
) -> anyhow::Result<Row> {
    const TOPIC: &str = "bench-latency";
    const GROUP: &str = "bench-latency";
    declare_group(&t, GROUP, TOPIC).await?;
    let exe = std::env::current_exe().context("finding the tidings binary")?;
    let mut child = ChildGuard(
        Command::new(exe)
            .arg("bench-consumer")
            .args([
                "--bus", url, "--run", run, "--topic", TOPIC, "--group", GROUP,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the consumer process")?,
    );
    let out = child
        .0
        .stdout
        .take()
        .context("the consumer process's output")?;
    // Lines from the child, read on a thread of their own.
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let l = next_line(&mut lines, Duration::from_secs(30)).await?;
        if l == "ready" {
            break;
        }
    }
    let relay = OutboxRelay::builder("bench", store.clone(), t)
        .topics(TopicMap::new(TOPIC))
        .build()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        relay
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    let result = async {
        let append = |i: u64| {
            let e = fresh(template);
            let id = e.event_id;
            let stream = StreamId::new(&format!("order-lat-{i:07}"));
            async move {
                let at = unix_nanos();
                store
                    .append(&stream?, ExpectedVersion::NoStream, vec![e])
                    .await?;
                anyhow::Ok((id, at))
            }
        };
        // One event through the whole path first (relay, broker, consumer), untimed.
        let (warm, _) = append(u64::MAX).await?;
        let warm = warm.to_string();
        loop {
            let l = next_line(&mut lines, Duration::from_secs(30)).await?;
            if l.split(' ').next() == Some(warm.as_str()) {
                break;
            }
        }
        let pb = bar(n, "bus-latency");
        let mut sent: HashMap<String, u128> = HashMap::with_capacity(n as usize);
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = Instant::now();
        for i in 0..n {
            tick.tick().await;
            let (id, at) = append(i).await?;
            sent.insert(id.to_string(), at);
            pb.inc(1);
        }
        let appended_secs = start.elapsed().as_secs_f64();
        pb.finish_and_clear();
        let mut lat = Vec::with_capacity(n as usize);
        while (lat.len() as u64) < n {
            let l = next_line(&mut lines, Duration::from_secs(30))
                .await
                .with_context(|| format!("{} of {n} events received", lat.len()))?;
            let mut parts = l.split(' ');
            let (Some(id), Some(at)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Some(t0), Ok(t1)) = (sent.remove(id), at.parse::<u128>()) else {
                continue;
            };
            lat.push(micros(Duration::from_nanos(
                u64::try_from(t1.saturating_sub(t0)).unwrap_or(u64::MAX),
            )));
        }
        anyhow::Ok((lat, appended_secs))
    }
    .await;
    let _ = stop.send(());
    let relayed = running.await?;
    // Closing its standard input stops the consumer process.
    drop(child.0.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.0.try_wait(), Ok(None)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(child);
    let (lat, secs) = result?;
    let stats = relayed?;
    Ok(row("bus-latency", lat.len() as u64, 1, secs, &lat).with(|r| {
        r.note = Some(format!(
            "append start to the handler in another process (store → outbox relay → broker → broker consumer), {rate} appends/s, wall clock; relay retries {}",
            stats.retries
        ));
    }))
}

/// `tidings bench-consumer`: consumes `--group` on `--topic` with a handler that prints
/// `<event_id> <unix_nanos>` as each event arrives; prints `ready` once the group
/// exists, and stops when its standard input closes.
pub async fn run_consumer(a: ConsumerArgs) -> anyhow::Result<()> {
    let bus = connect(&a.bus, &a.run).await?;
    let print = handler_fn(|e: RecordedEvent| async move {
        let at = unix_nanos();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{} {at}", e.event_id);
        let _ = out.flush();
        Ok::<(), HandlerError>(())
    });
    let shutdown = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin()
                .read_line(&mut sink)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                sink.clear();
            }
        })
        .await;
    };
    with_bus!(&bus, |t| {
        declare_group(&t, &a.group, &a.topic).await?;
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ready");
            let _ = out.flush();
        }
        BrokerConsumer::builder(t, Subscription::new(&a.group, &a.topic), print)
            .build()
            .run(shutdown)
            .await?;
    });
    if let Bus::Rabbit(t) = &bus {
        let _ = t.close().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn bus_urls() {
        assert_eq!(label("nats://127.0.0.1:4222").unwrap(), "nats");
        assert_eq!(
            label("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap(),
            "rmq"
        );
        assert!(label("postgres://x").is_err());
        assert!(label("nats").is_err());
    }

    #[test]
    fn topology_names_are_valid() {
        let name = topology_name("0123456789ab");
        assert!(tidings::transport::is_valid_name(&name).is_ok());
    }
}
