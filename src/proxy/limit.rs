//! The cap on one app's open client connections (`proxy.max_connections`), counted across
//! every worker thread. The accept loop takes a [`Slot`] before each accept; at the cap it
//! stops accepting (the kernel keeps the next connections in the listen backlog, or
//! refuses them once that is full) until a connection closes. To keep serving while idle
//! connections fill the cap (an idle flood, clients that connect and send nothing), the
//! connections that have not sent a byte yet are [`Waiting`]: at the cap the oldest of
//! them are closed to make room, as nginx reuses its idle connections when its
//! `worker_connections` run out. A connection with a request under way is never closed
//! for room.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, oneshot};

/// How many waiting connections are closed at once when the cap is reached (nginx's 32).
const SHED_BATCH: usize = 32;

/// The open client connections of one app's proxy and its cap.
pub(crate) struct Limit {
    max: usize,
    open: AtomicUsize,
    /// Notified whenever a connection closes.
    freed: Notify,
    waiting: Mutex<Waiting>,
    /// Connections told to close for room that have not closed yet.
    shedding: AtomicUsize,
    /// Connections closed for room since the start.
    shed: AtomicU64,
}

/// The connections that have sent nothing yet, oldest first.
#[derive(Default)]
struct Waiting {
    next: u64,
    conns: BTreeMap<u64, oneshot::Sender<()>>,
}

/// The counts of [`Limit`], for metrics and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Client connections open now.
    pub open: usize,
    /// `proxy.max_connections`.
    pub max: usize,
    /// Connections that had sent nothing, closed at the cap to make room, since the start.
    pub shed: u64,
}

impl Limit {
    pub(crate) fn new(max: usize) -> Limit {
        Limit {
            max: max.max(1),
            open: AtomicUsize::new(0),
            freed: Notify::new(),
            waiting: Mutex::new(Waiting::default()),
            shedding: AtomicUsize::new(0),
            shed: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        ConnectionStats {
            open: self.open.load(Ordering::Relaxed),
            max: self.max,
            shed: self.shed.load(Ordering::Relaxed),
        }
    }

    fn is_full(&self) -> bool {
        self.open.load(Ordering::Acquire) >= self.max
    }

    /// Waits until a connection may be accepted: at once below the cap; at the cap, after
    /// closing the oldest connections that have sent nothing (if no earlier batch is
    /// still closing), once one closes. `at_cap` is called each time the cap holds the
    /// loop back with nothing to close (for a rate-limited log line).
    pub(crate) async fn room(&self, mut at_cap: impl FnMut()) {
        // Below the cap (the usual case) this costs one atomic load.
        while self.is_full() {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if !self.is_full() {
                return;
            }
            if self.shedding.load(Ordering::Acquire) == 0 && self.shed_waiting(SHED_BATCH) == 0 {
                at_cap();
            }
            freed.await;
        }
    }

    /// Closes up to `n` of the oldest connections that have sent nothing; returns how
    /// many were told to close.
    pub(crate) fn shed_waiting(&self, n: usize) -> usize {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut told = 0;
        while told < n {
            let Some((_, tx)) = waiting.conns.pop_first() else {
                break;
            };
            // Counted before the signal, so the connection's own count-down never runs first.
            self.shedding.fetch_add(1, Ordering::AcqRel);
            if tx.send(()).is_ok() {
                told += 1;
                self.shed.fetch_add(1, Ordering::Relaxed);
            } else {
                // Its task is gone already (it stops waiting before it ends).
                self.shedding.fetch_sub(1, Ordering::AcqRel);
            }
        }
        told
    }

    /// Registers a connection that has sent nothing yet; the receiver fires if it is
    /// closed for room. Call [`stop_waiting`](Self::stop_waiting) with the id once it has
    /// data, ends, or times out.
    pub(crate) fn wait(&self) -> (u64, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let id = waiting.next;
        waiting.next += 1;
        waiting.conns.insert(id, tx);
        (id, rx)
    }

    /// Takes connection `id` off the waiting list; false if it was already taken to be
    /// closed for room (the caller then owns one count of `shedding`).
    pub(crate) fn stop_waiting(&self, id: u64) -> bool {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conns
            .remove(&id)
            .is_some()
    }
}

/// One open client connection, counted against the cap until dropped.
pub(crate) struct Slot {
    limit: Arc<Limit>,
    /// Told to close for room: the drop also ends its count in `shedding`.
    shed: bool,
}

impl Slot {
    /// Counts a connection that was just accepted.
    pub(crate) fn take(limit: &Arc<Limit>) -> Slot {
        limit.open.fetch_add(1, Ordering::AcqRel);
        Slot {
            limit: Arc::clone(limit),
            shed: false,
        }
    }

    /// Marks the connection as closed for room (see [`Limit::stop_waiting`]).
    pub(crate) fn mark_shed(&mut self) {
        self.shed = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limit.open.fetch_sub(1, Ordering::AcqRel);
        if self.shed {
            self.limit.shedding.fetch_sub(1, Ordering::AcqRel);
        }
        self.limit.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn at_the_cap_the_oldest_waiting_connections_make_room() {
        let limit = Arc::new(Limit::new(3));
        let mut slots = Vec::new();
        let mut waits = Vec::new();
        for _ in 0..3 {
            slots.push(Slot::take(&limit));
            waits.push(limit.wait());
        }
        assert_eq!(limit.stats().open, 3);
        // The newest has data: it leaves the waiting list and can never be shed.
        assert!(limit.stop_waiting(waits[2].0));
        let calls = std::cell::Cell::new(0);
        let room = limit.room(|| calls.set(calls.get() + 1));
        tokio::pin!(room);
        // Full: the two waiting ones are told to close; no room until one does.
        assert!(
            tokio::time::timeout(Duration::from_millis(20), room.as_mut())
                .await
                .is_err()
        );
        let (id0, rx0) = waits.remove(0);
        let (id1, rx1) = waits.remove(0);
        rx0.await.expect("oldest shed");
        rx1.await.expect("second shed");
        assert!(!limit.stop_waiting(id0) && !limit.stop_waiting(id1));
        assert_eq!(limit.stats().shed, 2);
        let mut first = slots.remove(0);
        first.mark_shed();
        drop(first);
        room.await;
        assert_eq!(calls.get(), 0, "there was something to shed");
        assert_eq!(limit.stats().open, 2);
        let mut second = slots.remove(0);
        second.mark_shed();
        drop(second);
        assert_eq!(limit.shedding.load(Ordering::Relaxed), 0);
        // Full of busy connections: nothing to shed, the loop is told and waits.
        slots.push(Slot::take(&limit));
        slots.push(Slot::take(&limit));
        let calls = std::cell::Cell::new(0);
        let room = limit.room(|| calls.set(calls.get() + 1));
        tokio::pin!(room);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), room.as_mut())
                .await
                .is_err()
        );
        drop(slots.pop());
        room.await;
        // (A wake-up left over from an earlier close may tell it once more.)
        assert!(calls.get() >= 1);
    }
}
