//! The crash test: a real child process appends concurrently (several writers, mixed
//! batch sizes) and reports each acknowledged append on its stdout; the test SIGKILLs it
//! at a random moment, reopens the store and checks that every acknowledged event is
//! there exactly once with its revision and position, that no part of an unacknowledged
//! batch is visible, and that the global order has no gap. Over several rounds on the
//! same directory, so each round also recovers what the previous kill left.
//!
//! The child is this same test binary, re-run with `TIDINGS_CRASH_CHILD` set.
//! `TIDINGS_SEED` replays a run; `TIDINGS_SOAK=<factor>` multiplies the rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tidings::{Enricher, EventAppender, EventReader, ExpectedVersion, NewEvent, ReadAll, StreamId};
use tidings_log::LogStore;
use tidings_testkit::seed::{TestRng, rounds, seed};
use uuid::Uuid;

const CHILD_DIR: &str = "TIDINGS_CRASH_CHILD";
const CHILD_ROUND: &str = "TIDINGS_CRASH_ROUND";

/// The child's body; a no-op unless `TIDINGS_CRASH_CHILD` names a directory.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = LogStore::builder(&dir)
            .segment_size(256 << 10)
            .index_snapshot_every(2_000)
            .open()
            .unwrap();
        let enricher = Enricher::new("crash-child");
        let mut tasks = Vec::new();
        for w in 0..4u64 {
            let store = store.clone();
            let enricher = enricher.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = TestRng::new(round * 1000 + w);
                let mut versions: HashMap<String, Option<u64>> = HashMap::new();
                for seq in 0u64.. {
                    let name = format!("w{w}-{}", rng.below(4));
                    let stream = StreamId::new(&name).unwrap();
                    let version = match versions.get(&name) {
                        Some(v) => *v,
                        None => store.stream_version(&stream).await.unwrap(),
                    };
                    let n = if rng.chance(10) {
                        20 + rng.below(30)
                    } else {
                        1 + rng.below(5)
                    } as usize;
                    let batch = format!("{round}-{w}-{seq}");
                    let events: Vec<_> = (0..n)
                        .map(|_| {
                            enricher
                                .enrich(
                                    NewEvent::new("Crashed", serde_json::json!({"batch": batch}))
                                        .with_meta("batch", batch.clone())
                                        .with_meta("n", n.to_string()),
                                )
                                .unwrap()
                        })
                        .collect();
                    let ids: Vec<String> = events.iter().map(|e| e.event_id.to_string()).collect();
                    let expected =
                        version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
                    let r = store.append(&stream, expected, events).await.unwrap();
                    versions.insert(name.clone(), Some(r.next_expected_version));
                    let mut out = std::io::stdout().lock();
                    writeln!(
                        out,
                        "ack {name} {} {} {}",
                        r.first_position,
                        r.first_revision,
                        ids.join(",")
                    )
                    .unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

struct Ack {
    stream: String,
    first_position: u64,
    first_revision: u64,
    ids: Vec<Uuid>,
}

fn parse(line: &str) -> Option<Ack> {
    let mut p = line.strip_prefix("ack ")?.split(' ');
    Some(Ack {
        stream: p.next()?.to_owned(),
        first_position: p.next()?.parse().ok()?,
        first_revision: p.next()?.parse().ok()?,
        ids: p
            .next()?
            .split(',')
            .map(|s| s.parse())
            .collect::<Result<_, _>>()
            .ok()?,
    })
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_append() {
    if std::env::var(CHILD_DIR).is_ok() {
        return;
    }
    let seed = seed("sigkill_at_random_moments");
    let mut rng = TestRng::new(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut acked: Vec<Ack> = Vec::new();
    let rounds = rounds(8);
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR, dir.path())
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| parse(&l))
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
        child.kill().unwrap();
        child.wait().unwrap();
        let new = lines.join().unwrap();
        eprintln!(
            "round {round}: {} appends acknowledged before SIGKILL",
            new.len()
        );
        acked.extend(new);

        let store = LogStore::builder(dir.path())
            .segment_size(256 << 10)
            .open()
            .unwrap();
        if let Some(t) = &store.recovery_report().torn_tail {
            eprintln!(
                "round {round}: torn tail at {}:{}",
                t.file.display(),
                t.offset
            );
        }
        let all = rt
            .block_on(store.read_all(ReadAll::new(0, usize::MAX)))
            .unwrap();
        let mut by_id = HashMap::new();
        for (i, e) in all.iter().enumerate() {
            assert_eq!(
                e.position, i as u64,
                "round {round}: the global order has a gap at {i}"
            );
            assert!(
                by_id.insert(e.event_id, e).is_none(),
                "round {round}: {} appears twice",
                e.event_id
            );
        }
        for a in &acked {
            for (k, id) in a.ids.iter().enumerate() {
                let e = by_id
                    .get(id)
                    .unwrap_or_else(|| panic!("round {round}: acknowledged {id} is missing"));
                assert_eq!(
                    e.position,
                    a.first_position + k as u64,
                    "round {round}: position of {id}"
                );
                assert_eq!(
                    e.revision,
                    a.first_revision + k as u64,
                    "round {round}: revision of {id}"
                );
                assert_eq!(e.stream.as_str(), a.stream);
            }
        }
        let mut batches: HashMap<&str, Vec<u64>> = HashMap::new();
        for e in &all {
            batches
                .entry(&e.metadata.extra["batch"])
                .or_default()
                .push(e.position);
        }
        for e in &all {
            let b = &e.metadata.extra["batch"];
            let n: usize = e.metadata.extra["n"].parse().unwrap();
            assert_eq!(
                batches[b.as_str()].len(),
                n,
                "round {round}: batch {b} is partly visible"
            );
        }
        drop(store);
    }
    let report = tidings_log::verify(dir.path()).unwrap();
    assert!(report.is_ok(), "{report:?}");
}
