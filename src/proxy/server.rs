//! The client side: the accept loop on an app's public port and one HTTP/1.1 connection
//! task per client (keep-alive, upgrades, `TCP_NODELAY`, a header-read timeout that
//! also bounds idle keep-alive time). The caller binds the listener (mini-redis seam:
//! the supervisor binds the public port once and keeps it; tests bind `127.0.0.1:0`)
//! and passes a shutdown future; on shutdown the loop stops accepting, asks every
//! connection to finish its current request and close, and waits for them up to
//! `shutdown_timeout`. A connection runs either as a task of the calling runtime or, in
//! the supervisor, on one of the proxy's [`Workers`] threads.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::proxy::Shared;
use crate::proxy::deadline::{HeadClock, Heads, Stall};
use crate::proxy::workers::Workers;
use crate::proxy::{fast, forward};

/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    workers: Option<Workers>,
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
        let conn = Connection {
            shared: Arc::clone(&shared),
            builder: builder.clone(),
            client_ip,
            peer,
            stop: stop_rx.clone(),
            alive: alive_tx.clone(),
        };
        match &workers {
            None => {
                tokio::spawn(conn.run(stream));
            }
            Some(workers) => match stream.into_std() {
                // Registered again with the worker's own reactor, on the worker.
                Ok(stream) => workers.spawn_connection(move || async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => conn.run(stream).await,
                        Err(e) => tracing::warn!(error = %e, "cannot hand a client connection to a proxy worker"),
                    }
                }),
                Err(e) => tracing::warn!(error = %e, "cannot hand a client connection to a proxy worker"),
            },
        }
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

/// One accepted client connection and what serving it needs.
struct Connection {
    shared: Arc<Shared>,
    builder: http1::Builder,
    client_ip: HeaderValue,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    /// Dropped when the connection ends; the shutdown waits for every clone to go.
    alive: mpsc::Sender<()>,
}

impl Connection {
    /// Serves the connection until the client closes it or the proxy stops (then the
    /// current request finishes first).
    async fn run(self, stream: TcpStream) {
        let Connection {
            shared,
            builder,
            client_ip,
            peer,
            mut stop,
            alive,
        } = self;
        let _alive = alive;
        let mut stream = stream;
        // Plain requests are served on the raw socket; the first other request moves the
        // connection, with what was read of it, to hyper.
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let ip = client_ip.to_str().unwrap_or("unknown");
        let trusted = shared.cfg.trusts(peer.ip());
        let head_since =
            match fast::serve(&shared, ip, trusted, &mut stream, &mut buf, &mut stop).await {
                fast::Served::Closed => return,
                fast::Served::Fallback { head_since } => head_since,
            };
        let heads = Arc::new(Heads::default());
        let stream = Prefixed {
            prefix: buf,
            inner: stream,
            stall: Stall::new(shared.cfg.idle_timeout),
            head: HeadClock::new(shared.cfg.header_timeout, Arc::clone(&heads), head_since),
        };
        let service = service_fn(move |req| {
            let mark = heads.request();
            forward::handle(Arc::clone(&shared), client_ip.clone(), trusted, mark, req)
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
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
    }
}

/// A client connection whose first bytes were already read (by the plain-request path).
/// A write the client does not take within `write_stall` (it stopped reading) fails, so
/// such a client cannot hold the connection, the app's connection and a drain for ever.
/// A head the client does not finish within `header_timeout` gets a 408 ([`HeadClock`]).
struct Prefixed {
    prefix: BytesMut,
    inner: TcpStream,
    stall: Stall,
    head: HeadClock,
}

impl Prefixed {
    /// The result of a write: one that could not go through fails once the client has
    /// taken nothing for the stall time.
    fn wrote(
        &mut self,
        r: Poll<io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        self.head.write_blocked = r.is_pending();
        match r {
            Poll::Ready(r) => {
                self.stall.progressed();
                Poll::Ready(r)
            }
            Poll::Pending => match self.stall.poll_expired(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took nothing of the response within the idle timeout",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let before = out.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, out);
        if this.head.expired(&r, out.filled().len() > before, cx) {
            if !this.head.write_blocked {
                // Best effort and without waiting: a client this slow may not read.
                let _ = this.inner.try_write(fast::HEAD_TIMEOUT_PAGE);
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not send a whole request head within the header timeout",
            )));
        }
        r
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
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
