//! The supervisor: one task per app instance, and a cloneable [`Supervisor`] handle to command
//! them and read their state.
//!
//! Apps are spawned in their own process groups ([`process`]), their output captured into
//! [`crate::logs`] ([`capture`]), restarted per policy ([`backoff`]), and guarded against
//! windlass's own death ([`guardian`]). Common Lisp apps from source are compiled once per
//! command before their instances start ([`lisp_compile`]). The control API and the CLI only
//! ever go through the handle, never through the tasks' internals.

pub mod backoff;
pub mod capture;
pub mod console;
pub mod guardian;
pub mod instance;
pub mod lisp_compile;
pub mod lisp_image;
pub mod process;
pub mod reaper;
pub mod usage;

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{self as cfg, AppConfig, Config, ReloadStrategy};
use crate::logs::{AppLog, Tap};
use crate::protocol::{Action, AppStatus, InstanceStatus, LogLine, State, Status, SupervisorInfo};
use crate::proxy::{AppProxy, ProxyConfig};
use guardian::Guardian;
use instance::{Cmd, InstanceCell, InstanceCtx, Outcome, Request};

/// Errors a request to the supervisor can meet.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("no app named `{name}`")]
    UnknownApp { name: String, known: Vec<String> },
    #[error("cannot create {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    /// The config file no longer loads (a reload re-reads it).
    #[error("{0}")]
    Config(#[source] cfg::ConfigError),
    #[error("app `{app}` is no longer in {}", file.display())]
    AppRemoved { app: String, file: PathBuf },
    /// A setting changed that only a supervisor restart applies.
    #[error(
        "`port` and `instances` of `{app}` changed in the config; they take effect when the supervisor restarts (`windlass down && windlass up -d`)"
    )]
    NeedsRestart { app: String },
    #[error("reload of `{app}` failed: {reason}")]
    ReloadFailed {
        app: String,
        reason: String,
        hint: Option<String>,
    },
    /// `windlass rollback` named no usable release (nothing was touched).
    #[error("{reason}")]
    BadRelease {
        reason: String,
        hint: Option<String>,
    },
    /// The compile step of a Lisp app failed before a restart touched any instance.
    #[error("`{app}` was not restarted: {reason}")]
    RestartFailed { app: String, reason: String },
}

impl SupervisorError {
    /// What the user can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            SupervisorError::UnknownApp { known, .. } => {
                Some(format!("apps: {}", known.join(", ")))
            }
            SupervisorError::ReloadFailed { hint, .. }
            | SupervisorError::BadRelease { hint, .. } => hint.clone(),
            _ => None,
        }
    }
}

/// How to start the supervisor.
pub struct Options {
    /// Start only these apps (all when empty); the others are known but stopped.
    pub only: Vec<String>,
    pub guardian: Option<Guardian>,
    /// Where the admin listener (metrics, dashboard) was bound, for `status`.
    pub admin: Option<std::net::SocketAddr>,
    /// The log broadcast, made by [`log_tap`] when the caller must see every line from the
    /// first one (the foreground printer subscribes before any instance starts).
    pub tap: Option<Tap>,
}

/// A log broadcast and a receiver subscribed before anything is written to it.
pub fn log_tap() -> (Tap, broadcast::Receiver<Arc<LogLine>>) {
    broadcast::channel(16 * 1024)
}

/// Cheap to clone; every clone drives the same supervisor.
#[derive(Clone)]
pub struct Supervisor {
    shared: Arc<Inner>,
}

struct Inner {
    config: Config,
    apps: Vec<AppRuntime>,
    tap: Tap,
    force: watch::Sender<bool>,
    /// Held for its lifetime: the guardian kills every app when its pipe closes.
    _guardian: Option<Arc<Guardian>>,
    started_at: f64,
    pid: u32,
    admin: Option<std::net::SocketAddr>,
    /// Bumped whenever an instance changes state (systemd's STATUS= follows it).
    changed: Arc<watch::Sender<u64>>,
    /// How many reloads are under way (systemd's RELOADING=1 while above zero).
    reloading: watch::Sender<u32>,
}

