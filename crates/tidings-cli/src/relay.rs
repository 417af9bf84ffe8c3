//! `tidings relay`: publishes the store's log to NATS JetStream or RabbitMQ, confirmed
//! and in order, from a fenced checkpoint (the outbox relay, decision 0011).
//!
//! The store is a local one (`--data DIR` or `--store postgres://…`), with the
//! checkpoint `$checkpoint-relay-<name>` in the same store, or a server (`--server
//! URL`), read over HTTP, with the checkpoint in a local file (`--checkpoint FILE`)
//! held under an exclusive lock: the server refuses appends to system streams.

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use tidings::consumer::CheckpointStore;
use tidings::consumer::relay::{OutboxRelay, RelayStats};
use tidings::store::{EventReader, EventSubscriber};
use tidings::transport::{TopicMap, Transport};
use tokio::sync::watch;

mod remote;

/// Options of `tidings relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The broker: nats://HOST:PORT (JetStream stream TIDINGS, subjects tidings.<topic>)
    /// or amqp://USER:PASS@HOST:PORT/VHOST (topic exchange `tidings`).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Sends events of TYPE to TOPIC (repeatable); other types go to --topic.
    #[arg(long = "route", value_name = "TYPE=TOPIC")]
    routes: Vec<String>,
    /// The topic of event types not routed with --route.
    #[arg(long, default_value = "events")]
    topic: String,
    /// The relay's name: its checkpoint is `relay-<name>`. Two relays with one name are
    /// fenced: the one that falls behind stops.
    #[arg(long, default_value = "default")]
    name: String,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// A Tidings server to read from, e.g. http://127.0.0.1:7400.
    #[arg(long, env = "TIDINGS_SERVER")]
    server: Option<String>,
    /// Bearer token for --server.
    #[arg(long, env = "TIDINGS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Data directory of a local embedded store (when no --server).
    #[arg(long, default_value = "./tidings-data", env = "TIDINGS_DATA")]
    data: PathBuf,
    /// A local store URL instead of --data: a directory or postgres://….
    #[arg(long, env = "TIDINGS_STORE")]
    store: Option<String>,
    /// With --server: the file that keeps the relay's checkpoint (locked while the
    /// relay runs). Default: `tidings-relay-<name>.checkpoint` in the current directory.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pg: crate::store::PgArgs,
}

/// The broker a URL names.
enum Broker {
    Nats(String),
    Amqp(String),
}

fn broker(url: &str) -> Result<Broker> {
    if url.starts_with("nats://") || url.starts_with("tls://") {
        Ok(Broker::Nats(url.to_owned()))
    } else if url.starts_with("amqp://") || url.starts_with("amqps://") {
        Ok(Broker::Amqp(url.to_owned()))
    } else {
        bail!("--to {url}: use nats://HOST:PORT or amqp://USER:PASS@HOST:PORT/VHOST")
    }
}

fn topic_map(default: &str, routes: &[String]) -> Result<TopicMap> {
    let mut topics = TopicMap::new(default);
    for route in routes {
        let Some((event_type, topic)) = route.split_once('=') else {
            bail!("--route {route:?}: expected TYPE=TOPIC");
        };
        if event_type.is_empty() || topic.is_empty() {
            bail!("--route {route:?}: expected TYPE=TOPIC");
        }
        topics = topics.route(event_type, topic);
    }
    Ok(topics)
}

/// `tidings relay`.
pub async fn run(a: RelayArgs) -> Result<()> {
    let topics = topic_map(&a.topic, &a.routes)?;
    let to = broker(&a.to)?;
    if let Some(url) = a.server.clone() {
        let client = crate::client::Remote::new(&url, a.token.clone())?;
        let source = remote::RemoteSource::new(client);
        let path = a
            .checkpoint
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("tidings-relay-{}.checkpoint", a.name)));
        let checkpoints = remote::FileCheckpoint::open(&path)?;
        return with_transport(&to, |t| {
            let relay = OutboxRelay::builder_with(&a.name, source, t, checkpoints)
                .topics(topics)
                .build();
            drive(&a, url.clone(), relay)
        })
        .await;
    }
    let spec = crate::store::StoreSpec::from_args(a.store.as_deref(), &a.data, &a.pg)?;
    let describe = spec.describe();
    crate::store::with_store!(spec, |store| {
        with_transport(&to, |t| {
            let relay = OutboxRelay::builder(&a.name, store, t)
                .topics(topics)
                .build();
            drive(&a, describe.clone(), relay)
        })
        .await
    })
}

