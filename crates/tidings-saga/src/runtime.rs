//! [`SagaRuntime`]: feeds a saga its events and timers, keeps its instances in the store,
//! and carries out what it decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use uuid::Uuid;

use super::command::{CommandEnvelope, CommandHandler, SagaCommand};
use super::instance::{SagaInstance, load};
use super::record::{
    COMMANDS_DONE, CommandsDone, OutboxEntry, RecordedCause, STEP_RECORDED, StepInput, StepRecord,
    instance_prefix, instance_stream, outbox_id,
};
use super::{Saga, SagaError};
use tidings_consumer::StoreCheckpoints;
use tidings_core::event::{Clock, Enricher, NewEvent, Payload, SystemClock};
use tidings_core::handler::{Cause, with_cause};
use tidings_core::store::{
    EventStore, ExpectedVersion, Filter, ListStreams, PAGE, RecordedEvent, Revision,
};
use tidings_core::stream::StreamId;

/// What [`SagaRuntime::handle_event`] did with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The saga handled it: a step was recorded for this instance.
    Handled {
        /// The instance.
        instance: String,
    },
    /// The instance had already handled this event id (a redelivery): nothing was
    /// recorded again, though commands left pending by an earlier failure were carried
    /// out.
    Duplicate {
        /// The instance.
        instance: String,
    },
    /// The event is not for this saga: a type it does not handle, no instance id, a
    /// system stream, no instance and not a starting event, or a completed instance.
    Ignored,
}

/// Runs one [`Saga`] on one store.
///
/// - **State** lives in the store: each handled event or fired timer appends one step
///   record to the instance's stream `$saga-<name>-<id>` (state, timers, handled event
///   ids and the step's outbox) with the exact expected version; see
///   `docs/decisions/0008-sagas.md`.
/// - **Redelivery is harmless**: an event id the instance has handled is not handled
///   again. Commands are recorded before they are carried out, with ids derived from the
///   step, and retried until done, so a crash between deciding and doing neither loses
///   nor (for idempotent receivers) repeats them.
/// - **Timers are durable**: due times are part of the state; a new runtime on the same
///   store finds every live instance ([`build`](SagaRuntimeBuilder::build) recovers them)
///   and [`fire_due_timers`](Self::fire_due_timers) fires what is due on its [`Clock`].
/// - **Consumption** is from a checkpoint kept in `$checkpoint-saga-<name>` by
///   [`StoreCheckpoints`], fenced like a consumer group's:
///   [`catch_up`](Self::catch_up) handles everything up to the head,
///   [`run`](Self::run) follows the store live and fires timers as they come due.
///
/// Completed instances leave the set of live instances and their timers are dropped; their
/// stream stays (the store is append-only) as the record that later events for them are
/// to be ignored.
pub struct SagaRuntime<S, G: Saga> {
    pub(super) store: S,
    /// Where the runtime's subscription checkpoint lives, fenced by expected version.
    pub(super) checkpoints: StoreCheckpoints<S>,
    saga: Arc<G>,
    pub(super) enricher: Enricher,
    clock: Arc<dyn Clock>,
    handlers: HashMap<String, Arc<dyn CommandHandler>>,
    live: Mutex<BTreeMap<String, BTreeMap<String, Timestamp>>>,
    /// Instances whose last step's commands failed and wait for another try.
    stalled: Mutex<BTreeSet<String>>,
    steps: tokio::sync::Mutex<()>,
    pub(super) timer_interval: Duration,
    pub(super) max_attempts: u32,
    pub(super) retry_delay: Duration,
}

impl<S, G: Saga> fmt::Debug for SagaRuntime<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRuntime")
            .field("saga", &G::NAME)
            .field(
                "command_handlers",
                &self.handlers.keys().collect::<Vec<_>>(),
            )
            .field("live_instances", &self.live.lock().map_or(0, |l| l.len()))
            .finish_non_exhaustive()
    }
}

/// Builds a [`SagaRuntime`]; see [`SagaRuntime::builder`].
pub struct SagaRuntimeBuilder<S, G> {
    store: S,
    saga: G,
    enricher: Enricher,
    clock: Arc<dyn Clock>,
    handlers: HashMap<String, Arc<dyn CommandHandler>>,
    timer_interval: Duration,
    max_attempts: u32,
    retry_delay: Duration,
}

impl<S, G: Saga> fmt::Debug for SagaRuntimeBuilder<S, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRuntimeBuilder")
            .field("saga", &G::NAME)
            .finish_non_exhaustive()
    }
}

