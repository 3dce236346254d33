//! Holding requests while the app has no usable instance (kamal-proxy's pause
//! controller): instead of failing at once while an instance starts, restarts or
//! crash-loops, a request waits until the router publishes a ready instance or its hold
//! deadline passes. Instances this request already failed to connect to are skipped;
//! when only those are left, the request retries them after a short backoff (or sooner
//! if the ready set changes), so a refused connection is retried "after waiting for a
//! ready one" within the same deadline. The request policy's
//! [`Attempts`](crate::proxy::policy::Attempts) drives it.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::proxy::backend::{BackendId, InFlight};
use crate::proxy::deadline::instant_after as after;
use crate::proxy::router::Router;

const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

pub(crate) struct Hold {
    deadline: Instant,
    backoff: Duration,
    changes: Option<watch::Receiver<u64>>,
}

impl Hold {
    pub(crate) fn new(deadline: Instant) -> Hold {
        Hold {
            deadline,
            backoff: FIRST_BACKOFF,
            changes: None,
        }
    }

    /// A ready instance not in `tried`, waiting for one until the deadline. `None`
    /// once the deadline has passed.
    pub(crate) async fn pick(
        &mut self,
        router: &Router,
        tried: &mut Vec<BackendId>,
    ) -> Option<InFlight> {
        loop {
            if let Some(guard) = router.pick(tried) {
                return Some(guard);
            }
            let Some(changes) = self.changes.as_mut() else {
                // Subscribe, then look again: a publication between the failed pick and
                // the subscription would otherwise be missed.
                self.changes = Some(router.subscribe());
                continue;
            };
            let now = Instant::now();
            if now >= self.deadline {
                return None;
            }
            let wake = if tried.is_empty() {
                self.deadline
            } else {
                after(now, self.backoff).min(self.deadline)
            };
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        // The router is gone with its proxy; only the timer is left.
                        tokio::time::sleep_until(wake).await;
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    tried.clear();
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::Arc;

    fn router() -> Arc<Router> {
        Arc::new(Router::new(4, Duration::from_secs(1)))
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let r = router();
        let mut hold = Hold::new(Instant::now() + Duration::from_millis(20));
        assert!(hold.pick(&r, &mut Vec::new()).await.is_none());
    }

    #[tokio::test]
    async fn wakes_when_a_backend_becomes_ready() {
        let r = router();
        let id = r.add(SocketAddr::from(([127, 0, 0, 1], 1)));
        let r2 = Arc::clone(&r);
        tokio::spawn(async move {
            r2.set_ready(id, true);
        });
        let mut hold = Hold::new(Instant::now() + Duration::from_secs(30));
        let guard = hold.pick(&r, &mut Vec::new()).await.expect("became ready");
        assert_eq!(guard.backend().id, id);
    }

    #[tokio::test]
    async fn retries_tried_backends_after_a_backoff() {
        let r = router();
        let id = r.add(SocketAddr::from(([127, 0, 0, 1], 1)));
        r.set_ready(id, true);
        let mut hold = Hold::new(Instant::now() + Duration::from_secs(30));
        let mut tried = vec![id];
        let guard = hold.pick(&r, &mut tried).await.expect("retried");
        assert_eq!(guard.backend().id, id);
        assert!(tried.is_empty());
    }
}
