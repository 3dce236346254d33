//! The client side: the accept loop on an app's public port and one HTTP/1.1 connection
//! task per client (keep-alive, upgrades, `TCP_NODELAY`, a header-read timeout that
//! also bounds idle keep-alive time). The caller binds the listener (mini-redis seam:
//! the supervisor binds the public port once and keeps it; tests bind `127.0.0.1:0`)
//! and passes a shutdown future; on shutdown the loop stops accepting, asks every
//! connection to finish its current request and close, and waits for them up to
//! `shutdown_timeout`. A connection runs either as a task of the calling runtime or, in
//! the supervisor, on one of the proxy's [`Workers`] threads.
//!
//! The loop never takes more than `max_connections` client connections (`limit`): at the
//! cap it waits, closing connections that have sent nothing yet (oldest first) to make
//! room, and the next clients wait in the listen backlog. A connection that has sent
//! nothing yet waits for its first bytes on the accept loop's runtime and reaches a
//! worker only then, so idle connections cost the workers nothing. An accept that fails for want
//! of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) closes such idle
//! connections too and pauses the loop briefly instead of spinning; either is logged at
//! most once per 10 s.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::proxy::Shared;
use crate::proxy::deadline::{HeadClock, Heads, Stall};
use crate::proxy::error::ErrorCause;
use crate::proxy::limit::Slot;
use crate::proxy::workers::Workers;
use crate::proxy::{forward, plain};

/// Pause after an accept error such as EMFILE, so the loop does not spin (nginx pauses
/// 500 ms, Go's net/http 5 ms to 1 s); the connection waits in the listen backlog.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Connections that sent nothing closed at once when an accept finds no descriptor left.
const SHED_ON_EXHAUSTION: usize = 32;
/// At most one warning per this period about the cap or accept errors.
const LOG_EVERY: Duration = Duration::from_secs(10);

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
        // The app's `Date` goes through as it came, and none is added: as the plain path.
        .auto_date_header(false)
        .header_read_timeout(shared.cfg.idle_timeout);
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; `recv` returns None once all are gone.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);

    let mut at_cap_log = RateLimited::new(LOG_EVERY);
    let mut accept_error_log = RateLimited::new(LOG_EVERY);
    loop {
        // At the cap, wait for room (closing connections that sent nothing, oldest first)
        // rather than take a descriptor the supervisor needs for its own work.
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = shared.limit.room(|| {
                if let Some(held) = at_cap_log.ready() {
                    tracing::warn!(
                        app = %shared.app,
                        max_connections = shared.limit.stats().max,
                        held,
                        "client connections at proxy.max_connections, all busy; new ones wait in the listen backlog"
                    );
                }
            }) => {}
        }
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) if is_per_connection_error(&e) => continue,
            Err(e) => {
                // Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) or
                // another failure: make room from idle connections, and pause instead
                // of spinning; the connection waits in the backlog meanwhile.
                if crate::limits::is_local_exhaustion(&e) {
                    shared.limit.shed_waiting(SHED_ON_EXHAUSTION);
                }
                if let Some(held) = accept_error_log.ready() {
                    match crate::limits::exhaustion_hint(&e) {
                        Some(hint) => {
                            tracing::warn!(app = %shared.app, error = %e, held, "accept failed: {hint}")
                        }
                        None => {
                            tracing::warn!(app = %shared.app, error = %e, held, "accept failed")
                        }
                    }
                }
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
                continue;
            }
        };
        let slot = Slot::take(&shared.limit);
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
            slot,
        };
        match &workers {
            None => {
                tokio::spawn(async move {
                    let mut conn = conn;
                    if conn.first_bytes(&stream).await {
                        conn.serve(stream).await;
                    } else {
                        drop(stream);
                        drop(conn);
                    }
                });
            }
            // A connection that has sent nothing yet waits for its first bytes here, on
            // the accept loop's runtime, and goes to a worker only then: connections
            // that stay idle (an idle flood) never cost the workers serving requests.
            Some(workers) => match peek(&stream) {
                Peek::Data => hand_over(workers, conn, stream),
                Peek::Closed => {}
                Peek::Nothing => {
                    let workers = workers.clone();
                    tokio::spawn(async move {
                        let mut conn = conn;
                        if conn.first_bytes(&stream).await {
                            hand_over(&workers, conn, stream);
                        } else {
                            drop(stream);
                            drop(conn);
                        }
                    });
                }
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
    /// Its place under `max_connections`, given back when the connection ends.
    slot: Slot,
}

/// Runs the connection on the least-loaded worker, registered with that worker's reactor.
fn hand_over(workers: &Workers, conn: Connection, stream: TcpStream) {
    match stream.into_std() {
        Ok(stream) => workers.spawn_connection(move || async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => conn.serve(stream).await,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot hand a client connection to a proxy worker")
                }
            }
        }),
        Err(e) => tracing::warn!(error = %e, "cannot hand a client connection to a proxy worker"),
    }
}

