//! One task per app instance: start it, watch it, apply the restart policy, obey commands.
//!
//! The task owns the instance's process ([`Proc`]). Everything else talks to it through a
//! [`Request`] channel (start, stop, restart, reload, shutdown; each answered once done) and
//! reads its state from the shared [`InstanceCell`], the single source of truth for `status`.
//!
//! For an app behind the proxy, each process listens on a fresh private loopback port and is
//! registered with the app's [`AppProxy`] as a backend that receives traffic only once its
//! health check passes. Stopping takes it out of rotation and lets its in-flight requests
//! finish (up to `stop.timeout`) before the stop signal, so an app with no graceful-shutdown
//! code of its own loses no request. A blue-green reload starts the new process beside the
//! old, waits until it is healthy, switches traffic in one step, drains the old one, and
//! stops it; if the new process fails, the old one keeps serving.
//!
//! Split by concern: starting processes ([`spawn`], behind the [`Spawner`] seam the unit
//! tests replace), stopping them ([`stop`]), the blue-green switch ([`blue_green`]), and here
//! the command loop. Every command, whatever the task is doing (idle, compiling, backing off,
//! running, in the middle of a blue-green start), goes through one handler,
//! [`Task::on_command`], so a `stop` or a shutdown never waits behind a slow start.

mod blue_green;
mod spawn;
mod stop;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::{Backoff, Decision};
use super::process;
use crate::config::AppConfig;
use crate::logs::AppLog;
use crate::protocol::{ExitInfo, State};
use crate::proxy::AppProxy;
pub(crate) use spawn::{OsSpawner, Spawner};
use spawn::{Proc, Tail, spawn_proc};
use stop::{Stop, stop_proc};

/// What can be asked of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Start,
    Stop,
    Restart,
    /// Blue-green: start a new process, switch traffic once it is healthy, drain the old.
    Reload,
    /// Stop and end the task (supervisor shutdown).
    Shutdown,
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Start => "start",
            Cmd::Stop => "stop",
            Cmd::Restart => "restart",
            Cmd::Reload => "reload",
            Cmd::Shutdown => "shutdown",
        })
    }
}

/// Why a command to an instance failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InstanceError {
    /// The compile step of a Lisp app failed (its output is in the log).
    #[error("{0}")]
    Compile(String),
    /// The compile step before a blue-green start failed.
    #[error("{0}\nthe old version keeps serving")]
    ReloadCompile(String),
    /// The process could not be started; `detail` has the OS error and any remedy.
    #[error("cannot start `{program}`: {detail}")]
    Spawn { program: String, detail: String },
    /// The process exited before it was running (or while a start waited for it).
    #[error("exited: {0}")]
    Exited(ExitInfo),
    /// Its health check failed (it was stopped).
    #[error("{0}")]
    Health(String),
    /// windlass could not run its health check; the process is kept.
    #[error("{0}")]
    Unverified(String),
    /// The new process of a blue-green reload failed; the old one keeps serving.
    #[error("{failure}{}", last_lines(.last_output))]
    NewVersionFailed {
        failure: String,
        last_output: Vec<String>,
    },
    /// A command arrived during a blue-green start; the new process was stopped.
    #[error("reload interrupted by `{0}`; the new process was stopped")]
    Interrupted(Cmd),
    #[error("a reload of this instance is already in progress")]
    ReloadInProgress,
    #[error("the instance task ended")]
    TaskEnded,
}

fn last_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(
            "\nlast output lines of the new process:\n  {}",
            lines.join("\n  ")
        )
    }
}

/// The answer to a request: a message for the user (often empty), or why it failed.
pub type Outcome = Result<String, InstanceError>;

#[derive(Debug)]
pub struct Request {
    pub cmd: Cmd,
    pub done: oneshot::Sender<Outcome>,
    /// When the command was given: a Lisp app started by it runs code compiled no earlier
    /// (one compile serves every instance of one command).
    pub after: Instant,
}

/// The state of an instance, as `status` shows it.
#[derive(Debug, Clone)]
pub struct InstanceState {
    pub state: State,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub started: Option<(SystemTime, Instant)>,
    pub restarts: u64,
    pub reloads: u64,
    pub last_exit: Option<ExitInfo>,
    pub next_start: Option<Instant>,
    pub message: Option<String>,
}

