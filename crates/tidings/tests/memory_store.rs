//! The in-memory store against the conformance suite and the model.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use tidings::InMemoryStore;
use tidings_testkit::{conformance, model};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_store_conforms() {
    conformance::run_all(|| async { InMemoryStore::new() }).await;
}

#[test]
fn in_memory_store_matches_the_model() {
    model::check_model("in_memory_store_matches_the_model", 200, || async {
        InMemoryStore::new()
    });
}
