//! Counters the server keeps, registered with [`prometheus_client`] and exposed as text.
//!
//! Counters and gauges are relaxed atomics and the response counters are looked up once,
//! at start, so counting takes no lock; only the commit-time histogram takes a short one
//! per append. The numbers are for dashboards, not for correctness.
//!
//! The text is the OpenMetrics encoding of `prometheus_client`, which the Prometheus
//! text format 0.0.4 parsers read as well. Counters are registered without their
//! `_total` suffix, which the encoder appends, so the exposed names are
//! `tidings_appends_total` and so on; help texts are registered without their final
//! period, which the encoder appends too.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tidings::group::GroupDescription;

/// Upper bounds, in seconds, of the append-commit histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Status codes counted one by one; anything else lands in `other`.
const STATUSES: [u16; 18] = [
    200, 201, 204, 304, 400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 500, 501, 503, 504,
];

/// A gauge of unsigned values.
type GaugeU64 = Gauge<u64, AtomicU64>;

/// The `status` label of `tidings_http_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    status: Status,
}

/// The `group` label of the consumer-group gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

/// A counted status code, or `other`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Status {
    Code(u16),
    Other,
}

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        match self {
            Self::Code(code) => EncodeLabelValue::encode(code, encoder),
            Self::Other => EncodeLabelValue::encode(&"other", encoder),
        }
    }
}

/// The server's counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    appends: Counter,
    events: Counter,
    bytes: Counter,
    append_failures: Counter,
    rejected_busy: Counter,
    append_timeouts: Counter,
    appends_stalled: GaugeU64,
    subscribers: GaugeU64,
    sse_events: Counter,
    commit_seconds: Histogram,
    /// The counters of [`STATUSES`], in that order, shared with the registry's family.
    statuses: [Counter; STATUSES.len()],
    other_status: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let appends = counter(
            &mut registry,
            "tidings_appends",
            "Appends acknowledged (each may carry many events)",
        );
        let events = counter(&mut registry, "tidings_events_appended", "Events appended");
        let bytes = counter(
            &mut registry,
            "tidings_bytes_appended",
            "Event bytes appended, as the store accounts them",
        );
        let append_failures = counter(
            &mut registry,
            "tidings_append_failures",
            "Appends the store refused or failed",
        );
        let rejected_busy = counter(
            &mut registry,
            "tidings_appends_rejected_busy",
            "Appends answered 503 because the append queue was full",
        );
        let append_timeouts = counter(
            &mut registry,
            "tidings_append_timeouts",
            "Appends answered 503 because they did not finish within their deadline (the store's or the server's)",
        );
        let appends_stalled = GaugeU64::default();
        registry.register(
            "tidings_appends_stalled",
            "Appends in flight for longer than the append deadline",
            appends_stalled.clone(),
        );
        let subscribers = GaugeU64::default();
        registry.register(
            "tidings_subscribers",
            "Server-Sent Events subscribers connected",
            subscribers.clone(),
        );
        let sse_events = counter(
            &mut registry,
            "tidings_sse_events_sent",
            "Events sent to Server-Sent Events subscribers",
        );
        let commit_seconds = Histogram::new(COMMIT_BUCKETS);
        registry.register(
            "tidings_append_commit_seconds",
            "Time for the store to make an append durable (includes fsync on the embedded store)",
            commit_seconds.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "tidings_http_responses",
            "HTTP responses by status code",
            responses.clone(),
        );
        let response = |status| responses.get_or_create(&ResponseLabels { status }).clone();
        let statuses = STATUSES.map(|code| response(Status::Code(code)));
        let other_status = response(Status::Other);
        Self {
            registry,
            appends,
            events,
            bytes,
            append_failures,
            rejected_busy,
            append_timeouts,
            appends_stalled,
            subscribers,
            sse_events,
            commit_seconds,
            statuses,
            other_status,
        }
    }
}

impl Metrics {
    /// A successful append of `events` events totalling `bytes`, made durable in `took`.
    pub fn record_append(&self, events: u64, bytes: u64, took: Duration) {
        self.appends.inc();
        self.events.inc_by(events);
        self.bytes.inc_by(bytes);
        self.observe_commit(took);
    }

    /// An append the store refused or failed.
    pub fn record_append_failure(&self, took: Duration) {
        self.append_failures.inc();
        self.observe_commit(took);
    }

    /// An append that did not finish within its deadline.
    pub fn record_append_timeout(&self) {
        self.append_timeouts.inc();
    }

    /// Appends timed out since start.
    pub fn append_timeouts(&self) -> u64 {
        self.append_timeouts.get()
    }

    /// Sets how many appends are in flight for longer than the append deadline.
    pub fn set_appends_stalled(&self, n: u64) {
        self.appends_stalled.set(n);
    }

    /// An append refused because the queue was full.
    pub fn record_busy(&self) {
        self.rejected_busy.inc();
    }

    fn observe_commit(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// An HTTP response went out with `status`.
    pub fn record_status(&self, status: u16) {
        match STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.statuses[i].inc(),
            None => self.other_status.inc(),
        };
    }

    /// A subscriber connected.
    pub fn subscriber_opened(&self) {
        self.subscribers.inc();
    }

    /// A subscriber went away.
    pub fn subscriber_closed(&self) {
        self.subscribers.dec();
    }

