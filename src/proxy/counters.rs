//! Per-app proxy counters: plain atomics bumped on the request path and read as a
//! [`MetricsSnapshot`]. There are no globals: each [`AppProxy`](crate::proxy::AppProxy)
//! owns one [`Counters`] and `metrics/proxy_collector.rs` turns snapshots into Prometheus text
//! (`windlass_proxy_requests_total{app,code}`, a duration histogram, an in-flight gauge,
//! failed requests by fault and cause, each counted once, and failed exchanges with
//! instances by cause, retries included). Counters use `Relaxed` ordering: they are statistics, not
//! synchronisation, and this keeps the hot path to a handful of uncontended increments.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use crate::proxy::error::ErrorCause;

/// Upper bounds (seconds) of the latency histogram buckets; a last implicit `+Inf`
/// bucket catches everything slower.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The same bounds in microseconds, so the hot path compares integers.
const BUCKET_MICROS: [u64; 14] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

const NBUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// Why the proxy failed to get an answer from the app (the metric label of upstream errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamCause {
    /// The instance refused the TCP connection (nothing listening).
    ConnectRefused,
    /// The TCP connection was not established within `connect_timeout`.
    ConnectTimeout,
    /// No response headers within `response_timeout` after the request was sent.
    ResponseTimeout,
    /// The connection was reset or closed mid-exchange, or another transport error.
    Reset,
    /// No instance became ready within the hold time.
    NoReadyBackend,
}

impl UpstreamCause {
    /// Every cause, in the order of [`UpstreamErrors`] fields.
    pub const ALL: [UpstreamCause; 5] = [
        UpstreamCause::ConnectRefused,
        UpstreamCause::ConnectTimeout,
        UpstreamCause::ResponseTimeout,
        UpstreamCause::Reset,
        UpstreamCause::NoReadyBackend,
    ];

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamCause::ConnectRefused => "connect_refused",
            UpstreamCause::ConnectTimeout => "connect_timeout",
            UpstreamCause::ResponseTimeout => "response_timeout",
            UpstreamCause::Reset => "reset",
            UpstreamCause::NoReadyBackend => "no_ready_instance",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The live counters of one app. Internal; read through [`MetricsSnapshot`].
#[derive(Default)]
pub(crate) struct Counters {
    requests: [AtomicU64; 5],
    latency: [AtomicU64; NBUCKETS],
    latency_sum_micros: AtomicU64,
    in_flight: AtomicUsize,
    upstream_errors: [AtomicU64; 5],
    errors: [AtomicU64; ErrorCause::ALL.len()],
    upgraded_open: AtomicUsize,
    upgrades_total: AtomicU64,
    poison_requests: AtomicU64,
}

impl Counters {
    pub(crate) fn request_started(&self) {
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Records the end of a request. `status == 0` means no response head was sent
    /// (the client went away first); `delivered` is false when the body did not reach
    /// its end. The request counts as failed once: under `error` if something failed,
    /// else as [`ErrorCause::ClientGone`] if its response was not delivered.
    pub(crate) fn request_finished(
        &self,
        status: u16,
        elapsed: Duration,
        delivered: bool,
        error: Option<ErrorCause>,
    ) {
        self.in_flight.fetch_sub(1, Relaxed);
        match error {
            Some(cause) => self.error(cause),
            None if status == 0 || !delivered => self.error(ErrorCause::ClientGone),
            None => {}
        }
        if status == 0 {
            return;
        }
        self.requests[class_index(status)].fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_index(micros)].fetch_add(1, Relaxed);
        self.latency_sum_micros.fetch_add(micros, Relaxed);
    }

    pub(crate) fn upstream_error(&self, cause: UpstreamCause) {
        self.upstream_errors[cause.index()].fetch_add(1, Relaxed);
    }

    /// Counts `e` under its upstream cause, if the app is at fault.
    pub(crate) fn upstream_failed(&self, e: &crate::proxy::ProxyError) {
        if let Some(cause) = e.upstream_cause() {
            self.upstream_error(cause);
        }
    }

