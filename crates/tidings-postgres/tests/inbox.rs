//! The transactional inbox: a handler's writes and its "handled" mark commit together, a
//! duplicate does not run the handler, a failed handler records nothing, concurrent
//! duplicates run it once, and old ids are pruned.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tidings_postgres::{DEFAULT_INBOX_RETENTION, HandleError, Handled, PgInbox, PgStore};
use uuid::Uuid;

use common::{database, fresh_store};

/// A store in a fresh schema with an `effects` table for handlers to write to.
async fn setup(url: &str) -> PgStore {
    let store = fresh_store(url).await;
    sqlx::query("CREATE TABLE effects (event_id uuid NOT NULL, note text NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    store
}

async fn effects(store: &PgStore, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE event_id = $1")
        .bind(id)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Handles `id` with a handler that writes one effect row (after `pause`), counts its
/// runs, and fails after writing when `fail`.
async fn handle(
    inbox: &PgInbox,
    id: Uuid,
    runs: &Arc<AtomicUsize>,
    pause: Duration,
    fail: bool,
) -> Result<Handled<u64>, HandleError<String>> {
    let runs = Arc::clone(runs);
    inbox
        .handle_once(id, move |conn| {
            Box::pin(async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let done = sqlx::query("INSERT INTO effects (event_id, note) VALUES ($1, 'x')")
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::sleep(pause).await;
                if fail {
                    return Err("refused".to_owned());
                }
                Ok(done.rows_affected())
            })
        })
        .await
}

#[tokio::test]
async fn the_effect_and_the_id_commit_together_and_a_duplicate_does_not_run() {
    let Some(url) =
        database("the_effect_and_the_id_commit_together_and_a_duplicate_does_not_run").await
    else {
        return;
    };
    let store = setup(&url).await;
    let inbox = PgInbox::new(&store, "billing");
    let runs = Arc::new(AtomicUsize::new(0));
    let id = Uuid::now_v7();

    let first = handle(&inbox, id, &runs, Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(first, Handled::Done(1));
    assert!(first.is_done());
    assert!(inbox.is_handled(id).await.unwrap());
    assert_eq!(effects(&store, id).await, 1);

    let second = handle(&inbox, id, &runs, Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(second, Handled::AlreadyHandled);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(effects(&store, id).await, 1);

    // Another consumer keeps its own ids.
    let other = PgInbox::new(&store, "shipping");
    assert!(!other.is_handled(id).await.unwrap());
    let third = handle(&other, id, &runs, Duration::ZERO, false)
        .await
        .unwrap();
    assert!(third.is_done());
    assert_eq!(effects(&store, id).await, 2);

    store.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_failing_handler_leaves_neither_the_effect_nor_the_id() {
    let Some(url) = database("a_failing_handler_leaves_neither_the_effect_nor_the_id").await else {
        return;
    };
    let store = setup(&url).await;
    let inbox = PgInbox::new(&store, "billing");
    let runs = Arc::new(AtomicUsize::new(0));
    let id = Uuid::now_v7();

    let failed = handle(&inbox, id, &runs, Duration::ZERO, true).await;
    assert!(
        matches!(&failed, Err(HandleError::Handler(e)) if e == "refused"),
        "{failed:?}"
    );
    assert!(!inbox.is_handled(id).await.unwrap());
    assert_eq!(effects(&store, id).await, 0);

    // The retry runs the handler again, and then it sticks.
    let retried = handle(&inbox, id, &runs, Duration::ZERO, false)
        .await
        .unwrap();
    assert!(retried.is_done());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    assert_eq!(effects(&store, id).await, 1);
    assert!(inbox.is_handled(id).await.unwrap());

    store.drop_schema().await.unwrap();
}

#[tokio::test]
async fn concurrent_duplicates_run_the_handler_once() {
    let Some(url) = database("concurrent_duplicates_run_the_handler_once").await else {
        return;
    };
    let store = setup(&url).await;
    // Two handles, as two instances of the consumer would have.
    let a = PgInbox::new(&store, "billing");
    let b = PgInbox::new(&store, "billing");
    let runs = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let id = Uuid::now_v7();
        let pause = Duration::from_millis(200);
        let (x, y) = tokio::join!(
            handle(&a, id, &runs, pause, false),
            handle(&b, id, &runs, pause, false)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x.is_done() != y.is_done(), "{x:?} {y:?}");
        assert_eq!(effects(&store, id).await, 1);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);

    // When the first one fails, the waiting duplicate runs instead.
    let id = Uuid::now_v7();
    let (x, y) = tokio::join!(
        handle(&a, id, &runs, Duration::from_millis(200), true),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            handle(&b, id, &runs, Duration::ZERO, false).await
        }
    );
    assert!(matches!(x, Err(HandleError::Handler(_))), "{x:?}");
    assert!(y.unwrap().is_done());
    assert_eq!(effects(&store, id).await, 1);

    store.drop_schema().await.unwrap();
}

#[tokio::test]
async fn claim_hands_over_the_transaction() {
    let Some(url) = database("claim_hands_over_the_transaction").await else {
        return;
    };
    let store = setup(&url).await;
    let inbox = PgInbox::new(&store, "billing");
    let id = Uuid::now_v7();

    // Dropped without commit: nothing is recorded.
    let tx = inbox
        .claim(id)
        .await
        .unwrap()
        .expect("a fresh id is claimed");
    drop(tx);
    assert!(!inbox.is_handled(id).await.unwrap());

    let mut tx = inbox.claim(id).await.unwrap().expect("still fresh");
    sqlx::query("INSERT INTO effects (event_id, note) VALUES ($1, 'claimed')")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(inbox.claim(id).await.unwrap().is_none());
    assert_eq!(effects(&store, id).await, 1);

    // Recording inside the caller's own transaction.
    let other = Uuid::now_v7();
    let mut tx = store.pool().begin().await.unwrap();
    assert!(inbox.record_in(&mut tx, other).await.unwrap());
    assert!(!inbox.record_in(&mut tx, other).await.unwrap());
    tx.commit().await.unwrap();
    assert!(inbox.is_handled(other).await.unwrap());
    assert!(!inbox.mark_handled(other).await.unwrap());

    store.drop_schema().await.unwrap();
}

#[tokio::test]
async fn prune_forgets_ids_older_than_the_window() {
    let Some(url) = database("prune_forgets_ids_older_than_the_window").await else {
        return;
    };
    let store = setup(&url).await;
    let inbox = PgInbox::new(&store, "billing");
    let other = PgInbox::new(&store, "shipping");
    let (old, young) = (Uuid::now_v7(), Uuid::now_v7());
    for id in [old, young] {
        assert!(inbox.mark_handled(id).await.unwrap());
        assert!(other.mark_handled(id).await.unwrap());
    }
    // Age `old` past the default window for both consumers.
    sqlx::query(
        "UPDATE tidings_inbox SET handled_at = now() - interval '8 days' WHERE event_id = $1",
    )
    .bind(old)
    .execute(store.pool())
    .await
    .unwrap();

    assert_eq!(inbox.prune(DEFAULT_INBOX_RETENTION).await.unwrap(), 1);
    assert!(!inbox.is_handled(old).await.unwrap());
    assert!(inbox.is_handled(young).await.unwrap());
    // Only this consumer's ids are pruned.
    assert!(other.is_handled(old).await.unwrap());
    assert_eq!(inbox.prune(DEFAULT_INBOX_RETENTION).await.unwrap(), 0);

    // A pruned id is handled again when it comes back.
    let runs = Arc::new(AtomicUsize::new(0));
    let again = handle(&inbox, old, &runs, Duration::ZERO, false)
        .await
        .unwrap();
    assert!(again.is_done());

    // A window of zero forgets everything recorded before now.
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(other.prune(Duration::ZERO).await.unwrap(), 2);
    assert_eq!(
        other.prune(Duration::from_secs(u64::MAX)).await.unwrap(),
        0,
        "a huge window prunes nothing and does not overflow"
    );

    store.drop_schema().await.unwrap();
}

#[cfg(feature = "inbox")]
#[tokio::test]
async fn pg_inbox_is_a_consumer_inbox() {
    use tidings_consumer::Inbox;

    let Some(url) = database("pg_inbox_is_a_consumer_inbox").await else {
        return;
    };
    let store = setup(&url).await;
    let inbox = PgInbox::new(&store, "billing");
    let id = Uuid::now_v7();
    assert!(!inbox.seen(id).await.unwrap());
    inbox.record(id).await.unwrap();
    assert!(inbox.seen(id).await.unwrap());
    inbox.record(id).await.unwrap(); // recording twice is fine

    // A new instance (after a restart) sees it; `handle_once` agrees with it.
    let restarted = Arc::new(PgInbox::new(&store, "billing"));
    assert!(restarted.seen(id).await.unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let outcome = handle(&restarted, id, &runs, Duration::ZERO, false)
        .await
        .unwrap();
    assert_eq!(outcome, Handled::AlreadyHandled);

    // And what `handle_once` recorded, the consumer's `seen` sees.
    let fresh = Uuid::now_v7();
    assert!(
        handle(&inbox, fresh, &runs, Duration::ZERO, false)
            .await
            .unwrap()
            .is_done()
    );
    assert!(restarted.seen(fresh).await.unwrap());
    restarted.record(fresh).await.unwrap();

    // Database failures are the inbox's backend errors, naming the consumer.
    store.close().await;
    let e = inbox.seen(id).await.unwrap_err();
    assert!(
        matches!(&e, tidings_consumer::InboxError::Backend { name, .. } if name == "billing"),
        "{e:?}"
    );

    let url2 = url.clone();
    let cleanup = common::store_in(&url2, store.schema()).await;
    cleanup.drop_schema().await.unwrap();
}
