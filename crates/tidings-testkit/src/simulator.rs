//! A delivery simulator: feeds the events of a store to a handler or saga runtime the
//! way an unreliable transport would, so a test can check that the outcome does not
//! depend on luck.
//!
//! From a seeded generator (printed, replayed from `TIDINGS_SEED`, see
//! [`seed`](super::seed)) the [`Simulator`] injects:
//!
//! - **duplicates**: an event already delivered is delivered again later;
//! - **reordering**: the next two pending events are swapped when they belong to
//!   different streams. Events of one stream are never reordered — that is what a
//!   subscription guarantees, and what handlers may rely on;
//! - **handler failures**: [`Faults`] wraps command handlers so that they fail
//!   transiently before or after doing their work; the failed delivery is retried;
//! - **crashes**: the target drops its runtime mid-flight and builds a new one from the
//!   store ([`SimTarget::crash`]); events not yet acknowledged are delivered again, as
//!   are a few that were (a checkpoint that lagged).
//!
//! The run ends when every event in the store has been delivered and acknowledged and
//! the target has settled ([`SimTarget::settle`]); then compare [`Outcome::read`] of the
//! store with that of a clean run ([`FaultPlan::none`]).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use tidings::bus::{BoxFuture, HandlerError};
//! use tidings_testkit::simulator::{FaultPlan, SimTarget, Simulator};
//! use tidings::{Enricher, EventAppender, ExpectedVersion, Filter, InMemoryStore, NewEvent,
//!     RecordedEvent, StreamId};
//!
//! /// Counts distinct events, whatever the delivery does.
//! #[derive(Default)]
//! struct Distinct(std::collections::HashSet<uuid::Uuid>);
//! impl SimTarget for Distinct {
//!     fn deliver<'a>(&'a mut self, e: &'a RecordedEvent) -> BoxFuture<'a, Result<(), HandlerError>> {
//!         self.0.insert(e.event_id);
//!         Box::pin(async { Ok(()) })
//!     }
//!     fn crash(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> { Box::pin(async { Ok(()) }) }
//!     fn settle(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> { Box::pin(async { Ok(()) }) }
//! }
//!
//! let store = InMemoryStore::new();
//! for i in 0..5 {
//!     let e = Enricher::new("s").enrich(NewEvent::new("Ticked", serde_json::json!(i))).unwrap();
//!     store.append(&StreamId::new(&format!("clock-{i}")).unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
//! }
//! let mut target = Distinct::default();
//! let report = Simulator::with_seed(7, FaultPlan::chaos())
//!     .run(&store, Filter::all(), &mut target)
//!     .await
//!     .unwrap();
//! assert_eq!(target.0.len(), 5);
//! assert!(report.deliveries >= 5);
//! # });
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tidings_core::handler::{BoxFuture, HandlerError};
use tidings_core::store::{
    EventReader, EventStore, Filter, ListStreams, Position, ReadAll, ReadStream,
};
use tidings_core::store::{RecordedEvent, StoreError};
use tidings_saga::{CommandEnvelope, CommandHandler, Saga, SagaError, SagaRuntime};

use super::seed::{TestRng, seed};

/// How often each fault is injected, in percent per delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPlan {
    /// Chance that a delivered event is queued to be delivered again.
    pub duplicate_percent: u64,
    /// Chance that the next two pending events (of different streams) are swapped.
    pub reorder_percent: u64,
    /// Chance that a wrapped command handler fails, before or after its work
    /// (see [`Faults`]).
    pub failure_percent: u64,
    /// Chance, before a delivery, that the target crashes and is rebuilt.
    pub crash_percent: u64,
    /// The run fails when it needs more deliveries than this (a livelock or a bug).
    pub max_deliveries: usize,
}

impl FaultPlan {
    /// No faults: the clean run to compare with.
    pub fn none() -> Self {
        Self {
            duplicate_percent: 0,
            reorder_percent: 0,
            failure_percent: 0,
            crash_percent: 0,
            max_deliveries: 100_000,
        }
    }

