//! Reads and Server-Sent Events in CloudEvents: `Accept` negotiation on the read routes,
//! the recorded coordinates as extensions, a CloudEvent read back appended as it is, and
//! `?format=cloudevents` on subscriptions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use common::{SseReader, TestServer, http};
use reqwest::StatusCode;
use serde_json::{Value, json};

const BATCH: &str = "application/cloudevents-batch+json";
const ONE: &str = "application/cloudevents+json";

async fn get(url: String, accept: Option<&str>) -> reqwest::Response {
    let mut r = http().get(url);
    if let Some(a) = accept {
        r = r.header("accept", a);
    }
    r.send().await.unwrap()
}

fn content_type(r: &reqwest::Response) -> String {
    r.headers()["content-type"].to_str().unwrap().to_owned()
}

async fn json_of(r: reqwest::Response, expected_type: &str) -> Value {
    assert_eq!(r.status(), 200);
    assert_eq!(content_type(&r), expected_type);
    r.json().await.unwrap()
}

/// Two native events on `order-1` and one on `order-2`, all in correlation `corr-1`.
async fn record_events(s: &TestServer) {
    let c = http();
    let first = json!([
        {
            "eventId": "0190a5c4-7d2e-7c4a-9a57-3d2f3b8e1a01",
            "eventType": "OrderCreated",
            "eventVersion": "2.0",
            "timestamp": "2024-01-15T10:30:00.123456Z",
            "source": "order-service",
            "data": {"orderId": "order-1", "total": 59.98, "note": "café"},
            "metadata": {"correlationId": "corr-1", "causationId": "cmd-1", "userId": "u-1",
                         "tenant": "acme"}
        },
        {
            "eventType": "OrderPaid",
            "data": {"orderId": "order-1"},
            "metadata": {"correlationId": "corr-1"}
        }
    ]);
    let r = c
        .post(s.url("/streams/order-1"))
        .json(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .post(s.url("/streams/order-2"))
        .json(&json!({"eventType": "OrderCreated", "data": [1, 2],
            "metadata": {"correlationId": "corr-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[tokio::test]
async fn reads_answer_cloudevents_when_asked() {
    let s = TestServer::start().await;
    record_events(&s).await;

    // The batch form of a stream read: one structured CloudEvent per recorded event.
    let batch = json_of(get(s.url("/streams/order-1"), Some(BATCH)).await, BATCH).await;
    let batch = batch.as_array().unwrap();
    assert_eq!(batch.len(), 2);
    let ce = &batch[0];
    assert_eq!(ce["specversion"], "1.0");
    assert_eq!(ce["id"], "0190a5c4-7d2e-7c4a-9a57-3d2f3b8e1a01");
    assert_eq!(ce["type"], "OrderCreated");
    assert_eq!(ce["source"], "order-service");
    assert_eq!(ce["time"], "2024-01-15T10:30:00.123456Z");
    assert_eq!(ce["datacontenttype"], "application/json");
    assert_eq!(
        ce["data"],
        json!({"orderId": "order-1", "total": 59.98, "note": "café"})
    );
    assert_eq!(ce["eventversion"], "2.0");
    assert_eq!(ce["correlationid"], "corr-1");
    assert_eq!(ce["causationid"], "cmd-1");
    assert_eq!(ce["userid"], "u-1");
    assert_eq!(ce["tenant"], "acme");
    assert_eq!(ce["tidingsstream"], "order-1");
    assert_eq!(ce["tidingsrevision"], "0");
    assert_eq!(ce["tidingsposition"], "0");
    assert_eq!(batch[1]["type"], "OrderPaid");
    assert_eq!(batch[1]["source"], "tidings-http");
    assert_eq!(batch[1]["tidingsrevision"], "1");
    assert_eq!(batch[1]["tidingsposition"], "1");
    assert_eq!(batch[1]["eventversion"], "1.0");
    assert!(batch[1].get("causationid").is_none());

    // The single event form agrees with the batch, field for field.
    let one = json_of(get(s.url("/streams/order-1/0"), Some(ONE)).await, ONE).await;
    assert_eq!(&one, ce);
    // The batch form of the one-event route is a one-element array.
    let one_batch = json_of(get(s.url("/streams/order-1/1"), Some(BATCH)).await, BATCH).await;
    assert_eq!(one_batch, json!([batch[1].clone()]));

    // The native and CloudEvents forms name the same event.
    let native: Value = get(s.url("/streams/order-1/0"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(native["eventId"], ce["id"]);
    assert_eq!(native["timestamp"], ce["time"]);
    assert_eq!(native["position"], 0);
    assert_eq!(native["recordedAt"], ce["tidingsrecordedat"]);

    // /all and /correlations: the batch, also for application/cloudevents+json.
    for accept in [BATCH, ONE] {
        let all = json_of(get(s.url("/all"), Some(accept)).await, BATCH).await;
        let streams: Vec<(&str, &str)> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["tidingsstream"].as_str().unwrap(),
                    e["tidingsposition"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            streams,
            [("order-1", "0"), ("order-1", "1"), ("order-2", "2")]
        );
        let corr = json_of(
            get(s.url("/correlations/corr-1"), Some(accept)).await,
            BATCH,
        )
        .await;
        assert_eq!(corr, all);
    }
    let stream = json_of(get(s.url("/streams/order-2"), Some(ONE)).await, BATCH).await;
    assert_eq!(stream[0]["data"], json!([1, 2]));

    // q-values: CloudEvents preferred over JSON, and the other way round.
    let r = get(
        s.url("/all"),
        Some("application/json;q=0.4, application/cloudevents-batch+json;q=0.9"),
    )
    .await;
    assert_eq!(content_type(&r), BATCH);
    let r = get(
        s.url("/all"),
        Some("application/cloudevents-batch+json;q=0.1, */*"),
    )
    .await;
    assert_eq!(content_type(&r), "application/json");
    s.stop().await.unwrap();
}

#[tokio::test]
async fn the_default_json_is_unchanged_and_paging_survives() {
    let s = TestServer::start().await;
    record_events(&s).await;
    // No Accept, */* and application/json answer the same bytes.
    for (path, shape) in [
        ("/streams/order-1", "events"),
        ("/streams/order-1/0", "eventId"),
        ("/all", "events"),
        ("/correlations/corr-1", "events"),
    ] {
        let plain = get(s.url(path), None).await;
        assert_eq!(content_type(&plain), "application/json");
        assert_eq!(plain.headers()["vary"], "accept");
        let plain = plain.bytes().await.unwrap();
        let parsed: Value = serde_json::from_slice(&plain).unwrap();
        assert!(!parsed[shape].is_null(), "{path}: {parsed}");
        for accept in [
            "*/*",
            "application/json",
            "application/*",
            "text/html, */*;q=0.1",
        ] {
            let r = get(s.url(path), Some(accept)).await;
            assert_eq!(content_type(&r), "application/json", "{path} {accept}");
            assert_eq!(r.bytes().await.unwrap(), plain, "{path} {accept}");
        }
    }
    // A full page of the batch links to the next one.
    let r = get(
        s.url("/all?limit=2&type=OrderCreated,OrderPaid"),
        Some(BATCH),
    )
    .await;
    assert_eq!(
        r.headers()["link"],
        "</all?limit=2&type=OrderCreated,OrderPaid&from=2>; rel=\"next\""
    );
    let page: Value = r.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 2);
    let r = get(
        s.url("/all?limit=2&type=OrderCreated,OrderPaid&from=2"),
        Some(BATCH),
    )
    .await;
    assert!(r.headers().get("link").is_none(), "the last page");
    let page: Value = r.json().await.unwrap();
    assert_eq!(page[0]["tidingsposition"], "2");
    let r = get(s.url("/streams/order-1?limit=1"), Some(BATCH)).await;
    assert_eq!(
        r.headers()["link"],
        "</streams/order-1?limit=1&from=1>; rel=\"next\""
    );
    s.stop().await.unwrap();
}

#[tokio::test]
async fn unacceptable_and_malformed_accept_headers() {
    let s = TestServer::start().await;
    record_events(&s).await;
    for path in [
        "/streams/order-1",
        "/streams/order-1/0",
        "/all",
        "/correlations/corr-1",
    ] {
        for accept in [
            "text/html",
            "text/event-stream",
            "application/json;q=0, text/*",
        ] {
            let r = get(s.url(path), Some(accept)).await;
            assert_eq!(r.status(), StatusCode::NOT_ACCEPTABLE, "{path} {accept}");
            assert_eq!(content_type(&r), "application/problem+json");
            let p: Value = r.json().await.unwrap();
            assert_eq!(p["type"], "urn:tidings:problem:not-acceptable");
            assert_eq!(p["status"], 406);
            assert!(
                p["available"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("application/cloudevents-batch+json"))
            );
        }
        // Garbage is treated as no Accept at all: never a panic, never a 5xx.
        for accept in [",,,", "nonsense", ";q=0.5", "a/b;q=7", "*/json"] {
            let r = get(s.url(path), Some(accept)).await;
            assert_eq!(r.status(), 200, "{path} {accept:?}");
            assert_eq!(content_type(&r), "application/json");
        }
        let r = http()
            .get(s.url(path))
            .header(
                "accept",
                reqwest::header::HeaderValue::from_bytes(b"\xfftext/\xfe").unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with non-ASCII Accept");
    }
    // Not-found problems stay problems whatever was asked for.
    let r = get(s.url("/streams/order-1/9"), Some(ONE)).await;
    assert_eq!(r.status(), 404);
    assert_eq!(content_type(&r), "application/problem+json");
    // The OpenAPI document describes all of it.
    let doc: Value = get(s.url("/openapi.json"), None)
        .await
        .json()
        .await
        .unwrap();
    for path in [
        "/streams/{stream}",
        "/streams/{stream}/{revision}",
        "/all",
        "/correlations/{id}",
    ] {
        let op = &doc["paths"][path]["get"];
        assert!(!op["responses"]["406"].is_null(), "{path}");
        assert!(
            !op["responses"]["200"]["content"][BATCH].is_null(),
            "{path}"
        );
    }
    assert!(
        !doc["paths"]["/streams/{stream}/{revision}"]["get"]["responses"]["200"]["content"][ONE]
            .is_null()
    );
    assert_eq!(
        doc["components"]["schemas"]["CloudEvent"]["properties"]["tidingsposition"]["type"],
        "string"
    );
    for path in ["/subscribe/all", "/subscribe/streams/{stream}"] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        assert!(
            params
                .iter()
                .any(|p| p["name"] == "format"
                    && p["schema"]["enum"] == json!(["json", "cloudevents"])),
            "{path}"
        );
    }
    s.stop().await.unwrap();
}

/// The fields of a recorded event that do not depend on where it was recorded.
fn envelope(mut recorded: Value) -> Value {
    let m = recorded.as_object_mut().unwrap();
    for k in ["stream", "revision", "position", "recordedAt"] {
        m.remove(k);
    }
    recorded
}

#[tokio::test]
async fn a_cloudevent_read_back_appends_as_it_is() {
    let s = TestServer::start().await;
    record_events(&s).await;
    let c = http();
    let ce = json_of(get(s.url("/streams/order-1/0"), Some(ONE)).await, ONE).await;
    let batch = json_of(get(s.url("/streams/order-1"), Some(BATCH)).await, BATCH).await;

    // Event ids are unique across a store, so the same CloudEvent is refused on another
    // stream of the same store...
    let r = c
        .post(s.url("/streams/copy"))
        .header("content-type", ONE)
        .body(ce.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:tidings:problem:duplicate-event-id");

    // ...and accepted as it is by other stores, on other streams: structured and batched.
    let other = TestServer::start().await;
    let r = c
        .post(other.url("/streams/copy-one"))
        .header("content-type", ONE)
        .body(ce.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let third = TestServer::start().await;
    let r = c
        .post(third.url("/streams/copy-all"))
        .header("content-type", BATCH)
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());

    // It reads back equal: the same envelope natively, the same CloudEvent but for the
    // coordinates the new store assigned.
    let original: Value = get(s.url("/streams/order-1/0"), None)
        .await
        .json()
        .await
        .unwrap();
    let copied: Value = get(other.url("/streams/copy-one/0"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(envelope(copied.clone()), envelope(original));
    assert_eq!(
        copied["metadata"],
        json!({"correlationId": "corr-1", "causationId": "cmd-1", "userId": "u-1",
               "tenant": "acme"}),
        "the coordinates of the first store are not kept as metadata"
    );
    let mut again = json_of(get(other.url("/streams/copy-one/0"), Some(ONE)).await, ONE).await;
    assert_eq!(again["tidingsstream"], "copy-one");
    assert_eq!(again["tidingsposition"], "0");
    let mut expected = ce.clone();
    for k in [
        "tidingsstream",
        "tidingsrevision",
        "tidingsposition",
        "tidingsrecordedat",
    ] {
        expected.as_object_mut().unwrap().remove(k);
        again.as_object_mut().unwrap().remove(k);
    }
    assert_eq!(again, expected);
    let copies = json_of(
        get(third.url("/streams/copy-all"), Some(BATCH)).await,
        BATCH,
    )
    .await;
    for (copy, orig) in copies
        .as_array()
        .unwrap()
        .iter()
        .zip(batch.as_array().unwrap())
    {
        assert_eq!(copy["tidingsstream"], "copy-all");
        assert_eq!(copy["tidingsrevision"], orig["tidingsrevision"]);
        for k in [
            "id",
            "type",
            "source",
            "time",
            "data",
            "eventversion",
            "correlationid",
        ] {
            assert_eq!(copy[k], orig[k], "{k}");
        }
    }
    third.stop().await.unwrap();
    other.stop().await.unwrap();
    s.stop().await.unwrap();
}

async fn subscribe(url: String, last_id: Option<u64>) -> SseReader {
    let mut r = http().get(url).header("accept", "text/event-stream");
    if let Some(id) = last_id {
        r = r.header("last-event-id", id.to_string());
    }
    let response = r.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    SseReader::new(response)
}

#[tokio::test]
async fn server_sent_events_in_cloudevents() {
    let s = TestServer::start().await;
    record_events(&s).await;
    let c = http();

    // $all from the start: each data line is one structured CloudEvent; ids are positions.
    let mut sub = subscribe(s.url("/subscribe/all?from=0&format=cloudevents"), None).await;
    for position in 0..3u64 {
        let (id, event, data) = sub.next().await.unwrap();
        assert_eq!(id, Some(position.to_string()));
        assert_eq!(event, None);
        assert!(!data.contains('\n'));
        let ce: Value = serde_json::from_str(&data).unwrap();
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["tidingsposition"], position.to_string());
        let same = json_of(
            get(
                s.url(&format!(
                    "/streams/{}/{}",
                    ce["tidingsstream"].as_str().unwrap(),
                    ce["tidingsrevision"].as_str().unwrap()
                )),
                Some(ONE),
            )
            .await,
            ONE,
        )
        .await;
        assert_eq!(ce, same, "SSE and the read route agree");
    }
    // Live events arrive in the same form.
    c.post(s.url("/streams/order-1"))
        .json(&json!({"eventType": "OrderShipped", "data": {"orderId": "order-1"}}))
        .send()
        .await
        .unwrap();
    let (id, _, data) = sub.next().await.unwrap();
    assert_eq!(id.as_deref(), Some("3"));
    let ce: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(ce["type"], "OrderShipped");
    assert_eq!(ce["tidingsrevision"], "2");
    drop(sub);

    // Resume by Last-Event-ID on a stream subscription: same semantics as JSON.
    let mut sub = subscribe(
        s.url("/subscribe/streams/order-1?format=cloudevents"),
        Some(1),
    )
    .await;
    let (id, _, data) = sub.next().await.unwrap();
    assert_eq!(id.as_deref(), Some("3"));
    let ce: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(ce["type"], "OrderShipped");
    assert_eq!(ce["tidingsstream"], "order-1");
    drop(sub);

    // format=json is the default form, explicitly.
    let mut sub = subscribe(s.url("/subscribe/all?from=3&format=json"), None).await;
    let (_, _, data) = sub.next().await.unwrap();
    let native: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(native["eventType"], "OrderShipped");
    assert_eq!(native["position"], 3);
    drop(sub);

    // An unknown format is a 400 problem.
    for path in [
        "/subscribe/all?format=xml",
        "/subscribe/streams/order-1?format=CloudEvents2",
    ] {
        let r = get(s.url(path), Some("text/event-stream")).await;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(content_type(&r), "application/problem+json");
    }
    s.stop().await.unwrap();
}
