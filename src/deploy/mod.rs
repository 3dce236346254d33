//! `windlass deploy`: ships the project's releases to hosts over OpenSSH and switches them
//! there through the remote windlass, host by host or batch by batch, health-gated, and rolls
//! the updated hosts back on the first failure.
//!
//! [`plan`] decides what will happen before any host is contacted (`--dry-run` prints it),
//! [`ssh`] is the wire (the system's `ssh`, `rsync` or a tar stream), [`rollout`] runs the
//! steps and reports each as an [`Event`]. The remote side is the windlass binary uploaded to
//! `PATH/.windlass/bin/windlass` (when its sha256 differs from ours): releases are switched
//! with its `rollback APP RELEASE`, which returns once the new release is healthy or fails
//! leaving the old one serving. What each host last ran is kept there in
//! `.windlass/deploy/current` (one `APP RELEASE` a line), with the previous config and `.env`,
//! so a failed rollout can put every updated host back.

pub(crate) mod plan;
pub(crate) mod rollout;
pub(crate) mod ssh;

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DeployError {
    /// Bad arguments or config: nothing was contacted.
    #[error("{message}")]
    Usage { message: String, hint: String },
    /// Something on this machine failed before any host changed.
    #[error("{0}")]
    Local(String),
}

impl DeployError {
    pub fn hint(&self) -> Option<String> {
        match self {
            DeployError::Usage { hint, .. } => Some(hint.clone()),
            DeployError::Local(_) => None,
        }
    }
}

/// One step on one host (or the whole deploy when `host` is empty), as `--json` prints it,
/// one object a line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    /// The host's name as configured; empty for the deploy as a whole.
    pub host: String,
    /// `plan`, `connect`, `probe`, `upload-binary`, `upload-release`, `upload-config`,
    /// `upload-env`, `start`, `switch`, `healthy`, `logs`, `rollback`, `deploy`.
    pub step: &'static str,
    /// `planned`, `ok`, `skipped`, `failed`.
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// Bytes sent for an upload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Event {
    pub fn new(host: &str, step: &'static str, status: &'static str) -> Event {
        Event {
            host: host.to_owned(),
            step,
            status,
            app: None,
            release: None,
            bytes: None,
            detail: None,
        }
    }
    pub fn app(mut self, app: &str, release: &str) -> Event {
        self.app = Some(app.to_owned());
        self.release = Some(release.to_owned());
        self
    }
    pub fn bytes(mut self, n: u64) -> Event {
        self.bytes = Some(n);
        self
    }
    pub fn detail(mut self, d: impl Into<String>) -> Event {
        self.detail = Some(d.into());
        self
    }
}
