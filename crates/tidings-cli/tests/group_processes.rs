//! Consumer groups across processes: three `tidings group consume` processes share one
//! group, one of them is SIGKILLed while it holds messages, and the group still
//! acknowledges every event exactly once, hands the dead member's messages to the
//! others after its lease expires, and keeps each stream in order (pinned strategy).
//!
//! Once through `tidings serve` on the embedded store (members speak HTTP), once on
//! PostgreSQL directly (each member connects to the database).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::{BIN, Server};
/// Hang guard: how long the members may take to settle everything.
const STALL: Duration = Duration::from_secs(120);
const STREAMS: u64 = 12;
const PER_STREAM: u64 = 10;

/// A member process and every line it printed.
struct MemberProcess {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl MemberProcess {
    fn spawn(group: &str, name: &str, target: &[String]) -> Self {
        let mut child = Command::new(BIN)
            .args(["group", "consume", group, "--member", name, "--max", "4"])
            .args(["--handle-ms", "15", "--json"])
            .args(target)
            .env_remove("TIDINGS_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Self { child, lines }
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }
}

impl Drop for MemberProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tidings(args: &[&str], target: &[String]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(target)
        .env_remove("TIDINGS_TOKEN")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tidings {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn event(prefix: &str, stream: u64, n: u64) -> Value {
    json!({
        "eventId": uuid::Uuid::now_v7(),
        "eventType": "Work",
        "eventVersion": "1.0",
        "timestamp": "2026-01-01T00:00:00Z",
        "source": "group-processes-test",
        "data": { "stream": format!("{prefix}{stream}"), "n": n },
    })
}

type Key = (String, u64);

fn key(v: &Value) -> Key {
    (
        v["stream"].as_str().unwrap().to_owned(),
        v["revision"].as_u64().unwrap(),
    )
}

/// Runs three members of `group` (which `target` reaches), kills the first while it
/// holds messages, and checks what the group promises.
fn three_members_one_killed(group: &str, target: &[String]) {
    let members: Vec<MemberProcess> = (0..3)
        .map(|i| MemberProcess::spawn(group, &format!("m{i}"), target))
        .collect();
    let deadline = Instant::now() + STALL;

    // Kill member 0 once it has acknowledged some and holds fetched messages it has
    // not started to settle.
    let victim = &members[0];
    let mut killed = false;
    while !killed {
        assert!(Instant::now() < deadline, "member 0 never held messages");
        let lines = victim.lines();
        let acked = lines.iter().filter(|l| l["kind"] == "acked").count();
        let unsettled = held(&lines);
        if acked >= 5 && !unsettled.is_empty() {
            // SIGKILL: no leave, no last settle, no clean-up of any kind.
            Command::new("kill")
                .args(["-KILL", &victim.child.id().to_string()])
                .status()
                .unwrap();
            killed = true;
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut members = members;
    let _ = members[0].child.wait();
    std::thread::sleep(Duration::from_millis(100)); // the reader thread drains the pipe
    let victim_lines = members[0].lines();
    let held_at_death = held(&victim_lines);
    assert!(!held_at_death.is_empty());

    // Wait until every event is acknowledged by someone.
    let total = (STREAMS * PER_STREAM) as usize;
    loop {
        let lines = all_lines(&members);
        let settled: HashSet<Key> = lines
            .iter()
            .filter(|l| l["kind"] == "acked" || l["kind"] == "settling")
            .map(key)
            .collect();
        let acked: HashSet<Key> = lines
            .iter()
            .filter(|l| l["kind"] == "acked")
            .map(key)
            .collect();
        if acked.len() == total || (settled.len() == total && acked.len() + 4 >= total) {
            let info = group_info(group, target);
            if info["inFlight"] == 0 && info["lag"] == 0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "stalled: {} of {total} acknowledged; group {}",
            acked.len(),
            group_info(group, target)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let info = group_info(group, target);
    assert_eq!(info["parked"], 0, "nothing parked: {info}");
    for m in &mut members[1..] {
        let _ = m.child.kill();
        let _ = m.child.wait();
    }
    std::thread::sleep(Duration::from_millis(100));
    let lines = all_lines(&members);

    // Exactly once: no event acknowledged twice, and no settle refused as stale.
    let mut acks: HashMap<Key, usize> = HashMap::new();
    for l in lines.iter().filter(|l| l["kind"] == "acked") {
        *acks.entry(key(l)).or_default() += 1;
    }
    let twice: Vec<_> = acks.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "acknowledged more than once: {twice:?}");
    assert!(
        !lines.iter().any(|l| l["kind"] == "stale"),
        "a live member's settle was refused as stale"
    );
    // Every event acknowledged: by a live member, or by the victim (whose last
    // settle may have reached the group before the kill, unprinted).
    let victim_settling: HashSet<Key> = victim_lines
        .iter()
        .filter(|l| l["kind"] == "settling")
        .map(key)
        .collect();
    for s in 0..STREAMS {
        for r in 0..PER_STREAM {
            let k = (stream_name(&lines, s), r);
            assert!(
                acks.contains_key(&k) || victim_settling.contains(&k),
                "{k:?} was never acknowledged"
            );
        }
    }

    // The victim's held messages went to the others after its lease, with a higher
    // attempt.
    for k in &held_at_death {
        let redelivered = lines.iter().any(|l| {
            l["kind"] == "acked"
                && key(l) == *k
                && l["member"] != victim_lines[0]["member"]
                && l["attempt"].as_u64().unwrap() >= 2
        });
        assert!(
            redelivered,
            "{k:?}, held by the killed member, was not redelivered"
        );
    }

    eprintln!(
        "{group}: {} acknowledgements by 3 members; member 0 killed holding {:?}, redelivered to the others",
        acks.len(),
        held_at_death
    );

    // Per-stream order: revision r+1 was handed out only after r was being settled.
    let mut first_settle: BTreeMap<Key, u64> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["kind"] == "settling") {
        let t = l["at"].as_u64().unwrap();
        first_settle
            .entry(key(l))
            .and_modify(|v| *v = (*v).min(t))
            .or_insert(t);
    }
    for l in lines.iter().filter(|l| l["kind"] == "received") {
        let (stream, r) = key(l);
        if r == 0 {
            continue;
        }
        let before = first_settle
            .get(&(stream.clone(), r - 1))
            .unwrap_or_else(|| panic!("{stream}@{} never settled", r - 1));
        assert!(
            l["at"].as_u64().unwrap() >= *before,
            "{stream}@{r} was handed out before {stream}@{} was settled",
            r - 1
        );
    }
}

fn all_lines(members: &[MemberProcess]) -> Vec<Value> {
    members.iter().flat_map(MemberProcess::lines).collect()
}

/// The messages a member fetched and had not begun to settle, from its lines.
fn held(lines: &[Value]) -> Vec<Key> {
    let mut out: Vec<Key> = Vec::new();
    for l in lines {
        match l["kind"].as_str() {
            Some("received") => out.push(key(l)),
            Some("settling" | "acked" | "parked" | "stale") => out.retain(|k| *k != key(l)),
            _ => {}
        }
    }
    out
}

fn stream_name(lines: &[Value], s: u64) -> String {
    let suffix = format!("-{s}");
    lines
        .iter()
        .filter_map(|l| l["stream"].as_str())
        .find(|n| n.ends_with(&suffix))
        .unwrap_or_else(|| panic!("no line names stream {s}"))
        .to_owned()
}

fn group_info(group: &str, target: &[String]) -> Value {
    serde_json::from_str(&tidings(&["group", "info", group, "--json"], target)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_through_the_server_share_a_group_across_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::data(dir.path());
    let target = vec!["--server".to_owned(), server.url.clone()];
    let prefix = "job-";
    let http = reqwest::Client::new();
    for s in 0..STREAMS {
        let events: Vec<Value> = (0..PER_STREAM).map(|n| event(prefix, s, n)).collect();
        let r = http
            .post(format!("{}/streams/{prefix}{s}", server.url))
            .json(&events)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "append: {}", r.status());
    }
    let target2 = target.clone();
    tokio::task::spawn_blocking(move || {
        tidings(
            &["group", "create", "workers", "--lease-ms", "1000"],
            &target2,
        );
        three_members_one_killed("workers", &target2);
    })
    .await
    .unwrap();
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_on_postgres_share_a_group_across_a_sigkill() {
    let test = "three_members_on_postgres_share_a_group_across_a_sigkill";
    let Some(url) = tidings_testkit::services::service_url(test, "TIDINGS_POSTGRES_URL") else {
        return;
    };
    // The CLI uses the store's default schema; a unique stream prefix and group name
    // keep this run apart from others.
    let run = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("job{}-", &run[run.len() - 10..]);
    let group = format!("workers-{}", &run[run.len() - 10..]);
    let store = tidings_postgres::PgStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{test}: {e}"));
    for s in 0..STREAMS {
        let events: Vec<tidings::Event> = (0..PER_STREAM)
            .map(|n| serde_json::from_value(event(&prefix, s, n)).unwrap())
            .collect();
        let stream = tidings::StreamId::new(&format!("{prefix}{s}")).unwrap();
        tidings::EventAppender::append(&store, &stream, tidings::ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    store.close().await;
    let target = vec!["--store".to_owned(), url];
    tokio::task::spawn_blocking(move || {
        tidings(
            &[
                "group",
                "create",
                &group,
                "--lease-ms",
                "1000",
                "--stream-prefix",
                &prefix,
            ],
            &target,
        );
        three_members_one_killed(&group, &target);
        tidings(&["group", "delete", &group], &target);
    })
    .await
    .unwrap();
}
