//! Stopping an instance's process: out of rotation, in-flight requests drained (cut short by
//! a second Ctrl-C), then the whole process group, and the guardian told.

use std::time::Duration;

use tokio::sync::watch;

use super::InstanceCtx;
use super::spawn::Proc;
use crate::config::AppConfig;
use crate::protocol::State;
use crate::proxy::{AppProxy, BackendId, DrainReport};

/// Why a process is being stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// On request: the instance shows `stopping`; in-flight requests drain first.
    Asked,
    /// Replaced by a reload (already drained); the instance keeps its state.
    Replaced,
    /// Exited or failed: nothing in flight worth waiting for; the rest of its group goes.
    Dead,
}

/// Takes backend `b` out of rotation and waits up to `deadline` for its requests in flight;
/// a force kill (second Ctrl-C) ends the wait at once (then there is no report).
pub(crate) async fn drain(
    proxy: &AppProxy,
    b: BackendId,
    deadline: Duration,
    mut force: watch::Receiver<bool>,
) -> Option<DrainReport> {
    let deadline = if *force.borrow() {
        Duration::ZERO
    } else {
        deadline
    };
    let drained = proxy.drain(b, deadline);
    tokio::pin!(drained);
    loop {
        tokio::select! {
            r = &mut drained => return Some(r),
            changed = force.changed() => {
                if changed.is_err() {
                    // Nobody can force any more: wait for the drain itself.
                    return Some(drained.await);
                }
                if *force.borrow() {
                    return None;
                }
            }
        }
    }
}

/// Stops a process: out of rotation and drained first (when asked and behind the proxy),
/// then the whole group; tells the guardian.
pub(crate) async fn stop_proc(
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
        let deadline = if why == Stop::Asked {
            app.stop.timeout
        } else {
            Duration::ZERO
        };
        let report = drain(proxy, b, deadline, ctx.force.clone()).await;
        if why == Stop::Asked {
            ctx.note(&format!("drained ({})", drained(report.as_ref())));
        }
    }
    if why != Stop::Dead {
        ctx.note(&format!(
            "stopping pid {} ({})",
            proc.pid,
            app.stop.signal.as_str()
        ));
    }
    let r = proc
        .process
        .stop(app.stop.signal, app.stop.timeout, ctx.force.clone())
        .await;
    (ctx.on_group_gone)(proc.pid as i32);
    r
}

/// A drain report in words (none: cut short by a force kill).
pub(crate) fn drained(r: Option<&DrainReport>) -> String {
    let Some(r) = r else {
        return "cut short: force kill".to_owned();
    };
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
