//! The replay rule, the one both request codecs follow when an exchange broke before any
//! response ([`Attempts::broke`]): a reset request (never read) is sent again, a request
//! the instance may have read is sent once more to another instance, one at a time per
//! app ([`ReplayGuard`]); a request whose replay broke the same way is a likely query of
//! death and fails with a 502, and two of those close together pause the app's replays.
//! [`Attempts`] is also one request's search for an instance (the hold, connect retries).

use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::proxy::Shared;
use crate::proxy::backend::{BackendId, InFlight};
use crate::proxy::counters::UpstreamCause;
use crate::proxy::deadline::instant_after as after;
use crate::proxy::error::{NotReplayed, ProxyError};
use crate::proxy::hold::Hold;

/// How many times a request whose connection was reset before the app read it is sent
/// again (a reset proves the app never read it; see [`Broke::Unread`]).
pub(crate) const MAX_UNREAD_REPLAYS: u32 = 3;

/// Two poison requests this close together pause the app's replays for this long after
/// the last one.
pub(crate) const POISON_WINDOW: Duration = Duration::from_secs(30);
/// How a request's exchange broke after the request was (at least partly) written and
/// before any byte of a response head came back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Broke {
    /// The connection was reset, or the write hit a closed socket: the kernel answers so
    /// when the app never read the request (it was killed with the request unread in its
    /// socket, or had closed the idle keep-alive connection).
    Unread,
    /// The connection was closed (or failed) with no answer: the app may have read the
    /// request, and then died, or closed an idle keep-alive connection as it arrived.
    MaybeRead,
}

/// Whether a request may be sent a second time: idempotent (RFC 9110 §9.2.2) and with
/// its whole body still at hand (none, or a small one read whole and kept before sending:
/// see [`crate::proxy::policy::keeps_body`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    Allowed,
    Not(NotReplayed),
}

impl Replay {
    /// The rule for a request with this method; `body`: it has a body streamed to the app
    /// as it arrived (not kept; a kept body counts as none here).
    pub(crate) fn of(method: &http::Method, body: bool) -> Replay {
        use http::Method;
        let idempotent = matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        if !idempotent {
            Replay::Not(NotReplayed::Method(method.clone()))
        } else if body {
            Replay::Not(NotReplayed::Body)
        } else {
            Replay::Allowed
        }
    }
}

/// The app-wide half of the replay rule: replays of requests an instance may have read go
/// one at a time (the lane), so an instance that dies during one is blamed on exactly that
/// request; and two poison requests within [`POISON_WINDOW`] pause such replays until the
/// window after the last one has passed.
pub(crate) struct ReplayGuard {
    lane: Semaphore,
    poison: Mutex<Poison>,
}

#[derive(Default)]
struct Poison {
    last: Option<Instant>,
    paused_until: Option<Instant>,
}

impl ReplayGuard {
    pub(crate) fn new() -> ReplayGuard {
        ReplayGuard {
            lane: Semaphore::new(1),
            poison: Mutex::new(Poison::default()),
        }
    }

    fn paused(&self, now: Instant) -> bool {
        let p = self.poison.lock().unwrap_or_else(PoisonError::into_inner);
        p.paused_until.is_some_and(|until| now < until)
    }

    fn record_poison(&self, now: Instant) {
        let mut p = self.poison.lock().unwrap_or_else(PoisonError::into_inner);
        if p.last
            .is_some_and(|last| now.duration_since(last) < POISON_WINDOW)
        {
            p.paused_until = Some(now + POISON_WINDOW);
        }
        p.last = Some(now);
    }
}

/// One request's search for an instance, as both request paths make it: the hold, the
/// instances whose connect failed, the last such failure (what the client is told when the
/// hold runs out after one), and the replay rule for an exchange that broke before a
/// response ([`Attempts::broke`]): the one rule both paths follow.
pub(crate) struct Attempts<'a> {
    shared: &'a Shared,
    hold: Hold,
    deadline: Instant,
    tried: Vec<BackendId>,
    last_connect_error: Option<ProxyError>,
    unread_replays: u32,
    /// The instance that closed on this request after maybe reading it: set once the
    /// request's one such replay is spent.
    suspect: Option<SocketAddr>,
    /// This request's turn in the app's replay lane, held until its answer (or failure).
    lane: Option<SemaphorePermit<'a>>,
}

