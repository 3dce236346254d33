//! The control API's wire types, shared by the supervisor (server) and the CLI (client): the
//! status of apps and instances, log lines, the action verbs ([`Action`]) and their answers,
//! and a Lisp image's figures ([`LispMetrics`]). Plain data: this module imports nothing that
//! behaves, so both ends can use it without pulling in the other.
//!
//! The API is HTTP/1.1 with JSON bodies, on `.windlass/control.sock`. Paths carry the protocol
//! version (`/v1/...`), which is independent of the crate version: fields may be added within a
//! version, never removed or retyped. `windlass status --json` prints [`Status`] as is, so this
//! is also the documented `--json` schema.

use serde::{Deserialize, Serialize};

/// The protocol version in every path: `/v1/status`, `/v1/logs`, ...
pub const VERSION: u32 = 1;

/// `GET /v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: u32,
    pub supervisor: SupervisorInfo,
    pub apps: Vec<AppStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub pid: u32,
    /// Unix seconds.
    pub started_at: f64,
    pub config: String,
    pub windlass_version: String,
    /// Where the dashboard and `/metrics` are served (`None` when the admin listener is off).
    #[serde(default)]
    pub admin_url: Option<String>,
    /// Resident memory of the supervisor process, bytes.
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// Aggregate of the instances' states: the worst one.
    pub state: State,
    pub port: Option<u16>,
    pub instances: Vec<InstanceStatus>,
    /// Log lines that could not be written (disk full, I/O error); 0 when nothing was lost.
    pub log_lines_dropped: u64,
    /// The proxy's figures, for apps with a public port.
    #[serde(default)]
    pub proxy: Option<ProxyStatus>,
}

/// What the built-in proxy of one app is doing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// Requests being handled now (held, waiting for the app, or streaming a body).
    pub in_flight: usize,
    /// Responses sent since start, by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub requests_by_class: [u64; 5],
    /// Instances receiving traffic now.
    pub ready_backends: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub index: u32,
    pub state: State,
    pub pid: Option<u32>,
    /// The private port the instance listens on, when the app has a port.
    pub port: Option<u16>,
    /// Unix seconds of the current process's start.
    pub started_at: Option<f64>,
    pub uptime_secs: Option<f64>,
    pub restarts: u64,
    /// Blue-green reloads of this instance.
    #[serde(default)]
    pub reloads: u64,
    /// Summed over the instance's process group.
    pub memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    pub last_exit: Option<ExitInfo>,
    /// The last lines the instance wrote to stderr (most recent last).
    pub last_stderr: Vec<String>,
    /// When in backoff: seconds until the next start.
    pub next_start_in_secs: Option<f64>,
    /// A human explanation of the state (spawn error, crash loop...).
    pub message: Option<String>,
    /// The release the instance's process runs (`windlass releases`), when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Lisp apps with swank, in `GET /v1/apps/{app}` only: the image's heap, GC and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lisp: Option<LispMetrics>,
}

/// `POST /v1/apps/{app}/rollback[/{release}]`: what `windlass rollback --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackResult {
    pub ok: bool,
    pub app: String,
    /// The release the app ran before (none when it ran from source).
    pub from: Option<String>,
    /// The release it runs now (on failure: the one it tried).
    pub to: Option<String>,
    /// Per instance, what the reload did (or the error).
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<AppStatus>,
}

/// A Lisp image's memory, GC and threads, read through swank: in `GET /v1/apps/{app}` and
/// the `/metrics` series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LispMetrics {
    pub dynamic_usage_bytes: u64,
    pub dynamic_space_size_bytes: u64,
    pub gc_run_time_seconds: f64,
    pub bytes_consed_total: u64,
    pub threads: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<String>,
    /// Unix seconds.
    pub at: f64,
    pub uptime_secs: f64,
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.code, &self.signal) {
            (_, Some(sig)) => write!(f, "killed by {sig}"),
            (Some(c), None) => write!(f, "exit code {c}"),
            (None, None) => f.write_str("exited"),
        }
    }
}

