//! Draining a retired instance (the second half of kamal-proxy's reload recipe): it no
//! longer receives requests, and the drain waits until the requests it already has
//! finish and its upgraded connections close, or the deadline passes. At the deadline
//! the upgraded connections are closed (they would otherwise live forever); requests
//! still running are left to the supervisor, which stops the process next. The
//! [`DrainReport`] says what happened, for the reload's log line and for tests.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::proxy::backend::{Backend, BackendId};

/// How long the upgraded tunnels get to notice the close signal at the deadline.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The outcome of [`AppProxy::drain`](crate::proxy::AppProxy::drain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    pub id: BackendId,
    /// False when the id was unknown (never registered, or already drained).
    pub found: bool,
    /// Requests in flight on the instance when the drain started.
    pub in_flight_at_start: usize,
    /// Upgraded connections open when the drain started.
    pub upgraded_at_start: usize,
    /// Requests still in flight when the drain ended (0 unless `timed_out`).
    pub remaining_requests: usize,
    /// Upgraded connections closed by the proxy at the deadline.
    pub closed_upgraded: usize,
    /// The deadline passed before everything finished on its own.
    pub timed_out: bool,
    /// How long the drain took.
    pub waited: Duration,
}

impl DrainReport {
    pub(crate) fn unknown(id: BackendId) -> DrainReport {
        DrainReport {
            id,
            found: false,
            in_flight_at_start: 0,
            upgraded_at_start: 0,
            remaining_requests: 0,
            closed_upgraded: 0,
            timed_out: false,
            waited: Duration::ZERO,
        }
    }

    /// Every request finished and every upgraded connection closed on its own.
    pub fn is_clean(&self) -> bool {
        !self.timed_out && self.remaining_requests == 0 && self.closed_upgraded == 0
    }
}

/// Waits for the retired `backend` to become idle, up to `deadline` from now.
pub(crate) async fn wait(backend: Arc<Backend>, deadline: Duration) -> DrainReport {
    let start = Instant::now();
    let in_flight_at_start = backend.in_flight();
    let upgraded_at_start = backend.upgraded();
    let idle = backend
        .wait_until(
            crate::proxy::instant_after(start, deadline),
            Backend::is_idle,
        )
        .await;
    let mut closed_upgraded = 0;
    if !idle {
        closed_upgraded = backend.upgraded();
        if closed_upgraded > 0 {
            // Only the tunnels are told to go; requests keep running.
            backend.close_upgraded();
            backend
                .wait_until(Instant::now() + CLOSE_GRACE, |b| b.upgraded() == 0)
                .await;
        }
    }
    let report = DrainReport {
        id: backend.id,
        found: true,
        in_flight_at_start,
        upgraded_at_start,
        remaining_requests: backend.in_flight(),
        closed_upgraded,
        timed_out: !idle,
        waited: start.elapsed(),
    };
    tracing::debug!(?report, addr = %backend.addr, "drain finished");
    report
}
