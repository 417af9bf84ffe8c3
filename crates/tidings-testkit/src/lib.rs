//! The test kit: the store conformance suite, a property-test model
//! of the store, seeded randomness for tests, given/when/then scenarios for aggregates,
//! given/when/then for sagas ([`SagaScenario`]), the event recorder, the delivery
//! simulator, the transport conformance suite, the consumer-group conformance suite
//! ([`group_conformance`]) and the skip-or-fail rule for tests that
//! need outside services.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod conformance;
pub mod group_conformance;
pub mod model;
pub mod recorder;
mod saga_scenario;
pub mod scenario;
pub mod seed;
pub mod services;
pub mod simulator;
pub mod transport_bench;
pub mod transport_conformance;

pub use recorder::{EventRecorder, ExpectationFailed, RecordingHandler};
pub use saga_scenario::{SagaScenario, SagaThen};
pub use scenario::{Scenario, Then};
