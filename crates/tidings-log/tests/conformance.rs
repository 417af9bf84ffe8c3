//! The store conformance suite and the model check, run against `LogStore` in temporary
//! directories (durable mode: every acknowledgement follows an fsync).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::atomic::{AtomicUsize, Ordering};

use tidings_log::LogStore;
use tidings_testkit::{conformance, model};

fn fresh(root: &std::path::Path, n: &AtomicUsize) -> LogStore {
    let dir = root.join(format!("store-{}", n.fetch_add(1, Ordering::SeqCst)));
    LogStore::builder(dir)
        .segment_size(1 << 20)
        .open()
        .unwrap_or_else(|e| panic!("opening a fresh log store: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn log_store_passes_the_conformance_suite() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let n = AtomicUsize::new(0);
    conformance::run_all(|| {
        let store = fresh(root.path(), &n);
        async move { store }
    })
    .await;
}

#[test]
fn log_store_matches_the_model() {
    let root = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let n = AtomicUsize::new(0);
    model::check_model("log_store_matches_the_model", 64, || {
        let store = fresh(root.path(), &n);
        async move { store }
    });
}
