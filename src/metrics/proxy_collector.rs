//! The proxy's series, read at scrape time from each app's [`AppProxy`] snapshot and the
//! supervisor's reload and health counters.
//!
//! The proxy counts with its own atomics on the hot path ([`crate::proxy`]); this collector
//! only reads them when Prometheus scrapes, so serving a request never touches the registry.
//! Every series exists (at 0) for every app with a `port` from the first scrape.
//!
//! Series (labels `app`, plus `code`, `cause`, `result`):
//! `windlass_proxy_requests_total{code="1xx".."5xx"}`, `windlass_proxy_request_duration_seconds`
//! (histogram, request head received to response done), `windlass_proxy_requests_in_flight`,
//! `windlass_proxy_errors_total{fault,cause}` (each failed request once),
//! `windlass_proxy_upstream_errors_total{cause}`, `windlass_proxy_poison_requests_total`,
//! `windlass_proxy_upgraded_connections`,
//! `windlass_proxy_client_connections`, `windlass_proxy_max_connections`,
//! `windlass_proxy_idle_connections_closed_total`,
//! `windlass_app_reloads_total{result="success"|"failure"}`,
//! `windlass_app_health_check_failures_total`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::family;
use crate::proxy::{ErrorCause, LATENCY_BUCKETS, UpstreamCause};
use crate::supervisor::Supervisor;

/// The status code classes counted in `requests_total{code}`.
const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

type Labels = Vec<(&'static str, String)>;

/// Reads the proxies at each scrape.
pub(super) struct ProxyCollector {
    pub(super) supervisor: Supervisor,
}

impl std::fmt::Debug for ProxyCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCollector").finish_non_exhaustive()
    }
}

impl Collector for ProxyCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut requests: Vec<(Labels, u64)> = Vec::new();
        let mut in_flight: Vec<(Labels, u64)> = Vec::new();
        let mut upstream: Vec<(Labels, u64)> = Vec::new();
        let mut errors: Vec<(Labels, u64)> = Vec::new();
        let mut upgraded: Vec<(Labels, u64)> = Vec::new();
        let mut poison: Vec<(Labels, u64)> = Vec::new();
        let mut reloads: Vec<(Labels, u64)> = Vec::new();
        let mut health: Vec<(Labels, u64)> = Vec::new();
        let mut latency = Vec::new();
        let (mut conns, mut conns_max, mut shed) = (Vec::new(), Vec::new(), Vec::new());
        for (app, _, proxy) in self.supervisor.proxies() {
            let m = proxy.metrics();
            let a = || vec![("app", app.clone())];
            let cs = proxy.connections();
            conns.push((a(), cs.open as u64));
            conns_max.push((a(), cs.max as u64));
            shed.push((a(), cs.shed));
            for (class, n) in CODE_CLASSES.iter().zip(m.requests_by_class) {
                requests.push((vec![("app", app.clone()), ("code", (*class).to_owned())], n));
            }
            in_flight.push((a(), m.in_flight as u64));
            upgraded.push((a(), m.upgraded_open as u64));
            poison.push((a(), m.poison_requests));
            for cause in UpstreamCause::ALL {
                upstream.push((
                    vec![("app", app.clone()), ("cause", cause.label().to_owned())],
                    m.upstream_errors.get(cause),
                ));
            }
            for cause in ErrorCause::ALL {
                errors.push((
                    vec![
                        ("app", app.clone()),
                        ("fault", cause.fault().label().to_owned()),
                        ("cause", cause.label().to_owned()),
                    ],
                    m.errors.get(cause),
                ));
            }
            let c = self.supervisor.counters(&app);
            reloads.push((
                vec![("app", app.clone()), ("result", "success".into())],
                c.reloads_ok,
            ));
            reloads.push((
                vec![("app", app.clone()), ("result", "failure".into())],
                c.reloads_failed,
            ));
            health.push((a(), c.health_check_failures));
            latency.push((app, m.latency));
        }
        let (g, c) = (MetricType::Gauge, MetricType::Counter);
        family(
            &mut enc,
            "windlass_proxy_requests",
            "Responses sent by the proxy, by app and status code class",
            c,
            &requests,
        )?;
        let mut hist = enc.encode_descriptor(
            "windlass_proxy_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by app",
            None,
            MetricType::Histogram,
        )?;
        for (app, l) in latency {
            let bounds = LATENCY_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::MAX));
            let buckets: Vec<(f64, u64)> = bounds.zip(l.counts.iter().copied()).collect();
            let count = l.counts.iter().sum();
            hist.encode_family(&vec![("app", app)])?
                .encode_histogram::<NoLabelSet>(l.sum_seconds, count, &buckets, None)?;
        }
        family(
            &mut enc,
            "windlass_proxy_requests_in_flight",
            "Requests being handled by the proxy now, by app",
            g,
            &in_flight,
        )?;
        family(
            &mut enc,
            "windlass_proxy_client_connections",
            "Client connections open now, by app",
            g,
            &conns,
        )?;
        family(
            &mut enc,
            "windlass_proxy_max_connections",
            "The cap on open client connections (proxy.max_connections), by app",
            g,
            &conns_max,
        )?;
        family(
            &mut enc,
            "windlass_proxy_idle_connections_closed",
            "Client connections that had sent nothing, closed at the cap to make room, by app",
            c,
            &shed,
        )?;
        family(
            &mut enc,
            "windlass_proxy_errors",
            "Failed requests, each counted once, by app, fault (upstream: the app; downstream: the client; internal: the proxy) and cause",
            c,
            &errors,
        )?;
        family(
            &mut enc,
            "windlass_proxy_upstream_errors",
            "Failed attempts to reach an app instance (retries included), by app and cause",
            c,
            &upstream,
        )?;
        family(
            &mut enc,
            "windlass_proxy_poison_requests",
            "Requests not retried again because their retry also stopped an instance (a likely query of death), by app",
            c,
            &poison,
        )?;
        family(
            &mut enc,
            "windlass_proxy_upgraded_connections",
            "Upgraded (WebSocket) connections open now, by app",
            g,
            &upgraded,
        )?;
        family(
            &mut enc,
            "windlass_app_reloads",
            "Reloads of an app, by result (success, failure)",
            c,
            &reloads,
        )?;
        family(
            &mut enc,
            "windlass_app_health_check_failures",
            "Failed health checks of an app's instances (start timeouts and instances found unhealthy)",
            c,
            &health,
        )?;
        Ok(())
    }
}
