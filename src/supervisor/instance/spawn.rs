//! Starting an instance's process: the [`Spawner`] seam and the [`Proc`] it yields.
//!
//! The instance task never touches an OS process directly: it asks a [`Spawner`] for one
//! (an [`AppProcess`]: its pid, a way to wait for its exit, to stop its group, to kill it) and
//! for the health check of one. [`OsSpawner`] is the real thing (a process group with its
//! output captured into the log, an HTTP health check); the state machine's unit tests give
//! the task a spawner of scripted processes instead, so backoff, crash loops, blue-green and
//! stops run on a paused clock without a binary.

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::super::capture::capture;
use super::super::console::Console;
use super::super::process::{self, Launch};
use super::{Health, InstanceCtx};
use crate::config::AppConfig;
use crate::health::HealthCheck;
use crate::logs::AppLog;
use crate::protocol::Stream;
use crate::proxy::BackendId;

/// The last lines of a process's output, shared with readers.
pub(crate) type Tail = Arc<Mutex<VecDeque<String>>>;

/// A started process of an app, as the instance task sees it.
pub(crate) trait AppProcess: Send {
    fn pid(&self) -> u32;
    /// Resolves once the process has exited (cancel-safe: may be called again).
    fn wait(&mut self) -> BoxFuture<'_, std::io::Result<ExitStatus>>;
    /// Stops the whole group: `signal`, then SIGKILL after `timeout` or as soon as `force`
    /// turns true; resolves once every member is gone.
    fn stop(
        &mut self,
        signal: Signal,
        timeout: Duration,
        force: watch::Receiver<bool>,
    ) -> BoxFuture<'_, std::io::Result<ExitStatus>>;
    /// SIGKILL to the whole group, at once.
    fn kill(&mut self);
}

/// Where a new process's output goes.
pub(crate) struct OutputSinks<'a> {
    pub log: &'a Arc<AppLog>,
    pub index: u32,
    pub console: &'a Arc<Console>,
    /// Its stderr lines (on a console: everything).
    pub tail: Tail,
    /// Both streams' lines.
    pub output: Tail,
}

/// A process just started, with the tasks copying its output to the log.
pub(crate) struct Spawned {
    pub process: Box<dyn AppProcess>,
    pub captures: Vec<JoinHandle<()>>,
}

/// What the instance task uses to start processes and check their health.
pub(crate) trait Spawner: Send + Sync {
    fn spawn(
        &self,
        app: &AppConfig,
        launch: &Launch,
        sinks: OutputSinks<'_>,
    ) -> std::io::Result<Spawned>;

    /// Checks the process of `generation` listening on `addr`, reporting on `tx`: ready (or
    /// failed) within `health.start_timeout`, then unhealthy when it stops answering.
    fn check_health(
        &self,
        app: &AppConfig,
        addr: SocketAddr,
        generation: u64,
        tx: mpsc::Sender<Health>,
    ) -> JoinHandle<()>;
}

/// Real processes, in their own process groups, with real HTTP health checks.
pub(crate) struct OsSpawner;

struct OsProcess {
    child: Child,
    pgid: i32,
    pid: u32,
}

impl AppProcess for OsProcess {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn wait(&mut self) -> BoxFuture<'_, std::io::Result<ExitStatus>> {
        Box::pin(self.child.wait())
    }

    fn stop(
        &mut self,
        signal: Signal,
        timeout: Duration,
        force: watch::Receiver<bool>,
    ) -> BoxFuture<'_, std::io::Result<ExitStatus>> {
        Box::pin(process::stop_group(
            &mut self.child,
            self.pgid,
            signal,
            timeout,
            force,
        ))
    }

    fn kill(&mut self) {
        process::signal_group(self.pgid, Signal::SIGKILL);
    }
}

impl Spawner for OsSpawner {
    fn spawn(
        &self,
        app: &AppConfig,
        launch: &Launch,
        sinks: OutputSinks<'_>,
    ) -> std::io::Result<Spawned> {
        let mut child = if app.console {
            super::super::console::spawn(
                app,
                launch,
                sinks.console,
                sinks.log.clone(),
                sinks.tail.clone(),
            )?
        } else {
            process::spawn(app, launch)?
        };
        let pid = child.id().unwrap_or(0);
        let mut captures = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            captures.push(tokio::spawn(capture(
                out,
                sinks.log.clone(),
                sinks.index,
                Stream::Out,
                vec![sinks.output.clone()],
            )));
        }
        if let Some(err) = child.stderr.take() {
            captures.push(tokio::spawn(capture(
                err,
                sinks.log.clone(),
                sinks.index,
                Stream::Err,
                vec![sinks.tail.clone(), sinks.output.clone()],
            )));
        }
        Ok(Spawned {
            process: Box::new(OsProcess {
                child,
                pgid: pid as i32,
                pid,
            }),
            captures,
        })
    }

    fn check_health(
        &self,
        app: &AppConfig,
        addr: SocketAddr,
        generation: u64,
        tx: mpsc::Sender<Health>,
    ) -> JoinHandle<()> {
        let mut check = HealthCheck::new(addr, app.health.path.clone());
        check.timeout = app.health.timeout;
        check.interval = app.health.interval;
        let start_timeout = app.health.start_timeout;
        tokio::spawn(async move {
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
        })
    }
}

