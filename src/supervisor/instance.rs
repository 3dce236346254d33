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

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::backoff::{Backoff, Decision};
use super::capture::capture;
use super::process::{self, Launch};
use crate::config::AppConfig;
use crate::health::HealthCheck;
use crate::logs::AppLog;
use crate::protocol::{ExitInfo, State, Stream};
use crate::proxy::{AppProxy, BackendId};

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

/// The answer to a request: a message for the user, or why it failed.
pub type Outcome = Result<String, String>;

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

type Tail = Arc<Mutex<VecDeque<String>>>;

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
    /// Bumped on every state change.
    pub changed: Arc<watch::Sender<u64>>,
    /// Called with the pgid once a group is gone (the guardian forgets it).
    pub on_group_gone: Arc<dyn Fn(i32) + Send + Sync>,
    /// The app's compile step (Lisp apps from source), shared by its instances.
    pub compiler: Arc<super::lisp_compile::LispCompiler>,
    /// When the supervisor started: autostarted instances share the compile started after.
    pub up_at: Instant,
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
enum Health {
    Ready(u64, Duration),
    StartFailed(u64, String),
    Unhealthy(u64, String),
    /// The start deadline passed while windlass itself could not run the checks (out of
    /// descriptors; the cause): the process is kept and checked again.
    Unverified(u64, String),
}

/// One running process of the instance.
struct Proc {
    generation: u64,
    child: Child,
    pgid: i32,
    pid: u32,
    port: Option<u16>,
    started: Instant,
    backend: Option<BackendId>,
    health: Option<JoinHandle<()>>,
    /// The last stderr lines.
    tail: Tail,
    /// The last lines of both streams.
    output: Tail,
    /// The tasks copying its stdout and stderr to the log.
    captures: Vec<JoinHandle<()>>,
}

/// How soon a start that failed for windlass's own lack of descriptors or memory is tried
/// again.
const LOCAL_RETRY: Duration = Duration::from_secs(1);

/// How long an exit waits for the app's last output to reach the log: a grandchild that
/// keeps the pipes open must not delay the restart.
const LAST_OUTPUT_WAIT: Duration = Duration::from_millis(500);

impl Proc {
    /// Waits (briefly) until everything the process wrote is in the log and the tails,
    /// so the exit is reported after its last lines, and `status` shows them.
    async fn drain_output(&mut self) {
        let deadline = Instant::now() + LAST_OUTPUT_WAIT;
        for h in std::mem::take(&mut self.captures) {
            let _ = tokio::time::timeout_at(deadline.into(), h).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(h) = self.health.take() {
            h.abort();
        }
    }
}

/// A free private port on the loopback interface, for a new process to listen on.
fn private_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Spawns a process for the instance: output captured, backend registered (not ready) and
/// its health check started when the app is behind the proxy.
fn spawn_proc(
    ctx: &InstanceCtx,
    app: &AppConfig,
    generation: u64,
    health_tx: &mpsc::Sender<Health>,
) -> std::io::Result<Proc> {
    let port = match (&ctx.proxy, app.port) {
        (Some(_), Some(_)) => Some(private_port()?),
        (None, p) => p,
        (Some(_), None) => None,
    };
    let launch = Launch {
        index: ctx.cell.index,
        port,
        guardian_fd: ctx.guardian_fd,
    };
    let tail: Tail = Arc::default();
    // On a console (PTY) both streams are one: its tail serves as both.
    let output: Tail = if app.console {
        tail.clone()
    } else {
        Arc::default()
    };
    let mut child = if app.console {
        super::console::spawn(
            app,
            &launch,
            &ctx.cell.console,
            ctx.log.clone(),
            tail.clone(),
        )?
    } else {
        process::spawn(app, &launch)?
    };
    let pid = child.id().unwrap_or(0);
    let mut captures = Vec::with_capacity(2);
    if let Some(out) = child.stdout.take() {
        let tails = vec![output.clone()];
        captures.push(tokio::spawn(capture(
            out,
            ctx.log.clone(),
            ctx.cell.index,
            Stream::Out,
            tails,
        )));
    }
    if let Some(err) = child.stderr.take() {
        let tails = vec![tail.clone(), output.clone()];
        captures.push(tokio::spawn(capture(
            err,
            ctx.log.clone(),
            ctx.cell.index,
            Stream::Err,
            tails,
        )));
    }
    let mut backend = None;
    let mut health = None;
    if let (Some(proxy), Some(port)) = (&ctx.proxy, port) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        backend = Some(proxy.add_backend(addr));
        let mut check = HealthCheck::new(addr, app.health.path.clone());
        check.timeout = app.health.timeout;
        check.interval = app.health.interval;
        let start_timeout = app.health.start_timeout;
        let tx = health_tx.clone();
        health = Some(tokio::spawn(async move {
            let mut told = false;
            loop {
                match check.wait_healthy(start_timeout).await {
                    Ok(took) => {
                        let _ = tx.send(Health::Ready(generation, took)).await;
                        let e = check.watch().await;
                        let _ = tx.send(Health::Unhealthy(generation, e.to_string())).await;
                        return;
                    }
                    // windlass could not even open the check's socket: not the app's
                    // fault. Say so once (whoever waits for the start gets an answer),
                    // keep the process and check again.
                    Err(e) if e.last.is_local() => {
                        if !told {
                            told = true;
                            let cause = e.last.detail();
                            let _ = tx.send(Health::Unverified(generation, cause)).await;
                        }
                    }
                    Err(e) => {
                        let _ = tx
                            .send(Health::StartFailed(generation, format!("{e}: {}", e.last)))
                            .await;
                        return;
                    }
                }
            }
        }));
    }
    Ok(Proc {
        generation,
        child,
        pgid: pid as i32,
        pid,
        port,
        started: Instant::now(),
        backend,
        health,
        tail,
        output,
        captures,
    })
}

