//! Every route and every error status, against the real server on an ephemeral port.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::time::Duration;

use common::{GatedStore, TestServer, http};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tidings_server::{Role, ServerConfig, Tokens};

const FIXTURE: &str = include_str!("../../../fixtures/order-created.json");

async fn post(
    s: &TestServer<impl tidings::EventStore>,
    stream: &str,
    expected: &str,
    body: Value,
) -> reqwest::Response {
    http()
        .post(s.url(&format!("/streams/{stream}")))
        .header("expected-version", expected)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn problem(r: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:tidings:problem:")
    );
    assert!(!body["detail"].as_str().unwrap().is_empty());
    // Every problem answered is one /openapi.json lists, with the listed status and
    // Retry-After.
    let uri = body["type"].as_str().unwrap();
    let listed = tidings_server::problem::PROBLEM_TYPES
        .iter()
        .find(|t| t.type_uri() == uri)
        .unwrap_or_else(|| panic!("{uri} is not in PROBLEM_TYPES"));
    if !matches!(listed.slug, "invalid-request" | "internal-error") {
        assert_eq!(listed.status, status.as_u16(), "{uri}");
    }
    body
}

fn ev(t: &str, n: u64) -> Value {
    json!({"eventType": t, "data": {"n": n}})
}

#[tokio::test]
async fn append_read_and_conflicts() {
    let s = TestServer::start().await;
    let fixture: Value = serde_json::from_str(FIXTURE).unwrap();
    let r = post(&s, "order-123", "no-stream", fixture.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], "/streams/order-123/0");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["stream"], "order-123");
    assert_eq!(body["firstRevision"], 0);
    assert_eq!(body["nextExpectedVersion"], 0);
    assert_eq!(body["position"], 0);

    // An array appends atomically; the exact expected version is the last revision.
    let r = post(&s, "order-123", "0", json!([ev("A", 1), ev("B", 2)])).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (
            body["firstRevision"].clone(),
            body["nextExpectedVersion"].clone()
        ),
        (json!(1), json!(2))
    );

    // 409 names expected and actual.
    let p = problem(
        post(&s, "order-123", "0", ev("C", 3)).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["expected"], 0);
    assert_eq!(p["actual"], 2);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("Expected-Version: 2")
    );
    let p = problem(
        post(&s, "fresh", "stream-exists", ev("C", 3)).await,
        StatusCode::CONFLICT,
    )
    .await;
    assert_eq!(p["expected"], "stream-exists");
    assert_eq!(p["actual"], Value::Null);

    // Re-sending the same event id is idempotent.
    let again = post(&s, "order-123", "no-stream", fixture).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.json::<Value>().await.unwrap()["position"], 0);

    // Read forward, backward, paged.
    let page: Value = http()
        .get(s.url("/streams/order-123?limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], 2);
    let e0 = &page["events"][0];
    for field in [
        "eventId",
        "eventType",
        "eventVersion",
        "timestamp",
        "source",
        "data",
        "metadata",
        "stream",
        "revision",
        "position",
        "recordedAt",
    ] {
        assert!(!e0[field].is_null(), "field {field} missing");
    }
    assert_eq!(e0["data"]["orderId"], "order-123");
    let back: Value = http()
        .get(s.url("/streams/order-123?direction=backward&limit=10"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revs: Vec<u64> = back["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert_eq!(revs, vec![2, 1, 0]);
    let one: Value = http()
        .get(s.url("/streams/order-123/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["eventType"], "A");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn global_log_streams_and_correlations() {
    let s = TestServer::start().await;
    let created = json!({"eventId": "018f0000-0000-7000-8000-000000000001", "eventType": "OrderCreated", "data": {},
        "metadata": {"correlationId": "corr-1", "causationId": "user-action-1"}});
    post(&s, "order-1", "any", created).await;
    post(&s, "payment-1", "any", json!({"eventType": "PaymentProcessed", "data": {},
        "metadata": {"correlationId": "corr-1", "causationId": "018f0000-0000-7000-8000-000000000001"}})).await;
    post(&s, "order-2", "any", ev("OrderCreated", 2)).await;

    let all: Value = http()
        .get(s.url("/all?from=0&limit=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["events"].as_array().unwrap().len(), 2);
    assert_eq!(all["next"], 2);
    let all: Value = http()
        .get(s.url("/all?from=2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["events"][0]["position"], 2);
    assert_eq!(all["next"], Value::Null);
    let typed: Value = http()
        .get(s.url("/all?type=OrderCreated&streamPrefix=order-"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(typed["events"].as_array().unwrap().len(), 2);
    let by_category: Value = http()
        .get(s.url("/all?category=payment,nothing"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = by_category["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["stream"], "payment-1");

    let streams: Value = http()
        .get(s.url("/streams?prefix=order-"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = streams["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["order-1", "order-2"]);
    assert!(streams["streams"][0]["lastWritten"].is_string());
    assert_eq!(streams["streams"][0]["lastRevision"], 0);
    let paged: Value = http()
        .get(s.url("/streams?limit=1&after=order-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(paged["streams"][0]["stream"], "order-2");

    let corr: Value = http()
        .get(s.url("/correlations/corr-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = corr["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["metadata"]["causationId"], events[0]["eventId"]);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn every_error_status() {
    let s = TestServer::start_config(ServerConfig {
        max_body_bytes: 4096,
        ..ServerConfig::default()
    })
    .await;
    let c = http();
    // 400: malformed JSON, bad stream, bad header, bad query.
    let r = c
        .post(s.url("/streams/a"))
        .header("content-type", "application/json")
        .body("{oops")
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::BAD_REQUEST).await;
    assert_eq!(p["line"], 1);
    problem(
        post(&s, "%24system", "any", ev("A", 1)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        post(&s, "a", "banana", ev("A", 1)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        c.get(s.url("/all?from=minus")).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        c.get(s.url("/all?limit=0")).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    problem(
        c.get(s.url("/streams/a/x")).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // 404: stream, event, correlation, route, console file.
    problem(
        c.get(s.url("/streams/none")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    post(&s, "a", "any", ev("A", 1)).await;
    problem(
        c.get(s.url("/streams/a/5")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        c.get(s.url("/correlations/none")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        c.get(s.url("/nowhere")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        c.get(s.url("/console/secret.txt")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    // 405.
    problem(
        c.delete(s.url("/streams/a")).send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    // 409 duplicate id elsewhere.
    let dup =
        json!({"eventId": "018f0000-0000-7000-8000-0000000000aa", "eventType": "A", "data": 1});
    post(&s, "x", "any", dup.clone()).await;
    let p = problem(post(&s, "y", "any", dup).await, StatusCode::CONFLICT).await;
    assert_eq!(p["eventId"], "018f0000-0000-7000-8000-0000000000aa");
    // 413: over the body cap, with and without Content-Length.
    let big = json!({"eventType": "A", "data": "x".repeat(5000)});
    let p = problem(
        post(&s, "a", "any", big.clone()).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(p["limit"], 4096);
    let chunks = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.to_string().into_bytes())]);
    let r = c
        .post(s.url("/streams/a"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;
    // 415.
    let r = c
        .post(s.url("/streams/a"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    // 422: missing type, missing data, wrong shape, empty array.
    let p = problem(
        post(&s, "a", "any", json!([ev("A", 1), {"data": 1}])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["index"], 1);
    problem(
        post(&s, "a", "any", json!({"eventType": "A"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        post(&s, "a", "any", json!({"eventType": 7, "data": 1})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    problem(
        post(&s, "a", "any", json!([])).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    // Nothing refused was written.
    let a: Value = c
        .get(s.url("/streams/a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["events"].as_array().unwrap().len(), 1);
    s.stop().await.unwrap();
}

#[tokio::test]
async fn cloudevents_in_all_three_modes() {
    let s = TestServer::start().await;
    let c = http();
    let structured = json!({"specversion": "1.0", "id": "ce-1", "source": "/orders", "type": "OrderCreated",
        "datacontenttype": "application/json", "data": {"orderId": "o-1"}, "correlationid": "corr-ce"});
    let r = c
        .post(s.url("/streams/ce"))
        .header("content-type", "application/cloudevents+json")
        .header("expected-version", "no-stream")
        .body(structured.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let batch = json!([
        {"specversion": "1.0", "id": "ce-2", "source": "/orders", "type": "OrderPaid", "data": {"n": 2}},
        {"specversion": "1.0", "id": "ce-3", "source": "/orders", "type": "OrderShipped", "data_base64": "eyJuIjozfQ=="}
    ]);
    let r = c
        .post(s.url("/streams/ce"))
        .header(
            "content-type",
            "application/cloudevents-batch+json; charset=utf-8",
        )
        .header("expected-version", "0")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.json::<Value>().await.unwrap()["nextExpectedVersion"], 2);

    let r = c
        .post(s.url("/streams/ce"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "ce-4")
        .header("ce-source", "/orders")
        .header("CE-Type", "OrderDelivered")
        .header("ce-correlationid", "corr-ce")
        .header("content-type", "application/json")
        .body(r#"{"n":4}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let page: Value = c
        .get(s.url("/streams/ce"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = page["events"].as_array().unwrap();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "OrderCreated",
            "OrderPaid",
            "OrderShipped",
            "OrderDelivered"
        ]
    );
    assert_eq!(events[0]["data"]["orderId"], "o-1");
    assert_eq!(events[0]["source"], "/orders");
    assert_eq!(events[0]["metadata"]["correlationId"], "corr-ce");
    assert_eq!(events[2]["data"]["n"], 3);
    assert_eq!(events[3]["metadata"]["correlationId"], "corr-ce");

    // Invalid CloudEvents: 422 with the batch index; non-JSON data is 415; not an array is 400.
    let bad = json!([{"specversion": "1.0", "id": "x", "source": "/s", "type": "T", "data": 1}, {"specversion": "0.3"}]);
    let r = c
        .post(s.url("/streams/ce"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(bad.to_string())
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["index"], 1);
    let r = c
        .post(s.url("/streams/ce"))
        .header("content-type", "application/cloudevents-batch+json")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST).await;
    let r = c
        .post(s.url("/streams/ce"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "b")
        .header("ce-source", "/s")
        .header("ce-type", "T")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    let r = c
        .post(s.url("/streams/ce"))
        .header("ce-specversion", "1.0")
        .header("ce-source", "/s")
        .header("ce-type", "T")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    s.stop().await.unwrap();
}

#[tokio::test]
async fn operations_routes() {
    let s = TestServer::start().await;
    let c = http();
    post(&s, "a", "any", ev("A", 1)).await;
    let health: Value = c
        .get(s.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let ready: Value = c
        .get(s.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["head"], 0);
    let stats: Value = c
        .get(s.url("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["events"], 1);
    let m = c.get(s.url("/metrics")).send().await.unwrap();
    assert!(
        m.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = m.text().await.unwrap();
    for name in [
        "tidings_appends_total 1",
        "tidings_events_appended_total 1",
        "tidings_bytes_appended_total",
        "tidings_append_commit_seconds_bucket",
        "tidings_subscribers 0",
        "tidings_http_responses_total{status=\"201\"} 1",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let index = c.get(s.url("/")).send().await.unwrap();
    assert!(
        index.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(index.text().await.unwrap().contains("/console/app.js"));
    for f in ["app.js", "app.css", "favicon.svg"] {
        assert_eq!(
            c.get(s.url(&format!("/console/{f}")))
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
    s.stop().await.unwrap();
}

/// /openapi.json lists every problem type: the Problem schema's `type` enumerates their
/// URIs, and `x-problem-types` gives each one's status, Retry-After and meaning.
#[tokio::test]
async fn openapi_lists_the_problem_types() {
    let s = TestServer::start().await;
    let doc: Value = http()
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schema = &doc["components"]["schemas"]["Problem"];
    let listed = schema["x-problem-types"].as_array().unwrap();
    let uris = schema["properties"]["type"]["enum"].as_array().unwrap();
    assert_eq!(listed.len(), tidings_server::problem::PROBLEM_TYPES.len());
    assert_eq!(uris.len(), listed.len());
    let find = |slug: &str| {
        listed
            .iter()
            .find(|t| t["slug"] == slug)
            .unwrap_or_else(|| panic!("{slug} is not listed"))
            .clone()
    };
    let timeout = find("append-timeout");
    assert_eq!(timeout["status"], 503);
    assert_eq!(timeout["retryAfter"], true);
    assert_eq!(timeout["type"], "urn:tidings:problem:append-timeout");
    assert!(uris.contains(&timeout["type"]));
    let conflict = find("wrong-expected-version");
    assert_eq!(conflict["status"], 409);
    assert_eq!(conflict["retryAfter"], false);
    for t in listed {
        assert!(uris.contains(&t["type"]), "{t}");
        assert!(!t["meaning"].as_str().unwrap().is_empty(), "{t}");
    }

    // A problem the running server answers carries a listed type.
    post(
        &s,
        "listed",
        "no-stream",
        json!({"eventType": "A", "data": 1}),
    )
    .await;
    let r = post(
        &s,
        "listed",
        "no-stream",
        json!({"eventType": "A", "data": 1}),
    )
    .await;
    let body = problem(r, StatusCode::CONFLICT).await;
    assert!(uris.contains(&body["type"]), "{body}");
    s.stop().await.unwrap();
}

/// Every operation in /openapi.json exists on the router, and every route the router
/// serves is documented.
#[tokio::test]
async fn openapi_matches_the_routes() {
    let s = TestServer::start().await;
    let c = http();
    post(
        &s,
        "s",
        "any",
        json!({"eventType": "A", "data": 1, "metadata": {"correlationId": "c"}}),
    )
    .await;
    let doc: Value = c
        .get(s.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    let mut served: Vec<(String, String)> = tidings_server::openapi::OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(
        documented, served,
        "the document and the router's operation list differ"
    );
    // The group routes need a server with groups and a walk in order: tests/groups.rs.
    for (method, path) in documented.iter().filter(|(_, p)| !p.starts_with("/groups")) {
        let concrete = path
            .replace("{stream}", "s")
            .replace("{revision}", "0")
            .replace("{id}", "c")
            .replace("{file}", "app.js")
            .replace("{name}", "event-types");
        let url = s.url(&concrete);
        let r = match method.as_str() {
            "get" => c
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .await
                .unwrap(),
            "post" => c.post(&url).json(&ev("A", 1)).send().await.unwrap(),
            other => panic!("undocumented method {other}"),
        };
        assert!(
            r.status().is_success(),
            "{method} {path} answered {}",
            r.status()
        );
        let status = r.status().as_u16().to_string();
        assert!(
            !doc["paths"][path][method]["responses"][&status].is_null(),
            "{method} {path}: status {status} undocumented"
        );
    }
    // And nothing undocumented answers: a sibling of each route is a 404 or 405.
    for (path, method) in [
        ("/streams/s/0/extra", "get"),
        ("/subscribe", "get"),
        ("/all", "post"),
    ] {
        let r = if method == "get" {
            c.get(s.url(path)).send().await.unwrap()
        } else {
            c.post(s.url(path)).send().await.unwrap()
        };
        assert!(
            matches!(r.status().as_u16(), 404 | 405),
            "{method} {path}: {}",
            r.status()
        );
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_are_enforced_by_role() {
    let ro = "read-only-token-0001";
    let rw = "read-write-token-0001";
    let admin = "admin-token-000000001";
    let tokens = Tokens::none()
        .with(ro, Role::ReadOnly)
        .with(rw, Role::ReadWrite)
        .with(admin, Role::Admin);
    let s = TestServer::start_config(ServerConfig {
        tokens,
        ..ServerConfig::default()
    })
    .await;
    let c = http();
    let append = |token: Option<&str>| {
        let mut r = c.post(s.url("/streams/t")).json(&ev("A", 1));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let r = append(None).await.unwrap();
    assert!(r.headers().contains_key("www-authenticate"));
    problem(r, StatusCode::UNAUTHORIZED).await;
    problem(
        append(Some("not-a-known-token-1")).await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let p = problem(append(Some(ro)).await.unwrap(), StatusCode::FORBIDDEN).await;
    assert_eq!(p["requiredRole"], "read-write");
    assert_eq!(
        append(Some(rw)).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        append(Some(admin)).await.unwrap().status(),
        StatusCode::CREATED
    );
    assert_eq!(
        c.get(s.url("/streams/t"))
            .bearer_auth(ro)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    problem(
        c.get(s.url("/streams/t")).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    // EventSource cannot set headers: the token may come as access_token.
    let sse = c
        .get(s.url(&format!("/subscribe/all?from=0&access_token={ro}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), StatusCode::OK);
    drop(sse);
    problem(
        c.get(s.url("/metrics"))
            .bearer_auth(rw)
            .send()
            .await
            .unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_eq!(
        c.get(s.url("/metrics"))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    // Health checks and the console's static files need no token.
    for open in ["/health", "/ready", "/", "/console/app.js", "/openapi.json"] {
        assert_eq!(
            c.get(s.url(open)).send().await.unwrap().status(),
            StatusCode::OK,
            "{open}"
        );
    }
    s.stop().await.unwrap();
}

#[tokio::test]
async fn full_append_queue_answers_503_with_retry_after() {
    let store = GatedStore::new();
    let s = TestServer::start_with(
        store.clone(),
        ServerConfig {
            max_pending_appends: 2,
            ..ServerConfig::default()
        },
    )
    .await;
    let mut held = Vec::new();
    for i in 0..2 {
        let c = http();
        let url = s.url(&format!("/streams/q-{i}"));
        held.push(tokio::spawn(async move {
            c.post(url).json(&ev("A", i)).send().await.unwrap().status()
        }));
    }
    // Wait until both appends are inside the store.
    store.entered.acquire_many(2).await.unwrap().forget();
    let r = post(&s, "q-9", "any", ev("A", 9)).await;
    assert_eq!(r.headers()["retry-after"], "1");
    let p = problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(p["pendingLimit"], 2);
    store.gate.add_permits(100);
    for h in held {
        assert_eq!(h.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(
        post(&s, "q-9", "any", ev("A", 9)).await.status(),
        StatusCode::CREATED
    );
    let metrics = http()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tidings_appends_rejected_busy_total 1"));
    s.stop().await.unwrap();
}

#[tokio::test]
async fn pending_body_bytes_are_bounded_too() {
    let store = GatedStore::new();
    let config = ServerConfig {
        max_pending_bytes: 8 * 1024,
        ..ServerConfig::default()
    };
    let s = TestServer::start_with(store.clone(), config).await;
    let big = json!({"eventType": "A", "data": "x".repeat(6000)});
    let c = http();
    let url = s.url("/streams/bytes");
    let body = big.clone();
    let held = tokio::spawn(async move { c.post(url).json(&body).send().await.unwrap().status() });
    store.entered.acquire().await.unwrap().forget();
    let p = problem(
        post(&s, "bytes", "any", big).await,
        StatusCode::SERVICE_UNAVAILABLE,
    )
    .await;
    assert_eq!(p["pendingBytesLimit"], 8192);
    // A small append still fits beside the held one.
    let small = tokio::spawn({
        let c = http();
        let url = s.url("/streams/bytes");
        async move { c.post(url).json(&ev("A", 1)).send().await.unwrap().status() }
    });
    store.entered.acquire().await.unwrap().forget();
    store.gate.add_permits(10);
    assert_eq!(held.await.unwrap(), StatusCode::CREATED);
    assert_eq!(small.await.unwrap(), StatusCode::CREATED);
    s.stop().await.unwrap();
}

/// Appends in flight when shutdown begins finish and are acknowledged; every
/// acknowledged event is in the store; new appends are refused; the server returns.
#[tokio::test]
async fn graceful_shutdown_loses_nothing_acknowledged() {
    let store = GatedStore::new();
    let mut s = TestServer::start_with(store.clone(), ServerConfig::default()).await;
    let n = 8u64;
    let mut in_flight = Vec::new();
    for i in 0..n {
        let c = http();
        let url = s.url("/streams/shutdown");
        in_flight.push(tokio::spawn(async move {
            let r = c.post(url).json(&ev("A", i)).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap())
        }));
    }
    store.entered.acquire_many(n as u32).await.unwrap().forget();
    let sub = http()
        .get(s.url("/subscribe/all?from=0"))
        .send()
        .await
        .unwrap();
    let mut sub = common::SseReader::new(sub);
    s.signal_shutdown();
    // Wait until the server has begun shutting down before releasing the appends.
    while !s.state.is_shutting_down() {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    store.gate.add_permits(1000);
    let mut acknowledged = Vec::new();
    for h in in_flight {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        acknowledged.push(body["position"].as_u64().unwrap());
    }
    // The subscription ends cleanly instead of holding the server open.
    while sub.next().await.is_some() {}
    s.handle.take().unwrap().await.unwrap().unwrap();
    let all = store.inner.all_events();
    assert_eq!(all.len() as u64, n);
    for p in acknowledged {
        assert!(all.iter().any(|e| e.position == p));
    }
}

#[tokio::test]
async fn the_server_holds_events_to_its_stores_limits() {
    // No limit of the server's own: an event the store's limits refuse is refused by
    // the server, with the store's limit named, and nothing is written.
    let store = tidings::InMemoryStore::with_limits(tidings::Limits {
        max_event_bytes: 300,
        max_append_bytes: 1000,
    });
    let s = TestServer::start_with(store.clone(), ServerConfig::default()).await;
    let p = problem(
        post(
            &s,
            "a",
            "any",
            json!({"eventType": "A", "data": "x".repeat(400)}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["index"], 0);
    assert!(
        p["reason"].as_str().unwrap().contains("the limit is 300"),
        "{p}"
    );
    let five = json!([ev("A", 1), ev("A", 2), ev("A", 3), ev("A", 4), ev("A", 5)]);
    let many: Vec<Value> = (0..8)
        .map(|i| json!({"eventType": "A", "data": "y".repeat(150 + i)}))
        .collect();
    let p = problem(
        post(&s, "a", "any", Value::Array(many)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(p["limit"], 1000);
    assert!(store.all_events().is_empty());
    let r = post(&s, "a", "any", five).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    s.stop().await.unwrap();
}

/// An append the store does not answer within the server's deadline is answered 503
/// `append-timeout` at once, keeps running, counts as stalled (`/ready` 503, the gauge
/// and the counter) until the store answers; a retry with the same event id then
/// answers the recorded append instead of writing it twice.
#[tokio::test]
async fn an_append_past_the_deadline_is_503_and_the_server_not_ready_until_it_ends() {
    let store = GatedStore::new();
    let s = TestServer::start_with(
        store.clone(),
        ServerConfig {
            append_timeout: Duration::from_millis(100),
            ..ServerConfig::default()
        },
    )
    .await;
    let id = "018f0000-0000-7000-8000-0000000000aa";
    let body = json!({"eventId": id, "eventType": "A", "data": {}});
    let r = post(&s, "slow", "no-stream", body.clone()).await;
    assert_eq!(r.headers()["retry-after"], "2");
    let p = problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(p["type"], "urn:tidings:problem:append-timeout");
    assert_eq!(p["outcomeUnknown"], true);
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("outcome is unknown"), "{detail}");
    assert!(detail.contains("same event ids is safe"), "{detail}");

    let ready = http().get(s.url("/ready")).send().await.unwrap();
    let p = problem(ready, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(p["type"], "urn:tidings:problem:appends-stalled");
    assert_eq!(p["appendsStalled"], 1);
    let metrics = http()
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tidings_appends_stalled 1\n"), "{metrics}");
    assert!(
        metrics.contains("tidings_append_timeouts_total 1\n"),
        "{metrics}"
    );

    // The held append completes (it was never cancelled); the retry finds it.
    store.gate.add_permits(100);
    let r = post(&s, "slow", "no-stream", body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    for _ in 0..500 {
        status = http().get(s.url("/ready")).send().await.unwrap().status();
        if status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status, StatusCode::OK, "ready again once appends flow");
    let all = store.inner.all_events();
    assert_eq!(all.len(), 1, "the event is stored once");
    s.stop().await.unwrap();
}
