//! A property test of the store against a plain `Vec` model.
//!
//! Random sequences of appends (every kind of expected version, idempotent repeats) and
//! reads (streams both ways, the global log with filters, versions) run against a real
//! store and against the model; every answer must agree. Backends call [`check_model`]
//! from a plain `#[test]` (it builds its own runtime). The seed is printed and replayed
//! from `TIDINGS_SEED`; `TIDINGS_SOAK` multiplies the cases.

use std::future::Future;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::json;

use super::conformance::{event, stream};
use super::seed;
use tidings_core::event::Event;
use tidings_core::store::{
    AppendResult, Direction, EventStore, ExpectedVersion, Filter, ReadAll, ReadStream, StoreError,
};

const STREAMS: [&str; 3] = ["m-0", "m-1", "n-0"];
const CATEGORIES: [&str; 3] = ["m", "n", "x"];
const TYPES: [&str; 2] = ["A", "B"];

/// One step of a model run.
#[derive(Debug, Clone)]
pub enum Op {
    /// Append `count` new events of type `ty` to `stream` with an expected version.
    Append {
        /// Index into the model's stream names.
        stream: usize,
        /// Which expected version to send.
        expected: Expect,
        /// Number of events.
        count: usize,
        /// Index into the model's event types.
        ty: usize,
    },
    /// Repeat the last successful append exactly (same ids, same expected version).
    Repeat,
    /// Read one stream.
    ReadStream {
        /// Stream index.
        stream: usize,
        /// Backward instead of forward.
        backward: bool,
        /// Start revision.
        from: Option<u64>,
        /// Limit.
        limit: usize,
    },
    /// Read the global log.
    ReadAll {
        /// Start position.
        from: u64,
        /// Limit.
        limit: usize,
        /// Only this type index.
        ty: Option<usize>,
        /// Only streams starting with "m-".
        prefix: bool,
        /// Only streams of this category index ("m", "n", or "x", which has none).
        category: Option<usize>,
    },
}

/// The expected version an append sends.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// `Any`.
    Any,
    /// `NoStream`.
    NoStream,
    /// `StreamExists`.
    StreamExists,
    /// `Exact` of the model's current version (succeeds when the stream exists).
    Current,
    /// `Exact(n)` for a random `n` (usually wrong).
    Exact(u64),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let expect = prop_oneof![
        Just(Expect::Any),
        Just(Expect::NoStream),
        Just(Expect::StreamExists),
        Just(Expect::Current),
        (0u64..6).prop_map(Expect::Exact),
    ];
    prop_oneof![
        4 => (0..STREAMS.len(), expect, 1usize..4, 0..TYPES.len())
            .prop_map(|(stream, expected, count, ty)| Op::Append { stream, expected, count, ty }),
        1 => Just(Op::Repeat),
        2 => (0..STREAMS.len(), any::<bool>(), prop::option::of(0u64..8), 0usize..6)
            .prop_map(|(stream, backward, from, limit)| Op::ReadStream { stream, backward, from, limit }),
        2 => (0u64..24, 0usize..12, prop::option::of(0..TYPES.len()), any::<bool>(), prop::option::of(0..CATEGORIES.len()))
            .prop_map(|(from, limit, ty, prefix, category)| Op::ReadAll { from, limit, ty, prefix, category }),
    ]
}

#[derive(Debug, Clone)]
struct ModelEvent {
    stream: usize,
    revision: u64,
    event: Event,
}

#[derive(Default)]
struct Model {
    log: Vec<ModelEvent>,
    last: Option<(usize, ExpectedVersion, Vec<Event>, AppendResult)>,
}

impl Model {
    fn version(&self, stream: usize) -> Option<u64> {
        self.log
            .iter()
            .rev()
            .find(|e| e.stream == stream)
            .map(|e| e.revision)
    }
}

fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), TestCaseError> {
    if cond {
        Ok(())
    } else {
        Err(TestCaseError::fail(msg()))
    }
}

