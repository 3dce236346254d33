//! The instance task's state machine on a paused tokio clock, with scripted processes
//! instead of real ones (a [`Spawner`] that records what the task asked of it): restart
//! delays, crash loops, blue-green transitions and stops, exactly and without a binary.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::spawn::{AppProcess, OutputSinks, Spawned};
use super::*;
use crate::config::AppConfig;
use crate::logs::AppLog;
use crate::proxy::{AppProxy, ProxyConfig};

/// What a scripted process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Exits at once with this code.
    Exits(i32),
    /// Runs until stopped; its health check passes at once.
    Healthy,
    /// Runs until stopped; its health check never answers.
    NeverHealthy,
}

/// What the task asked of the spawner, with the (paused) clock's time since the test began.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Spawned { pid: u32, at: Duration },
    Stopped { pid: u32, signal: Signal },
    Killed { pid: u32 },
}

struct FakeSpawner {
    t0: Instant,
    next_pid: AtomicU32,
    plans: Mutex<VecDeque<Plan>>,
    default: Plan,
    last: Mutex<Plan>,
    events: Arc<Mutex<Vec<Event>>>,
}

struct FakeProcess {
    pid: u32,
    /// Set once it has exited.
    exit: watch::Sender<Option<ExitStatus>>,
    events: Arc<Mutex<Vec<Event>>>,
}

impl FakeProcess {
    fn end(&self, status: ExitStatus) {
        self.exit.send_if_modified(|e| {
            let first = e.is_none();
            if first {
                *e = Some(status);
            }
            first
        });
    }

    fn exited(&self) -> BoxFuture<'static, std::io::Result<ExitStatus>> {
        let mut rx = self.exit.subscribe();
        Box::pin(async move {
            let status = rx
                .wait_for(Option::is_some)
                .await
                .map_err(std::io::Error::other)?;
            Ok(status.expect("waited for it"))
        })
    }
}

impl AppProcess for FakeProcess {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn wait(&mut self) -> BoxFuture<'_, std::io::Result<ExitStatus>> {
        self.exited()
    }
    fn stop(
        &mut self,
        signal: Signal,
        _timeout: Duration,
        _force: watch::Receiver<bool>,
    ) -> BoxFuture<'_, std::io::Result<ExitStatus>> {
        self.events
            .lock()
            .expect("not poisoned")
            .push(Event::Stopped {
                pid: self.pid,
                signal,
            });
        self.end(ExitStatus::from_raw(signal as i32));
        self.exited()
    }
    fn kill(&mut self) {
        self.events
            .lock()
            .expect("not poisoned")
            .push(Event::Killed { pid: self.pid });
        self.end(ExitStatus::from_raw(Signal::SIGKILL as i32));
    }
}

impl Spawner for FakeSpawner {
    fn spawn(
        &self,
        _app: &AppConfig,
        _launch: &super::process::Launch,
        _sinks: OutputSinks<'_>,
    ) -> std::io::Result<Spawned> {
        let plan = self
            .plans
            .lock()
            .expect("not poisoned")
            .pop_front()
            .unwrap_or(self.default);
        *self.last.lock().expect("not poisoned") = plan;
        let pid = self.next_pid.fetch_add(1, Ordering::Relaxed);
        self.events
            .lock()
            .expect("not poisoned")
            .push(Event::Spawned {
                pid,
                at: self.t0.elapsed(),
            });
        let process = FakeProcess {
            pid,
            exit: watch::channel(None).0,
            events: self.events.clone(),
        };
        if let Plan::Exits(code) = plan {
            process.end(ExitStatus::from_raw(code << 8));
        }
        Ok(Spawned {
            process: Box::new(process),
            captures: Vec::new(),
        })
    }

    fn check_health(
        &self,
        _app: &AppConfig,
        _addr: SocketAddr,
        generation: u64,
        tx: mpsc::Sender<Health>,
    ) -> JoinHandle<()> {
        let plan = *self.last.lock().expect("not poisoned");
        tokio::spawn(async move {
            if plan == Plan::Healthy {
                let _ = tx.send(Health::Ready(generation, Duration::ZERO)).await;
            }
            std::future::pending::<()>().await;
        })
    }
}

