//! End-to-end tests: the real `windlass` binary, real child processes, real sockets on
//! 127.0.0.1. One binary (pueue/uv style); helpers in `helper/`.

mod helper;

mod config;
mod control;
mod lisp;
mod lisp_module;
mod logs;
mod supervise;
