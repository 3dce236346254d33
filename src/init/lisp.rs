//! Common Lisp for `windlass init`: an ASDF system gets the first-class config,
//! `lisp = { system, entry }` (swank, graceful stop, `windlass build`, in-place reload, Lisp
//! metrics), from the one detection in `crate::lisp::detect`. A Cookbook-style `run.lisp`
//! stays the raw command it is today, with the first-class config offered as a commented
//! block and what the raw command loses said in words.

use std::path::Path;

use super::{AppPlan, Command, LispEntry};
use crate::lisp::detect::{self, LispProject};

/// What the raw `sbcl --load run.lisp` command does without.
const RAW_LOSES: &str = "swank (`windlass repl`), graceful stop, `windlass build`, \
                         in-place reload and Lisp metrics";

/// Detects an ASDF system in `dir`.
pub fn detect(dir: &Path) -> Option<(AppPlan, Vec<String>)> {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let project = detect::detect(dir, home.as_deref()).ok()??;
    let asd = project
        .system_file
        .strip_prefix(dir)
        .unwrap_or(&project.system_file)
        .display()
        .to_string();
    let system = project.system.clone();
    let mut found = vec![format!("ASDF system `{system}` ({asd})")];
    let port_env = match &project.port_env {
        Some(var) => {
            found.push(format!("the code reads the port from ${var}"));
            var.clone()
        }
        None => {
            found.push("no port variable in the code: make the entry point read $PORT".into());
            "PORT".into()
        }
    };
    if project.uses_qlot {
        found.push("qlfile: dependencies load from .qlot/ (run `qlot install` first)".into());
    } else if project.quicklisp_setup.is_some() {
        found.push("Quicklisp: dependencies load with ql:quickload".into());
    }
    let (entry, entry_note) = match &project.entry {
        Some(e) => (
            e.entry.clone(),
            Some(format!(
                "entry point `{}` guessed: {} ({}); if another function starts your app, change `entry` in windlass.toml",
                e.entry,
                e.why,
                e.file.display()
            )),
        ),
        None => (format!("{system}:main"), None),
    };
    let lisp = LispEntry {
        system: system.clone(),
        entry: entry.clone(),
    };
    if project.has_run_lisp {
        return Some(run_lisp(&project, lisp, port_env, found, entry_note));
    }
    found.extend(entry_note);
    let mut comment = vec![
        format!(
            "Common Lisp, run by windlass's Lisp runtime: loads the ASDF system `{system}` ({asd})"
        ),
        format!(
            "from source, calls `entry` with no arguments (it must read ${port_env} and start the"
        ),
        "server); it stays up and stops Hunchentoot gracefully on SIGTERM.".into(),
        "`windlass build` saves it as an executable; swank_port below opens the REPL.".into(),
    ];
    let fill_in = match &project.entry {
        Some(e) => {
            comment.push(format!(
                "GUESSED by `windlass init`: the system from {asd}; the entry {}",
                e.entry
            ));
            comment.push(format!("({}, {}).", e.why, e.file.display()));
            comment.push("Change `entry` below if another function starts your app.".into());
            None
        }
        None => Some(format!(
            "the entry point: the function that starts your server with no arguments, as package:function (`{entry}` is a placeholder)"
        )),
    };
    let mut extra = Vec::new();
    if let Some(path) = &project.health_path {
        extra.push(format!(
            "health = {{ path = {} }}",
            toml::Value::String(path.clone())
        ));
    }
    extra.push(
        "# swank_port = 4005           # swank on 127.0.0.1: `windlass repl web`, reload = \"in-place\""
            .into(),
    );
    Some((
        AppPlan {
            command: Command::Lisp(lisp),
            comment,
            fill_in,
            port_env,
            extra,
            ..AppPlan::web()
        },
        found,
    ))
}

/// A Cookbook `run.lisp`: run it as is, and offer the first-class config.
fn run_lisp(
    project: &LispProject,
    lisp: LispEntry,
    port_env: String,
    mut found: Vec<String>,
    entry_note: Option<String>,
) -> (AppPlan, Vec<String>) {
    found.push(format!(
        "run.lisp: written as the raw command `sbcl --load run.lisp`, which has no {RAW_LOSES}; \
         the commented `lisp = {{ system, entry }}` block in windlass.toml turns them on"
    ));
    found.extend(entry_note);
    let entry_hint = match &project.entry {
        Some(e) => format!("guessed: {}, {}", e.why, e.file.display()),
        None => "a placeholder: name the function that starts your server".into(),
    };
    let comment = vec![
        "run from source: run.lisp loads the system and starts the server".into(),
        format!("This raw command has no {RAW_LOSES}."),
        "For them, replace `command` with the first-class config (run.lisp is then not needed;"
            .into(),
        format!("windlass calls `entry` with no arguments, so it must read ${port_env} itself):"),
        format!(
            "lisp = {{ system = {}, entry = {} }}   # entry {entry_hint}",
            toml::Value::String(lisp.system.clone()),
            toml::Value::String(lisp.entry.clone())
        ),
    ];
    (
        AppPlan {
            command: Command::Argv(
                [
                    "sbcl",
                    "--noinform",
                    "--non-interactive",
                    "--load",
                    "run.lisp",
                ]
                .map(String::from)
                .to_vec(),
            ),
            comment,
            port_env,
            ..AppPlan::web()
        },
        found,
    )
}
