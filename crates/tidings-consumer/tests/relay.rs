//! The outbox relay over `InMemoryStore` and `InMemoryTransport`: every event relayed once,
//! in order, with its origin; system streams skipped; routing by `TopicMap`; a restart
//! resumes from the checkpoint; two relays with one name are fenced; a failing
//! transport and a failing subscription are retried without losing or skipping events.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tidings::consumer::relay::{Backoff, CheckpointCadence, OutboxRelay, checkpoint_name};
use tidings::consumer::{CheckpointStore, InMemoryCheckpoints, StoreCheckpoints};
use tidings::store::{ListStreams, ReadAll, ReadStream, StreamInfo};
use tidings::transport::{
    BrokerMessages, InMemoryTransport, Message, Origin, Subscription, TopicMap, Transport,
    TransportError,
};
use tidings::{
    Enricher, EventAppender, EventReader, EventSubscriber, ExpectedVersion, Filter, InMemoryStore,
    NewEvent, Position, RecordedEvent, Revision, Start, StoreError, StreamId,
};
use tokio::sync::{Semaphore, oneshot};

/// An `InMemoryTransport` that records what it confirmed, can fail its next publishes,
/// and can hold publishes until released.
#[derive(Clone, Default)]
struct TestTransport {
    inner: InMemoryTransport,
    confirmed: Arc<Mutex<Vec<Message>>>,
    failures_left: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
    gate: Option<Arc<Semaphore>>,
}

impl TestTransport {
    fn failing(n: u32) -> Self {
        let t = Self::default();
        t.failures_left.store(n, Ordering::SeqCst);
        t
    }

    fn gated() -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        (
            Self {
                gate: Some(gate.clone()),
                ..Self::default()
            },
            gate,
        )
    }

    fn confirmed(&self) -> Vec<Message> {
        self.confirmed.lock().unwrap().clone()
    }
}

impl Transport for TestTransport {
    async fn publish(&self, message: Message) -> Result<(), TransportError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.unwrap().forget();
        }
        let fail = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if fail {
            return Err(TransportError::Publish {
                topic: message.topic.clone(),
                event_id: message.event.event_id,
                source: "broker unavailable".into(),
            });
        }
        self.inner.publish(message.clone()).await?;
        self.confirmed.lock().unwrap().push(message);
        Ok(())
    }

    fn subscribe(
        &self,
        subscription: Subscription,
    ) -> impl std::future::Future<Output = Result<BrokerMessages, TransportError>> + Send {
        self.inner.subscribe(subscription)
    }

    fn deduplicates_by_event_id(&self) -> bool {
        true
    }
}

fn event(event_type: &str, n: u64) -> tidings::Event {
    Enricher::new("shop")
        .enrich(NewEvent::new(event_type, serde_json::json!({ "n": n })))
        .unwrap()
}

async fn append(store: &InMemoryStore, stream: &str, types: &[&str]) {
    let id = if stream.starts_with('$') {
        StreamId::system(stream).unwrap()
    } else {
        StreamId::new(stream).unwrap()
    };
    let events = types
        .iter()
        .enumerate()
        .map(|(i, t)| event(t, i as u64))
        .collect();
    store
        .append(&id, ExpectedVersion::Any, events)
        .await
        .unwrap();
}

async fn all_events(store: &InMemoryStore) -> Vec<RecordedEvent> {
    store.read_all(ReadAll::new(0, 10_000)).await.unwrap()
}

fn fast() -> Backoff {
    Backoff {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
    }
}

/// Runs `relay` in a task; the sender stops it.
fn start<S, T, C>(
    relay: Arc<OutboxRelay<S, T, C>>,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<tidings::consumer::RelayStats, tidings::consumer::RelayError>>,
)
where
    S: EventReader + EventSubscriber + Clone + 'static,
    T: Transport + 'static,
    C: CheckpointStore,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        relay
            .run(async {
                let _ = stopped.await;
            })
            .await
    });
    (stop, task)
}

async fn wait_relayed<S, T, C>(relay: &OutboxRelay<S, T, C>, n: u64)
where
    S: EventReader + EventSubscriber + Clone + 'static,
    T: Transport,
    C: CheckpointStore,
{
    let mut watch = relay.watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.relayed >= n && s.lag == 0),
    )
    .await
    .unwrap_or_else(|_| panic!("not relayed in time: {:?}", relay.stats()))
    .unwrap();
}

