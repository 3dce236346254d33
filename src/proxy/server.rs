//! The client side: the accept loop on an app's public port and one HTTP/1.1 connection
//! task per client (keep-alive, upgrades, `TCP_NODELAY`, a header-read timeout that
//! also bounds idle keep-alive time). The caller binds the listener (mini-redis seam:
//! the supervisor binds the public port once and keeps it; tests bind `127.0.0.1:0`)
//! and passes a shutdown future; on shutdown the loop stops accepting, asks every
//! connection to finish its current request and close, and waits for them up to
//! `shutdown_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::proxy::Shared;
use crate::proxy::forward;

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(shared.cfg.idle_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; `recv` returns None once all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);

    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                if !is_per_connection_error(&e) {
                    tracing::warn!(app = %shared.app, error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on client connection");
        }
        let client_ip = HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value");
        let conn_shared = Arc::clone(&shared);
        let service = service_fn(move |req| {
            let response = forward::handle(Arc::clone(&conn_shared), client_ip.clone(), req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            let _alive = alive;
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stopped(&mut stop) => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection ended with an error");
            }
        });
    }

    stop_tx.send_replace(true);
    drop(alive_tx);
    if tokio::time::timeout(shared.cfg.shutdown_timeout, alive_rx.recv())
        .await
        .is_err()
    {
        tracing::warn!(app = %shared.app, "client connections still open after the shutdown timeout");
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The `Ref` returned by `wait_for` must not live across an await; drop it here.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Errors that concern one incoming connection only (the next accept may succeed).
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