    /// Counts a failure that is not a request's (a head that never arrived); a request's
    /// goes through [`request_finished`](Self::request_finished).
    pub(crate) fn error(&self, cause: ErrorCause) {
        self.errors[cause.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn upgrade_opened(&self) {
        self.upgrades_total.fetch_add(1, Relaxed);
        self.upgraded_open.fetch_add(1, Relaxed);
    }

    pub(crate) fn upgrade_closed(&self) {
        self.upgraded_open.fetch_sub(1, Relaxed);
    }

    /// A request whose replay also ended with its instance gone (a likely query of death).
    pub(crate) fn poison_request(&self) {
        self.poison_requests.fetch_add(1, Relaxed);
    }

    pub(crate) fn snapshot(&self, app: &str, backends: Vec<BackendStatus>) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Relaxed);
        let errors: [u64; 5] = std::array::from_fn(|i| load(&self.upstream_errors[i]));
        MetricsSnapshot {
            app: app.to_owned(),
            requests_by_class: std::array::from_fn(|i| load(&self.requests[i])),
            latency: LatencySnapshot {
                bounds: &LATENCY_BUCKETS,
                counts: self.latency.iter().map(load).collect(),
                sum_seconds: load(&self.latency_sum_micros) as f64 / 1e6,
            },
            in_flight: self.in_flight.load(Relaxed),
            upstream_errors: UpstreamErrors {
                connect_refused: errors[0],
                connect_timeout: errors[1],
                response_timeout: errors[2],
                reset: errors[3],
                no_ready_backend: errors[4],
            },
            errors: ErrorCounts(std::array::from_fn(|i| load(&self.errors[i]))),
            upgraded_open: self.upgraded_open.load(Relaxed),
            upgrades_total: load(&self.upgrades_total),
            poison_requests: load(&self.poison_requests),
            backends,
        }
    }
}

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

fn bucket_index(micros: u64) -> usize {
    BUCKET_MICROS
        .iter()
        .position(|&bound| micros <= bound)
        .unwrap_or(BUCKET_MICROS.len())
}

/// A point-in-time copy of an app's proxy metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// The app name.
    pub app: String,
    /// Responses sent, by status class: index 0 is 1xx, 4 is 5xx (proxy-made errors included).
    pub requests_by_class: [u64; 5],
    /// Request duration (request head received to response body done).
    pub latency: LatencySnapshot,
    /// Requests being handled now (held, waiting for the upstream, or streaming a body).
    pub in_flight: usize,
    /// Failed exchanges with the app's instances, by cause: each attempt, even when a
    /// retry on another instance then succeeded.
    pub upstream_errors: UpstreamErrors,
    /// Failed requests, each counted once, by cause (and so by fault).
    pub errors: ErrorCounts,
    /// Upgraded (WebSocket, ...) connections open now.
    pub upgraded_open: usize,
    /// Upgraded connections opened since start.
    pub upgrades_total: u64,
    /// Requests whose replay on a second instance also ended with that instance closing
    /// the connection before answering: answered 502 and not sent a third time.
    pub poison_requests: u64,
    /// One row per registered instance.
    pub backends: Vec<BackendStatus>,
}

impl MetricsSnapshot {
    /// Responses of the status class `class` (1 to 5); 0 for any other value.
    pub fn requests_of_class(&self, class: u8) -> u64 {
        match class {
            1..=5 => self.requests_by_class[usize::from(class) - 1],
            _ => 0,
        }
    }

    /// All responses sent.
    pub fn requests_total(&self) -> u64 {
        self.requests_by_class.iter().sum()
    }
}

/// Failed requests, one counter per [`ErrorCause`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; ErrorCause::ALL.len()]);

impl ErrorCounts {
    /// The requests that failed with `cause`.
    pub fn get(&self, cause: ErrorCause) -> u64 {
        self.0[cause.index()]
    }

