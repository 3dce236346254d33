//! The web dashboard: one HTML page, a stylesheet and a script, embedded in the binary with
//! `include_str!` (no Node build, no CDN: it works on a machine without internet).
//!
//! The page reads the same API as the CLI (`/api/v1/status`, `/api/v1/logs?follow=true`) and
//! `/metrics` (request rates and latency from the proxy's histogram), keeps the last minutes
//! in memory for its charts, and sends actions and log reads with `Authorization: Bearer` once
//! the user gave the token (until then the log panel says it needs it).

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");
const ICON: &str = include_str!("assets/icon.svg");

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; img-src 'self' data:",
            ),
        ],
        body,
    )
}

/// `/dashboard` (and `/dashboard/`) and its assets under `/dashboard/`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let index = || async { asset("text/html; charset=utf-8", INDEX) };
    Router::new()
        .route("/dashboard", get(index))
        .route("/dashboard/", get(index))
        .route(
            "/dashboard/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/dashboard/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/dashboard/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
}