/// What ended a running process's watch.
enum Ended {
    /// The process exited (or was killed by windlass for failing its health check).
    Exited(std::io::Result<std::process::ExitStatus>, Option<String>),
    Asked(Request),
    ChannelClosed,
}

pub async fn run(ctx: InstanceCtx, mut rx: mpsc::Receiver<Request>, autostart: bool) {
    let (health_tx, mut health_rx) = mpsc::channel::<Health>(8);
    let mut want = autostart;
    let mut backoff = Backoff::default();
    let mut acks: Vec<oneshot::Sender<Outcome>> = Vec::new();
    let mut first_start = true;
    let mut generation = 0u64;
    // The compile a (Lisp) start needs: started after this, or any successful one (None).
    let mut compile_after = Some(ctx.up_at);
    loop {
        if !want {
            ctx.set(|s| {
                if !matches!(s.state, State::Exited | State::Fatal) {
                    s.state = State::Stopped;
                }
                s.pid = None;
                s.next_start = None;
            });
            ack_all(&mut acks, Ok(String::new()));
            match rx.recv().await {
                None => return,
                Some(req) => match req.cmd {
                    Cmd::Start | Cmd::Restart | Cmd::Reload => {
                        backoff.reset();
                        want = true;
                        compile_after = Some(req.after);
                        acks.push(req.done);
                    }
                    Cmd::Stop => {
                        let _ = req.done.send(Ok(String::new()));
                    }
                    Cmd::Shutdown => {
                        let _ = req.done.send(Ok(String::new()));
                        return;
                    }
                },
            }
            continue;
        }

        let app = ctx.app();
        if !first_start {
            ctx.set(|s| s.restarts += 1);
        }
        first_start = false;
        match compile_first(&ctx, &app, compile_after, &mut rx, &mut acks).await {
            Compile::Ready => compile_after = None,
            Compile::Failed(msg) => {
                compile_after = Some(Instant::now());
                ctx.set(|s| {
                    s.last_exit = Some(ExitInfo {
                        code: Some(1),
                        signal: None,
                        at: crate::unix_now(),
                        uptime_secs: 0.0,
                    });
                    s.pid = None;
                    s.message = Some(msg.clone());
                });
                let decision = backoff.on_exit(&app.backoff, app.restart, false, Duration::ZERO);
                ack_all(&mut acks, Err(msg));
                match after_exit(&ctx, &mut rx, decision, &mut want, &mut backoff).await {
                    Flow::Continue => continue,
                    Flow::Return => return,
                }
            }
            Compile::Stop => {
                want = false;
                continue;
            }
            Compile::Shutdown => return,
        }
        generation += 1;
        let mut proc = match spawn_proc(&ctx, &app, generation, &health_tx) {
            Ok(p) => p,
            Err(e) => {
                let hint = crate::limits::exhaustion_hint(&e);
                let msg = match hint {
                    Some(hint) => format!("cannot start `{}`: {e}; {hint}", app.argv[0]),
                    None => format!("cannot start `{}`: {e}", app.argv[0]),
                };
                ctx.note(&msg);
                ctx.set(|s| s.message = Some(msg.clone()));
                // Out of descriptors or memory is windlass's trouble, not the app's: try
                // again soon, with no crash-loop escalation.
                let decision = if hint.is_some() {
                    Decision::Restart {
                        delay: LOCAL_RETRY,
                        crashloop: false,
                    }
                } else {
                    backoff.on_exit(&app.backoff, app.restart, false, Duration::ZERO)
                };
                ack_all(&mut acks, Err(msg));
                match after_exit(&ctx, &mut rx, decision, &mut want, &mut backoff).await {
                    Flow::Continue => continue,
                    Flow::Return => return,
                }
            }
        };
        ctx.cell.set_tail(proc.tail.clone());
        let behind_proxy = proc.backend.is_some();
        ctx.note(&match proc.port {
            Some(p) if behind_proxy => format!("started pid {} on private port {p}", proc.pid),
            _ => format!("started pid {}", proc.pid),
        });
        ctx.set(|s| {
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
            ack_all(&mut acks, Ok(String::new()));
        }

        // Watch the process until it exits or a command arrives.
        let ended = loop {
            tokio::select! {
                s = proc.child.wait() => break Ended::Exited(s, None),
                Some(h) = health_rx.recv() => match h {
                    Health::Ready(g, took) if g == proc.generation => {
                        if let (Some(proxy), Some(b)) = (&ctx.proxy, proc.backend) {
                            proxy.set_ready(b, true);
                        }
                        ctx.note(&format!("healthy after {}; receiving traffic", human(took)));
                        ctx.set(|s| s.state = State::Running);
                        ack_all(&mut acks, Ok(String::new()));
                    }
                    Health::StartFailed(g, e) if g == proc.generation => {
                        ctx.counters.health_check_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let msg = format!("health check: {e}");
                        ctx.note(&msg);
                        process::signal_group(proc.pgid, nix::sys::signal::Signal::SIGKILL);
                        let s = proc.child.wait().await;
                        break Ended::Exited(s, Some(msg));
                    }
                    Health::Unverified(g, cause) if g == proc.generation => {
                        let msg = format!(
                            "not verified healthy within {}: windlass could not run the health check ({cause}); the process is kept and checked again",
                            human(app.health.start_timeout)
                        );
                        ctx.note(&msg);
                        ack_all(&mut acks, Err(msg));
                    }
                    Health::Unhealthy(g, e) if g == proc.generation => {
                        ctx.counters.health_check_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let msg = format!("unhealthy ({e}); taken out of rotation");
                        ctx.note(&msg);
                        if let (Some(proxy), Some(b)) = (&ctx.proxy, proc.backend) {
                            proxy.set_ready(b, false);
                        }
                        let r = stop_proc(&ctx, &app, &mut proc, Stop::Dead).await;
                        break Ended::Exited(r, Some(msg));
                    }
                    _ => {} // from an older process
                },
                req = rx.recv() => match req {
                    None => break Ended::ChannelClosed,
                    Some(r) if r.cmd == Cmd::Start => { let _ = r.done.send(Ok("already running".into())); }
                    Some(r) if r.cmd == Cmd::Reload && behind_proxy => {
                        let outcome = blue_green(&ctx, &mut proc, &mut generation, &health_tx, &mut health_rx, r.after).await;
                        let _ = r.done.send(outcome);
                    }
                    Some(r) => break Ended::Asked(r),
                },
            }
        };

        match ended {
            Ended::Exited(status, why) => {
                let uptime = proc.started.elapsed();
                // The leader is gone; whatever it left in its group goes too.
                let rest = stop_proc(&ctx, &app, &mut proc, Stop::Dead).await;
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
                let decision = backoff.on_exit(&app.backoff, app.restart, success, uptime);
                ctx.set(|s| {
                    s.last_exit = Some(info.clone());
                    s.pid = None;
                    s.message = why.clone();
                });
                ctx.note(&format!("exited: {info} after {}", human(uptime)));
                ack_all(
                    &mut acks,
                    Err(why.unwrap_or_else(|| format!("exited: {info}"))),
                );
                match after_exit(&ctx, &mut rx, decision, &mut want, &mut backoff).await {
                    Flow::Continue => continue,
                    Flow::Return => return,
                }
            }
            Ended::Asked(req) => {
                let result = stop_proc(&ctx, &app, &mut proc, Stop::Asked).await;
                if let Ok(st) = result {
                    let info = process::exit_info(st, proc.started.elapsed());
                    ctx.set(|s| s.last_exit = Some(info));
                }
                ctx.note("stopped");
                match req.cmd {
                    Cmd::Stop => {
                        want = false;
                        acks.push(req.done);
                    }
                    Cmd::Restart | Cmd::Reload => {
                        backoff.reset();
                        compile_after = Some(req.after);
                        acks.push(req.done);
                    }
                    Cmd::Shutdown => {
                        ctx.set(|s| {
                            s.state = State::Stopped;
                            s.pid = None;
                        });
                        let _ = req.done.send(Ok(String::new()));
                        ack_all(&mut acks, Ok(String::new()));
                        return;
                    }
                    Cmd::Start => unreachable!("Start is answered while running"),
                }
            }
            Ended::ChannelClosed => {
                let _ = stop_proc(&ctx, &app, &mut proc, Stop::Asked).await;
                return;
            }
        }
    }
}

fn ack_all(acks: &mut Vec<oneshot::Sender<Outcome>>, outcome: Outcome) {
    for a in acks.drain(..) {
        let _ = a.send(outcome.clone());
    }
}

/// How the compile step before a start ended.
enum Compile {
    /// Compiled (or nothing to compile): start the process.
    Ready,
    /// The compile failed (like a load error: code 1 and the condition).
    Failed(String),
    /// A stop arrived meanwhile (its answer is in the acks).
    Stop,
    /// A shutdown arrived meanwhile (answered).
    Shutdown,
}

/// The compile step of a Lisp app from source, shared by the app's instances, before this
/// one starts; commands are answered meanwhile (a stop or shutdown abandons the wait).
async fn compile_first(
    ctx: &InstanceCtx,
    app: &AppConfig,
    after: Option<Instant>,
    rx: &mut mpsc::Receiver<Request>,
    acks: &mut Vec<oneshot::Sender<Outcome>>,
) -> Compile {
    if app.lisp.as_ref().is_none_or(|l| l.compile.is_none()) {
        return Compile::Ready;
    }
    ctx.set(|s| {
        s.state = State::Starting;
        s.pid = None;
        s.next_start = None;
        s.message = Some("waiting for the compile step".into());
    });
    let compiled = ctx.compiler.ensure(app, &ctx.log, after);
    tokio::pin!(compiled);
    loop {
        tokio::select! {
            r = &mut compiled => {
                return match r {
                    Ok(()) => Compile::Ready,
                    Err(e) => {
                        // The compile's output is in the log already: its first line will do.
                        ctx.note(&format!("not started: {}", e.lines().next().unwrap_or_default()));
                        Compile::Failed(e)
                    }
                };
            }
            req = rx.recv() => match req {
                None => return Compile::Shutdown,
                Some(r) => match r.cmd {
                    Cmd::Stop => {
                        acks.push(r.done);
                        return Compile::Stop;
                    }
                    Cmd::Shutdown => {
                        ctx.set(|s| {
                            s.state = State::Stopped;
                            s.message = None;
                        });
                        let _ = r.done.send(Ok(String::new()));
                        ack_all(acks, Ok(String::new()));
                        return Compile::Shutdown;
                    }
                    // Answered once the instance runs.
                    Cmd::Start | Cmd::Restart | Cmd::Reload => acks.push(r.done),
                },
            },
        }
    }
}

/// The blue-green switch for one instance. On success `proc` is the new process.
async fn blue_green(
    ctx: &InstanceCtx,
    proc: &mut Proc,
    generation: &mut u64,
    health_tx: &mpsc::Sender<Health>,
    health_rx: &mut mpsc::Receiver<Health>,
    after: Instant,
) -> Outcome {
    // Requests arriving meanwhile stay queued: a reload is bounded by health.start_timeout.
    let app = ctx.app();
    let proxy = ctx
        .proxy
        .clone()
        .expect("blue_green runs only behind the proxy");
    // A Lisp app from source: compiled once for every instance, before the new process.
    if let Err(e) = ctx.compiler.ensure(&app, &ctx.log, Some(after)).await {
        ctx.note(&format!(
            "reload failed: {e}; the old version keeps serving"
        ));
        return Err(format!("{e}\nthe old version keeps serving"));
    }
    *generation += 1;
    let mut new = match spawn_proc(ctx, &app, *generation, health_tx) {
        Ok(p) => p,
        Err(e) => {
            return Err(match crate::limits::exhaustion_hint(&e) {
                Some(hint) => format!("cannot start `{}`: {e}; {hint}", app.argv[0]),
                None => format!("cannot start `{}`: {e}", app.argv[0]),
            });
        }
    };
    let t0 = Instant::now();
    ctx.note(&format!(
        "reload: started pid {} on private port {}; waiting until healthy (up to {})",
        new.pid,
        new.port.unwrap_or(0),
        human(app.health.start_timeout)
    ));
    let failure: String = loop {
        tokio::select! {
            s = new.child.wait() => {
                let how = s.map(|st| process::exit_info(st, new.started.elapsed()).to_string()).unwrap_or_else(|e| e.to_string());
                break format!("the new process exited before it was healthy ({how})");
            }
            h = health_rx.recv() => match h {
                Some(Health::Ready(g, took)) if g == new.generation => {
                    let (old_b, new_b) = (proc.backend.expect("behind the proxy"), new.backend.expect("behind the proxy"));
                    proxy.replace(&[old_b], &[new_b]);
                    let switched = t0.elapsed();
                    ctx.cell.set_tail(new.tail.clone());
                    ctx.set(|s| {
                        s.pid = Some(new.pid);
                        s.port = new.port;
                        s.started = Some((SystemTime::now(), new.started));
                        s.reloads += 1;
                        s.state = State::Running;
                    });
                    let mut old = std::mem::replace(proc, new);
                    ctx.note(&format!("reload: pid {} healthy after {}; traffic switched from pid {}; draining it", proc.pid, human(took), old.pid));
                    let report = proxy.drain(old_b, app.stop.timeout).await;
                    old.backend = None;
                    let _ = stop_proc(ctx, &app, &mut old, Stop::Replaced).await;
                    let msg = format!(
                        "pid {} → {}: healthy and switched in {}, old drained ({})",
                        old.pid,
                        proc.pid,
                        human(switched),
                        drained(&report)
                    );
                    ctx.note(&format!("reload: done; {msg}"));
                    return Ok(msg);
                }
                Some(Health::StartFailed(g, e)) if g == new.generation => break format!("the new process did not become healthy: {e}"),
                // Traffic never goes to a process nobody could check.
                Some(Health::Unverified(g, e)) if g == new.generation => break format!("windlass could not run the new process's health check ({e})"),
                Some(Health::Unhealthy(g, e)) if g == proc.generation => {
                    // The old one is failing meanwhile: take it out; the new one will take over.
                    if let Some(b) = proc.backend { proxy.set_ready(b, false); }
                    ctx.note(&format!("unhealthy during reload ({e}); taken out of rotation"));
                }
                Some(_) => {}
                None => break "health channel closed".to_owned(),
            },
        }
    };
    // The new process failed: the old one keeps serving.
    let _ = stop_proc(ctx, &app, &mut new, Stop::Dead).await;
    new.drain_output().await;
    let lines = new
        .output
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect::<Vec<_>>();
    ctx.note(&format!(
        "reload failed: {failure}; the old version keeps serving"
    ));
    let mut msg = failure;
    if !lines.is_empty() {
        msg.push_str("\nlast output lines of the new process:\n  ");
        msg.push_str(&lines.join("\n  "));
    }
    Err(msg)
}

enum Flow {
    Continue,
    Return,
}

/// Applies the policy's decision after an exit: back off (answering commands meanwhile) or
/// give up.
async fn after_exit(
    ctx: &InstanceCtx,
    rx: &mut mpsc::Receiver<Request>,
    decision: Decision,
    want: &mut bool,
    backoff: &mut Backoff,
) -> Flow {
    match decision {
        Decision::GiveUp { failed } => {
            ctx.set(|s| s.state = if failed { State::Fatal } else { State::Exited });
            ctx.note(if failed {
                "not restarted (restart policy); state fatal"
            } else {
                "not restarted (restart policy)"
            });
            *want = false;
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
                ctx.note(&format!(
                    "crash loop: {} quick failures in a row; next start in {}",
                    backoff.quick_failures,
                    human(delay)
                ));
            } else {
                ctx.note(&format!("restarting in {}", human(delay)));
            }
            ctx.set(|s| {
                s.state = state;
                s.next_start = Some(super::instant_after(delay));
            });
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            tokio::select! {
                _ = &mut sleep => Flow::Continue,
                req = rx.recv() => match req {
                    None => Flow::Return,
                    Some(r) => match r.cmd {
                        Cmd::Start | Cmd::Restart | Cmd::Reload => {
                            backoff.reset();
                            let _ = r.done.send(Ok(String::new()));
                            Flow::Continue
                        }
                        Cmd::Stop => {
                            *want = false;
                            let _ = r.done.send(Ok(String::new()));
                            Flow::Continue
                        }
                        Cmd::Shutdown => {
                            ctx.set(|s| {
                                s.state = State::Stopped;
                                s.next_start = None;
                            });
                            let _ = r.done.send(Ok(String::new()));
                            Flow::Return
                        }
                    },
                },
            }
        }
    }
}