impl<S: EventStore, G: Saga> SagaRuntimeBuilder<S, G> {
    /// Uses `clock` for timers and for the timestamps of what the saga publishes
    /// (default: the system clock).
    pub fn clock(mut self, clock: impl Clock + Clone) -> Self {
        self.enricher = self.enricher.with_clock(clock.clone());
        self.clock = Arc::new(clock);
        self
    }

    /// Enriches what the saga publishes with `enricher` (default: source
    /// `saga-<name>`). Set the clock after this to use it for both.
    pub fn enricher(mut self, enricher: Enricher) -> Self {
        self.enricher = enricher;
        self
    }

    /// Registers `handler` for commands named `name` (replacing any before it).
    pub fn command_handler(
        mut self,
        name: impl Into<String>,
        handler: impl CommandHandler,
    ) -> Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// How often [`SagaRuntime::run`] looks for due timers (default 1 s).
    pub fn timer_interval(mut self, interval: Duration) -> Self {
        self.timer_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How many times [`SagaRuntime::run`] tries one event before it stops with the
    /// error (default 5), and the first pause between tries, doubled each time (default
    /// 100 ms).
    pub fn retries(mut self, max_attempts: u32, first_delay: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.retry_delay = first_delay;
        self
    }

    /// Builds the runtime and recovers: every instance of the saga in the store is
    /// loaded, live instances' timers are scheduled, and commands a crash left pending
    /// are carried out (when that fails again the instance stays stalled, see
    /// [`SagaRuntime::flush_pending`]; only a failing store fails the build).
    pub async fn build(self) -> Result<SagaRuntime<S, G>, SagaError> {
        let runtime = SagaRuntime {
            checkpoints: StoreCheckpoints::new(self.store.clone()),
            store: self.store,
            saga: Arc::new(self.saga),
            enricher: self.enricher,
            clock: self.clock,
            handlers: self.handlers,
            live: Mutex::default(),
            stalled: Mutex::default(),
            steps: tokio::sync::Mutex::new(()),
            timer_interval: self.timer_interval,
            max_attempts: self.max_attempts,
            retry_delay: self.retry_delay,
        };
        runtime.recover().await?;
        if let Err(e) = runtime.flush_pending().await {
            tracing::warn!(saga = G::NAME, error = %e, "commands left pending by a crash failed again; will retry");
        }
        Ok(runtime)
    }
}

impl<S: EventStore, G: Saga> SagaRuntime<S, G> {
    /// A builder for a runtime running `saga` on `store`.
    ///
    /// Pass a publisher (`tidings::bus::Publisher`) as the store to have what the saga
    /// publishes dispatched as well as appended.
    pub fn builder(store: S, saga: G) -> SagaRuntimeBuilder<S, G> {
        SagaRuntimeBuilder {
            store,
            saga,
            enricher: Enricher::new(format!("saga-{}", G::NAME)),
            clock: Arc::new(SystemClock),
            handlers: HashMap::new(),
            timer_interval: Duration::from_secs(1),
            max_attempts: 5,
            retry_delay: Duration::from_millis(100),
        }
    }

