//! One commit group: the appends taken together, checked, encoded and written with one
//! write, then synced with one `fdatasync` and acknowledged together.
//!
//! ```text
//! commit:  refuse if stopped or closed
//!          ─► start: the group's first position, the durable point its frames record
//!          ─► per append (the group's own, then the last call's):
//!                check  expected version and ids against this group, the groups still
//!                       syncing (newest first) and the index; replays are answered
//!                make room  roll to a new segment when the frame does not fit
//!                encode one frame at the end of the buffer, claim its ids and revisions
//!          ─► write the buffer (padded to a page) at the segment's end
//!          ─► stage: hand to the sync thread, or finish here (inline, or not durable)
//! ```
//!
//! A group's frames go to [`crate::record`]'s layout; each records the first position
//! not yet known to be durable when it was written (`group_first`), so recovery can tell
//! a torn tail from damage.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tidings_core::backend::{IdLocation, decide_idempotent};
use tidings_core::event::timestamp_to_micros;
use tidings_core::{
    AppendResult, Event, ExpectedVersion, Position, Revision, StoreError, StreamId,
};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Finish, Writer, micros_since};
use crate::error::LogError;
use crate::index::{FingerprintHasher, Loc, LogIndex, SegmentEntry, fingerprint};
use crate::reader;
use crate::record::{self, FrameSpec};
use crate::segment::FOOTER_LEN;
use crate::storage::{DIRECT_ALIGN, StorageFile};

type FpMap<V> = HashMap<u64, V, std::hash::BuildHasherDefault<FingerprintHasher>>;

/// A reply channel for an append.
pub(crate) type AppendReply = oneshot::Sender<Result<AppendResult, StoreError>>;

/// An append on its way into the writer: a member of a commit group, whether it came
/// through the writer thread's channel or commits inline.
pub(crate) struct Append {
    pub stream: StreamId,
    pub expected: ExpectedVersion,
    pub events: Vec<Event>,
    /// The events' size, counted against a group's byte budget.
    pub size: usize,
    pub reply: AppendReply,
}

impl Append {
    /// An append and the receiver its answer arrives on.
    pub(crate) fn new(
        stream: StreamId,
        expected: ExpectedVersion,
        events: Vec<Event>,
        size: usize,
    ) -> (Self, oneshot::Receiver<Result<AppendResult, StoreError>>) {
        let (reply, rx) = oneshot::channel();
        let append = Self {
            stream,
            expected,
            events,
            size,
            reply,
        };
        (append, rx)
    }
}

/// A group's frames, with what later appends are checked against until it is published.
pub(super) struct Pending {
    /// The group's first position.
    pub first: Position,
    pub frames: Vec<PendingFrame>,
    /// The streams' heads after this group.
    heads: HashMap<StreamId, Revision, std::hash::BuildHasherDefault<crate::tags::KeyHasher>>,
    /// Ids of the group's events, by fingerprint: (frame, event) to confirm against.
    ids: FpMap<(u32, u32)>,
}

impl Pending {
    /// Where this group records `id`, whose fingerprint is `fp`, if it does.
    fn pending_id(&self, fp: u64, id: &Uuid) -> Option<IdLocation> {
        let &(fi, k) = self.ids.get(&fp)?;
        let f = self.frames.get(fi as usize)?;
        (f.events.get(k as usize)?.event_id == *id).then(|| IdLocation {
            stream: f.stream.clone(),
            revision: f.first_revision + u64::from(k),
            position: f.first_position + u64::from(k),
        })
    }
}

/// One append's frame in a group.
pub(super) struct PendingFrame {
    pub stream: StreamId,
    pub first_position: Position,
    first_revision: Revision,
    pub loc: Loc,
    pub events: Vec<Event>,
}

/// A group written to its segment and not yet synced: what finishing it takes.
pub(super) struct Staged {
    pub pending: Arc<Pending>,
    /// The segment the group ends in, and its path (for messages).
    pub file: Arc<dyn StorageFile>,
    pub path: PathBuf,
    pub durable: bool,
    pub ordinal: usize,
    /// The segment's data end after the group.
    pub end: u64,
    /// The position after the group.
    pub next: Position,
    pub recorded_at: i64,
    pub waiting: Vec<(AppendReply, AppendResult)>,
    /// Segments sealed and started while writing the group.
    pub new_segments: Vec<(usize, u64, SegmentEntry)>,
    pub frame_bytes: u64,
    pub write_micros: u64,
}

