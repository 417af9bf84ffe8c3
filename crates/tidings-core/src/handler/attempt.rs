//! The attempt being made: which delivery of the event the running handler sees.
//!
//! Consumers that retry run each handler call inside [`with_attempt`] — the
//! store-backed consumer group and the broker consumer alike, both counting from 1 for
//! the first delivery. A handler reads it with [`current_attempt`], for example to log
//! it or to give up differently on a late attempt. Outside such a scope (a dispatcher
//! at publish time, a projection) there is none.

use std::future::Future;

tokio::task_local! {
    static ATTEMPT: u32;
}

/// Which attempt (from 1) the handler running on this task is, if a consumer said.
pub fn current_attempt() -> Option<u32> {
    ATTEMPT.try_with(|a| *a).ok()
}

/// Runs `future` with `attempt` as the current attempt.
pub async fn with_attempt<F: Future>(attempt: u32, future: F) -> F::Output {
    ATTEMPT.scope(attempt, future).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scope_is_visible_inside_and_gone_outside() {
        assert_eq!(current_attempt(), None);
        assert_eq!(with_attempt(3, async { current_attempt() }).await, Some(3));
        let nested = with_attempt(1, async {
            with_attempt(2, async { current_attempt() }).await
        });
        assert_eq!(nested.await, Some(2));
        assert_eq!(current_attempt(), None);
    }
}
