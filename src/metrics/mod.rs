//! Prometheus exposition: apps and instances read from the supervisor and /proc at each
//! scrape ([`crate::supervisor::usage`]), windlass's own process, the proxy's counters ([`proxy_collector`])
//! and Lisp images ([`lisp`]).
//!
//! No global state: the daemon owns one [`Metrics`] (a `prometheus-client` registry) and
//! passes it to the admin listener, which calls [`Metrics::encode`] for `/metrics`; the proxy
//! counts with its own atomics and is read at scrape time. Names follow
//! `windlass_<subsystem>_<name>_<unit>`; instances carry `app` and `index` labels (`index`,
//! not `instance`, because Prometheus sets `instance` to the scrape target). The figures of
//! Lisp images come from swank through a cache refreshed in the background ([`lisp`]), so a
//! scrape never waits on an image.

pub mod lisp;
pub mod proxy_collector;

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::protocol::State;
use crate::supervisor::Supervisor;
use crate::supervisor::usage;

/// Every state an instance can be in, for the `windlass_instance_state{state}` gauges.
pub const STATES: [State; 8] = [
    State::Running,
    State::Starting,
    State::Stopping,
    State::Stopped,
    State::Exited,
    State::Backoff,
    State::Crashloop,
    State::Fatal,
];

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    lisp: lisp::LispCache,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every series; the proxy's exist at 0 for each app that has a `port`.
    pub fn new(supervisor: &Supervisor) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(SupervisorCollector {
            supervisor: supervisor.clone(),
        }));
        registry.register_collector(Box::new(proxy_collector::ProxyCollector {
            supervisor: supervisor.clone(),
        }));
        let lisp = lisp::LispCache::default();
        registry.register_collector(Box::new(lisp::LispCollector {
            supervisor: supervisor.clone(),
            cache: lisp.clone(),
        }));
        Metrics {
            registry: Arc::new(registry),
            lisp,
        }
    }

    /// Starts asking the Lisp images for their figures in the background (see [`lisp`]);
    /// without it the `windlass_lisp_*` families have no samples.
    pub fn spawn_lisp_refresh(&self, supervisor: &Supervisor) -> tokio::task::JoinHandle<()> {
        lisp::spawn_refresh(supervisor.clone(), self.lisp.clone())
    }

    /// The OpenMetrics text exposition (reads /proc: call it off the async threads).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The same in the Prometheus text format 0.0.4, for scrapers and tools that do not ask
    /// for OpenMetrics (`curl`, `promtool check metrics`).
    pub fn encode_prometheus(&self) -> Result<String, std::fmt::Error> {
        Ok(openmetrics_to_prometheus(&self.encode()?))
    }
}

/// Rewrites OpenMetrics text as Prometheus text 0.0.4: a counter family is named with its
/// `_total` suffix in `# HELP`/`# TYPE` (OpenMetrics names the family without it), and the
/// `# UNIT` and `# EOF` lines, unknown to the older format, go.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(prefix);
                out.push_str(name);
                if counters.contains(name) && !name.ends_with("_total") {
                    out.push_str("_total");
                }
                if !tail.is_empty() {
                    out.push(' ');
                    out.push_str(tail);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Reads the supervisor's state and /proc at each scrape.
struct SupervisorCollector {
    supervisor: Supervisor,
}

impl std::fmt::Debug for SupervisorCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorCollector")
            .finish_non_exhaustive()
    }
}

/// One descriptor with its samples.
fn family<L, V>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: &[(L, V)],
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    V: prometheus_client::encoding::EncodeGaugeValue
        + prometheus_client::encoding::EncodeCounterValue
        + Copy,
{
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, v) in samples {
        sample(&mut m.encode_family(labels)?, kind, *v)?;
    }
    Ok(())
}

/// One descriptor with a single unlabelled sample.
fn single(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    v: f64,
) -> Result<(), std::fmt::Error> {
    sample(&mut enc.encode_descriptor(name, help, None, kind)?, kind, v)
}

fn sample<V>(
    m: &mut prometheus_client::encoding::MetricEncoder,
    kind: MetricType,
    v: V,
) -> Result<(), std::fmt::Error>
where
    V: prometheus_client::encoding::EncodeGaugeValue
        + prometheus_client::encoding::EncodeCounterValue,
{
    match kind {
        MetricType::Counter => {
            m.encode_counter::<prometheus_client::encoding::NoLabelSet, V, f64>(&v, None)
        }
        _ => m.encode_gauge(&v),
    }
}

