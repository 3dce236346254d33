//! The proxy's own threads (nginx's worker model): N OS threads, one per core by default,
//! each running a single-threaded tokio runtime. A client connection is handed to the
//! worker with the fewest open connections when it is accepted, and everything it does
//! from then on (parsing, picking an instance, the pooled upstream connection, both
//! bodies) runs on that one thread. A request therefore never wakes another thread: on a
//! small box, the cross-thread wake-ups of a work-stealing runtime cost more CPU and
//! context switches per request than the proxying itself (bench/README.md, "Proxy").
//! Upstream connections are pooled per worker ([`current`] names the thread's slot) so a
//! connection is always driven by the runtime whose reactor it is registered with.
//!
//! The supervisor, the control API and health checks stay on the main runtime; they
//! talk to the proxy through its lock-free router, which every runtime can read.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// 0 on any thread that is not a proxy worker; `k + 1` on worker `k`.
    static SLOT: Cell<usize> = const { Cell::new(0) };
}

/// The pool slot of the calling thread: 0 outside the workers, `k + 1` on worker `k`.
pub(crate) fn current() -> usize {
    SLOT.with(Cell::get)
}

/// A set of proxy worker threads. Cheap to clone; the threads stop when
/// [`shutdown`](Self::shutdown) is called or the last clone is dropped.
#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    workers: Vec<Worker>,
    /// Where the search for the least-loaded worker starts, so ties rotate.
    next: AtomicUsize,
}

struct Worker {
    handle: Handle,
    /// Client connections open on this worker.
    open: AtomicUsize,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("threads", &self.inner.workers.len())
            .finish_non_exhaustive()
    }
}

impl Workers {
    /// Starts `threads` workers (at least one), named `windlass-proxy-K`.
    pub fn start(threads: usize) -> io::Result<Workers> {
        let mut workers = Vec::with_capacity(threads.max(1));
        for k in 0..threads.max(1) {
            let rt = Builder::new_current_thread().enable_all().build()?;
            let handle = rt.handle().clone();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name(format!("windlass-proxy-{k}"))
                .spawn(move || {
                    SLOT.with(|s| s.set(k + 1));
                    // Runs the spawned connection tasks until told to stop (or the
                    // sender is dropped); dropping the runtime cancels what is left.
                    let _ = rt.block_on(stop_rx);
                })?;
            workers.push(Worker {
                handle,
                open: AtomicUsize::new(0),
                stop: Mutex::new(Some(stop_tx)),
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(Workers {
            inner: Arc::new(Inner {
                workers,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// One worker per two cores (at least one), or `WINDLASS_PROXY_THREADS` when set to a
    /// positive number. Unlike a dedicated nginx box, the proxy shares the machine with
    /// the apps it fronts, which do far more work per request than it does: one worker
    /// serves ~40,000 plain requests a second on one core of the benchmark box, and on 2
    /// cores a second worker only takes CPU from the app and costs throughput
    /// (bench/README.md, "Proxy").
    pub fn default_count() -> usize {
        std::env::var("WINDLASS_PROXY_THREADS")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .or_else(|| {
                std::thread::available_parallelism()
                    .ok()
                    .map(|n| (usize::from(n) / 2).max(1))
            })
            .unwrap_or(1)
    }

    /// How many worker threads run.
    pub fn len(&self) -> usize {
        self.inner.workers.len()
    }

    /// Always false: a set has at least one worker.
    pub fn is_empty(&self) -> bool {
        self.inner.workers.is_empty()
    }

    /// Runs `make()` as a task on the worker with the fewest open connections, counting
    /// it as an open connection there until it completes. `make` is called on the
    /// worker, so what it creates (sockets, timers) belongs to that worker's runtime.
    pub(crate) fn spawn_connection<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let workers = &self.inner.workers;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let mut best = start % workers.len();
        let mut best_open = usize::MAX;
        for i in 0..workers.len() {
            let k = (start + i) % workers.len();
            let open = workers[k].open.load(Ordering::Relaxed);
            if open < best_open {
                best = k;
                best_open = open;
            }
        }
        let inner = Arc::clone(&self.inner);
        inner.workers[best].open.fetch_add(1, Ordering::Relaxed);
        let guard = OpenGuard { inner, k: best };
        self.inner.workers[best].handle.spawn(async move {
            let _guard = guard;
            make().await;
        });
    }

    /// Stops every worker thread and waits for them; connection tasks still running
    /// are dropped (closing their sockets).
    pub fn shutdown(&self) {
        for w in &self.inner.workers {
            if let Some(tx) = w.stop.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = tx.send(());
            }
        }
        for w in &self.inner.workers {
            let thread = w
                .thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(t) = thread {
                if t.thread().id() != std::thread::current().id() {
                    let _ = t.join();
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The threads exit once their stop sender is gone; they are not joined here,
        // since the last clone may be dropped on a worker thread itself.
        for w in &self.workers {
            w.stop.lock().unwrap_or_else(PoisonError::into_inner).take();
        }
    }
}

struct OpenGuard {
    inner: Arc<Inner>,
    k: usize,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.inner.workers[self.k]
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connections_go_to_the_least_loaded_worker_and_run_there() {
        let workers = Workers::start(2).expect("start");
        let (tx, rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let tx = tx.clone();
            let mut release = release_rx.clone();
            workers.spawn_connection(move || async move {
                tx.send((current(), std::thread::current().name().map(str::to_owned)))
                    .expect("send");
                let _ = release.wait_for(|r| *r).await;
            });
        }
        let mut slots: Vec<_> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("ran"))
            .collect();
        slots.sort();
        assert_eq!(
            slots.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![1, 1, 2, 2],
            "two connections on each worker: {slots:?}"
        );
        assert_eq!(slots[0].1.as_deref(), Some("windlass-proxy-0"));
        assert_eq!(
            workers.inner.workers[0].open.load(Ordering::Relaxed)
                + workers.inner.workers[1].open.load(Ordering::Relaxed),
            4
        );
        release_tx.send_replace(true);
        workers.shutdown();
        assert_eq!(current(), 0, "the test thread is not a worker");
    }
}