/// Shared between the instance task and readers.
#[derive(Debug)]
pub struct InstanceCell {
    pub index: u32,
    pub state: Mutex<InstanceState>,
    /// The stderr tail of the current process.
    stderr_tail: Mutex<Tail>,
    /// The console (PTY) of apps with `console = true`; kept across restarts.
    pub console: Arc<super::console::Console>,
}

impl InstanceCell {
    pub fn new(index: u32) -> InstanceCell {
        InstanceCell {
            index,
            state: Mutex::new(InstanceState {
                state: State::Stopped,
                pid: None,
                port: None,
                started: None,
                restarts: 0,
                reloads: 0,
                last_exit: None,
                next_start: None,
                message: None,
            }),
            stderr_tail: Mutex::new(Arc::default()),
            console: Arc::default(),
        }
    }

    pub fn snapshot(&self) -> InstanceState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The last stderr lines of the current process.
    pub fn stderr_tail(&self) -> Vec<String> {
        let tail = self
            .stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let lines = tail.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect()
    }

    fn set_tail(&self, tail: Tail) {
        *self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner()) = tail;
    }

    fn update(&self, f: impl FnOnce(&mut InstanceState)) {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// Everything an instance task needs.
pub struct InstanceCtx {
    pub app: Arc<RwLock<Arc<AppConfig>>>,
    pub cell: Arc<InstanceCell>,
    pub log: Arc<AppLog>,
    pub guardian_fd: Option<i32>,
    /// The app's proxy, when it has a public port.
    pub proxy: Option<AppProxy>,
    /// The app's event counts (health-check failures are counted here).
    pub counters: Arc<super::AppCounters>,
    /// Turns true on a second Ctrl-C: stop with SIGKILL at once.
    pub force: watch::Receiver<bool>,
    /// Called with the pgid once a group is gone (the guardian forgets it).
    pub on_group_gone: Arc<dyn Fn(i32) + Send + Sync>,
    /// The app's compile step (Lisp apps from source), shared by its instances.
    pub compiler: Arc<super::lisp_compile::LispCompiler>,
    /// When the supervisor started: autostarted instances share the compile started after.
    pub up_at: Instant,
    /// Starts the processes and their health checks ([`OsSpawner`] but in unit tests).
    pub(crate) spawner: Arc<dyn Spawner>,
    /// Bumped on every state change (systemd's STATUS= line follows it).
    pub changed: Arc<watch::Sender<u64>>,
}

impl InstanceCtx {
    fn app(&self) -> Arc<AppConfig> {
        self.app.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, f: impl FnOnce(&mut InstanceState)) {
        self.cell.update(f);
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn note(&self, text: &str) {
        self.log.note(Some(self.cell.index), text);
    }
}

/// What the health task reports about process generation `.0`.
#[derive(Debug)]
pub(crate) enum Health {
    Ready(u64, Duration),
    StartFailed(u64, String),
    Unhealthy(u64, String),
    /// The start deadline passed while windlass itself could not run the checks (out of
    /// descriptors; the cause): the process is kept and checked again.
    Unverified(u64, String),
}

/// How soon a start that failed for windlass's own lack of descriptors or memory is tried
/// again.
const LOCAL_RETRY: Duration = Duration::from_secs(1);

/// What the task is doing when a command arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not wanted: no process.
    Idle,
    /// Waiting for the compile step before a start.
    Compiling,
    /// Waiting out the restart delay after an exit.
    Backoff,
    /// A process runs (starting or healthy).
    Running { behind_proxy: bool },
    /// A blue-green start is under way beside the running process.
    Reloading,
}

/// What the waiting code does after [`Task::on_command`].
#[derive(Debug)]
enum Next {
    /// Keep waiting (the command was answered or will be).
    Stay,
    /// End the wait; the loop goes on from `want`.
    Wake,
    /// Stop the process (or abandon the start), then obey this request.
    Stop(Request),
    /// Blue-green reload of the running process.
    Reload(Request),
    /// The channel closed: stop what runs and end the task.
    Closed,
    /// Shutdown answered: end the task.
    Return,
}

/// What ended a running process's watch.
enum Ended {
    /// The process exited (or was killed by windlass for failing its health check).
    Exited(std::io::Result<std::process::ExitStatus>, Option<String>),
    Asked(Request),
    ChannelClosed,
}

enum Flow {
    Continue,
    Return,
}

/// How the compile step before a start ended.
enum Compile {
    /// Compiled (or nothing to compile): start the process.
    Ready,
    /// The compile failed (like a load error: code 1 and the condition).
    Failed(String),
    /// A command ended the wait (a stop: its answer is in the acks).
    Interrupted(Flow),
}

pub(crate) async fn run(ctx: InstanceCtx, rx: mpsc::Receiver<Request>, autostart: bool) {
    let (health_tx, health_rx) = mpsc::channel::<Health>(8);
    let compile_after = Some(ctx.up_at);
    Task {
        ctx,
        rx,
        health_tx,
        health_rx,
        want: autostart,
        backoff: Backoff::default(),
        acks: Vec::new(),
        generation: 0,
        compile_after,
    }
    .run()
    .await
}

/// The instance task's state between events.
struct Task {
    ctx: InstanceCtx,
    rx: mpsc::Receiver<Request>,
    health_tx: mpsc::Sender<Health>,
    health_rx: mpsc::Receiver<Health>,
    /// Whether a process should run.
    want: bool,
    backoff: Backoff,
    /// Requests answered once the current start is decided.
    acks: Vec<oneshot::Sender<Outcome>>,
    generation: u64,
    /// The compile a (Lisp) start needs: started after this, or any successful one (None).
    compile_after: Option<Instant>,
}

impl Task {
    async fn run(mut self) {
        let mut first_start = true;
        loop {
            if !self.want {
                self.ctx.set(|s| {
                    if !matches!(s.state, State::Exited | State::Fatal) {
                        s.state = State::Stopped;
                    }
                    s.pid = None;
                    s.next_start = None;
                });
                self.ack_all(Ok(String::new()));
                let req = self.rx.recv().await;
                match self.on_command(Phase::Idle, req) {
                    Next::Closed | Next::Return => return,
                    _ => continue,
                }
            }

            let app = self.ctx.app();
            if !first_start {
                self.ctx.set(|s| s.restarts += 1);
            }
            first_start = false;
            match self.compile_first(&app).await {
                Compile::Ready => self.compile_after = None,
                Compile::Failed(msg) => {
                    self.compile_after = Some(Instant::now());
                    self.ctx.set(|s| {
                        s.last_exit = Some(ExitInfo {
                            code: Some(1),
                            signal: None,
                            at: crate::unix_now(),
                            uptime_secs: 0.0,
                        });
                        s.pid = None;
                        s.message = Some(msg.clone());
                    });
                    let decision =
                        self.backoff
                            .on_exit(&app.backoff, app.restart, false, Duration::ZERO);
                    self.ack_all(Err(InstanceError::Compile(msg)));
                    match self.after_exit(decision).await {
                        Flow::Continue => continue,
                        Flow::Return => return,
                    }
                }
                Compile::Interrupted(Flow::Continue) => continue,
                Compile::Interrupted(Flow::Return) => return,
            }
            self.generation += 1;
            let mut proc = match spawn_proc(&self.ctx, &app, self.generation, &self.health_tx) {
                Ok(p) => p,
                Err(e) => {
                    let hint = crate::limits::exhaustion_hint(&e);
                    let err = spawn_error(&app, &e);
                    let msg = err.to_string();
                    self.ctx.note(&msg);
                    self.ctx.set(|s| s.message = Some(msg));
                    // Out of descriptors or memory is windlass's trouble, not the app's: try
                    // again soon, with no crash-loop escalation.
                    let decision = if hint.is_some() {
                        Decision::Restart {
                            delay: LOCAL_RETRY,
                            crashloop: false,
                        }
                    } else {
                        self.backoff
                            .on_exit(&app.backoff, app.restart, false, Duration::ZERO)
                    };
                    self.ack_all(Err(err));
                    match self.after_exit(decision).await {
                        Flow::Continue => continue,
                        Flow::Return => return,
                    }
                }
            };
            self.ctx.cell.set_tail(proc.tail.clone());
            let behind_proxy = proc.backend.is_some();
            self.ctx.note(&match proc.port {
                Some(p) if behind_proxy => format!("started pid {} on private port {p}", proc.pid),
                _ => format!("started pid {}", proc.pid),
            });
            self.ctx.set(|s| {
                s.state = if behind_proxy {
                    State::Starting
                } else {
                    State::Running
                };
                s.pid = Some(proc.pid);
                s.port = proc.port;
                s.started = Some((SystemTime::now(), proc.started));
                s.next_start = None;
                s.message = None;
            });
            if !behind_proxy {
                self.ack_all(Ok(String::new()));
            }

            match self.watch(&app, &mut proc).await {
                Ended::Exited(status, why) => {
                    if let Flow::Return = self.on_exit(&app, &mut proc, status, why).await {
                        return;
                    }
                }
                Ended::Asked(req) => {
                    let result = stop_proc(&self.ctx, &app, &mut proc, Stop::Asked).await;
                    if let Ok(st) = result {
                        let info = process::exit_info(st, proc.started.elapsed());
                        self.ctx.set(|s| s.last_exit = Some(info));
                    }
                    self.ctx.note("stopped");
                    if let Flow::Return = self.obey_after_stop(req) {
                        return;
                    }
                }
                Ended::ChannelClosed => {
                    let _ = stop_proc(&self.ctx, &app, &mut proc, Stop::Asked).await;
                    return;
                }
            }
        }
    }

    /// The one command handler: what a command means in the current phase. Answers what
    /// can be answered at once, queues what is answered once a start is decided, and tells
    /// the waiting code whether to go on waiting.
    fn on_command(&mut self, phase: Phase, req: Option<Request>) -> Next {
        let Some(r) = req else {
            return Next::Closed;
        };
        match (phase, r.cmd) {
            (Phase::Idle, Cmd::Start | Cmd::Restart | Cmd::Reload) => {
                self.backoff.reset();
                self.want = true;
                self.compile_after = Some(r.after);
                self.acks.push(r.done);
                Next::Wake
            }
            (Phase::Idle, Cmd::Stop) => {
                let _ = r.done.send(Ok(String::new()));
                Next::Stay
            }
            (Phase::Idle, Cmd::Shutdown) => {
                let _ = r.done.send(Ok(String::new()));
                Next::Return
            }
            // Answered once the instance runs.
            (Phase::Compiling, Cmd::Start | Cmd::Restart | Cmd::Reload) => {
                self.acks.push(r.done);
                Next::Stay
            }
            (Phase::Compiling, Cmd::Stop | Cmd::Shutdown) => Next::Stop(r),
            (Phase::Backoff, Cmd::Start | Cmd::Restart | Cmd::Reload) => {
                self.backoff.reset();
                let _ = r.done.send(Ok(String::new()));
                Next::Wake
            }
            (Phase::Backoff, Cmd::Stop) => {
                self.want = false;
                let _ = r.done.send(Ok(String::new()));
                Next::Wake
            }
            (Phase::Backoff, Cmd::Shutdown) => {
                self.ctx.set(|s| {
                    s.state = State::Stopped;
                    s.next_start = None;
                });
                let _ = r.done.send(Ok(String::new()));
                Next::Return
            }
            (Phase::Running { .. } | Phase::Reloading, Cmd::Start) => {
                let _ = r.done.send(Ok("already running".into()));
                Next::Stay
            }
            (Phase::Running { behind_proxy: true }, Cmd::Reload) => Next::Reload(r),
            (Phase::Reloading, Cmd::Reload) => {
                let _ = r.done.send(Err(InstanceError::ReloadInProgress));
                Next::Stay
            }
            (Phase::Running { .. } | Phase::Reloading, _) => Next::Stop(r),
        }
    }

    /// What a stop, restart or shutdown does once the process is gone (or its start
    /// abandoned).
    fn obey_after_stop(&mut self, req: Request) -> Flow {
        match req.cmd {
            Cmd::Stop => {
                self.want = false;
                self.acks.push(req.done);
            }
            Cmd::Start | Cmd::Restart | Cmd::Reload => {
                self.backoff.reset();
                self.compile_after = Some(req.after);
                self.acks.push(req.done);
            }
            Cmd::Shutdown => {
                self.ctx.set(|s| {
                    s.state = State::Stopped;
                    s.pid = None;
                    s.message = None;
                });
                let _ = req.done.send(Ok(String::new()));
                self.ack_all(Ok(String::new()));
                return Flow::Return;
            }
        }
        Flow::Continue
    }

    fn ack_all(&mut self, outcome: Outcome) {
        for a in self.acks.drain(..) {
            let _ = a.send(outcome.clone());
        }
    }

    /// Watches the running process until it exits or a command ends its run; answers the
    /// others meanwhile (and runs a blue-green reload when asked).
    async fn watch(&mut self, app: &AppConfig, proc: &mut Proc) -> Ended {
        let behind_proxy = proc.backend.is_some();
        loop {
            tokio::select! {
                s = proc.process.wait() => return Ended::Exited(s, None),
                Some(h) = self.health_rx.recv() => match h {
                    Health::Ready(g, took) if g == proc.generation => {
                        if let (Some(proxy), Some(b)) = (&self.ctx.proxy, proc.backend) {
                            proxy.set_ready(b, true);
                        }
                        self.ctx.note(&format!("healthy after {}; receiving traffic", human(took)));
                        self.ctx.set(|s| s.state = State::Running);
                        self.ack_all(Ok(String::new()));
                    }
                    Health::StartFailed(g, e) if g == proc.generation => {
                        self.ctx.counters.health_check_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let msg = format!("health check: {e}");
                        self.ctx.note(&msg);
                        proc.process.kill();
                        let s = proc.process.wait().await;
                        return Ended::Exited(s, Some(msg));
                    }
                    Health::Unverified(g, cause) if g == proc.generation => {
                        let msg = format!(
                            "not verified healthy within {}: windlass could not run the health check ({cause}); the process is kept and checked again",
                            human(app.health.start_timeout)
                        );
                        self.ctx.note(&msg);
                        self.ack_all(Err(InstanceError::Unverified(msg)));
                    }
                    Health::Unhealthy(g, e) if g == proc.generation => {
                        self.ctx.counters.health_check_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let msg = format!("unhealthy ({e}); taken out of rotation");
                        self.ctx.note(&msg);
                        if let (Some(proxy), Some(b)) = (&self.ctx.proxy, proc.backend) {
                            proxy.set_ready(b, false);
                        }
                        let r = stop_proc(&self.ctx, app, proc, Stop::Dead).await;
                        return Ended::Exited(r, Some(msg));
                    }
                    _ => {} // from an older process
                },
                req = self.rx.recv() => match self.on_command(Phase::Running { behind_proxy }, req) {
                    Next::Reload(r) => match self.blue_green(proc, r).await {
                        blue_green::Reloaded::Done => {}
                        blue_green::Reloaded::Interrupted(Some(r)) => return Ended::Asked(r),
                        blue_green::Reloaded::Interrupted(None) => return Ended::ChannelClosed,
                    },
                    Next::Stop(r) => return Ended::Asked(r),
                    Next::Closed => return Ended::ChannelClosed,
                    Next::Stay | Next::Wake | Next::Return => {}
                },
            }
        }
    }

    /// After the process exited on its own: its group cleaned up, the exit recorded and the
    /// restart policy applied.
    async fn on_exit(
        &mut self,
        app: &AppConfig,
        proc: &mut Proc,
        status: std::io::Result<std::process::ExitStatus>,
        why: Option<String>,
    ) -> Flow {
        let uptime = proc.started.elapsed();
        // The leader is gone; whatever it left in its group goes too.
        let rest = stop_proc(&self.ctx, app, proc, Stop::Dead).await;
        proc.drain_output().await;
        let info = match status.or(rest) {
            Ok(st) => process::exit_info(st, uptime),
            Err(_) => ExitInfo {
                code: None,
                signal: None,
                at: crate::unix_now(),
                uptime_secs: uptime.as_secs_f64(),
            },
        };
        // A health-check failure is a failure whatever the exit status says, and so
        // is a Lisp server that exits 0 right after its start: it did not serve.
        let success = info.code == Some(0)
            && why.is_none()
            && !(app.lisp.is_some() && uptime < app.backoff.reset_after);
        let decision = self
            .backoff
            .on_exit(&app.backoff, app.restart, success, uptime);
        self.ctx.set(|s| {
            s.last_exit = Some(info.clone());
            s.pid = None;
            s.message = why.clone();
        });
        self.ctx
            .note(&format!("exited: {info} after {}", human(uptime)));
        self.ack_all(Err(match why {
            Some(why) => InstanceError::Health(why),
            None => InstanceError::Exited(info),
        }));
        self.after_exit(decision).await
    }

    /// The compile step of a Lisp app from source, shared by the app's instances, before
    /// this one starts; commands are answered meanwhile (a stop or shutdown abandons the
    /// wait).
    async fn compile_first(&mut self, app: &Arc<AppConfig>) -> Compile {
        if app.lisp.as_ref().is_none_or(|l| l.compile.is_none()) {
            return Compile::Ready;
        }
        self.ctx.set(|s| {
            s.state = State::Starting;
            s.pid = None;
            s.next_start = None;
            s.message = Some("waiting for the compile step".into());
        });
        let (compiler, log, app2, after) = (
            self.ctx.compiler.clone(),
            self.ctx.log.clone(),
            app.clone(),
            self.compile_after,
        );
        let compiled = async move { compiler.ensure(&app2, &log, after).await };
        tokio::pin!(compiled);
        loop {
            tokio::select! {
                r = &mut compiled => {
                    return match r {
                        Ok(()) => Compile::Ready,
                        Err(e) => {
                            // The compile's output is in the log already: its first line will do.
                            self.ctx.note(&format!("not started: {}", e.lines().next().unwrap_or_default()));
                            Compile::Failed(e)
                        }
                    };
                }
                req = self.rx.recv() => match self.on_command(Phase::Compiling, req) {
                    Next::Stop(r) => return Compile::Interrupted(self.obey_after_stop(r)),
                    Next::Closed | Next::Return => return Compile::Interrupted(Flow::Return),
                    Next::Stay | Next::Wake | Next::Reload(_) => {}
                },
            }
        }
    }

    /// Applies the policy's decision after an exit: back off (answering commands meanwhile)
    /// or give up.
    async fn after_exit(&mut self, decision: Decision) -> Flow {
        match decision {
            Decision::GiveUp { failed } => {
                self.ctx
                    .set(|s| s.state = if failed { State::Fatal } else { State::Exited });
                self.ctx.note(if failed {
                    "not restarted (restart policy); state fatal"
                } else {
                    "not restarted (restart policy)"
                });
                self.want = false;
                Flow::Continue
            }
            Decision::Restart { delay, crashloop } => {
                if delay.is_zero() {
                    return Flow::Continue;
                }
                let state = if crashloop {
                    State::Crashloop
                } else {
                    State::Backoff
                };
                if crashloop {
                    self.ctx.note(&format!(
                        "crash loop: {} quick failures in a row; next start in {}",
                        self.backoff.quick_failures,
                        human(delay)
                    ));
                } else {
                    self.ctx.note(&format!("restarting in {}", human(delay)));
                }
                self.ctx.set(|s| {
                    s.state = state;
                    s.next_start = Some(super::instant_after(delay));
                });
                let sleep = tokio::time::sleep(delay);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        _ = &mut sleep => return Flow::Continue,
                        req = self.rx.recv() => match self.on_command(Phase::Backoff, req) {
                            Next::Closed | Next::Return => return Flow::Return,
                            Next::Stay => {}
                            Next::Wake | Next::Stop(_) | Next::Reload(_) => return Flow::Continue,
                        },
                    }
                }
            }
        }
    }
}

/// The error of a start that could not spawn its process.
fn spawn_error(app: &AppConfig, e: &std::io::Error) -> InstanceError {
    let program = app.argv.first().cloned().unwrap_or_default();
    let detail = match crate::limits::exhaustion_hint(e) {
        Some(hint) => format!("{e}; {hint}"),
        None => e.to_string(),
    };
    InstanceError::Spawn { program, detail }
}

/// `1.5s`, `120ms`, `3m 2s`.
pub fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(60) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}
