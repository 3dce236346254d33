//! systemd's side of a running supervisor: the `sd_notify` protocol and journald priorities.
//!
//! Under a `Type=notify` unit (`NOTIFY_SOCKET` set) windlass says `READY=1` once every app it
//! autostarts is running and has passed its health check, keeps a `STATUS=` line current
//! (apps running, starting, failing), says `RELOADING=1` (with `MONOTONIC_USEC`, which
//! systemd 253's `Type=notify-reload` requires) while a reload is under way and `READY=1`
//! after it, and `STOPPING=1` when it begins to stop. With `WatchdogSec=` (`WATCHDOG_USEC`,
//! and `WATCHDOG_PID` naming this process or unset) a task pings `WATCHDOG=1` at half that
//! period, each time only after the supervisor answered a status read (which takes every
//! instance's state lock) and never once stopping began: a runtime or a supervisor that
//! hangs stops the pings, and systemd restarts the service. The messages go through the
//! `sd-notify` crate; the socket is the one systemd (or a test) gives.
//!
//! When stderr is the journal (`JOURNAL_STREAM`) or systemd supervises windlass
//! (`NOTIFY_SOCKET`), windlass's own log lines start with a syslog priority (`<3>` error ...
//! `<7>` debug) that journald reads and strips, so `journalctl -p warning` works; no ANSI
//! colour, no timestamp (the journal has its own).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;

use crate::protocol::{State, Status};
use crate::supervisor::Supervisor;

/// The variables systemd sets, named once.
pub mod envvars {
    pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
    pub const JOURNAL_STREAM: &str = "JOURNAL_STREAM";
    pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
    pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
}

/// True when windlass runs under systemd: its output should carry journald priorities.
pub fn under_systemd() -> bool {
    std::env::var_os(envvars::NOTIFY_SOCKET).is_some() || stderr_is_journal()
}

/// `JOURNAL_STREAM` is `DEV:INODE` of the stream systemd connected; it counts only when
/// stderr is still that stream (not redirected by a shell in between).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os(envvars::JOURNAL_STREAM) else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Keeps systemd's variables from the apps: their messages would be ignored
/// (`NotifyAccess=main`) and their output goes through windlass, not to the journal.
pub fn scrub(cmd: &mut tokio::process::Command) {
    for v in [
        envvars::NOTIFY_SOCKET,
        envvars::JOURNAL_STREAM,
        envvars::WATCHDOG_USEC,
        envvars::WATCHDOG_PID,
    ] {
        cmd.env_remove(v);
    }
}

/// The syslog priority journald reads from a line's `<N>` prefix.
pub fn priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// A tracing event format for the journal: `<N>LEVEL target: message fields`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JournalFormat;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JournalFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        write!(
            writer,
            "<{}>{} {}: ",
            priority(*meta.level()),
            meta.level(),
            meta.target()
        )?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The tasks that talk to systemd for one supervisor; [`Notifier::stopping`] ends them.
#[derive(Debug)]
pub struct Notifier {
    tasks: Vec<JoinHandle<()>>,
}

/// Sends `states`; a lost message is logged, never fatal (systemd's own timeouts act).
fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd ({})", envvars::NOTIFY_SOCKET);
    }
}

impl Notifier {
    /// Starts notifying when `NOTIFY_SOCKET` is set (else `None`). `only` is the apps `up`
    /// was asked for (empty: those with autostart).
    pub fn start(supervisor: &Supervisor, only: &[String]) -> Option<Notifier> {
        std::env::var_os(envvars::NOTIFY_SOCKET)?;
        let autostart: Vec<String> = supervisor
            .config()
            .apps
            .iter()
            .filter(|a| {
                if only.is_empty() {
                    a.autostart
                } else {
                    only.contains(&a.name)
                }
            })
            .map(|a| a.name.clone())
            .collect();
        let mut tasks = vec![tokio::spawn(states(supervisor.clone(), autostart))];
        if let Some(period) = sd_notify::watchdog_enabled() {
            tasks.push(tokio::spawn(watchdog(supervisor.clone(), period)));
        }
        Some(Notifier { tasks })
    }

    /// Says `STOPPING=1` and ends the tasks: no watchdog ping or status after this.
    pub fn stopping(self) {
        for t in &self.tasks {
            t.abort();
        }
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping every app"),
        ]);
    }
}

/// True when every instance of every app in `autostart` is running (and healthy).
pub fn all_ready(status: &Status, autostart: &[String]) -> bool {
    status
        .apps
        .iter()
        .filter(|a| autostart.contains(&a.name))
        .all(|a| a.instances.iter().all(|i| i.state == State::Running))
}

/// The `STATUS=` line: each app with its running instances, and its state when not running.
pub fn status_line(status: &Status) -> String {
    let parts: Vec<String> = status
        .apps
        .iter()
        .map(|a| {
            let running = a
                .instances
                .iter()
                .filter(|i| i.state == State::Running)
                .count();
            let total = a.instances.len();
            if running == total {
                format!("{} running {running}/{total}", a.name)
            } else {
                format!("{} {} {running}/{total}", a.name, a.state.as_str())
            }
        })
        .collect();
    parts.join(", ")
}

async fn states(supervisor: Supervisor, autostart: Vec<String>) {
    let mut changes = supervisor.subscribe_changes();
    let mut reloads = supervisor.subscribe_reloads();
    let mut ready = false;
    let mut reloading = false;
    let mut last = String::new();
    loop {
        let status = supervisor.status();
        let line = status_line(&status);
        let now_reloading = *reloads.borrow_and_update() > 0;
        let mut msg: Vec<NotifyState<'_>> = Vec::new();
        let usec;
        if now_reloading && !reloading {
            usec = NotifyState::monotonic_usec_now().ok();
            msg.push(NotifyState::Reloading);
            msg.extend(usec);
        } else if !now_reloading && reloading {
            // The reload is over (its outcome is in the status line).
            msg.push(NotifyState::Ready);
        }
        reloading = now_reloading;
        if !ready && all_ready(&status, &autostart) {
            ready = true;
            msg.push(NotifyState::Ready);
        }
        let text = if reloading {
            format!("reloading; {line}")
        } else {
            line
        };
        if text != last {
            msg.push(NotifyState::Status(&text));
        }
        if !msg.is_empty() {
            send(&msg);
        }
        last = text.clone();
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            r = reloads.changed() => if r.is_err() { return },
        }
    }
}

async fn watchdog(supervisor: Supervisor, period: Duration) {
    let mut tick = tokio::time::interval((period / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The supervisor answers: every instance's state can be read.
        let status = supervisor.status();
        if status.supervisor.pid == std::process::id() {
            send(&[NotifyState::Watchdog]);
        }
    }
}