/// Connects to the broker and hands the transport to `go`.
async fn with_transport<G, F>(to: &Broker, go: G) -> Result<()>
where
    G: FnOnce(TransportKind) -> F,
    F: Future<Output = Result<()>>,
{
    match to {
        Broker::Nats(url) => {
            let t = tidings_nats::NatsTransport::connect(tidings_nats::NatsConfig::new(url))
                .await
                .context("connecting to NATS")?;
            go(TransportKind::Nats(Box::new(t))).await
        }
        Broker::Amqp(url) => {
            let t = tidings_rabbitmq::RabbitTransport::connect(
                tidings_rabbitmq::RabbitConfig::new(url),
            )
            .await
            .context("connecting to RabbitMQ")?;
            let closer = t.clone();
            let result = go(TransportKind::Rabbit(t)).await;
            let _ = closer.close().await;
            result
        }
    }
}

/// Either broker, as one [`Transport`] type.
#[derive(Debug, Clone)]
enum TransportKind {
    Nats(Box<tidings_nats::NatsTransport>),
    Rabbit(tidings_rabbitmq::RabbitTransport),
}

impl Transport for TransportKind {
    async fn publish(
        &self,
        message: tidings::transport::Message,
    ) -> Result<(), tidings::TransportError> {
        match self {
            Self::Nats(t) => t.publish(message).await,
            Self::Rabbit(t) => t.publish(message).await,
        }
    }

    async fn subscribe(
        &self,
        subscription: tidings::transport::Subscription,
    ) -> Result<tidings::transport::BrokerMessages, tidings::TransportError> {
        match self {
            Self::Nats(t) => t.subscribe(subscription).await,
            Self::Rabbit(t) => t.subscribe(subscription).await,
        }
    }

    fn deduplicates_by_event_id(&self) -> bool {
        match self {
            Self::Nats(t) => t.deduplicates_by_event_id(),
            Self::Rabbit(t) => t.deduplicates_by_event_id(),
        }
    }
}

/// Runs the relay until Ctrl-C or SIGTERM, reporting progress and serving metrics.
async fn drive<S, C>(
    a: &RelayArgs,
    from: String,
    relay: Result<OutboxRelay<S, TransportKind, C>, tidings::consumer::RelayError>,
) -> Result<()>
where
    S: EventReader + EventSubscriber + Clone + 'static,
    C: CheckpointStore,
{
    let relay = relay?;
    let dedupe = relay_dedupe_note(&a.to);
    eprintln!(
        "relaying {from} to {} as {} ({dedupe}); Ctrl-C to stop",
        redact(&a.to),
        relay.checkpoint_name()
    );
    let metrics = match a.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for metrics"))?;
            let local = listener.local_addr().unwrap_or(addr);
            eprintln!("metrics on http://{local}/metrics");
            Some(tokio::spawn(serve_metrics(listener, relay.watch())))
        }
        None => None,
    };
    let reporter = tokio::spawn(report(relay.watch()));
    let result = relay.run(tidings_server::shutdown_signal()).await;
    reporter.abort();
    let _ = reporter.await;
    if let Some(m) = metrics {
        m.abort();
    }
    let stats = result?;
    println!(
        "stopped: relayed {} events, next position {}, checkpoint {}, head {}, lag {}, retries {}",
        stats.relayed,
        stats.next,
        stats
            .checkpoint
            .map_or_else(|| "none".to_owned(), |c| c.to_string()),
        stats
            .head
            .map_or_else(|| "none".to_owned(), |h| h.to_string()),
        stats.lag,
        stats.retries
    );
    Ok(())
}

