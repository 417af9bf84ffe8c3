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

use tidings_core::Position;
use tidings_core::store::{Filter, category_of};

/// Positions by event type and by stream category.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tags {
    pub(crate) types: HashMap<Box<str>, Vec<Position>>,
    pub(crate) categories: HashMap<Box<str>, Vec<Position>>,
}

fn push(map: &mut HashMap<Box<str>, Vec<Position>>, key: &str, position: Position) {
    match map.get_mut(key) {
        Some(v) => {
            if v.last().is_none_or(|&l| l < position) {
                v.push(position);
            }
        }
        None => {
            map.insert(key.into(), vec![position]);
        }
    }
}

impl Tags {
    /// Records the event at `position`, of `event_type`, in `stream`.
    pub(crate) fn add(&mut self, stream: &str, event_type: &str, position: Position) {
        push(&mut self.types, event_type, position);
        push(&mut self.categories, category_of(stream), position);
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

    /// Up to `n` candidate positions at or after `from` for `filter`, ascending: those of
    /// its types (any) that are also of its categories (any). The stream prefix is not
    /// checked here. Call only when [`Self::indexes`] holds.
    pub(crate) fn candidates(&self, filter: &Filter, from: Position, n: usize) -> Vec<Position> {
        fn lists<'a>(
            keys: &[String],
            map: &'a HashMap<Box<str>, Vec<Position>>,
            from: Position,
        ) -> Vec<&'a [Position]> {
            keys.iter()
                .filter_map(|k| map.get(k.as_str()))
                .map(|v| &v[v.partition_point(|&p| p < from)..])
                .collect()
        }
        let by_type = (!filter.event_types.is_empty())
            .then(|| Union::new(lists(&filter.event_types, &self.types, from)));
        let by_category = (!filter.categories.is_empty())
            .then(|| Union::new(lists(&filter.categories, &self.categories, from)));
        match (by_type, by_category) {
            (Some(t), None) => t.take(n).collect(),
            (None, Some(c)) => c.take(n).collect(),
            (Some(t), Some(c)) => Intersection {
                a: t.peekable(),
                b: c.peekable(),
            }
            .take(n)
            .collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Which postings (`"event type"` or `"category"`) of `snapshot`, which covers
    /// positions below `covered`, differ from these (rebuilt from the log), if any.
    pub(crate) fn differs_within(
        &self,
        snapshot: &Tags,
        covered: Position,
    ) -> Option<&'static str> {
        let differs = |log: &HashMap<Box<str>, Vec<Position>>,
                       ck: &HashMap<Box<str>, Vec<Position>>| {
            let mut keys = 0usize;
            for (k, ps) in log {
                let want = &ps[..ps.partition_point(|&p| p < covered)];
                if want.is_empty() {
                    continue;
                }
                keys += 1;
                if ck.get(k).map(Vec::as_slice) != Some(want) {
                    return true;
                }
            }
            keys != ck.len()
        };
        if differs(&self.types, &snapshot.types) {
            Some("event type")
        } else if differs(&self.categories, &snapshot.categories) {
            Some("category")
        } else {
            None
        }
    }
}

/// The ascending union of ascending slices (duplicates once).
struct Union<'a> {
    lists: Vec<&'a [Position]>,
}

impl<'a> Union<'a> {
    fn new(lists: Vec<&'a [Position]>) -> Self {
        Self { lists }
    }
}

impl Iterator for Union<'_> {
    type Item = Position;
    fn next(&mut self) -> Option<Position> {
        let min = self.lists.iter().filter_map(|l| l.first()).min().copied()?;
        for l in &mut self.lists {
            if l.first() == Some(&min) {
                *l = &l[1..];
            }
        }
        Some(min)
    }
}

/// The ascending intersection of two ascending iterators.
struct Intersection<A: Iterator<Item = Position>, B: Iterator<Item = Position>> {
    a: std::iter::Peekable<A>,
    b: std::iter::Peekable<B>,
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

    fn tags() -> Tags {
        let mut t = Tags::default();
        let log = [
            ("order-1", "A"),
            ("user-1", "B"),
            ("order-2", "B"),
            ("user", "A"),
            ("order-1", "C"),
        ];
        for (p, (s, ty)) in log.iter().enumerate() {
            t.add(s, ty, p as u64);
        }
        t
    }

    #[test]
    fn postings_answer_filters_like_a_scan() {
        let t = tags();
        assert_eq!(t.type_positions("B"), &[1, 2]);
        assert_eq!(t.category_positions("user"), &[1, 3]);
        let f = Filter::all().event_type("A").event_type("C");
        assert_eq!(t.candidates(&f, 0, 10), vec![0, 3, 4]);
        assert_eq!(t.candidates(&f, 1, 10), vec![3, 4]);
        assert_eq!(t.candidates(&f, 0, 2), vec![0, 3]);
        let f = Filter::all().category("order").event_type("B");
        assert_eq!(t.candidates(&f, 0, 10), vec![2]);
        let f = Filter::all().category("order").category("user");
        assert_eq!(t.candidates(&f, 0, 10), vec![0, 1, 2, 3, 4]);
        assert!(
            t.candidates(&Filter::all().event_type("Z"), 0, 10)
                .is_empty()
        );
        assert!(Tags::indexes(&Filter::all().category("x")));
        assert!(!Tags::indexes(&Filter::all().stream_prefix("x")));
    }

    #[test]
    fn differences_within_the_covered_prefix_are_found() {
        let t = tags();
        let mut ck = Tags::default();
        for p in 0..3u64 {
            let (s, ty) = [("order-1", "A"), ("user-1", "B"), ("order-2", "B")][p as usize];
            ck.add(s, ty, p);
        }
        assert_eq!(t.differs_within(&ck, 3), None);
        assert_eq!(t.differs_within(&ck, 4), Some("event type"));
        ck.categories.clear();
        assert_eq!(t.differs_within(&ck, 3), Some("category"));
    }

    #[test]
    fn a_position_is_recorded_once() {
        let mut t = Tags::default();
        t.add("a-1", "X", 3);
        t.add("a-1", "X", 3);
        assert_eq!(t.type_positions("X"), &[3]);
    }
}
