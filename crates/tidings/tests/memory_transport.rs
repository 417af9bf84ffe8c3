//! The in-memory transport passes the transport conformance suite.

use tidings::transport::InMemoryTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_transport_conformance() {
    tidings_testkit::transport_conformance::run_all(|| async { InMemoryTransport::new() }).await;
}