    /// All failed requests (and heads that never arrived).
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// Upstream error counters, one per [`UpstreamCause`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamErrors {
    pub connect_refused: u64,
    pub connect_timeout: u64,
    pub response_timeout: u64,
    pub reset: u64,
    pub no_ready_backend: u64,
}

impl UpstreamErrors {
    /// The counter of `cause`.
    pub fn get(&self, cause: UpstreamCause) -> u64 {
        match cause {
            UpstreamCause::ConnectRefused => self.connect_refused,
            UpstreamCause::ConnectTimeout => self.connect_timeout,
            UpstreamCause::ResponseTimeout => self.response_timeout,
            UpstreamCause::Reset => self.reset,
            UpstreamCause::NoReadyBackend => self.no_ready_backend,
        }
    }
}

/// A latency histogram: `counts[i]` requests took at most `bounds[i]` seconds and more
/// than `bounds[i - 1]`; the last count (index `bounds.len()`) is the `+Inf` bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
}

impl LatencySnapshot {
    /// Prometheus-style cumulative counts (`le` buckets; the last one is `+Inf`).
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0u64, |acc, &c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// The state of one registered instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendStatus {
    pub id: crate::proxy::BackendId,
    pub addr: std::net::SocketAddr,
    /// In rotation (receives new requests).
    pub ready: bool,
    /// Replaced or being drained: never receives new requests again.
    pub retired: bool,
    /// Requests assigned to it and not finished.
    pub in_flight: usize,
    /// Upgraded connections open to it.
    pub upgraded: usize,
    /// Idle keep-alive connections kept for reuse.
    pub idle_connections: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_map_to_indexes() {
        assert_eq!(class_index(101), 0);
        assert_eq!(class_index(200), 1);
        assert_eq!(class_index(399), 2);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(503), 4);
        assert_eq!(class_index(0), 0);
        assert_eq!(class_index(999), 4);
    }

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        assert_eq!(bucket_index(0), 0);
        assert_eq!(bucket_index(1_000), 0);
        assert_eq!(bucket_index(1_001), 1);
        assert_eq!(bucket_index(30_000_000), 13);
        assert_eq!(bucket_index(30_000_001), 14);
        assert_eq!(BUCKET_MICROS.len(), LATENCY_BUCKETS.len());
        for (m, s) in BUCKET_MICROS.iter().zip(LATENCY_BUCKETS) {
            assert_eq!(*m, (s * 1e6).round() as u64);
        }
    }

    #[test]
    fn snapshot_counts_and_cumulates() {
        let m = Counters::default();
        m.request_started();
        m.request_started();
        m.request_started();
        m.request_finished(200, Duration::from_micros(500), true, None);
        m.request_finished(
            503,
            Duration::from_millis(40),
            true,
            Some(ErrorCause::NoReadyInstance),
        );
        m.upstream_error(UpstreamCause::NoReadyBackend);
        let s = m.snapshot("web", Vec::new());
        assert_eq!(s.in_flight, 1);
        assert_eq!(s.requests_of_class(2), 1);
        assert_eq!(s.requests_of_class(5), 1);
        assert_eq!(s.requests_total(), 2);
        assert_eq!(s.upstream_errors.get(UpstreamCause::NoReadyBackend), 1);
        let cum = s.latency.cumulative();
        assert_eq!(cum.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(cum[0], 1);
        assert_eq!(*cum.last().expect("non-empty"), 2);
        assert!((s.latency.sum_seconds - 0.0405).abs() < 1e-9);
        assert_eq!(s.errors.get(ErrorCause::NoReadyInstance), 1);
        m.request_finished(0, Duration::ZERO, false, None);
        m.request_finished(200, Duration::ZERO, false, None);
        m.request_finished(502, Duration::ZERO, false, Some(ErrorCause::Reset));
        let s = m.snapshot("web", Vec::new());
        assert_eq!(s.errors.get(ErrorCause::ClientGone), 2);
        assert_eq!(
            s.errors.get(ErrorCause::Reset),
            1,
            "counted once, by its cause"
        );
        assert_eq!(s.errors.total(), 4);
    }
}
