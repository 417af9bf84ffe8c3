//! The consumer-group conformance suite against `HostedGroups` over the embedded log
//! store: settings, checkpoints and parked lists live in the log.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::sync::Mutex;

use tidings::consumer::HostedGroups;
use tidings_core::handler::BoxFuture;
use tidings_log::LogStore;
use tidings_testkit::group_conformance::{self as suite, GroupHarness};

/// Keeps each check's directory until the check ends.
#[derive(Default)]
struct Hosted(Mutex<Vec<tempfile::TempDir>>);

impl GroupHarness for Hosted {
    type Store = LogStore;
    type Groups = HostedGroups<LogStore>;

    fn fresh(&self) -> BoxFuture<'_, (Self::Store, Self::Groups)> {
        Box::pin(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = LogStore::builder(dir.path().to_path_buf())
                .segment_size(1 << 20)
                .open()
                .expect("open");
            self.0.lock().unwrap().push(dir);
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
            suite::$name(&Hosted::default()).await;
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
