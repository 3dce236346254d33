//! The launcher for `lisp = { system, entry }` apps run from source: it owns the argv
//! and environment windlass spawns SBCL with, and the Lisp code that process runs. It
//! is the Cookbook's "Deployment" recipe done right: `--non-interactive` and a disabled
//! debugger so a load error exits non-zero instead of hanging or exiting 0, LDB off and
//! `--lose-on-corruption` so heap exhaustion exits, a per-project fasl cache, the
//! Qlot/Quicklisp/ASDF choice, optional swank, then [`RUNTIME_LISP`]'s `run`, which calls
//! the entry point, keeps the process in the foreground and stops Hunchentoot gracefully
//! on SIGTERM/SIGINT.
//!
//! Entry-point convention: windlass calls the entry function with **no arguments**. It
//! reads its port from the variable named by `port_env` (the supervisor sets it), starts
//! the server and returns (Hunchentoot runs in background threads) or blocks. It needs
//! nothing else for a graceful stop: every acceptor started with `hunchentoot:start` is
//! tracked and stopped by the runtime. It must not start threads at load time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lisp::detect;
use crate::lisp::sexp::Sexp;

/// The Lisp runtime shared by run-from-source and built executables.
pub const RUNTIME_LISP: &str = include_str!("runtime.lisp");

/// Seconds the runtime waits for in-flight requests after SIGTERM/SIGINT.
pub const ENV_STOP_TIMEOUT: &str = "WINDLASS_STOP_TIMEOUT";
/// Port for swank on 127.0.0.1 (0 = any free port, announced on stderr).
pub const ENV_SWANK_PORT: &str = "WINDLASS_SWANK_PORT";
/// Where ASDF (and swank) put compiled files.
pub const ENV_XDG_CACHE_HOME: &str = "XDG_CACHE_HOME";
/// The stderr line prefix of the runtime, and the swank port announcement.
pub const SWANK_PORT_ANNOUNCE: &str = "windlass-lisp: swank-port=";

/// A validated `lisp = { system, entry }`.
/// Build it with [`LispApp::new`], which validates; it is deliberately not `Deserialize`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LispApp {
    /// The ASDF system to load.
    pub system: String,
    /// `package:function` or `package::function`, called with no arguments.
    pub entry: String,
}

/// An invalid `lisp = { ... }` table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LispAppError {
    #[error("lisp.system {0:?} is not an ASDF system name (letters, digits, - _ . / + only)")]
    System(String),
    #[error("lisp.entry {0:?} is not a function name: write it as \"package:function\"")]
    Entry(String),
}

impl LispApp {
    /// Validate both names so they can be embedded in Lisp code safely.
    pub fn new(
        system: impl Into<String>,
        entry: impl Into<String>,
    ) -> Result<LispApp, LispAppError> {
        let (system, entry) = (system.into(), entry.into());
        let system_ok = !system.is_empty()
            && system
                .chars()
                .all(|c| c.is_alphanumeric() || "-_./+".contains(c));
        if !system_ok {
            return Err(LispAppError::System(system));
        }
        let forbidden = |c: char| c.is_whitespace() || "()'\"`,;#|\\".contains(c);
        let parts: Vec<&str> = entry.splitn(2, ':').collect();
        let entry_ok = parts.len() == 2
            && !parts[0].is_empty()
            && !parts[1].trim_start_matches(':').is_empty()
            && !parts[1].trim_start_matches(':').contains(':')
            && !entry.chars().any(forbidden);
        if !entry_ok {
            return Err(LispAppError::Entry(entry));
        }
        Ok(LispApp { system, entry })
    }
}

/// How the system's dependencies are loaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum Loader {
    /// `asdf:load-system` with Debian's (or any registered) libraries.
    Asdf,
    /// `ql:quickload` after loading this `setup.lisp` (usually `~/quicklisp/setup.lisp`).
    Quicklisp { setup: PathBuf },
    /// `ql:quickload` after loading the project's `.qlot/setup.lisp`.
    Qlot { setup: PathBuf },
}

impl Loader {
    /// `.qlot/setup.lisp` in the project wins, then `HOME/quicklisp/setup.lisp`, else ASDF.
    pub fn detect(project_dir: &Path, home: Option<&Path>) -> Loader {
        let qlot = project_dir.join(".qlot").join("setup.lisp");
        if qlot.is_file() {
            return Loader::Qlot { setup: qlot };
        }
        if let Some(setup) = home
            .map(|h| h.join("quicklisp").join("setup.lisp"))
            .filter(|p| p.is_file())
        {
            return Loader::Quicklisp { setup };
        }
        Loader::Asdf
    }
}

