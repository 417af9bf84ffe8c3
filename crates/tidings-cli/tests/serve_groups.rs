//! `tidings serve` serves the consumer groups of its store. Embedded: a member settles
//! over HTTP, the server stops on SIGTERM, and the next server on the same data
//! directory has the group with its settled state and parked list. PostgreSQL: two
//! servers on one database serve the same groups, so a member joined through one goes
//! on through the other.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::Server;

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut r = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn served_groups_survive_a_restart() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let a = Server::data(dir.path());
    let u = |p: &str| format!("{}{p}", a.url);
    let (status, _) = call(
        Method::POST,
        u("/streams/invoice-1"),
        Some(json!([
            {"eventType": "InvoiceIssued", "data": {"amount": 10}},
            {"eventType": "InvoiceIssued", "data": {"amount": -1}}
        ])),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        Method::POST,
        u("/groups"),
        Some(json!({"name": "ledger", "settings": {"strategy": "round-robin"}})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, lease) = call(
        Method::POST,
        u("/groups/ledger/members"),
        Some(json!({"name": "cli-test"})),
    )
    .await;
    assert_eq!(status, 201);
    let member = lease["member"].as_str().unwrap().to_owned();
    let mut messages = Vec::new();
    while messages.len() < 2 {
        let (status, got) = call(
            Method::GET,
            u(&format!(
                "/groups/ledger/members/{member}/messages?max=2&waitMs=10000"
            )),
            None,
        )
        .await;
        assert_eq!(status, 200);
        messages.extend(got["messages"].as_array().unwrap().clone());
    }
    let settlements: Vec<Value> = messages
        .iter()
        .map(|m| {
            if m["event"]["data"]["amount"] == -1 {
                json!({"id": m["id"], "action": "park", "reason": "negative"})
            } else {
                json!({"id": m["id"], "action": "ack"})
            }
        })
        .collect();
    let (status, report) = call(
        Method::POST,
        u(&format!("/groups/ledger/members/{member}/settle")),
        Some(json!({ "settlements": settlements })),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(report["settled"], 2);
    assert!(a.terminate().success(), "SIGTERM must exit 0");

    let b = Server::data(dir.path());
    let u = |p: &str| format!("{}{p}", b.url);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let d = loop {
        let (status, d) = call(Method::GET, u("/groups/ledger"), None).await;
        assert_eq!(status, 200, "{d}");
        if d["lag"] == 0 && d["parked"] == 1 {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(d["settings"]["strategy"], "round-robin");
    let (status, parked) = call(Method::GET, u("/groups/ledger/parked"), None).await;
    assert_eq!(status, 200);
    assert_eq!(parked["parked"][0]["reason"], "negative");
    assert_eq!(parked["parked"][0]["event"]["data"]["amount"], -1);
    // Leases live in the process: the member must join again.
    let (status, p) = call(
        Method::POST,
        u(&format!("/groups/ledger/members/{member}/heartbeat")),
        None,
    )
    .await;
    assert_eq!(status, 410, "{p}");
    assert!(b.terminate().success());
}

#[tokio::test]
async fn servers_on_one_database_share_its_groups() {
    use reqwest::Method;
    let Some(url) = tidings_testkit::services::service_url(
        "servers_on_one_database_share_its_groups",
        "TIDINGS_POSTGRES_URL",
    ) else {
        return;
    };
    let a = Server::start_on(&["--store", &url]);
    let b = Server::start_on(&["--store", &url]);
    let group = format!("served-{}", std::process::id());
    let stream = format!("{group}-order");
    let (status, _) = call(
        Method::POST,
        format!("{}/groups", a.url),
        Some(json!({"name": group, "settings": {"start": "end"}})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call(
        Method::POST,
        format!("{}/streams/{stream}", b.url),
        Some(json!({"eventType": "OrderPlaced", "data": {}})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, lease) = call(
        Method::POST,
        format!("{}/groups/{group}/members", a.url),
        Some(json!({"name": "roaming"})),
    )
    .await;
    assert_eq!(status, 201);
    let member = lease["member"].as_str().unwrap().to_owned();
    // Fetched through the other server, settled through the first.
    let (status, got) = call(
        Method::GET,
        format!(
            "{}/groups/{group}/members/{member}/messages?waitMs=10000",
            b.url
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{got}");
    let message = &got["messages"][0];
    assert_eq!(message["event"]["stream"], stream.as_str());
    let (status, report) = call(
        Method::POST,
        format!("{}/groups/{group}/members/{member}/settle", a.url),
        Some(json!({"settlements": [{"id": message["id"], "action": "park", "reason": "shared"}]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(report["settled"], 1, "{report}");
    let (status, parked) = call(
        Method::GET,
        format!("{}/groups/{group}/parked", b.url),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(parked["parked"][0]["reason"], "shared", "{parked}");
    // A server that stops does not make the members leave.
    assert!(a.terminate().success());
    let (status, _) = call(
        Method::POST,
        format!("{}/groups/{group}/members/{member}/heartbeat", b.url),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(Method::DELETE, format!("{}/groups/{group}", b.url), None).await;
    assert_eq!(status, 204);
    assert!(b.terminate().success());
}
