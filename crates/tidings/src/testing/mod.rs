//! The test kit (feature `testing`): the store conformance suite, a property-test model
//! of the store, seeded randomness for tests.

pub mod conformance;
pub mod model;
pub mod seed;