    /// The saga.
    pub fn saga(&self) -> &G {
        &self.saga
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn live_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Timestamp>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ids of the instances that have not completed, in order.
    pub fn live_instances(&self) -> Vec<String> {
        self.live_lock().keys().cloned().collect()
    }

    /// When the earliest pending timer is due, if any.
    pub fn next_due(&self) -> Option<Timestamp> {
        self.live_lock()
            .values()
            .flat_map(BTreeMap::values)
            .min()
            .copied()
    }

    /// The subscription filter: the saga's event types.
    pub fn filter(&self) -> Filter {
        G::EVENT_TYPES
            .iter()
            .fold(Filter::all(), |f, t| f.event_type(*t))
    }

    fn stream_of(&self, instance: &str) -> Result<StreamId, SagaError> {
        instance_stream(G::NAME, instance).map_err(|source| SagaError::InvalidInstanceId {
            saga: G::NAME,
            instance: instance.to_owned(),
            source,
        })
    }

    /// Loads instance `instance` as the store has it (None: never started).
    pub async fn instance(
        &self,
        instance: &str,
    ) -> Result<Option<SagaInstance<G::State>>, SagaError> {
        load(G::NAME, &self.store, &self.stream_of(instance)?).await
    }

    /// Handles one event: loads the instance it correlates to, lets the saga decide,
    /// records the step, then carries out its commands. Safe to call again with the
    /// same event (see [`StepOutcome::Duplicate`]); an error leaves nothing half done
    /// that a later call or a restart does not finish.
    ///
    /// Steps of one runtime run one at a time, command handlers included, so a command
    /// handler (or a dispatch it triggers) must not call back into the same runtime:
    /// let the runtime pick the answer up from the store ([`catch_up`](Self::catch_up),
    /// [`run`](Self::run)).
    pub async fn handle_event(&self, event: &RecordedEvent) -> Result<StepOutcome, SagaError> {
        if event.stream.as_str().starts_with('$')
            || !G::EVENT_TYPES.contains(&event.event_type.as_str())
        {
            return Ok(StepOutcome::Ignored);
        }
        let Some(id) = self.saga.correlate(event) else {
            return Ok(StepOutcome::Ignored);
        };
        let stream = self.stream_of(&id)?;
        let _step = self.steps.lock().await;
        let loaded = self.load_and_flush(&stream).await?;
        let base = match loaded {
            Some(i) if i.has_handled(&event.event_id) => {
                return Ok(StepOutcome::Duplicate { instance: id });
            }
            Some(i) if i.is_completed() => return Ok(StepOutcome::Ignored),
            Some(i) => Some(i),
            None if self.saga.starts(event) => None,
            None => return Ok(StepOutcome::Ignored),
        };
        let mut state = base
            .as_ref()
            .map_or_else(G::State::default, |i| i.state.clone());
        let commands =
            self.saga
                .handle(&mut state, event)
                .map_err(|source| SagaError::Handler {
                    saga: G::NAME,
                    instance: id.clone(),
                    input: format!("event {} ({})", event.event_id, event.event_type),
                    source,
                })?;
        let cause = Cause::of(event);
        let mut handled = base
            .as_ref()
            .map(|i| i.step.handled.clone())
            .unwrap_or_default();
        handled.push(event.event_id);
        let step = Step {
            stream: &stream,
            instance: &id,
            version: base.as_ref().map(SagaInstance::version),
            input: StepInput::Event {
                event_id: event.event_id,
                event_type: event.event_type.clone(),
                position: event.position,
            },
            timers: base
                .as_ref()
                .map(|i| i.step.timers.clone())
                .unwrap_or_default(),
            handled,
            correlation_id: base.as_ref().map_or_else(
                || cause.correlation_id.clone(),
                |i| i.step.correlation_id.clone(),
            ),
            cause: cause.into(),
        };
        self.record_step(step, state, commands).await?;
        Ok(StepOutcome::Handled { instance: id })
    }

    /// Fires every timer due on the runtime's clock, earliest first, and returns how many
    /// fired. A timer fires once: its step record removes it.
    pub async fn fire_due_timers(&self) -> Result<usize, SagaError> {
        let now = self.clock.now();
        let mut due: Vec<(Timestamp, String, String)> = self
            .live_lock()
            .iter()
            .flat_map(|(instance, timers)| {
                timers
                    .iter()
                    .filter(|(_, at)| **at <= now)
                    .map(|(timer, at)| (*at, instance.clone(), timer.clone()))
            })
            .collect();
        due.sort();
        let mut fired = 0;
        for (_, instance, timer) in due {
            if self.fire_timer(&instance, &timer, now).await? {
                fired += 1;
            }
        }
        Ok(fired)
    }

    async fn fire_timer(&self, id: &str, timer: &str, now: Timestamp) -> Result<bool, SagaError> {
        let stream = self.stream_of(id)?;
        let _step = self.steps.lock().await;
        let Some(inst) = self.load_and_flush(&stream).await? else {
            self.live_lock().remove(id);
            return Ok(false);
        };
        let due = inst.step.timers.get(timer).is_some_and(|at| *at <= now);
        if inst.is_completed() || !due {
            return Ok(false);
        }
        let mut state = inst.state.clone();
        let commands = self
            .saga
            .handle_timeout(&mut state, timer)
            .map_err(|source| SagaError::Handler {
                saga: G::NAME,
                instance: id.to_owned(),
                input: format!("timeout {timer}"),
                source,
            })?;
        let mut timers = inst.step.timers.clone();
        timers.remove(timer);
        let step = Step {
            stream: &stream,
            instance: id,
            version: Some(inst.version),
            input: StepInput::Timeout {
                timeout_id: timer.to_owned(),
            },
            timers,
            handled: inst.step.handled.clone(),
            correlation_id: inst.step.correlation_id.clone(),
            cause: RecordedCause {
                event_id: inst.step_event_id,
                correlation_id: inst.step.correlation_id.clone(),
                user_id: inst.step.cause.user_id.clone(),
            },
        };
        self.record_step(step, state, commands).await?;
        Ok(true)
    }

    /// Records one step (state, timers, outbox) and carries out its outbox.
    async fn record_step(
        &self,
        step: Step<'_>,
        state: G::State,
        commands: Vec<SagaCommand>,
    ) -> Result<(), SagaError> {
        let revision = step.version.map_or(0, |v| v + 1);
        let now = self.clock.now();
        let mut timers = step.timers;
        let mut outbox = Vec::new();
        let mut completed = false;
        for (index, command) in commands.into_iter().enumerate() {
            match command {
                SagaCommand::Publish { stream, mut event } => {
                    event
                        .event_id
                        .get_or_insert_with(|| outbox_id(step.stream, revision, index));
                    outbox.push(OutboxEntry::Publish {
                        stream,
                        event: *event,
                    });
                }
                SagaCommand::Send(command) => outbox.push(OutboxEntry::Send {
                    command_id: outbox_id(step.stream, revision, index),
                    command,
                }),
                SagaCommand::ScheduleTimeout { id, after } => {
                    let after = SignedDuration::try_from(after).unwrap_or(SignedDuration::MAX);
                    timers.insert(id, now.checked_add(after).unwrap_or(Timestamp::MAX));
                }
                SagaCommand::CancelTimeout { id } => {
                    timers.remove(&id);
                }
                SagaCommand::Complete => completed = true,
            }
        }
        if completed {
            timers.clear();
        }
        let state = serde_json::to_value(&state).map_err(|e| SagaError::EncodeState {
            saga: G::NAME,
            instance: step.instance.to_owned(),
            reason: e.to_string(),
        })?;
        let record = StepRecord {
            saga: G::NAME.to_owned(),
            instance: step.instance.to_owned(),
            input: step.input,
            state,
            timers,
            handled: step.handled,
            correlation_id: step.correlation_id,
            cause: step.cause,
            outbox,
            completed,
        };
        let cause: Cause = record.cause.clone().into();
        self.append_record(step.stream, step.version, STEP_RECORDED, &record, &cause)
            .await?;
        {
            let mut live = self.live_lock();
            if completed {
                live.remove(step.instance);
            } else {
                live.insert(step.instance.to_owned(), record.timers.clone());
            }
        }
        self.flush_marking(step.instance, step.stream, revision, &record)
            .await
    }

    fn stalled_lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.stalled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`flush`](Self::flush), remembering the instance as stalled while it fails.
    async fn flush_marking(
        &self,
        instance: &str,
        stream: &StreamId,
        revision: Revision,
        record: &StepRecord,
    ) -> Result<(), SagaError> {
        if record.outbox.is_empty() {
            return Ok(());
        }
        self.stalled_lock().insert(instance.to_owned());
        self.flush(stream, revision, record).await?;
        self.stalled_lock().remove(instance);
        Ok(())
    }

