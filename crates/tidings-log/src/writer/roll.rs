//! The active segment: how a group's bytes reach it, how the writer rolls over to a new
//! segment when a frame does not fit, and the next segment prepared in the background.
//!
//! ```text
//! active segment:  [ header | committed frames | this group's frames, padded to a page | zeros … | ]
//!                                             ▲ offset (writes start here, never before)
//! roll:            wait for the sync thread ─► write the frames so far and the footer
//!                  ─► fdatasync ─► install the prepared segment (rename + header write)
//!                     or create one ─► the group goes on at the new segment's header end
//! ```
//!
//! Segments are zero-filled ahead of use (decision record 0004): once the active segment
//! is half full, a background thread writes the next one, so rolling over costs a rename
//! and a header write. The layouts are in [`crate::segment`].

use tidings_core::Position;
use tidings_core::event::timestamp_to_micros;

use super::{Writer, micros_since};
use crate::error::LogError;
use crate::index::SegmentEntry;
use crate::segment::{self, FOOTER_LEN, HEADER_LEN};
use crate::storage::DIRECT_ALIGN;

/// The page size writes are padded to and start at.
const PAGE: u64 = DIRECT_ALIGN as u64;

impl Writer {
    /// Once the active segment is half full, zero-fills the next one in the background,
    /// so rolling over costs a rename and a header write.
    pub(super) fn prepare_next(&mut self) {
        if self.preparer.is_some() || self.offset < self.capacity / 2 {
            return;
        }
        let storage = self.shared.storage.clone();
        let dir = self.shared.dir.clone();
        let (size, durable) = (self.cfg.segment_size, self.cfg.durable);
        self.preparer = std::thread::Builder::new()
            .name("tidings-log-prepare".into())
            .spawn(move || segment::prepare(&*storage, &dir, size, durable))
            .ok();
    }

    /// Writes what the group has so far, seals the active segment and starts a new one
    /// able to hold a frame of `need` bytes. Fails with [`LogError::Stopped`] when the
    /// store stopped while the groups before were syncing, and with [`LogError::Io`]
    /// when writing, syncing or creating a segment fails.
    pub(super) fn roll(
        &mut self,
        buf_start: &mut u64,
        next: Position,
        need: u64,
        new_segments: &mut Vec<(usize, u64, SegmentEntry)>,
    ) -> Result<(), LogError> {
        // The footer and the frames before it are a write of their own, after the group
        // being synced.
        let started = std::time::Instant::now();
        self.sync.wait();
        let drained = micros_since(started);
        if let Some(m) = self.shared.stopped_reason() {
            return Err(LogError::Stopped(m));
        }
        let data_end = *buf_start + self.buf.len() as u64;
        self.buf
            .extend_from_slice(&segment::encode_footer(next, data_end));
        self.write_pages(*buf_start)?;
        self.file
            .sync_data()
            .map_err(LogError::io("syncing", &self.path))?;
        self.maybe_hand_to_tail(*buf_start);
        let size = self.cfg.segment_size.max(HEADER_LEN + need + FOOTER_LEN);
        let dir = self.shared.dir.clone();
        let sealed = micros_since(started);
        let prepared = self
            .preparer
            .take()
            .and_then(|h| h.join().ok())
            .and_then(Result::ok);
        let joined = micros_since(started);
        let created_at = timestamp_to_micros(self.cfg.clock.now());
        let storage = &*self.shared.storage;
        let made = match prepared {
            Some(ready) if ready >= size => {
                segment::install(storage, &dir, next, created_at, self.cfg.durable)
            }
            _ => segment::create(storage, &dir, next, size, created_at, self.cfg.durable),
        };
        let seg = made.map_err(LogError::io(
            "creating segment",
            dir.join(segment::file_name(next)),
        ))?;
        new_segments.push((
            self.ordinal,
            data_end,
            SegmentEntry {
                first_position: next,
                data_end: HEADER_LEN,
                path: seg.path.clone(),
                file: Some(seg.file.clone()),
            },
        ));
        tracing::debug!(
            segment = %seg.path.display(),
            drained,
            sealed,
            joined,
            installed = micros_since(started),
            "started a new segment (µs since the roll began)"
        );
        self.ordinal += 1;
        self.segment_first = next;
        self.file = seg.file;
        self.path = seg.path;
        self.capacity = size;
        self.offset = HEADER_LEN;
        // The new segment's first page starts with the header its creation wrote.
        self.buf.clear();
        self.buf
            .extend_from_slice(&segment::encode_header(next, created_at));
        *buf_start = 0;
        Ok(())
    }

    /// Writes `buf` at `start` (a page boundary), padded with zeros to the end of its
    /// last page (never past the segment's end). Past the committed data a segment holds
    /// zeros, so the padding changes nothing on disk.
    ///
    /// A write of whole pages bypasses the page cache
    /// ([`StorageFile::write_direct_at`](crate::storage::StorageFile::write_direct_at)):
    /// copying a group into the cache costs more CPU than encoding it (decision record
    /// 0023). Its first page starts with committed bytes, written again with what they
    /// already hold, so readers that map them never see them change. Only the last page
    /// of a segment whose size is not a multiple of a page, and every write of a store
    /// that does not sync (`Durability::None`), go through the cache.
    pub(super) fn write_pages(&mut self, start: u64) -> Result<(), LogError> {
        let len = self.buf.len() as u64;
        let padded = (start + len)
            .next_multiple_of(PAGE)
            .min(self.capacity.max(start + len));
        self.buf.zero_fill_to((padded - start) as usize);
        // Without fsync (`Durability::None`) the page cache takes the write at once,
        // where a direct write would wait for the device.
        let direct = self.cfg.durable && start % PAGE == 0 && padded % PAGE == 0;
        let written = if direct {
            self.file.write_direct_at(self.buf.as_slice(), start)
        } else {
            self.file.write_all_at(self.buf.as_slice(), start)
        };
        written.map_err(LogError::io("writing", &self.path))
    }

    /// While readers read the log's newest frames, gives the buffer, just written at
    /// `start`, to their cache of recent writes ([`crate::tail`]) and goes on in a
    /// spare one, which starts with the bytes of the buffer's last page (the buffer
    /// keeps holding the segment up to its end). Once they stopped, empties the cache.
    pub(super) fn maybe_hand_to_tail(&mut self, start: u64) {
        // Without fsync the writes stay in the page cache, where readers find them.
        if !self.cfg.durable || !self.shared.tail.wanted() {
            if self.tail_fed {
                self.shared.tail.clear();
                self.tail_fed = false;
            }
            return;
        }
        self.tail_fed = true;
        let end = start + self.buf.len() as u64;
        let page = end - end % PAGE;
        let mut next = self.shared.tail.spare();
        next.extend_from_slice(&self.buf.as_slice()[(page - start) as usize..]);
        let written = std::mem::replace(&mut self.buf, next);
        self.shared.tail.keep(self.segment_first, start, written);
    }
}
