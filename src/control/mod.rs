//! The control API: versioned HTTP/1.1 + JSON on `.windlass/control.sock` (mode 0600).
//!
//! One handler per verb, each a thin call into the [`Supervisor`] handle. The same routes are
//! mounted on the admin listener under `/api`, the private ones (logs, consoles) behind the
//! token there. Wire types live in [`crate::protocol`].

pub mod client;
pub mod console;

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use tokio::sync::{Notify, broadcast, watch};

use crate::logs::tail::{MAX_BYTES, MAX_LINES, last_records};
use crate::protocol::Action;
use crate::protocol::{ActionResult, ApiError, LogLine, LogsQuery, RollbackResult, Stream};
use crate::supervisor::{Supervisor, SupervisorError, lisp_image};

/// What the handlers share.
#[derive(Clone)]
pub struct Ctx {
    pub supervisor: Supervisor,
    /// Notified by `POST /v1/down`.
    pub down: Arc<Notify>,
    /// Turns true once every app is stopped (ends `logs -f` streams, answers `down`).
    pub stopped: watch::Receiver<bool>,
}

/// Put on a request by the admin listener when it carries no valid token: the answer leaves
/// out what the apps printed (`last_stderr` of each instance), which only the control socket
/// and token holders see.
#[derive(Debug, Clone, Copy)]
pub struct WithoutAppOutput;

fn redact(instances: &mut [crate::protocol::InstanceStatus]) {
    for i in instances {
        i.last_stderr.clear();
    }
}

/// The whole API, as served on the control socket.
pub fn router(ctx: Ctx) -> Router {
    public_router(ctx.clone()).merge(private_router(ctx))
}

/// Every route but [`private_router`]'s (and the 404 for unknown paths).
pub fn public_router(ctx: Ctx) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/apps/{app}", get(app_status))
        .route("/v1/apps/{app}/{action}", post(app_action))
        .route("/v1/apps/{app}/rollback/{release}", post(rollback_to))
        .route("/v1/down", post(down))
        .fallback(not_found)
        .with_state(ctx)
}

/// What shows what the apps print, or types into them: log reads and consoles. The admin
/// listener serves these only with its token (see [`crate::admin`]).
pub fn private_router(ctx: Ctx) -> Router {
    Router::new()
        .route("/v1/logs", get(logs))
        .route("/v1/apps/{app}/console", get(console::attach))
        .route("/v1/apps/{app}/console/size", post(console::resize))
        .with_state(ctx)
}

/// Binds the control socket with mode 0600 (the directory is made 0700 too), replacing a
/// stale socket file. The caller holds the project lock, so no live supervisor owns it.
pub fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub(crate) fn error(status: StatusCode, err: impl Into<String>, hint: Option<String>) -> Response {
    (
        status,
        Json(ApiError {
            error: err.into(),
            hint,
        }),
    )
        .into_response()
}

pub(crate) fn sup_error(e: SupervisorError) -> Response {
    let status = match e {
        SupervisorError::UnknownApp { .. } => StatusCode::NOT_FOUND,
        SupervisorError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        SupervisorError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        SupervisorError::Config(_)
        | SupervisorError::AppRemoved { .. }
        | SupervisorError::NeedsRestart { .. }
        | SupervisorError::BadRelease { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        SupervisorError::ReloadFailed { .. } | SupervisorError::RestartFailed { .. } => {
            StatusCode::CONFLICT
        }
    };
    let hint = e.hint();
    error(status, e.to_string(), hint)
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint",
        Some("see the API section of the guide; paths start with /v1/".into()),
    )
}

async fn status(
    AxState(ctx): AxState<Ctx>,
    without_output: Option<Extension<WithoutAppOutput>>,
) -> Response {
    let sup = ctx.supervisor.clone();
    match tokio::task::spawn_blocking(move || sup.status()).await {
        Ok(mut s) => {
            if without_output.is_some() {
                for a in &mut s.apps {
                    redact(&mut a.instances);
                }
            }
            Json(s).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
    }
}

async fn app_status(
    AxState(ctx): AxState<Ctx>,
    UrlPath(app): UrlPath<String>,
    without_output: Option<Extension<WithoutAppOutput>>,
) -> Response {
    match ctx.supervisor.app_status_by_name(&app) {
        Ok(mut s) => {
            if without_output.is_some() {
                redact(&mut s.instances);
            }
            if let Some(cfg) = ctx.supervisor.config().app(&app) {
                for inst in s.instances.iter_mut().filter(|i| i.pid.is_some()) {
                    inst.lisp = lisp_image::lisp_metrics(cfg, inst.index).await;
                }
            }
            Json(s).into_response()
        }
        Err(e) => sup_error(e),
    }
}

async fn rollback_to(
    AxState(ctx): AxState<Ctx>,
    UrlPath((app, release)): UrlPath<(String, String)>,
) -> Response {
    rollback(ctx, app, Some(release)).await
}

/// `POST /v1/apps/{app}/rollback[/{release}]`: 200 with a [`RollbackResult`], or an error.
async fn rollback(ctx: Ctx, app: String, release: Option<String>) -> Response {
    match ctx
        .supervisor
        .switch_release(&app, release.as_deref())
        .await
    {
        Ok((s, lines, from, to)) => Json(RollbackResult {
            ok: true,
            app,
            from,
            to: Some(to),
            message: lines.join("\n"),
            hint: None,
            status: Some(s),
        })
        .into_response(),
        Err(e) => sup_error(e),
    }
}

async fn app_action(
    AxState(ctx): AxState<Ctx>,
    UrlPath((app, action)): UrlPath<(String, String)>,
) -> Response {
    if action == "rollback" {
        return rollback(ctx, app, None).await;
    }
    let Some(action) = Action::parse(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown action `{action}`"),
            Some(format!(
                "actions: {}",
                Action::ALL.map(Action::as_str).join(", ")
            )),
        );
    };
    if action == Action::Reload {
        return match ctx.supervisor.reload(&app).await {
            Ok((s, lines)) => Json(ActionResult {
                ok: true,
                message: lines.join("\n"),
                app: Some(s),
            })
            .into_response(),
            Err(e) => sup_error(e),
        };
    }
    match ctx.supervisor.act(&app, action).await {
        Ok(s) => Json(ActionResult {
            ok: true,
            message: format!("{app}: {}", s.state.as_str()),
            app: Some(s),
        })
        .into_response(),
        Err(e) => sup_error(e),
    }
}