/// An instance's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Running and (when checked) healthy.
    Running,
    /// Spawned, waiting for the first health check to pass.
    Starting,
    /// Stopped on request (or never started: `autostart = false`).
    Stopped,
    /// Exited with success and not restarted by the policy.
    Exited,
    /// Being stopped.
    Stopping,
    /// Waiting out the backoff delay before a restart.
    Backoff,
    /// Failing quickly, again and again: still retried, at the backoff's maximum pace.
    Crashloop,
    /// Failed and not restarted (`restart = "never"`, or the command cannot be spawned).
    Fatal,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Starting => "starting",
            State::Stopped => "stopped",
            State::Exited => "exited",
            State::Stopping => "stopping",
            State::Backoff => "backoff",
            State::Crashloop => "crashloop",
            State::Fatal => "fatal",
        }
    }

    /// True for states that need a person's attention.
    pub fn is_failed(self) -> bool {
        matches!(self, State::Crashloop | State::Fatal)
    }
}

/// One captured log line: `GET /v1/logs` streams these as newline-delimited JSON.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogLine {
    /// RFC 3339 UTC with microseconds.
    pub ts: String,
    pub app: String,
    /// Instance index, or `None` for windlass's own notes about the app.
    pub instance: Option<u32>,
    pub stream: Stream,
    pub line: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Out,
    Err,
    /// A line windlass wrote about the app (started, exited, lines dropped...).
    Windlass,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Out => "out",
            Stream::Err => "err",
            Stream::Windlass => "windlass",
        }
    }

    pub fn parse(s: &str) -> Option<Stream> {
        match s {
            "out" => Some(Stream::Out),
            "err" => Some(Stream::Err),
            "windlass" => Some(Stream::Windlass),
            _ => None,
        }
    }
}

/// Query of `GET /v1/logs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogsQuery {
    pub app: Option<String>,
    /// Past lines to send first (per app when `app` is not set).
    pub n: Option<usize>,
    #[serde(default)]
    pub follow: bool,
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    /// What to do about it, when there is something to do.
    pub hint: Option<String>,
}

/// The verbs of `POST /v1/apps/{app}/{action}`: the CLI writes them, the server parses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Restart,
    /// With the app's reload strategy (blue-green, restart or in-place).
    Reload,
}

impl Action {
    pub const ALL: [Action; 4] = [Action::Start, Action::Stop, Action::Restart, Action::Reload];

    /// The verb in the URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Reload => "reload",
        }
    }

    /// The verb named `s` in a URL, if any.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Answer to `POST /v1/apps/{app}/{action}` and `POST /v1/down`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActionResult {
    pub ok: bool,
    pub message: String,
    pub app: Option<AppStatus>,
}

/// What an in-place reload of a Lisp app did: one entry per instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InPlaceReport {
    pub app: String,
    /// True when every instance reloaded without an error.
    pub ok: bool,
    pub instances: Vec<InstanceReload>,
}

/// How an in-place reload went in one instance's image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceReload {
    pub index: u32,
    pub ok: bool,
    /// The error's type and text, when the reload form failed (the old code keeps running).
    pub error: Option<String>,
    /// Warnings signalled while compiling (`TYPE: text`).
    pub warnings: Vec<String>,
    /// What the compiler wrote to `*error-output*`.
    pub diagnostics: String,
    /// What the reload form printed.
    pub output: String,
    /// The app's log lines (stderr, or the console) written during the reload.
    pub log_lines: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_action_verb_parses_back_and_nothing_else_does() {
        for a in Action::ALL {
            assert_eq!(Action::parse(a.as_str()), Some(a));
        }
        assert_eq!(Action::parse("Start"), None);
        assert_eq!(Action::parse("console"), None);
        assert_eq!(Action::parse(""), None);
    }
}