/// Why a process is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// On request: the instance shows `stopping`; in-flight requests drain first.
    Asked,
    /// Replaced by a reload (already drained); the instance keeps its state.
    Replaced,
    /// Exited or failed: nothing in flight worth waiting for; the rest of its group goes.
    Dead,
}

/// Stops a process: out of rotation and drained first (when asked and behind the proxy),
/// then the whole group; tells the guardian.
async fn stop_proc(
    ctx: &InstanceCtx,
    app: &AppConfig,
    proc: &mut Proc,
    why: Stop,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(h) = proc.health.take() {
        h.abort();
    }
    if why == Stop::Asked {
        ctx.set(|s| s.state = State::Stopping);
    }
    if let (Some(proxy), Some(b)) = (&ctx.proxy, proc.backend.take()) {
        // In-flight requests finish before the app is told to stop.
        let deadline = if why == Stop::Asked && !*ctx.force.borrow() {
            app.stop.timeout
        } else {
            Duration::ZERO
        };
        let report = proxy.drain(b, deadline).await;
        if why == Stop::Asked {
            ctx.note(&format!("drained ({})", drained(&report)));
        }
    }
    if why != Stop::Dead {
        ctx.note(&format!(
            "stopping pid {} ({})",
            proc.pid,
            app.stop.signal.as_str()
        ));
    }
    let r = process::stop_group(
        &mut proc.child,
        proc.pgid,
        app.stop.signal,
        app.stop.timeout,
        ctx.force.clone(),
    )
    .await;
    (ctx.on_group_gone)(proc.pgid);
    r
}

/// A drain report in words.
fn drained(r: &crate::proxy::DrainReport) -> String {
    let mut s = format!("{} request(s) in flight", r.in_flight_at_start);
    if r.upgraded_at_start > 0 {
        s.push_str(&format!(", {} upgraded connection(s)", r.upgraded_at_start));
    }
    if r.timed_out {
        s.push_str(&format!(
            "; deadline reached with {} request(s) still running, {} upgraded connection(s) closed",
            r.remaining_requests, r.closed_upgraded
        ));
    }
    s
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
