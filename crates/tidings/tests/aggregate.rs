//! Aggregates, the repository, snapshots and upcasting on load.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use serde::{Deserialize, Serialize};
use serde_json::json;
use tidings::aggregate::{
    Aggregate, AggregateRoot, InMemorySnapshotStore, Repository, RepositoryError, Snapshot,
    SnapshotPolicy, SnapshotStore,
};
use tidings::{
    DecodeError, Enricher, EventAppender, EventReader, ExpectedVersion, InMemoryStore, NewEvent,
    Payload, ReadStream, StreamId, UpcastError, Upcaster, Upcasters,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "eventType", content = "data", rename_all_fields = "camelCase")]
enum CartEvent {
    ItemAdded {
        sku: String,
        quantity: u32,
        unit_cents: u64,
    },
    CheckedOut {
        total_cents: u64,
    },
}
tidings::domain_event!(CartEvent { ItemAdded => "2.0", CheckedOut => "1.0" });

#[derive(Debug, Clone, PartialEq)]
enum CartCommand {
    Add {
        sku: String,
        quantity: u32,
        unit_cents: u64,
    },
    CheckOut,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum CartError {
    #[error("quantity must be positive")]
    ZeroQuantity,
    #[error("the cart is checked out")]
    CheckedOut,
    #[error("the cart is empty")]
    Empty,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cart {
    lines: u32,
    total_cents: u64,
    checked_out: bool,
}

impl Aggregate for Cart {
    const TYPE: &'static str = "Cart";
    const SNAPSHOT_VERSION: &'static str = "3";
    type Command = CartCommand;
    type Event = CartEvent;
    type Error = CartError;

    fn handle(&self, command: CartCommand) -> Result<Vec<CartEvent>, CartError> {
        if self.checked_out {
            return Err(CartError::CheckedOut);
        }
        match command {
            CartCommand::Add { quantity: 0, .. } => Err(CartError::ZeroQuantity),
            CartCommand::Add {
                sku,
                quantity,
                unit_cents,
            } => Ok(vec![CartEvent::ItemAdded {
                sku,
                quantity,
                unit_cents,
            }]),
            CartCommand::CheckOut if self.lines == 0 => Err(CartError::Empty),
            CartCommand::CheckOut => Ok(vec![CartEvent::CheckedOut {
                total_cents: self.total_cents,
            }]),
        }
    }

    fn apply(&mut self, event: &CartEvent) {
        match event {
            CartEvent::ItemAdded {
                quantity,
                unit_cents,
                ..
            } => {
                self.lines += 1;
                self.total_cents += u64::from(*quantity) * unit_cents;
            }
            CartEvent::CheckedOut { .. } => self.checked_out = true,
        }
    }
}

fn add(sku: &str, quantity: u32) -> CartCommand {
    CartCommand::Add {
        sku: sku.into(),
        quantity,
        unit_cents: 250,
    }
}

fn cart() -> StreamId {
    StreamId::new("cart-1").unwrap()
}

fn repo(store: &InMemoryStore) -> Repository<Cart, InMemoryStore> {
    Repository::new(store.clone(), Enricher::new("cart-service"))
}

/// Version 1.0 of ItemAdded had a price in whole units and no quantity.
fn upcasters() -> Upcasters {
    Upcasters::new()
        .with(Upcaster::new("ItemAdded", "1.0", "2.0", |mut d| {
            let price = d["price"].as_u64().ok_or("price is not a whole number")?;
            d["unitCents"] = json!(price * 100);
            d["quantity"] = json!(1);
            Ok(d)
        }))
        .unwrap()
}

#[tokio::test]
async fn a_saved_aggregate_loads_back() {
    let store = InMemoryStore::new();
    let repo = repo(&store);
    let mut root = repo.load(&cart()).await.unwrap();
    assert_eq!(root.version(), None);
    assert_eq!(root.expected_version(), ExpectedVersion::NoStream);
    root.execute(add("a", 2)).unwrap();
    root.execute(add("b", 1)).unwrap();
    assert_eq!(root.uncommitted().len(), 2);
    let r = repo.save(&mut root).await.unwrap().unwrap();
    assert_eq!(r.next_expected_version, 1);
    assert!(root.uncommitted().is_empty());
    assert_eq!(repo.save(&mut root).await.unwrap(), None);

    let loaded = repo.load(&cart()).await.unwrap();
    assert_eq!(loaded.version(), Some(1));
    assert_eq!(loaded.state().total_cents, 750);
    let stored = store
        .read_stream(&cart(), ReadStream::forward())
        .await
        .unwrap();
    assert_eq!(stored[0].event_version, "2.0");
    assert_eq!(stored[0].source, "cart-service");
}

#[tokio::test]
async fn a_refused_command_changes_nothing() {
    let mut root = AggregateRoot::<Cart>::new(cart());
    assert_eq!(
        root.execute(add("a", 0)).unwrap_err(),
        CartError::ZeroQuantity
    );
    assert_eq!(
        root.execute(CartCommand::CheckOut).unwrap_err(),
        CartError::Empty
    );
    assert!(root.uncommitted().is_empty());
    assert_eq!(root.state().lines, 0);
}

#[tokio::test]
async fn a_conflict_is_typed_and_keeps_the_events_uncommitted() {
    let store = InMemoryStore::new();
    let repo = repo(&store);
    let mut first = repo.load(&cart()).await.unwrap();
    first.execute(add("a", 1)).unwrap();
    repo.save(&mut first).await.unwrap();

    let mut one = repo.load(&cart()).await.unwrap();
    let mut two = repo.load(&cart()).await.unwrap();
    one.execute(add("b", 1)).unwrap();
    two.execute(add("c", 1)).unwrap();
    repo.save(&mut one).await.unwrap();
    let err = repo.save(&mut two).await.unwrap_err();
    assert_eq!(
        err,
        RepositoryError::Conflict {
            stream: cart(),
            expected: ExpectedVersion::Exact(0),
            actual: Some(1)
        }
    );
    assert_eq!(two.uncommitted().len(), 1);
    assert_eq!(two.version(), Some(0));
    assert_eq!(store.all_events().len(), 2);

    // Reload and retry: the command runs on the new state.
    let mut retry = repo.load(&cart()).await.unwrap();
    retry.execute(add("c", 1)).unwrap();
    repo.save(&mut retry).await.unwrap();
    assert_eq!(repo.load(&cart()).await.unwrap().state().lines, 3);
}

#[tokio::test]
async fn snapshots_are_taken_every_n_events_and_loads_start_from_them() {
    let store = InMemoryStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let repo = repo(&store).with_snapshots(snapshots.clone(), SnapshotPolicy::every(3).unwrap());
    let mut root = repo.load(&cart()).await.unwrap();
    root.execute(add("a", 1)).unwrap();
    root.execute(add("b", 1)).unwrap();
    repo.save(&mut root).await.unwrap();
    assert!(snapshots.is_empty());
    root.execute(add("c", 1)).unwrap();
    repo.save(&mut root).await.unwrap();
    let snap = snapshots.get(&cart()).unwrap();
    assert_eq!((snap.revision, snap.schema_version.as_str()), (2, "3"));

    // Proof the load starts at the snapshot: doctor its state, then add an event after it.
    let mut doctored = snap.clone();
    doctored.state =
        Payload::parse(r#"{"lines":100,"total_cents":0,"checked_out":false}"#).unwrap();
    snapshots.save(doctored.clone()).await.unwrap();
    let mut root = repo.load(&cart()).await.unwrap();
    assert_eq!(root.state().lines, 100);
    root.execute(add("d", 1)).unwrap();
    repo.save(&mut root).await.unwrap();
    let loaded = repo.load(&cart()).await.unwrap();
    assert_eq!((loaded.state().lines, loaded.version()), (101, Some(3)));
}

#[tokio::test]
async fn a_snapshot_of_an_unknown_schema_version_or_shape_is_ignored() {
    let store = InMemoryStore::new();
    let snapshots = InMemorySnapshotStore::new();
    let repo = repo(&store).with_snapshots(snapshots.clone(), SnapshotPolicy::Never);
    let mut root = repo.load(&cart()).await.unwrap();
    root.execute(add("a", 4)).unwrap();
    repo.save(&mut root).await.unwrap();
    for (schema, state) in [
        ("2", r#"{"lines":100,"total_cents":0,"checked_out":false}"#),
        ("3", r#"{"rows":[]}"#),
    ] {
        snapshots
            .save(Snapshot {
                stream: cart(),
                revision: 0,
                schema_version: schema.into(),
                state: Payload::parse(state).unwrap(),
                taken_at: jiff::Timestamp::UNIX_EPOCH,
            })
            .await
            .unwrap();
        let loaded = repo.load(&cart()).await.unwrap();
        assert_eq!(loaded.state().lines, 1, "snapshot {schema} {state}");
        assert_eq!(loaded.state().total_cents, 1000);
        assert_eq!(loaded.version(), Some(0));
    }
}

async fn store_with_old_event() -> InMemoryStore {
    let store = InMemoryStore::new();
    let old = Enricher::new("legacy")
        .enrich(NewEvent::new("ItemAdded", json!({"sku": "a", "price": 3})).with_version("1.0"))
        .unwrap();
    store
        .append(&cart(), ExpectedVersion::NoStream, vec![old])
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn old_versions_are_upcast_on_load() {
    let store = store_with_old_event().await;
    let repo = repo(&store).with_upcasters(upcasters());
    let loaded = repo.load(&cart()).await.unwrap();
    assert_eq!(loaded.state().total_cents, 300);

    let err = self::repo(&store).load(&cart()).await.unwrap_err();
    assert!(matches!(
        err,
        RepositoryError::Decode {
            revision: 0,
            source: DecodeError::UnknownVersion { .. },
            ..
        }
    ));
}

#[tokio::test]
async fn unloadable_streams_are_typed_errors() {
    let store = InMemoryStore::new();
    let bad_price = Enricher::new("legacy")
        .enrich(
            NewEvent::new("ItemAdded", json!({"sku": "a", "price": "three"})).with_version("1.0"),
        )
        .unwrap();
    store
        .append(&cart(), ExpectedVersion::NoStream, vec![bad_price])
        .await
        .unwrap();
    let err = repo(&store)
        .with_upcasters(upcasters())
        .load(&cart())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        RepositoryError::Upcast {
            source: UpcastError::Failed { .. },
            ..
        }
    ));

    let other = StreamId::new("cart-2").unwrap();
    let unknown = Enricher::new("x")
        .enrich(NewEvent::new("CartAbandoned", json!({})))
        .unwrap();
    store
        .append(&other, ExpectedVersion::NoStream, vec![unknown])
        .await
        .unwrap();
    assert!(matches!(
        repo(&store).load(&other).await.unwrap_err(),
        RepositoryError::Decode {
            source: DecodeError::UnknownType { .. },
            ..
        }
    ));
    let malformed = StreamId::new("cart-3").unwrap();
    let e = Enricher::new("x")
        .enrich(NewEvent::new("CheckedOut", json!({"total": 1})))
        .unwrap();
    store
        .append(&malformed, ExpectedVersion::NoStream, vec![e])
        .await
        .unwrap();
    assert!(matches!(
        repo(&store).load(&malformed).await.unwrap_err(),
        RepositoryError::Decode {
            source: DecodeError::Malformed { .. },
            ..
        }
    ));
}

#[tokio::test]
async fn saved_events_carry_the_given_metadata() {
    let store = InMemoryStore::new();
    let repo = repo(&store);
    let mut root = repo.load(&cart()).await.unwrap();
    root.execute(add("a", 1)).unwrap();
    let metadata = tidings::Metadata {
        correlation_id: Some("corr-9".into()),
        user_id: Some("user-7".into()),
        ..Default::default()
    };
    repo.save_with(&mut root, metadata).await.unwrap();
    let e = &store.all_events()[0];
    assert_eq!(e.metadata.correlation_id.as_deref(), Some("corr-9"));
    assert_eq!(e.metadata.user_id.as_deref(), Some("user-7"));
}

#[tokio::test]
async fn execute_loads_runs_and_saves_in_one_call() {
    use tidings::aggregate::CommandError;
    let store = InMemoryStore::new();
    let repo = repo(&store);
    let events = repo
        .execute(&cart(), add("a", 2), Default::default())
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    repo.execute(&cart(), CartCommand::CheckOut, Default::default())
        .await
        .unwrap();
    let err = repo
        .execute(&cart(), add("b", 1), Default::default())
        .await
        .unwrap_err();
    assert_eq!(err, CommandError::Rejected(CartError::CheckedOut));
    assert_eq!(store.all_events().len(), 2);
    let store_with_unknown = store_with_old_event().await;
    let err = self::repo(&store_with_unknown)
        .execute(&cart(), add("c", 1), Default::default())
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        CommandError::Repository(RepositoryError::Decode { .. })
    ));
}
