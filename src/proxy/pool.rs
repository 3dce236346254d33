//! Upstream connections: opening one (TCP connect with a deadline, `TCP_NODELAY`,
//! an HTTP/1.1 handshake whose connection task runs on its own) and keeping idle ones
//! per backend for reuse. We use `hyper::client::conn::http1` rather than hyper-util's
//! legacy `Client` because a failed connect must leave the request (and its unread body)
//! in our hands so it can be retried on another instance, and because idle connections
//! to a retired instance must be dropped at once, which a pool keyed by authority
//! cannot do. The pool is a LIFO stack under a short `std` mutex (never held across an
//! await): the most recently used connection is the warmest, and stale ones sink to the
//! bottom where the idle timeout drops them. There is one stack per proxy worker thread
//! (plus one for any other thread): a connection is only reused by the thread whose
//! runtime it is registered with, so its IO never wakes another thread.
//!
//! An [`Upstream`] connection is driven by whoever uses it (the request and then its
//! response body, inside the client connection's task) rather than by a task of its
//! own: one task per client connection does all the work of an exchange, which saves a
//! cross-task wake-up and a context switch per request on a small machine. Connections
//! that carry an upgrade request are the exception: they get their own task, since the
//! upgraded bytes outlive the exchange.

use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::body::RequestBody;
use crate::proxy::error::ProxyError;
use crate::proxy::workers;

pub(crate) type Sender = SendRequest<RequestBody>;
type Conn = Connection<TokioIo<TcpStream>, RequestBody>;

/// Who drives the connection's IO.
enum Driver {
    /// The current user, through [`Upstream::poll_conn`]. Boxed (once per connection)
    /// so moving an `Upstream` in and out of the pool stays cheap.
    InTask(Box<Conn>),
    /// A task of its own (upgrade requests).
    Spawned,
    /// The connection has ended.
    Ended,
}

/// One HTTP/1.1 connection to an instance.
pub(crate) struct Upstream {
    tx: Sender,
    driver: Driver,
}