    /// The ids of instances whose last commands failed and have not been carried out
    /// yet (they are retried by [`flush_pending`](Self::flush_pending), by the next event
    /// for the instance, and by [`run`](Self::run) on every timer tick).
    pub fn stalled_instances(&self) -> Vec<String> {
        self.stalled_lock().iter().cloned().collect()
    }

    /// Tries again to carry out the commands of every stalled instance; returns how many
    /// instances it finished, or the first error.
    pub async fn flush_pending(&self) -> Result<usize, SagaError> {
        let mut done = 0;
        for id in self.stalled_instances() {
            let stream = self.stream_of(&id)?;
            let _step = self.steps.lock().await;
            self.load_and_flush(&stream).await?;
            self.stalled_lock().remove(&id);
            done += 1;
        }
        Ok(done)
    }

    async fn append_record<T: serde::Serialize>(
        &self,
        stream: &StreamId,
        version: Option<Revision>,
        event_type: &str,
        record: &T,
        cause: &Cause,
    ) -> Result<(), SagaError> {
        let data = Payload::from_serialize(record).map_err(|e| SagaError::EncodeState {
            saga: G::NAME,
            instance: stream.to_string(),
            reason: e.to_string(),
        })?;
        let mut event = self
            .enricher
            .enrich(NewEvent::new(event_type, data))
            .map_err(|source| SagaError::InvalidEvent {
                saga: G::NAME,
                instance: stream.to_string(),
                index: 0,
                source,
            })?;
        cause.apply_to(&mut event.metadata);
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        self.store
            .append(stream, expected, vec![event])
            .await
            .map_err(SagaError::store(G::NAME))?;
        Ok(())
    }

