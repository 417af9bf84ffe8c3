//! Segment files: the log is a series of preallocated files named by their first position.
//!
//! A segment is named `{first_position:020}.seg` and preallocated (zero-filled) to the
//! configured size, so appends never change its length or its metadata and `fdatasync`
//! only has to flush data. Its layout:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TDLOGSG1"
//! 8       4     format version (1)
//! 12      4     header length (64)
//! 16      8     first_position: global position of the segment's first event
//! 24      8     created_at, microseconds since the Unix epoch
//! 32      28    reserved, zero
//! 60      4     CRC-32C of bytes [0, 60)
//! 64      ...   frames (see crate::record), back to back
//! end     32    footer, once sealed:
//!                 0   4  0xFFFF_FFFF (a frame length no frame has)
//!                 4   4  CRC-32C of footer bytes [8, 32)
//!                 8   8  magic "TDLOGEND"
//!                 16  8  next_position: first position of the next segment
//!                 24  8  data_end: offset of this footer
//! then    ...   zeros up to the preallocated size
//! ```
//!
//! The writer seals a segment (footer, fsync) before it creates the next one, and fsyncs
//! the directory after creating a segment, so a segment that exists after a crash was
//! completely written, except perhaps the last one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tidings_core::Position;

use crate::record::FOOTER_MARK;
use crate::storage::{OpenMode, Storage, StorageFile};

/// Bytes of a segment header; the first frame starts here.
pub const HEADER_LEN: u64 = 64;
/// Bytes of a segment footer.
pub const FOOTER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"TDLOGSG1";
const FOOTER_MAGIC: &[u8; 8] = b"TDLOGEND";
const VERSION: u32 = 1;
const SUFFIX: &str = ".seg";

/// The file name of the segment starting at `first_position`.
pub fn file_name(first_position: Position) -> String {
    format!("{first_position:020}{SUFFIX}")
}

