//! The web console in a real browser: headless Debian Chromium, driven over WebDriver
//! (`fantoccini` talking to a `chromedriver` the test starts), against the real server.
//! Events appended through the API must appear in the live tail and on the stream page
//! without a reload; the correlation page must draw the causation tree; a consumer
//! group's page must show its parked events and replay them.
//!
//! Skips loudly when Chromium or chromedriver is absent; fails instead when
//! `TIDINGS_REQUIRE_SERVICES=1`. `TIDINGS_CHROMIUM` and `TIDINGS_CHROMEDRIVER` override
//! the paths. Screenshots of each page are written to `target/console-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestServer, http, skip_or_fail};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

/// The longest any single wait for the page may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

/// The first of `candidates` that exists, or the path in `var` when it is set.
fn find(var: &str, candidates: &[&str]) -> Option<PathBuf> {
    if let Ok(p) = std::env::var(var) {
        return Some(PathBuf::from(p));
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists())
}

fn chromium() -> Option<PathBuf> {
    find(
        "TIDINGS_CHROMIUM",
        &[
            "/usr/bin/chromium",
            "/usr/bin/chromium-browser",
            "/usr/bin/google-chrome",
        ],
    )
}

fn chromedriver() -> Option<PathBuf> {
    find(
        "TIDINGS_CHROMEDRIVER",
        &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
    )
}

/// A `chromedriver` on a free loopback port, with the browser profile it uses; both go
/// away on drop (chromedriver and every browser it started are killed).
struct Driver {
    child: Child,
    url: String,
    profile: PathBuf,
}

