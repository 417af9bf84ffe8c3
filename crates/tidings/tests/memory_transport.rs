//! The in-memory transport passes the transport conformance suite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use tidings::transport::InMemoryTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_transport_conformance() {
    tidings_testkit::transport_conformance::run_all(|| async { InMemoryTransport::new() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_transport_keeps_dead_letters() {
    tidings_testkit::transport_conformance::run_dead_letters(|| async { InMemoryTransport::new() })
        .await;
}
