//! Server-Sent Events: ids are global positions, Last-Event-ID resumes without gap or
//! duplicate under concurrent appends, heartbeats keep idle connections alive.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::time::Duration;

use common::{SseReader, TestServer, http, seed};
use serde_json::{Value, json};
use tidings_server::ServerConfig;

async fn subscribe(url: String, last_id: Option<u64>) -> SseReader {
    let mut r = http().get(url);
    if let Some(id) = last_id {
        r = r.header("last-event-id", id.to_string());
    }
    let response = r.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    SseReader::new(response)
}

/// Small deterministic generator (splitmix64) so the schedule replays from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[tokio::test]
async fn last_event_id_resumes_without_gap_or_duplicate_under_concurrent_appends() {
    let mut rng = Rng(seed("sse_resume"));
    let s = TestServer::start().await;
    let writers = 4u64;
    let per_writer = 60u64;
    let total = writers * per_writer;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = s.url(&format!("/streams/w-{w}"));
        let batch = 1 + rng.next() % 5;
        tasks.push(tokio::spawn(async move {
            let c = http();
            let mut i = 0;
            while i < per_writer {
                let n = batch.min(per_writer - i);
                let events: Vec<Value> = (i..i + n)
                    .map(|k| json!({"eventType": "Tick", "data": {"w": w, "k": k}}))
                    .collect();
                let r = c.post(&url).json(&events).send().await.unwrap();
                assert_eq!(r.status(), 201);
                i += n;
            }
        }));
    }
    // Read with several disconnects at seeded points, resuming from the last id seen.
    let mut seen: Vec<u64> = Vec::new();
    let mut last: Option<u64> = None;
    while (seen.len() as u64) < total {
        let mut sub = match last {
            None => subscribe(s.url("/subscribe/all?from=0"), None).await,
            Some(id) => subscribe(s.url("/subscribe/all?from=0"), Some(id)).await,
        };
        let take = 1 + rng.next() % 70;
        for _ in 0..take {
            let Some((id, _, data)) = sub.next().await else {
                break;
            };
            let id: u64 = id.unwrap().parse().unwrap();
            let event: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(event["position"], id, "SSE id must be the global position");
            seen.push(id);
            last = Some(id);
            if seen.len() as u64 == total {
                break;
            }
        }
        drop(sub);
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected: Vec<u64> = (0..total).collect();
    assert_eq!(seen, expected, "every position exactly once, in order");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn stream_subscription_resumes_by_position_and_filters() {
    let s = TestServer::start().await;
    let c = http();
    for i in 0..6 {
        let stream = if i % 2 == 0 { "even" } else { "odd" };
        c.post(s.url(&format!("/streams/{stream}")))
            .json(&json!({"eventType": if i < 3 { "A" } else { "B" }, "data": i}))
            .send()
            .await
            .unwrap();
    }
    // odd has positions 1, 3, 5. Resume after position 3 gives only position 5.
    let mut sub = subscribe(s.url("/subscribe/streams/odd"), Some(3)).await;
    let (id, _, data) = sub.next().await.unwrap();
    assert_eq!(id.as_deref(), Some("5"));
    assert_eq!(serde_json::from_str::<Value>(&data).unwrap()["revision"], 2);
    // from is a revision for stream subscriptions.
    let mut sub = subscribe(s.url("/subscribe/streams/even?from=1"), None).await;
    assert_eq!(sub.next().await.unwrap().0.as_deref(), Some("2"));
    // Filters on $all.
    let mut sub = subscribe(s.url("/subscribe/all?from=0&type=B&streamPrefix=ev"), None).await;
    assert_eq!(sub.next().await.unwrap().0.as_deref(), Some("4"));
    // Live: an event appended after subscribing arrives.
    let mut live = subscribe(s.url("/subscribe/all"), None).await;
    c.post(s.url("/streams/late"))
        .json(&json!({"eventType": "Late", "data": 1}))
        .send()
        .await
        .unwrap();
    let (id, _, data) = live.next().await.unwrap();
    assert_eq!(id.as_deref(), Some("6"));
    assert_eq!(
        serde_json::from_str::<Value>(&data).unwrap()["eventType"],
        "Late"
    );
    // A bad Last-Event-ID is a 400.
    let r = http()
        .get(s.url("/subscribe/all"))
        .header("last-event-id", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn idle_connections_get_heartbeats_and_subscribers_are_counted() {
    let s = TestServer::start_config(ServerConfig {
        heartbeat: Duration::from_millis(50),
        ..ServerConfig::default()
    })
    .await;
    let mut sub = subscribe(s.url("/subscribe/all"), None).await;
    assert_eq!(s.state.metrics().subscribers(), 1);
    // No events: heartbeat comments arrive; then a real event still comes through.
    sub.wait_comment().await;
    http()
        .post(s.url("/streams/hb"))
        .json(&json!({"eventType": "A", "data": 1}))
        .send()
        .await
        .unwrap();
    let (id, _, _) = sub.next().await.unwrap();
    assert_eq!(id.as_deref(), Some("0"));
    drop(sub);
    // The count drops once the server notices the disconnect (on its next write).
    for _ in 0..100 {
        if s.state.metrics().subscribers() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.state.metrics().subscribers(), 0);
    s.stop().await.unwrap();
}