/// Knobs for running from source. `Default` gives `sbcl` from `PATH`, no swank, the
/// project's `.windlass/cache`, the runtime's stop timeout, and a detected loader.
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// The SBCL binary (default `sbcl`).
    pub sbcl: Option<PathBuf>,
    /// Start swank on 127.0.0.1 at this port (0 = any; read the announcement line).
    pub swank_port: Option<u16>,
    /// The fasl cache (`XDG_CACHE_HOME`); default `<project>/.windlass/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Grace for in-flight requests on SIGTERM; keep it below the supervisor's stop timeout.
    pub stop_timeout: Option<Duration>,
    /// Override loader detection.
    pub loader: Option<Loader>,
    /// `--dynamic-space-size` in MiB.
    pub dynamic_space_mib: Option<u32>,
}

/// What to spawn: argv\[0\] is the program; `env` is added to the inherited environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchCommand {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// Building the launch command failed.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error("path {0:?} is not valid UTF-8; SBCL needs it as a string")]
    NonUtf8Path(PathBuf),
    #[error("project directory {path}: {source}")]
    ProjectDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Detect(#[from] detect::DetectError),
}

/// The argv and environment that run `app` from source in `project_dir`.
///
/// The process loads the system (exit 1 with the condition on stderr if that fails),
/// calls the entry point, and runs until SIGTERM/SIGINT (then exits 0 after draining).
/// The supervisor adds the `port_env` variable. stdin should be `/dev/null`.
pub fn source_command(
    app: &LispApp,
    project_dir: &Path,
    options: &SourceOptions,
) -> Result<LaunchCommand, LauncherError> {
    let project_dir =
        std::fs::canonicalize(project_dir).map_err(|source| LauncherError::ProjectDir {
            path: project_dir.to_path_buf(),
            source,
        })?;
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let loader = options
        .loader
        .clone()
        .unwrap_or_else(|| Loader::detect(&project_dir, home.as_deref()));
    let code = launcher_source(app, &project_dir, &loader, options.swank_port.is_some())?;
    let sbcl = options
        .sbcl
        .clone()
        .unwrap_or_else(|| PathBuf::from("sbcl"));
    let mut argv = vec![utf8(&sbcl)?];
    argv.extend(runtime_options(options.dynamic_space_mib));
    argv.extend(
        [
            "--no-sysinit",
            "--no-userinit",
            "--non-interactive",
            "--eval",
            "(require :asdf)",
            "--eval",
        ]
        .map(String::from),
    );
    argv.push(load_string_form(&code));

    let cache = options
        .cache_dir
        .clone()
        .unwrap_or_else(|| project_dir.join(".windlass").join("cache"));
    let mut env = vec![(ENV_XDG_CACHE_HOME.to_string(), utf8(&cache)?)];
    if let Some(port) = options.swank_port {
        env.push((ENV_SWANK_PORT.to_string(), port.to_string()));
    }
    if let Some(timeout) = options.stop_timeout {
        env.push((
            ENV_STOP_TIMEOUT.to_string(),
            format!("{:.3}", timeout.as_secs_f64()),
        ));
    }
    Ok(LaunchCommand { argv, env })
}

/// SBCL runtime options shared by source runs and builds: no banner, no LDB, exit on
/// heap corruption instead of entering the monitor.
pub(crate) fn runtime_options(dynamic_space_mib: Option<u32>) -> Vec<String> {
    let mut argv: Vec<String> = ["--noinform", "--disable-ldb", "--lose-on-corruption"]
        .map(String::from)
        .to_vec();
    if let Some(mib) = dynamic_space_mib {
        argv.push("--dynamic-space-size".into());
        argv.push(mib.to_string());
    }
    argv.push("--end-runtime-options".into());
    argv
}

/// A form that loads `code` form by form (so symbols of packages created by earlier
/// forms can be read by later ones), without a file on disk.
pub(crate) fn load_string_form(code: &str) -> String {
    format!(
        "(with-input-from-string (windlass-launcher-source {}) (load windlass-launcher-source))",
        Sexp::string_literal(code)
    )
}

/// The Lisp source the run-from-source process evaluates: the runtime, loading the
/// system, optionally swank, then `run`.
pub fn launcher_source(
    app: &LispApp,
    project_dir: &Path,
    loader: &Loader,
    with_swank: bool,
) -> Result<String, LauncherError> {
    let mut code = prelude(app, project_dir, loader, with_swank, "for this app")?;
    code.push_str(&format!(
        "(windlass-launcher:run {})\n",
        Sexp::string_literal(&app.entry)
    ));
    Ok(code)
}

/// What every generated script starts with: the runtime, then loading the system (and
/// swank when asked). `what` names the script in its header comment.
pub(crate) fn prelude(
    app: &LispApp,
    project_dir: &Path,
    loader: &Loader,
    swank: bool,
    what: &str,
) -> Result<String, LauncherError> {
    let mut code = String::from(RUNTIME_LISP);
    code.push_str(&format!("\n;;; Generated by windlass {what}.\n"));
    code.push_str(&load_project_form(app, project_dir, loader)?);
    code.push('\n');
    if swank {
        code.push_str("(windlass-launcher:load-swank)\n");
    }
    Ok(code)
}

