//! The proxy's metrics: the exact series the proxy fills, per app.
//!
//! The proxy does not own a registry. The daemon creates [`ProxyMetrics`] with the registry
//! ([`super::Metrics::new`]), so every series exists (at 0) for every app with a `port` from
//! the first scrape, and hands a clone to the proxy. The proxy takes one [`AppProxyMetrics`]
//! per app ([`ProxyMetrics::app`], cheap handles to shared atomics: keep it with the app's
//! routing state) and calls:
//!
//! - [`AppProxyMetrics::request_started`] when a request arrives; it returns a
//!   [`RequestTimer`] (in-flight +1). Call [`RequestTimer::finish`] with the status code sent
//!   downstream; that counts `requests_total{code="2xx"}`, observes the duration and ends the
//!   in-flight count. A timer dropped unfinished (the client went away) counts as 499, as
//!   nginx does.
//! - [`AppProxyMetrics::upstream_error`] each time an upstream attempt fails, by
//!   [`UpstreamError`] cause (the request may still succeed on another instance).
//! - [`AppProxyMetrics::reload`] once per `windlass reload`, with its outcome.
//! - [`AppProxyMetrics::health_check_failed`] for each failed health probe.
//!
//! Series (labels `app`, plus `code`, `cause`, `result`):
//! `windlass_proxy_requests_total`, `windlass_proxy_request_duration_seconds` (histogram),
//! `windlass_proxy_requests_in_flight`, `windlass_proxy_upstream_errors_total`,
//! `windlass_app_reloads_total`, `windlass_app_health_check_failures_total`.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Bucket bounds of the request duration histogram, seconds (Prometheus's defaults, which
/// suit web requests, plus 30s for slow uploads).
pub const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Why an attempt to reach an instance failed (pingora's "who is at fault": upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    /// Connection refused or unreachable.
    Connect,
    /// No answer (connect or response headers) within the deadline.
    Timeout,
    /// The connection closed or reset before a complete response.
    Closed,
    /// The answer was not valid HTTP.
    Protocol,
    /// No healthy instance became ready while the request was held.
    NoInstance,
}

impl UpstreamError {
    pub const ALL: [UpstreamError; 5] = [
        UpstreamError::Connect,
        UpstreamError::Timeout,
        UpstreamError::Closed,
        UpstreamError::Protocol,
        UpstreamError::NoInstance,
    ];

    /// The `cause` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamError::Connect => "connect",
            UpstreamError::Timeout => "timeout",
            UpstreamError::Closed => "closed",
            UpstreamError::Protocol => "protocol",
            UpstreamError::NoInstance => "no_instance",
        }
    }
}

/// How a reload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Success,
    /// The new version never became healthy; the old one kept serving.
    Failure,
}

impl ReloadResult {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabels {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    app: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    app: String,
    cause: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    app: String,
    result: String,
}

type HistogramFamily = Family<AppLabels, Histogram, fn() -> Histogram>;

fn new_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every proxy series, for every app. Cheap to clone (shared atomics).
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    requests: Family<CodeLabels, Counter>,
    duration: HistogramFamily,
    in_flight: Family<AppLabels, Gauge>,
    upstream_errors: Family<CauseLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    health_failures: Family<AppLabels, Counter>,
}

/// The status code classes counted in `requests_total{code}`.
const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl ProxyMetrics {
    /// Registers every family in `registry`.
    pub fn register(registry: &mut Registry) -> ProxyMetrics {
        let m = ProxyMetrics {
            requests: Family::default(),
            duration: HistogramFamily::new_with_constructor(new_histogram),
            in_flight: Family::default(),
            upstream_errors: Family::default(),
            reloads: Family::default(),
            health_failures: Family::default(),
        };
        registry.register(
            "windlass_proxy_requests",
            "Requests answered by the proxy, by app and status code class",
            m.requests.clone(),
        );
        registry.register(
            "windlass_proxy_request_duration_seconds",
            "Time from a request's arrival to the end of its response headers, by app",
            m.duration.clone(),
        );
        registry.register(
            "windlass_proxy_requests_in_flight",
            "Requests being handled by the proxy now, by app",
            m.in_flight.clone(),
        );
        registry.register(
            "windlass_proxy_upstream_errors",
            "Failed attempts to reach an app instance, by app and cause",
            m.upstream_errors.clone(),
        );
        registry.register(
            "windlass_app_reloads",
            "Reloads of an app, by result (success, failure)",
            m.reloads.clone(),
        );
        registry.register(
            "windlass_app_health_check_failures",
            "Failed health checks of an app's instances",
            m.health_failures.clone(),
        );
        m
    }

    /// The handles of one app's series, creating them (at 0) the first time.
    pub fn app(&self, app: &str) -> AppProxyMetrics {
        let a = AppLabels {
            app: app.to_owned(),
        };
        let code = |c: &str| {
            self.requests.get_or_create_owned(&CodeLabels {
                app: app.to_owned(),
                code: c.to_owned(),
            })
        };
        AppProxyMetrics {
            codes: CODE_CLASSES.map(code),
            duration: self.duration.get_or_create_owned(&a),
            in_flight: self.in_flight.get_or_create_owned(&a),
            upstream: UpstreamError::ALL.map(|c| {
                self.upstream_errors.get_or_create_owned(&CauseLabels {
                    app: app.to_owned(),
                    cause: c.as_str().to_owned(),
                })
            }),
            reloads: [ReloadResult::Success, ReloadResult::Failure].map(|r| {
                self.reloads.get_or_create_owned(&ResultLabels {
                    app: app.to_owned(),
                    result: r.as_str().to_owned(),
                })
            }),
            health_failures: self.health_failures.get_or_create_owned(&a),
        }
    }
}