impl Upstream {
    /// Lets the connection do its IO; call before polling anything that depends on it.
    pub(crate) fn poll_conn(&mut self, cx: &mut Context<'_>) {
        let Driver::InTask(conn) = &mut self.driver else {
            return;
        };
        if let Poll::Ready(result) = Pin::new(&mut **conn).poll(cx) {
            if let Err(e) = result {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
            self.driver = Driver::Ended;
        }
    }

    /// Hands the connection to a task of its own, with upgrade support.
    pub(crate) fn spawn_with_upgrades(&mut self) {
        if let Driver::InTask(conn) = std::mem::replace(&mut self.driver, Driver::Spawned) {
            tokio::spawn(async move {
                if let Err(e) = (*conn).with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
        }
    }

    /// Waits until a request can be sent; an error means the connection is gone.
    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        poll_fn(|cx| {
            self.poll_conn(cx);
            self.tx.poll_ready(cx)
        })
        .await
    }

    /// Sends `req`, driving the connection until the response head arrives. The
    /// request comes back in the error if it was not written at all.
    pub(crate) async fn send(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        let response = self.tx.try_send_request(req);
        tokio::pin!(response);
        poll_fn(|cx| {
            self.poll_conn(cx);
            response.as_mut().poll(cx)
        })
        .await
    }
}

/// A connection the pool can keep.
pub(crate) trait Reusable {
    /// Still open, with nothing unexpected pending: fit for the next request.
    fn is_reusable(&mut self) -> bool;
}

impl Reusable for Upstream {
    fn is_reusable(&mut self) -> bool {
        matches!(self.driver, Driver::InTask(_)) && !self.tx.is_closed()
    }
}

/// A raw connection of the plain-request path ([`crate::proxy::fast`]).
impl Reusable for TcpStream {
    fn is_reusable(&mut self) -> bool {
        // An idle connection is only readable if the app closed it (or sent bytes it
        // should not have). tokio clears read readiness whenever a read comes back
        // short, so after a complete exchange it is clear, and this costs no syscall;
        // only a connection the reactor saw an event on is probed with a read.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

pub(crate) struct Pool<T = Upstream> {
    inner: Mutex<Inner<T>>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Inner<T> {
    /// Idle connections, one LIFO stack per [`workers::current`] slot.
    idle: Vec<Vec<(T, Instant)>>,
    closed: bool,
}

impl<T> Inner<T> {
    fn stack(&mut self) -> &mut Vec<(T, Instant)> {
        let slot = workers::current();
        if self.idle.len() <= slot {
            self.idle.resize_with(slot + 1, Vec::new);
        }
        &mut self.idle[slot]
    }
}

impl<T: Reusable> Pool<T> {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Pool<T> {
        Pool {
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                closed: false,
            }),
            max_idle,
            idle_timeout,
        }
    }

    /// An empty pool with the same limits, for another kind of connection.
    pub(crate) fn sibling<U: Reusable>(&self) -> Pool<U> {
        Pool::new(self.max_idle, self.idle_timeout)
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // The critical sections only push/pop a Vec; a panic there cannot leave it torn.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned idle connection that is still open and fresh.
    pub(crate) fn take(&self) -> Option<T> {
        let now = Instant::now();
        let mut inner = self.lock();
        let stack = inner.stack();
        while let Some((mut tx, since)) = stack.pop() {
            if now.saturating_duration_since(since) > self.idle_timeout {
                // Older entries are staler still: drop them all (outside the lock).
                let stale = std::mem::take(stack);
                drop(inner);
                drop((tx, stale));
                return None;
            }
            if tx.is_reusable() {
                return Some(tx);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange completed, unless the pool is closed
    /// (retired backend), full, or the connection is closing.
    pub(crate) fn put(&self, mut tx: T) {
        if !tx.is_reusable() {
            return;
        }
        let mut inner = self.lock();
        if inner.closed || inner.stack().len() >= self.max_idle {
            drop(inner);
            drop(tx);
            return;
        }
        inner.stack().push((tx, Instant::now()));
    }

    /// Drops every idle connection and refuses new ones.
    pub(crate) fn close(&self) {
        let idle = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.idle)
        };
        drop(idle);
    }

    pub(crate) fn idle_len(&self) -> usize {
        self.lock().idle.iter().map(Vec::len).sum()
    }
}

/// Opens a TCP connection to `addr` (deadline, `TCP_NODELAY`).
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(ProxyError::ConnectTimeout {
                addr,
                after: timeout,
            });
        }
        Ok(Err(source)) if source.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ProxyError::ConnectRefused { addr, source });
        }
        Ok(Err(source)) => return Err(ProxyError::Connect { addr, source }),
        Ok(Ok(stream)) => stream,
    };
    if let Err(e) = stream.set_nodelay(true) {
        // Only latency suffers; the connection itself is fine.
        tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY on upstream connection");
    }
    Ok(stream)
}

/// Opens a new HTTP/1.1 connection to `addr`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Upstream, ProxyError> {
    let stream = connect_tcp(addr, timeout).await?;
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream { addr, source })?;
    Ok(Upstream {
        tx,
        driver: Driver::InTask(Box::new(conn)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn upstream() -> (TcpListener, Upstream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let up = connect(addr, Duration::from_secs(5))
            .await
            .expect("connect");
        (listener, up)
    }

    #[tokio::test]
    async fn keeps_and_returns_idle_connections() {
        let (_l, up) = upstream().await;
        let pool = Pool::new(4, Duration::from_secs(60));
        pool.put(up);
        assert_eq!(pool.idle_len(), 1);
        assert!(pool.take().is_some());
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn closed_pool_drops_and_refuses_connections() {
        let (_l, a) = upstream().await;
        let (_l2, b) = upstream().await;
        let pool = Pool::new(4, Duration::from_secs(60));
        pool.put(a);
        pool.close();
        assert_eq!(pool.idle_len(), 0);
        pool.put(b);
        assert!(pool.take().is_none());
    }

    #[tokio::test]
    async fn stale_and_surplus_connections_are_dropped() {
        let (_l, a) = upstream().await;
        let (_l2, b) = upstream().await;
        let full = Pool::new(1, Duration::from_secs(60));
        full.put(a);
        full.put(b);
        assert_eq!(full.idle_len(), 1);
        let (_l3, c) = upstream().await;
        let stale = Pool::new(4, Duration::ZERO);
        stale.put(c);
        // Let the clock move past the zero idle timeout (timer logic, not synchronisation).
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(stale.take().is_none());
        assert_eq!(stale.idle_len(), 0);
    }

    #[tokio::test]
    async fn refused_connect_is_classified() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let e = connect(addr, Duration::from_secs(5))
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, ProxyError::ConnectRefused { .. }), "{e:?}");
    }
}
