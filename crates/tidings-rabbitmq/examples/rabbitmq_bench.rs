//! Publish-with-ack throughput and publish→delivery latency on RabbitMQ.
//!
//! ```text
//! TIDINGS_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo run --release -p tidings-rabbitmq --example rabbitmq_bench
//! ```
//!
//! `BENCH_N` messages are published one at a time (each waits for its publisher confirm),
//! then with 32 in flight; then `BENCH_M` round trips publish one message and wait for
//! its delivery (`tidings_testkit::transport_bench`). The exchange and queue are unique
//! to the run and deleted at the end.

use tidings_rabbitmq::{RabbitConfig, RabbitTransport};
use tidings_testkit::transport_bench;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TIDINGS_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let bus = RabbitTransport::connect(RabbitConfig::new(url).exchange(format!("bench-{suffix}")))
        .await?;
    let (n, m) = (env_usize("BENCH_N", 2000), env_usize("BENCH_M", 500));
    let result = transport_bench::run(&bus, n, m).await;
    bus.delete_topology().await?;
    println!(
        "backend: RabbitMQ ({n} messages, payload 542 B)\n{}",
        result?
    );
    Ok(())
}
