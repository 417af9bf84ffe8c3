//! A consumer-group member written in Python (standard library only) joins a group over
//! HTTP, long-polls, acknowledges, retries a flaky event and parks a poison one; the
//! group's state afterwards is checked here. Skips loudly without python3; fails instead
//! when `TIDINGS_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use common::{TestServer, http, skip_or_fail};
use serde_json::{Value, json};
use tidings_server::ServerConfig;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/group_consumer.py"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_member_acks_retries_and_parks() {
    if let Err(e) = std::process::Command::new("python3")
        .arg("--version")
        .output()
    {
        return skip_or_fail(
            "a_python_member_acks_retries_and_parks",
            &format!("python3 cannot run: {e}"),
        );
    }
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    let events = json!([
        {"eventType": "PaymentRequested", "data": {"order": 1, "amount": 10}},
        {"eventType": "PaymentRequested", "data": {"order": 2, "amount": 20, "flaky": true}},
        {"eventType": "PaymentRequested", "data": {"order": 3, "amount": -5, "poison": true}},
        {"eventType": "PaymentRequested", "data": {"order": 4, "amount": 40}},
        {"eventType": "PaymentRequested", "data": {"order": 5, "amount": 50}},
    ]);
    let r = c
        .post(s.url("/streams/payments"))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let base = s.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([SCRIPT, &base, "py-payments", "4"])
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        output.status.success(),
        "the Python member failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("the Python member did: {summary}");
    assert_eq!(summary["parked"], json!([2]));
    assert_eq!(summary["retried"], json!([1]));
    let mut acked: Vec<(u64, u64)> = summary["acked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["position"].as_u64().unwrap(),
                a["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, [(0, 1), (1, 2), (3, 1), (4, 1)]);

    // The group: everything settled, the member gone, the poison event parked with its
    // reason and one attempt.
    // (A backend may save its settled state in the background.)
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let d = loop {
        let d: Value = c
            .get(s.url("/groups/py-payments"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if d["lag"] == 0 && d["parked"] == 1 {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "never settled: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(d["checkpoint"], d["head"], "{d}");
    assert_eq!(d["inFlight"], 0);
    assert_eq!(d["members"], json!([]));
    assert_eq!(d["parked"], 1);
    assert_eq!(d["settings"]["retryBaseMs"], 10);
    let parked: Value = c
        .get(s.url("/groups/py-payments/parked"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parked = parked["parked"].as_array().unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(
        parked[0]["reason"],
        "poison: cannot charge a negative amount"
    );
    assert_eq!(parked[0]["attempts"], 1);
    assert_eq!(parked[0]["event"]["data"]["order"], 3);
    assert_eq!(parked[0]["event"]["position"], 2);
    s.stop().await.unwrap();
}
