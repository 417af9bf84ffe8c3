//! The official CloudEvents Python SDK's HTTP requests (structured and binary mode) are
//! accepted as they are, and the SDK parses what the read routes answer in CloudEvents
//! (one structured event, and each element of a batch). Skips loudly without python3 and the `cloudevents` package;
//! fails instead when `TIDINGS_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use common::{TestServer, http, skip_or_fail};
use serde_json::Value;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/cloudevents_requests.py"
);
const PARSE_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/python/cloudevents_parse.py"
);

/// Runs a Python script with `stdin`; its stdout, or why it cannot run.
fn python(script: &str, stdin: &str) -> Result<std::process::Output, String> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3 cannot run: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    Ok(child.wait_with_output().unwrap())
}

/// An HTTP response as the SDK's `from_http` takes it: headers and body text.
async fn as_message(r: reqwest::Response) -> Value {
    assert_eq!(r.status(), 200);
    let headers: serde_json::Map<String, Value> = r
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().into()))
        .collect();
    serde_json::json!({ "headers": headers, "body": r.text().await.unwrap() })
}

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

    // What an SDK producer wrote, an SDK consumer reads: one event, and the batch.
    let single = c
        .get(s.url("/streams/python-sdk/0"))
        .header("accept", "application/cloudevents+json")
        .send()
        .await
        .unwrap();
    let batch = c
        .get(s.url("/streams/python-sdk"))
        .header("accept", "application/cloudevents-batch+json")
        .send()
        .await
        .unwrap();
    let doc = serde_json::json!({
        "single": as_message(single).await,
        "batch": as_message(batch).await,
    });
    let output = python(PARSE_SCRIPT, &doc.to_string())
        .unwrap_or_else(|e| panic!("python3 ran once but not now: {e}"));
    assert!(
        output.status.success(),
        "the SDK could not parse the read responses: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Vec<Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let per_sdk = 1 + requests.len();
    assert!(
        parsed.len() >= per_sdk,
        "expected the single event and {} batch elements, got {parsed:?}",
        requests.len()
    );
    assert_eq!(parsed.len() % per_sdk, 0, "{parsed:?}");
    for chunk in parsed.chunks(per_sdk) {
        // The single event is revision 0; the batch is revisions 0, 1, …
        for (p, revision) in chunk.iter().zip(std::iter::once(0).chain(0..)) {
            let a = &p["attributes"];
            let r = &requests[revision];
            let sent_id = format!(
                "py-{}-{}",
                r["sdk"].as_str().unwrap(),
                r["mode"].as_str().unwrap()
            );
            assert_eq!(a["id"], sent_id.as_str(), "{p}");
            assert_eq!(a["specversion"], "1.0");
            assert_eq!(a["type"], "OrderCreated");
            assert_eq!(a["source"], "/order-service");
            assert!(
                a["time"].as_str().is_some_and(|t| t.starts_with("20")),
                "{p}"
            );
            assert_eq!(a["correlationid"], "corr-py");
            assert_eq!(a["causationid"], "user-action-1");
            assert_eq!(a["userid"], "user-789");
            assert_eq!(a["eventversion"], "2.0");
            assert_eq!(a["tidingsstream"], "python-sdk");
            assert_eq!(a["tidingsrevision"], revision.to_string());
            assert_eq!(a["tidingsposition"], revision.to_string());
            assert!(a["tidingsrecordedat"].as_str().is_some(), "{p}");
            assert_eq!(p["data"]["orderId"], "order-123");
            assert_eq!(p["data"]["note"], "café & \"quotes\"");
        }
        eprintln!(
            "the {} SDK parsed the single event and the batch",
            chunk[0]["sdk"]
        );
    }
    s.stop().await.unwrap();
}