/// Counts a reload in [`Inner::reloading`] while it lives.
struct Reloading<'a>(&'a watch::Sender<u32>);

impl<'a> Reloading<'a> {
    fn begin(tx: &'a watch::Sender<u32>) -> Reloading<'a> {
        tx.send_modify(|n| *n += 1);
        Reloading(tx)
    }
}

impl Drop for Reloading<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

struct AppRuntime {
    name: String,
    config: Arc<RwLock<Arc<AppConfig>>>,
    log: Arc<AppLog>,
    proxy: Option<AppProxy>,
    instances: Vec<InstanceHandle>,
    /// One reload at a time per app.
    reload_lock: tokio::sync::Mutex<()>,
    counters: Arc<AppCounters>,
    /// The compile step of a Lisp app from source, shared by its instances.
    compiler: Arc<lisp_compile::LispCompiler>,
}

/// Event counts of one app since the supervisor started (for metrics).
#[derive(Debug, Default)]
pub struct AppCounters {
    pub reloads_ok: std::sync::atomic::AtomicU64,
    pub reloads_failed: std::sync::atomic::AtomicU64,
    pub health_check_failures: std::sync::atomic::AtomicU64,
}

/// A reading of [`AppCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub health_check_failures: u64,
}

struct InstanceHandle {
    cell: Arc<InstanceCell>,
    tx: mpsc::Sender<Request>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// `now + d`, saturating instead of panicking ([`crate::proxy::instant_after`], for the
/// supervisor's `std` instants).
pub(crate) fn instant_after(d: std::time::Duration) -> Instant {
    crate::proxy::instant_after(tokio::time::Instant::now(), d).into_std()
}

/// Seconds since the Unix epoch, as a float (the API's time format).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Supervisor {
    /// Creates the log directory, then starts a task per instance (autostarting the selected
    /// apps). Must run inside a tokio runtime.
    pub fn start(config: Config, opts: Options) -> Result<Supervisor, SupervisorError> {
        let known: Vec<String> = config.apps.iter().map(|a| a.name.clone()).collect();
        for name in &opts.only {
            if !known.contains(name) {
                return Err(SupervisorError::UnknownApp {
                    name: name.clone(),
                    known,
                });
            }
        }
        let log_dir = config.layout().logs_dir();
        std::fs::create_dir_all(&log_dir).map_err(|e| SupervisorError::Io {
            path: log_dir.clone(),
            source: e,
        })?;
        let tap = opts.tap.clone().unwrap_or_else(|| log_tap().0);
        let (force, _) = watch::channel(false);
        let changed = Arc::new(watch::channel(0u64).0);
        let guardian = opts.guardian.map(Arc::new);
        let guardian_fd = guardian.as_ref().map(|g| g.raw_fd());
        let on_gone: Arc<dyn Fn(i32) + Send + Sync> = match &guardian {
            Some(g) => {
                let g = g.clone();
                Arc::new(move |pgid| g.unregister(pgid))
            }
            None => Arc::new(|_| {}),
        };
        let budget = connection_budget(&config);
        let up_at = Instant::now();
        let spawner: Arc<dyn instance::Spawner> = Arc::new(instance::OsSpawner);
        let mut apps = Vec::new();
        for app in &config.apps {
            let autostart = if opts.only.is_empty() {
                app.autostart
            } else {
                opts.only.contains(&app.name)
            };
            let log = Arc::new(AppLog::new(&log_dir, &app.name, app.logs, tap.clone()));
            let shared_cfg = Arc::new(RwLock::new(Arc::new(app.clone())));
            let proxy = app.port.map(|_| {
                let proxy = AppProxy::new(&app.name, proxy_config(app, budget));
                // Failed requests are told in the app's log, with their request id.
                let log = log.clone();
                proxy.set_notes(Arc::new(move |line: &str| log.note(None, line)));
                proxy
            });
            let counters = Arc::new(AppCounters::default());
            let compiler = Arc::new(lisp_compile::LispCompiler::default());
            let mut instances = Vec::new();
            for index in 0..app.instances {
                let cell = Arc::new(InstanceCell::new(index));
                let (tx, rx) = mpsc::channel(16);
                let ctx = InstanceCtx {
                    app: shared_cfg.clone(),
                    cell: cell.clone(),
                    log: log.clone(),
                    guardian_fd,
                    proxy: proxy.clone(),
                    counters: counters.clone(),
                    force: force.subscribe(),
                    on_group_gone: on_gone.clone(),
                    compiler: compiler.clone(),
                    up_at,
                    spawner: spawner.clone(),
                    changed: changed.clone(),
                };
                let task = tokio::spawn(instance::run(ctx, rx, autostart));
                instances.push(InstanceHandle {
                    cell,
                    tx,
                    task: std::sync::Mutex::new(Some(task)),
                });
            }
            apps.push(AppRuntime {
                name: app.name.clone(),
                config: shared_cfg,
                log,
                proxy,
                instances,
                reload_lock: tokio::sync::Mutex::new(()),
                counters,
                compiler,
            });
        }
        Ok(Supervisor {
            shared: Arc::new(Inner {
                config,
                apps,
                tap,
                force,
                _guardian: guardian,
                started_at: unix_now(),
                pid: std::process::id(),
                admin: opts.admin,
                changed,
                reloading: watch::channel(0).0,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn app_names(&self) -> Vec<String> {
        self.shared.apps.iter().map(|a| a.name.clone()).collect()
    }

    fn app(&self, name: &str) -> Result<&AppRuntime, SupervisorError> {
        self.shared
            .apps
            .iter()
            .find(|a| a.name == name)
            .ok_or_else(|| SupervisorError::UnknownApp {
                name: name.to_owned(),
                known: self.app_names(),
            })
    }

    /// The current config of `app` (re-read by each reload).
    pub fn app_config(&self, app: &str) -> Option<Arc<AppConfig>> {
        let rt = self.app(app).ok()?;
        Some(rt.config.read().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// The pid of instance `index` of `app`, while it has a process.
    pub fn instance_pid(&self, app: &str, index: u32) -> Option<u32> {
        let rt = self.app(app).ok()?;
        rt.instances
            .iter()
            .find(|i| i.cell.index == index)?
            .cell
            .snapshot()
            .pid
    }

    /// Follows every log line from now on.
    pub fn subscribe_logs(&self) -> broadcast::Receiver<Arc<LogLine>> {
        self.shared.tap.subscribe()
    }

    /// The number of reloads under way; changes when one begins or ends.
    pub fn subscribe_reloads(&self) -> watch::Receiver<u32> {
        self.shared.reloading.subscribe()
    }

    /// Changes whenever any instance changes state.
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Log settings of an app (for reading its files).
    pub fn log_keep(&self, app: &str) -> Option<u32> {
        self.shared.config.app(app).map(|a| a.logs.keep)
    }

    pub fn log_dir(&self) -> PathBuf {
        self.shared.config.layout().logs_dir()
    }

    /// Starts, stops or restarts every instance of `app` (a reload is [`Supervisor::reload`]);
    /// returns once all have done it.
    pub async fn act(&self, app: &str, action: Action) -> Result<AppStatus, SupervisorError> {
        let cmd = match action {
            Action::Start => Cmd::Start,
            Action::Stop => Cmd::Stop,
            Action::Restart => Cmd::Restart,
            Action::Reload => return self.reload(app).await.map(|(status, _)| status),
        };
        let rt = self.app(app)?;
        let after = Instant::now();
        if matches!(action, Action::Restart) {
            rt.log.note(None, "restart requested");
            // A Lisp app from source compiles first: if that fails, nothing was stopped.
            let app_cfg = rt.config.read().unwrap_or_else(|p| p.into_inner()).clone();
            if let Err(reason) = rt.compiler.ensure(&app_cfg, &rt.log, Some(after)).await {
                return Err(SupervisorError::RestartFailed {
                    app: app.to_owned(),
                    reason: format!("{reason}\nthe running instances were left alone"),
                });
            }
        }
        // Instances restart one after the other; start and stop go to all at once.
        let mut waits = Vec::new();
        for inst in &rt.instances {
            let rx = send(inst, cmd, after).await?;
            if action == Action::Restart {
                let _ = rx.await;
            } else {
                waits.push(rx);
            }
        }
        for w in waits {
            let _ = w.await;
        }
        Ok(self.app_status(rt))
    }

    /// Reloads `app` with its strategy, re-reading its config from the file first (so a
    /// changed command or environment takes effect). Blue-green rolls the instances one at
    /// a time; on a failure the remaining old instances keep serving and the error says why.
    pub async fn reload(&self, app: &str) -> Result<(AppStatus, Vec<String>), SupervisorError> {
        let rt = self.app(app)?;
        let _reloading = Reloading::begin(&self.shared.reloading);
        let _one_at_a_time = rt.reload_lock.lock().await;
        self.reload_locked(rt, app, None).await
    }

    /// `windlass rollback APP [RELEASE]`: switches `app` to `release` (default: the one built
    /// before the release it runs) through a blue-green reload (a restart for an app without
    /// a port), and records the choice so it survives restarts. On a failure the choice is
    /// undone and instances that already switched are reloaded back: the old release serves.
    /// Returns the status, the reload's messages and the (from, to) ids.
    pub async fn switch_release(
        &self,
        app: &str,
        release: Option<&str>,
    ) -> Result<(AppStatus, Vec<String>, Option<String>, String), SupervisorError> {
        let rt = self.app(app)?;
        let _reloading = Reloading::begin(&self.shared.reloading);
        let _one_at_a_time = rt.reload_lock.lock().await;
        let cfg = rt.config.read().unwrap_or_else(|p| p.into_inner()).clone();
        let bad =
            |reason: String, hint: Option<String>| SupervisorError::BadRelease { reason, hint };
        if cfg.releases.sel.is_none() {
            return Err(bad(
                format!("app `{app}` runs from source, not from releases"),
                Some(format!(
                    "set release = \"latest\" in [app.{app}], build with `windlass build {app}`, then reload"
                )),
            ));
        }
        // What runs now: the first instance's release, else what its next start would run.
        let running = rt.instances.iter().find_map(|i| {
            i.cell
                .snapshot()
                .pid
                .and_then(crate::release::release_of_pid)
        });
        let from = match running {
            Some(id) => Some(id),
            None => crate::release::current(&cfg)
                .ok()
                .flatten()
                .map(|r| r.manifest.id),
        };
        let target = match release {
            Some(id) => {
                crate::release::find(&cfg.releases.dir, app, &cfg::ReleaseSel::Id(id.to_owned()))
                    .map_err(|e| bad(e.to_string(), e.hint()))?
            }
            None => {
                let Some(cur) = &from else {
                    return Err(bad(
                        format!("app `{app}` runs no release yet: there is none before it"),
                        Some(format!(
                            "name one: `windlass rollback {app} ID` (ids from `windlass releases {app}`)"
                        )),
                    ));
                };
                crate::release::previous(&cfg, cur)
                    .map_err(|e| bad(e.to_string(), e.hint()))?
                    .ok_or_else(|| {
                        bad(
                            format!("release {cur} is the oldest release of `{app}`: there is none before it"),
                            Some(format!("see the ids with `windlass releases {app}`")),
                        )
                    })?
            }
        };
        let to = target.manifest.id.clone();
        let before = crate::release::selected(&cfg);
        crate::release::set_selected(&cfg, Some(&to)).map_err(|e| SupervisorError::Io {
            path: crate::release::selection_file(&cfg),
            source: e,
        })?;
        rt.log.note(
            None,
            &format!(
                "switching to release {to} (from {})",
                from.as_deref().unwrap_or("source")
            ),
        );
        let strategy = if cfg.port.is_some() {
            ReloadStrategy::BlueGreen
        } else {
            ReloadStrategy::Restart
        };
        match self.reload_locked(rt, app, Some(strategy)).await {
            Ok((status, messages)) => Ok((status, messages, from, to)),
            Err(e) => {
                let _ = crate::release::set_selected(&cfg, before.as_deref());
                // Instances that switched before the failure go back to the old release.
                let after = Instant::now();
                let cmd = if strategy == ReloadStrategy::BlueGreen {
                    Cmd::Reload
                } else {
                    Cmd::Restart
                };
                for inst in &rt.instances {
                    let on_new = inst
                        .cell
                        .snapshot()
                        .pid
                        .and_then(crate::release::release_of_pid)
                        == Some(to.clone());
                    if on_new {
                        if let Ok(rx) = send(inst, cmd, after).await {
                            let _ = rx.await;
                        }
                    }
                }
                rt.log.note(
                    None,
                    &format!("release {to} failed; back on the old release"),
                );
                Err(e)
            }
        }
    }

    /// [`Supervisor::reload`] with the app's reload lock held; `strategy` overrides the app's.
    async fn reload_locked(
        &self,
        rt: &AppRuntime,
        app: &str,
        strategy: Option<ReloadStrategy>,
    ) -> Result<(AppStatus, Vec<String>), SupervisorError> {
        let fresh = cfg::load(&self.shared.config.file).map_err(SupervisorError::Config)?;
        let new_app = fresh
            .app(app)
            .cloned()
            .ok_or_else(|| SupervisorError::AppRemoved {
                app: app.to_owned(),
                file: self.shared.config.file.clone(),
            })?;
        let current = rt.config.read().unwrap_or_else(|p| p.into_inner()).clone();
        if new_app.port != current.port || new_app.instances != current.instances {
            return Err(SupervisorError::NeedsRestart {
                app: app.to_owned(),
            });
        }
        let strategy = strategy.unwrap_or(new_app.reload);
        *rt.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(new_app.clone());
        rt.log.note(
            None,
            &format!("reload requested ({})", strategy_name(strategy)),
        );
        let mut messages = Vec::new();
        match strategy {
            ReloadStrategy::InPlace => {
                let result = self.reload_in_place(rt, &new_app).await;
                match result {
                    Ok(lines) => messages = lines,
                    Err(e) => {
                        rt.counters.reloads_failed.fetch_add(1, Relaxed);
                        rt.log.note(None, &format!("reload failed: {e}"));
                        return Err(e);
                    }
                }
            }
            ReloadStrategy::Restart | ReloadStrategy::BlueGreen => {
                let cmd = if strategy == ReloadStrategy::BlueGreen {
                    Cmd::Reload
                } else {
                    Cmd::Restart
                };
                // A Lisp app from source compiles once for every instance, before any is
                // touched: a compile error fails the reload and the old version keeps serving.
                let after = Instant::now();
                if let Err(reason) = rt.compiler.ensure(&new_app, &rt.log, Some(after)).await {
                    rt.counters.reloads_failed.fetch_add(1, Relaxed);
                    rt.log.note(None, &format!("reload failed: {reason}"));
                    return Err(SupervisorError::ReloadFailed {
                        app: app.to_owned(),
                        reason: format!("{reason}\nthe old version keeps serving"),
                        hint: None,
                    });
                }
                for inst in &rt.instances {
                    let outcome: Outcome = send(inst, cmd, after)
                        .await?
                        .await
                        .unwrap_or(Err(instance::InstanceError::TaskEnded));
                    match outcome {
                        Ok(m) => messages.push(format!(
                            "{app}.{}: {}",
                            inst.cell.index,
                            if m.is_empty() { "restarted".into() } else { m }
                        )),
                        Err(reason) => {
                            rt.counters.reloads_failed.fetch_add(1, Relaxed);
                            rt.log.note(None, &format!("reload failed: {reason}"));
                            return Err(SupervisorError::ReloadFailed {
                                app: app.to_owned(),
                                reason: reason.to_string(),
                                hint: None,
                            });
                        }
                    }
                }
            }
        }
        rt.counters.reloads_ok.fetch_add(1, Relaxed);
        Ok((self.app_status(rt), messages))
    }

    /// `reload = "in-place"`: a Lisp app with swank evaluates its `reload_eval` in every
    /// running image (a compile error fails the reload, the old code keeps serving); any
    /// other app gets its `reload_signal`.
    async fn reload_in_place(
        &self,
        rt: &AppRuntime,
        app: &AppConfig,
    ) -> Result<Vec<String>, SupervisorError> {
        let name = &app.name;
        let running: Vec<(u32, u32)> = rt
            .instances
            .iter()
            .filter_map(|i| i.cell.snapshot().pid.map(|pid| (i.cell.index, pid)))
            .collect();
        let failed = |reason: String, hint: Option<String>| SupervisorError::ReloadFailed {
            app: name.clone(),
            reason,
            hint,
        };
        let swank = app.lisp.as_ref().is_some_and(|l| l.swank_port.is_some());
        if swank || (app.lisp.is_some() && app.reload_signal.is_none()) {
            if running.is_empty() {
                return Err(failed(
                    "no instance is running: there is no image to reload".into(),
                    Some(format!("start it: windlass start {name}")),
                ));
            }
            let indices: Vec<u32> = running.iter().map(|(i, _)| *i).collect();
            let report = lisp_image::reload_in_place(app, &indices, self.subscribe_logs())
                .await
                .map_err(|e| {
                    let hint = e.hint();
                    failed(e.to_string(), hint)
                })?;
            let lines = lisp_image::report_lines(&report);
            if !report.ok {
                return Err(failed(
                    format!("the old code keeps serving\n{}", lines.join("\n")),
                    None,
                ));
            }
            return Ok(lines);
        }
        let Some(sig) = app.reload_signal else {
            return Err(failed(
                "reload = \"in-place\" needs `reload_signal` (e.g. \"SIGHUP\") for this app".into(),
                None,
            ));
        };
        Ok(running
            .into_iter()
            .map(|(index, pid)| {
                process::signal_group(pid as i32, sig);
                format!("{name}.{index}: sent {} to pid {pid}", sig.as_str())
            })
            .collect())
    }

    /// Event counts of `app` (zeros for an unknown app).
    pub fn counters(&self, app: &str) -> Counts {
        self.app(app).map_or(Counts::default(), |rt| Counts {
            reloads_ok: rt.counters.reloads_ok.load(Relaxed),
            reloads_failed: rt.counters.reloads_failed.load(Relaxed),
            health_check_failures: rt.counters.health_check_failures.load(Relaxed),
        })
    }

    /// The proxies of the apps with a public port: (app, bind address, proxy).
    pub fn proxies(&self) -> Vec<(String, std::net::SocketAddr, AppProxy)> {
        self.shared
            .apps
            .iter()
            .filter_map(|a| {
                let cfg = a.config.read().unwrap_or_else(|p| p.into_inner()).clone();
                let port = cfg.port?;
                Some((
                    a.name.clone(),
                    std::net::SocketAddr::new(cfg.bind, port),
                    a.proxy.clone()?,
                ))
            })
            .collect()
    }

    /// Graceful stop of every instance, all apps in parallel; returns when every process is gone.
    pub async fn shutdown(&self) {
        let mut waits = Vec::new();
        for app in &self.shared.apps {
            for inst in &app.instances {
                let (done, rx) = oneshot::channel();
                if inst
                    .tx
                    .send(Request {
                        cmd: Cmd::Shutdown,
                        done,
                        after: Instant::now(),
                    })
                    .await
                    .is_ok()
                {
                    waits.push(rx);
                }
            }
        }
        for w in waits {
            let _ = w.await;
        }
        for app in &self.shared.apps {
            for inst in &app.instances {
                let task = inst.task.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(t) = task {
                    let _ = t.await;
                }
            }
        }
    }

    /// Turns a graceful stop in progress into SIGKILL at once (second Ctrl-C).
    pub fn force_kill(&self) {
        self.shared.force.send_replace(true);
    }

    pub fn status(&self) -> Status {
        Status {
            version: crate::protocol::VERSION,
            supervisor: SupervisorInfo {
                pid: self.shared.pid,
                started_at: self.shared.started_at,
                config: self.shared.config.file.display().to_string(),
                windlass_version: env!("CARGO_PKG_VERSION").to_owned(),
                admin_url: self.admin_url(),
                memory_bytes: usage::myself().map_or(0, |u| u.resident_bytes),
            },
            apps: {
                // One pass over /proc for every instance.
                let usage = usage::groups(&self.pgids(self.shared.apps.iter()));
                self.shared
                    .apps
                    .iter()
                    .map(|a| self.app_status_with(a, &usage))
                    .collect()
            },
        }
    }

    pub fn app_status_by_name(&self, app: &str) -> Result<AppStatus, SupervisorError> {
        Ok(self.app_status(self.app(app)?))
    }

    fn app_status(&self, rt: &AppRuntime) -> AppStatus {
        let usage = usage::groups(&self.pgids(std::iter::once(rt)));
        self.app_status_with(rt, &usage)
    }

    /// The process groups of the running instances of `apps`.
    fn pgids<'a>(&self, apps: impl Iterator<Item = &'a AppRuntime>) -> Vec<i32> {
        apps.flat_map(|a| a.instances.iter())
            .filter_map(|i| i.cell.snapshot().pid)
            .filter_map(|p| i32::try_from(p).ok())
            .collect()
    }

    /// `rt`'s status, with the usage of its groups read by [`usage::groups`].
    fn app_status_with(
        &self,
        rt: &AppRuntime,
        usage: &std::collections::HashMap<i32, usage::Usage>,
    ) -> AppStatus {
        let cfg = rt.config.read().unwrap_or_else(|p| p.into_inner()).clone();
        let now = Instant::now();
        let instances: Vec<InstanceStatus> = rt
            .instances
            .iter()
            .map(|i| {
                let s = i.cell.snapshot();
                let usage = s
                    .pid
                    .and_then(|p| i32::try_from(p).ok())
                    .and_then(|p| usage.get(&p));
                InstanceStatus {
                    index: i.cell.index,
                    state: s.state,
                    pid: s.pid,
                    port: s.port,
                    started_at: s.started.filter(|_| s.pid.is_some()).map(|(t, _)| {
                        t.duration_since(UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64())
                    }),
                    uptime_secs: s
                        .started
                        .filter(|_| s.pid.is_some())
                        .map(|(_, i)| now.duration_since(i).as_secs_f64()),
                    restarts: s.restarts,
                    memory_bytes: usage.map(|u| u.resident_bytes),
                    cpu_seconds: usage.map(|u| u.cpu_seconds),
                    last_exit: s.last_exit,
                    last_stderr: i.cell.stderr_tail(),
                    reloads: s.reloads,
                    next_start_in_secs: s
                        .next_start
                        .map(|t| t.saturating_duration_since(now).as_secs_f64()),
                    message: s.message,
                    release: s.pid.and_then(crate::release::release_of_pid),
                    lisp: None,
                }
            })
            .collect();
        let state = aggregate(instances.iter().map(|i| i.state));
        AppStatus {
            name: rt.name.clone(),
            state,
            port: cfg.port,
            instances,
            log_lines_dropped: rt.log.dropped(),
            proxy: rt.proxy.as_ref().map(|p| {
                let m = p.metrics();
                crate::protocol::ProxyStatus {
                    in_flight: m.in_flight,
                    requests_by_class: m.requests_by_class,
                    ready_backends: m.backends.iter().filter(|b| b.ready).count(),
                }
            }),
        }
    }

    /// The console of instance `index` of `app` (apps with `console = true`).
    pub fn console(&self, app: &str, index: u32) -> Result<Arc<console::Console>, SupervisorError> {
        let rt = self.app(app)?;
        rt.instances
            .iter()
            .find(|i| i.cell.index == index)
            .map(|i| i.cell.console.clone())
            .ok_or_else(|| SupervisorError::UnknownApp {
                name: format!("{app} (instance {index})"),
                known: self.app_names(),
            })
    }

    /// The admin listener's base URL, when it runs.
    pub fn admin_url(&self) -> Option<String> {
        self.shared.admin.map(|a| format!("http://{a}/"))
    }
}

async fn send(
    inst: &InstanceHandle,
    cmd: Cmd,
    after: Instant,
) -> Result<oneshot::Receiver<Outcome>, SupervisorError> {
    let (done, rx) = oneshot::channel();
    inst.tx
        .send(Request { cmd, done, after })
        .await
        .map_err(|_| SupervisorError::ShuttingDown)?;
    Ok(rx)
}

fn strategy_name(s: ReloadStrategy) -> &'static str {
    match s {
        ReloadStrategy::BlueGreen => "blue-green",
        ReloadStrategy::Restart => "restart",
        ReloadStrategy::InPlace => "in-place",
    }
}

/// The default `proxy.max_connections` of each app with a port, from the open-files limit
/// now (after [`crate::limits::raise`]); warns about an explicit value above it.
fn connection_budget(config: &Config) -> usize {
    let nofile = crate::limits::current().map_or(1024, |(soft, _)| soft);
    let proxied = config.apps.iter().filter(|a| a.port.is_some()).count();
    let instances = config.apps.iter().map(|a| a.instances as usize).sum();
    let budget = crate::limits::connection_budget(nofile, proxied, instances);
    for app in config.apps.iter().filter(|a| a.port.is_some()) {
        if let Some(max) = app.proxy.max_connections.filter(|m| *m > budget) {
            tracing::warn!(
                app = %app.name,
                max_connections = max,
                open_files_limit = nofile,
                "proxy.max_connections is above what the open-files limit leaves for this app (~{budget}); windlass may run out of file descriptors: raise the limit (LimitNOFILE= in the systemd unit) or lower proxy.max_connections"
            );
        }
    }
    budget
}

/// The proxy settings of an app, from its config; `budget` is the default cap on its
/// client connections.
fn proxy_config(app: &AppConfig, budget: usize) -> ProxyConfig {
    ProxyConfig {
        max_connections: app.proxy.max_connections.unwrap_or(budget),
        hold: app.proxy.hold,
        connect_timeout: app.proxy.connect_timeout,
        response_timeout: app.proxy.response_timeout,
        idle_timeout: app.proxy.idle_timeout,
        header_timeout: app.proxy.header_timeout,
        body_timeout: app.proxy.body_timeout,
        trusted_proxies: app.proxy.trusted_proxies.clone(),
        instances: app.instances,
        ..ProxyConfig::default()
    }
}

/// The state shown for an app: the most alarming of its instances'.
pub fn aggregate(states: impl Iterator<Item = State>) -> State {
    let rank = |s: State| match s {
        State::Fatal => 7,
        State::Crashloop => 6,
        State::Backoff => 5,
        State::Stopping => 4,
        State::Starting => 3,
        State::Exited => 2,
        State::Stopped => 1,
        State::Running => 0,
    };
    states.max_by_key(|s| rank(*s)).unwrap_or(State::Stopped)
}
