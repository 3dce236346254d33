//! One task per app instance: start it, watch it, apply the restart policy, obey commands.
//!
//! The task owns the child process. Everything else talks to it through a [`Request`] channel
//! (start, stop, restart, shutdown; each acknowledged once done) and reads its state from the
//! shared [`InstanceCell`]. The cell is the single source of truth for `status`.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::{Backoff, Decision};
use super::capture::capture;
use super::process::{self, Launch};
use crate::config::AppConfig;
use crate::logs::AppLog;
use crate::protocol::{ExitInfo, State, Stream};

/// What can be asked of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Start,
    Stop,
    Restart,
    /// Stop and end the task (supervisor shutdown).
    Shutdown,
}

#[derive(Debug)]
pub struct Request {
    pub cmd: Cmd,
    pub done: oneshot::Sender<()>,
}

/// The state of an instance, as `status` shows it.
#[derive(Debug, Clone)]
pub struct InstanceState {
    pub state: State,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub started: Option<(SystemTime, Instant)>,
    pub restarts: u64,
    pub last_exit: Option<ExitInfo>,
    pub next_start: Option<Instant>,
    pub message: Option<String>,
}

/// Shared between the instance task and readers.
#[derive(Debug)]
pub struct InstanceCell {
    pub index: u32,
    pub state: Mutex<InstanceState>,
    pub stderr_tail: Arc<Mutex<VecDeque<String>>>,
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
                last_exit: None,
                next_start: None,
                message: None,
            }),
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            console: Arc::default(),
        }
    }

    pub fn snapshot(&self) -> InstanceState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
    /// Turns true on a second Ctrl-C: stop with SIGKILL at once.
    pub force: watch::Receiver<bool>,
    /// Bumped on every state change.
    pub changed: Arc<watch::Sender<u64>>,
    /// Called with the pgid once a group is gone (the guardian forgets it).
    pub on_group_gone: Arc<dyn Fn(i32) + Send + Sync>,
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

/// What ended a running process's watch.
enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    Asked(Request),
    ChannelClosed,
}

