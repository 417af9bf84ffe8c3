//! `GET /projections` and `GET /projections/{name}`: the built-in read models
//! (`event-types`, `categories`), served read-only from their live version.
//!
//! The first request for them starts their runners in the background, one per read
//! model: each opens the live version as saved in the store, catches up and follows the
//! log until the server shuts down (saving its checkpoint then). A blue/green rebuild
//! (`tidings projection rebuild`) made while the server was stopped is what the server
//! serves on its next start. Each answer holds one whole version: the model, its
//! version, and `next`, the position it is complete up to.

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tidings::projection::builtin::{self, Builtin, Categories, EventTypes};
use tidings::projection::{LiveReadModel, Stored};
use tokio::sync::OnceCell;

use crate::problem::Problem;
use crate::{AppState, EventStore};

/// The built-in read models of one server, started on first use.
pub(crate) struct Projections<S> {
    event_types: OnceCell<Served<S, EventTypes>>,
    categories: OnceCell<Served<S, Categories>>,
}

impl<S> Default for Projections<S> {
    fn default() -> Self {
        Self {
            event_types: OnceCell::new(),
            categories: OnceCell::new(),
        }
    }
}

/// One running read model: what readers go through, and why its runner stopped.
struct Served<S, M> {
    live: LiveReadModel<Stored<S, M>>,
    failure: Arc<Mutex<Option<String>>>,
}

impl<S: EventStore, M: Builtin> Served<S, M> {
    async fn start(state: &AppState<S>) -> Result<Self, Problem> {
        let mut runner = builtin::open::<S, M>(state.store().clone())
            .await
            .map_err(|e| {
                Problem::unavailable(
                    "projection-unavailable",
                    format!("projection {} cannot start: {e}", M::NAME),
                    5,
                )
            })?;
        let live = runner.live();
        let failure = Arc::new(Mutex::new(None));
        let mut shutdown = state.shutdown_watch();
        tokio::spawn({
            let failure = Arc::clone(&failure);
            async move {
                let stopped = tokio::select! {
                    r = runner.run() => Some(r),
                    _ = shutdown.wait_for(|down| *down) => None,
                };
                match stopped {
                    Some(Err(e)) => {
                        tracing::error!(projection = M::NAME, error = %e, "projection stopped");
                        *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                    }
                    Some(Ok(())) => {}
                    None => {
                        if let Err(e) = runner.save_checkpoint().await {
                            tracing::debug!(projection = M::NAME, error = %e, "checkpoint not saved at shutdown");
                        }
                    }
                }
            }
        });
        Ok(Self { live, failure })
    }

    async fn describe(&self, with_model: bool) -> Result<Value, Problem> {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let view = self.live.read().await;
        let mut out = json!({
            "name": M::NAME,
            "about": M::ABOUT,
            "version": view.version(),
            "next": view.next(),
            "failure": failure,
        });
        if with_model {
            out["model"] = serde_json::to_value(view.model()).map_err(|e| {
                Problem::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-error",
                    format!("projection {} cannot be serialized: {e}", M::NAME),
                )
            })?;
        }
        Ok(out)
    }
}

impl<S: EventStore> Projections<S> {
    async fn event_types(&self, state: &AppState<S>) -> Result<&Served<S, EventTypes>, Problem> {
        self.event_types
            .get_or_try_init(|| Served::start(state))
            .await
    }

    async fn categories(&self, state: &AppState<S>) -> Result<&Served<S, Categories>, Problem> {
        self.categories
            .get_or_try_init(|| Served::start(state))
            .await
    }
}

async fn end<S: EventStore>(state: &AppState<S>) -> Result<u64, Problem> {
    Ok(state.store().head().await?.map_or(0, |h| h + 1))
}

/// `GET /projections`: every built-in read model, without its model.
pub(crate) async fn list<S: EventStore>(
    State(state): State<AppState<S>>,
) -> Result<Response, Problem> {
    let p = &state.inner.projections;
    let mut all = vec![
        p.event_types(&state).await?.describe(false).await?,
        p.categories(&state).await?.describe(false).await?,
    ];
    let end = end(&state).await?;
    for one in &mut all {
        one["end"] = end.into();
    }
    Ok(Json(json!({ "projections": all })).into_response())
}

/// `GET /projections/{name}`: one built-in read model, whole.
pub(crate) async fn get<S: EventStore>(
    State(state): State<AppState<S>>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    let p = &state.inner.projections;
    let mut out = match name.as_str() {
        EventTypes::NAME => p.event_types(&state).await?.describe(true).await?,
        Categories::NAME => p.categories(&state).await?.describe(true).await?,
        _ => {
            let names: Vec<&str> = builtin::BUILTIN.iter().map(|(n, _)| *n).collect();
            return Err(Problem::not_found(
                "projection-not-found",
                format!(
                    "no projection {name:?}; the built-in ones are {}",
                    names.join(", ")
                ),
            )
            .with("projection", name));
        }
    };
    out["end"] = end(&state).await?.into();
    Ok(Json(out).into_response())
}
