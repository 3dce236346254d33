//! The set of instances of one app and which of them receive new requests (kamal-proxy's
//! `router`/`service`). Writers (add, ready/unready, replace, retire) serialise on a
//! mutex, rebuild the list of ready instances and publish it as an immutable snapshot
//! behind an `RwLock<Arc<[..]>>`; the request path only takes the read lock long enough
//! to pick an instance and count the request on it. Because the count happens under the
//! read lock, once a switch has returned every request that picked an old instance is
//! already counted, so a drain cannot miss one. Each publication bumps a generation on
//! a `watch` channel, which held requests wait on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::proxy::backend::{Backend, BackendId, InFlight};
use crate::proxy::balancer::pick_index;
use crate::proxy::counters::BackendStatus;
use crate::proxy::pool::Pool;

pub(crate) struct Router {
    state: Mutex<State>,
    ready: RwLock<Arc<[Arc<Backend>]>>,
    generation: watch::Sender<u64>,
    rr: AtomicUsize,
    pool_max_idle: usize,
    pool_idle_timeout: Duration,
}

#[derive(Default)]
struct State {
    next_id: u64,
    entries: Vec<Entry>,
}

struct Entry {
    backend: Arc<Backend>,
    ready: bool,
}

impl Router {
    pub(crate) fn new(pool_max_idle: usize, pool_idle_timeout: Duration) -> Router {
        Router {
            state: Mutex::new(State::default()),
            ready: RwLock::new(Arc::from(Vec::new())),
            generation: watch::Sender::new(0),
            rr: AtomicUsize::new(0),
            pool_max_idle,
            pool_idle_timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Writers only edit a Vec of flags and then publish; recover from a poisoned lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Picks a ready instance not in `exclude` and counts the request on it.
    pub(crate) fn pick(&self, exclude: &[BackendId]) -> Option<InFlight> {
        let ready = self.ready.read().unwrap_or_else(PoisonError::into_inner);
        let i = match ready.len() {
            0 => return None,
            1 => 0,
            n => self.rr.fetch_add(1, Ordering::Relaxed) % n,
        };
        let i = pick_index(&ready, i, exclude, Backend::in_flight)?;
        Some(ready[i].acquire())
    }

    /// Subscribes to changes of the ready set (the current one counts as seen).
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub(crate) fn add(&self, addr: SocketAddr) -> BackendId {
        let mut state = self.lock();
        let id = BackendId(state.next_id);
        state.next_id += 1;
        let pool = Pool::new(self.pool_max_idle, self.pool_idle_timeout);
        state.entries.push(Entry {
            backend: Arc::new(Backend::new(id, addr, pool)),
            ready: false,
        });
        id
    }

    /// Puts an instance in or out of rotation. Returns false for an unknown or retired id.
    pub(crate) fn set_ready(&self, id: BackendId, ready: bool) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.entries.iter_mut().find(|e| e.backend.id == id) else {
            return false;
        };
        if entry.backend.is_retired() {
            return false;
        }
        if entry.ready != ready {
            entry.ready = ready;
            self.publish(&state);
        }
        true
    }

    /// In one step: `new_ready` enter rotation and `old` are retired (no new requests,
    /// idle connections dropped). Unknown ids are ignored.
    pub(crate) fn replace(&self, old: &[BackendId], new_ready: &[BackendId]) {
        let mut state = self.lock();
        for entry in state.entries.iter_mut() {
            if old.contains(&entry.backend.id) {
                entry.ready = false;
                entry.backend.retire();
            } else if new_ready.contains(&entry.backend.id) && !entry.backend.is_retired() {
                entry.ready = true;
            }
        }
        self.publish(&state);
    }

    /// Retires `id` and unregisters it, returning it for the drain to wait on.
    pub(crate) fn remove(&self, id: BackendId) -> Option<Arc<Backend>> {
        let mut state = self.lock();
        let i = state.entries.iter().position(|e| e.backend.id == id)?;
        let entry = state.entries.remove(i);
        entry.backend.retire();
        if entry.ready {
            self.publish(&state);
        }
        Some(entry.backend)
    }

    pub(crate) fn status(&self) -> Vec<BackendStatus> {
        let state = self.lock();
        state
            .entries
            .iter()
            .map(|e| BackendStatus {
                id: e.backend.id,
                addr: e.backend.addr,
                ready: e.ready,
                retired: e.backend.is_retired(),
                in_flight: e.backend.in_flight(),
                upgraded: e.backend.upgraded(),
                idle_connections: e.backend.pool.idle_len() + e.backend.raw.idle_len(),
            })
            .collect()
    }

    fn publish(&self, state: &State) {
        let ready: Arc<[Arc<Backend>]> = state
            .entries
            .iter()
            .filter(|e| e.ready)
            .map(|e| Arc::clone(&e.backend))
            .collect();
        let old = std::mem::replace(
            &mut *self.ready.write().unwrap_or_else(PoisonError::into_inner),
            ready,
        );
        drop(old);
        self.generation.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn router() -> Router {
        Router::new(8, Duration::from_secs(1))
    }

    #[test]
    fn new_backends_are_not_ready() {
        let r = router();
        let a = r.add(addr(1));
        assert!(r.pick(&[]).is_none());
        assert!(r.set_ready(a, true));
        assert_eq!(r.pick(&[]).expect("ready").backend().id, a);
    }

    #[test]
    fn replace_switches_in_one_step_and_retires_old() {
        let r = router();
        let a = r.add(addr(1));
        let b = r.add(addr(2));
        r.set_ready(a, true);
        let held = r.pick(&[]).expect("a is ready");
        r.replace(&[a], &[b]);
        for _ in 0..10 {
            assert_eq!(r.pick(&[]).expect("b is ready").backend().id, b);
        }
        assert_eq!(held.backend().in_flight(), 1);
        assert!(held.backend().is_retired());
        // A retired backend cannot come back.
        assert!(!r.set_ready(a, true));
        assert!(r.pick(&[b]).is_none());
        let removed = r.remove(a).expect("still registered until drained");
        assert_eq!(removed.id, a);
        assert!(r.remove(a).is_none());
    }

    #[test]
    fn in_flight_follows_guards() {
        let r = router();
        let a = r.add(addr(1));
        r.set_ready(a, true);
        let g1 = r.pick(&[]).expect("ready");
        let g2 = r.pick(&[]).expect("ready");
        assert_eq!(r.status()[0].in_flight, 2);
        drop(g1);
        drop(g2);
        assert_eq!(r.status()[0].in_flight, 0);
    }

    #[test]
    fn publication_bumps_the_generation() {
        let r = router();
        let rx = r.subscribe();
        let a = r.add(addr(1));
        assert!(!rx.has_changed().expect("sender alive"));
        r.set_ready(a, true);
        assert!(rx.has_changed().expect("sender alive"));
    }
}
