//! Counters the server keeps and their Prometheus text encoding (format 0.0.4).
//!
//! Everything is a relaxed atomic: the numbers are for dashboards, not for correctness,
//! so no lock sits on the append path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the append-commit histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Status codes counted one by one; anything else lands in `other`.
const STATUSES: [u16; 16] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 413, 415, 422, 500, 503, 504,
];

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    appends: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    append_failures: AtomicU64,
    rejected_busy: AtomicU64,
    subscribers: AtomicU64,
    sse_events: AtomicU64,
    commit_buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    commit_count: AtomicU64,
    commit_sum_micros: AtomicU64,
    statuses: [AtomicU64; STATUSES.len()],
    other_status: AtomicU64,
}

impl Metrics {
    /// A successful append of `events` events totalling `bytes`, made durable in `took`.
    pub fn record_append(&self, events: u64, bytes: u64, took: Duration) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(events, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.observe_commit(took);
    }

    /// An append the store refused or failed.
    pub fn record_append_failure(&self, took: Duration) {
        self.append_failures.fetch_add(1, Ordering::Relaxed);
        self.observe_commit(took);
    }

    /// An append refused because the queue was full.
    pub fn record_busy(&self) {
        self.rejected_busy.fetch_add(1, Ordering::Relaxed);
    }

    fn observe_commit(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = COMMIT_BUCKETS.iter().position(|&b| secs <= b) {
            self.commit_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.commit_count.fetch_add(1, Ordering::Relaxed);
        self.commit_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// An HTTP response went out with `status`.
    pub fn record_status(&self, status: u16) {
        match STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.statuses[i].fetch_add(1, Ordering::Relaxed),
            None => self.other_status.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// A subscriber connected.
    pub fn subscriber_opened(&self) {
        self.subscribers.fetch_add(1, Ordering::Relaxed);
    }

    /// A subscriber went away.
    pub fn subscriber_closed(&self) {
        self.subscribers.fetch_sub(1, Ordering::Relaxed);
    }

    /// An event was sent to a subscriber.
    pub fn record_sse_event(&self) {
        self.sse_events.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> u64 {
        self.subscribers.load(Ordering::Relaxed)
    }

    /// Appends acknowledged since start.
    pub fn appends(&self) -> u64 {
        self.appends.load(Ordering::Relaxed)
    }

    /// Events appended since start.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Event bytes appended since start.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every counter, plus the given gauges.
    pub fn encode(&self, head: Option<u64>, store_bytes: Option<u64>) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        counter(
            "tidings_appends_total",
            "Appends acknowledged (each may carry many events).",
            "counter",
            load(&self.appends),
        );
        counter(
            "tidings_events_appended_total",
            "Events appended.",
            "counter",
            load(&self.events),
        );
        counter(
            "tidings_bytes_appended_total",
            "Event bytes appended, as the store accounts them.",
            "counter",
            load(&self.bytes),
        );
        counter(
            "tidings_append_failures_total",
            "Appends the store refused or failed.",
            "counter",
            load(&self.append_failures),
        );
        counter(
            "tidings_appends_rejected_busy_total",
            "Appends answered 503 because the append queue was full.",
            "counter",
            load(&self.rejected_busy),
        );
        counter(
            "tidings_subscribers",
            "Server-Sent Events subscribers connected.",
            "gauge",
            load(&self.subscribers),
        );
        counter(
            "tidings_sse_events_sent_total",
            "Events sent to Server-Sent Events subscribers.",
            "counter",
            load(&self.sse_events),
        );
        if let Some(h) = head {
            counter(
                "tidings_head_position",
                "Global position of the last committed event.",
                "gauge",
                h,
            );
        }
        if let Some(b) = store_bytes {
            counter(
                "tidings_store_bytes",
                "Size of the store on disk.",
                "gauge",
                b,
            );
        }
        let name = "tidings_append_commit_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time for the store to make an append durable (includes fsync on the embedded store).\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (bound, bucket) in COMMIT_BUCKETS.iter().zip(&self.commit_buckets) {
            cumulative += load(bucket);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = load(&self.commit_count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            load(&self.commit_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        let name = "tidings_http_responses_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP responses by status code.\n# TYPE {name} counter"
        );
        for (status, n) in STATUSES.iter().zip(&self.statuses) {
            let _ = writeln!(out, "{name}{{status=\"{status}\"}} {}", load(n));
        }
        let _ = writeln!(
            out,
            "{name}{{status=\"other\"}} {}",
            load(&self.other_status)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_cumulative_histogram() {
        let m = Metrics::default();
        m.record_append(3, 100, Duration::from_micros(200));
        m.record_append(1, 10, Duration::from_millis(2));
        m.record_status(201);
        m.record_status(299);
        let text = m.encode(Some(3), None);
        assert!(text.contains("tidings_events_appended_total 4\n"));
        assert!(text.contains("tidings_append_commit_seconds_bucket{le=\"0.00025\"} 1\n"));
        assert!(text.contains("tidings_append_commit_seconds_bucket{le=\"0.0025\"} 2\n"));
        assert!(text.contains("tidings_append_commit_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("tidings_http_responses_total{status=\"201\"} 1\n"));
        assert!(text.contains("tidings_http_responses_total{status=\"other\"} 1\n"));
        assert!(text.contains("tidings_head_position 3\n"));
    }
}