pub async fn run(ctx: InstanceCtx, mut rx: mpsc::Receiver<Request>, autostart: bool) {
    let mut want = autostart;
    let mut backoff = Backoff::default();
    let mut acks: Vec<oneshot::Sender<()>> = Vec::new();
    let mut first_start = true;
    let ack_all = |acks: &mut Vec<oneshot::Sender<()>>| {
        for a in acks.drain(..) {
            let _ = a.send(());
        }
    };
    loop {
        if !want {
            ctx.set(|s| {
                if !matches!(s.state, State::Exited | State::Fatal) {
                    s.state = State::Stopped;
                }
                s.pid = None;
                s.next_start = None;
            });
            ack_all(&mut acks);
            match rx.recv().await {
                None => return,
                Some(req) => match req.cmd {
                    Cmd::Start | Cmd::Restart => {
                        backoff.reset();
                        want = true;
                        acks.push(req.done);
                    }
                    Cmd::Stop => {
                        let _ = req.done.send(());
                    }
                    Cmd::Shutdown => {
                        let _ = req.done.send(());
                        return;
                    }
                },
            }
            continue;
        }

        let app = ctx.app();
        let launch = Launch {
            index: ctx.cell.index,
            port: app.port,
            guardian_fd: ctx.guardian_fd,
        };
        if !first_start {
            ctx.set(|s| s.restarts += 1);
        }
        first_start = false;
        ctx.cell
            .stderr_tail
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let spawned = if app.console {
            super::console::spawn(
                &app,
                &launch,
                &ctx.cell.console,
                ctx.log.clone(),
                ctx.cell.stderr_tail.clone(),
            )
        } else {
            process::spawn(&app, &launch)
        };
        let (mut child, pgid, started) = match spawned {
            Ok(mut child) => {
                let pid = child.id().unwrap_or(0);
                let started = Instant::now();
                if let Some(out) = child.stdout.take() {
                    tokio::spawn(capture(
                        out,
                        ctx.log.clone(),
                        ctx.cell.index,
                        Stream::Out,
                        None,
                    ));
                }
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(capture(
                        err,
                        ctx.log.clone(),
                        ctx.cell.index,
                        Stream::Err,
                        Some(ctx.cell.stderr_tail.clone()),
                    ));
                }
                ctx.note(&format!("started pid {pid}"));
                ctx.set(|s| {
                    s.state = State::Running;
                    s.pid = Some(pid);
                    s.port = launch.port;
                    s.started = Some((SystemTime::now(), started));
                    s.next_start = None;
                    s.message = None;
                });
                ack_all(&mut acks);
                (child, pid as i32, started)
            }
            Err(e) => {
                let msg = format!("cannot start `{}`: {e}", app.argv[0]);
                ctx.note(&msg);
                ctx.set(|s| s.message = Some(msg));
                let decision = backoff.on_exit(&app.backoff, app.restart, false, Duration::ZERO);
                ack_all(&mut acks);
                match after_exit(&ctx, &mut rx, decision, &mut want, &mut backoff).await {
                    Flow::Continue => continue,
                    Flow::Return => return,
                }
            }
        };

        // Watch the process until it exits or a command arrives.
        let ended = loop {
            tokio::select! {
                s = child.wait() => break Ended::Exited(s),
                req = rx.recv() => match req {
                    None => break Ended::ChannelClosed,
                    Some(r) if r.cmd == Cmd::Start => { let _ = r.done.send(()); }
                    Some(r) => break Ended::Asked(r),
                },
            }
        };

        match ended {
            Ended::Exited(status) => {
                let uptime = started.elapsed();
                // The leader is gone; whatever it left in its group goes too.
                let rest = stop(&ctx, &app, &mut child, pgid, false).await;
                let info = match status.or(rest) {
                    Ok(st) => process::exit_info(st, uptime),
                    Err(_) => ExitInfo {
                        code: None,
                        signal: None,
                        at: crate::unix_now(),
                        uptime_secs: uptime.as_secs_f64(),
                    },
                };
                // A Lisp server that exits 0 right after its start did not serve: a failure.
                let success = info.code == Some(0)
                    && !(app.lisp.is_some() && uptime < app.backoff.reset_after);
                let decision = backoff.on_exit(&app.backoff, app.restart, success, uptime);
                ctx.set(|s| {
                    s.last_exit = Some(info.clone());
                    s.pid = None;
                });
                ctx.note(&format!("exited: {info} after {}", human(uptime)));
                match after_exit(&ctx, &mut rx, decision, &mut want, &mut backoff).await {
                    Flow::Continue => continue,
                    Flow::Return => return,
                }
            }
            Ended::Asked(req) => {
                let result = stop(&ctx, &app, &mut child, pgid, true).await;
                if let Ok(st) = result {
                    let info = process::exit_info(st, started.elapsed());
                    ctx.set(|s| s.last_exit = Some(info));
                }
                ctx.note("stopped");
                match req.cmd {
                    Cmd::Stop => {
                        want = false;
                        acks.push(req.done);
                    }
                    Cmd::Restart => {
                        backoff.reset();
                        acks.push(req.done);
                    }
                    Cmd::Shutdown => {
                        ctx.set(|s| {
                            s.state = State::Stopped;
                            s.pid = None;
                        });
                        let _ = req.done.send(());
                        ack_all(&mut acks);
                        return;
                    }
                    Cmd::Start => unreachable!("Start is answered while running"),
                }
            }
            Ended::ChannelClosed => {
                let _ = stop(&ctx, &app, &mut child, pgid, true).await;
                return;
            }
        }
    }
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
                s.next_start = Some(Instant::now() + delay);
            });
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            tokio::select! {
                _ = &mut sleep => Flow::Continue,
                req = rx.recv() => match req {
                    None => Flow::Return,
                    Some(r) => match r.cmd {
                        Cmd::Start | Cmd::Restart => {
                            backoff.reset();
                            let _ = r.done.send(());
                            Flow::Continue
                        }
                        Cmd::Stop => {
                            *want = false;
                            let _ = r.done.send(());
                            Flow::Continue
                        }
                        Cmd::Shutdown => {
                            ctx.set(|s| {
                                s.state = State::Stopped;
                                s.next_start = None;
                            });
                            let _ = r.done.send(());
                            Flow::Return
                        }
                    },
                },
            }
        }
    }
}

/// Stops the group (`asked`: a stop on request, shown as `stopping`) and tells the guardian.
async fn stop(
    ctx: &InstanceCtx,
    app: &AppConfig,
    child: &mut Child,
    pgid: i32,
    asked: bool,
) -> std::io::Result<std::process::ExitStatus> {
    if asked {
        ctx.set(|s| s.state = State::Stopping);
        ctx.note(&format!("stopping ({})", app.stop.signal.as_str()));
    }
    let r = process::stop_group(
        child,
        pgid,
        app.stop.signal,
        app.stop.timeout,
        ctx.force.clone(),
    )
    .await;
    (ctx.on_group_gone)(pgid);
    r
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