/// The first position encoded in a segment file name, if it is one.
pub fn parse_file_name(name: &str) -> Option<Position> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a segment header.
pub fn encode_header(first_position: Position, created_at: i64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&first_position.to_le_bytes());
    h[24..32].copy_from_slice(&created_at.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// All zero or too short: the segment was created but its header never reached disk.
    #[error("the segment header was never written")]
    Unwritten,
    /// Anything else.
    #[error("bad segment header: {0}")]
    Bad(&'static str),
}

/// Decodes a segment header and returns its first position.
pub fn decode_header(h: &[u8]) -> Result<Position, HeaderError> {
    let Some(h) = h.get(..HEADER_LEN as usize) else {
        return Err(HeaderError::Unwritten);
    };
    if h.iter().all(|&b| b == 0) {
        return Err(HeaderError::Unwritten);
    }
    if &h[..8] != MAGIC {
        return Err(HeaderError::Bad("wrong magic"));
    }
    let crc = u32::from_le_bytes([h[60], h[61], h[62], h[63]]);
    if crc != crc32c::crc32c(&h[..60]) {
        return Err(HeaderError::Bad("header checksum mismatch"));
    }
    if u32::from_le_bytes([h[8], h[9], h[10], h[11]]) != VERSION {
        return Err(HeaderError::Bad("unknown format version"));
    }
    let mut p = [0u8; 8];
    p.copy_from_slice(&h[16..24]);
    Ok(u64::from_le_bytes(p))
}

/// Encodes the footer sealing a segment whose data ends at `data_end`.
pub fn encode_footer(next_position: Position, data_end: u64) -> [u8; FOOTER_LEN as usize] {
    let mut f = [0u8; FOOTER_LEN as usize];
    f[..4].copy_from_slice(&FOOTER_MARK.to_le_bytes());
    f[8..16].copy_from_slice(FOOTER_MAGIC);
    f[16..24].copy_from_slice(&next_position.to_le_bytes());
    f[24..32].copy_from_slice(&data_end.to_le_bytes());
    let crc = crc32c::crc32c(&f[8..]);
    f[4..8].copy_from_slice(&crc.to_le_bytes());
    f
}

/// Decodes a footer found at `offset`; returns the next segment's first position.
pub fn decode_footer(f: &[u8], offset: u64) -> Option<Position> {
    let f = f.get(..FOOTER_LEN as usize)?;
    let crc = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
    if f[..4] != FOOTER_MARK.to_le_bytes()
        || &f[8..16] != FOOTER_MAGIC
        || crc != crc32c::crc32c(&f[8..])
    {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&f[24..32]);
    if u64::from_le_bytes(a) != offset {
        return None;
    }
    a.copy_from_slice(&f[16..24]);
    Some(u64::from_le_bytes(a))
}

/// An open segment file.
#[derive(Clone)]
pub struct Segment {
    /// Position of its first event.
    pub first_position: Position,
    /// Its path.
    pub path: PathBuf,
    /// The open file.
    pub file: Arc<dyn StorageFile>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("first_position", &self.first_position)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The name of a segment file prepared in advance, before it gets its first position.
pub const PENDING_NAME: &str = "pending-segment.tmp";

/// Creates a zero-filled segment file under [`PENDING_NAME`], for a later [`install`].
pub fn prepare(
    storage: &dyn Storage,
    dir: &Path,
    size: u64,
    durable: bool,
) -> std::io::Result<u64> {
    let path = dir.join(PENDING_NAME);
    storage.write_zero_file(&path, size)?;
    if durable {
        storage.open(&path, OpenMode::ReadWrite)?.sync_data()?;
    }
    Ok(size)
}

/// Turns the prepared file into the segment starting at `first_position`: rename, header,
/// fsync of the file and of the directory.
pub fn install(
    storage: &dyn Storage,
    dir: &Path,
    first_position: Position,
    created_at: i64,
    durable: bool,
) -> std::io::Result<Segment> {
    let path = dir.join(file_name(first_position));
    storage.rename(&dir.join(PENDING_NAME), &path)?;
    let file = storage.open(&path, OpenMode::ReadWrite)?;
    file.write_all_at(&encode_header(first_position, created_at), 0)?;
    if durable {
        file.sync_data()?;
        storage.sync_dir(dir)?;
    }
    Ok(Segment {
        first_position,
        path,
        file,
    })
}

/// Creates, zero-fills and syncs a new segment, then syncs the directory.
///
/// The zeros are written, not only reserved with `fallocate`: on ext4 and XFS a
/// reserved but never-written block is "unwritten", and the first `fdatasync` after
/// writing into it must also commit the extent conversion to the journal — several
/// milliseconds instead of a fraction of one. Zero-filled segments make every append an
/// overwrite.
///
/// Any existing file of that name is replaced: the caller only does that for a last
/// segment whose header never reached the disk.
pub fn create(
    storage: &dyn Storage,
    dir: &Path,
    first_position: Position,
    size: u64,
    created_at: i64,
    durable: bool,
) -> std::io::Result<Segment> {
    let path = dir.join(file_name(first_position));
    storage.write_zero_file(&path, size)?;
    let file = storage.open(&path, OpenMode::ReadWrite)?;
    file.write_all_at(&encode_header(first_position, created_at), 0)?;
    if durable {
        file.sync_data()?;
        storage.sync_dir(dir)?;
    }
    Ok(Segment {
        first_position,
        path,
        file,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("42.seg"), None);
        assert_eq!(parse_file_name("0000000000000000004x.seg"), None);
    }

    #[test]
    fn header_and_footer_round_trip() {
        let h = encode_header(7, 123);
        assert_eq!(decode_header(&h), Ok(7));
        assert_eq!(decode_header(&[0; 64]), Err(HeaderError::Unwritten));
        let mut bad = h;
        bad[20] ^= 1;
        assert!(matches!(decode_header(&bad), Err(HeaderError::Bad(_))));
        let f = encode_footer(99, 4096);
        assert_eq!(decode_footer(&f, 4096), Some(99));
        assert_eq!(decode_footer(&f, 4095), None);
    }
}