impl Connection {
    /// Waits until the client has sent something (at once if it has); false if the
    /// connection should close instead (see [`first_bytes`]). The caller drops the
    /// stream, then the connection, so its slot is given back after the socket closes.
    async fn first_bytes(&mut self, stream: &TcpStream) -> bool {
        first_bytes(&self.shared, stream, &mut self.slot, &mut self.stop).await
    }

    /// Serves the connection, whose first bytes have come, until the client closes it or
    /// the proxy stops (then the current request finishes first).
    async fn serve(self, stream: TcpStream) {
        let Connection {
            shared,
            builder,
            client_ip,
            peer,
            mut stop,
            alive,
            slot,
        } = self;
        let _alive = alive;
        // Declared before the stream, so dropped after it: the slot is given back once
        // the descriptor is closed.
        let _slot = slot;
        let mut stream = stream;
        // Plain requests are served on the raw socket; the first other request moves the
        // connection, with what was read of it, to hyper.
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let ip = client_ip.to_str().unwrap_or("unknown");
        let trusted = shared.cfg.trusts(peer.ip());
        let head_since = if shared.cfg.plain_path {
            match plain::serve(&shared, ip, trusted, &mut stream, &mut buf, &mut stop).await {
                plain::Served::Closed => return,
                plain::Served::Fallback { head_since } => head_since,
            }
        } else {
            None
        };
        let heads = Arc::new(Heads::default());
        let stream = Prefixed {
            shared: Arc::clone(&shared),
            timed_out: false,
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
    shared: Arc<Shared>,
    /// The head timeout was counted.
    timed_out: bool,
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
            if !std::mem::replace(&mut this.timed_out, true) {
                this.shared.metrics.error(ErrorCause::HeadTimeout);
            }
            if !this.head.write_blocked {
                // Best effort and without waiting: a client this slow may not read.
                let _ = this.inner.try_write(plain::HEAD_TIMEOUT_PAGE);
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

/// How a connection that has sent nothing yet waits for its first bytes: on the list of
/// connections that may be closed for room at the cap
/// ([`Limit`](crate::proxy::limit::Limit)), for at most
/// `idle_timeout`. Returns false if the connection should close (closed for room, timed
/// out, the client left, or the proxy stops). A connection whose request is already
/// there (the usual case) never waits.
async fn first_bytes(
    shared: &Shared,
    stream: &TcpStream,
    slot: &mut Slot,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    match peek(stream) {
        Peek::Data => return true,
        Peek::Closed => return false,
        Peek::Nothing => {}
    }
    let (id, mut shed) = shared.limit.wait();
    let deadline = tokio::time::sleep(shared.cfg.idle_timeout);
    tokio::pin!(deadline);
    let ready = loop {
        tokio::select! {
            r = stream.readable() => {
                if r.is_err() {
                    break false;
                }
                // Readiness can be spurious: only bytes count (a wrong guess is cleared).
                match stream.try_io(Interest::READABLE, || peek_raw(stream)) {
                    Ok(0) => break false,
                    Ok(_) => break true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => break false,
                }
            }
            _ = &mut shed => break false,
            () = stopped(stop) => break false,
            () = &mut deadline => break false,
        }
    };
    if !shared.limit.stop_waiting(id) {
        // Taken to be closed for room (perhaps just as its bytes came): it closes.
        slot.mark_shed();
        return false;
    }
    ready
}

enum Peek {
    Data,
    Nothing,
    Closed,
}

/// Whether the client has sent something, without waiting or consuming it.
fn peek(stream: &TcpStream) -> Peek {
    match peek_raw(stream) {
        Ok(1..) => Peek::Data,
        Ok(0) => Peek::Closed,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Peek::Nothing
        }
        Err(_) => Peek::Closed,
    }
}

/// `recv(MSG_PEEK | MSG_DONTWAIT)` of one byte: how many bytes are there (0 at EOF).
fn peek_raw(stream: &TcpStream) -> io::Result<usize> {
    let mut byte = 0u8;
    // SAFETY: recv into one byte we own, on a socket the stream keeps open.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Lets one log line through per period, counting the ones held back meanwhile.
struct RateLimited {
    every: Duration,
    last: Option<tokio::time::Instant>,
    held: u64,
}

impl RateLimited {
    fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(lines held back since the last one)` if a line may be logged now.
    fn ready(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
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