/// `(windlass-launcher:load-project ...)` for `app` in `project_dir`.
pub(crate) fn load_project_form(
    app: &LispApp,
    project_dir: &Path,
    loader: &Loader,
) -> Result<String, LauncherError> {
    let mut dirs = detect::asd_directories(project_dir)?;
    if !dirs.iter().any(|d| d == project_dir) {
        dirs.insert(0, project_dir.to_path_buf());
    }
    let dirs = dirs
        .iter()
        .map(|d| utf8(d).map(|s| Sexp::string_literal(&format!("{}/", s.trim_end_matches('/')))))
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    let (loader_kw, setup) = match loader {
        Loader::Asdf => (":asdf", "nil".to_string()),
        Loader::Quicklisp { setup } => (":quicklisp", Sexp::string_literal(&utf8(setup)?)),
        Loader::Qlot { setup } => (":qlot", Sexp::string_literal(&utf8(setup)?)),
    };
    Ok(format!(
        "(windlass-launcher:load-project {} :directories (list {dirs}) :loader {loader_kw} :setup-file {setup})",
        Sexp::string_literal(&app.system)
    ))
}

pub(crate) fn utf8(path: &Path) -> Result<String, LauncherError> {
    path.to_str()
        .map(str::to_string)
        .ok_or_else(|| LauncherError::NonUtf8Path(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lisp::sexp;

    fn example_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp")
    }

    #[test]
    fn app_names_are_validated() {
        assert!(LispApp::new("hello-lisp", "hello-lisp:main").is_ok());
        assert!(LispApp::new("hello-lisp", "hello-lisp::main").is_ok());
        assert!(LispApp::new("a/b", "p:f").is_ok());
        for (system, entry) in [
            ("", "p:f"),
            ("x y", "p:f"),
            ("x\"", "p:f"),
            ("x", "main"),
            ("x", ":main"),
            ("x", "p:"),
            ("x", "p:f\")(run"),
            ("x", "p:a:b"),
            ("x", "p:#.(boom)"),
        ] {
            assert!(LispApp::new(system, entry).is_err(), "{system:?} {entry:?}");
        }
    }

    #[test]
    fn source_command_shape() {
        let app = LispApp::new("hello-lisp", "hello-lisp:main").expect("valid");
        let options = SourceOptions {
            swank_port: Some(0),
            stop_timeout: Some(Duration::from_millis(2500)),
            cache_dir: Some(PathBuf::from("/tmp/cache")),
            loader: Some(Loader::Asdf),
            ..SourceOptions::default()
        };
        let cmd = source_command(&app, &example_dir(), &options).expect("builds");
        assert_eq!(cmd.argv[0], "sbcl");
        assert!(cmd.argv.contains(&"--non-interactive".to_string()));
        assert!(cmd.argv.contains(&"--disable-ldb".to_string()));
        let end = cmd
            .argv
            .iter()
            .position(|a| a == "--end-runtime-options")
            .expect("present");
        assert!(
            cmd.argv
                .iter()
                .position(|a| a == "--lose-on-corruption")
                .expect("present")
                < end
        );
        assert!(
            cmd.env
                .contains(&("XDG_CACHE_HOME".into(), "/tmp/cache".into()))
        );
        assert!(
            cmd.env
                .contains(&("WINDLASS_SWANK_PORT".into(), "0".into()))
        );
        assert!(
            cmd.env
                .contains(&("WINDLASS_STOP_TIMEOUT".into(), "2.500".into()))
        );
        // The last argument is one readable form.
        let last = cmd.argv.last().expect("non-empty");
        let form = sexp::parse(last).expect("the load form is readable");
        let text = form
            .as_list()
            .and_then(|l| l[1].as_list())
            .and_then(|l| l[1].as_str())
            .expect("embedded source");
        assert!(text.contains("(windlass-launcher:load-swank)"));
        assert!(text.ends_with("(windlass-launcher:run \"hello-lisp:main\")\n"));
    }

    #[test]
    fn loader_detection_prefers_qlot() {
        let dir = std::env::temp_dir().join(format!("windlass-loader-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".qlot")).expect("mkdir");
        std::fs::create_dir_all(dir.join("home/quicklisp")).expect("mkdir");
        std::fs::write(dir.join("home/quicklisp/setup.lisp"), "").expect("write");
        assert!(matches!(
            Loader::detect(&dir, Some(&dir.join("home"))),
            Loader::Quicklisp { .. }
        ));
        std::fs::write(dir.join(".qlot/setup.lisp"), "").expect("write");
        assert!(matches!(
            Loader::detect(&dir, Some(&dir.join("home"))),
            Loader::Qlot { .. }
        ));
        assert_eq!(Loader::detect(&dir.join("home"), None), Loader::Asdf);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
