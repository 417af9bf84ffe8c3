//! Power cuts of the real `tidings serve` on a file system that forgets what was not
//! synced (`tidings-lossyfs`, decision record 0016).
//!
//! Each round: HTTP clients append (single events and batches, some with an expected
//! version) to a few streams and record every acknowledged append; at a random moment
//! the power is cut (nothing more becomes durable, every request fails), the server is
//! killed with SIGKILL, the disk comes back with exactly its durable state and a new
//! server opens the same directory. Then, over HTTP: the server started; every
//! acknowledged event is there once, at its acknowledged revision and position; every
//! batch is all there or not at all; no stream has a revision gap; no event appears that
//! no client sent. Some cuts fall while the server is still opening (recovery writes too).
//!
//! `TIDINGS_SEED` replays a run's choices (the cut moments depend on timing as well),
//! `TIDINGS_SOAK=N` multiplies the rounds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tidings_lossyfs::{CutReport, LossyDisk, Mount, Op};
use tidings_testkit::seed::{TestRng, rounds, seed};
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_tidings");
/// Small segments and frequent index snapshots, so that cuts land in rolls and
/// snapshots, not only in appends.
const SEGMENT_SIZE: &str = "65536";
const SNAPSHOT_EVERY: &str = "150";
const CLIENTS: u64 = 4;
const STREAMS_PER_EPOCH: u64 = 3;
/// Rounds appending to the same streams; older streams are only checked for their
/// length each round and read in full at the end, so long soaks stay linear.
const EPOCH_ROUNDS: u32 = 10;

#[test]
fn acknowledged_appends_survive_power_cuts() {
    run("power_cut::drop_all_unsynced", rounds(50), false);
}

#[test]
fn acknowledged_appends_survive_power_cuts_that_keep_some_unsynced_writes() {
    run("power_cut::torn_unsynced", rounds(20), true);
}

/// The `tidings serve` process, its URL once it listens, and what it printed on stderr.
struct Server {
    child: Child,
    ready: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn spawn(data: &Path) -> Self {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(["--segment-size", SEGMENT_SIZE])
            .args(["--index-snapshot-every", SNAPSHOT_EVERY])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, ready) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on ").nth(1)
                    && let Some(url) = rest.split_whitespace().next()
                {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self {
            child,
            ready,
            stderr,
        }
    }

