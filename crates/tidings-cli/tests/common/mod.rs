//! What the CLI's integration tests share: the binary, and a `tidings serve` child
//! process on a free loopback port that a failed test does not leave running.
#![allow(dead_code)] // each test file uses part of it
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

/// The `tidings` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tidings");

/// A running `tidings serve`.
pub struct Server {
    pub child: Child,
    /// Its base URL, read from the line it prints when it listens.
    pub url: String,
}

impl Server {
    /// A server on the in-memory store, with `extra` arguments.
    pub fn memory(extra: &[&str]) -> Self {
        let mut args = vec!["--store", "memory"];
        args.extend_from_slice(extra);
        Self::start_on(&args)
    }

    /// A server on the embedded store in `data`.
    pub fn data(data: &Path) -> Self {
        Self::start_on(&["--data", data.to_str().unwrap()])
    }

    /// A server with only `--listen` set; `args` choose the store and the rest. The
    /// environment's token is removed, so only `args` decide authentication.
    pub fn start_on(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("TIDINGS_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let url = line
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        std::thread::spawn(move || for _ in out.lines() {});
        Self { child, url }
    }

    /// Stops the server with SIGTERM and answers how it exited.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    /// A failed test must not leave its server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
