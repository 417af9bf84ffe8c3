//! The NATS JetStream transport passes the transport conformance suite, its dead-letter
//! checks included.
//!
//! Needs `TIDINGS_NATS_URL` (such as `nats://127.0.0.1:4222`); without it, or when the
//! server is unreachable, the test says SKIP loudly and passes, unless
//! `TIDINGS_REQUIRE_SERVICES=1`, which turns the skip into a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic on what they assert

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;

use tidings_nats::{NatsConfig, NatsTransport};
use tidings_testkit::transport_conformance::{self, unique};

fn skip(reason: &str) {
    tidings_testkit::services::skip_or_fail("tidings-nats conformance", reason);
}

fn config(url: &str) -> NatsConfig {
    let name = unique("conformance").replace('-', "_");
    NatsConfig::new(url)
        .stream(name.to_uppercase())
        .subject_prefix(name)
        // Short, so the dropped-subscriber check does not wait long; long enough that
        // a message held for a moment in the competing-consumers check is not redelivered.
        .ack_wait(Duration::from_secs(5))
        .batch(4)
        .connect_timeout(Duration::from_secs(3))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_transport_conformance() {
    let Ok(url) = std::env::var("TIDINGS_NATS_URL") else {
        return skip("TIDINGS_NATS_URL is not set");
    };
    match NatsTransport::connect(config(&url)).await {
        Ok(probe) => {
            if let Err(e) = probe.delete_stream().await {
                eprintln!("cleanup: deleting stream {}: {e}", probe.stream_name());
            }
        }
        Err(e) => return skip(&format!("{url} is unreachable: {e}")),
    }
    transport_conformance::run_all_cleaning_up(
        || {
            let url = url.clone();
            async move {
                NatsTransport::connect(config(&url))
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e}"))
            }
        },
        |t| async move {
            if let Err(e) = t.delete_stream().await {
                eprintln!("cleanup: deleting stream {}: {e}", t.stream_name());
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_dead_letter_conformance() {
    let Ok(url) = std::env::var("TIDINGS_NATS_URL") else {
        return skip("TIDINGS_NATS_URL is not set");
    };
    match NatsTransport::connect(config(&url)).await {
        Ok(probe) => {
            if let Err(e) = probe.delete_stream().await {
                eprintln!("cleanup: deleting stream {}: {e}", probe.stream_name());
            }
        }
        Err(e) => return skip(&format!("{url} is unreachable: {e}")),
    }
    cleaning_up(&url, transport_conformance::run_dead_letters).await;
}

/// Runs `checks` with a factory of fresh transports, then deletes every stream they
/// made, also when a check panics (whose panic is raised again afterwards).
async fn cleaning_up<C, CFut>(url: &str, checks: C)
where
    C: FnOnce(
        Box<dyn FnMut() -> futures::future::BoxFuture<'static, NatsTransport> + Send>,
    ) -> CFut,
    CFut: Future<Output = ()>,
{
    let made: Arc<Mutex<Vec<NatsTransport>>> = Arc::default();
    let fresh = {
        let made = made.clone();
        let url = url.to_owned();
        move || {
            let made = made.clone();
            let url = url.clone();
            async move {
                let t = NatsTransport::connect(config(&url))
                    .await
                    .unwrap_or_else(|e| panic!("connect: {e}"));
                made.lock().unwrap().push(t.clone());
                t
            }
            .boxed()
        }
    };
    let run = std::panic::AssertUnwindSafe(checks(Box::new(fresh)))
        .catch_unwind()
        .await;
    let made = std::mem::take(&mut *made.lock().unwrap());
    for t in made {
        if let Err(e) = t.delete_stream().await {
            eprintln!("cleanup: deleting stream {}: {e}", t.stream_name());
        }
    }
    if let Err(panic) = run {
        std::panic::resume_unwind(panic);
    }
}
