//! Common Lisp support: SBCL + ASDF apps (Hunchentoot first) as first-class citizens,
//! automating the Common Lisp Cookbook's "Deployment" chapter. This module owns
//! everything Lisp-specific and nothing generic: [`detect`] reads an ASDF project for
//! `windlass init`; [`launcher`] produces the argv/env that run a system from source
//! with the Lisp runtime in `runtime.lisp` (entry point called with no arguments,
//! foreground, graceful SIGTERM); [`executable`] builds one self-contained executable
//! for `windlass build`; [`swank`] talks to a running image for `windlass repl`,
//! in-place reloads and metrics; [`sexp`] reads and prints the s-expressions they share.

pub(crate) mod detect;
pub mod executable;
pub mod launcher;
pub(crate) mod sexp;
pub mod swank;
