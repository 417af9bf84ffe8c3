//! The rule for tests that need an outside service (PostgreSQL, NATS, RabbitMQ, a
//! browser): when the service is not configured or not reachable, skip with a loud
//! message — unless `TIDINGS_REQUIRE_SERVICES=1`, which `.ci/run` sets, and which turns
//! the skip into a failure.

use std::io::Write as _;

/// The environment variable that makes missing services fail tests.
pub const REQUIRE_VAR: &str = "TIDINGS_REQUIRE_SERVICES";

/// True when missing services must fail tests instead of skipping them.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1")
}

/// Skips `test` loudly because of `why`, or panics when [`services_required`].
///
/// The message goes straight to the process's stderr: the test harness captures
/// `eprintln!` of passing tests, which would hide the skip.
pub fn skip_or_fail(test: &str, why: &str) {
    if services_required() {
        panic!("{test}: {why}, and {REQUIRE_VAR}=1 requires the service");
    }
    let banner = "*".repeat(72);
    let _ = writeln!(
        std::io::stderr(),
        "\n{banner}\nSKIP {test}: {why} (set {REQUIRE_VAR}=1 to make this fail)\n{banner}"
    );
}

/// The value of the environment variable `var` naming a service's URL, or `None` after
/// [`skip_or_fail`] when it is unset.
pub fn service_url(test: &str, var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skip_or_fail(test, &format!("{var} is not set"));
            None
        }
    }
}