/// A group being built, before it is written.
struct Group {
    /// The group's first position.
    first: Position,
    /// Everything before this is synced; frames record it for recovery.
    durable_next: Position,
    /// The position the next append of the group gets.
    next: Position,
    recorded_at: i64,
    /// Where the writer's buffer starts in the active segment.
    buf_start: u64,
    pending: Pending,
    /// Answers to send once the group is durable.
    waiting: Vec<(AppendReply, AppendResult)>,
    new_segments: Vec<(usize, u64, SegmentEntry)>,
    frame_bytes: u64,
    /// Why the group's remaining appends fail (a roll failed): the store's stop reason.
    failure: Option<String>,
}

impl Writer {
    /// Commits a group: checks and encodes it against the published index and the groups
    /// still with the sync thread, writes it, then either finishes it here (after those
    /// groups: sync, publish, acknowledge) or hands it to the sync thread and returns, so
    /// the next group's checks, encoding and write overlap this group's `fdatasync`. True
    /// when frames were written (and, when finished here, acknowledged).
    pub(super) fn commit(
        &mut self,
        group: Vec<Append>,
        more: &mut dyn FnMut() -> Option<Append>,
        finish: Finish,
    ) -> bool {
        if let Some(refused) = self.refusal() {
            for a in group {
                let _ = a.reply.send(Err(refused.clone()));
            }
            return false;
        }
        self.sync.reap();
        let mut g = self.start_group(&group);
        let mut group = group.into_iter();
        while let Some(a) = group.next().or_else(&mut *more) {
            if let Some((a, current)) = self.check(&mut g, a) {
                self.add(&mut g, a, current);
            }
        }
        let write_micros = match self.write(&mut g) {
            Ok(micros) => micros,
            Err(reason) => {
                self.fail(g, &reason);
                return false;
            }
        };
        if g.next == g.first {
            self.answer_unwritten(g);
            return false;
        }
        tracing::trace!(
            events = g.next - g.first,
            bytes = g.frame_bytes,
            "group written"
        );
        let staged = self.stage(g, write_micros);
        if finish == Finish::Inline || !self.cfg.durable {
            return self.sync.finish_here(staged);
        }
        self.sync.hand(staged)
    }

    /// Why no group can be committed now, if none can: the store stopped or closed.
    fn refusal(&self) -> Option<StoreError> {
        if let Some(m) = self.shared.stopped_reason() {
            return Some(StoreError::Stopped(m));
        }
        self.closed.then_some(StoreError::Closed)
    }

    /// An empty group starting at the next position, sized for `appends`.
    fn start_group(&mut self, appends: &[Append]) -> Group {
        let events: usize = appends.iter().map(|a| a.events.len()).sum();
        // Keep the committed bytes on the page where the group starts (the buffer holds
        // the segment's bytes from its start up to `offset`).
        let buf_start = self.buf_start();
        let page_start = self.offset - self.offset % DIRECT_ALIGN as u64;
        let len = self.buf.len();
        self.buf.keep((page_start - buf_start) as usize..len);
        Group {
            first: self.next,
            durable_next: self.sync.durable_next(self.next),
            next: self.next,
            recorded_at: timestamp_to_micros(self.cfg.clock.now()),
            buf_start: page_start,
            pending: Pending {
                first: self.next,
                frames: Vec::with_capacity(appends.len()),
                heads: HashMap::with_capacity_and_hasher(appends.len(), Default::default()),
                ids: FpMap::with_capacity_and_hasher(events, Default::default()),
            },
            waiting: Vec::with_capacity(appends.len()),
            new_segments: Vec::new(),
            frame_bytes: 0,
            failure: None,
        }
    }

