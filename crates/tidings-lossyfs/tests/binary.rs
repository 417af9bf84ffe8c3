//! The `tidings-lossyfs` binary: mount, a write never synced, `cut`, `restore` — the
//! file is gone, the synced one is there — and `quit` unmounts.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tidings-lossyfs");

#[test]
fn the_binary_cuts_and_restores_on_command() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let sock = tmp.path().join("control.sock");
    let mut child = Command::new(BIN)
        .arg(&mnt)
        .arg("--control")
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if !line.contains("mounted on") {
        let out = child.wait_with_output().unwrap();
        let why = String::from_utf8_lossy(&out.stderr).into_owned();
        tidings_testkit::services::skip_or_fail(
            "tidings-lossyfs binary",
            &format!("FUSE is unavailable here: {why}"),
        );
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        match UnixStream::connect(&sock) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    let mut replies = BufReader::new(conn.try_clone().unwrap()).lines();
    let mut send = |cmd: &str| {
        writeln!(&conn, "{cmd}").unwrap();
        replies.next().unwrap().unwrap()
    };

    let mut kept = std::fs::File::create(mnt.join("kept")).unwrap();
    kept.write_all(b"synced").unwrap();
    kept.sync_all().unwrap();
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    std::fs::write(mnt.join("lost"), b"never synced").unwrap();
    drop(kept);

    assert_eq!(send("cut"), "ok the power is off");
    assert!(
        std::fs::read_dir(&mnt).is_err(),
        "a dead disk answers nothing"
    );
    let r = send("restore");
    assert!(r.starts_with("ok CutReport"), "{r}");
    assert_eq!(std::fs::read(mnt.join("kept")).unwrap(), b"synced");
    assert!(!mnt.join("lost").exists());
    assert!(send("stats").starts_with("ok Stats"));
    assert!(send("bogus").starts_with("error unknown command"));
    assert_eq!(send("quit"), "ok unmounted");
    assert!(child.wait().unwrap().success());
    assert!(
        std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "unmounted"
    );
}
