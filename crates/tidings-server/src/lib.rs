//! # tidings-server
//!
//! The Tidings HTTP API as an axum [`Router`] over any [`EventStore`]: appends (Tidings
//! envelopes and CloudEvents in all three HTTP content modes), reads, Server-Sent Events
//! subscriptions, Prometheus metrics, an OpenAPI document and the web console.
//!
//! Mount it in your own service, or run it with `tidings serve`:
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! use tidings::InMemoryStore;
//! use tidings_server::{AppState, ServerConfig};
//! let state = AppState::new(InMemoryStore::new(), ServerConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7400").await?;
//! tidings_server::serve(listener, state, tidings_server::shutdown_signal()).await
//! # }
//! ```
//!
//! Routes, all JSON, errors as RFC 9457 `application/problem+json`:
//!
//! | route | what |
//! |---|---|
//! | `POST /streams/{stream}` | append (header `Expected-Version`) |
//! | `GET /streams/{stream}` | read a stream (`from`, `limit`, `direction`) |
//! | `GET /streams/{stream}/{revision}` | one event |
//! | `GET /all` | read the global log (`from`, `limit`, `type`, `streamPrefix`, `category`) |
//! | `GET /streams` | list streams (`prefix`, `after`, `limit`) |
//! | `GET /correlations/{id}` | one business transaction, in commit order |
//! | `GET /projections`, `GET /projections/{name}` | the built-in read models (`event-types`, `categories`) |
//! | `GET /subscribe/all`, `GET /subscribe/streams/{stream}` | Server-Sent Events (`format=cloudevents`) |
//! | `GET /health`, `/ready`, `/metrics`, `/stats`, `/openapi.json` | operations |
//! | `GET /` | the web console |
//!
//! The four read routes answer in CloudEvents when `Accept` asks for it; see [`format`](mod@format).
//!
//! With consumer groups ([`AppState::with_groups`]), members in any language share the
//! work of a group over HTTP ([`groups`](mod@groups), [`groups_sse`](mod@groups_sse)):
//!
//! | route | what |
//! |---|---|
//! | `GET /groups`, `POST /groups` | list groups; create one (`{"name", "settings"}`) |
//! | `GET`, `PUT`, `DELETE /groups/{group}` | describe (lag, members, in flight, parked); change settings; delete |
//! | `POST /groups/{group}/members` | join (`{"name"}`): the member's lease |
//! | `POST /groups/{group}/members/{member}/heartbeat`, `DELETE /groups/{group}/members/{member}` | keep the lease; leave |
//! | `GET /groups/{group}/members/{member}/messages` | long-poll for messages (`max`, `waitMs`) |
//! | `GET /groups/{group}/members/{member}/stream` | messages as Server-Sent Events (`max` unsettled at once) |
//! | `POST /groups/{group}/members/{member}/settle` | settle a batch (`ack`, `retry`, `park`, `skip`) |
//! | `POST /groups/{group}/members/{member}/messages/{id}/{action}` | settle one message |
//! | `GET /groups/{group}/parked`, `POST …/parked/replay`, `DELETE …/parked` | list, replay, delete parked messages |
//! | `POST /groups/{group}/parked/{id}/replay`, `DELETE /groups/{group}/parked/{id}` | replay or delete one |
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod admission;
pub mod append;
pub mod auth;
mod console;
pub mod format;
pub mod groups;
mod groups_openapi;
pub mod groups_sse;
pub mod metrics;
pub mod openapi;
pub mod problem;
mod projections;
mod routes;
mod sse;
mod stalls;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tidings::group::Groups;
use tidings::{Enricher, EventStore};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::groups_sse::GroupStreams;

pub use auth::{Role, Tokens};
pub use metrics::Metrics;
pub use problem::Problem;

/// Default cap on a request body: 16 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 16 << 20;

