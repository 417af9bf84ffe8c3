//! Publish-with-ack throughput and publish→delivery latency on RabbitMQ.
//!
//! ```text
//! TIDINGS_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --release -p tidings-rabbitmq --example rabbitmq_bench
//! ```
//!
//! `BENCH_N` messages are published one at a time (each waits for its publisher confirm),
//! then with 32 in flight; then `BENCH_M` round trips publish one message and wait for
//! its delivery. The payload is the 542-byte `OrderCreated` fixture. The exchange and queue are
//! unique to the run and deleted at the end.

use std::time::{Duration, Instant};

use futures::StreamExt;
use tidings::transport::{Message, Subscription, Transport};
use tidings::{Enricher, NewEvent};
use tidings_rabbitmq::{RabbitConfig, RabbitTransport};

const FIXTURE: &str = include_str!("../../../fixtures/order-created.json");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn order_created() -> Result<tidings::Event, Box<dyn std::error::Error>> {
    let template: tidings::Event = serde_json::from_str(FIXTURE)?;
    let mut new = NewEvent::from(template);
    new.event_id = None;
    Ok(Enricher::new("bench").enrich(new)?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

async fn run(bus: &RabbitTransport, n: usize, m: usize) -> Result<(), Box<dyn std::error::Error>> {
    let topic = "bench";
    // The group hears the throughput phase too; it is drained before the round trips.
    let mut deliveries = bus.subscribe(Subscription::new("latency", topic)).await?;

    let started = Instant::now();
    for _ in 0..n {
        bus.publish(Message::new(topic, order_created()?)).await?;
    }
    let sequential = started.elapsed();
    let started = Instant::now();
    let events: Vec<_> = (0..n).map(|_| order_created()).collect::<Result<_, _>>()?;
    let results: Vec<_> = futures::stream::iter(events)
        .map(|e| bus.publish(Message::new(topic, e)))
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let concurrent = started.elapsed();
    for _ in 0..2 * n {
        match tokio::time::timeout(Duration::from_secs(30), deliveries.next()).await? {
            Some(d) => d?.ack().await?,
            None => return Err("deliveries ended".into()),
        }
    }

    let mut latencies = Vec::with_capacity(m);
    for _ in 0..m {
        let e = order_created()?;
        let id = e.event_id;
        let t0 = Instant::now();
        bus.publish(Message::new(topic, e)).await?;
        let d = tokio::time::timeout(Duration::from_secs(30), deliveries.next())
            .await?
            .ok_or("deliveries ended")??;
        latencies.push(t0.elapsed());
        if d.event().event_id != id {
            return Err("delivered out of order".into());
        }
        d.ack().await?;
    }
    latencies.sort();
    println!("backend: RabbitMQ ({n} messages, payload 542 B)");
    println!(
        "publish, 1 in flight:   {:>8.0} msg/s",
        n as f64 / sequential.as_secs_f64()
    );
    println!(
        "publish, 32 in flight:  {:>8.0} msg/s",
        n as f64 / concurrent.as_secs_f64()
    );
    println!(
        "publish→delivery ({m} round trips): p50 {:?}  p99 {:?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TIDINGS_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let bus = RabbitTransport::connect(RabbitConfig::new(url).exchange(format!("bench-{suffix}")))
        .await?;
    let result = run(&bus, env_usize("BENCH_N", 2000), env_usize("BENCH_M", 500)).await;
    bus.delete_topology().await?;
    result
}
