//! `tidings projection` on a real data directory: rebuild swaps versions and retires the
//! old one, show agrees across the two built-in read models, status reports the
//! checkpoint, and a bad name changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::process::Command;

use serde_json::Value;

fn tidings(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .output()
        .expect("the tidings binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(args: &[&str]) -> Value {
    let (ok, out, err) = tidings(args);
    assert!(ok, "tidings {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn rebuild_swaps_versions_and_show_and_status_follow() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("store");
    let data = data.to_str().expect("UTF-8 path");
    let (ok, _, err) = tidings(&["demo", "--data", data]);
    assert!(ok, "demo on the embedded store: {err}");

    let (ok, out, err) = tidings(&["projection", "rebuild", "event-types", "--data", data]);
    assert!(ok, "{err}");
    assert!(
        err.contains(
            "event-types version 2: building from the start of the log while version 1 stays live"
        ),
        "{err}"
    );
    assert!(
        out.starts_with("event-types rebuilt: v2 is live (was v1), "),
        "{out}"
    );
    assert!(out.trim_end().ends_with("; retired v1"), "{out}");

    let report = json(&[
        "projection",
        "rebuild",
        "event-types",
        "--data",
        data,
        "--json",
    ]);
    assert_eq!(report["fromVersion"], 2);
    assert_eq!(report["toVersion"], 3);
    assert_eq!(report["retired"], serde_json::json!([2]));
    assert_eq!(report["resumed"], false);

    let types = json(&[
        "projection",
        "show",
        "event-types",
        "--data",
        data,
        "--json",
    ]);
    let categories = json(&["projection", "show", "categories", "--data", data, "--json"]);
    assert_eq!(types["version"], 3);
    assert_eq!(categories["version"], 1, "categories was never rebuilt");
    let total = |model: &Value| -> u64 {
        model
            .as_object()
            .unwrap()
            .values()
            .map(|c| c["events"].as_u64().unwrap())
            .sum()
    };
    let events = total(&types["model"]);
    assert!(events > 0, "{types}");
    assert_eq!(events, total(&categories["model"]));
    assert_eq!(
        types["model"]["OrderCreated"]["events"], categories["model"]["order"]["streams"],
        "one OrderCreated per order stream"
    );

    let status = json(&[
        "projection",
        "status",
        "event-types",
        "--data",
        data,
        "--json",
    ]);
    let status = &status[0];
    assert_eq!(status["versions"]["live"], 3);
    assert_eq!(status["versions"]["retired"], serde_json::json!([1, 2]));
    assert_eq!(status["behind"], 0);
    assert!(status["checkpoint"].as_u64().unwrap() >= events);

    let (ok, _, err) = tidings(&["projection", "rebuild", "orders", "--data", data]);
    assert!(!ok);
    assert!(
        err.contains("no projection \"orders\"; the built-in ones are event-types, categories"),
        "{err}"
    );
    let list = json(&["projection", "list", "--data", data, "--json"]);
    assert_eq!(list[0]["name"], "event-types");
    assert_eq!(list[0]["live"], 3);
    assert_eq!(list[1]["live"], 1);
}