impl<'a> Attempts<'a> {
    /// A search for a request that arrived at `start`.
    pub(crate) fn new(shared: &'a Shared, start: Instant) -> Attempts<'a> {
        let deadline = after(start, shared.cfg.hold);
        Attempts {
            shared,
            hold: Hold::new(deadline),
            deadline,
            tried: Vec::new(),
            last_connect_error: None,
            unread_replays: 0,
            suspect: None,
            lane: None,
        }
    }

    /// A ready instance not tried yet (see [`Hold::pick`]), or the error to answer with
    /// once the hold is over.
    pub(crate) async fn pick(&mut self) -> Result<InFlight, ProxyError> {
        match self.hold.pick(&self.shared.router, &mut self.tried).await {
            Some(guard) => Ok(guard),
            // Connect errors were counted as they happened.
            None => Err(self.last_connect_error.take().unwrap_or_else(|| {
                self.shared
                    .metrics
                    .upstream_error(UpstreamCause::NoReadyBackend);
                ProxyError::NoReadyBackend {
                    held: self.shared.cfg.hold,
                }
            })),
        }
    }

    /// Connecting to `backend` failed: counted, and the instance is skipped until only
    /// tried ones are left.
    pub(crate) fn connect_failed(&mut self, backend: BackendId, e: ProxyError) {
        self.shared.metrics.upstream_failed(&e);
        tracing::debug!(app = %self.shared.app, %backend, error = %e, "connect failed; retrying");
        self.tried.push(backend);
        self.last_connect_error = Some(e);
    }

    /// The exchange with `backend` (at `addr`) broke `how`, with error `e`, before any
    /// byte of a response head. `Ok(())`: send the request again, on a fresh connection
    /// (the caller's part) to the instance [`pick`](Self::pick) gives next. The rule:
    ///
    /// - never a request that may not be replayed ([`Replay`]);
    /// - [`Broke::Unread`]: again, up to [`MAX_UNREAD_REPLAYS`] times, on any instance;
    /// - [`Broke::MaybeRead`], for an app with two instances or more: once, on another
    ///   instance if one is ready (else the same one after a short wait, or one that
    ///   becomes ready within the hold), in the app's
    ///   replay lane, and not while the app's replays are paused. If that replay breaks
    ///   the same way, the request is a likely query of death: counted, logged, a 502.
    pub(crate) async fn broke(
        &mut self,
        backend: BackendId,
        addr: SocketAddr,
        how: Broke,
        replay: &Replay,
        e: ProxyError,
    ) -> Result<(), ProxyError> {
        let shared = self.shared;
        shared.metrics.upstream_failed(&e);
        let not = |why: NotReplayed, e: ProxyError| ProxyError::NotReplayed {
            addr,
            why,
            source: Box::new(e),
        };
        if let Replay::Not(why) = replay {
            return Err(match how {
                Broke::Unread => e,
                Broke::MaybeRead => not(why.clone(), e),
            });
        }
        match how {
            Broke::Unread if self.unread_replays < MAX_UNREAD_REPLAYS => {
                self.unread_replays += 1;
                tracing::debug!(app = %shared.app, %backend, error = %e, "connection broke before the app read the request; sending it again");
                Ok(())
            }
            Broke::Unread => Err(e),
            // With one instance, the only other is the restart of the one it may have killed.
            Broke::MaybeRead if shared.cfg.instances < 2 => Err(e),
            Broke::MaybeRead => {
                if let Some(first) = self.suspect {
                    self.lane = None;
                    shared.metrics.poison_request();
                    shared.replays.record_poison(Instant::now());
                    return Err(not(NotReplayed::Poison { first }, e));
                }
                if shared.replays.paused(Instant::now()) {
                    return Err(not(NotReplayed::Paused, e));
                }
                self.suspect = Some(addr);
                self.tried.push(backend);
                let lane = tokio::time::timeout_at(self.deadline, shared.replays.lane.acquire());
                match lane.await {
                    Ok(Ok(permit)) => {
                        tracing::debug!(app = %shared.app, %backend, error = %e, "instance closed the connection before answering; sending the request to another one");
                        self.lane = Some(permit);
                        Ok(())
                    }
                    _ => Err(e),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_bodiless_requests_may_be_replayed() {
        use http::Method;
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            assert_eq!(Replay::of(&m, false), Replay::Allowed, "{m}");
            assert_eq!(Replay::of(&m, true), Replay::Not(NotReplayed::Body), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert_eq!(
                Replay::of(&m, false),
                Replay::Not(NotReplayed::Method(m.clone()))
            );
        }
    }

    #[test]
    fn two_poison_requests_within_the_window_pause_replays_for_the_window() {
        let g = ReplayGuard::new();
        let t0 = Instant::now();
        g.record_poison(t0);
        assert!(!g.paused(t0), "one is not a pattern");
        let t1 = t0 + POISON_WINDOW + Duration::from_secs(1);
        g.record_poison(t1);
        assert!(!g.paused(t1), "too far apart");
        let t2 = t1 + Duration::from_secs(5);
        g.record_poison(t2);
        assert!(g.paused(t2));
        assert!(g.paused(t2 + POISON_WINDOW - Duration::from_millis(1)));
        assert!(!g.paused(t2 + POISON_WINDOW));
    }
}
