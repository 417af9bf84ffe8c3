//! Automatic causation: the event being handled is the cause of what its handler publishes.
//!
//! The dispatcher and the in-process bus run each handler inside a task-local
//! [`Cause`] scope (also around spawned asynchronous subscribers). A
//! publisher (`tidings::bus::Publisher`) reads it: an event published while handling event E
//! gets `causation_id = E.event_id` and E's `correlation_id`, unless its producer set them.

use std::future::Future;

use uuid::Uuid;

use crate::event::{Event, Metadata};

/// The event being handled, as far as what it causes needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The handled event's id: the causation id of what it causes.
    pub event_id: Uuid,
    /// Its correlation id (its own id when it had none): carried to what it causes.
    pub correlation_id: String,
    /// Its user, carried along when the caused event names none.
    pub user_id: Option<String>,
}

impl Cause {
    /// The cause that `event` is for events published while handling it.
    pub fn of(event: &Event) -> Self {
        Self {
            event_id: event.event_id,
            correlation_id: event
                .metadata
                .correlation_id
                .clone()
                .unwrap_or_else(|| event.event_id.to_string()),
            user_id: event.metadata.user_id.clone(),
        }
    }

    /// Fills causation, correlation and user into `metadata`, keeping what is set.
    pub fn apply_to(&self, metadata: &mut Metadata) {
        metadata
            .causation_id
            .get_or_insert_with(|| self.event_id.to_string());
        metadata
            .correlation_id
            .get_or_insert_with(|| self.correlation_id.clone());
        if metadata.user_id.is_none() {
            metadata.user_id.clone_from(&self.user_id);
        }
    }
}

tokio::task_local! {
    static CURRENT: Cause;
}

/// The event whose handler is running on this task, if any.
pub fn current_cause() -> Option<Cause> {
    CURRENT.try_with(Cause::clone).ok()
}

/// Runs `future` with `cause` as the current cause.
pub async fn with_cause<F: Future>(cause: Cause, future: F) -> F::Output {
    CURRENT.scope(cause, future).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Enricher, NewEvent};

    #[tokio::test]
    async fn scope_is_visible_inside_and_gone_outside() {
        let e = Enricher::new("s")
            .enrich(NewEvent::new("A", serde_json::json!(1)).with_user_id("u"))
            .unwrap();
        assert_eq!(current_cause(), None);
        let inside = with_cause(Cause::of(&e), async { current_cause() }).await;
        assert_eq!(
            inside,
            Some(Cause {
                event_id: e.event_id,
                correlation_id: e.event_id.to_string(),
                user_id: Some("u".into())
            })
        );
        assert_eq!(current_cause(), None);
    }

    #[test]
    fn apply_keeps_what_the_producer_set() {
        let cause = Cause {
            event_id: Uuid::nil(),
            correlation_id: "corr".into(),
            user_id: None,
        };
        let mut m = Metadata {
            correlation_id: Some("mine".into()),
            ..Metadata::default()
        };
        cause.apply_to(&mut m);
        assert_eq!(m.correlation_id.as_deref(), Some("mine"));
        assert_eq!(m.causation_id, Some(Uuid::nil().to_string()));
    }
}
