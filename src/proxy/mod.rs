//! The built-in reverse proxy: one [`AppProxy`] per app with a public port. It owns the
//! public listener for the whole life of the supervisor (bound once, kept across
//! restarts and reloads) and forwards to the app's ready instances on private loopback
//! ports, balancing by least outstanding requests, holding requests while no instance
//! is ready, and switching instances atomically with a drain for blue-green reloads.
//! The supervisor drives it through this handle only: add an instance, mark it ready
//! when its health check passes, `replace` old by new in one step, `drain` the old.
//!
//! Files, one concept each (kamal-proxy style): `router` (instance set and snapshot),
//! `balancer` (the pick rule), `backend` (one instance and its counters), `pool`
//! (upstream connections), `hold` (waiting for a ready instance), `deadline` (cheap
//! timeouts), `policy` (the one request policy both codecs call: replay rule, error
//! answers, metrics, hop-by-hop headers), `plain` (the plain-request codec on raw
//! sockets), `forward` (every other request, through hyper),
//! `headers`, `body`, `tunnel` (upgrades), `drain`, `server` (accept loop), `limit`
//! (the cap on open client connections), `workers` (the proxy's own threads), `metrics`,
//! `error`, `config`.

mod backend;
mod balancer;
mod body;
mod config;
mod counters;
mod deadline;
mod drain;
mod error;

mod forward;
mod headers;
mod hold;
mod limit;
mod plain;
mod policy;
mod pool;
mod router;
mod server;
mod tunnel;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use crate::proxy::backend::BackendId;
pub use crate::proxy::config::{IpRange, ProxyConfig};
pub use crate::proxy::counters::{
    BackendStatus, ErrorCounts, LATENCY_BUCKETS, LatencySnapshot, MetricsSnapshot, UpstreamCause,
    UpstreamErrors,
};
pub(crate) use crate::proxy::deadline::instant_after;
pub use crate::proxy::drain::DrainReport;
pub use crate::proxy::error::{ErrorCause, Fault, NotReplayed, ProxyError};
pub use crate::proxy::limit::ConnectionStats;
pub use crate::proxy::workers::Workers;

use crate::proxy::counters::Counters;
use crate::proxy::limit::Limit;
use crate::proxy::router::Router;

/// State shared by the handle, the accept loop and every request of one app.
pub(crate) struct Shared {
    pub(crate) app: Box<str>,
    pub(crate) cfg: ProxyConfig,
    pub(crate) router: Router,
    pub(crate) metrics: Counters,
    /// Where failed requests are reported for the app's log ([`AppProxy::set_notes`]).
    pub(crate) notes: std::sync::OnceLock<Notes>,
    pub(crate) note_budget: crate::proxy::error::NoteBudget,
    /// The open client connections and their cap (`max_connections`).
    pub(crate) limit: Arc<Limit>,
    /// The app-wide part of the replay rule (one replay at a time, the poison pause).
    pub(crate) replays: crate::proxy::policy::ReplayGuard,
}

/// Writes one line into the app's log (stream `windlass`).
pub type Notes = Arc<dyn Fn(&str) + Send + Sync>;

/// The proxy of one app. Cheap to clone; all clones drive the same proxy.
#[derive(Clone)]
pub struct AppProxy {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AppProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppProxy")
            .field("app", &self.shared.app)
            .finish_non_exhaustive()
    }
}

impl AppProxy {
    /// A proxy for `app` with no instance yet (requests are held until one is ready).
    pub fn new(app: &str, cfg: ProxyConfig) -> AppProxy {
        let router = Router::new(cfg.pool_max_idle, cfg.pool_idle_timeout);
        let limit = Arc::new(Limit::new(cfg.connection_cap()));
        AppProxy {
            shared: Arc::new(Shared {
                app: app.into(),
                cfg,
                router,
                metrics: Counters::default(),
                notes: std::sync::OnceLock::new(),
                note_budget: crate::proxy::error::NoteBudget::new(),
                limit,
                replays: crate::proxy::policy::ReplayGuard::new(),
            }),
        }
    }

    /// Where to report the requests the proxy answered with an error page: one line each,
    /// with the request id the client saw and what exactly failed (the supervisor writes
    /// them into the app's log). Only the first call takes effect.
    pub fn set_notes(&self, notes: Notes) {
        let _ = self.shared.notes.set(notes);
    }

    /// The app name.
    pub fn app(&self) -> &str {
        &self.shared.app
    }

    /// Serves clients accepted on `listener` until `shutdown` resolves, then lets open
    /// connections finish their current request (up to `shutdown_timeout`) and returns.
    /// Call it once per listener; the listener stays bound while this runs.
    /// The connections run as tasks of the calling runtime.
    pub async fn serve(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        server::serve(Arc::clone(&self.shared), listener, None, shutdown).await;
    }

    /// Like [`serve`](Self::serve), but each accepted connection runs on one of
    /// `workers`' threads (the one with the fewest open connections) for its whole life.
    pub async fn serve_on(
        &self,
        workers: Workers,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) {
        server::serve(Arc::clone(&self.shared), listener, Some(workers), shutdown).await;
    }

    /// Registers an instance listening on `addr` (use `127.0.0.1:PORT`). It receives no
    /// requests until [`set_ready`](Self::set_ready) or [`replace`](Self::replace).
    pub fn add_backend(&self, addr: SocketAddr) -> BackendId {
        self.shared.router.add(addr)
    }

    /// Puts an instance into rotation (`true`, e.g. its health check passed) or takes
    /// it out (`false`, e.g. it became unhealthy; its in-flight requests continue).
    /// Returns false if the id is unknown or retired.
    pub fn set_ready(&self, id: BackendId, ready: bool) -> bool {
        self.shared.router.set_ready(id, ready)
    }

    /// The atomic switch of a blue-green reload: in one step, `new_ready` enter rotation
    /// and `old` leave it for good (retired: no new requests, idle upstream connections
    /// dropped). Requests already running on `old` continue; follow with
    /// [`drain`](Self::drain) for each old id. Unknown ids are ignored.
    pub fn replace(&self, old: &[BackendId], new_ready: &[BackendId]) {
        self.shared.router.replace(old, new_ready);
    }

    /// Retires `id` now (if `replace` did not already) and unregisters it; the returned
    /// future resolves when its in-flight requests and upgraded connections are done,
    /// or when `deadline` has passed, closing the upgraded connections still open.
    /// The removal happens when this is called, not when the future is first polled.
    pub fn drain(
        &self,
        id: BackendId,
        deadline: Duration,
    ) -> impl Future<Output = DrainReport> + Send + 'static + use<> {
        let backend = self.shared.router.remove(id);
        async move {
            match backend {
                Some(backend) => drain::wait(backend, deadline).await,
                None => DrainReport::unknown(id),
            }
        }
    }

    /// The registered instances and their load.
    pub fn backends(&self) -> Vec<BackendStatus> {
        self.shared.router.status()
    }

    /// The open client connections, their cap and how many idle ones were closed for room.
    pub fn connections(&self) -> ConnectionStats {
        self.shared.limit.stats()
    }

    /// A snapshot of this app's proxy metrics (including [`backends`](Self::backends)).
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared
            .metrics
            .snapshot(&self.shared.app, self.shared.router.status())
    }
}
