//! The admin listener (`[admin] listen`, default `127.0.0.1:9180`): `/metrics` for Prometheus,
//! `/dashboard` for people, and `/api/v1/...`, the control API of the socket, for both.
//!
//! Access rules (constant-time token comparison):
//! - no `token`: reads (`GET`, `HEAD`) are open, actions (`POST`) answer 401; the config
//!   refuses a non-loopback `listen` without a token, so this is loopback only;
//! - `token` set: actions need `Authorization: Bearer TOKEN`; on a non-loopback address, reads
//!   of `/api` and `/metrics` need it too (Prometheus: `authorization: { credentials: TOKEN }`).
//!
//! The dashboard's own files are always served: they hold no data, and the page asks for the
//! token when the API wants one. `listen = "off"` disables the listener.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::control;
use crate::metrics::Metrics;
use crate::protocol::ApiError;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the admin listener ([admin] listen): {source}{}", holder.as_ref().map(|h| format!("; {h} holds it")).unwrap_or_default())]
pub struct AdminError {
    pub addr: SocketAddr,
    /// "pid 123 (nginx)" when /proc tells who listens there.
    pub holder: Option<String>,
    #[source]
    pub source: std::io::Error,
}

impl AdminError {
    pub fn hint(&self) -> String {
        format!(
            "set another address in windlass.toml, e.g. [admin] listen = \"127.0.0.1:{}\", or listen = \"off\" to disable /metrics and the dashboard",
            self.addr.port().wrapping_add(1).max(1024)
        )
    }
}

/// Binds the admin address, saying who holds it when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AdminError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError {
            addr,
            holder: (source.kind() == std::io::ErrorKind::AddrInUse)
                .then(|| crate::ports::who_holds_port(addr.port()))
                .flatten()
                .map(|(pid, cmd)| format!("pid {pid} ({cmd})")),
            source,
        })
}

/// Everything the admin routes need.
#[derive(Clone)]
pub struct Admin {
    pub token: Option<String>,
    /// True when bound to a loopback address (reads are then open).
    pub loopback: bool,
    pub metrics: Metrics,
}

/// `/metrics`, `/dashboard`, and the control API under `/api`.
pub fn router(admin: Admin, ctx: control::Ctx) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .with_state(admin.clone())
        .nest("/api", control::router(ctx))
        .layer(middleware::from_fn_with_state(admin, guard));
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .merge(crate::dashboard::routes())
        .merge(guarded)
}

/// Compares in time independent of where the strings differ (length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(error: &str, hint: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"windlass\"")],
        axum::Json(ApiError {
            error: error.to_owned(),
            hint: Some(hint.to_owned()),
        }),
    )
        .into_response()
}

async fn guard(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let Some(token) = &admin.token else {
        if read {
            return next.run(req).await;
        }
        return unauthorized(
            "actions are disabled on the admin listener: no token is configured",
            "set `token` in [admin] of windlass.toml and send `Authorization: Bearer TOKEN`, or use the windlass command line",
        );
    };
    if read && admin.loopback {
        return next.run(req).await;
    }
    match bearer(&req) {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => unauthorized(
            "wrong token",
            "send the `token` of [admin] in windlass.toml as `Authorization: Bearer TOKEN`",
        ),
        None => unauthorized(
            "this needs the admin token",
            "send the `token` of [admin] in windlass.toml as `Authorization: Bearer TOKEN`",
        ),
    }
}

type Encoder = fn(&Metrics) -> Result<String, std::fmt::Error>;

/// OpenMetrics when the scraper asks for it (Prometheus does), else Prometheus text 0.0.4.
async fn metrics(State(admin): State<Admin>, headers: axum::http::HeaderMap) -> Response {
    let m = admin.metrics.clone();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (kind, encode): (_, Encoder) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Metrics::encode,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            Metrics::encode_prometheus,
        )
    };
    match tokio::task::spawn_blocking(move || encode(&m)).await {
        Ok(Ok(text)) => Response::builder()
            .header(header::CONTENT_TYPE, kind)
            .body(Body::from(text))
            .unwrap_or_else(|e| internal(&e.to_string())),
        Ok(Err(e)) => internal(&format!("cannot encode the metrics: {e}")),
        Err(e) => internal(&format!("the metrics task failed: {e}")),
    }
}

fn internal(msg: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(ApiError {
            error: msg.to_owned(),
            hint: Some("this is a bug in windlass; please report it".into()),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(constant_time_eq(b"", b""));
    }

    #[tokio::test]
    async fn a_taken_port_names_its_holder() {
        let held = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 0");
        let addr = held.local_addr().expect("addr");
        let e = bind(addr).await.expect_err("the port is taken");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(e.hint().contains("[admin] listen"), "{}", e.hint());
    }
}
