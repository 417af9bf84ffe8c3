//! The client commands: append, read, tail, streams, correlation, export, import,
//! consumer groups (`group`, `parked`) and the projections of a local store.
//!
//! Each works against a local store (`--data DIR` or `--store`) or a server (`--server
//! URL`). Human output is an aligned table; `--json` prints machine-readable JSON.
//!
//! One module per command; [`target`] says where a command finds the events, [`table`]
//! renders the human output and [`progress`] draws the bars of export and import.

pub mod append;
pub mod correlation;
pub mod dead_letters;
pub mod export;
pub mod group;
pub mod import;
mod progress;
pub mod projection;
pub mod read;
pub mod streams;
mod table;
pub mod tail;
mod target;