/// Default [`ServerConfig::append_timeout`]: 30 s.
pub const DEFAULT_APPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// How the server behaves. Every field has a safe default.
#[derive(Clone)]
pub struct ServerConfig {
    /// Largest request body accepted (413 above). Default 16 MiB.
    pub max_body_bytes: usize,
    /// Appends accepted at once, waiting or running; more are answered 503 with
    /// `Retry-After`. Default 512.
    pub max_pending_appends: usize,
    /// Request-body bytes that pending appends may hold together; an append whose body
    /// would exceed it is answered 503 with `Retry-After`. Bodies without a
    /// `Content-Length` count as `max_body_bytes`. Default 256 MiB.
    pub max_pending_bytes: usize,
    /// Interval of heartbeat comments on idle Server-Sent Events connections. Default 15 s.
    pub heartbeat: Duration,
    /// The `source` given to events that do not name one. Default `tidings-http`.
    pub default_source: String,
    /// Bearer tokens; empty turns authentication off.
    pub tokens: Tokens,
    /// Reports the store's size on disk, for `/stats` and `/metrics`.
    pub store_size: Option<Arc<dyn Fn() -> Option<u64> + Send + Sync>>,
    /// A name for the store behind the server, shown by `/stats` and the console.
    pub store_description: String,
    /// Longest an append may take before it is answered 503 `append-timeout` (its
    /// outcome may then be unknown: the store call keeps running and may still write).
    /// While an append is in flight past it, or one timed out within it and none has
    /// succeeded since, `/ready` answers 503. Default 30 s.
    pub append_timeout: Duration,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_pending_appends", &self.max_pending_appends)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("heartbeat", &self.heartbeat)
            .field("default_source", &self.default_source)
            .field("tokens", &self.tokens)
            .field("store_description", &self.store_description)
            .field("append_timeout", &self.append_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_pending_appends: 512,
            max_pending_bytes: 256 << 20,
            heartbeat: Duration::from_secs(15),
            default_source: "tidings-http".to_owned(),
            tokens: Tokens::none(),
            store_size: None,
            store_description: "store".to_owned(),
            append_timeout: DEFAULT_APPEND_TIMEOUT,
        }
    }
}

/// Everything a handler needs: the store, the configuration, the counters and the
/// shutdown signal. Cheap to clone.
pub struct AppState<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for AppState<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<S> {
    store: S,
    groups: Option<Arc<dyn Groups>>,
    group_streams: GroupStreams,
    config: ServerConfig,
    enricher: Enricher,
    metrics: Metrics,
    admission: Admission,
    stalls: Arc<stalls::Stalls>,
    shutting_down: AtomicBool,
    shutdown: watch::Sender<bool>,
    started: Instant,
    projections: projections::Projections<S>,
}

impl<S: EventStore> AppState<S> {
    /// State serving `store` with `config`, without consumer groups (their routes
    /// answer 501).
    pub fn new(store: S, config: ServerConfig) -> Self {
        Self::build(store, None, config)
    }

    /// State serving `store` and its consumer groups `groups` with `config`.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use tidings::InMemoryStore;
    /// use tidings::consumer::HostedGroups;
    /// use tidings_server::{AppState, ServerConfig};
    /// let store = InMemoryStore::new();
    /// let groups = HostedGroups::open(store.clone()).await.unwrap();
    /// let state = AppState::with_groups(store, Arc::new(groups), ServerConfig::default());
    /// assert!(state.groups().is_some());
    /// # });
    /// ```
    pub fn with_groups(store: S, groups: Arc<dyn Groups>, config: ServerConfig) -> Self {
        Self::build(store, Some(groups), config)
    }