    /// Frequent faults of every kind.
    pub fn chaos() -> Self {
        Self {
            duplicate_percent: 25,
            reorder_percent: 30,
            failure_percent: 15,
            crash_percent: 8,
            max_deliveries: 100_000,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed (replay with `TIDINGS_SEED`).
    pub seed: u64,
    /// Deliveries attempted, duplicates and retries included.
    pub deliveries: usize,
    /// Duplicates queued.
    pub duplicates: usize,
    /// Swaps of two pending events.
    pub reorders: usize,
    /// Deliveries, crashes or settles that failed (and were retried).
    pub failures: usize,
    /// Crashes.
    pub crashes: usize,
}

/// Why a simulation could not finish.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SimulationError {
    /// The run needed more deliveries than [`FaultPlan::max_deliveries`].
    #[error(
        "seed {seed}: no quiescence after {deliveries} deliveries; last failure: {last_failure}"
    )]
    NoQuiescence {
        /// The seed.
        seed: u64,
        /// Deliveries made.
        deliveries: usize,
        /// The last error the target returned.
        last_failure: String,
    },
    /// Reading the store failed.
    #[error("seed {seed}: reading the store failed: {source}")]
    Store {
        /// The seed.
        seed: u64,
        /// What the store said.
        #[source]
        source: StoreError,
    },
}

/// What the simulator drives: something that handles delivered events and can crash.
pub trait SimTarget: Send {
    /// Handles one delivered event. An error means "not acknowledged": it is delivered
    /// again.
    fn deliver<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Drops all in-memory state and rebuilds it from the store. An error leaves the
    /// target down; the next `deliver` or `settle` must bring it up.
    fn crash(&mut self) -> BoxFuture<'_, Result<(), HandlerError>>;

    /// Brings the target up if it is down and finishes what it has pending, once
    /// nothing is left to deliver.
    fn settle(&mut self) -> BoxFuture<'_, Result<(), HandlerError>>;
}

/// Drives a [`SimTarget`] over a store's events with the faults of a [`FaultPlan`].
#[derive(Debug, Clone)]
pub struct Simulator {
    seed: u64,
    plan: FaultPlan,
}

impl Simulator {
    /// A simulator for the test `test` with a fresh seed (printed), or the one in
    /// `TIDINGS_SEED`.
    pub fn new(test: &str, plan: FaultPlan) -> Self {
        Self::with_seed(seed(test), plan)
    }

