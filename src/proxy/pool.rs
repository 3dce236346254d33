//! Upstream connections: opening one (TCP connect with a deadline, `TCP_NODELAY`,
//! an HTTP/1.1 handshake whose connection task runs on its own) and keeping idle ones
//! per backend for reuse. We use `hyper::client::conn::http1` rather than hyper-util's
//! legacy `Client` because a failed connect must leave the request (and its unread body)
//! in our hands so it can be retried on another instance, and because idle connections
//! to a retired instance must be dropped at once, which a pool keyed by authority
//! cannot do. The pool is a LIFO stack under a short `std` mutex (never held across an
//! await): the most recently used connection is the warmest, and stale ones sink to the
//! bottom where the idle timeout drops them.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::proxy::body::RequestBody;
use crate::proxy::error::ProxyError;

pub(crate) type Sender = SendRequest<RequestBody>;

pub(crate) struct Pool {
    inner: Mutex<Inner>,
    max_idle: usize,
    idle_timeout: Duration,
}

struct Inner {
    idle: Vec<(Sender, Instant)>,
    closed: bool,
}

impl Pool {
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            inner: Mutex::new(Inner {
                idle: Vec::new(),
                closed: false,
            }),
            max_idle,
            idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The critical sections only push/pop a Vec; a panic there cannot leave it torn.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned idle connection that is still open and fresh.
    pub(crate) fn take(&self) -> Option<Sender> {
        let now = Instant::now();
        let mut inner = self.lock();
        while let Some((tx, since)) = inner.idle.pop() {
            if now.saturating_duration_since(since) > self.idle_timeout {
                // Older entries are staler still: drop them all (outside the lock).
                let stale = std::mem::take(&mut inner.idle);
                drop(inner);
                drop((tx, stale));
                return None;
            }
            if !tx.is_closed() {
                return Some(tx);
            }
        }
        None
    }

    /// Keeps a connection whose last exchange completed, unless the pool is closed
    /// (retired backend), full, or the connection is closing.
    pub(crate) fn put(&self, tx: Sender) {
        if tx.is_closed() {
            return;
        }
        let mut inner = self.lock();
        if inner.closed || inner.idle.len() >= self.max_idle {
            drop(inner);
            drop(tx);
            return;
        }
        inner.idle.push((tx, Instant::now()));
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
        self.lock().idle.len()
    }
}

/// Opens a new HTTP/1.1 connection to `addr`.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, ProxyError> {
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
    let (tx, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream { addr, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(tx)
}