async fn down(AxState(ctx): AxState<Ctx>) -> Response {
    ctx.down.notify_one();
    let mut stopped = ctx.stopped.clone();
    let _ = stopped.wait_for(|s| *s).await;
    Json(ActionResult {
        ok: true,
        message: "every app stopped; supervisor exiting".into(),
        app: None,
    })
    .into_response()
}

async fn logs(AxState(ctx): AxState<Ctx>, Query(q): Query<LogsQuery>) -> Response {
    let sup = ctx.supervisor.clone();
    let apps: Vec<String> = match &q.app {
        Some(a) => match sup.app_status_by_name(a) {
            Ok(_) => vec![a.clone()],
            Err(e) => return sup_error(e),
        },
        None => sup.app_names(),
    };
    let n = q.n.unwrap_or(100);
    if n > MAX_LINES {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "n = {n} asks for too many lines: a log read returns at most {MAX_LINES} past lines (per app)"
            ),
            Some(format!(
                "ask for n={MAX_LINES} or fewer, or read the files in {} (`tail -n {n}`)",
                sup.log_dir().display()
            )),
        );
    }
    // Subscribe before reading history so no line falls between the two.
    let rx = q.follow.then(|| sup.subscribe_logs());
    let dir = sup.log_dir();
    let keeps: Vec<u32> = apps.iter().map(|a| sup.log_keep(a).unwrap_or(5)).collect();
    let apps2 = apps.clone();
    let history = tokio::task::spawn_blocking(move || {
        let mut all: Vec<LogLine> = Vec::new();
        for (a, keep) in apps2.iter().zip(keeps) {
            match last_records(&dir, a, n, keep, MAX_BYTES) {
                Ok(mut r) => {
                    if r.cut {
                        all.push(LogLine {
                            ts: r.records.first().map(|l| l.ts.clone()).unwrap_or_else(crate::logs::timestamp),
                            app: a.clone(),
                            instance: None,
                            stream: Stream::Windlass,
                            line: format!(
                                "older lines not shown: a log read returns at most {} MiB per app; they are in {}",
                                MAX_BYTES >> 20,
                                crate::layout::log_path(&dir, a).display()
                            ),
                        });
                    }
                    all.append(&mut r.records);
                }
                Err(e) => all.push(LogLine {
                    ts: crate::logs::timestamp(),
                    app: a.clone(),
                    instance: None,
                    stream: Stream::Windlass,
                    line: format!("cannot read the log files: {e}"),
                }),
            }
        }
        // Merge apps by time (records of one app are already in order; sort is stable).
        all.sort_by(|x, y| x.ts.cmp(&y.ts));
        all
    })
    .await
    .unwrap_or_default();

    let history =
        futures_util::stream::iter(history.into_iter().map(|l| Ok::<_, Infallible>(ndjson(&l))));
    let body = match rx {
        None => Body::from_stream(history),
        Some(rx) => {
            let follow = follow_stream(rx, apps, ctx.stopped.clone());
            Body::from_stream(history.chain(follow))
        }
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(body)
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))
}

fn ndjson(l: &LogLine) -> bytes::Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    v.into()
}

fn follow_stream(
    rx: broadcast::Receiver<Arc<LogLine>>,
    apps: Vec<String>,
    stopped: watch::Receiver<bool>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, Infallible>> {
    futures_util::stream::unfold(
        (rx, apps, stopped),
        |(mut rx, apps, mut stopped)| async move {
            loop {
                if *stopped.borrow() {
                    return None;
                }
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok(l) if apps.iter().any(|a| *a == l.app) => return Some((Ok(ndjson(&l)), (rx, apps, stopped))),
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let note = LogLine {
                                ts: crate::logs::timestamp(),
                                app: apps.first().cloned().unwrap_or_default(),
                                instance: None,
                                stream: Stream::Windlass,
                                line: format!("{n} lines not shown here (this reader fell behind); they are in the log files"),
                            };
                            return Some((Ok(ndjson(&note)), (rx, apps, stopped)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    },
                    _ = stopped.changed() => {}
                }
            }
        },
    )
}
