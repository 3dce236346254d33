//! The proxy's timeouts, kept cheap enough for the request path: a [`Deadline`] is one
//! timer per connection moved forward lazily (the plain-request path's head, response and
//! write deadlines), and a [`Stall`] fires when a stream makes no progress for a while (a
//! response body the app stopped sending, a client that stopped reading), made only at the
//! first pause and moved only after progress. A [`HeadClock`] is the request-head
//! deadline of a connection on the hyper path, kept by its IO wrapper: hyper's own header
//! timeout restarts with each read of a head and closes silently, where windlass answers
//! `408` at `header_timeout` from the head's first byte, across the move from the
//! plain-request path.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// `at + d`, saturating (about 30 years on) instead of panicking on a huge `d`: the
/// library takes any `Duration`, validation only caps the config's.
pub(crate) fn instant_after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(30 * 365 * 86_400)))
        .unwrap_or(at)
}

/// A deadline kept by one timer per connection: moving it forward only touches the
/// timer when it would move by more than a sixteenth of the timeout (at most 1 s), so a
/// busy connection costs no timer work per request. The deadline can therefore fire up
/// to that much early, never late.
pub(crate) struct Deadline {
    pub(crate) sleep: Pin<Box<Sleep>>,
    pub(crate) within: Duration,
    slack: Duration,
}

impl Deadline {
    pub(crate) fn new(within: Duration) -> Deadline {
        Deadline {
            sleep: Box::pin(tokio::time::sleep(within)),
            within,
            slack: (within / 16).min(Duration::from_secs(1)),
        }
    }

    /// Starts a wait of `within` from now.
    pub(crate) fn arm(&mut self) {
        let Some(want) = Instant::now().checked_add(self.within) else {
            return; // "never" in practice
        };
        if want > self.sleep.deadline() + self.slack {
            self.sleep.as_mut().reset(want);
        }
    }
}

/// Fires when a stream has made no progress for `within`.
pub(crate) struct Stall {
    within: Duration,
    /// Made at the first pause, moved after each part that went through.
    sleep: Option<Pin<Box<Sleep>>>,
    progressed: bool,
}

impl Stall {
    pub(crate) fn new(within: Duration) -> Stall {
        Stall {
            within,
            sleep: None,
            progressed: false,
        }
    }

    pub(crate) fn within(&self) -> Duration {
        self.within
    }

    /// A part went through.
    pub(crate) fn progressed(&mut self) {
        self.progressed = true;
    }

    /// After a poll that found nothing to do: ready once the stream has been idle for
    /// `within` (the caller then gives up on it).
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let within = self.within;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(within)));
        if std::mem::take(&mut self.progressed) {
            if let Some(at) = Instant::now().checked_add(within) {
                sleep.as_mut().reset(at);
            }
        }
        sleep.as_mut().poll(cx)
    }
}

/// What the hyper path's requests tell the connection's [`HeadClock`]: how many heads
/// were parsed and how many of those exchanges are over.
#[derive(Default)]
pub(crate) struct Heads {
    started: AtomicU64,
    finished: AtomicU64,
    /// The connection was upgraded: no more heads.
    upgraded: AtomicBool,
}

impl Heads {
    /// A head was parsed (the service was called); the mark ends its exchange when
    /// dropped (with the response's last byte).
    pub(crate) fn request(self: &Arc<Heads>) -> HeadMark {
        self.started.fetch_add(1, Ordering::Relaxed);
        HeadMark(Some(Arc::clone(self)))
    }
}

/// One exchange on the hyper path, from its parsed head to its response's end.
pub(crate) struct HeadMark(Option<Arc<Heads>>);

impl HeadMark {
    /// The exchange turned into a tunnel: the connection reads no more heads.
    pub(crate) fn upgraded(&mut self) {
        if let Some(heads) = self.0.take() {
            heads.upgraded.store(true, Ordering::Relaxed);
        }
    }
}

impl Drop for HeadMark {
    fn drop(&mut self) {
        if let Some(heads) = self.0.take() {
            heads.finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The request-head deadline of a connection on the hyper path: between two exchanges,
/// the first byte read starts a head, and the head must be parsed within `within` of it.
/// A head already begun on the plain-request path keeps its start.
pub(crate) struct HeadClock {
    within: Duration,
    heads: Arc<Heads>,
    /// When the current head began, and how many heads had been parsed then.
    since: Option<(Instant, u64)>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The last write could not go through (the client is not reading).
    pub(crate) write_blocked: bool,
}

impl HeadClock {
    pub(crate) fn new(
        within: Duration,
        heads: Arc<Heads>,
        head_since: Option<Instant>,
    ) -> HeadClock {
        HeadClock {
            within,
            heads,
            since: head_since.map(|at| (at, 0)),
            sleep: None,
            write_blocked: false,
        }
    }

    /// After a read of the connection: true when a head has been coming for longer than
    /// `within` (the caller answers 408 and fails the read). `got_bytes`: the read brought
    /// bytes.
    pub(crate) fn expired(
        &mut self,
        read: &Poll<io::Result<()>>,
        got_bytes: bool,
        cx: &mut Context<'_>,
    ) -> bool {
        let started = self.heads.started.load(Ordering::Relaxed);
        let between = !self.heads.upgraded.load(Ordering::Relaxed)
            && self.heads.finished.load(Ordering::Relaxed) == started;
        if !between {
            self.since = None;
            return false;
        }
        if self.since.is_some_and(|(_, n)| n != started) {
            self.since = None; // that head was parsed; this is a new one
        }
        match read {
            Poll::Ready(Ok(())) if got_bytes && self.since.is_none() => {
                self.since = Some((Instant::now(), started));
                false
            }
            Poll::Pending => {
                let Some((at, _)) = self.since else {
                    return false;
                };
                let Some(deadline) = at.checked_add(self.within) else {
                    return false;
                };
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep.as_mut().poll(cx).is_ready()
            }
            _ => false,
        }
    }
}
