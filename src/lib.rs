//! windlass: run, supervise, hot-reload, monitor and deploy web applications on Linux.
//!
//! The library holds every room of the architecture (DESIGN.md); the binary is a thin shell
//! over [`cli::main`]. Two layers, checked by a test ([`layering`]):
//!
//! - Lower rooms, which never import the upper ones: [`config`] (find, parse and validate
//!   `windlass.toml`), [`protocol`] (the wire types of the control API), [`logs`] (capture,
//!   rotation, tail), [`proxy`] (the reverse proxy), [`lisp`] (Common Lisp apps: detection,
//!   launcher, executables, swank), [`health`] (health checks) and [`layout`] (the project's
//!   files on disk and the one atomic write).
//! - Upper rooms, built on them: [`supervisor`] (instances, restarts, the guardian),
//!   [`daemon`] (the long-running process), [`control`] (the API on the control socket),
//!   [`admin`] (the admin listener: `/metrics`, `/dashboard`, `/api`), [`metrics`] (the
//!   Prometheus registry) and [`cli`] (one file per verb).
//!
//! Beside them: [`release`] (built releases), [`init`] (project detection for `windlass init`),
//! [`dashboard`] (the embedded web UI), [`watch`] (reload on file changes), [`ports`] (who
//! holds a port), [`limits`] (the open-files limit), [`notify`] (systemd's notify protocol and
//! journald priorities) and [`export`] (`windlass export`: systemd units, Dockerfiles,
//! Kubernetes manifests). Only what `tests/it` needs is `pub`;
//! the rest is `pub(crate)`, so rustc reports dead code.

pub(crate) mod admin;
pub mod cli;
pub mod config;
pub(crate) mod control;
pub(crate) mod daemon;
pub(crate) mod dashboard;
pub(crate) mod deploy;
pub(crate) mod edge;
pub(crate) mod export;
pub mod health;
pub(crate) mod init;
#[cfg(test)]
mod layering;
pub(crate) mod layout;
pub(crate) mod limits;
pub mod lisp;
pub(crate) mod logs;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod pack;
pub(crate) mod ports;
pub(crate) mod protocol;
pub mod proxy;
pub(crate) mod release;
pub(crate) mod supervisor;
#[cfg(test)]
mod testrng;
pub(crate) mod watch;

pub(crate) use supervisor::unix_now;
