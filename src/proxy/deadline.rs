//! The proxy's timeouts, kept cheap enough for the request path: a [`Deadline`] is one
//! timer per connection moved forward lazily (the plain-request path's head, response and
//! write deadlines), and a [`Stall`] fires when a stream makes no progress for a while (a
//! response body the app stopped sending, a client that stopped reading), made only at the
//! first pause and moved only after progress.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

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
