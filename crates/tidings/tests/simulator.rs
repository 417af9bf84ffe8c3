//! The simulator's own contract: every event is delivered, events of one stream arrive
//! (for the first time) in stream order, and every kind of fault happens.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::{HashMap, HashSet};

use tidings::bus::{BoxFuture, HandlerError};
use tidings::{
    Enricher, EventAppender, ExpectedVersion, Filter, InMemoryStore, NewEvent, RecordedEvent,
    StreamId,
};
use tidings_testkit::seed::{rounds, seed};
use tidings_testkit::simulator::{FaultPlan, SimTarget, Simulator};

/// Records first deliveries; fails every third delivery; forgets nothing on a crash
/// (its record stands for the store).
#[derive(Default)]
struct Recording {
    first: Vec<RecordedEvent>,
    seen: HashSet<uuid::Uuid>,
    attempts: usize,
    crashes: usize,
}

impl SimTarget for Recording {
    fn deliver<'a>(&'a mut self, e: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
        self.attempts += 1;
        let fail = self.attempts % 3 == 0;
        if !fail && self.seen.insert(e.event_id) {
            self.first.push(e.clone());
        }
        Box::pin(async move {
            if fail {
                Err(HandlerError::new("transient"))
            } else {
                Ok(())
            }
        })
    }
    fn crash(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> {
        self.crashes += 1;
        Box::pin(async { Ok(()) })
    }
    fn settle(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn every_event_arrives_and_one_streams_events_stay_in_order() {
    let store = InMemoryStore::new();
    for i in 0..60u32 {
        let e = Enricher::new("s")
            .enrich(NewEvent::new("Step", serde_json::json!(i)))
            .unwrap();
        let stream = StreamId::new(&format!("s-{}", i % 4)).unwrap();
        store
            .append(&stream, ExpectedVersion::Any, vec![e])
            .await
            .unwrap();
    }
    let base = seed("every_event_arrives_and_one_streams_events_stay_in_order");
    let mut swapped = 0;
    for round in 0..rounds(20) {
        let seed = base.wrapping_add(u64::from(round));
        let mut target = Recording::default();
        let report = Simulator::with_seed(seed, FaultPlan::chaos())
            .run(&store, Filter::all(), &mut target)
            .await
            .unwrap();
        assert_eq!(target.first.len(), 60, "seed {seed}");
        let mut last: HashMap<&str, u64> = HashMap::new();
        for e in &target.first {
            if let Some(prev) = last.insert(e.stream.as_str(), e.revision) {
                assert!(prev < e.revision, "seed {seed}: {} out of order", e.stream);
            }
        }
        if target
            .first
            .windows(2)
            .any(|w| w[0].position > w[1].position)
        {
            swapped += 1;
        }
        assert!(
            report.failures > 0 && report.deliveries > 60,
            "seed {seed}: {report:?}"
        );
        assert_eq!(report.crashes, target.crashes);
    }
    assert!(swapped > 0, "events of different streams were reordered");
}

#[tokio::test]
async fn a_target_that_never_succeeds_is_reported_with_the_seed() {
    struct Broken;
    impl SimTarget for Broken {
        fn deliver<'a>(
            &'a mut self,
            _: &'a RecordedEvent,
        ) -> BoxFuture<'a, Result<(), HandlerError>> {
            Box::pin(async { Err(HandlerError::new("always")) })
        }
        fn crash(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> {
            Box::pin(async { Ok(()) })
        }
        fn settle(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> {
            Box::pin(async { Ok(()) })
        }
    }
    let store = InMemoryStore::new();
    let e = Enricher::new("s")
        .enrich(NewEvent::new("A", serde_json::json!(1)))
        .unwrap();
    store
        .append(&StreamId::new("a").unwrap(), ExpectedVersion::Any, vec![e])
        .await
        .unwrap();
    let plan = FaultPlan {
        max_deliveries: 50,
        ..FaultPlan::none()
    };
    let err = Simulator::with_seed(42, plan)
        .run(&store, Filter::all(), &mut Broken)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("seed 42") && text.contains("always"),
        "{text}"
    );
}
