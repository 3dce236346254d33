//! Spawning an app instance in its own process group and stopping the whole group.
//!
//! Each instance leads a new process group, so a signal reaches the app and everything it
//! started (a shell wrapper, workers, grandchildren). Stopping sends the configured signal to
//! the group, waits until *every* member is gone (not just the leader), and sends SIGKILL to
//! the group at the deadline or at once when forced (a second Ctrl-C).

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::config::{AppConfig, envvars};
use crate::protocol::ExitInfo;

/// What an instance is started with, beyond its app's config.
#[derive(Debug, Clone)]
pub struct Launch {
    pub index: u32,
    /// The port the instance must listen on (handed over through `port_env`).
    pub port: Option<u16>,
    /// The guardian's pipe, written by the child before exec.
    pub guardian_fd: Option<i32>,
}

/// The command of one instance of `app`, shared by both ways of starting it (pipes here, a
/// terminal in [`super::console`]): its argv (from the current release, if any), working
/// directory, environment (the app's, then `INSTANCE`, `WINDLASS_APP` and its port) and the
/// open-files limit windlass was started with. The caller adds stdio and its `pre_exec`.
pub fn command(app: &AppConfig, launch: &Launch) -> std::io::Result<Command> {
    let start = crate::release::start_for(app)?;
    let argv = &start.argv;
    let mut cmd = Command::new(&argv[0]);
    if let Some(id) = &start.release {
        cmd.env(envvars::RELEASE, id);
    }
    cmd.args(&argv[1..])
        .current_dir(&start.cwd)
        .envs(app.env.iter().map(|(k, v)| (k, v)))
        .env(envvars::INSTANCE, launch.index.to_string())
        .env(envvars::APP, &app.name)
        .kill_on_drop(false);
    if let Some(port) = launch.port {
        cmd.env(&app.port_env, port.to_string());
    }
    crate::notify::scrub(&mut cmd);
    // The app gets the open-files limit windlass was started with, not the raised one.
    crate::limits::restore_in_child(&mut cmd);
    Ok(cmd)
}

/// Spawns one instance of `app`: its own process group, stdin from /dev/null, stdout and stderr
/// piped to windlass.
pub fn spawn(app: &AppConfig, launch: &Launch) -> std::io::Result<Child> {
    let mut cmd = command(app, launch)?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if let Some(fd) = launch.guardian_fd {
        // SAFETY: the hook only calls async-signal-safe functions (getpid, write).
        unsafe {
            cmd.pre_exec(move || {
                super::guardian::register_from_child(fd);
                Ok(())
            });
        }
    }
    cmd.spawn()
}

/// Describes how a process ended.
pub fn exit_info(status: ExitStatus, uptime: Duration) -> ExitInfo {
    ExitInfo {
        code: status.code(),
        signal: status.signal().map(signal_name),
        at: crate::unix_now(),
        uptime_secs: uptime.as_secs_f64(),
    }
}

pub fn signal_name(sig: i32) -> String {
    Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned())
}

/// Sends `sig` to the group; a group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// True while any process of the group is alive (zombies, which hold no resources and only
/// wait to be reaped by their parent, do not count).
pub fn group_alive(pgid: i32) -> bool {
    // The common case costs one syscall: no process at all in the group (not even a zombie).
    if killpg(Pid::from_raw(pgid), None) == Err(nix::errno::Errno::ESRCH) {
        return false;
    }
    let Ok(procs) = procfs::process::all_processes() else {
        return killpg(Pid::from_raw(pgid), None).is_ok();
    };
    procs.flatten().any(|p| {
        p.stat()
            .is_ok_and(|s| s.pgrp == pgid && s.state != 'Z' && s.state != 'X')
    })
}

/// Stops the instance's whole process group: `signal`, then SIGKILL after `timeout` or as
/// soon as `force` turns true. Returns the leader's exit status once every member is gone.
pub async fn stop_group(
    child: &mut Child,
    pgid: i32,
    signal: Signal,
    timeout: Duration,
    mut force: watch::Receiver<bool>,
) -> std::io::Result<ExitStatus> {
    let deadline = super::instant_after(timeout);
    if *force.borrow() {
        signal_group(pgid, Signal::SIGKILL);
    } else {
        signal_group(pgid, signal);
    }
    let mut killed = *force.borrow();
    let mut status: Option<ExitStatus> = None;
    loop {
        if status.is_none() {
            if let Some(s) = child.try_wait()? {
                status = Some(s);
            }
        }
        if status.is_some() && !group_alive(pgid) {
            break;
        }
        if !killed && Instant::now() >= deadline {
            signal_group(pgid, Signal::SIGKILL);
            killed = true;
        }
        let tick = tokio::time::sleep(Duration::from_millis(if status.is_none() {
            10
        } else {
            20
        }));
        tokio::select! {
            s = child.wait(), if status.is_none() => { status = Some(s?); }
            _ = tick => {}
            Ok(()) = force.changed(), if !killed => {
                if *force.borrow() {
                    signal_group(pgid, Signal::SIGKILL);
                    killed = true;
                }
            }
        }
    }
    Ok(status.expect("loop exits only once the status is known"))
}