    /// A simulator with this seed.
    pub fn with_seed(seed: u64, plan: FaultPlan) -> Self {
        Self { seed, plan }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// [`Faults`] for the command handlers of this run, seeded from the run's seed.
    pub fn faults(&self) -> Faults {
        Faults::new(
            self.seed ^ 0x00FA_u64.rotate_left(48),
            self.plan.failure_percent,
        )
    }

    /// Delivers every event of `reader` that passes `filter` to `target`, injecting
    /// faults, until everything is acknowledged and the target has settled.
    pub async fn run<R: EventReader, T: SimTarget>(
        &self,
        reader: &R,
        filter: Filter,
        target: &mut T,
    ) -> Result<SimReport, SimulationError> {
        let plan = self.plan;
        let mut rng = TestRng::new(self.seed);
        let mut report = SimReport {
            seed: self.seed,
            ..SimReport::default()
        };
        let mut next: Position = 0;
        let mut pending: VecDeque<RecordedEvent> = VecDeque::new();
        let mut acknowledged: Vec<RecordedEvent> = Vec::new();
        let mut last_failure = String::from("(none)");
        let store_err = |source| SimulationError::Store {
            seed: self.seed,
            source,
        };
        loop {
            if report.deliveries >= plan.max_deliveries {
                return Err(SimulationError::NoQuiescence {
                    seed: self.seed,
                    deliveries: report.deliveries,
                    last_failure,
                });
            }
            let page = reader
                .read_all(ReadAll::new(next, 64).filter(filter.clone()))
                .await
                .map_err(store_err)?;
            if let Some(last) = page.last() {
                next = last.position + 1;
                pending.extend(page);
            }
            if pending.is_empty() {
                report.deliveries += 1;
                match target.settle().await {
                    Ok(()) => {
                        let more = reader
                            .read_all(ReadAll::new(next, 1).filter(filter.clone()))
                            .await
                            .map_err(store_err)?;
                        if more.is_empty() {
                            return Ok(report);
                        }
                    }
                    Err(e) => {
                        report.failures += 1;
                        last_failure = e.to_string();
                    }
                }
                continue;
            }
            if rng.chance(plan.crash_percent) {
                report.crashes += 1;
                if let Err(e) = target.crash().await {
                    report.failures += 1;
                    last_failure = e.to_string();
                }
                // A checkpoint lags what was handled: the last few come again.
                let again = rng.below(4) as usize;
                let from = acknowledged.len().saturating_sub(again);
                for e in acknowledged[from..].iter().rev() {
                    pending.push_front(e.clone());
                    report.duplicates += 1;
                }
                continue;
            }
            let index = if pending.len() > 1
                && pending[0].stream != pending[1].stream
                && rng.chance(plan.reorder_percent)
            {
                report.reorders += 1;
                1
            } else {
                0
            };
            let Some(event) = pending.remove(index) else {
                continue;
            };
            report.deliveries += 1;
            match target.deliver(&event).await {
                Ok(()) => {
                    if rng.chance(plan.duplicate_percent) {
                        report.duplicates += 1;
                        let at = rng.below(pending.len() as u64 + 1) as usize;
                        pending.insert(at, event.clone());
                    }
                    acknowledged.push(event);
                }
                Err(e) => {
                    report.failures += 1;
                    last_failure = e.to_string();
                    pending.push_front(event);
                }
            }
        }
    }
}

/// Seeded transient failures for command handlers. Clones share one generator.
#[derive(Debug, Clone)]
pub struct Faults {
    inner: Arc<Mutex<FaultState>>,
}

#[derive(Debug)]
struct FaultState {
    rng: TestRng,
    percent: u64,
    injected: usize,
}

impl Faults {
    /// Failures with probability `percent`/100 per check, from `seed`.
    pub fn new(seed: u64, percent: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(FaultState {
                rng: TestRng::new(seed),
                percent,
                injected: 0,
            })),
        }
    }

    /// Fails (transiently) with the configured probability, naming `point`.
    pub fn check(&self, point: &str) -> Result<(), HandlerError> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let percent = s.percent;
        if s.rng.chance(percent) {
            s.injected += 1;
            return Err(HandlerError::new(format!("injected failure at {point}")));
        }
        Ok(())
    }

    /// How many failures were injected so far.
    pub fn injected(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .injected
    }

    /// Wraps a command handler so that it may fail before its work (nothing done) or
    /// after it (work done, but the sender sees a failure and sends again).
    pub fn wrap<H: CommandHandler>(&self, handler: H) -> FaultyCommandHandler<H> {
        FaultyCommandHandler {
            faults: self.clone(),
            inner: handler,
        }
    }
}

/// A command handler that fails now and then; see [`Faults::wrap`].
#[derive(Debug)]
pub struct FaultyCommandHandler<H> {
    faults: Faults,
    inner: H,
}

impl<H: CommandHandler> CommandHandler for FaultyCommandHandler<H> {
    fn handle<'a>(
        &'a self,
        command: &'a CommandEnvelope,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.faults
                .check(&format!("before {}", command.command.name))?;
            self.inner.handle(command).await?;
            self.faults
                .check(&format!("after {}", command.command.name))
        })
    }
}

