//! `tidings group` and `tidings parked` on a data directory and against a server:
//! create, list, info, update, consume (parking a poison event), parked list, replay
//! and delete, and the refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::process::Command;

use serde_json::Value;

mod common;
use common::{BIN, Server};

fn run(args: &[&str], target: &[String]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(target)
        .env_remove("TIDINGS_TOKEN")
        .env_remove("TIDINGS_SERVER")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(args: &[&str], target: &[String]) -> String {
    let (success, out, err) = run(args, target);
    assert!(success, "tidings {args:?} failed: {err}");
    out
}

fn json(args: &[&str], target: &[String]) -> Value {
    let mut with = args.to_vec();
    with.push("--json");
    let out = ok(&with, target);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// JSON lines printed by `group consume --json`.
fn consume(group: &str, extra: &[&str], target: &[String]) -> Vec<Value> {
    let mut args = vec!["group", "consume", group, "--json"];
    args.extend_from_slice(extra);
    ok(&args, target)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The whole walk, against whatever `target` names; `append` adds an event.
fn walk(target: &[String], append: &dyn Fn(&str, &str)) {
    append("order-1", "OrderPlaced");
    append("order-2", "Poison");
    append("order-1", "OrderPaid");

    let (success, _, err) = run(&["group", "create", "bad name"], target);
    assert!(!success && err.contains("invalid group name"), "{err}");
    let (success, _, err) = run(&["group", "create", "g", "--strategy", "fastest"], target);
    assert!(!success && err.contains("--strategy fastest"), "{err}");
    let (success, _, err) = run(&["group", "create", "g", "--buffer", "0"], target);
    assert!(!success && err.contains("buffer"), "{err}");

    let out = ok(
        &[
            "group",
            "create",
            "billing",
            "--max-retries",
            "0",
            "--lease-ms",
            "5000",
        ],
        target,
    );
    assert!(out.contains("created consumer group billing"), "{out}");
    let (success, _, err) = run(&["group", "create", "billing"], target);
    assert!(!success && err.contains("exists already"), "{err}");
    let list = json(&["group", "list"], target);
    assert_eq!(list[0]["name"], "billing");
    assert_eq!(list[0]["settings"]["leaseMs"], 5000);
    let table = ok(&["group", "list"], target);
    assert!(
        table.starts_with("GROUP") && table.contains("billing"),
        "{table}"
    );

    let lines = consume(
        "billing",
        &["--count", "3", "--park-type", "Poison"],
        target,
    );
    let settled: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["kind"] == "acked" || l["kind"] == "parked")
        .map(|l| (l["kind"].as_str().unwrap(), l["stream"].as_str().unwrap()))
        .collect();
    assert_eq!(
        settled,
        [
            ("acked", "order-1"),
            ("parked", "order-2"),
            ("acked", "order-1")
        ]
    );

    let info = json(&["group", "info", "billing"], target);
    assert_eq!(
        (info["parked"].as_u64(), info["inFlight"].as_u64()),
        (Some(1), Some(0))
    );
    let human = ok(&["group", "info", "billing"], target);
    assert!(human.contains("parked      1"), "{human}");
    let parked = json(&["parked", "list", "billing"], target);
    assert_eq!(parked[0]["reason"], "parked by cli");
    assert_eq!(parked[0]["event"]["eventType"], "Poison");
    let id = parked[0]["id"].as_u64().unwrap().to_string();
    let (success, _, err) = run(&["parked", "replay", "billing", "--id", "999999"], target);
    assert!(!success && err.contains("parked message"), "{err}");
    let out = ok(&["parked", "replay", "billing", "--id", &id], target);
    assert!(out.contains("queued 1"), "{out}");
    let lines = consume("billing", &["--count", "1"], target);
    let replayed = lines.iter().find(|l| l["kind"] == "acked").unwrap();
    assert_eq!(
        (replayed["stream"].as_str(), replayed["replay"].as_bool()),
        (Some("order-2"), Some(true))
    );
    assert_eq!(
        json(&["parked", "list", "billing"], target),
        Value::Array(vec![])
    );

    // Park it again (a new event), then delete it from the parked list.
    append("order-3", "Poison");
    consume(
        "billing",
        &["--count", "1", "--park-type", "Poison"],
        target,
    );
    let out = ok(&["parked", "delete", "billing"], target);
    assert!(out.contains("deleted 1"), "{out}");
    assert_eq!(
        json(&["parked", "list", "billing"], target),
        Value::Array(vec![])
    );

    ok(
        &["group", "update", "billing", "--lease-ms", "2000"],
        target,
    );
    let info = json(&["group", "info", "billing"], target);
    assert_eq!(info["settings"]["leaseMs"], 2000);
    assert_eq!(
        info["settings"]["maxRetries"], 0,
        "update keeps what it does not name"
    );
    let out = ok(&["group", "delete", "billing"], target);
    assert!(out.contains("deleted consumer group billing"), "{out}");
    assert_eq!(json(&["group", "list"], target), Value::Array(vec![]));
    let (success, _, err) = run(&["group", "info", "billing"], target);
    assert!(!success && err.contains("does not exist"), "{err}");
}

#[test]
fn group_commands_on_a_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let target = vec!["--data".to_owned(), data.display().to_string()];
    let data_dir = data.display().to_string();
    walk(&target, &|stream, event_type| {
        ok(
            &[
                "append",
                stream,
                "--type",
                event_type,
                "--data",
                "{}",
                "--data-dir",
                &data_dir,
            ],
            &[],
        );
    });
}

#[test]
fn group_commands_against_a_server() {
    let server = Server::memory(&[]);
    let target = vec!["--server".to_owned(), server.url.clone()];
    walk(&target, &|stream, event_type| {
        ok(
            &["append", stream, "--type", event_type, "--data", "{}"],
            &target,
        );
    });
}
