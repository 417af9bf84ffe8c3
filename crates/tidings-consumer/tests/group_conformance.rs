//! The consumer-group conformance suite against `HostedGroups` over the in-memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use tidings::InMemoryStore;
use tidings::consumer::HostedGroups;
use tidings_core::handler::BoxFuture;
use tidings_testkit::group_conformance::{self as suite, GroupHarness};

struct Hosted;

impl GroupHarness for Hosted {
    type Store = InMemoryStore;
    type Groups = HostedGroups<InMemoryStore>;

    fn fresh(&self) -> BoxFuture<'_, (Self::Store, Self::Groups)> {
        Box::pin(async {
            let store = InMemoryStore::new();
            let groups = HostedGroups::open(store.clone()).await.unwrap();
            (store, groups)
        })
    }

    fn reopen<'a>(
        &'a self,
        store: &'a Self::Store,
        old: Self::Groups,
    ) -> BoxFuture<'a, Self::Groups> {
        Box::pin(async move {
            old.shutdown().await.unwrap();
            drop(old);
            HostedGroups::open(store.clone()).await.unwrap()
        })
    }
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            suite::$name(&Hosted).await;
        }
    )*};
}

checks!(
    administration,
    every_event_is_delivered_and_settled,
    start_positions,
    pinned_keeps_one_message_per_stream_out,
    round_robin_hands_out_any_ready_message,
    retries_count_attempts_then_park,
    park_and_skip,
    stale_and_foreign_ids_change_nothing,
    a_lapsed_lease_hands_messages_to_others,
    leaving_gives_messages_back_without_an_attempt,
    a_message_timeout_takes_the_message_back,
    parked_messages_replay_and_delete,
    sequenced_parking_holds_the_stream_and_replay_restores_order,
    groups_survive_a_restart,
    a_replay_survives_a_restart,
    bad_requests_are_refused,
    competing_members_settle_every_event,
);