    /// The server's URL, or what it said when it failed to start.
    fn wait_ready(&mut self) -> Result<String, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(url) = self.ready.recv_timeout(Duration::from_millis(20)) {
                return Ok(url);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50)); // let stderr drain
                return Err(format!(
                    "the server exited with {status} before listening; it said:\n{}",
                    self.stderr.lock().unwrap()
                ));
            }
        }
        Err(format!(
            "the server did not listen within 60 s; it said:\n{}",
            self.stderr.lock().unwrap()
        ))
    }

    fn kill(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    fn said(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One append a client sent: its stream and event ids, in order.
struct Attempt {
    stream: String,
    ids: Vec<Uuid>,
}

/// An acknowledged (201) append.
struct Ack {
    attempt: usize,
    first_revision: u64,
    first_position: u64,
}

#[derive(Default)]
struct Record {
    attempts: Vec<Attempt>,
    /// Event id → (attempt, index in the batch).
    ids: HashMap<Uuid, (usize, usize)>,
    acks: Vec<Ack>,
    /// What the clients believe each stream's version is (None: no stream or unknown).
    versions: HashMap<String, Option<u64>>,
    rejected: u64,
    conflicts: u64,
}

impl Record {
    fn attempt(&mut self, stream: &str, ids: Vec<Uuid>) -> usize {
        let a = self.attempts.len();
        for (i, id) in ids.iter().enumerate() {
            self.ids.insert(*id, (a, i));
        }
        self.attempts.push(Attempt {
            stream: stream.to_owned(),
            ids,
        });
        a
    }
}

fn stream_name(epoch: u32, k: u64) -> String {
    format!("power-{epoch}-{k}")
}

/// Appends until `stop` or until the server is gone.
async fn client(
    http: reqwest::Client,
    url: String,
    streams: Vec<String>,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    mut rng: TestRng,
) {
    while !stop.load(Ordering::SeqCst) {
        let stream = &streams[rng.below(streams.len() as u64) as usize];
        let n = if rng.chance(50) {
            1
        } else {
            2 + rng.below(6) as usize
        };
        let ids: Vec<Uuid> = (0..n)
            .map(|_| Uuid::from_u128(u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())))
            .collect();
        let (attempt, expected) = {
            let mut r = record.lock().unwrap();
            let expected = if rng.chance(30) {
                Some(match r.versions.get(stream).copied().flatten() {
                    Some(v) => v.to_string(),
                    None if !r.versions.contains_key(stream) => "no-stream".to_owned(),
                    None => "any".to_owned(),
                })
            } else {
                None
            };
            (r.attempt(stream, ids.clone()), expected)
        };
        let events: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({
                    "eventId": id,
                    "eventType": "PowerCutTested",
                    "data": {"attempt": attempt, "index": i, "of": n, "pad": "x".repeat(rng.below(300) as usize)},
                })
            })
            .collect();
        let body = if n == 1 && rng.chance(50) {
            events[0].clone()
        } else {
            Value::Array(events)
        };
        let mut req = http.post(format!("{url}/streams/{stream}")).json(&body);
        if let Some(e) = &expected {
            req = req.header("expected-version", e);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(_) => return, // the server is gone
        };
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let refused = {
            let mut r = record.lock().unwrap();
            match status {
                201 => {
                    r.acks.push(Ack {
                        attempt,
                        first_revision: body["firstRevision"].as_u64().unwrap(),
                        first_position: body["firstPosition"].as_u64().unwrap(),
                    });
                    r.versions
                        .insert(stream.clone(), body["nextExpectedVersion"].as_u64());
                    false
                }
                409 => {
                    r.conflicts += 1;
                    r.versions.insert(stream.clone(), None);
                    false
                }
                _ => {
                    r.rejected += 1;
                    true
                }
            }
        };
        if refused {
            // After the cut the store stops (its syncs fail): 5xx until the kill.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Every event of `stream`, in revision order.
async fn read_stream(
    http: &reqwest::Client,
    url: &str,
    stream: &str,
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    loop {
        let resp = http
            .get(format!(
                "{url}/streams/{stream}?from={}&limit=1000",
                out.len()
            ))
            .send()
            .await
            .map_err(|e| format!("reading {stream}: {e}"))?;
        if resp.status().as_u16() == 404 {
            return Ok(out);
        }
        if !resp.status().is_success() {
            return Err(format!("reading {stream}: {}", resp.status()));
        }
        let page: Value = resp.json().await.map_err(|e| e.to_string())?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let done = page["next"].is_null() || events.is_empty();
        out.extend(events);
        if done {
            return Ok(out);
        }
    }
}

/// Checks `streams` in full against the record; returns each stream's version.
async fn check_streams(
    http: &reqwest::Client,
    url: &str,
    streams: &[String],
    record: &Record,
) -> Result<HashMap<String, Option<u64>>, String> {
    let mut found: HashMap<usize, (u64, u64)> = HashMap::new();
    let mut seen: HashSet<Uuid> = HashSet::new();
    let mut versions = HashMap::new();
    for stream in streams {
        let events = read_stream(http, url, stream).await?;
        let mut i = 0;
        while i < events.len() {
            let e = &events[i];
            let at = |e: &Value, f: &str| e[f].as_u64().unwrap_or(u64::MAX);
            if at(e, "revision") != i as u64 {
                return Err(format!(
                    "{stream}: revision gap: event {i} has revision {}",
                    e["revision"]
                ));
            }
            let id: Uuid = e["eventId"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or("no event id")?;
            let Some(&(attempt, index)) = record.ids.get(&id) else {
                return Err(format!("{stream}@{i}: event {id} was never sent"));
            };
            let a = &record.attempts[attempt];
            if a.stream != *stream {
                return Err(format!("{stream}@{i}: event {id} was sent to {}", a.stream));
            }
            if index != 0 {
                return Err(format!(
                    "{stream}@{i}: event {id} is #{index} of a batch of {} whose first event is not before it",
                    a.ids.len()
                ));
            }
            let first_position = at(e, "position");
            for (k, want) in a.ids.iter().enumerate() {
                let Some(got) = events.get(i + k) else {
                    return Err(format!(
                        "{stream}@{i}: a batch of {} ends after {k} events (partial batch)",
                        a.ids.len()
                    ));
                };
                let got_id = got["eventId"].as_str().unwrap_or("");
                if got_id != want.to_string()
                    || at(got, "revision") != (i + k) as u64
                    || at(got, "position") != first_position + k as u64
                {
                    return Err(format!(
                        "{stream}@{}: expected event {want} (#{k} of attempt {attempt}) at position {}, found {got}",
                        i + k,
                        first_position + k as u64
                    ));
                }
                if !seen.insert(*want) {
                    return Err(format!("{stream}: event {want} appears twice"));
                }
            }
            found.insert(attempt, (i as u64, first_position));
            i += a.ids.len();
        }
        versions.insert(
            stream.clone(),
            events.len().checked_sub(1).map(|v| v as u64),
        );
    }
    let wanted: HashSet<&String> = streams.iter().collect();
    for ack in &record.acks {
        let a = &record.attempts[ack.attempt];
        if !wanted.contains(&a.stream) {
            continue;
        }
        match found.get(&ack.attempt) {
            None => {
                return Err(format!(
                    "LOST: the acknowledged append of {} events to {} at revision {} (position {}) is gone; first id {}",
                    a.ids.len(),
                    a.stream,
                    ack.first_revision,
                    ack.first_position,
                    a.ids[0]
                ));
            }
            Some(&(rev, pos)) if (rev, pos) != (ack.first_revision, ack.first_position) => {
                return Err(format!(
                    "MOVED: the acknowledged append to {} at revision {} position {} is now at revision {rev} position {pos}",
                    a.stream, ack.first_revision, ack.first_position
                ));
            }
            Some(_) => {}
        }
    }
    Ok(versions)
}

/// Totals printed at the end of a run.
#[derive(Default, Debug)]
struct Totals {
    cuts: u32,
    cuts_while_opening: u32,
    acks: usize,
    acked_events: usize,
    torn_tails_reported: usize,
    lost: CutReport,
    /// Cuts made by a request trigger, by kind (the others came from the clock).
    fired: std::collections::BTreeMap<String, u32>,
}

fn add(t: &mut CutReport, r: CutReport) {
    t.nodes_lost += r.nodes_lost;
    t.files_reverted += r.files_reverted;
    t.dirs_reverted += r.dirs_reverted;
    t.torn_sectors_kept += r.torn_sectors_kept;
    t.torn_dirs_kept += r.torn_dirs_kept;
}

/// Waits up to `limit` for an armed cut to happen; true if it did.
fn wait_for_cut(disk: &LossyDisk, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if !disk.powered() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

fn unmount(m: &mut Mount) {
    let mut tries = 0;
    while let Err(e) = m.unmount() {
        tries += 1;
        assert!(tries < 200, "{e}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run(test: &str, rounds: u32, torn: bool) {
    let seed = seed(test);
    let mut rng = TestRng::new(seed);
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let disk = if torn {
        LossyDisk::with_torn_writes(rng.next_u64())
    } else {
        LossyDisk::new()
    };
    let mut mount = match disk.mount(&mnt) {
        Ok(m) => m,
        Err(e) => {
            tidings_testkit::services::skip_or_fail(
                test,
                &format!("FUSE is unavailable here: {e}"),
            );
            return;
        }
    };
    let data = mnt.join("data");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let record = Arc::new(Mutex::new(Record::default()));
    let mut finished: HashMap<String, Option<u64>> = HashMap::new();
    let mut totals = Totals::default();
    let started = Instant::now();
    let fail = |round: u32, msg: String, said: &str| -> ! {
        panic!(
            "{test}: round {round}: {msg}\nserver stderr:\n{said}\nreplay with TIDINGS_SEED={seed}"
        )
    };

    for round in 0..rounds {
        let epoch = round / EPOCH_ROUNDS;
        let streams: Vec<String> = (0..STREAMS_PER_EPOCH)
            .map(|k| stream_name(epoch, k))
            .collect();
        let cut_while_opening = round > 0 && rng.chance(10);
        if cut_while_opening {
            // Opening writes too: a torn tail's truncation, the index snapshot, the
            // removal of a prepared segment, the first segment.
            disk.cut_power_at(Op::AnyChange, 1 + rng.below(12));
        }
        let mut server = Server::spawn(&data);
        if cut_while_opening {
            wait_for_cut(&disk, Duration::from_millis(300));
            totals.cuts_while_opening += 1;
        } else {
            let url = server
                .wait_ready()
                .unwrap_or_else(|e| fail(round, format!("the store did not open: {e}"), ""));
            totals.torn_tails_reported += server.said().matches("torn tail").count();
            // What the previous cut left must be intact.
            let versions = rt
                .block_on(check_streams(
                    &http,
                    &url,
                    &streams,
                    &record.lock().unwrap(),
                ))
                .unwrap_or_else(|e| fail(round, e, &server.said()));
            for (stream, &want) in &finished {
                let got = rt
                    .block_on(read_version(&http, &url, stream))
                    .unwrap_or_else(|e| fail(round, e, &server.said()));
                if got != want {
                    fail(
                        round,
                        format!("{stream} had version {want:?}, now {got:?}"),
                        &server.said(),
                    );
                }
            }
            record.lock().unwrap().versions = versions
                .into_iter()
                .filter_map(|(s, v)| v.map(|v| (s, Some(v))))
                .collect();
            if round > 0 && round % EPOCH_ROUNDS == 0 {
                let old: Vec<String> = (0..STREAMS_PER_EPOCH)
                    .map(|k| stream_name(epoch - 1, k))
                    .collect();
                let v = rt
                    .block_on(check_streams(&http, &url, &old, &record.lock().unwrap()))
                    .unwrap_or_else(|e| fail(round, e, &server.said()));
                finished.extend(v);
            }

            let stop = Arc::new(AtomicBool::new(false));
            let clients: Vec<_> = (0..CLIENTS)
                .map(|_| {
                    rt.spawn(client(
                        http.clone(),
                        url.clone(),
                        streams.clone(),
                        record.clone(),
                        stop.clone(),
                        TestRng::new(rng.next_u64()),
                    ))
                })
                .collect();
            // The cut comes with a chosen request, so it lands inside the store's I/O
            // (between a group's write and its sync, inside a roll or a snapshot)
            // rather than, most often, while the store waits for the network.
            let (op, nth) = match rng.below(20) {
                0..=7 => (Op::AnyChange, 1 + rng.below(600)),
                8..=10 => (Op::SyncFile, 1 + rng.below(300)),
                11..=13 => (Op::Write, 1 + rng.below(300)),
                14..=15 => (Op::SyncDir, 1 + rng.below(3)),
                16..=17 => (Op::Rename, 1 + rng.below(3)),
                _ => (Op::Create, 1 + rng.below(3)),
            };
            disk.cut_power_at(op, nth);
            if wait_for_cut(&disk, Duration::from_millis(1500)) {
                *totals.fired.entry(format!("{op:?}")).or_default() += 1;
            }
            disk.cut_power();
            server.kill();
            stop.store(true, Ordering::SeqCst);
            for c in clients {
                rt.block_on(c).unwrap();
            }
        }
        disk.cut_power();
        server.kill();
        totals.cuts += 1;
        unmount(&mut mount);
        add(&mut totals.lost, disk.power_on());
        mount = disk.mount(&mnt).unwrap();
    }

    // The last cut's aftermath, and every stream of the run in full.
    let mut server = Server::spawn(&data);
    let url = server
        .wait_ready()
        .unwrap_or_else(|e| fail(rounds, format!("the store did not open: {e}"), ""));
    totals.torn_tails_reported += server.said().matches("torn tail").count();
    let all: Vec<String> = (0..=(rounds.saturating_sub(1) / EPOCH_ROUNDS))
        .flat_map(|e| (0..STREAMS_PER_EPOCH).map(move |k| stream_name(e, k)))
        .collect();
    rt.block_on(check_streams(&http, &url, &all, &record.lock().unwrap()))
        .unwrap_or_else(|e| fail(rounds, e, &server.said()));
    server.kill();
    // The cuts had rolls and index snapshots to fall into.
    let names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let segments = names.iter().filter(|n| n.ends_with(".seg")).count();
    assert!(segments > 2, "the log should have rolled: {names:?}");
    assert!(names.iter().any(|n| n == "index.ckpt"), "{names:?}");
    unmount(&mut mount);

    let r = record.lock().unwrap();
    totals.acks = r.acks.len();
    totals.acked_events = r.acks.iter().map(|a| r.attempts[a.attempt].ids.len()).sum();
    eprintln!(
        "{test}: {} power cuts ({} while the store was opening) in {:.1} s; {segments} segments; \
         {} acknowledged appends \
         ({} events) all found; {} conflicts, {} refused; {} torn tails reported; cuts by request \
         {:?}; the disk lost {:?}; {:?}",
        totals.cuts,
        totals.cuts_while_opening,
        started.elapsed().as_secs_f64(),
        totals.acks,
        totals.acked_events,
        r.conflicts,
        r.rejected,
        totals.torn_tails_reported,
        totals.fired,
        totals.lost,
        disk.stats(),
    );
    assert!(totals.acks > 0, "no append was acknowledged at all");
}

/// A stream's version (`None`: no such stream).
async fn read_version(
    http: &reqwest::Client,
    url: &str,
    stream: &str,
) -> Result<Option<u64>, String> {
    let resp = http
        .get(format!("{url}/streams/{stream}?limit=1"))
        .send()
        .await
        .map_err(|e| format!("reading {stream}: {e}"))?;
    if resp.status().as_u16() == 404 {
        return Ok(None);
    }
    let page: Value = resp.json().await.map_err(|e| e.to_string())?;
    Ok(page["version"].as_u64())
}
