//! The web console: static HTML, CSS and JavaScript compiled into the binary.
//!
//! No npm build: the files in `assets/` are plain, hand-written and embedded with
//! `include_str!`, so `cargo build` is the whole build.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::problem::Problem;

const INDEX: &str = include_str!("../assets/index.html");
const FILES: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "groups.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/groups.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../assets/favicon.svg"),
    ),
];

pub(crate) async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX,
    )
        .into_response()
}

pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, Problem> {
    let (_, content_type, body) =
        FILES
            .iter()
            .find(|(name, _, _)| *name == file)
            .ok_or_else(|| {
                Problem::not_found(
                    "asset-not-found",
                    format!("the console has no file {file:?}"),
                )
            })?;
    Ok((
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        *body,
    )
        .into_response())
}
