//! Postings by event type and by stream category: for each, the positions holding it,
//! ascending. A `read_all` filtered by type or category reads only those positions
//! instead of scanning every frame (see `docs/decisions/0019-type-and-category-postings.md`).
//!
//! ```text
//! types       HashMap  event type -> Vec<u64> positions, ascending
//! categories  HashMap  category (stream name up to its first '-') -> Vec<u64> positions
//! ```
//!
//! Updated with the rest of the index after a group is synced (and by recovery for the
//! log's tail), persisted in the index snapshot's postings section.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use tidings_core::Position;
use tidings_core::store::{Filter, category_of};

/// A fast hash for the index's short string keys (types, categories, correlation ids),
/// which the process itself chose or validated: a multiply-rotate over 8-byte words.
/// Not resistant to chosen collisions; the keys' lengths are bounded by the store's
/// limits, so a collision costs a longer probe, never a wrong answer.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0xF135_7AEA_2E62_A9C5;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            h = (h.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(26) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        self.0 = (h ^ bytes.len() as u64).rotate_left(20);
    }
    fn write_u8(&mut self, n: u8) {
        self.0 = (self.0.rotate_left(26) ^ u64::from(n)).wrapping_mul(0xF135_7AEA_2E62_A9C5);
    }
}

/// Positions by key (event type, category, correlation id).
pub type KeyMap = HashMap<Box<str>, Vec<Position>, BuildHasherDefault<KeyHasher>>;

/// Positions by event type and by stream category.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tags {
    pub(crate) types: KeyMap,
    pub(crate) categories: KeyMap,
}

/// Adds positions `first..first + n` (after the key's earlier ones) under `key`.
pub(crate) fn push_run(map: &mut KeyMap, key: &str, first: Position, n: u64) {
    match map.get_mut(key) {
        Some(v) => {
            let from = v.last().map_or(first, |&l| first.max(l + 1));
            v.extend(from..first + n);
        }
        None => {
            map.insert(key.into(), (first..first + n).collect());
        }
    }
}

impl Tags {
    /// Records the event at `position`, of `event_type`, in `stream`.
    #[cfg(test)]
    pub(crate) fn add(&mut self, stream: &str, event_type: &str, position: Position) {
        push_run(&mut self.types, event_type, position, 1);
        push_run(&mut self.categories, category_of(stream), position, 1);
    }

    /// Records a frame of `stream` at positions `first..first + n` (its events' types
    /// are recorded by [`Self::add_type_run`]).
    pub(crate) fn add_frame_category(&mut self, stream: &str, first: Position, n: u64) {
        push_run(&mut self.categories, category_of(stream), first, n);
    }

    /// Records `n` events of `event_type` from `first`.
    pub(crate) fn add_type_run(&mut self, event_type: &str, first: Position, n: u64) {
        push_run(&mut self.types, event_type, first, n);
    }

    /// Positions of `event_type`, ascending.
    pub fn type_positions(&self, event_type: &str) -> &[Position] {
        self.types.get(event_type).map_or(&[], Vec::as_slice)
    }

    /// Positions of streams of `category`, ascending.
    pub fn category_positions(&self, category: &str) -> &[Position] {
        self.categories.get(category).map_or(&[], Vec::as_slice)
    }

    /// Whether `filter` can be answered from postings (it names types or categories).
    pub(crate) fn indexes(filter: &Filter) -> bool {
        !filter.event_types.is_empty() || !filter.categories.is_empty()
    }

    /// Appends `later`'s positions (all after these).
    pub(crate) fn extend(&mut self, later: &Tags) {
        for (mine, theirs) in [
            (&mut self.types, &later.types),
            (&mut self.categories, &later.categories),
        ] {
            for (k, ps) in theirs {
                mine.entry(k.clone()).or_default().extend_from_slice(ps);
            }
        }
    }
}

/// The ascending union of ascending iterators (duplicates once).
pub(crate) struct Union<I: Iterator<Item = Position>> {
    lists: Vec<std::iter::Peekable<I>>,
}

impl<I: Iterator<Item = Position>> Union<I> {
    pub(crate) fn new(lists: impl IntoIterator<Item = I>) -> Self {
        Self {
            lists: lists.into_iter().map(Iterator::peekable).collect(),
        }
    }
}

impl<I: Iterator<Item = Position>> Iterator for Union<I> {
    type Item = Position;
    fn next(&mut self) -> Option<Position> {
        let min = self
            .lists
            .iter_mut()
            .filter_map(|l| l.peek().copied())
            .min()?;
        for l in &mut self.lists {
            if l.peek() == Some(&min) {
                l.next();
            }
        }
        Some(min)
    }
}

/// The ascending intersection of two ascending iterators.
pub(crate) struct Intersection<A: Iterator<Item = Position>, B: Iterator<Item = Position>> {
    pub(crate) a: std::iter::Peekable<A>,
    pub(crate) b: std::iter::Peekable<B>,
}

impl<A: Iterator<Item = Position>, B: Iterator<Item = Position>> Iterator for Intersection<A, B> {
    type Item = Position;
    fn next(&mut self) -> Option<Position> {
        loop {
            let (x, y) = (*self.a.peek()?, *self.b.peek()?);
            match x.cmp(&y) {
                std::cmp::Ordering::Less => {
                    self.a.next();
                }
                std::cmp::Ordering::Greater => {
                    self.b.next();
                }
                std::cmp::Ordering::Equal => {
                    self.a.next();
                    self.b.next();
                    return Some(x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_recorded_once_and_filters_say_what_they_index() {
        let mut t = Tags::default();
        t.add("a-1", "X", 3);
        t.add("a-1", "X", 3);
        assert_eq!(t.type_positions("X"), &[3]);
        assert_eq!(t.category_positions("a"), &[3]);
        assert!(Tags::indexes(&Filter::all().category("x")));
        assert!(!Tags::indexes(&Filter::all().stream_prefix("x")));
    }
}
