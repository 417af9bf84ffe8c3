//! Property tests: arbitrary bodies and headers sent to the append route, in every
//! content mode, always get a 201 or a 4xx problem — never a panic, never a 5xx.
//!
//! The seed is printed; `TIDINGS_SEED=<n>` replays a run. Rounds are bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use tidings::InMemoryStore;
use tidings_server::{AppState, ServerConfig};
use tower::ServiceExt;

fn runner(test: &str) -> TestRunner {
    let seed = common::seed(test);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        Config {
            cases: 300,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "1.0",
            "0.3",
            "OrderCreated",
            "/src",
            "application/json",
            "text/plain",
            "eyJhIjoxfQ==",
            "!!",
            ""
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let keys = prop::sample::select(vec![
            "eventId",
            "eventType",
            "eventVersion",
            "timestamp",
            "source",
            "data",
            "metadata",
            "correlationId",
            "causationId",
            "specversion",
            "id",
            "type",
            "time",
            "subject",
            "datacontenttype",
            "data_base64",
            "correlationid",
            "eventversion",
            "x",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys.prop_map(str::to_owned), inner, 0..7)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies: plausible events (valid or nearly), arbitrary JSON, and raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let event = || {
        (json_value(), prop::option::of(".{0,10}"), any::<bool>()).prop_map(|(data, ty, ce)| {
        if ce {
            json!({"specversion": "1.0", "id": "x", "source": "/s", "type": ty.unwrap_or_default(), "data": data})
        } else {
            json!({"eventType": ty, "data": data})
        }
    })
    };
    prop_oneof![
        event().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(event(), 0..4).prop_map(|v| Value::Array(v).to_string().into_bytes()),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..64),
        "[{\\[\\]\"a-z:,0-9 ]{0,40}".prop_map(String::into_bytes),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    let content_type = prop_oneof![
        Just(None),
        prop::sample::select(vec![
            "application/json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "application/cloudevents+json; charset=utf-8",
            "text/plain",
            "application/xml",
            "application/vnd.x+json",
            "APPLICATION/JSON",
            "",
            ";;",
        ])
        .prop_map(|s| Some(s.as_bytes().to_vec())),
        prop::collection::vec(any::<u8>(), 0..20).prop_map(Some),
    ];
    let name = prop::sample::select(vec![
        "ce-specversion",
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-time",
        "ce-subject",
        "ce-correlationid",
        "ce-causationid",
        "ce-userid",
        "ce-eventversion",
        "ce-dataschema",
        "ce-x",
        "expected-version",
        "last-event-id",
        "content-length-ish",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "1.0",
            "0.3",
            "any",
            "no-stream",
            "stream-exists",
            "7",
            "-1",
            "%ZZ",
            "%C3%A9",
            "/s",
            "2024-01-15T10:30:00Z",
            "x"
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    (content_type, prop::collection::vec((name, value), 0..8)).prop_map(|(ct, mut hs)| {
        let mut out: Vec<(String, Vec<u8>)> =
            hs.drain(..).map(|(n, v)| (n.to_owned(), v)).collect();
        if let Some(ct) = ct {
            out.push(("content-type".to_owned(), ct));
        }
        out
    })
}

#[test]
fn parsing_any_request_is_ok_or_a_4xx_problem() {
    let mut runner = runner("parsing_any_request_is_ok_or_a_4xx_problem");
    runner
        .run(&(headers(), body()), |(hs, body)| {
            let mut map = axum::http::HeaderMap::new();
            for (n, v) in hs {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_bytes(&v),
                ) {
                    map.append(n, v);
                }
            }
            if let Err(p) = tidings_server::append::parse_append(&map, &body) {
                prop_assert!(
                    p.status.is_client_error(),
                    "{} for {:?}",
                    p.status,
                    String::from_utf8_lossy(&body)
                );
                prop_assert!(!p.detail.is_empty());
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_append_route_never_answers_5xx() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let app = tidings_server::router(AppState::new(
        InMemoryStore::new(),
        ServerConfig {
            max_body_bytes: 256,
            ..ServerConfig::default()
        },
    ));
    let mut runner = runner("the_append_route_never_answers_5xx");
    let stream = prop::sample::select(vec![
        "s", "order-1", "%24sys", "%00", "a%2Fb", "%C3%A9", "%FF",
    ]);
    runner
        .run(&(stream, headers(), body()), |(stream, hs, body)| {
            let mut req = Request::post(format!("/streams/{stream}"));
            for (n, v) in hs {
                if let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.as_bytes()),
                    HeaderValue::from_bytes(&v),
                ) {
                    req = req.header(n, v);
                }
            }
            let req = req.body(Body::from(body.clone())).unwrap();
            let response = rt.block_on(app.clone().oneshot(req)).unwrap();
            let status = response.status();
            prop_assert!(
                status.as_u16() == 201 || status.is_client_error(),
                "{status} for body {:?}",
                String::from_utf8_lossy(&body)
            );
            if status.is_client_error() {
                let ct = response
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap_or("").to_owned());
                prop_assert_eq!(ct.as_deref(), Some("application/problem+json"));
            }
            Ok(())
        })
        .unwrap();
}
