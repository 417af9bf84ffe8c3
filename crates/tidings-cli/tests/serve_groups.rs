//! `tidings serve` hosts the consumer groups of its embedded store: a member settles
//! over HTTP, the server stops on SIGTERM, and the next server on the same data
//! directory has the group with its settled state and parked list.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_tidings");

struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(data: &std::path::Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let url = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        std::thread::spawn(move || for _ in out.lines() {});
        Self { child, url }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    /// A failed test must not leave its server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

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
    let a = Server::start(dir.path());
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

    let b = Server::start(dir.path());
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