/// Builds a saga runtime (a fresh one on every call, on the same store).
pub type RuntimeFactory<S, G> =
    Box<dyn Fn() -> BoxFuture<'static, Result<SagaRuntime<S, G>, SagaError>> + Send + Sync>;

/// A [`SimTarget`] running a [`SagaRuntime`]: a crash drops the runtime and builds a new
/// one with the factory (which recovers from the store).
pub struct SagaTarget<S, G: Saga> {
    runtime: Option<SagaRuntime<S, G>>,
    factory: RuntimeFactory<S, G>,
}

impl<S, G: Saga> std::fmt::Debug for SagaTarget<S, G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaTarget")
            .field("saga", &G::NAME)
            .field("up", &self.runtime.is_some())
            .finish()
    }
}

impl<S: EventStore, G: Saga> SagaTarget<S, G> {
    /// A target whose runtimes `factory` builds; the first is built on first use.
    pub fn new(factory: RuntimeFactory<S, G>) -> Self {
        Self {
            runtime: None,
            factory,
        }
    }

    /// The current runtime, if up.
    pub fn runtime(&self) -> Option<&SagaRuntime<S, G>> {
        self.runtime.as_ref()
    }

    async fn up(&mut self) -> Result<&SagaRuntime<S, G>, HandlerError> {
        if self.runtime.is_none() {
            self.runtime = Some((self.factory)().await?);
        }
        self.runtime
            .as_ref()
            .ok_or_else(|| HandlerError::new("the saga runtime is down"))
    }
}

impl<S: EventStore, G: Saga> SimTarget for SagaTarget<S, G> {
    fn deliver<'a>(
        &'a mut self,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            self.up().await?.handle_event(event).await?;
            Ok(())
        })
    }

    fn crash(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move {
            self.runtime = None;
            self.up().await?;
            Ok(())
        })
    }

    fn settle(&mut self) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async move {
            self.up().await?.flush_pending().await?;
            Ok(())
        })
    }
}

/// The business outcome in a store: every user stream's events as (type, data), in
/// stream order — no ids, timestamps, positions or system streams, so runs with
/// different interleavings compare equal when they reached the same result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome(pub BTreeMap<String, Vec<(String, serde_json::Value)>>);

impl Outcome {
    /// One line per stream whose events differ between `self` and `other` (empty when
    /// the outcomes are equal), for an assertion message that shows only what matters.
    pub fn differences(&self, other: &Self) -> Vec<String> {
        let streams: std::collections::BTreeSet<&String> =
            self.0.keys().chain(other.0.keys()).collect();
        streams
            .into_iter()
            .filter_map(|stream| {
                let (a, b) = (self.0.get(stream), other.0.get(stream));
                (a != b).then(|| {
                    let show = |events: Option<&Vec<(String, serde_json::Value)>>| {
                        events.map_or_else(
                            || "(no stream)".to_owned(),
                            |es| {
                                es.iter()
                                    .map(|(t, d)| format!("{t} {d}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            },
                        )
                    };
                    format!("{stream}: [{}] vs [{}]", show(a), show(b))
                })
            })
            .collect()
    }

    /// Reads the outcome of `reader`.
    pub async fn read<R: EventReader>(reader: &R) -> Result<Self, StoreError> {
        let mut out = BTreeMap::new();
        let mut after = None;
        loop {
            let page = reader
                .list_streams(ListStreams {
                    prefix: None,
                    after: after.clone(),
                    limit: 256,
                })
                .await?;
            let Some(last) = page.last() else {
                return Ok(Self(out));
            };
            after = Some(last.stream.to_string());
            for info in page {
                if info.stream.as_str().starts_with('$') {
                    continue;
                }
                let events = reader
                    .read_stream(&info.stream, ReadStream::forward())
                    .await?;
                out.insert(
                    info.stream.to_string(),
                    events
                        .iter()
                        .map(|e| (e.event_type.clone(), e.data.to_value()))
                        .collect(),
                );
            }
        }
    }
}
