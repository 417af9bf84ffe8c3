//! The official CloudEvents Python SDK's HTTP requests (structured and binary mode) are
//! accepted as they are. Skips loudly without python3 and the `cloudevents` package;
//! fails instead when `TIDINGS_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use common::{TestServer, http, skip_or_fail};
use serde_json::Value;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/cloudevents_requests.py"
);

#[tokio::test]
async fn python_sdk_requests_are_accepted() {
    let output = match std::process::Command::new("python3").arg(SCRIPT).output() {
        Ok(o) => o,
        Err(e) => {
            return skip_or_fail(
                "python_sdk_requests_are_accepted",
                &format!("python3 cannot run: {e}"),
            );
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("No module named") {
            return skip_or_fail(
                "python_sdk_requests_are_accepted",
                "the Python package `cloudevents` is not installed (pip install cloudevents)",
            );
        }
        panic!("the SDK script failed: {stderr}");
    }
    let requests: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        requests.len() >= 2,
        "expected structured and binary requests"
    );
    let s = TestServer::start().await;
    let c = http();
    for (i, r) in requests.iter().enumerate() {
        let mut req = c
            .post(s.url("/streams/python-sdk"))
            .body(r["body"].as_str().unwrap().to_owned());
        for (k, v) in r["headers"].as_object().unwrap() {
            req = req.header(k.as_str(), v.as_str().unwrap());
        }
        let response = req.send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_eq!(
            status, 201,
            "{} {} request refused: {body}",
            r["sdk"], r["mode"]
        );
        let stored: Value = c
            .get(s.url(&format!("/streams/python-sdk/{i}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stored["eventType"], "OrderCreated");
        assert_eq!(stored["source"], "/order-service");
        assert_eq!(stored["eventVersion"], "2.0");
        assert_eq!(stored["data"]["orderId"], "order-123");
        assert_eq!(stored["data"]["note"], "café & \"quotes\"");
        assert_eq!(stored["metadata"]["correlationId"], "corr-py");
        assert_eq!(stored["metadata"]["causationId"], "user-action-1");
        assert_eq!(stored["metadata"]["userId"], "user-789");
        eprintln!("accepted {} {} mode", r["sdk"], r["mode"]);
    }
    s.stop().await.unwrap();
}
