//! End-to-end tests: the real `windlass` binary, real child processes, real sockets on
//! 127.0.0.1. One binary (pueue/uv style); helpers in `helper/`.

mod helper;

mod admin;
mod config;
mod contrib;
mod control;
mod dashboard;
mod deploy;
mod discovery;
mod docs;
mod export;
mod flood;
mod init;
mod limits;
mod lisp;
mod lisp_instances;
mod lisp_module;
mod logs;
mod notify;
mod observe;
mod output;
mod pack;
mod proxy;
mod reaper;
mod releases;
mod reload;
mod replay;
mod supervise;
