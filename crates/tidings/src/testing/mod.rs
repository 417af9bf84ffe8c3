//! Test kit.
pub mod recorder;
pub mod scenario;

pub use recorder::{EventRecorder, ExpectationFailed, RecordingHandler};
pub use scenario::{Scenario, Then};