    /// Carries out the outbox of the step recorded at `revision`, then records that it
    /// is done.
    async fn flush(
        &self,
        stream: &StreamId,
        revision: Revision,
        record: &StepRecord,
    ) -> Result<(), SagaError> {
        if record.outbox.is_empty() {
            return Ok(());
        }
        let cause: Cause = record.cause.clone().into();
        for (index, entry) in record.outbox.iter().enumerate() {
            match entry {
                OutboxEntry::Publish { stream: to, event } => {
                    let mut event = self.enricher.enrich(event.clone()).map_err(|source| {
                        SagaError::InvalidEvent {
                            saga: G::NAME,
                            instance: record.instance.clone(),
                            index,
                            source,
                        }
                    })?;
                    cause.apply_to(&mut event.metadata);
                    self.store
                        .append(to, ExpectedVersion::Any, vec![event])
                        .await
                        .map_err(SagaError::store(G::NAME))?;
                }
                OutboxEntry::Send {
                    command_id,
                    command,
                } => {
                    let handler = self.handlers.get(&command.name).ok_or_else(|| {
                        SagaError::NoCommandHandler {
                            saga: G::NAME,
                            command: command.name.clone(),
                        }
                    })?;
                    let envelope = CommandEnvelope {
                        command_id: *command_id,
                        saga: G::NAME.to_owned(),
                        instance: record.instance.clone(),
                        command: command.clone(),
                    };
                    with_cause(cause.clone(), handler.handle(&envelope))
                        .await
                        .map_err(|source| SagaError::Command {
                            saga: G::NAME,
                            instance: record.instance.clone(),
                            command: command.name.clone(),
                            command_id: *command_id,
                            source,
                        })?;
                }
            }
        }
        self.append_record(
            stream,
            Some(revision),
            COMMANDS_DONE,
            &CommandsDone { step: revision },
            &cause,
        )
        .await
    }

    /// Loads an instance and, when a crash or failure left its last step's commands
    /// pending, carries them out first.
    async fn load_and_flush(
        &self,
        stream: &StreamId,
    ) -> Result<Option<SagaInstance<G::State>>, SagaError> {
        let Some(mut inst) = load::<G::State, _>(G::NAME, &self.store, stream).await? else {
            return Ok(None);
        };
        if inst.pending {
            self.flush_marking(&inst.id, stream, inst.version, &inst.step)
                .await?;
            inst.version += 1;
            inst.pending = false;
        }
        Ok(Some(inst))
    }

    /// Finds every instance of the saga in the store, schedules live instances' timers
    /// and notes the instances whose commands a crash left pending (see
    /// [`flush_pending`](Self::flush_pending)). [`build`](SagaRuntimeBuilder::build)
    /// calls it.
    async fn recover(&self) -> Result<(), SagaError> {
        let prefix = instance_prefix(G::NAME);
        let mut after = None;
        loop {
            let page = self
                .store
                .list_streams(ListStreams {
                    prefix: Some(prefix.clone()),
                    after: after.clone(),
                    limit: PAGE,
                })
                .await
                .map_err(SagaError::store(G::NAME))?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            after = Some(last.stream.to_string());
            for info in page {
                let inst = match load::<G::State, _>(G::NAME, &self.store, &info.stream).await {
                    Ok(Some(inst)) => inst,
                    // A saga whose name extends this one's shares the prefix.
                    Ok(None) | Err(SagaError::ForeignInstance { .. }) => continue,
                    Err(e) => return Err(e),
                };
                if !inst.is_completed() {
                    self.live_lock()
                        .insert(inst.id.clone(), inst.step.timers.clone());
                }
                if inst.pending {
                    self.stalled_lock().insert(inst.id.clone());
                }
            }
        }
    }
}

/// What a step starts from.
struct Step<'a> {
    stream: &'a StreamId,
    instance: &'a str,
    version: Option<Revision>,
    input: StepInput,
    timers: BTreeMap<String, Timestamp>,
    handled: Vec<Uuid>,
    correlation_id: String,
    cause: RecordedCause,
}