    fn build(store: S, groups: Option<Arc<dyn Groups>>, config: ServerConfig) -> Self {
        let enricher = Enricher::new(config.default_source.clone());
        Self {
            inner: Arc::new(Inner {
                store,
                groups,
                group_streams: GroupStreams::default(),
                enricher,
                metrics: Metrics::default(),
                admission: Admission::new(&config),
                stalls: Arc::default(),
                shutting_down: AtomicBool::new(false),
                shutdown: watch::channel(false).0,
                started: Instant::now(),
                projections: projections::Projections::default(),
                config,
            }),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The consumer groups served, if any.
    pub fn groups(&self) -> Option<&Arc<dyn Groups>> {
        self.inner.groups.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Starts shutting down: new appends get 503, subscriptions end. In-flight appends
    /// run to completion; [`AppState::drain`] waits for them.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown.send_replace(true);
    }

    /// True once [`AppState::begin_shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Waits until no append is in flight (after [`AppState::begin_shutdown`], none
    /// can start).
    pub async fn drain(&self) {
        self.inner.admission.drain().await;
    }

    fn shutdown_watch(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }
}

/// The whole API and the console as a router over `state`'s store.
pub fn router<S: EventStore>(state: AppState<S>) -> Router {
    Router::new()
        .route("/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .route("/streams", get(routes::list_streams::<S>))
        .route(
            "/streams/{stream}",
            get(routes::read_stream::<S>).post(routes::append::<S>),
        )
        .route("/streams/{stream}/{revision}", get(routes::read_event::<S>))
        .route("/all", get(routes::read_all::<S>))
        .route("/correlations/{id}", get(routes::correlation::<S>))
        .route("/projections", get(projections::list::<S>))
        .route("/projections/{name}", get(projections::get::<S>))
        .route("/subscribe/all", get(sse::subscribe_all::<S>))
        .route(
            "/subscribe/streams/{stream}",
            get(sse::subscribe_stream::<S>),
        )
        .route("/groups", get(groups::list::<S>).post(groups::create::<S>))
        .route(
            "/groups/{group}",
            get(groups::describe::<S>)
                .put(groups::update::<S>)
                .delete(groups::delete::<S>),
        )
        .route("/groups/{group}/members", post(groups::join::<S>))
        .route(
            "/groups/{group}/members/{member}",
            axum::routing::delete(groups::leave::<S>),
        )
        .route(
            "/groups/{group}/members/{member}/heartbeat",
            post(groups::heartbeat::<S>),
        )
        .route(
            "/groups/{group}/members/{member}/messages",
            get(groups::fetch::<S>),
        )
        .route(
            "/groups/{group}/members/{member}/messages/{id}/{action}",
            post(groups::settle_one::<S>),
        )
        .route(
            "/groups/{group}/members/{member}/stream",
            get(groups_sse::stream::<S>),
        )
        .route(
            "/groups/{group}/members/{member}/settle",
            post(groups::settle::<S>),
        )
        .route(
            "/groups/{group}/parked",
            get(groups::parked::<S>).delete(groups::delete_parked::<S>),
        )
        .route(
            "/groups/{group}/parked/replay",
            post(groups::replay_parked::<S>),
        )
        .route(
            "/groups/{group}/parked/{id}",
            axum::routing::delete(groups::delete_parked_one::<S>),
        )
        .route(
            "/groups/{group}/parked/{id}/replay",
            post(groups::replay_parked_one::<S>),
        )
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready::<S>))
        .route("/metrics", get(routes::metrics::<S>))
        .route("/stats", get(routes::stats::<S>))
        .route("/openapi.json", get(routes::openapi))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize::<S>,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_problem,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), observe::<S>))
        .layer(
            tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([
                header::AUTHORIZATION,
            ]),
        )
        .with_state(state)
}

async fn observe<S: EventStore>(
    State(state): State<AppState<S>>,
    req: Request,
    next: Next,
) -> Response {
    let span = tracing::debug_span!("http", method = %req.method(), path = %req.uri().path());
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let response = as_problem(response).await;
    let status = response.status().as_u16();
    state.metrics().record_status(status);
    span.in_scope(|| tracing::debug!(status, "response"));
    response
}

/// A handler panicked: answer 500 with a problem instead of dropping the connection.
fn panic_problem(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    Problem::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal-error",
        "the server failed while handling this request; it has been logged",
    )
    .into_response()
}

/// Rewrites plain-text error responses (axum's own extractor rejections) as problems,
/// so every error the API answers is `application/problem+json`.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let detail = String::from_utf8_lossy(&body).into_owned();
    let slug = if status.is_client_error() {
        "invalid-request"
    } else {
        "internal-error"
    };
    Problem::new(status, slug, detail).into_response()
}

/// Serves `state` on `listener` until `shutdown` completes, then shuts down gracefully:
/// stops accepting connections, refuses new appends, ends subscriptions, lets in-flight
/// requests finish and returns once no append is in flight.
pub async fn serve<S: EventStore>(
    listener: TcpListener,
    state: AppState<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let on_signal = state.clone();
    // Small responses and SSE frames go out at once instead of waiting on Nagle.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight appends, closing subscriptions");
            on_signal.begin_shutdown();
        })
        .await;
    state.begin_shutdown();
    state.drain().await;
    tracing::info!("shut down cleanly");
    result
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
