//! The compile step of Common Lisp apps run from source: compile once, then start many.
//! Before instances of such an app start (at `up`, `start`, `restart` and a reload), one
//! SBCL process compiles the system (and swank when configured) into the app's fasl cache
//! and exits; the instances then only load fasls. Its output goes to the app's log (as
//! app-level lines); a failure reads like a load error (exit code 1 and the condition).
//!
//! [`LispCompiler`] is one per app and serializes compiles: a caller that asks for a compile
//! started no earlier than some instant reuses a compile that did, so the instances started
//! by one command share one compile (a caller that waits while another compiles gets that
//! compile's result). The runtime holds an flock on the cache meanwhile (see
//! `runtime.lisp`), which also keeps `windlass build` and this step from writing at once.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::config::{AppConfig, envvars};
use crate::logs::AppLog;
use crate::protocol::Stream;

/// How many output lines of a failed compile its error message quotes.
const ERROR_LINES: usize = 15;
/// The runtime's stderr line when a system fails to load (see `load-project`).
const LOAD_FAILED: &str = "windlass-lisp: failed to load ";

/// One app's compile steps, one at a time.
#[derive(Debug, Default)]
pub struct LispCompiler {
    last: tokio::sync::Mutex<Option<Compiled>>,
}

#[derive(Debug, Clone)]
struct Compiled {
    started: Instant,
    result: Result<(), String>,
}

impl LispCompiler {
    /// Makes sure the app's fasls are compiled before an instance starts. `after`: the
    /// compile must have started no earlier than this (the command that starts instances);
    /// `None`: any successful compile will do (restarting a crashed instance). Apps without
    /// a compile step (built releases, other apps) return at once. The error is for the user.
    pub async fn ensure(
        &self,
        app: &AppConfig,
        log: &Arc<AppLog>,
        after: Option<Instant>,
    ) -> Result<(), String> {
        let Some(lisp) = app.lisp.as_ref() else {
            return Ok(());
        };
        if lisp.compile.is_none() || app.releases.sel.is_some() {
            return Ok(());
        }
        let mut last = self.last.lock().await;
        if let Some(done) = last.as_ref() {
            let fresh = match after {
                Some(t) => done.started >= t,
                None => done.result.is_ok(),
            };
            if fresh {
                return done.result.clone();
            }
        }
        let started = Instant::now();
        let result = compile(app, log).await;
        *last = Some(Compiled {
            started,
            result: result.clone(),
        });
        result
    }
}

/// Runs the compile step of `app` to completion (bounded by `health.start_timeout`).
async fn compile(app: &AppConfig, log: &Arc<AppLog>) -> Result<(), String> {
    let (Some(lisp), Some(step)) = (
        app.lisp.as_ref(),
        app.lisp.as_ref().and_then(|l| l.compile.as_ref()),
    ) else {
        return Ok(());
    };
    let system = &lisp.app.system;
    let runtime = step.runtime_file.clone();
    tokio::task::spawn_blocking(move || crate::lisp::launcher::write_runtime_file(&runtime))
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| {
            format!(
                "cannot write the Lisp runtime {}: {e}",
                step.runtime_file.display()
            )
        })?;
    let Some((program, args)) = step.argv.split_first() else {
        return Err(format!("no compile command for {system}"));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .current_dir(&app.cwd)
        .envs(app.env.iter().map(|(k, v)| (k, v)))
        .env(envvars::APP, &app.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Out of the terminal's process group, like the instances: Ctrl-C is windlass's.
        .process_group(0)
        .kill_on_drop(true);
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start `{program}` to compile {system}: {e}"))?;
    let pid = child.id().unwrap_or(0);
    log.note(
        None,
        &format!(
            "compiling {system} (pid {pid}); instances start once it is compiled, and only load fasls"
        ),
    );
    let tail: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(copy_lines(s, Stream::Out, tail.clone(), log.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(copy_lines(s, Stream::Err, tail.clone(), log.clone()))),
    ];
    let waited = tokio::time::timeout(app.health.start_timeout, child.wait()).await;
    let status = match waited {
        Ok(s) => s.map_err(|e| format!("waiting for the compile of {system}: {e}"))?,
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            finish(readers).await;
            let msg = format!(
                "compiling {system} took longer than health.start_timeout ({}); killed",
                super::instance::human(app.health.start_timeout)
            );
            log.note(None, &msg);
            return Err(msg);
        }
    };
    finish(readers).await;
    let took = super::instance::human(t0.elapsed());
    if status.success() {
        log.note(None, &format!("compiled {system} in {took}"));
        return Ok(());
    }
    let info = super::process::exit_info(status, t0.elapsed());
    let lines: Vec<String> = tail
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let condition = lines.iter().rev().find_map(|l| {
        l.split_once(LOAD_FAILED)
            .and_then(|(_, rest)| rest.split_once(": "))
            .map(|(_, c)| c.to_owned())
    });
    let mut msg = match condition {
        Some(c) => format!("compiling {system} failed ({info}): {c}"),
        None => format!("compiling {system} failed ({info})"),
    };
    log.note(None, &msg);
    if !lines.is_empty() {
        msg.push_str("\nlast output lines of the compile:\n  ");
        msg.push_str(&lines.join("\n  "));
    }
    Err(msg)
}

async fn copy_lines(
    stream: impl AsyncRead + Unpin,
    kind: Stream,
    tail: Arc<Mutex<VecDeque<String>>>,
    log: Arc<AppLog>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                log.append(None, kind, &[line]);
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == ERROR_LINES {
                    t.pop_front();
                }
                t.push_back(String::from_utf8_lossy(line).into_owned());
            }
        }
    }
}

/// Waits (briefly: a grandchild may hold the pipes) until the output is in the log.
async fn finish(readers: [Option<tokio::task::JoinHandle<()>>; 2]) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    for r in readers.into_iter().flatten() {
        let abort = r.abort_handle();
        if tokio::time::timeout_at(deadline, r).await.is_err() {
            abort.abort();
        }
    }
}