async fn run_ops<S: EventStore>(store: S, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model = Model::default();
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Append {
                stream: si,
                expected,
                count,
                ty,
            } => {
                let current = model.version(si);
                let expected = match expected {
                    Expect::Any => ExpectedVersion::Any,
                    Expect::NoStream => ExpectedVersion::NoStream,
                    Expect::StreamExists => ExpectedVersion::StreamExists,
                    Expect::Current => {
                        current.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact)
                    }
                    Expect::Exact(n) => ExpectedVersion::Exact(n),
                };
                let events: Vec<Event> = (0..count)
                    .map(|i| event(TYPES[ty], json!({ "step": step, "i": i })))
                    .collect();
                let got = store
                    .append(&stream(STREAMS[si]), expected, events.clone())
                    .await;
                if expected.accepts(current) {
                    let first_revision = current.map_or(0, |c| c + 1);
                    let first_position = model.log.len() as u64;
                    let want = AppendResult {
                        first_revision,
                        next_expected_version: first_revision + count as u64 - 1,
                        first_position,
                        position: first_position + count as u64 - 1,
                    };
                    check(got.as_ref() == Ok(&want), || {
                        format!("step {step}: append {got:?}, model {want:?}")
                    })?;
                    for (i, e) in events.iter().enumerate() {
                        model.log.push(ModelEvent {
                            stream: si,
                            revision: first_revision + i as u64,
                            event: e.clone(),
                        });
                    }
                    model.last = Some((si, expected, events, want));
                } else {
                    let ok = matches!(&got, Err(StoreError::WrongExpectedVersion { actual, .. }) if *actual == current);
                    check(ok, || {
                        format!("step {step}: expected a conflict naming {current:?}, got {got:?}")
                    })?;
                }
            }
            Op::Repeat => {
                if let Some((si, expected, events, want)) = model.last.clone() {
                    let got = store.append(&stream(STREAMS[si]), expected, events).await;
                    check(got.as_ref() == Ok(&want), || {
                        format!("step {step}: repeat gave {got:?}, first was {want:?}")
                    })?;
                }
            }
            Op::ReadStream {
                stream: si,
                backward,
                from,
                limit,
            } => {
                let mut opts = if backward {
                    ReadStream::backward()
                } else {
                    ReadStream::forward()
                }
                .limit(limit);
                opts.from = from;
                let got = store
                    .read_stream(&stream(STREAMS[si]), opts)
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {step}: read_stream: {e}")))?;
                let mut want: Vec<&ModelEvent> = model
                    .log
                    .iter()
                    .filter(|e| e.stream == si && opts.admits(e.revision))
                    .collect();
                if opts.direction == Direction::Backward {
                    want.reverse();
                }
                want.truncate(limit);
                let got_ids: Vec<_> = got.iter().map(|e| (e.revision, e.event_id)).collect();
                let want_ids: Vec<_> = want
                    .iter()
                    .map(|e| (e.revision, e.event.event_id))
                    .collect();
                check(got_ids == want_ids, || {
                    format!(
                        "step {step}: read_stream {opts:?} gave {got_ids:?}, model {want_ids:?}"
                    )
                })?;
            }
            Op::ReadAll {
                from,
                limit,
                ty,
                prefix,
                category,
            } => {
                let mut filter = Filter::all();
                if let Some(t) = ty {
                    filter = filter.event_type(TYPES[t]);
                }
                if prefix {
                    filter = filter.stream_prefix("m-");
                }
                if let Some(c) = category {
                    filter = filter.category(CATEGORIES[c]);
                }
                let got = store
                    .read_all(ReadAll::new(from, limit).filter(filter.clone()))
                    .await
                    .map_err(|e| TestCaseError::fail(format!("step {step}: read_all: {e}")))?;
                let want: Vec<_> = model
                    .log
                    .iter()
                    .enumerate()
                    .filter(|(p, e)| {
                        *p as u64 >= from && filter.matches(STREAMS[e.stream], &e.event.event_type)
                    })
                    .take(limit)
                    .map(|(p, e)| (p as u64, e.event.event_id))
                    .collect();
                let got: Vec<_> = got.iter().map(|e| (e.position, e.event_id)).collect();
                check(got == want, || {
                    format!(
                        "step {step}: read_all from {from} limit {limit} gave {got:?}, model {want:?}"
                    )
                })?;
            }
        }
    }
    for (si, name) in STREAMS.iter().enumerate() {
        let v = store
            .stream_version(&stream(name))
            .await
            .map_err(|e| TestCaseError::fail(format!("stream_version: {e}")))?;
        check(v == model.version(si), || {
            format!(
                "final version of {name}: {v:?}, model {:?}",
                model.version(si)
            )
        })?;
    }
    Ok(())
}

/// Runs `cases` random op sequences (times `TIDINGS_SOAK`), each on a fresh store from
/// `fresh`, printing the seed. Panics with the minimal failing sequence on a mismatch.
pub fn check_model<S, F, Fut>(name: &str, cases: u32, fresh: F)
where
    S: EventStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    let seed = seed::seed(name);
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed::TestRng::new(seed).bytes32());
    let config = Config {
        cases: seed::rounds(cases),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(config, rng);
    let strategy = prop::collection::vec(op_strategy(), 1..60);
    let result = runner.run(&strategy, |ops| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(format!("runtime: {e}")))?;
        rt.block_on(async { run_ops(fresh().await, ops).await })
    });
    if let Err(e) = result {
        panic!("{name}: store disagrees with the model (TIDINGS_SEED={seed}): {e}");
    }
}