impl Driver {
    async fn start(binary: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free port for chromedriver")
            .port();
        let profile =
            std::env::temp_dir().join(format!("tidings-chromium-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        // Its own process group, so that drop can kill the browsers along with it.
        let child = std::os::unix::process::CommandExt::process_group(
            Command::new(binary)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            0,
        )
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let driver = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            profile,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = http()
                .get(format!("{}/status", driver.url))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success());
            if let Some(r) = ready {
                let status: Value = r.json().await.unwrap();
                if status["value"]["ready"] == json!(true) {
                    return driver;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start within the wait"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A session with a fresh headless Chromium at `browser`.
    async fn session(&self, browser: &Path) -> Client {
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--window-size=1400,900".to_owned(),
            format!("--user-data-dir={}", self.profile.display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": browser, "args": args},
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver refused a Chromium session: {e}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the browsers it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A page in Chromium, reached over one WebDriver session.
struct Page {
    client: Client,
}

impl Page {
    async fn open(driver: &Driver, browser: &Path, url: &str) -> Self {
        let client = driver.session(browser).await;
        client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        Self { client }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        self.client
            .execute(&format!("return ({expression});"), vec![])
            .await
            .unwrap_or_else(|e| panic!("{expression} threw: {e}"))
    }

    /// Polls `expression` until it is true; fails after [`WAIT`].
    async fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.eval(&format!("!!({expression})")).await == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self.eval("document.body.innerText").await;
                panic!(
                    "the console never showed {what}; page text:\n{}",
                    body.as_str().unwrap_or("")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot, after checking the page shows no rendering junk.
    async fn screenshot(&mut self, name: &str) {
        let text = self.eval("document.querySelector('main').innerText").await;
        for junk in ["undefined", "NaN", "[object", "\nnull"] {
            assert!(
                !text.as_str().unwrap().contains(junk),
                "page {name} shows {junk:?}: {text}"
            );
        }
        let png = self.client.screenshot().await.unwrap();
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Ends the WebDriver session, which closes the browser.
    async fn close(self) {
        self.client.close().await.unwrap();
    }
}

async fn append(s: &TestServer, stream: &str, body: Value) -> Value {
    let r = http()
        .post(s.url(&format!("/streams/{stream}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_live_events_and_causation_trees() {
    let Some(browser) = chromium() else {
        return skip_or_fail(
            "console_shows_live_events_and_causation_trees",
            "Chromium is not installed (apt-get install chromium)",
        );
    };
    let Some(driver_binary) = chromedriver() else {
        return skip_or_fail(
            "console_shows_live_events_and_causation_trees",
            "chromedriver is not installed (apt-get install chromium-driver)",
        );
    };
    let s = TestServer::start().await;
    let driver = Driver::start(&driver_binary).await;

    // Live tail: open it first, then append; the events appear without a reload.
    let mut page = Page::open(&driver, &browser, &s.url("/#/tail")).await;
    page.wait_for(
        "the live tail connected",
        "document.querySelector('.status')?.textContent.includes('live')",
    )
    .await;
    page.eval("window.__noReload = 'still here'").await;
    let root = append(&s, "order-browser", json!({"eventType": "OrderCreated", "eventId": "018f0000-0000-7000-8000-00000000b001",
        "data": {"orderId": "order-browser", "totalAmount": 59.98},
        "metadata": {"correlationId": "corr-browser", "causationId": "user-action-1", "userId": "user-789"}})).await;
    append(&s, "payment-browser", json!([
        {"eventType": "PaymentProcessed", "eventId": "018f0000-0000-7000-8000-00000000b002", "data": {"amount": 59.98},
         "metadata": {"correlationId": "corr-browser", "causationId": "018f0000-0000-7000-8000-00000000b001"}},
        {"eventType": "InventoryReserved", "eventId": "018f0000-0000-7000-8000-00000000b003", "data": {"items": 2},
         "metadata": {"correlationId": "corr-browser", "causationId": "018f0000-0000-7000-8000-00000000b002"}}
    ])).await;
    assert_eq!(root["position"], 0);
    page.wait_for(
        "three events in the tail",
        "document.querySelectorAll('#tail-rows .tail-row').length === 3",
    )
    .await;
    let types = page
        .eval(
            "[...document.querySelectorAll('#tail-rows .type')].map(e => e.textContent).join(',')",
        )
        .await;
    assert_eq!(types, "InventoryReserved,PaymentProcessed,OrderCreated");

    // Pause holds new events back; resume shows them.
    page.eval("document.getElementById('tail-pause').click()")
        .await;
    append(&s, "order-browser", json!({"eventType": "OrderConfirmed", "data": {"ok": true},
        "metadata": {"correlationId": "corr-browser", "causationId": "018f0000-0000-7000-8000-00000000b003"}})).await;
    page.wait_for(
        "the paused counter",
        "document.getElementById('tail-held').textContent.startsWith('1 new')",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#tail-rows .tail-row').length")
            .await,
        3
    );
    page.eval("document.getElementById('tail-pause').click()")
        .await;
    page.wait_for(
        "the held event after resume",
        "document.querySelectorAll('#tail-rows .tail-row').length === 4",
    )
    .await;
    page.screenshot("tail").await;

    // Stream page: lists the events, then shows a new one live.
    page.eval("location.hash = '#/streams/order-browser'").await;
    page.wait_for(
        "the stream's events",
        "document.querySelectorAll('#stream-events .event').length === 2",
    )
    .await;
    page.wait_for(
        "the stream page going live",
        "document.querySelector('.status')?.textContent.includes('live')",
    )
    .await;
    append(&s, "order-browser", json!({"eventType": "OrderShipped", "data": {"carrier": "UPS"},
        "metadata": {"correlationId": "corr-browser", "causationId": "018f0000-0000-7000-8000-00000000b001"}})).await;
    page.wait_for(
        "the new event on the stream page",
        "document.querySelectorAll('#stream-events .event').length === 3",
    )
    .await;
    let first = page
        .eval("document.querySelector('#stream-events .event .type').textContent")
        .await;
    assert_eq!(first, "OrderShipped");
    let data = page
        .eval("document.querySelector('#stream-events .event pre.json').textContent")
        .await;
    assert!(
        data.as_str().unwrap().contains("\"carrier\": \"UPS\""),
        "pretty-printed data: {data}"
    );
    page.screenshot("stream").await;

    // Event page.
    page.eval("location.hash = '#/event/order-browser/0'").await;
    page.wait_for(
        "the event page",
        "document.querySelector('dl.fields')?.textContent.includes('corr-browser')",
    )
    .await;
    page.screenshot("event").await;

    // Stream list with search.
    page.eval("location.hash = '#/streams?prefix=pay'").await;
    page.wait_for(
        "the filtered stream list",
        "document.querySelectorAll('#streams-body tr').length === 1",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('#streams-body tr').dataset.stream")
            .await,
        "payment-browser"
    );
    page.eval("location.hash = '#/streams'").await;
    page.wait_for(
        "the stream list",
        "document.querySelectorAll('#streams-body tr').length === 2",
    )
    .await;
    let text = page.eval("document.querySelector('main').innerText").await;
    for junk in ["null", "undefined", "NaN", "[object"] {
        assert!(
            !text.as_str().unwrap().contains(junk),
            "the stream list shows {junk:?}: {text}"
        );
    }
    page.screenshot("streams").await;

    // Correlation page: OrderCreated ← (external user action); Payment under it;
    // Inventory under Payment; OrderConfirmed under Inventory; OrderShipped under OrderCreated.
    page.eval("location.hash = '#/correlation/corr-browser'")
        .await;
    page.wait_for(
        "the causation tree",
        "document.querySelectorAll('#corr-tree .node[data-event-id]').length === 5",
    )
    .await;
    let depth = |id: &str| {
        format!(
            "(() => {{ let n = document.querySelector('[data-event-id=\"{id}\"]'); let d = 0; \
           while (n && n.id !== 'corr-tree') {{ if (n.tagName === 'UL') d++; n = n.parentElement; }} return d; }})()"
        )
    };
    assert_eq!(
        page.eval(&depth("018f0000-0000-7000-8000-00000000b001"))
            .await,
        1
    );
    assert_eq!(
        page.eval(&depth("018f0000-0000-7000-8000-00000000b002"))
            .await,
        2
    );
    assert_eq!(
        page.eval(&depth("018f0000-0000-7000-8000-00000000b003"))
            .await,
        3
    );
    assert!(
        page.eval("document.querySelector('.node.external').textContent.includes('user-action-1')")
            .await
            .as_bool()
            .unwrap()
    );
    page.screenshot("correlation").await;

    // The header shows the store's size in events; nothing above reloaded the page.
    page.wait_for(
        "the header stats",
        "document.getElementById('stat-events').textContent === '5'",
    )
    .await;
    assert_eq!(page.eval("window.__noReload").await, "still here");

    // Consumer groups, on a server that hosts them: a group with two poison events
    // parked; Replay on one, then Replay all; once a member acknowledges the replays the
    // parked list is empty.
    let g = TestServer::start_groups(tidings_server::ServerConfig::default()).await;
    append(
        &g,
        "payment-1",
        json!({"eventType": "PaymentRequested", "data": {"amount": 10}}),
    )
    .await;
    append(
        &g,
        "payment-2",
        json!({"eventType": "PaymentRequested", "data": {"amount": -5}}),
    )
    .await;
    append(
        &g,
        "payment-3",
        json!({"eventType": "PaymentRequested", "data": {"amount": -7}}),
    )
    .await;
    let member = group_member(&g, "billing").await;
    let messages = group_fetch(&g, "billing", &member, 3).await;
    let settlements: Vec<Value> = messages
        .iter()
        .map(|m| {
            if m["event"]["data"]["amount"].as_i64().unwrap() < 0 {
                json!({"id": m["id"], "action": "park", "reason": "poison: negative amount"})
            } else {
                json!({"id": m["id"], "action": "ack"})
            }
        })
        .collect();
    group_settle(&g, "billing", &member, settlements).await;

    page.client.goto(&g.url("/#/groups")).await.unwrap();
    page.wait_for(
        "the group in the list with two parked",
        "document.querySelector('#groups-body tr[data-group=\"billing\"] td:last-child')?.textContent === '2'",
    )
    .await;
    page.screenshot("groups").await;
    page.eval("document.querySelector('#groups-body tr[data-group=\"billing\"] a').click()")
        .await;
    page.wait_for(
        "the parked events on the group page",
        "document.querySelectorAll('#parked-body tr').length === 2",
    )
    .await;
    let reason = page
        .eval("document.querySelector('#parked-body td.reason').textContent")
        .await;
    assert_eq!(reason, "poison: negative amount");
    assert_eq!(
        page.eval("document.getElementById('group-parked').textContent")
            .await,
        "2"
    );
    assert_eq!(
        page.eval("document.getElementById('group-members').textContent")
            .await,
        "1"
    );
    page.screenshot("group").await;

    page.eval("document.querySelector('#parked-body button.replay').click()")
        .await;
    page.wait_for(
        "the replay of one",
        "document.getElementById('group-notice').textContent.startsWith('Queued 1 ')",
    )
    .await;
    page.eval("document.getElementById('group-notice').textContent = ''")
        .await;
    page.eval("document.getElementById('parked-replay-all').click()")
        .await;
    page.wait_for(
        "the replay of the other",
        "document.getElementById('group-notice').textContent.startsWith('Queued 1 ')",
    )
    .await;
    // A member takes the replays and acknowledges them: they leave the parked list.
    let replays = group_fetch(&g, "billing", &member, 2).await;
    assert!(replays.iter().all(|m| m["replay"] == true));
    let acks: Vec<Value> = replays
        .iter()
        .map(|m| json!({"id": m["id"], "action": "ack"}))
        .collect();
    group_settle(&g, "billing", &member, acks).await;
    page.wait_for(
        "the parked list empty",
        "document.getElementById('parked-empty') && document.getElementById('group-parked').textContent === '0'",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('parked-replay-all').disabled")
            .await,
        true
    );
    page.screenshot("group-replayed").await;

    page.close().await;
    drop(driver);
    s.stop().await.unwrap();
    g.stop().await.unwrap();
}

/// Creates `group` (quick retries) and joins it; the member id.
async fn group_member(s: &TestServer, group: &str) -> String {
    let r = http()
        .post(s.url("/groups"))
        .json(&json!({"name": group, "settings": {"retryBaseMs": 1, "retryCapMs": 5, "leaseMs": 60000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = http()
        .post(s.url(&format!("/groups/{group}/members")))
        .json(&json!({"name": "browser-test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let lease: Value = r.json().await.unwrap();
    lease["member"].as_str().unwrap().to_owned()
}

/// Long-polls until `n` messages came.
async fn group_fetch(s: &TestServer, group: &str, member: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let r = http()
            .get(s.url(&format!(
                "/groups/{group}/members/{member}/messages?max={}&waitMs=10000",
                n - got.len()
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        let more = body["messages"].as_array().unwrap().clone();
        assert!(!more.is_empty(), "no message came within 10 s");
        got.extend(more);
    }
    got
}

async fn group_settle(s: &TestServer, group: &str, member: &str, settlements: Vec<Value>) {
    let r = http()
        .post(s.url(&format!("/groups/{group}/members/{member}/settle")))
        .json(&json!({ "settlements": settlements }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["stale"], json!([]), "{report}");
}
