//! A `tracing` subscriber that keeps spans and events for assertions, shared by the
//! `*_tracing` test binaries (each holds one test on one thread: `tracing` caches per call
//! site whether anyone listens, so a thread-local subscriber racing other threads can
//! miss events).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Recorded field names and values.
type FieldList = Vec<(String, String)>;

/// A `tracing` subscriber that keeps what it is told, for assertions.
#[derive(Default)]
pub struct Capture {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, (String, FieldList)>>,
    events: Mutex<Vec<(Level, FieldList)>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = Vec::new();
        span.record(&mut Fields(&mut fields));
        self.spans
            .lock()
            .unwrap()
            .insert(id, (span.metadata().name().to_owned(), fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    pub fn spans_named(&self, name: &str) -> Vec<Vec<(String, String)>> {
        self.spans
            .lock()
            .unwrap()
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
    pub fn events_at(&self, level: Level) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| *l == level)
            .map(|(_, f)| format!("{f:?}"))
            .collect()
    }
}

/// Runs `f` on a current-thread runtime (tokio time paused) with a fresh [`Capture`]
/// as the thread's subscriber.
pub fn with_capture<F: std::future::Future>(f: F) -> (Arc<Capture>, F::Output) {
    let capture = Arc::new(Capture::default());
    let out = tracing::subscriber::with_default(capture.clone(), || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(f)
    });
    (capture, out)
}
