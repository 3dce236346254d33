//! windlass: run, supervise, hot-reload, monitor and deploy web applications on Linux.
//!
//! The library holds every room of the architecture (DESIGN.md); the binary is a thin shell
//! over [`cli::main`]. Rooms: [`config`] (parse and validate), [`supervisor`] (processes,
//! restarts, the guardian), [`logs`] (capture and rotation), [`control`] (the API on the
//! control socket), [`daemon`] (the long-running process), [`lisp`] (Common Lisp apps:
//! detection, launcher, executables, swank), [`release`] (built releases), [`proxy`] (the
//! reverse proxy) and [`health`] (its checks), [`cli`] (one file per verb), and [`protocol`]
//! (wire types shared by the control server and its clients); [`init`] detects projects for
//! `windlass init`, [`ports`] finds who holds a port and [`limits`] handles the open-files
//! limit.

pub mod admin;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dashboard;
pub mod health;
pub mod init;
pub mod limits;
pub mod lisp;
pub mod logs;
pub mod metrics;
pub mod pack;
pub mod ports;
pub mod protocol;
pub mod proxy;
pub mod release;
pub mod supervisor;
#[cfg(test)]
mod testrng;
pub mod watch;

pub use supervisor::unix_now;