#[tokio::test]
async fn relays_every_event_once_in_order_with_its_origin_and_routes_by_topic() {
    let store = InMemoryStore::new();
    let transport = TestTransport::default();
    let mut orders = transport
        .subscribe(Subscription::new("billing", "orders"))
        .await
        .unwrap();
    let mut others = transport
        .subscribe(Subscription::new("audit", "events"))
        .await
        .unwrap();
    append(&store, "order-1", &["OrderCreated", "OrderPaid"]).await;
    append(&store, "$internal", &["Something"]).await;
    append(&store, "payment-1", &["PaymentProcessed"]).await;

    let relay = Arc::new(
        OutboxRelay::builder("main", store.clone(), transport.clone())
            .topics(TopicMap::new("events").route("OrderCreated", "orders"))
            .checkpoint_cadence(CheckpointCadence {
                events: 1,
                interval: Duration::from_millis(10),
            })
            .head_interval(Duration::from_millis(10))
            .build()
            .unwrap(),
    );
    let (stop, task) = start(relay.clone());
    wait_relayed(&relay, 3).await;
    // Live: appended while the relay runs.
    append(&store, "order-2", &["OrderCreated"]).await;
    wait_relayed(&relay, 4).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.relayed, 4);
    assert_eq!(stats.retries, 0);
    assert_eq!(stats.lag, 0);

    let recorded: Vec<RecordedEvent> = all_events(&store)
        .await
        .into_iter()
        .filter(|e| !e.stream.is_system())
        .collect();
    assert_eq!(recorded.len(), 4);
    let confirmed = transport.confirmed();
    assert_eq!(confirmed.len(), 4, "each event published once");
    for (m, e) in confirmed.iter().zip(&recorded) {
        assert_eq!(m.event, e.event);
        assert_eq!(m.origin, Some(Origin::of(e)));
        let topic = if e.event_type == "OrderCreated" {
            "orders"
        } else {
            "events"
        };
        assert_eq!(m.topic, topic);
    }
    // Consumers on the other side see the recorded events, origin included.
    for expected in recorded.iter().filter(|e| e.event_type == "OrderCreated") {
        let d = orders.next().await.unwrap().unwrap();
        assert_eq!(&d.recorded().unwrap(), expected);
        d.ack().await.unwrap();
    }
    for expected in recorded.iter().filter(|e| e.event_type != "OrderCreated") {
        let d = others.next().await.unwrap().unwrap();
        assert_eq!(&d.recorded().unwrap(), expected);
        d.ack().await.unwrap();
    }
    // The checkpoint covers everything relayed.
    let cp = StoreCheckpoints::new(store.clone())
        .load(&checkpoint_name("main"))
        .await
        .unwrap()
        .unwrap();
    assert!(cp.next > recorded.last().unwrap().position);
}

#[tokio::test]
async fn a_filter_narrows_what_is_relayed() {
    let store = InMemoryStore::new();
    let transport = TestTransport::default();
    append(&store, "order-1", &["OrderCreated"]).await;
    append(&store, "payment-1", &["PaymentProcessed"]).await;
    let relay = Arc::new(
        OutboxRelay::builder("orders-only", store.clone(), transport.clone())
            .filter(Filter::all().stream_prefix("order-"))
            .build()
            .unwrap(),
    );
    let (stop, task) = start(relay.clone());
    wait_relayed(&relay, 1).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!((stats.relayed, stats.skipped), (1, 1));
    let confirmed = transport.confirmed();
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0].event.event_type, "OrderCreated");
}

#[tokio::test]
async fn a_restart_resumes_from_the_checkpoint() {
    let store = InMemoryStore::new();
    let transport = TestTransport::default();
    append(&store, "order-1", &["A", "B", "C"]).await;
    let build = || {
        Arc::new(
            OutboxRelay::builder("resume", store.clone(), transport.clone())
                .build()
                .unwrap(),
        )
    };
    let first = build();
    let (stop, task) = start(first.clone());
    wait_relayed(&first, 3).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.checkpoint, Some(3), "saved on shutdown");

    append(&store, "order-1", &["D", "E"]).await;
    let second = build();
    let (stop, task) = start(second.clone());
    wait_relayed(&second, 2).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.relayed, 2, "only the new events");

    let confirmed: Vec<String> = transport
        .confirmed()
        .iter()
        .map(|m| m.event.event_type.clone())
        .collect();
    assert_eq!(confirmed, ["A", "B", "C", "D", "E"]);
}

#[tokio::test]
async fn two_relays_with_one_name_the_second_stops_with_a_conflict() {
    let store = InMemoryStore::new();
    append(&store, "order-1", &["A", "B"]).await;
    // The held relay loads the checkpoint, then waits on its first publish.
    let (held_transport, gate) = TestTransport::gated();
    let held = Arc::new(
        OutboxRelay::builder("shared", store.clone(), held_transport.clone())
            .checkpoint_cadence(CheckpointCadence {
                events: 1,
                interval: Duration::from_secs(60),
            })
            .build()
            .unwrap(),
    );
    let (_stop_held, held_task) = start(held.clone());
    while held_transport.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Meanwhile another instance with the same name relays and saves.
    let other = Arc::new(
        OutboxRelay::builder("shared", store.clone(), TestTransport::default())
            .build()
            .unwrap(),
    );
    let (stop, task) = start(other.clone());
    wait_relayed(&other, 2).await;
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap().unwrap().checkpoint, Some(2));
    // The held one may not advance the checkpoint the other moved.
    gate.add_permits(10);
    let err = tokio::time::timeout(Duration::from_secs(10), held_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let cp = StoreCheckpoints::new(store.clone())
        .load(&checkpoint_name("shared"))
        .await
        .unwrap();
    assert_eq!(cp.map(|c| c.next), Some(2));
}

