//! Orphans: windlass is a child subreaper, and reaps the orphans it adopts.
//!
//! An app that forks a child and exits before it (a daemonising double fork, a worker pool
//! whose master died) leaves an orphan. The kernel hands it to the nearest ancestor marked
//! `PR_SET_CHILD_SUBREAPER`, or to PID 1. windlass marks itself, so the orphans of its apps
//! stay under it (and in its process tree) instead of escaping to init; as PID 1 of a
//! container it receives every orphan anyway. Either way their exit statuses are windlass's
//! to collect, or they stay zombies for ever.
//!
//! Reaping must not steal the exit status of a child windlass waits for itself (tokio's
//! `Child::wait` would then fail with ECHILD). windlass's own children are of two kinds:
//! each app instance (and each console, Lisp compile step) leads its own process group, and
//! the rest (the guardian, a release build) stay in windlass's group. An adopted orphan is
//! neither: it is in its app's group, which it does not lead (the second fork of a daemon
//! exists precisely so that it is not a group or session leader). So on every SIGCHLD, and
//! every few seconds in case one was coalesced, the reaper lists windlass's zombie children
//! in `/proc` and `waitpid`s exactly those in a group they do not lead that is not
//! windlass's. An orphan that made itself a group leader (`setsid` and then its parent
//! exited) is left alone: it cannot be told from an instance.

use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;

/// How often the reaper looks even without a SIGCHLD (signals of the same kind coalesce).
const SWEEP: Duration = Duration::from_secs(5);

/// Marks windlass as a child subreaper. A failure (an old kernel) is logged: as PID 1
/// windlass adopts orphans without it.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans of apps go to init");
    }
}

/// Starts the reaping task.
pub fn spawn() -> std::io::Result<JoinHandle<()>> {
    let mut sigchld = signal(SignalKind::child())?;
    Ok(tokio::spawn(async move {
        let mut sweep = tokio::time::interval(SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = sweep.tick() => {}
            }
            for pid in adopted_zombies() {
                // Ours alone to reap (see the module doc); a pid that is no longer a zombie
                // child (reaped meanwhile) just fails.
                match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                    Ok(status) => tracing::debug!(pid, ?status, "reaped an orphaned process"),
                    Err(e) => tracing::debug!(pid, error = %e, "orphan already gone"),
                }
            }
        }
    }))
}

/// Zombie children of this process that are adopted orphans (see the module doc).
pub fn adopted_zombies() -> Vec<i32> {
    let me = std::process::id() as i32;
    let my_group = nix::unistd::getpgrp().as_raw();
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    all.flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|s| s.ppid == me && s.state == 'Z' && s.pgrp != s.pid && s.pgrp != my_group)
        .map(|s| s.pid)
        .collect()
}