    /// Checks an append's expected version and ids against this group, the groups still
    /// syncing and the index. Answers it when it is refused or replays an append already
    /// recorded (once that one is durable); otherwise gives it back with its stream's
    /// current revision, to be added.
    fn check(&self, g: &mut Group, a: Append) -> Option<(Append, Option<Revision>)> {
        // The lock is taken per append, not across the group: the sync thread needs
        // the write lock to publish the group before this one.
        let (current, replay) = {
            let ix = self.shared.read_index();
            let unpublished = self.sync.unpublished();
            let known = g.pending.heads.get(a.stream.as_str()).or_else(|| {
                unpublished
                    .iter()
                    .rev()
                    .find_map(|p| p.heads.get(a.stream.as_str()))
            });
            let current = match known {
                Some(&r) => Some(r),
                None => match ix.stream_version(a.stream.as_str()) {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = a.reply.send(Err(reader::index_err(e)));
                        return None;
                    }
                },
            };
            // Every id is looked up in the index in bulk (see `LogIndex::id_candidates`),
            // then in this group and the groups still syncing. An id the index cannot be
            // read for must not pass as new.
            let fps: Vec<u64> = a.events.iter().map(|e| fingerprint(&e.event_id)).collect();
            let (candidates, mut failed) = match ix.id_candidates(&fps) {
                Ok(c) => (c, None),
                Err(e) => (Vec::new(), Some(reader::index_err(e))),
            };
            let mut found = Vec::with_capacity(fps.len());
            for ((e, &fp), &candidate) in a.events.iter().zip(&fps).zip(&candidates) {
                let id = &e.event_id;
                let here = g
                    .pending
                    .pending_id(fp, id)
                    .or_else(|| unpublished.iter().rev().find_map(|p| p.pending_id(fp, id)));
                found.push(here.or_else(|| {
                    let p = candidate?;
                    match committed_id(&ix, id, p) {
                        Ok(found) => found,
                        Err(e) => {
                            failed.get_or_insert(e);
                            None
                        }
                    }
                }));
            }
            if let Some(e) = failed {
                let _ = a.reply.send(Err(e));
                return None;
            }
            let replay = decide_idempotent(&a.stream, a.expected, current, &a.events, &found);
            (current, replay)
        };
        match replay {
            Err(e) => {
                let _ = a.reply.send(Err(e));
                return None;
            }
            // Recorded by this group or by one not yet known to be durable: answered
            // once this group is.
            Ok(Some(result)) if result.position >= g.durable_next => {
                g.waiting.push((a.reply, result));
                return None;
            }
            Ok(Some(result)) => {
                let _ = a.reply.send(Ok(result));
                return None;
            }
            Ok(None) => {}
        }
        if !a.expected.accepts(current) {
            let _ = a.reply.send(Err(StoreError::WrongExpectedVersion {
                stream: a.stream.clone(),
                expected: a.expected,
                actual: current,
            }));
            return None;
        }
        Some((a, current))
    }

    /// Adds a checked append to the group: makes room for its frame (rolling to a new
    /// segment if needed) and encodes it. Once a roll failed, the group's remaining
    /// appends fail with the store's stop reason.
    fn add(&mut self, g: &mut Group, a: Append, current: Option<Revision>) {
        if g.failure.is_none()
            && let Err(e) = self.make_room(g, &a)
        {
            g.failure = Some(e.into_stop_reason());
        }
        if let Some(m) = &g.failure {
            let _ = a.reply.send(Err(StoreError::Stopped(m.clone())));
            return;
        }
        self.encode(g, a, current);
    }

    /// Rolls to a new segment when `a`'s frame, after what the group has so far, would
    /// not leave room for the footer in the active one.
    fn make_room(&mut self, g: &mut Group, a: &Append) -> Result<(), LogError> {
        let len = record::frame_len(&a.stream, &a.events) as u64;
        let end = g.buf_start + self.buf.len() as u64;
        if end + len + FOOTER_LEN > self.capacity {
            self.roll(&mut g.buf_start, g.next, len, &mut g.new_segments)?;
        }
        Ok(())
    }

    /// Encodes `a` as the group's next frame, claims its positions, revisions and ids
    /// for the group's later appends, and queues its answer for when the group is
    /// durable.
    fn encode(&mut self, g: &mut Group, a: Append, current: Option<Revision>) {
        let first_revision = current.map_or(0, |c| c + 1);
        let n = a.events.len() as u64;
        let offset = g.buf_start + self.buf.len() as u64;
        let before = self.buf.len();
        record::encode_frame(
            &mut self.buf,
            &FrameSpec {
                first_position: g.next,
                group_first: g.durable_next,
                first_revision,
                recorded_at: g.recorded_at,
                stream: &a.stream,
                events: &a.events,
            },
        );
        g.frame_bytes += (self.buf.len() - before) as u64;
        // Later appends of this group (its own, or ones the last call brings) must
        // see these ids as taken.
        let pending = &mut g.pending;
        let fi = pending.frames.len() as u32;
        for (k, e) in a.events.iter().enumerate() {
            pending.ids.insert(fingerprint(&e.event_id), (fi, k as u32));
        }
        pending
            .heads
            .insert(a.stream.clone(), first_revision + n - 1);
        g.waiting.push((
            a.reply,
            AppendResult {
                first_revision,
                next_expected_version: first_revision + n - 1,
                first_position: g.next,
                position: g.next + n - 1,
            },
        ));
        pending.frames.push(PendingFrame {
            stream: a.stream,
            first_position: g.next,
            first_revision,
            loc: Loc::new(self.ordinal, offset),
            events: a.events,
        });
        g.next += n;
    }

    /// Writes the group's frames at the active segment's end and moves the writer past
    /// them; returns the time the write took, in microseconds. Fails with the store's
    /// stop reason when a roll failed, the store stopped or the write failed: nothing is
    /// written once the store has stopped.
    ///
    /// The groups before this one may still be syncing: this one is written now (its
    /// frames say which positions were durable before it, for recovery) and acknowledged
    /// after them, in order.
    fn write(&mut self, g: &mut Group) -> Result<u64, String> {
        if let Some(m) = g.failure.take().or_else(|| self.shared.stopped_reason()) {
            return Err(m);
        }
        let data_len = self.buf.len();
        let mut write_micros = 0;
        if g.next > g.first {
            let io_started = std::time::Instant::now();
            self.write_pages(g.buf_start)
                .map_err(LogError::into_stop_reason)?;
            write_micros = micros_since(io_started);
        }
        self.buf.truncate(data_len);
        self.offset = g.buf_start + data_len as u64;
        if g.next > g.first {
            self.maybe_hand_to_tail(g.buf_start);
        }
        self.next = g.next;
        Ok(write_micros)
    }

    /// Fails a group that could not be written: stops the store (if it is not stopped
    /// already) and fails every append waiting in the group.
    fn fail(&self, g: Group, reason: &str) {
        if self.shared.stopped_reason().is_none() {
            self.shared.stop(reason);
        }
        for (reply, _) in g.waiting {
            let _ = reply.send(Err(StoreError::Stopped(reason.to_owned())));
        }
    }

    /// Answers a group that wrote nothing new: its replays may refer to groups still
    /// syncing, so they are answered once those are finished.
    fn answer_unwritten(&mut self, g: Group) {
        if !g.waiting.is_empty() {
            self.sync.wait();
        }
        let stopped = self.shared.stopped_reason();
        for (reply, result) in g.waiting {
            let _ = reply.send(match &stopped {
                Some(m) => Err(StoreError::Stopped(m.clone())),
                None => Ok(result),
            });
        }
    }

    /// A written group, with what finishing it takes.
    fn stage(&self, g: Group, write_micros: u64) -> Staged {
        Staged {
            pending: Arc::new(g.pending),
            file: self.file.clone(),
            path: self.path.clone(),
            durable: self.cfg.durable,
            ordinal: self.ordinal,
            end: self.offset,
            next: g.next,
            recorded_at: g.recorded_at,
            waiting: g.waiting,
            new_segments: g.new_segments,
            frame_bytes: g.frame_bytes,
            write_micros,
        }
    }
}

/// Whether `id`, which the index gives `p` as a candidate for, was recorded there:
/// confirmed by reading the event (fingerprints can collide).
fn committed_id(ix: &LogIndex, id: &Uuid, p: Position) -> Result<Option<IdLocation>, StoreError> {
    let plan = reader::plan_positions(ix, std::iter::once(p))?;
    let Some(e) = reader::read_positions(&plan)?.pop() else {
        return Ok(None);
    };
    Ok((e.event_id == *id).then(|| IdLocation {
        stream: e.stream.clone(),
        revision: e.revision,
        position: e.position,
    }))
}
