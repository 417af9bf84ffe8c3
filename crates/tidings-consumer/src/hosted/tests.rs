//! Unit tests of hosted groups.
