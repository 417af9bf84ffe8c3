//! `tidings serve` as a process, and the client commands against it: append, read,
//! streams, correlation, export and import (idempotent and resumable), SIGTERM exits 0,
//! a non-loopback bind without a token is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;
use common::{BIN, Server};

fn tidings(server: &Server, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--server", &server.url])
        .env_remove("TIDINGS_TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn client_commands_against_a_server_and_export_import_round_trip() {
    let a = Server::memory(&[]);
    let (ok, out, err) = tidings(
        &a,
        &[
            "append",
            "order-1",
            "--type",
            "OrderCreated",
            "--data",
            r#"{"orderId":"order-1"}"#,
            "--expected",
            "no-stream",
            "--correlation-id",
            "corr-1",
            "--causation-id",
            "user-action-1",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("STREAM"), "a table: {out}");
    let (ok, out, _) = tidings(&a, &["read", "order-1", "--json"]);
    assert!(ok);
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = events[0]["eventId"].as_str().unwrap().to_owned();
    let (ok, _, err) = tidings(
        &a,
        &[
            "append",
            "payment-1",
            "--type",
            "PaymentProcessed",
            "--data",
            "{}",
            "--correlation-id",
            "corr-1",
            "--causation-id",
            &id,
        ],
    );
    assert!(ok, "{err}");
    // A conflict says what happened and exits non-zero.
    let (ok, _, err) = tidings(
        &a,
        &[
            "append",
            "order-1",
            "--type",
            "X",
            "--data",
            "1",
            "--expected",
            "no-stream",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("409") && err.contains("expected no-stream"),
        "{err}"
    );
    let (ok, _, err) = tidings(
        &a,
        &["append", "order-1", "--type", "X", "--data", "{not json"],
    );
    assert!(!ok && err.contains("--data is not valid JSON"), "{err}");

    let (ok, out, _) = tidings(&a, &["read", "order-1"]);
    assert!(ok);
    let header = out.lines().next().unwrap();
    assert!(
        header.starts_with("REV") && header.contains("TYPE"),
        "{out}"
    );
    let (ok, out, _) = tidings(&a, &["streams"]);
    assert!(ok);
    assert!(
        out.contains("order-1") && out.contains("payment-1"),
        "{out}"
    );
    let (ok, out, _) = tidings(&a, &["correlation", "corr-1"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[1].starts_with("OrderCreated") && lines[1].contains("caused by user-action-1"),
        "{out}"
    );
    assert!(lines[2].starts_with("└─ PaymentProcessed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.ndjson");
    let file_s = file.to_str().unwrap();
    let (ok, _, err) = tidings(&a, &["export", "--out", file_s]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 2);

    let b = Server::memory(&[]);
    for _ in 0..2 {
        let (ok, _, err) = tidings(&b, &["import", file_s]);
        assert!(ok, "{err}");
    }
    let (ok, out, _) = tidings(&b, &["read", "order-1", "--json"]);
    assert!(ok);
    let copied: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        copied.as_array().unwrap().len(),
        1,
        "import is idempotent by event id"
    );
    assert_eq!(copied[0]["eventId"], events[0]["eventId"]);
    // A stale progress file past the data already imported resumes without duplicates.
    std::fs::write(dir.path().join("export.ndjson.import-progress"), "0").unwrap();
    let (ok, _, err) = tidings(&b, &["import", file_s]);
    assert!(ok, "{err}");
    let (_, out, _) = tidings(&b, &["export"]);
    assert_eq!(out.lines().count(), 2);

    assert!(a.terminate().success(), "SIGTERM exits 0");
    assert!(b.terminate().success());
}

#[test]
fn tail_follows_live_events() {
    let s = Server::memory(&[]);
    let (ok, _, err) = tidings(&s, &["append", "t-1", "--type", "First", "--data", "1"]);
    assert!(ok, "{err}");
    let mut tail = Command::new(BIN)
        .args(["tail", "--from", "0", "--json", "--server", &s.url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["eventType"], "First");
    let (ok, _, err) = tidings(&s, &["append", "t-2", "--type", "Second", "--data", "2"]);
    assert!(ok, "{err}");
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (second["eventType"].as_str(), second["position"].as_u64()),
        (Some("Second"), Some(1))
    );
    tail.kill().unwrap();
    tail.wait().unwrap();
    assert!(s.terminate().success());
}

#[test]
fn client_commands_on_a_local_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("TIDINGS_SERVER")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{args:?}: {stderr}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&[
        "append",
        "local-1",
        "--type",
        "OrderCreated",
        "--data",
        r#"{"n":1}"#,
        "--data-dir",
        data,
    ]);
    run(&[
        "append",
        "local-1",
        "--type",
        "OrderPaid",
        "--data",
        r#"{"n":2}"#,
        "--expected",
        "0",
        "--data-dir",
        data,
    ]);
    let out = run(&["read", "local-1", "--backward", "--data", data]);
    let types: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap())
        .collect();
    assert_eq!(types, ["OrderPaid", "OrderCreated"]);
    assert!(run(&["streams", "--data", data]).contains("local-1"));
    let file = dir.path().join("x.ndjson");
    run(&["export", "--out", file.to_str().unwrap(), "--data", data]);
    let copy = dir.path().join("copy");
    run(&[
        "import",
        file.to_str().unwrap(),
        "--data",
        copy.to_str().unwrap(),
    ]);
    let out = run(&[
        "read",
        "local-1",
        "--json",
        "--data",
        copy.to_str().unwrap(),
    ]);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A server on the same directory sees the same events.
    let s = Server::start_on(&["--data", data]);
    let (ok, out, _) = tidings(&s, &["read", "local-1", "--json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(s.terminate().success());
}

#[test]
fn serve_on_postgres() {
    let Some(url) =
        tidings_testkit::services::service_url("serve_on_postgres", "TIDINGS_POSTGRES_URL")
    else {
        return;
    };
    let s = Server::start_on(&["--store", &url]);
    let stream = format!("http-pg-{}", std::process::id());
    let (ok, _, err) = tidings(
        &s,
        &["append", &stream, "--type", "OrderCreated", "--data", "{}"],
    );
    assert!(ok, "{err}");
    let (ok, out, _) = tidings(&s, &["read", &stream, "--json"]);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap()[0]["eventType"],
        "OrderCreated"
    );
    assert!(s.terminate().success());
}

#[test]
fn non_loopback_bind_needs_a_token() {
    let out = Command::new(BIN)
        .args(["serve", "--store", "memory", "--listen", "0.0.0.0:0"])
        .env_remove("TIDINGS_TOKEN")
        .env_remove("TIDINGS_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to listen on 0.0.0.0") && err.contains("--token"),
        "{err}"
    );
}

#[test]
fn tokens_from_the_command_line_are_required() {
    let s = Server::memory(&["--token", "a-long-admin-token-123"]);
    let (ok, _, err) = tidings(&s, &["streams"]);
    assert!(!ok && err.contains("401"), "{err}");
    let out = Command::new(BIN)
        .args([
            "streams",
            "--server",
            &s.url,
            "--token",
            "a-long-admin-token-123",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(s.terminate().success());
}
