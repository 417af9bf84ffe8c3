//! The web console in a real browser: headless Debian Chromium, driven over the Chrome
//! DevTools Protocol (a small client below, on `tokio-tungstenite`), against the real
//! server. Events appended through the API must appear in the live tail and on the
//! stream page without a reload; the correlation page must draw the causation tree.
//!
//! Skips loudly when Chromium is absent; fails instead when `TIDINGS_REQUIRE_SERVICES=1`.
//! `TIDINGS_CHROMIUM` overrides the browser path. Screenshots of each page are written to
//! `target/console-screenshots/`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{TestServer, http, skip_or_fail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

/// The longest any single wait for the page may take before the test fails.
const WAIT: Duration = Duration::from_secs(30);

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TIDINGS_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A page in Chromium, reached over one DevTools session.
struct Page {
    ws: Socket,
    session: String,
    next_id: u64,
}

async fn call(
    ws: &mut Socket,
    id: u64,
    session: Option<&str>,
    method: &str,
    params: Value,
) -> Value {
    let mut msg = json!({"id": id, "method": method, "params": params});
    if let Some(s) = session {
        msg["sessionId"] = json!(s);
    }
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
    loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no answer to {method}"))
            .expect("DevTools connection closed")
            .unwrap();
        let Message::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(&text).unwrap();
        if v["id"] == id {
            if let Some(e) = v.get("error") {
                panic!("{method} failed: {e}");
            }
            return v["result"].clone();
        }
    }
}

impl Page {
    async fn open(ws_url: &str, url: &str) -> Self {
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let target = call(
            &mut ws,
            1,
            None,
            "Target.createTarget",
            json!({"url": "about:blank"}),
        )
        .await;
        let attached = call(
            &mut ws,
            2,
            None,
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let mut page = Self {
            ws,
            session,
            next_id: 10,
        };
        page.cmd(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        page.cmd("Page.enable", json!({})).await;
        page.cmd("Page.navigate", json!({"url": url})).await;
        page
    }

    async fn cmd(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        call(
            &mut self.ws,
            self.next_id,
            Some(&self.session.clone()),
            method,
            params,
        )
        .await
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .cmd(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
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
        let shot = self
            .cmd("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
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
    let s = TestServer::start().await;
    let profile = std::env::temp_dir().join(format!("tidings-chromium-{}", std::process::id()));
    let mut child = tokio::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--remote-debugging-port=0",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let ws_url = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(url) = line.split("DevTools listening on ").nth(1) {
                return url.trim().to_owned();
            }
        }
        panic!("Chromium exited without a DevTools endpoint");
    })
    .await
    .expect("Chromium did not start within the wait");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // Live tail: open it first, then append; the events appear without a reload.
    let mut page = Page::open(&ws_url, &s.url("/#/tail")).await;
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

    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&profile);
    s.stop().await.unwrap();
}