/// One app's proxy series. Cheap to clone; every clone updates the same series.
#[derive(Clone, Debug)]
pub struct AppProxyMetrics {
    codes: [Counter; 5],
    duration: Histogram,
    in_flight: Gauge,
    upstream: [Counter; 5],
    reloads: [Counter; 2],
    health_failures: Counter,
}

impl AppProxyMetrics {
    /// A request arrived: in-flight +1 until the timer is finished or dropped.
    pub fn request_started(&self) -> RequestTimer {
        self.in_flight.inc();
        RequestTimer {
            metrics: self.clone(),
            start: Instant::now(),
            done: false,
        }
    }

    pub fn upstream_error(&self, cause: UpstreamError) {
        let i = UpstreamError::ALL
            .iter()
            .position(|c| *c == cause)
            .expect("ALL lists every cause");
        self.upstream[i].inc();
    }

    pub fn reload(&self, result: ReloadResult) {
        self.reloads[usize::from(result == ReloadResult::Failure)].inc();
    }

    pub fn health_check_failed(&self) {
        self.health_failures.inc();
    }

    fn record(&self, status: u16, start: Instant) {
        self.in_flight.dec();
        self.duration.observe(start.elapsed().as_secs_f64());
        // Codes outside 100..=599 are not HTTP; count them as server errors.
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 4,
        };
        self.codes[class].inc();
    }
}

/// Measures one request; see [`AppProxyMetrics::request_started`].
#[derive(Debug)]
#[must_use = "finish the timer with the response's status code"]
pub struct RequestTimer {
    metrics: AppProxyMetrics,
    start: Instant,
    done: bool,
}

impl RequestTimer {
    /// The response headers went out with `status`.
    pub fn finish(mut self, status: u16) {
        self.done = true;
        self.metrics.record(status, self.start);
    }
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.record(499, self.start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).expect("encode");
        s
    }

    #[test]
    fn series_exist_at_zero_once_an_app_is_registered() {
        let mut r = Registry::default();
        let m = ProxyMetrics::register(&mut r);
        let _ = m.app("web");
        let t = text(&r);
        for line in [
            "windlass_proxy_requests_total{app=\"web\",code=\"5xx\"} 0",
            "windlass_proxy_requests_in_flight{app=\"web\"} 0",
            "windlass_proxy_request_duration_seconds_count{app=\"web\"} 0",
            "windlass_proxy_upstream_errors_total{app=\"web\",cause=\"no_instance\"} 0",
            "windlass_app_reloads_total{app=\"web\",result=\"failure\"} 0",
            "windlass_app_health_check_failures_total{app=\"web\"} 0",
        ] {
            assert!(t.contains(line), "missing {line} in\n{t}");
        }
    }

    #[test]
    fn a_request_moves_count_duration_and_in_flight() {
        let mut r = Registry::default();
        let m = ProxyMetrics::register(&mut r).app("web");
        let t1 = m.request_started();
        let t2 = m.request_started();
        assert!(text(&r).contains("windlass_proxy_requests_in_flight{app=\"web\"} 2"));
        t1.finish(204);
        drop(t2); // client went away
        m.upstream_error(UpstreamError::Timeout);
        m.reload(ReloadResult::Success);
        m.health_check_failed();
        let t = text(&r);
        for line in [
            "windlass_proxy_requests_in_flight{app=\"web\"} 0",
            "windlass_proxy_requests_total{app=\"web\",code=\"2xx\"} 1",
            "windlass_proxy_requests_total{app=\"web\",code=\"4xx\"} 1",
            "windlass_proxy_request_duration_seconds_count{app=\"web\"} 2",
            "windlass_proxy_upstream_errors_total{app=\"web\",cause=\"timeout\"} 1",
            "windlass_app_reloads_total{app=\"web\",result=\"success\"} 1",
            "windlass_app_health_check_failures_total{app=\"web\"} 1",
        ] {
            assert!(t.contains(line), "missing {line} in\n{t}");
        }
    }

    #[test]
    fn a_non_http_status_counts_as_a_server_error() {
        let mut r = Registry::default();
        let m = ProxyMetrics::register(&mut r).app("web");
        m.request_started().finish(0);
        m.request_started().finish(1000);
        assert!(text(&r).contains("windlass_proxy_requests_total{app=\"web\",code=\"5xx\"} 2"));
    }
}
