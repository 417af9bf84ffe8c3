//! Unit tests of hosted groups: the registry records, the retry schedule, the sweep.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use tidings_core::group::{GroupSettings, Strategy};
use tidings_core::store::InMemoryStore;

use super::registry::{self, Change};
use super::*;
use crate::retry::JitterRng;

#[tokio::test]
async fn registry_records_fold_into_the_live_groups() {
    let store = InMemoryStore::new();
    let (groups, version) = registry::load(&store).await.unwrap();
    assert!(groups.is_empty() && version.is_none());
    let a = GroupSettings::default();
    let rr = GroupSettings {
        strategy: Strategy::RoundRobin,
        ..GroupSettings::default()
    };
    let created = |settings, start| Change::Created { settings, start };
    let v0 = registry::append(&store, None, "a", created(&a, 7))
        .await
        .unwrap()
        .unwrap();
    // A writer that did not see `a` loses: nothing is written.
    assert_eq!(
        registry::append(&store, None, "b", created(&a, 0))
            .await
            .unwrap(),
        None
    );
    let v1 = registry::append(&store, Some(v0), "a", Change::Updated { settings: &rr })
        .await
        .unwrap()
        .unwrap();
    let v2 = registry::append(&store, Some(v1), "a", Change::Deleted)
        .await
        .unwrap()
        .unwrap();
    let v3 = registry::append(&store, Some(v2), "a", created(&a, 9))
        .await
        .unwrap()
        .unwrap();
    let (groups, version) = registry::load(&store).await.unwrap();
    assert_eq!(version, Some(v3));
    assert_eq!(
        groups.get("a"),
        Some(&Registered {
            incarnation: v3,
            settings: a,
            start: 9,
        })
    );
    assert_eq!(groups.len(), 1);
}

#[test]
fn the_retry_policy_follows_the_settings_backoff() {
    let settings = GroupSettings {
        max_retries: 3,
        retry_base: Duration::from_millis(100),
        retry_cap: Duration::from_millis(250),
        ..GroupSettings::default()
    };
    let policy = retry_policy(&settings);
    let mut rng = JitterRng::new(1);
    for attempt in 1..=3 {
        assert!(policy.should_retry(attempt));
        assert_eq!(policy.delay(attempt, &mut rng), settings.backoff(attempt));
    }
    assert!(!policy.should_retry(4), "the attempt after 3 retries parks");
    let none = retry_policy(&GroupSettings {
        max_retries: 0,
        ..settings
    });
    assert!(!none.should_retry(1));
}

#[tokio::test(start_paused = true)]
async fn a_sweep_takes_back_only_what_lapsed() {
    let store = InMemoryStore::new();
    let groups = HostedGroups::open(store).await.unwrap();
    let settings = GroupSettings {
        lease: Duration::from_secs(1),
        ..GroupSettings::default()
    };
    groups.create("g", settings).await.unwrap();
    let hosted = groups.inner.group("g").unwrap();
    let a = hosted.join("a").unwrap();
    let b = hosted.join("b").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    hosted.touch(&b).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    hosted.sweep().await;
    assert!(matches!(
        hosted.touch(&a),
        Err(GroupError::LeaseExpired { .. })
    ));
    assert!(hosted.touch(&b).is_ok());
}