    /// An event was sent to a subscriber.
    pub fn record_sse_event(&self) {
        self.sse_events.inc();
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> u64 {
        self.subscribers.get()
    }

    /// Appends acknowledged since start.
    pub fn appends(&self) -> u64 {
        self.appends.get()
    }

    /// Events appended since start.
    pub fn events(&self) -> u64 {
        self.events.get()
    }

    /// Event bytes appended since start.
    pub fn bytes(&self) -> u64 {
        self.bytes.get()
    }

    /// The text exposition of every counter, plus the given gauges (each left out when
    /// unknown).
    pub fn encode(&self, head: Option<u64>, store_bytes: Option<u64>) -> String {
        self.encode_with_groups(head, store_bytes, &[])
    }

    /// [`Metrics::encode`], plus one gauge of each kind per consumer group, labelled
    /// `group`: `tidings_group_lag`, `tidings_group_in_flight`, `tidings_group_members`
    /// and `tidings_group_parked`.
    pub fn encode_with_groups(
        &self,
        head: Option<u64>,
        store_bytes: Option<u64>,
        groups: &[GroupDescription],
    ) -> String {
        // The gauges known only at scrape time live in a registry of their own.
        let mut scrape = Registry::default();
        if !groups.is_empty() {
            let family = |scrape: &mut Registry,
                          name: &str,
                          help: &str,
                          value: &dyn Fn(&GroupDescription) -> u64| {
                let f = Family::<GroupLabels, GaugeU64>::default();
                for g in groups {
                    f.get_or_create(&GroupLabels {
                        group: g.name.clone(),
                    })
                    .set(value(g));
                }
                scrape.register(name, help, f);
            };
            family(
                &mut scrape,
                "tidings_group_lag",
                "Log positions between a consumer group's checkpoint and the head",
                &|g| g.lag,
            );
            family(
                &mut scrape,
                "tidings_group_in_flight",
                "Messages out with a consumer group's members",
                &|g| g.in_flight as u64,
            );
            family(
                &mut scrape,
                "tidings_group_members",
                "Live members of a consumer group",
                &|g| g.members.len() as u64,
            );
            family(
                &mut scrape,
                "tidings_group_parked",
                "Messages in a consumer group's parked list",
                &|g| g.parked,
            );
        }
        let mut gauge = |name: &str, help: &str, value: Option<u64>| {
            if let Some(v) = value {
                scrape.register(name, help, ConstGauge::new(v));
            }
        };
        gauge(
            "tidings_head_position",
            "Global position of the last committed event",
            head,
        );
        gauge(
            "tidings_store_bytes",
            "Size of the store on disk",
            store_bytes,
        );
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &scrape))
            .and_then(|()| text::encode_eof(&mut out));
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

    #[test]
    fn exposes_each_groups_gauges() {
        let mut billing = GroupDescription {
            name: "billing".to_owned(),
            settings: tidings::group::GroupSettings::default(),
            checkpoint: 3,
            head: 10,
            lag: 7,
            members: Vec::new(),
            in_flight: 2,
            parked: 1,
        };
        billing.members.push(tidings::group::MemberInfo {
            member: "m1".to_owned(),
            name: "worker".to_owned(),
            in_flight: 2,
            lease_left: Duration::from_secs(5),
        });
        let idle = GroupDescription {
            name: "idle".to_owned(),
            lag: 0,
            in_flight: 0,
            parked: 0,
            members: Vec::new(),
            ..billing.clone()
        };
        let text = Metrics::default().encode_with_groups(Some(9), None, &[billing, idle]);
        for sample in [
            "# TYPE tidings_group_lag gauge\n",
            "tidings_group_lag{group=\"billing\"} 7\n",
            "tidings_group_in_flight{group=\"billing\"} 2\n",
            "tidings_group_members{group=\"billing\"} 1\n",
            "tidings_group_parked{group=\"billing\"} 1\n",
            "tidings_group_lag{group=\"idle\"} 0\n",
            "tidings_group_members{group=\"idle\"} 0\n",
            "tidings_head_position 9\n",
            "tidings_appends_total 0\n",
        ] {
            assert!(text.contains(sample), "no {sample:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn exposes_the_names_dashboards_use() {
        let text = Metrics::default().encode(Some(1), Some(2));
        for sample in [
            "tidings_appends_total 0\n",
            "tidings_events_appended_total 0\n",
            "tidings_bytes_appended_total 0\n",
            "tidings_append_failures_total 0\n",
            "tidings_appends_rejected_busy_total 0\n",
            "tidings_append_timeouts_total 0\n",
            "tidings_appends_stalled 0\n",
            "# TYPE tidings_appends_stalled gauge\n",
            "tidings_subscribers 0\n",
            "tidings_sse_events_sent_total 0\n",
            "tidings_head_position 1\n",
            "tidings_store_bytes 2\n",
            "tidings_append_commit_seconds_count 0\n",
            "tidings_append_commit_seconds_bucket{le=\"5.0\"} 0\n",
            "tidings_http_responses_total{status=\"504\"} 0\n",
            "# TYPE tidings_subscribers gauge\n",
            "# TYPE tidings_append_commit_seconds histogram\n",
            "# HELP tidings_appends Appends acknowledged (each may carry many events).\n",
        ] {
            assert!(text.contains(sample), "no {sample:?} in:\n{text}");
        }
        assert!(
            !text.contains(".."),
            "a help text ends in two periods:\n{text}"
        );
        assert!(
            text.ends_with("# EOF\n"),
            "the exposition is not closed:\n{text}"
        );
        let unknown = Metrics::default().encode(None, None);
        assert!(!unknown.contains("tidings_group_"));
        assert!(!unknown.contains("tidings_head_position"));
        assert!(!unknown.contains("tidings_store_bytes"));
    }
}