type Labels = Vec<(&'static str, String)>;

impl Collector for SupervisorCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = self.supervisor.status();

        family(
            &mut enc,
            "windlass_build_info",
            "Always 1; the labels say which windlass runs",
            MetricType::Gauge,
            &[(vec![("version", env!("CARGO_PKG_VERSION").to_owned())], 1.0)],
        )?;

        // windlass's own process.
        let me = usage::myself().unwrap_or_default();
        single(
            &mut enc,
            "windlass_supervisor_start_time_seconds",
            "When the supervisor started, Unix seconds",
            MetricType::Gauge,
            status.supervisor.started_at,
        )?;
        single(
            &mut enc,
            "windlass_supervisor_resident_memory_bytes",
            "Resident memory of the windlass process",
            MetricType::Gauge,
            me.resident_bytes as f64,
        )?;
        single(
            &mut enc,
            "windlass_supervisor_virtual_memory_bytes",
            "Virtual memory of the windlass process",
            MetricType::Gauge,
            me.virtual_bytes as f64,
        )?;
        single(
            &mut enc,
            "windlass_supervisor_cpu_seconds",
            "CPU time (user and system) of the windlass process",
            MetricType::Counter,
            me.cpu_seconds,
        )?;
        single(
            &mut enc,
            "windlass_supervisor_open_fds",
            "Open file descriptors of the windlass process",
            MetricType::Gauge,
            me.open_fds as f64,
        )?;
        single(
            &mut enc,
            "windlass_supervisor_threads",
            "Threads of the windlass process",
            MetricType::Gauge,
            me.threads as f64,
        )?;

        // Apps and instances.
        let pgids: Vec<i32> = status
            .apps
            .iter()
            .flat_map(|a| a.instances.iter().filter_map(|i| i.pid))
            .filter_map(|p| i32::try_from(p).ok())
            .collect();
        let usage = usage::groups(&pgids);
        let mut dropped = Vec::new();
        let mut up = Vec::new();
        let mut state = Vec::new();
        let mut restarts = Vec::new();
        let mut start_time = Vec::new();
        let (mut rss, mut vms, mut cpu, mut threads, mut fds, mut nprocs) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for app in &status.apps {
            dropped.push((vec![("app", app.name.clone())], app.log_lines_dropped));
            for i in &app.instances {
                let labels: Labels =
                    vec![("app", app.name.clone()), ("index", i.index.to_string())];
                let live = i.pid.is_some();
                up.push((
                    labels.clone(),
                    f64::from(u8::from(live && matches!(i.state, State::Running))),
                ));
                for s in STATES {
                    let mut l = labels.clone();
                    l.push(("state", s.as_str().to_owned()));
                    state.push((l, u32::from(i.state == s)));
                }
                restarts.push((labels.clone(), i.restarts));
                if let (Some(t), true) = (i.started_at, live) {
                    start_time.push((labels.clone(), t));
                }
                let u = i
                    .pid
                    .and_then(|p| i32::try_from(p).ok())
                    .and_then(|p| usage.get(&p));
                if let Some(u) = u {
                    rss.push((labels.clone(), u.resident_bytes));
                    vms.push((labels.clone(), u.virtual_bytes));
                    cpu.push((labels.clone(), u.cpu_seconds));
                    threads.push((labels.clone(), u.threads));
                    fds.push((labels.clone(), u.open_fds));
                    nprocs.push((labels, u.processes));
                }
            }
        }
        let g = MetricType::Gauge;
        let c = MetricType::Counter;
        family(
            &mut enc,
            "windlass_app_log_lines_dropped",
            "Log lines of an app that could not be written (disk full, I/O error)",
            c,
            &dropped,
        )?;
        family(
            &mut enc,
            "windlass_instance_up",
            "1 when the instance is running, else 0",
            g,
            &up,
        )?;
        family(
            &mut enc,
            "windlass_instance_state",
            "1 for the instance's current state, 0 for the others",
            g,
            &state,
        )?;
        family(
            &mut enc,
            "windlass_instance_restarts",
            "Times the instance was started again (crashes and restarts)",
            c,
            &restarts,
        )?;
        family(
            &mut enc,
            "windlass_instance_start_time_seconds",
            "When the instance's current process started, Unix seconds",
            g,
            &start_time,
        )?;
        family(
            &mut enc,
            "windlass_instance_resident_memory_bytes",
            "Resident memory summed over the instance's process group",
            g,
            &rss,
        )?;
        family(
            &mut enc,
            "windlass_instance_virtual_memory_bytes",
            "Virtual memory summed over the instance's process group",
            g,
            &vms,
        )?;
        family(
            &mut enc,
            "windlass_instance_cpu_seconds",
            "CPU time summed over the live processes of the instance's group",
            c,
            &cpu,
        )?;
        family(
            &mut enc,
            "windlass_instance_threads",
            "Threads summed over the instance's process group",
            g,
            &threads,
        )?;
        family(
            &mut enc,
            "windlass_instance_open_fds",
            "Open file descriptors summed over the instance's process group",
            g,
            &fds,
        )?;
        family(
            &mut enc,
            "windlass_instance_processes",
            "Live processes in the instance's process group",
            g,
            &nprocs,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_suffix_in_prometheus_text() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n# HELP b Up.\n# TYPE b gauge\n# UNIT b seconds\nb 1\n# EOF\n";
        assert_eq!(
            openmetrics_to_prometheus(om),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n# HELP b Up.\n# TYPE b gauge\nb 1\n"
        );
    }
}
