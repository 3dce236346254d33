//! The figures of Common Lisp images: heap usage and size, GC time, bytes consed and threads
//! of every running instance of a Lisp app with `swank_port`, read through swank.
//!
//! A scrape never waits on swank: a background task ([`spawn_refresh`]) asks every image
//! every [`REFRESH`] (each answer within 2 s or skipped) and keeps the last answers with the
//! pid that gave them; the collector exposes the answers whose pid is still the instance's
//! current process, so a stopped or replaced image disappears from `/metrics` at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::family;
use crate::protocol::LispMetrics;
use crate::supervisor::{Supervisor, lisp_image};

/// How often the images are asked.
pub const REFRESH: Duration = Duration::from_secs(5);

/// The last answer of each image: (app, index) -> (pid, figures).
pub type LispCache = Arc<RwLock<HashMap<(String, u32), (u32, LispMetrics)>>>;

/// Asks every running Lisp image with swank for its figures, now and every [`REFRESH`];
/// images that do not answer are dropped from the cache. Must run inside a tokio runtime.
pub fn spawn_refresh(supervisor: Supervisor, cache: LispCache) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            refresh(&supervisor, &cache).await;
        }
    })
}

async fn refresh(supervisor: &Supervisor, cache: &LispCache) {
    let mut fresh = HashMap::new();
    for app in supervisor.app_names() {
        let Some(cfg) = supervisor.app_config(&app) else {
            continue;
        };
        if cfg.lisp.as_ref().is_none_or(|l| l.swank_port.is_none()) {
            continue;
        }
        let Ok(status) = supervisor.app_status_by_name(&app) else {
            continue;
        };
        for inst in status.instances {
            let Some(pid) = inst.pid else { continue };
            if let Some(m) = lisp_image::lisp_metrics(&cfg, inst.index).await {
                fresh.insert((app.clone(), inst.index), (pid, m));
            }
        }
    }
    *cache.write().unwrap_or_else(|p| p.into_inner()) = fresh;
}

/// Exposes the cache's figures of the images still running.
pub(super) struct LispCollector {
    pub(super) supervisor: Supervisor,
    pub(super) cache: LispCache,
}

impl std::fmt::Debug for LispCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LispCollector").finish_non_exhaustive()
    }
}

type Labels = Vec<(&'static str, String)>;

impl Collector for LispCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut rows: Vec<(Labels, LispMetrics)> = Vec::new();
        for ((app, index), (pid, m)) in cache {
            let current = self
                .supervisor
                .instance_pid(&app, index)
                .is_some_and(|p| p == pid);
            if current {
                rows.push((vec![("app", app), ("index", index.to_string())], m));
            }
        }
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let series = |f: fn(&LispMetrics) -> f64| -> Vec<(Labels, f64)> {
            rows.iter().map(|(l, m)| (l.clone(), f(m))).collect()
        };
        let (g, c) = (MetricType::Gauge, MetricType::Counter);
        family(
            &mut enc,
            "windlass_lisp_dynamic_space_usage_bytes",
            "Bytes in use in the Lisp image's dynamic space (its heap)",
            g,
            &series(|m| m.dynamic_usage_bytes as f64),
        )?;
        family(
            &mut enc,
            "windlass_lisp_dynamic_space_size_bytes",
            "Size of the Lisp image's dynamic space (the heap's limit)",
            g,
            &series(|m| m.dynamic_space_size_bytes as f64),
        )?;
        family(
            &mut enc,
            "windlass_lisp_gc_seconds",
            "Time the Lisp image spent in garbage collection",
            c,
            &series(|m| m.gc_run_time_seconds),
        )?;
        family(
            &mut enc,
            "windlass_lisp_bytes_consed",
            "Bytes allocated by the Lisp image since it started",
            c,
            &series(|m| m.bytes_consed_total as f64),
        )?;
        family(
            &mut enc,
            "windlass_lisp_threads",
            "Lisp threads of the image",
            g,
            &series(|m| m.threads as f64),
        )?;
        Ok(())
    }
}
