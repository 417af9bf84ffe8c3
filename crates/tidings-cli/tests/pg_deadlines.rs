//! `--pg-lock-timeout` / `--pg-statement-timeout`: bad values are refused with a clear
//! error before anything is opened, the flags are refused for stores other than
//! PostgreSQL, and on PostgreSQL they reach the store: with another session holding the
//! stream's row, `tidings serve --pg-lock-timeout 300ms` answers the append 503
//! `append-timeout` after 300 ms (not the default 5 s), with `Retry-After`, and the
//! retry after the lock is released writes the event once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::process::Command;

use serde_json::{Value, json};
use sqlx::Connection;

mod common;
use common::{BIN, Server};

/// Runs `tidings ARGS` and answers (success, stderr).
fn tidings(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("TIDINGS_TOKEN")
        .env_remove("TIDINGS_STORE")
        .env_remove("TIDINGS_PG_LOCK_TIMEOUT")
        .env_remove("TIDINGS_PG_STATEMENT_TIMEOUT")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_deadlines_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    for flag in ["--pg-lock-timeout", "--pg-statement-timeout"] {
        for bad in ["fast", "0", "-1s", "10m", "2days"] {
            let (ok, err) = tidings(&[
                "serve",
                "--store",
                "postgres://127.0.0.1:1/never-reached",
                &format!("{flag}={bad}"),
            ]);
            assert!(!ok, "{flag} {bad} was accepted");
            assert!(
                err.contains(flag) && err.contains("is not a duration"),
                "{flag} {bad}: {err}"
            );
        }
        // A good value for a store that is not PostgreSQL is refused, and nothing is
        // created.
        let (ok, err) = tidings(&["streams", "--data", data, flag, "1s"]);
        assert!(!ok);
        assert!(
            err.contains(flag) && err.contains("PostgreSQL store only"),
            "{err}"
        );
        let (ok, err) = tidings(&["serve", "--store", "memory", flag, "1s"]);
        assert!(!ok);
        assert!(err.contains("PostgreSQL store only"), "{err}");
    }
    assert!(
        !dir.path().join("data").exists(),
        "a refused command made a store"
    );
}

async fn post(url: &str, event_id: &str) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(url)
        .json(&json!({"eventId": event_id, "eventType": "Deposited", "data": {"n": 1}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

#[tokio::test]
async fn the_lock_timeout_flag_reaches_the_store() {
    let Some(db) = tidings_testkit::services::service_url(
        "the_lock_timeout_flag_reaches_the_store",
        "TIDINGS_POSTGRES_URL",
    ) else {
        return;
    };
    let server = Server::start_on(&[
        "--store",
        &db,
        "--pg-lock-timeout",
        "300ms",
        "--pg-statement-timeout",
        "20s",
        "--append-timeout",
        "60s",
    ]);
    // A stream of this test only: the lock below holds its row, no one else's.
    let stream = format!("pg-deadline-{}", uuid::Uuid::now_v7().simple());
    let url = format!("{}/streams/{stream}", server.url);
    let (status, _, body) = post(&url, &uuid::Uuid::now_v7().to_string()).await;
    assert_eq!(status, 201, "{body}");

    // Another session holds the stream's row, as `BEGIN; SELECT … FOR UPDATE` in psql.
    // The server's store lives in the default schema `tidings`.
    let mut held = sqlx::PgConnection::connect(&db).await.unwrap();
    sqlx::query("BEGIN").execute(&mut held).await.unwrap();
    sqlx::query("SELECT name FROM tidings.tidings_streams WHERE name = $1 FOR UPDATE")
        .bind(&stream)
        .execute(&mut held)
        .await
        .unwrap();

    let id = uuid::Uuid::now_v7().to_string();
    let (status, retry, body) = post(&url, &id).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "urn:tidings:problem:append-timeout", "{body}");
    // 300 ms is the flag's lock timeout; without it the store's default (5 s) would
    // have answered.
    assert_eq!(body["timeoutMs"], 300, "{body}");
    assert!(retry.is_some(), "no Retry-After");

    sqlx::query("ROLLBACK").execute(&mut held).await.unwrap();
    held.close().await.unwrap();
    let (status, _, body) = post(&url, &id).await;
    assert_eq!(status, 201, "{body}");
    let read = reqwest::get(&url)
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let events = read
        .as_array()
        .or_else(|| read["events"].as_array())
        .cloned()
        .unwrap_or_default();
    assert_eq!(events.len(), 2, "{read}");
}
