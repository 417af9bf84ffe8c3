//! The writer: one task per store handle that runs appends, grouping concurrent ones
//! into one transaction (group commit).
//!
//! Every append of a process must serialize on the position counter anyway (see
//! `docs/decisions/0005-postgres-store.md`), and each transaction then pays one WAL flush
//! while holding it. Appends that arrive while a transaction is in flight wait in a
//! queue; the next transaction takes them all (up to [`MAX_BATCH`] appends and the
//! append size limit), so concurrent writers share flushes instead of queueing on the
//! counter one flush at a time.

use std::collections::HashSet;

use sqlx::PgPool;
use tidings_core::{AppendResult, Limits, StoreError};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::append::{Append, append_batch};
use crate::error::DEADLINES;
use crate::listener::{HeadSender, advance};
use crate::options::Deadlines;

/// Most appends in one transaction.
pub(crate) const MAX_BATCH: usize = 64;
/// Appends waiting for the writer before `append` itself waits.
const QUEUE: usize = 1024;

/// An append and where its answer goes.
pub(crate) struct Request {
    pub(crate) append: Append,
    pub(crate) size: usize,
    pub(crate) reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// The sending side, kept by the store.
pub(crate) type Queue = mpsc::Sender<Request>;

/// Starts the writer on `pool`, whose connections carry `deadlines` as `lock_timeout`
/// and `statement_timeout`; it ends when every sender is gone.
pub(crate) fn spawn(
    pool: PgPool,
    deadlines: Deadlines,
    channel: String,
    head: HeadSender,
    limits: Limits,
) -> Queue {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(run(pool, deadlines, channel, head, limits, rx));
    tx
}

async fn run(
    pool: PgPool,
    deadlines: Deadlines,
    channel: String,
    head: HeadSender,
    limits: Limits,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut held: Option<Request> = None;
    loop {
        let first = match held.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => return,
            },
        };
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
        let answers = DEADLINES
            .scope(deadlines, append_batch(&pool, &channel, &appends))
            .await;
        if let Some(last) = answers
            .iter()
            .filter_map(|a| a.as_ref().ok().map(|r| r.position))
            .max()
        {
            advance(&head, last);
        }
        for (reply, answer) in replies.into_iter().zip(answers) {
            // The caller may have stopped waiting; its append stands all the same.
            let _ = reply.send(answer);
        }
    }
}