/// One instance task of app `a` (configured by `extra`), its processes scripted by `plans`
/// then `default`.
struct Harness {
    tx: mpsc::Sender<Request>,
    cell: Arc<InstanceCell>,
    events: Arc<Mutex<Vec<Event>>>,
    task: JoinHandle<()>,
    _force: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn harness(extra: &str, plans: &[Plan], default: Plan, autostart: bool) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("windlass.toml");
    std::fs::write(
        &file,
        format!("[app.a]\ncommand = [\"sh\", \"-c\", \"true\"]\n{extra}\n"),
    )
    .expect("config");
    let config = crate::config::load(&file).expect("config loads");
    let app = config.app("a").expect("app a").clone();
    let events = Arc::new(Mutex::new(Vec::new()));
    let spawner = FakeSpawner {
        t0: Instant::now(),
        next_pid: AtomicU32::new(1001),
        plans: Mutex::new(plans.iter().copied().collect()),
        default,
        last: Mutex::new(default),
        events: events.clone(),
    };
    let log = Arc::new(AppLog::new(
        dir.path(),
        "a",
        app.logs,
        super::super::log_tap().0,
    ));
    let proxy = app.port.map(|_| AppProxy::new("a", ProxyConfig::default()));
    let cell = Arc::new(InstanceCell::new(0));
    let (force, force_rx) = watch::channel(false);
    let ctx = InstanceCtx {
        app: Arc::new(RwLock::new(Arc::new(app))),
        cell: cell.clone(),
        log,
        guardian_fd: None,
        proxy,
        counters: Arc::default(),
        force: force_rx,
        on_group_gone: Arc::new(|_| {}),
        compiler: Arc::default(),
        up_at: std::time::Instant::now(),
        spawner: Arc::new(spawner),
        changed: Arc::new(watch::channel(0).0),
    };
    let (tx, rx) = mpsc::channel(16);
    let task = tokio::spawn(run(ctx, rx, autostart));
    Harness {
        tx,
        cell,
        events,
        task,
        _force: force,
        _dir: dir,
    }
}