#[tokio::test]
async fn a_failing_transport_is_retried_and_nothing_is_lost_or_skipped() {
    let store = InMemoryStore::new();
    append(&store, "order-1", &["A", "B", "C", "D"]).await;
    let transport = TestTransport::failing(5);
    let relay = Arc::new(
        OutboxRelay::builder("flaky", store.clone(), transport.clone())
            .backoff(fast())
            .jitter_seed(7)
            .build()
            .unwrap(),
    );
    let (stop, task) = start(relay.clone());
    wait_relayed(&relay, 4).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.retries, 5);
    assert!(
        stats
            .last_error
            .as_deref()
            .unwrap()
            .contains("broker unavailable")
    );
    let confirmed: Vec<(String, Position)> = transport
        .confirmed()
        .iter()
        .map(|m| {
            (
                m.event.event_type.clone(),
                m.origin.as_ref().unwrap().position,
            )
        })
        .collect();
    assert_eq!(
        confirmed,
        [
            ("A".to_owned(), 0),
            ("B".to_owned(), 1),
            ("C".to_owned(), 2),
            ("D".to_owned(), 3)
        ]
    );
}

/// A store whose first subscriptions fail after a few events, like a store that
/// restarts under the relay.
#[derive(Clone)]
struct RestartingStore {
    inner: InMemoryStore,
    failures_left: Arc<AtomicU32>,
    subscriptions: Arc<AtomicU32>,
}

impl EventReader for RestartingStore {
    fn read_stream(
        &self,
        stream: &StreamId,
        options: ReadStream,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.inner.read_stream(stream, options)
    }
    fn read_all(
        &self,
        options: ReadAll,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.inner.read_all(options)
    }
    fn read_correlation(
        &self,
        correlation_id: &str,
        from: Position,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send {
        self.inner.read_correlation(correlation_id, from, limit)
    }
    fn stream_version(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Revision>, StoreError>> + Send {
        self.inner.stream_version(stream)
    }
    fn list_streams(
        &self,
        options: ListStreams,
    ) -> impl Future<Output = Result<Vec<StreamInfo>, StoreError>> + Send {
        self.inner.list_streams(options)
    }
    fn head(&self) -> impl Future<Output = Result<Option<Position>, StoreError>> + Send {
        self.inner.head()
    }
}

impl EventSubscriber for RestartingStore {
    fn subscribe_all(
        &self,
        start: Start,
        filter: Filter,
    ) -> impl Stream<Item = tidings::store::EventStreamItem> + Send + 'static {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        let fail = self
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let events = self.inner.subscribe_all(start, filter);
        if fail {
            events
                .take(2)
                .chain(futures::stream::once(async {
                    Err(StoreError::Backend("connection reset".into()))
                }))
                .boxed()
        } else {
            events.boxed()
        }
    }
    fn subscribe_stream(
        &self,
        stream: &StreamId,
        start: Start,
    ) -> impl Stream<Item = tidings::store::EventStreamItem> + Send + 'static {
        self.inner.subscribe_stream(stream, start)
    }
}

#[tokio::test]
async fn a_failing_subscription_is_made_again_from_the_last_confirmed_position() {
    let inner = InMemoryStore::new();
    append(&inner, "order-1", &["A", "B", "C", "D", "E", "F", "G"]).await;
    let store = RestartingStore {
        inner: inner.clone(),
        failures_left: Arc::new(AtomicU32::new(2)),
        subscriptions: Arc::default(),
    };
    let transport = TestTransport::default();
    let relay = Arc::new(
        OutboxRelay::builder_with(
            "restarts",
            store.clone(),
            transport.clone(),
            InMemoryCheckpoints::new(),
        )
        .backoff(fast())
        .build()
        .unwrap(),
    );
    let (stop, task) = start(relay.clone());
    wait_relayed(&relay, 7).await;
    stop.send(()).unwrap();
    let stats = task.await.unwrap().unwrap();
    assert_eq!(stats.resubscribes, 2);
    assert_eq!(store.subscriptions.load(Ordering::SeqCst), 3);
    let confirmed: Vec<String> = transport
        .confirmed()
        .iter()
        .map(|m| m.event.event_type.clone())
        .collect();
    assert_eq!(confirmed, ["A", "B", "C", "D", "E", "F", "G"]);
}

#[test]
fn topics_are_checked_when_built() {
    let store = InMemoryStore::new();
    let bad_topic = OutboxRelay::builder("x", store, InMemoryTransport::new())
        .topics(TopicMap::new("events").route("A", "no spaces allowed"))
        .build();
    assert!(bad_topic.is_err());
}
