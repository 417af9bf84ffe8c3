//! `tidings verify` on a sound store exits 0, on a damaged one 1, naming file and offset.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::process::Command;

fn tidings(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(args)
        .output()
        .expect("the tidings binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn verify_reports_a_sound_store_and_a_damaged_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("store");
    let data = data.to_str().expect("UTF-8 path");
    let (ok, _) = tidings(&["demo", "--data", data]);
    assert!(ok, "demo on the embedded store");
    let (ok, report) = tidings(&["verify", "--data", data]);
    assert!(ok, "{report}");
    assert!(report.contains("result     ok"), "{report}");

    let seg = std::fs::read_dir(data)
        .expect("store dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    let mut bytes = std::fs::read(&seg).expect("segment");
    bytes[64 + 100] ^= 0x01; // inside the first frame
    std::fs::write(&seg, bytes).expect("write");
    let (ok, report) = tidings(&["verify", "--data", data]);
    assert!(!ok, "a damaged store must fail verify: {report}");
    assert!(report.contains("at byte 64"), "{report}");
}
