//! `GET /v1/apps/{app}/console?instance=N&read_only=BOOL`, upgraded (`Upgrade:
//! windlass-console`) to a raw bidirectional byte stream: the server first sends the last
//! 64 KiB of console output, then everything the app writes; bytes from the client are typed
//! into the app's terminal when this viewer holds the keyboard (the first viewer that asked
//! for it; the answer's `windlass-console-role` header says `writer` or `viewer`). Closing
//! the stream detaches; the app keeps running. `rows` and `cols` give the writer's window
//! size; `POST /v1/apps/{app}/console/size?instance=N&rows=R&cols=C` changes it later
//! (the app gets `SIGWINCH`). While the app does not read its terminal, the writer's stream is
//! not read either (back-pressure); nothing else waits for it. On the admin listener these
//! routes need the token (see [`crate::admin`]).

use axum::extract::{Path as UrlPath, Query, Request, State as AxState};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;

use super::{Ctx, error, sup_error};
use crate::supervisor::console::Viewer;

/// The `Upgrade` protocol name.
pub const PROTOCOL: &str = "windlass-console";
/// Response header: `writer` (may type) or `viewer` (read-only).
pub const ROLE_HEADER: &str = "windlass-console-role";

#[derive(Debug, Deserialize)]
pub struct ConsoleQuery {
    #[serde(default)]
    pub instance: u32,
    #[serde(default)]
    pub read_only: bool,
    /// The viewer's window, when it has one.
    pub rows: Option<u16>,
    pub cols: Option<u16>,
}

#[derive(Debug, Deserialize)]
pub struct SizeQuery {
    #[serde(default)]
    pub instance: u32,
    pub rows: u16,
    pub cols: u16,
}

/// Resizes an instance's console terminal.
pub async fn resize(
    AxState(ctx): AxState<Ctx>,
    UrlPath(app): UrlPath<String>,
    Query(q): Query<SizeQuery>,
) -> Response {
    let valid = 1..=crate::supervisor::console::MAX_SIZE;
    if !(valid.contains(&q.rows) && valid.contains(&q.cols)) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("invalid console size {}x{}", q.rows, q.cols),
            Some(format!(
                "rows and cols are each from 1 to {}",
                crate::supervisor::console::MAX_SIZE
            )),
        );
    }
    match ctx.supervisor.console(&app, q.instance) {
        Ok(console) => {
            console.resize(q.rows, q.cols);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => sup_error(e),
    }
}

pub async fn attach(
    AxState(ctx): AxState<Ctx>,
    UrlPath(app): UrlPath<String>,
    Query(q): Query<ConsoleQuery>,
    req: Request,
) -> Response {
    let Some(cfg) = ctx.supervisor.config().app(&app) else {
        return sup_error(crate::supervisor::SupervisorError::UnknownApp {
            name: app,
            known: ctx.supervisor.app_names(),
        });
    };
    if !cfg.console {
        return error(
            StatusCode::BAD_REQUEST,
            format!("app `{app}` has no console"),
            Some(format!(
                "set console = true in [app.{app}] and restart it (the app then runs on a terminal)"
            )),
        );
    }
    let console = match ctx.supervisor.console(&app, q.instance) {
        Ok(c) => c,
        Err(e) => return sup_error(e),
    };
    let wants_upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(PROTOCOL.as_bytes()));
    if !wants_upgrade {
        return error(
            StatusCode::UPGRADE_REQUIRED,
            "the console is a raw stream",
            Some(format!(
                "send `Connection: upgrade` and `Upgrade: {PROTOCOL}`, or use `windlass attach`"
            )),
        );
    }
    let viewer = console.attach(!q.read_only);
    if let (Some(rows), Some(cols)) = (q.rows, q.cols) {
        viewer.resize(rows, cols);
    }
    let role = if viewer.writer { "writer" } else { "viewer" };
    let on_upgrade = hyper::upgrade::on(req);
    let stopped = ctx.stopped.clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            serve(viewer, TokioIo::new(upgraded), stopped).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .header(ROLE_HEADER, role)
        .body(axum::body::Body::empty())
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))
        .into_response()
}

/// Copies console output to the viewer and (for the writer) its bytes to the terminal, until
/// either side closes or the supervisor stops. The two directions do not wait for each other:
/// while the terminal takes no input, this viewer's connection is not read (back-pressure),
/// and its output still flows.
async fn serve<S>(mut viewer: Viewer, io: S, mut stopped: tokio::sync::watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let replay = std::mem::take(&mut viewer.replay);
    if wr.write_all(&replay).await.is_err() || wr.flush().await.is_err() {
        return;
    }
    let keyboard = viewer.keyboard();
    let output = async {
        loop {
            match viewer.output.recv().await {
                Ok(data) => {
                    if wr.write_all(&data).await.is_err() || wr.flush().await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    };
    let input = async {
        let mut buf = vec![0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // A read-only viewer's bytes are read (to notice it leaving) and dropped.
                    if let Some(k) = &keyboard {
                        k.send(bytes::Bytes::copy_from_slice(&buf[..n])).await;
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = output => {}
        _ = input => {}
        _ = stopped.wait_for(|s| *s) => {}
    }
}
