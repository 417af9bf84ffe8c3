//! Publish-with-ack throughput and publish→delivery latency on NATS JetStream.
//!
//! ```text
//! TIDINGS_NATS_URL=nats://127.0.0.1:4222 cargo run --release -p tidings-nats --example nats_bench
//! ```
//!
//! `BENCH_N` messages are published one at a time (each waits for its JetStream ack),
//! then with 32 in flight; then `BENCH_M` round trips publish one message and wait for
//! its delivery (`tidings_testkit::transport_bench`). The stream is unique to the run
//! and deleted at the end.

use tidings_nats::{NatsConfig, NatsTransport};
use tidings_testkit::transport_bench;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("TIDINGS_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let bus = NatsTransport::connect(
        NatsConfig::new(url)
            .stream(format!("BENCH_{suffix}"))
            .subject_prefix(format!("bench_{suffix}")),
    )
    .await?;
    let (n, m) = (env_usize("BENCH_N", 2000), env_usize("BENCH_M", 500));
    let result = transport_bench::run(&bus, n, m).await;
    bus.delete_stream().await?;
    println!(
        "backend: NATS JetStream ({n} messages, payload 542 B)\n{}",
        result?
    );
    Ok(())
}
