//! A consumer group and a projection on the embedded store: checkpoints and parked events
//! live in the log and survive closing and reopening it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use tidings::consumer::ConsumerGroup;
use tidings::{EventAppender, ExpectedVersion};
use tidings_log::LogStore;
use tidings_testkit::conformance::{event, stream};
use uuid::Uuid;

const HANG_GUARD: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_from_its_checkpoint_after_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = LogStore::builder(dir.path().to_path_buf())
        .segment_size(1 << 20)
        .open()
        .expect("open");
    let mut ids = Vec::new();
    for i in 0..10 {
        let e = event("OrderCreated", json!({ "i": i }));
        ids.push(e.event_id);
        store
            .append(
                &stream(&format!("order-{}", i % 3)),
                ExpectedVersion::Any,
                vec![e],
            )
            .await
            .expect("append");
    }

    let group = ConsumerGroup::builder("emails", store.clone())
        .start()
        .await
        .expect("group starts");
    let member = group.join();
    let mut acked = HashSet::new();
    let mut parked = HashSet::new();
    for n in 0..6 {
        let d = tokio::time::timeout(HANG_GUARD, member.next())
            .await
            .expect("delivery within the hang guard")
            .expect("delivery")
            .expect("an event");
        let id = d.event().event_id;
        if n == 2 {
            d.park("bad address").await.expect("park");
            parked.insert(id);
        } else {
            d.ack().await.expect("ack");
            acked.insert(id);
        }
    }
    group.save_checkpoint().await.expect("checkpoint");
    group.shutdown().await.expect("shutdown");
    drop(member);
    drop(group);
    store.close().await.expect("close");

    let store = LogStore::builder(dir.path().to_path_buf())
        .segment_size(1 << 20)
        .open()
        .expect("reopen");
    let group = ConsumerGroup::builder("emails", store.clone())
        .start()
        .await
        .expect("group restarts");
    let member = group.join();
    let mut rest: HashSet<Uuid> = HashSet::new();
    for _ in 0..4 {
        let d = tokio::time::timeout(HANG_GUARD, member.next())
            .await
            .expect("delivery within the hang guard")
            .expect("delivery")
            .expect("an event");
        rest.insert(d.event().event_id);
        d.ack().await.expect("ack");
    }
    let want: HashSet<Uuid> = ids
        .iter()
        .copied()
        .filter(|id| !acked.contains(id) && !parked.contains(id))
        .collect();
    assert_eq!(
        rest, want,
        "after reopening, exactly the unsettled events come again"
    );
    let listed = group.parked().await.expect("parked list");
    assert_eq!(listed.len(), 1, "the parked event survived the reopen");
    assert_eq!(listed[0].reason, "bad address");
    group.shutdown().await.expect("shutdown");
    store.close().await.expect("close");
}