/// One running process of the instance.
pub(crate) struct Proc {
    pub generation: u64,
    pub process: Box<dyn AppProcess>,
    pub pid: u32,
    pub port: Option<u16>,
    pub started: Instant,
    pub backend: Option<BackendId>,
    pub health: Option<JoinHandle<()>>,
    /// The last stderr lines.
    pub tail: Tail,
    /// The last lines of both streams.
    pub output: Tail,
    /// The tasks copying its stdout and stderr to the log.
    pub captures: Vec<JoinHandle<()>>,
    /// Its private port, kept from other instances until the process is gone.
    pub _lease: Option<PortLease>,
}

/// How long an exit waits for the app's last output to reach the log: a grandchild that
/// keeps the pipes open must not delay the restart.
const LAST_OUTPUT_WAIT: Duration = Duration::from_millis(500);

impl Proc {
    /// Waits (briefly) until everything the process wrote is in the log and the tails,
    /// so the exit is reported after its last lines, and `status` shows them.
    pub async fn drain_output(&mut self) {
        let deadline = tokio::time::Instant::now() + LAST_OUTPUT_WAIT;
        for h in std::mem::take(&mut self.captures) {
            let _ = tokio::time::timeout_at(deadline, h).await;
        }
    }

    /// Its last output lines (both streams).
    pub fn last_output(&self) -> Vec<String> {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(h) = self.health.take() {
            h.abort();
        }
    }
}

/// The private ports handed to this supervisor's live processes. The kernel offers a port
/// that nobody has bound *yet*: an app that takes seconds to bind (a Lisp image compiling)
/// left its port free, and a second instance was handed the same one (its start then failed
/// with "address in use"). A port stays leased until its process is gone.
static LEASED: Mutex<std::collections::BTreeSet<u16>> =
    Mutex::new(std::collections::BTreeSet::new());

/// One leased private port; given back when dropped (with its [`Proc`]).
#[derive(Debug)]
pub(crate) struct PortLease(u16);

impl Drop for PortLease {
    fn drop(&mut self) {
        LEASED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.0);
    }
}

/// A free private port on the loopback interface, for a new process to listen on, not
/// leased to another live process of this supervisor.
fn private_port() -> std::io::Result<PortLease> {
    // Listeners held while retrying, so the kernel offers another port each time.
    let mut held = Vec::new();
    for _ in 0..64 {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if LEASED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port)
        {
            return Ok(PortLease(port));
        }
        held.push(listener);
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "no private port free of this supervisor's other instances after 64 tries",
    ))
}

/// Spawns a process for the instance: output captured, backend registered (not ready) and
/// its health check started when the app is behind the proxy.
pub(crate) fn spawn_proc(
    ctx: &InstanceCtx,
    app: &AppConfig,
    generation: u64,
    health_tx: &mpsc::Sender<Health>,
) -> std::io::Result<Proc> {
    let lease = match (&ctx.proxy, app.port) {
        (Some(_), Some(_)) => Some(private_port()?),
        _ => None,
    };
    let port = match (&lease, app.port) {
        (Some(l), _) => Some(l.0),
        (None, p) if ctx.proxy.is_none() => p,
        (None, _) => None,
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
    let spawned = ctx.spawner.spawn(
        app,
        &launch,
        OutputSinks {
            log: &ctx.log,
            index: ctx.cell.index,
            console: &ctx.cell.console,
            tail: tail.clone(),
            output: output.clone(),
        },
    )?;
    let pid = spawned.process.pid();
    let mut backend = None;
    let mut health = None;
    if let (Some(proxy), Some(port)) = (&ctx.proxy, port) {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        backend = Some(proxy.add_backend(addr));
        health = Some(
            ctx.spawner
                .check_health(app, addr, generation, health_tx.clone()),
        );
    }
    Ok(Proc {
        generation,
        process: spawned.process,
        pid,
        port,
        started: Instant::now(),
        backend,
        health,
        tail,
        output,
        captures: spawned.captures,
        _lease: lease,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leased_port_is_not_handed_out_again_until_released() {
        let first = private_port().expect("a port");
        let others: Vec<PortLease> = (0..200).map(|_| private_port().expect("a port")).collect();
        assert!(others.iter().all(|l| l.0 != first.0));
        let mut ports: Vec<u16> = others.iter().map(|l| l.0).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), others.len(), "a port leased twice");
        let port = first.0;
        drop(first);
        assert!(
            !LEASED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&port)
        );
    }
}
