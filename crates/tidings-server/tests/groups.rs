//! Consumer groups over HTTP, against the real server with groups hosted over its
//! in-memory store: the group routes, members' long polls, streams and settlements, the
//! parked list, errors as problems, roles, metrics and the OpenAPI document.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::time::Duration;

use common::{SseReader, TestServer, http};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings_server::{Role, ServerConfig, Tokens};

async fn problem(r: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status, "{:?}", r.url().path());
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(!body["detail"].as_str().unwrap().is_empty());
    body
}

async fn ok_json(r: reqwest::Response, status: StatusCode) -> Value {
    let got = r.status();
    let path = r.url().path().to_owned();
    let text = r.text().await.unwrap();
    assert_eq!(got, status, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

async fn append(s: &TestServer, stream: &str, events: Value) {
    let r = http()
        .post(s.url(&format!("/streams/{stream}")))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

async fn create(s: &TestServer, name: &str, settings: Value) -> Value {
    let r = http()
        .post(s.url("/groups"))
        .json(&json!({"name": name, "settings": settings}))
        .send()
        .await
        .unwrap();
    ok_json(r, StatusCode::CREATED).await
}

async fn join(s: &TestServer, group: &str) -> String {
    let r = http()
        .post(s.url(&format!("/groups/{group}/members")))
        .json(&json!({"name": "test-worker"}))
        .send()
        .await
        .unwrap();
    let lease = ok_json(r, StatusCode::CREATED).await;
    assert_eq!(lease["group"], group);
    lease["member"].as_str().unwrap().to_owned()
}

async fn fetch(s: &TestServer, group: &str, member: &str, max: usize, wait_ms: u64) -> Vec<Value> {
    let r = http()
        .get(s.url(&format!(
            "/groups/{group}/members/{member}/messages?max={max}&waitMs={wait_ms}"
        )))
        .send()
        .await
        .unwrap();
    let body = ok_json(r, StatusCode::OK).await;
    body["messages"].as_array().unwrap().clone()
}

/// Fetches until `n` messages came (each fetch waits for the first one).
async fn fetch_n(s: &TestServer, group: &str, member: &str, n: usize) -> Vec<Value> {
    let mut got = Vec::new();
    while got.len() < n {
        let more = fetch(s, group, member, n - got.len(), 10_000).await;
        assert!(!more.is_empty(), "no message came within 10 s");
        got.extend(more);
    }
    got
}

async fn describe(s: &TestServer, group: &str) -> Value {
    let r = http()
        .get(s.url(&format!("/groups/{group}")))
        .send()
        .await
        .unwrap();
    ok_json(r, StatusCode::OK).await
}

async fn settle(s: &TestServer, group: &str, member: &str, settlements: Value) -> Value {
    let r = http()
        .post(s.url(&format!("/groups/{group}/members/{member}/settle")))
        .json(&json!({ "settlements": settlements }))
        .send()
        .await
        .unwrap();
    ok_json(r, StatusCode::OK).await
}

async fn parked(s: &TestServer, group: &str) -> Vec<Value> {
    let r = http()
        .get(s.url(&format!("/groups/{group}/parked")))
        .send()
        .await
        .unwrap();
    ok_json(r, StatusCode::OK).await["parked"]
        .as_array()
        .unwrap()
        .clone()
}

/// The parked list once it holds `n` messages (a backend may settle in the background).
async fn parked_n(s: &TestServer, group: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = parked(s, group).await;
        if list.len() == n {
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group}: expected {n} parked, have {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The group's description once `ready` holds of it.
async fn describe_until(s: &TestServer, group: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let d = describe(s, group).await;
        if ready(&d) {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{group} never got there: {d}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn ev(t: &str, n: u64) -> Value {
    json!({"eventType": t, "data": {"n": n}})
}

fn fast() -> Value {
    json!({"retryBaseMs": 1, "retryCapMs": 5})
}

#[tokio::test]
async fn groups_are_created_described_changed_and_deleted() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    let r = c
        .post(s.url("/groups"))
        .json(&json!({"name": "billing", "settings": {"strategy": "round-robin", "leaseMs": 5000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/groups/billing");
    let info = ok_json(r, StatusCode::CREATED).await;
    assert_eq!(info["name"], "billing");
    assert_eq!(info["settings"]["strategy"], "round-robin");
    assert_eq!(info["settings"]["leaseMs"], 5000);
    // Settings are optional.
    let plain = create(&s, "audit", json!(null)).await;
    assert_eq!(plain["settings"]["strategy"], "pinned");

    let p = problem(
        c.post(s.url("/groups"))
            .json(&json!({"name": "billing"}))
            .send()
            .await
            .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["type"], "urn:tidings:problem:group-exists");

    // Refused requests name the field, and create nothing.
    let bad = [
        (json!({"name": "-x"}), "name"),
        (json!({"name": "a b"}), "name"),
        (json!({"name": "ok", "settings": {"leaseMs": 5}}), "leaseMs"),
        (
            json!({"name": "ok", "settings": {"strategy": "round-robin", "sequencedParking": true}}),
            "sequencedParking",
        ),
        (
            json!({"name": "ok", "settings": {"leaseMillis": 5}}),
            "settings.leaseMillis",
        ),
        (
            json!({"name": "ok", "settings": {"leaseMs": "soon"}}),
            "settings.leaseMs",
        ),
        (json!({"name": "ok", "colour": "blue"}), "."),
        (json!({"settings": {}}), "."),
    ];
    for (body, field) in bad {
        let p = problem(
            c.post(s.url("/groups")).json(&body).send().await.unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
        if field == "." {
            assert!(p.get("field").is_none() || p["field"] != "", "{p}");
        } else {
            assert_eq!(p["field"], field, "{body}: {p}");
        }
    }
    for raw in ["{", "not json", "[1,2]", "{\"name\": \"ok\"} trailing"] {
        problem(
            c.post(s.url("/groups"))
                .header("content-type", "application/json")
                .body(raw)
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let list = ok_json(
        c.get(s.url("/groups")).send().await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let names: Vec<&str> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["audit", "billing"]);

    let d = describe(&s, "billing").await;
    assert_eq!(d["name"], "billing");
    assert_eq!(d["lag"], 0);
    assert_eq!(d["members"], json!([]));
    assert_eq!(d["inFlight"], 0);
    assert_eq!(d["parked"], 0);

    // A change names only what changes; the rest keeps its value.
    let r = c
        .put(s.url("/groups/billing"))
        .json(&json!({"maxRetries": 3}))
        .send()
        .await
        .unwrap();
    let info = ok_json(r, StatusCode::OK).await;
    assert_eq!(info["settings"]["maxRetries"], 3);
    assert_eq!(info["settings"]["leaseMs"], 5000);
    assert_eq!(info["settings"]["strategy"], "round-robin");
    let p = problem(
        c.put(s.url("/groups/billing"))
            .json(&json!({"buffer": 0}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["field"], "buffer");
    problem(
        c.put(s.url("/groups/billing"))
            .json(&json!({"bufferSize": 1}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(describe(&s, "billing").await["settings"]["maxRetries"], 3);
    problem(
        c.put(s.url("/groups/nope"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;

    let r = c.delete(s.url("/groups/billing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let p = problem(
        c.get(s.url("/groups/billing")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(p["type"], "urn:tidings:problem:group-not-found");
    assert_eq!(p["group"], "billing");
    problem(
        c.delete(s.url("/groups/billing")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn members_fetch_settle_retry_park_and_replay() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    for i in 0..5 {
        append(&s, &format!("order-{i}"), ev("OrderPlaced", i)).await;
    }
    create(&s, "work", fast()).await;
    let member = join(&s, "work").await;
    let messages = fetch_n(&s, "work", &member, 5).await;
    let mut positions: Vec<u64> = messages
        .iter()
        .map(|m| m["event"]["position"].as_u64().unwrap())
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, [0, 1, 2, 3, 4]);
    for m in &messages {
        assert_eq!(m["attempt"], 1);
        assert_eq!(m["replay"], false);
        assert_eq!(m["event"]["eventType"], "OrderPlaced");
    }
    let d = describe(&s, "work").await;
    assert_eq!(d["inFlight"], 5);
    assert_eq!(d["members"][0]["member"], member.as_str());
    assert_eq!(d["members"][0]["name"], "test-worker");
    assert_eq!(d["members"][0]["inFlight"], 5);

    let by_n = |n: u64| {
        messages
            .iter()
            .find(|m| m["event"]["data"]["n"] == n)
            .unwrap()["id"]
            .as_u64()
            .unwrap()
    };
    let report = settle(
        &s,
        "work",
        &member,
        json!([
            {"id": by_n(0), "action": "ack"},
            {"id": by_n(1), "action": "ack"},
            {"id": by_n(2), "action": "retry", "reason": "database down"},
            {"id": by_n(3), "action": "park", "reason": "poison: amount is negative"},
            {"id": by_n(4), "action": "skip"},
        ]),
    )
    .await;
    assert_eq!(report, json!({"settled": 5, "stale": []}));
    // Settling again changes nothing and says so.
    let report = settle(
        &s,
        "work",
        &member,
        json!([{"id": by_n(0), "action": "ack"}]),
    )
    .await;
    assert_eq!(report["settled"], 0);
    assert_eq!(report["stale"], json!([by_n(0)]));
    let p = problem(
        c.post(s.url(&format!(
            "/groups/work/members/{member}/messages/{}/ack",
            by_n(1)
        )))
        .send()
        .await
        .unwrap(),
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["type"], "urn:tidings:problem:stale-delivery");
    assert_eq!(p["id"], by_n(1));

    // The retried message comes back as attempt 2; ack it on its own route.
    let again = fetch_n(&s, "work", &member, 1).await;
    assert_eq!(again[0]["event"]["data"]["n"], 2);
    assert_eq!(again[0]["attempt"], 2);
    let r = c
        .post(s.url(&format!(
            "/groups/work/members/{member}/messages/{}/ack",
            again[0]["id"]
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let d = describe_until(&s, "work", |d| d["lag"] == 0 && d["parked"] == 1).await;
    assert_eq!(d["inFlight"], 0);
    let list = parked_n(&s, "work", 1).await;
    assert_eq!(list[0]["reason"], "poison: amount is negative");
    assert_eq!(list[0]["event"]["data"]["n"], 3);
    assert_eq!(list[0]["attempts"], 1);
    let parked_id = list[0]["id"].as_u64().unwrap();

    // A replay delivers it again; acknowledged, it leaves the parked list.
    let r = c
        .post(s.url(&format!("/groups/work/parked/{parked_id}/replay")))
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(r, StatusCode::OK).await["queued"], 1);
    let replayed = fetch_n(&s, "work", &member, 1).await;
    assert_eq!(replayed[0]["replay"], true);
    assert_eq!(replayed[0]["event"]["data"]["n"], 3);
    // Per-message park with a reason body, then delete it from the parked list.
    let r = c
        .post(s.url(&format!(
            "/groups/work/members/{member}/messages/{}/park",
            replayed[0]["id"]
        )))
        .json(&json!({"reason": "still poison"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let list = describe_until(&s, "work", |_| true).await;
    assert_eq!(list["inFlight"], 0);
    let list = parked_n(&s, "work", 1).await;
    assert_eq!(list[0]["reason"], "still poison");
    let id = list[0]["id"].as_u64().unwrap();
    let r = c
        .delete(s.url(&format!("/groups/work/parked/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let p = problem(
        c.delete(s.url(&format!("/groups/work/parked/{id}")))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(p["type"], "urn:tidings:problem:parked-not-found");
    parked_n(&s, "work", 0).await;

    // Bad settlements change nothing.
    for body in [
        json!({"settlements": [{"id": 1, "action": "explode"}]}),
        json!({"settlements": [{"id": 1, "action": "retry"}]}),
        json!({"settlements": [{"action": "ack"}]}),
        json!({"settle": []}),
    ] {
        problem(
            c.post(s.url(&format!("/groups/work/members/{member}/settle")))
                .json(&body)
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let p = problem(
        c.post(s.url(&format!("/groups/work/members/{member}/messages/x/ack")))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(p["field"], "id");
    let p = problem(
        c.post(s.url(&format!("/groups/work/members/{member}/messages/1/explode")))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(p["field"], "action");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn parked_lists_replay_and_delete_in_bulk() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    for i in 0..4 {
        append(&s, &format!("bulk-{i}"), ev("Poison", i)).await;
    }
    create(&s, "bulk", fast()).await;
    let member = join(&s, "bulk").await;
    let messages = fetch_n(&s, "bulk", &member, 4).await;
    let park: Vec<Value> = messages
        .iter()
        .map(|m| json!({"id": m["id"], "action": "park", "reason": "bad"}))
        .collect();
    assert_eq!(settle(&s, "bulk", &member, json!(park)).await["settled"], 4);
    parked_n(&s, "bulk", 4).await;
    let r = c
        .get(s.url("/groups/bulk/parked?limit=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ok_json(r, StatusCode::OK).await["parked"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    for bad in ["0", "10001", "x"] {
        problem(
            c.get(s.url(&format!("/groups/bulk/parked?limit={bad}")))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let ids: Vec<u64> = parked(&s, "bulk")
        .await
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();

    // A misspelt selection is refused rather than taken for "all".
    problem(
        c.delete(s.url("/groups/bulk/parked"))
            .json(&json!({"id": [ids[0]]}))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(parked(&s, "bulk").await.len(), 4);

    let r = c
        .delete(s.url("/groups/bulk/parked"))
        .json(&json!({"ids": [ids[0]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(r, StatusCode::OK).await, json!({"deleted": 1}));
    let r = c
        .post(s.url("/groups/bulk/parked/replay"))
        .json(&json!({"ids": [ids[1]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(r, StatusCode::OK).await, json!({"queued": 1}));
    // An empty body names them all; the one already queued is not counted again.
    let r = c
        .post(s.url("/groups/bulk/parked/replay"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(r, StatusCode::OK).await, json!({"queued": 2}));
    let replayed = fetch_n(&s, "bulk", &member, 3).await;
    assert!(replayed.iter().all(|m| m["replay"] == true));
    let ack: Vec<Value> = replayed
        .iter()
        .map(|m| json!({"id": m["id"], "action": "ack"}))
        .collect();
    assert_eq!(settle(&s, "bulk", &member, json!(ack)).await["settled"], 3);
    parked_n(&s, "bulk", 0).await;
    let r = c
        .delete(s.url("/groups/bulk/parked"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(r, StatusCode::OK).await, json!({"deleted": 0}));
    problem(
        c.get(s.url("/groups/nope/parked")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn leases_lapse_leave_and_answer_410() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    create(&s, "leases", json!({"leaseMs": 200})).await;
    let member = join(&s, "leases").await;
    let heartbeat = |m: &str| {
        c.post(s.url(&format!("/groups/leases/members/{m}/heartbeat")))
            .send()
    };
    assert_eq!(
        heartbeat(&member).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    // Left: every later call is 410 Gone.
    let r = c
        .delete(s.url(&format!("/groups/leases/members/{member}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let p = problem(heartbeat(&member).await.unwrap(), StatusCode::GONE).await;
    assert_eq!(p["type"], "urn:tidings:problem:lease-expired");
    assert_eq!(p["group"], "leases");
    assert_eq!(p["member"], member.as_str());
    problem(
        c.get(s.url(&format!(
            "/groups/leases/members/{member}/messages?waitMs=0"
        )))
        .send()
        .await
        .unwrap(),
        StatusCode::GONE,
    )
    .await;
    // Leaving twice is not an error.
    let r = c
        .delete(s.url(&format!("/groups/leases/members/{member}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Without heartbeats the lease lapses.
    let quiet = join(&s, "leases").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = heartbeat(&quiet).await.unwrap();
        if r.status() == StatusCode::GONE {
            break;
        }
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    problem(
        c.post(s.url("/groups/nope/members"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn long_polls_wait_for_the_next_event_and_check_their_query() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    create(&s, "poll", json!(null)).await;
    let member = join(&s, "poll").await;
    assert!(fetch(&s, "poll", &member, 5, 0).await.is_empty());
    // A waiting fetch is answered by the event appended meanwhile.
    let waiting = {
        let url = s.url(&format!(
            "/groups/poll/members/{member}/messages?waitMs=60000"
        ));
        tokio::spawn(async move { http().get(url).send().await.unwrap() })
    };
    append(&s, "late", ev("Late", 1)).await;
    let body = ok_json(waiting.await.unwrap(), StatusCode::OK).await;
    assert_eq!(body["messages"][0]["event"]["eventType"], "Late");
    for (query, field) in [("max=0", "max"), ("max=1001", "max")] {
        let p = problem(
            c.get(s.url(&format!("/groups/poll/members/{member}/messages?{query}")))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(p["field"], field);
    }
    problem(
        c.get(s.url(&format!(
            "/groups/poll/members/{member}/messages?waitMs=soon"
        )))
        .send()
        .await
        .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;

    // CloudEvents: the delivery id rides in an extension.
    append(&s, "ce", ev("Ce", 2)).await;
    let r = c
        .get(s.url(&format!(
            "/groups/poll/members/{member}/messages?waitMs=10000"
        )))
        .header("accept", "application/cloudevents-batch+json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/cloudevents-batch+json"
    );
    let batch: Value = r.json().await.unwrap();
    assert_eq!(batch[0]["type"], "Ce");
    assert_eq!(batch[0]["tidingsattempt"], "1");
    assert_eq!(batch[0]["tidingsreplay"], "false");
    let delivery: u64 = batch[0]["tidingsdeliveryid"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let r = c
        .post(s.url(&format!(
            "/groups/poll/members/{member}/messages/{delivery}/ack"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_keeps_at_most_max_unsettled_and_the_lease_alive() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    for i in 0..5 {
        append(&s, &format!("s-{i}"), ev("Streamed", i)).await;
    }
    create(
        &s,
        "streamed",
        json!({"strategy": "round-robin", "leaseMs": 300}),
    )
    .await;
    let member = join(&s, "streamed").await;
    let r = c
        .get(s.url(&format!("/groups/streamed/members/{member}/stream?max=2")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut sse = SseReader::new(r);
    let mut next = async || {
        let (id, event, data) = sse.next().await.expect("the stream ended");
        assert_eq!(event.as_deref(), Some("message"));
        let m: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(id.unwrap(), m["id"].to_string());
        m
    };
    let first = next().await;
    let second = next().await;
    // The window is full: longer than the lease passes, the stream holds two, and its
    // heartbeats keep the member.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let d = describe(&s, "streamed").await;
    assert_eq!(d["inFlight"], 2, "{d}");
    assert_eq!(d["members"][0]["member"], member.as_str());
    let r = c
        .post(s.url(&format!("/groups/streamed/members/{member}/heartbeat")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    // Each settlement lets one more out.
    let mut seen = vec![
        first["event"]["position"].clone(),
        second["event"]["position"].clone(),
    ];
    settle(
        &s,
        "streamed",
        &member,
        json!([{"id": first["id"], "action": "ack"}]),
    )
    .await;
    let third = next().await;
    seen.push(third["event"]["position"].clone());
    let mut held = vec![second, third];
    while seen.len() < 5 {
        let m = held.remove(0);
        let r = c
            .post(s.url(&format!(
                "/groups/streamed/members/{member}/messages/{}/ack",
                m["id"]
            )))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let m = next().await;
        seen.push(m["event"]["position"].clone());
        held.push(m);
    }
    seen.sort_by_key(|p| p.as_u64());
    assert_eq!(seen, [json!(0), json!(1), json!(2), json!(3), json!(4)]);
    drop(sse);
    // Closed, the member does not leave: its lease lapses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = c
            .post(s.url(&format!("/groups/streamed/members/{member}/heartbeat")))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::GONE {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease never lapsed"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // A stream for a member that is gone is a plain 410.
    problem(
        c.get(s.url(&format!("/groups/streamed/members/{member}/stream")))
            .send()
            .await
            .unwrap(),
        StatusCode::GONE,
    )
    .await;
    problem(
        c.get(s.url(&format!("/groups/streamed/members/{member}/stream?max=0")))
            .send()
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn a_stream_ends_with_an_error_event_when_its_group_is_deleted() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    create(&s, "doomed", json!({"leaseMs": 300})).await;
    let member = join(&s, "doomed").await;
    let r = c
        .get(s.url(&format!("/groups/doomed/members/{member}/stream")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut sse = SseReader::new(r);
    let r = c.delete(s.url("/groups/doomed")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (_, event, data) = sse.next().await.expect("an error event");
    assert_eq!(event.as_deref(), Some("error"));
    let p: Value = serde_json::from_str(&data).unwrap();
    assert!(matches!(p["status"].as_u64(), Some(404 | 410)), "{p}");
    assert!(
        sse.next().await.is_none(),
        "the stream goes on after its error"
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn consuming_needs_read_only_and_managing_needs_admin() {
    let ro = "read-only-token-0001";
    let rw = "read-write-token-0001";
    let admin = "admin-token-000000001";
    let s = TestServer::start_groups(ServerConfig {
        tokens: Tokens::none()
            .with(ro, Role::ReadOnly)
            .with(rw, Role::ReadWrite)
            .with(admin, Role::Admin),
        ..ServerConfig::default()
    })
    .await;
    let c = http();
    let create_req = |token: Option<&str>| {
        let mut r = c.post(s.url("/groups")).json(&json!({"name": "secured"}));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = create_req(None).await.unwrap();
    assert!(r.headers().contains_key("www-authenticate"));
    problem(r, StatusCode::UNAUTHORIZED).await;
    for token in [ro, rw] {
        let p = problem(
            create_req(Some(token)).await.unwrap(),
            StatusCode::FORBIDDEN,
        )
        .await;
        assert_eq!(p["requiredRole"], "admin");
    }
    assert_eq!(
        create_req(Some(admin)).await.unwrap().status(),
        StatusCode::CREATED
    );
    let r = c
        .post(s.url("/streams/sec"))
        .bearer_auth(rw)
        .json(&ev("Sec", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    // A read-only token consumes: list, describe, join, fetch, settle, heartbeat, leave.
    let get = |path: &str| c.get(s.url(path)).bearer_auth(ro).send();
    assert_eq!(get("/groups").await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        get("/groups/secured").await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        get("/groups/secured/parked").await.unwrap().status(),
        StatusCode::OK
    );
    problem(
        c.get(s.url("/groups")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let r = c
        .post(s.url("/groups/secured/members"))
        .bearer_auth(ro)
        .json(&json!({"name": "ro"}))
        .send()
        .await
        .unwrap();
    let member = ok_json(r, StatusCode::CREATED).await["member"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = get(&format!(
        "/groups/secured/members/{member}/messages?waitMs=10000"
    ))
    .await
    .unwrap();
    let messages = ok_json(r, StatusCode::OK).await["messages"].clone();
    let park = json!({"settlements": [{"id": messages[0]["id"], "action": "park", "reason": "r"}]});
    let r = c
        .post(s.url(&format!("/groups/secured/members/{member}/settle")))
        .bearer_auth(ro)
        .json(&park)
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(r, StatusCode::OK).await["settled"], 1);
    let r = c
        .post(s.url(&format!("/groups/secured/members/{member}/heartbeat")))
        .bearer_auth(ro)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let sse = get(&format!("/groups/secured/members/{member}/stream"))
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    drop(sse);
    // EventSource cannot set headers: the token may come as access_token.
    let sse = c
        .get(s.url(&format!(
            "/groups/secured/members/{member}/stream?access_token={ro}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    drop(sse);

    // The parked list is the admin's to replay or delete; the group is the admin's to
    // change or delete.
    let admin_only = [
        ("POST", "/groups/secured/parked/replay"),
        ("DELETE", "/groups/secured/parked"),
        ("POST", "/groups/secured/parked/1/replay"),
        ("DELETE", "/groups/secured/parked/1"),
        ("PUT", "/groups/secured"),
        ("DELETE", "/groups/secured"),
    ];
    for (method, path) in admin_only {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let p = problem(
            c.request(method.clone(), s.url(path))
                .bearer_auth(ro)
                .json(&json!({}))
                .send()
                .await
                .unwrap(),
            StatusCode::FORBIDDEN,
        )
        .await;
        assert_eq!(p["requiredRole"], "admin", "{method} {path}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = get("/groups/secured").await.unwrap();
        if r.json::<Value>().await.unwrap()["parked"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never parked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = c
        .post(s.url("/groups/secured/parked/replay"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(ok_json(r, StatusCode::OK).await["queued"], 1);
    let r = c
        .delete(s.url(&format!("/groups/secured/members/{member}")))
        .bearer_auth(ro)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_carry_each_groups_gauges() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    for i in 0..3 {
        append(&s, &format!("m-{i}"), ev("Metered", i)).await;
    }
    create(&s, "metered", fast()).await;
    let member = join(&s, "metered").await;
    let messages = fetch_n(&s, "metered", &member, 3).await;
    settle(
        &s,
        "metered",
        &member,
        json!([{"id": messages[0]["id"], "action": "park", "reason": "p"}]),
    )
    .await;
    let d = describe_until(&s, "metered", |d| d["parked"] == 1).await;
    let text = http()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for sample in [
        format!("tidings_group_lag{{group=\"metered\"}} {}\n", d["lag"]),
        "tidings_group_in_flight{group=\"metered\"} 2\n".to_owned(),
        "tidings_group_members{group=\"metered\"} 1\n".to_owned(),
        "tidings_group_parked{group=\"metered\"} 1\n".to_owned(),
        "# TYPE tidings_group_lag gauge\n".to_owned(),
        "tidings_appends_total 3\n".to_owned(),
    ] {
        assert!(text.contains(&sample), "no {sample:?} in:\n{text}");
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn without_groups_the_routes_answer_501() {
    let s = TestServer::start().await;
    let p = problem(
        http().get(s.url("/groups")).send().await.unwrap(),
        StatusCode::NOT_IMPLEMENTED,
    )
    .await;
    assert_eq!(p["type"], "urn:tidings:problem:groups-not-served");
    let text = http()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains("tidings_group_"));
    s.stop().await.unwrap();
}

/// Every documented group operation answers one of its documented statuses, walked in
/// an order that makes each one succeed.
#[tokio::test]
async fn the_documented_group_routes_answer_as_documented() {
    let s = TestServer::start_groups(ServerConfig::default()).await;
    let c = http();
    let doc: Value = c
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for name in [
        "GroupSettings",
        "GroupInfo",
        "GroupDescription",
        "MemberLease",
        "GroupMessage",
        "SettleReport",
        "ParkedMessage",
    ] {
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "schema {name}"
        );
    }
    append(&s, "doc", json!([ev("A", 1), ev("B", 2), ev("C", 3)])).await;
    let mut walked = Vec::new();
    let mut call = async |method: &str, template: &str, path: String, body: Option<Value>| {
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut r = c.request(m, s.url(&path)).timeout(Duration::from_secs(15));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16().to_string();
        assert!(r.status().is_success(), "{method} {path}: {}", r.status());
        assert!(
            !doc["paths"][template][method]["responses"][&status].is_null(),
            "{method} {template}: status {status} undocumented"
        );
        walked.push((method.to_owned(), template.to_owned()));
        if status == "204" || method == "get" && template.ends_with("/stream") {
            Value::Null
        } else {
            r.json::<Value>().await.unwrap()
        }
    };
    call(
        "post",
        "/groups",
        "/groups".into(),
        Some(json!({"name": "doc", "settings": {"strategy": "round-robin", "retryBaseMs": 1, "retryCapMs": 5}})),
    )
    .await;
    call("get", "/groups", "/groups".into(), None).await;
    call("get", "/groups/{group}", "/groups/doc".into(), None).await;
    call(
        "put",
        "/groups/{group}",
        "/groups/doc".into(),
        Some(json!({"maxRetries": 5})),
    )
    .await;
    let lease = call(
        "post",
        "/groups/{group}/members",
        "/groups/doc/members".into(),
        Some(json!({"name": "d"})),
    )
    .await;
    let m = lease["member"].as_str().unwrap().to_owned();
    let base = format!("/groups/doc/members/{m}");
    call(
        "post",
        "/groups/{group}/members/{member}/heartbeat",
        format!("{base}/heartbeat"),
        None,
    )
    .await;
    let got = call(
        "get",
        "/groups/{group}/members/{member}/messages",
        format!("{base}/messages?max=3&waitMs=10000"),
        None,
    )
    .await;
    let mut ids: Vec<u64> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    while ids.len() < 3 {
        let more = fetch(&s, "doc", &m, 3 - ids.len(), 10_000).await;
        ids.extend(more.iter().map(|m| m["id"].as_u64().unwrap()));
    }
    call(
        "post",
        "/groups/{group}/members/{member}/settle",
        format!("{base}/settle"),
        Some(json!({"settlements": [{"id": ids[0], "action": "park", "reason": "doc"}]})),
    )
    .await;
    call(
        "post",
        "/groups/{group}/members/{member}/messages/{id}/{action}",
        format!("{base}/messages/{}/park", ids[1]),
        None,
    )
    .await;
    call(
        "post",
        "/groups/{group}/members/{member}/messages/{id}/{action}",
        format!("{base}/messages/{}/ack", ids[2]),
        None,
    )
    .await;
    call(
        "get",
        "/groups/{group}/members/{member}/stream",
        format!("{base}/stream"),
        None,
    )
    .await;
    parked_n(&s, "doc", 2).await;
    let list = call(
        "get",
        "/groups/{group}/parked",
        "/groups/doc/parked".into(),
        None,
    )
    .await;
    let pids: Vec<u64> = list["parked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    call(
        "post",
        "/groups/{group}/parked/{id}/replay",
        format!("/groups/doc/parked/{}/replay", pids[0]),
        None,
    )
    .await;
    call(
        "post",
        "/groups/{group}/parked/replay",
        "/groups/doc/parked/replay".into(),
        Some(json!({"ids": [pids[1]]})),
    )
    .await;
    call(
        "delete",
        "/groups/{group}/parked/{id}",
        format!("/groups/doc/parked/{}", pids[0]),
        None,
    )
    .await;
    call(
        "delete",
        "/groups/{group}/parked",
        "/groups/doc/parked".into(),
        Some(json!({})),
    )
    .await;
    call(
        "delete",
        "/groups/{group}/members/{member}",
        base.clone(),
        None,
    )
    .await;
    call("delete", "/groups/{group}", "/groups/doc".into(), None).await;
    walked.sort();
    walked.dedup();
    let mut documented: Vec<(String, String)> = tidings_server::openapi::OPERATIONS
        .iter()
        .filter(|(_, p)| p.starts_with("/groups"))
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    assert_eq!(
        walked, documented,
        "a documented group route was not walked"
    );
    s.stop().await.unwrap();
}
