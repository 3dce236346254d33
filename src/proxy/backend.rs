//! One app instance behind the proxy (kamal-proxy's `target`): its private address, its
//! pool of idle upstream connections, and the counters that make draining possible.
//! A request holds an [`InFlight`] guard for as long as it uses the instance (from the
//! moment it is picked until its response body is done); an upgraded connection holds
//! an [`UpgradeGuard`]. Once the instance is retired, the last guard to go wakes the
//! drain waiting on [`Backend::wait_until`], and [`Backend::close_upgraded`] tells
//! every upgraded tunnel to close.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::proxy::pool::Pool;

/// Identifies an instance registered with an [`AppProxy`](crate::proxy::AppProxy).
/// Ids are never reused within one proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub(crate) u64);

impl BackendId {
    /// The numeric id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend#{}", self.0)
    }
}

pub(crate) struct Backend {
    pub(crate) id: BackendId,
    pub(crate) addr: SocketAddr,
    pub(crate) pool: Pool,
    /// Idle raw connections of the plain-request path.
    pub(crate) raw: Pool<TcpStream>,
    in_flight: AtomicUsize,
    upgraded: AtomicUsize,
    retired: AtomicBool,
    idle: Notify,
    close_upgraded: watch::Sender<bool>,
}

impl Backend {
    pub(crate) fn new(id: BackendId, addr: SocketAddr, pool: Pool) -> Backend {
        Backend {
            id,
            addr,
            raw: pool.sibling(),
            pool,
            in_flight: AtomicUsize::new(0),
            upgraded: AtomicUsize::new(0),
            retired: AtomicBool::new(false),
            idle: Notify::new(),
            close_upgraded: watch::Sender::new(false),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(crate) fn upgraded(&self) -> usize {
        self.upgraded.load(Ordering::SeqCst)
    }

    /// Counts one more request on this instance. The router calls this while it holds
    /// the snapshot read lock, so a switch that returned has seen every pick.
    pub(crate) fn acquire(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// Takes the instance out of service for good: idle connections are dropped and
    /// none are kept from now on.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
        self.pool.close();
        self.raw.close();
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired.load(Ordering::SeqCst)
    }

    /// Tells every upgraded tunnel to this instance to close.
    pub(crate) fn close_upgraded(&self) {
        self.close_upgraded.send_replace(true);
    }

    pub(crate) fn close_signal(&self) -> watch::Receiver<bool> {
        self.close_upgraded.subscribe()
    }

    fn release(&self, counter: &AtomicUsize) {
        // SeqCst pairs with `retire` + the checks in `wait_until`: either this
        // thread sees `retired` and wakes the waiter, or the waiter sees the count at 0.
        if counter.fetch_sub(1, Ordering::SeqCst) == 1 && self.retired.load(Ordering::SeqCst) {
            self.idle.notify_waiters();
        }
    }

    /// No request and no upgraded connection uses this instance.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && self.upgraded.load(Ordering::SeqCst) == 0
    }

    /// Waits until `cond` holds or `deadline` passes; returns whether it holds. `cond`
    /// is re-checked whenever a counter of this retired instance drops to zero, so it
    /// must be about counters being zero (see [`Backend::is_idle`]).
    pub(crate) async fn wait_until(
        &self,
        deadline: Instant,
        cond: impl Fn(&Backend) -> bool,
    ) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cond(self) {
                return true;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return cond(self),
            }
        }
    }
}

/// One request using a backend; dropping it ends the use.
pub(crate) struct InFlight(Arc<Backend>);

impl InFlight {
    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.0
    }

    /// Turns the request into an open upgraded connection (counted separately so a
    /// drain can close it at its deadline).
    pub(crate) fn into_upgraded(self) -> UpgradeGuard {
        let backend = Arc::clone(&self.0);
        backend.upgraded.fetch_add(1, Ordering::SeqCst);
        drop(self);
        UpgradeGuard(backend)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.release(&self.0.in_flight);
    }
}

/// One open upgraded connection to a backend.
pub(crate) struct UpgradeGuard(Arc<Backend>);

impl UpgradeGuard {
    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for UpgradeGuard {
    fn drop(&mut self) {
        self.0.release(&self.0.upgraded);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn backend() -> Arc<Backend> {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        Arc::new(Backend::new(
            BackendId(7),
            addr,
            Pool::new(1, Duration::from_secs(1)),
        ))
    }

    #[tokio::test]
    async fn drain_wait_ends_when_the_last_guard_goes() {
        let b = backend();
        let request = b.acquire();
        let tunnel = b.acquire().into_upgraded();
        b.retire();
        let waiter = {
            let b = Arc::clone(&b);
            tokio::spawn(async move {
                b.wait_until(Instant::now() + Duration::from_secs(30), Backend::is_idle)
                    .await
            })
        };
        drop(request);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.upgraded(), 1);
        drop(tunnel);
        assert!(waiter.await.expect("join"));
    }

    #[tokio::test]
    async fn drain_wait_reports_a_missed_deadline() {
        let b = backend();
        let _request = b.acquire();
        b.retire();
        let idle = b
            .wait_until(Instant::now() + Duration::from_millis(10), Backend::is_idle)
            .await;
        assert!(!idle);
    }
}
