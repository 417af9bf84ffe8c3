//! [`CircuitBreaker`]: stop hammering a dependency that keeps failing.
//!
//! ```text
//!            N consecutive failures               cool-down elapsed
//!  Closed ───────────────────────────► Open ─────────────────────────► HalfOpen
//!    ▲                                  ▲                                 │
//!    │            trial fails           └─────────────────────────────────┤
//!    └────────────────────────────────────────────── trial succeeds ──────┘
//! ```
//!
//! While open, a [`ConsumerGroup`](super::ConsumerGroup) delivers nothing, so no event
//! burns an attempt or gets parked because a dependency is down. Half-open, it lets one
//! delivery through as the trial. Any success closes the breaker. Every transition is
//! logged as a `tracing` event on target `tidings::consumer::breaker`.
//!
//! Times are `tokio::time::Instant`s, so tests drive the breaker with paused time.

use std::time::Duration;

use tokio::time::Instant;

/// The breaker's state, as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Deliveries flow.
    Closed,
    /// Deliveries are paused until the cool-down ends.
    Open,
    /// One trial delivery decides whether to close or reopen.
    HalfOpen,
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        })
    }
}

/// Whether a delivery may go out now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Yes.
    Allowed,
    /// Yes, as the half-open trial: report its outcome.
    Trial,
    /// Not before this instant (open).
    WaitUntil(Instant),
    /// Not until the running trial reports.
    WaitForTrial,
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { trial_running: bool },
}

/// A consecutive-failure circuit breaker.
///
/// ```
/// use std::time::Duration;
/// use tidings::consumer::{BreakerState, CircuitBreaker, Permit};
/// use tokio::time::Instant;
/// let mut breaker = CircuitBreaker::new(2, Duration::from_secs(10));
/// let t0 = Instant::now();
/// breaker.on_failure(t0);
/// breaker.on_failure(t0);
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(matches!(breaker.permit(t0), Permit::WaitUntil(_)));
/// assert_eq!(breaker.permit(t0 + Duration::from_secs(10)), Permit::Trial);
/// assert_eq!(breaker.state(), BreakerState::HalfOpen);
/// breaker.on_success();
/// assert_eq!(breaker.state(), BreakerState::Closed);
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    threshold: u32,
    cool_down: Duration,
    inner: Inner,
    opened: u64,
}

impl Default for CircuitBreaker {
    /// Opens after 5 consecutive failures, for 30 seconds.
    fn default() -> Self {
        Self::new(5, Duration::from_secs(30))
    }
}

impl CircuitBreaker {
    /// Opens after `threshold` consecutive failures (at least 1) for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            inner: Inner::Closed {
                consecutive_failures: 0,
            },
            opened: 0,
        }
    }

    /// A breaker that never opens.
    pub fn disabled() -> Self {
        Self::new(u32::MAX, Duration::ZERO)
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// How many times it has opened.
    pub fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Whether a delivery may go out at `now`; moves Open to HalfOpen once the cool-down
    /// has passed, and hands out the single trial.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.inner {
            Inner::Closed { .. } => Permit::Allowed,
            Inner::Open { until } if now < until => Permit::WaitUntil(until),
            Inner::Open { .. } => {
                self.transition(Inner::HalfOpen {
                    trial_running: true,
                });
                Permit::Trial
            }
            Inner::HalfOpen {
                trial_running: true,
            } => Permit::WaitForTrial,
            Inner::HalfOpen {
                trial_running: false,
            } => {
                self.inner = Inner::HalfOpen {
                    trial_running: true,
                };
                Permit::Trial
            }
        }
    }

    /// A delivery succeeded: close.
    pub fn on_success(&mut self) {
        self.transition(Inner::Closed {
            consecutive_failures: 0,
        });
    }

    /// A delivery failed at `now`: count it, and open when the threshold is reached or
    /// a half-open trial failed.
    pub fn on_failure(&mut self, now: Instant) {
        match self.inner {
            Inner::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures.saturating_add(1);
                if failures >= self.threshold {
                    self.open(now);
                } else {
                    self.inner = Inner::Closed {
                        consecutive_failures: failures,
                    };
                }
            }
            Inner::HalfOpen { .. } => self.open(now),
            Inner::Open { .. } => {}
        }
    }

    /// The half-open trial ended with neither success nor failure (its delivery was
    /// given back): let another trial go.
    pub fn trial_abandoned(&mut self) {
        if let Inner::HalfOpen { .. } = self.inner {
            self.inner = Inner::HalfOpen {
                trial_running: false,
            };
        }
    }

    fn open(&mut self, now: Instant) {
        self.opened += 1;
        self.transition(Inner::Open {
            until: now + self.cool_down,
        });
    }

    fn transition(&mut self, to: Inner) {
        let from = self.state();
        self.inner = to;
        let to = self.state();
        if from != to {
            if to == BreakerState::Open {
                tracing::warn!(target: "tidings::consumer::breaker", %from, %to,
                    cool_down_ms = self.cool_down.as_millis() as u64, "circuit breaker opened");
            } else {
                tracing::info!(target: "tidings::consumer::breaker", %from, %to,
                    "circuit breaker {to}");
            }
        }
    }
}