fn relay_dedupe_note(to: &str) -> &'static str {
    if to.starts_with("amqp") {
        "at-least-once: consumers drop repeats by event id"
    } else {
        "at-least-once: JetStream drops repeats by Nats-Msg-Id"
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn line(s: &RelayStats) -> String {
    let mut out = format!(
        "relayed {} position {} head {} lag {}",
        s.relayed,
        s.position.map_or_else(|| "-".to_owned(), |p| p.to_string()),
        s.head.map_or_else(|| "-".to_owned(), |h| h.to_string()),
        s.lag
    );
    if s.retries > 0 {
        out.push_str(&format!(" retries {}", s.retries));
    }
    if let Some(e) = &s.last_error {
        if s.retries > 0 || s.resubscribes > 0 {
            out.push_str(&format!(" last error: {e}"));
        }
    }
    out
}

/// A line a second (a spinner on a terminal).
async fn report(stats: watch::Receiver<RelayStats>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    if std::io::stdout().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(120));
        loop {
            tick.tick().await;
            bar.set_message(line(&stats.borrow()));
        }
    } else {
        let mut last = None;
        loop {
            tick.tick().await;
            let now = stats.borrow().clone();
            if last.as_ref() != Some(&now) {
                println!("{}", line(&now));
                last = Some(now);
            }
        }
    }
}

/// The Prometheus text of the relay's numbers.
fn encode_metrics(s: &RelayStats) -> String {
    use prometheus_client::encoding::text;
    use prometheus_client::metrics::counter::ConstCounter;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::registry::Registry;
    let gauge = |v: u64| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    let mut registry = Registry::default();
    registry.register(
        "tidings_relay_lag_events",
        "Log positions not yet relayed (head + 1 - next position)",
        gauge(s.lag),
    );
    registry.register(
        "tidings_relay_published",
        "Events published and confirmed by the broker since start",
        ConstCounter::new(s.relayed),
    );
    registry.register(
        "tidings_relay_retries",
        "Publishes that failed and were retried since start",
        ConstCounter::new(s.retries),
    );
    registry.register(
        "tidings_relay_position",
        "The next log position the relay considers; everything before it is confirmed or skipped",
        gauge(s.next),
    );
    if let Some(head) = s.head {
        registry.register(
            "tidings_relay_head_position",
            "The store's head as last seen by the relay",
            gauge(head),
        );
    }
    let mut out = String::with_capacity(1024);
    // Writing to a String cannot fail.
    let _ = text::encode(&mut out, &registry);
    out
}

/// Answers every HTTP request on `listener` with the metrics.
async fn serve_metrics(listener: tokio::net::TcpListener, stats: watch::Receiver<RelayStats>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let body = encode_metrics(&stats.borrow());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_routes_and_brokers() {
        let t = topic_map("events", &["OrderCreated=orders".to_owned()]).unwrap();
        assert_eq!(t.topic_for("OrderCreated"), "orders");
        assert_eq!(t.topic_for("Other"), "events");
        assert!(topic_map("events", &["nope".to_owned()]).is_err());
        assert!(matches!(broker("nats://h:4222").unwrap(), Broker::Nats(_)));
        assert!(matches!(
            broker("amqp://g:g@h:5672/%2f").unwrap(),
            Broker::Amqp(_)
        ));
        assert!(broker("http://x").is_err());
        assert_eq!(
            redact("amqp://guest:pw@h:5672/%2f"),
            "amqp://***@h:5672/%2f"
        );
    }

    #[test]
    fn metrics_have_the_documented_names() {
        let text = encode_metrics(&RelayStats {
            relayed: 3,
            next: 4,
            head: Some(5),
            lag: 2,
            ..RelayStats::default()
        });
        for name in [
            "tidings_relay_lag_events 2",
            "tidings_relay_published_total 3",
            "tidings_relay_retries_total 0",
            "tidings_relay_position 4",
        ] {
            assert!(text.contains(name), "{name} in {text}");
        }
    }
}
