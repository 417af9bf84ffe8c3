//! A small, bounded measurement of any [`Transport`]: publish-with-confirm throughput
//! (one message in flight, then 32) and publish→delivery latency. The backends' bench
//! examples run it against a real broker; the payload is the 542-byte `OrderCreated`
//! fixture with a fresh id per message.

use std::time::{Duration, Instant};

use futures::StreamExt;

use tidings_core::event::{Enricher, Event, EventError, NewEvent};
use tidings_core::transport::{
    BrokerMessage, BrokerMessages, Message, Subscription, Transport, TransportError,
};

const FIXTURE: &str = include_str!("../../../fixtures/order-created.json");
/// How long a delivery may take before the run calls the broker stalled (a hang guard).
const STALL: Duration = Duration::from_secs(30);
/// Messages in flight in the concurrent phase.
pub const IN_FLIGHT: usize = 32;

/// Why a measurement could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The fixture could not be made into an event.
    #[error("the OrderCreated fixture: {0}")]
    Fixture(String),
    /// No delivery arrived within the hang guard.
    #[error("no delivery within {0:?}")]
    Stalled(Duration),
    /// The subscription ended.
    #[error("the subscription ended")]
    Ended,
    /// A round trip delivered another message than the one just published.
    #[error("a round trip delivered another message than the one published")]
    OutOfOrder,
}

impl From<EventError> for BenchError {
    fn from(e: EventError) -> Self {
        Self::Fixture(e.to_string())
    }
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Messages per throughput phase.
    pub messages: usize,
    /// Messages per second with one publish in flight.
    pub sequential_per_sec: f64,
    /// Messages per second with [`IN_FLIGHT`] publishes in flight.
    pub concurrent_per_sec: f64,
    /// Round trips measured.
    pub round_trips: usize,
    /// Median publish→delivery time.
    pub p50: Duration,
    /// 99th percentile publish→delivery time.
    pub p99: Duration,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "publish, 1 in flight:   {:>8.0} msg/s",
            self.sequential_per_sec
        )?;
        writeln!(
            f,
            "publish, {IN_FLIGHT} in flight:  {:>8.0} msg/s",
            self.concurrent_per_sec
        )?;
        write!(
            f,
            "publish→delivery ({} round trips): p50 {:?}  p99 {:?}",
            self.round_trips, self.p50, self.p99
        )
    }
}

fn order_created() -> Result<Event, BenchError> {
    let template: Event =
        serde_json::from_str(FIXTURE).map_err(|e| BenchError::Fixture(e.to_string()))?;
    let mut new = NewEvent::from(template);
    new.event_id = None;
    Ok(Enricher::new("bench").enrich(new)?)
}

async fn next(deliveries: &mut BrokerMessages) -> Result<BrokerMessage, BenchError> {
    match tokio::time::timeout(STALL, deliveries.next()).await {
        Err(_) => Err(BenchError::Stalled(STALL)),
        Ok(None) => Err(BenchError::Ended),
        Ok(Some(d)) => Ok(d?),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Publishes `messages` one at a time, then `messages` with [`IN_FLIGHT`] in flight,
/// drains them, then measures `round_trips` publish→delivery round trips, all on the
/// topic `bench` with the group `latency`.
pub async fn run<T: Transport>(
    bus: &T,
    messages: usize,
    round_trips: usize,
) -> Result<BenchReport, BenchError> {
    let topic = "bench";
    // The group hears the throughput phase too; it is drained before the round trips.
    let mut deliveries = bus.subscribe(Subscription::new("latency", topic)).await?;

    let started = Instant::now();
    for _ in 0..messages {
        bus.publish(Message::new(topic, order_created()?)).await?;
    }
    let sequential = started.elapsed();
    let events: Vec<_> = (0..messages)
        .map(|_| order_created())
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(events)
        .map(|e| bus.publish(Message::new(topic, e)))
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for r in results {
        r?;
    }
    let concurrent = started.elapsed();
    for _ in 0..2 * messages {
        next(&mut deliveries).await?.ack().await?;
    }

    let mut latencies = Vec::with_capacity(round_trips);
    for _ in 0..round_trips {
        let e = order_created()?;
        let id = e.event_id;
        let t0 = Instant::now();
        bus.publish(Message::new(topic, e)).await?;
        let d = next(&mut deliveries).await?;
        latencies.push(t0.elapsed());
        if d.event().event_id != id {
            return Err(BenchError::OutOfOrder);
        }
        d.ack().await?;
    }
    latencies.sort();
    Ok(BenchReport {
        messages,
        sequential_per_sec: messages as f64 / sequential.as_secs_f64(),
        concurrent_per_sec: messages as f64 / concurrent.as_secs_f64(),
        round_trips,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::transport::InMemoryTransport;

    #[tokio::test]
    async fn measures_the_in_memory_transport() {
        let report = run(&InMemoryTransport::new(), 20, 10).await.unwrap();
        assert_eq!((report.messages, report.round_trips), (20, 10));
        assert!(report.p50 <= report.p99);
    }
}
