//! PgStore against the shared conformance suite and the model.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

mod common;

use common::{Schemas, database, database_blocking, runtime, store_in};
use tidings_testkit::{conformance, model};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_conforms() {
    let Some(url) = database("postgres_store_conforms").await else {
        return;
    };
    let schemas = Schemas::default();
    // Positions may have gaps on PostgreSQL (decision 0020).
    conformance::run_all_with(conformance::Capabilities::default().gaps_allowed(), || {
        let (url, schema) = (url.clone(), schemas.fresh());
        async move { store_in(&url, &schema).await }
    })
    .await;
    schemas.drop_all(&url).await;
}

#[test]
fn postgres_store_matches_the_model() {
    let Some(url) = database_blocking("postgres_store_matches_the_model") else {
        return;
    };
    let schemas = Schemas::default();
    model::check_model("postgres_store_matches_the_model", 100, || {
        let (url, schema) = (url.clone(), schemas.fresh());
        async move { store_in(&url, &schema).await }
    });
    runtime().block_on(schemas.drop_all(&url));
}