impl Harness {
    /// Sends `cmd`; the answer comes on the receiver.
    async fn send(&self, cmd: Cmd) -> oneshot::Receiver<Outcome> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request {
                cmd,
                done,
                after: std::time::Instant::now(),
            })
            .await
            .expect("the task runs");
        rx
    }

    async fn ask(&self, cmd: Cmd) -> Outcome {
        self.send(cmd).await.await.expect("answered")
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().expect("not poisoned").clone()
    }

    fn state(&self) -> InstanceState {
        self.cell.snapshot()
    }

    /// Lets the task run (and the paused clock advance) until `f` holds.
    async fn until(&self, what: &str, f: impl Fn(&Harness) -> bool) {
        // On a paused clock an idle runtime jumps to the next timer: a day passes at once
        // when the task is stuck, so a missing transition fails here instead of hanging.
        let deadline = Instant::now() + Duration::from_secs(24 * 3600);
        while !f(self) {
            assert!(Instant::now() < deadline, "never reached: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn spawns(events: &[Event]) -> Vec<Duration> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Spawned { at, .. } => Some(*at),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn quick_failures_back_off_doubling_up_to_max_then_flag_a_crash_loop() {
    let h = harness(
        "backoff = { initial = \"1s\", max = \"8s\", reset_after = \"1h\", crashloop_after = 3 }",
        &[],
        Plan::Exits(1),
        true,
    );
    h.until("six starts", |h| spawns(&h.events()).len() >= 6)
        .await;
    let at = spawns(&h.events());
    let gaps: Vec<u64> = at.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps[..5], [1, 2, 4, 8, 8], "spawned at {at:?}");
    h.until("crashloop", |h| h.state().state == State::Crashloop)
        .await;
    let s = h.state();
    assert_eq!(s.last_exit.as_ref().and_then(|e| e.code), Some(1));
    assert!(s.restarts >= 5, "{s:?}");
    // A stop during the delay is answered at once, and nothing starts again.
    assert!(h.ask(Cmd::Stop).await.is_ok());
    let n = spawns(&h.events()).len();
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(spawns(&h.events()).len(), n);
    assert_eq!(h.state().state, State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn restart_never_leaves_a_failed_app_fatal_and_a_clean_exit_exited() {
    let h = harness(
        "restart = \"never\"",
        &[Plan::Exits(3)],
        Plan::Exits(0),
        false,
    );
    // Not behind the proxy, a start is answered once the process is spawned.
    assert!(h.ask(Cmd::Start).await.is_ok());
    h.until("fatal", |h| h.state().state == State::Fatal).await;
    assert_eq!(h.state().last_exit.and_then(|e| e.code), Some(3));
    assert!(h.ask(Cmd::Start).await.is_ok());
    h.until("exited", |h| h.state().state == State::Exited)
        .await;
    assert_eq!(spawns(&h.events()).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn blue_green_switches_to_the_new_process_then_stops_the_old() {
    let h = harness("port = 1", &[], Plan::Healthy, false);
    assert!(h.ask(Cmd::Start).await.is_ok());
    assert_eq!(h.state().state, State::Running);
    assert_eq!(h.state().pid, Some(1001));
    let msg = h.ask(Cmd::Reload).await.expect("reloaded");
    assert!(msg.starts_with("pid 1001 → 1002"), "{msg}");
    let s = h.state();
    assert_eq!((s.pid, s.reloads, s.state), (Some(1002), 1, State::Running));
    let events = h.events();
    assert_eq!(
        events[1..],
        [
            Event::Spawned {
                pid: 1002,
                at: match events[1] {
                    Event::Spawned { at, .. } => at,
                    _ => panic!("{events:?}"),
                }
            },
            Event::Stopped {
                pid: 1001,
                signal: Signal::SIGTERM
            }
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_version_that_exits_leaves_the_old_one_running() {
    let h = harness(
        "port = 1",
        &[Plan::Healthy, Plan::Exits(2)],
        Plan::Healthy,
        false,
    );
    assert!(h.ask(Cmd::Start).await.is_ok());
    let err = h.ask(Cmd::Reload).await.expect_err("the new one exits");
    assert!(
        matches!(err, InstanceError::NewVersionFailed { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("exited before it was healthy"),
        "{err}"
    );
    let s = h.state();
    assert_eq!((s.pid, s.reloads, s.state), (Some(1001), 0, State::Running));
    assert!(!h.events().contains(&Event::Stopped {
        pid: 1001,
        signal: Signal::SIGTERM
    }));
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_blue_green_start_stops_both_at_once() {
    // The new version never becomes healthy and start_timeout is an hour: only a handler
    // that listens during the start can answer the stop.
    let h = harness(
        "port = 1\nhealth = { start_timeout = \"1h\" }",
        &[Plan::Healthy, Plan::NeverHealthy],
        Plan::Healthy,
        false,
    );
    assert!(h.ask(Cmd::Start).await.is_ok());
    let reload = h.send(Cmd::Reload).await;
    h.until("the new process", |h| spawns(&h.events()).len() == 2)
        .await;
    // A start meanwhile is answered at once too.
    assert_eq!(h.ask(Cmd::Start).await.expect("ok"), "already running");
    let t = Instant::now();
    assert!(h.ask(Cmd::Stop).await.is_ok());
    assert!(
        t.elapsed() < Duration::from_secs(3600),
        "did not wait out start_timeout"
    );
    let err = reload.await.expect("answered").expect_err("interrupted");
    assert!(
        matches!(err, InstanceError::Interrupted(Cmd::Stop)),
        "{err}"
    );
    let stopped: Vec<u32> = h
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::Stopped { pid, .. } => Some(*pid),
            _ => None,
        })
        .collect();
    assert_eq!(stopped, [1002, 1001], "the new one first, then the old");
    assert_eq!(h.state().state, State::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_during_a_blue_green_start_ends_the_task() {
    let h = harness(
        "port = 1\nhealth = { start_timeout = \"1h\" }",
        &[Plan::Healthy, Plan::NeverHealthy],
        Plan::Healthy,
        false,
    );
    assert!(h.ask(Cmd::Start).await.is_ok());
    let reload = h.send(Cmd::Reload).await;
    h.until("the new process", |h| spawns(&h.events()).len() == 2)
        .await;
    assert!(h.ask(Cmd::Shutdown).await.is_ok());
    assert!(matches!(
        reload.await.expect("answered"),
        Err(InstanceError::Interrupted(Cmd::Shutdown))
    ));
    let Harness { task, events, .. } = h;
    task.await.expect("the task ends");
    assert_eq!(
        events
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|e| matches!(e, Event::Stopped { .. }))
            .count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn an_exit_while_starting_fails_the_start_and_backs_off() {
    // A process that exits while it starts fails the start; the next start comes after
    // the backoff delay and serves.
    let h = harness(
        "port = 1\nbackoff = { initial = \"5s\", reset_after = \"1h\" }",
        &[Plan::Exits(1)],
        Plan::Healthy,
        false,
    );
    let err = h.ask(Cmd::Start).await.expect_err("exited while starting");
    assert!(matches!(err, InstanceError::Exited(_)), "{err}");
    h.until("restarted after the delay and healthy", |h| {
        h.state().state == State::Running
    })
    .await;
    let at = spawns(&h.events());
    assert_eq!((at[1] - at[0]).as_secs(), 5, "{at:?}");
}
