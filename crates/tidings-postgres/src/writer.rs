//! The writer: one task per store handle that runs appends, grouping concurrent ones
//! into one transaction (group commit).
//!
//! Each transaction pays one WAL flush. Appends that arrive while a transaction is in
//! flight wait in a queue; the next transaction takes them all (up to [`MAX_BATCH`]
//! appends and the append size limit), so concurrent writers of one handle share one
//! flush and one statement (`append_group.sql`, decisions 0005 and 0024). One
//! transaction at a time: several in flight on more connections measured slower, as
//! smaller batches cost more CPU per append on both sides and the machine's cores, not
//! the flush, were the limit (decision 0024).
//! Writers of different handles and processes share flushes in PostgreSQL itself, as
//! positions are claimed without holding a shared row until commit (decisions 0020,
//! 0022). After each transaction the writer hands its highest committed position to the
//! notifier (`notifier.rs`), which announces it to other processes off the append's path.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::PgPool;
use tidings_core::{AppendResult, Limits, StoreError};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::append::{Append, append_batch};
use crate::error::DEADLINES;
use crate::listener::{HeadSender, HorizonWake, advance};
use crate::notifier::{Announce, announce};
use crate::options::Deadlines;

/// Most appends in one transaction.
pub(crate) const MAX_BATCH: usize = 64;
/// Appends waiting for the writer before `append` itself waits.
const QUEUE: usize = 1024;
/// Positions at which a writer whose appends pass them analyzes the tables appends read
/// by key (`analyze_tables.sql`): plans cached while they were nearly empty are made
/// again. Positions, not this writer's own count: with many processes appending, the
/// tables grow with all of them, and a plan that scans the whole table costs each
/// append more than the last until someone analyzes it.
const ANALYZE_AT: [u64; 2] = [1_000, 10_000];

/// An append and where its answer goes.
pub(crate) struct Request {
    pub(crate) append: Append,
    pub(crate) size: usize,
    pub(crate) reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// The sending side, kept by the store.
pub(crate) type Queue = mpsc::Sender<Request>;

/// Where the writer reports what it committed.
pub(crate) struct Reports {
    /// The head every handle of the store shares.
    pub(crate) head: HeadSender,
    /// Marked stale when an append's horizon was not read (nobody watched the head).
    pub(crate) wake: Arc<HorizonWake>,
    /// The notifier, which announces commits to other processes.
    pub(crate) announce: Announce,
}

/// Starts the writer on `pool`, whose connections carry `deadlines` as `lock_timeout`
/// and `statement_timeout` (`maintenance`, the store's main pool, runs its `ANALYZE`s);
/// it ends when every sender is gone.
pub(crate) fn spawn(
    pool: PgPool,
    maintenance: PgPool,
    deadlines: Deadlines,
    reports: Reports,
    limits: Limits,
) -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(pool, maintenance, deadlines, reports, limits, rx));
    tx
}

async fn run(
    pool: PgPool,
    maintenance: PgPool,
    deadlines: Deadlines,
    reports: Reports,
    limits: Limits,
    mut rx: mpsc::Receiver<Request>,
) {
    let Reports {
        head,
        wake,
        announce: notifier,
    } = reports;
    let mut held: Option<Request> = None;
    // The highest position this writer committed.
    let mut highest: Option<u64> = None;
    loop {
        let first = match held.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
        fill(&rx).await;
        let mut ids: HashSet<Uuid> = first.append.events.iter().map(|e| e.event_id).collect();
        let mut bytes = first.size;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            let Ok(next) = rx.try_recv() else { break };
            // An append sharing an id with the batch (a retry racing its original) is
            // decided after the batch, so it sees what the batch recorded.
            let repeats = next.append.events.iter().any(|e| ids.contains(&e.event_id));
            if repeats || bytes + next.size > limits.max_append_bytes {
                held = Some(next);
                break;
            }
            ids.extend(next.append.events.iter().map(|e| e.event_id));
            bytes += next.size;
            batch.push(next);
        }
        let (appends, replies): (Vec<Append>, Vec<_>) =
            batch.into_iter().map(|r| (r.append, r.reply)).unzip();
        // The horizon after a claim costs a scan of pg_locks when other claims are live;
        // it is worth it only while someone watches the head.
        let want_horizon = head.receiver_count() > 0;
        let outcome = DEADLINES
            .scope(deadlines, append_batch(&pool, &appends, want_horizon))
            .await;
        // Everything below the horizon the batch saw is settled now that it committed.
        // Its own events above it are announced by the notifier, and seen once the
        // claims below them are settled too (listener.rs).
        match outcome.seen.horizon {
            Some(horizon) => {
                if let Some(visible) = horizon.checked_sub(1) {
                    advance(&head, visible);
                }
            }
            None => wake.mark_stale(),
        }
        if let Some(last) = outcome
            .answers
            .iter()
            .filter_map(|a| a.as_ref().ok())
            .map(|r| r.position)
            .max()
        {
            // A claim taken while nobody listened needs no announcement: a listener that
            // starts later reads the horizon itself (migration 0008).
            if outcome.seen.listened {
                announce(&notifier, last);
            }
            if let Some(before) = highest
                && ANALYZE_AT.iter().any(|&n| before < n && last >= n)
            {
                tokio::spawn(analyze(maintenance.clone()));
            }
            highest = highest.max(Some(last));
        }
        for (reply, answer) in replies.into_iter().zip(outcome.answers) {
            // The caller may have stopped waiting; its append stands all the same.
            let _ = reply.send(answer);
        }
    }
}

/// Yields to the runtime while appenders already running keep queueing: callers woken
/// by the last batch's answers are about to send their next appends, and a batch that
/// takes them too shares one statement and one flush instead of leaving them for
/// another round trip. Stops as soon as a yield brings nothing new (a lone writer pays
/// one yield).
async fn fill(rx: &mpsc::Receiver<Request>) {
    for _ in 0..FILL_YIELDS {
        let before = rx.len();
        tokio::task::yield_now().await;
        if rx.len() == before || rx.len() >= MAX_BATCH {
            return;
        }
    }
}

/// Most yields [`fill`] makes before a batch starts.
const FILL_YIELDS: usize = 8;

/// Refreshes the statistics of the tables appends read by key, so that every session
/// plans its statements again (a plan from a nearly empty table would scan it whole).
async fn analyze(pool: PgPool) {
    if let Err(e) = sqlx::query(include_str!("../sql/queries/analyze_tables.sql"))
        .execute(&pool)
        .await
    {
        tracing::warn!(error = %e, "analyzing the event tables failed; autovacuum will");
    }
}
