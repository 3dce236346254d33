//! The launcher for `lisp = { system, entry }` apps run from source: it owns the argv
//! and environment windlass spawns SBCL with, and the Lisp code that process runs. It
//! is the Cookbook's "Deployment" recipe done right: `--non-interactive` and a disabled
//! debugger so a load error exits non-zero instead of hanging or exiting 0, LDB off and
//! `--lose-on-corruption` so heap exhaustion exits, a per-project fasl cache, the
//! Qlot/Quicklisp/ASDF choice, optional swank, then [`RUNTIME_LISP`]'s `run`, which calls
//! the entry point, keeps the process in the foreground and stops Hunchentoot gracefully
//! on SIGTERM/SIGINT.
//!
//! Two commands per app: the compile step ([`LaunchCommand::compile_argv`], one SBCL that
//! compiles the system, and swank when configured, holding the cache lock, then exits) and
//! the instance ([`LaunchCommand::argv`], which loads the fasls and runs). Both `--load`
//! the runtime from a content-addressed file windlass writes under `.windlass/lisp/`
//! ([`write_runtime_file`]), so the command line is short and names what runs:
//! `sbcl ... --load .../runtime-HASH.lisp --eval (windlass-launcher:start "system" "pkg:entry" ...)`.
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
    /// Where the runtime file goes; default `<project>/.windlass/lisp`.
    pub runtime_dir: Option<PathBuf>,
}

/// What to spawn: argv\[0\] is the program; `env` is added to the inherited environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchCommand {
    /// An instance: load the system's fasls, call the entry point, stay in the foreground.
    pub argv: Vec<String>,
    /// The compile step: compile the system (and swank) into the cache, then exit 0, or
    /// exit 1 with the condition on stderr. Same environment and directory as `argv`.
    pub compile_argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The runtime file both commands load; write it with [`write_runtime_file`] first.
    pub runtime_file: PathBuf,
}

/// What the supervisor needs to run the compile step of an app run from source, beside
/// the instance's argv (the app's `argv`): the compile command and the runtime file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CompileStep {
    pub argv: Vec<String>,
    pub runtime_file: PathBuf,
}

/// The runtime file's name: content-addressed, so windlass versions never overwrite each
/// other's runtime under a running app.
pub fn runtime_file_name() -> String {
    // FNV-1a, 64 bits: stable across Rust versions (unlike `DefaultHasher`).
    let hash = RUNTIME_LISP.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("runtime-{hash:016x}.lisp")
}

/// Writes [`RUNTIME_LISP`] to `path` unless it already holds exactly that: to a temporary
/// file in the same directory, then renamed into place, so an SBCL starting meanwhile
/// reads the whole runtime or finds none.
pub fn write_runtime_file(path: &Path) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == RUNTIME_LISP.as_bytes()) {
        return Ok(());
    }
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the runtime file needs a directory"))?;
    std::fs::create_dir_all(dir)?;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".runtime.tmp-{}-{n}", std::process::id()));
    let written = std::fs::write(&tmp, RUNTIME_LISP).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
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
    #[error("cannot write the Lisp runtime {path}: {source}")]
    RuntimeFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The argv and environment that run `app` from source in `project_dir`, with the runtime
/// file written (see [`plan_source_command`]).
///
/// The process loads the system (exit 1 with the condition on stderr if that fails),
/// calls the entry point, and runs until SIGTERM/SIGINT (then exits 0 after draining).
/// The supervisor adds the `port_env` variable. stdin should be `/dev/null`.
pub fn source_command(
    app: &LispApp,
    project_dir: &Path,
    options: &SourceOptions,
) -> Result<LaunchCommand, LauncherError> {
    let cmd = plan_source_command(app, project_dir, options)?;
    write_runtime_file(&cmd.runtime_file).map_err(|source| LauncherError::RuntimeFile {
        path: cmd.runtime_file.clone(),
        source,
    })?;
    Ok(cmd)
}

/// [`source_command`] without writing anything: config validation uses it, and the
/// supervisor writes the runtime file before the compile step.
pub fn plan_source_command(
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
    let args = project_args(&project_dir, &loader, options.swank_port.is_some())?;
    let layout = crate::layout::Layout::of_root(&project_dir);
    let runtime_file = options
        .runtime_dir
        .clone()
        .unwrap_or_else(|| layout.lisp_dir())
        .join(runtime_file_name());
    let sbcl = sbcl_binary(options.sbcl.as_deref());
    let mut head = vec![utf8(&sbcl)?];
    head.extend(sbcl_options(options.dynamic_space_mib));
    head.push("--load".into());
    head.push(utf8(&runtime_file)?);
    head.push("--eval".into());
    let system = Sexp::string_literal(&app.system);
    let mut argv = head.clone();
    argv.push(format!(
        "(windlass-launcher:start {system} {}{args})",
        Sexp::string_literal(&app.entry)
    ));
    let mut compile_argv = head;
    compile_argv.push(format!("(windlass-launcher:compile-system {system}{args})"));

    let cache = options
        .cache_dir
        .clone()
        .unwrap_or_else(|| layout.cache_dir());
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
    Ok(LaunchCommand {
        argv,
        compile_argv,
        env,
        runtime_file,
    })
}

/// The SBCL binary: the configured one, else `sbcl` from `PATH`.
pub(crate) fn sbcl_binary(configured: Option<&Path>) -> PathBuf {
    configured.map_or_else(|| PathBuf::from("sbcl"), Path::to_path_buf)
}

/// The options every SBCL windlass starts takes after the binary (source runs, compiles
/// and builds): [`runtime_options`], then no init files and no debugger (an error exits).
pub(crate) fn sbcl_options(dynamic_space_mib: Option<u32>) -> Vec<String> {
    let mut argv = runtime_options(dynamic_space_mib);
    argv.extend(["--no-sysinit", "--no-userinit", "--non-interactive"].map(String::from));
    argv
}

/// SBCL runtime options shared by source runs and builds: no banner, no LDB, exit on
/// heap corruption instead of entering the monitor.
fn runtime_options(dynamic_space_mib: Option<u32>) -> Vec<String> {
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

/// What every generated script starts with: the runtime, then loading the system (and
/// swank when asked) holding the cache lock. `what` names the script in its header comment.
pub(crate) fn prelude(
    app: &LispApp,
    project_dir: &Path,
    loader: &Loader,
    swank: bool,
    what: &str,
) -> Result<String, LauncherError> {
    let mut code = String::from(RUNTIME_LISP);
    code.push_str(&format!("\n;;; Generated by windlass {what}.\n"));
    code.push_str(&format!(
        "(windlass-launcher:prepare {}{} :lock t)\n",
        Sexp::string_literal(&app.system),
        project_args(project_dir, loader, swank)?
    ));
    Ok(code)
}

/// The keyword arguments of `prepare`, `start` and `compile-system` for `app` in
/// `project_dir`, each with a leading space: `:directories`, and `:loader`, `:setup-file`
/// and `:swank` when they differ from the defaults.
pub(crate) fn project_args(
    project_dir: &Path,
    loader: &Loader,
    swank: bool,
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
    let mut args = format!(" :directories (list {dirs})");
    match loader {
        Loader::Asdf => {}
        Loader::Quicklisp { setup } => args.push_str(&format!(
            " :loader :quicklisp :setup-file {}",
            Sexp::string_literal(&utf8(setup)?)
        )),
        Loader::Qlot { setup } => args.push_str(&format!(
            " :loader :qlot :setup-file {}",
            Sexp::string_literal(&utf8(setup)?)
        )),
    }
    if swank {
        args.push_str(" :swank t");
    }
    Ok(args)
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
        let cmd = plan_source_command(&app, &example_dir(), &options).expect("builds");
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
        // The runtime is a file; the last argument is one short readable form naming the
        // system and the entry point.
        let load = cmd.argv.iter().position(|a| a == "--load").expect("--load");
        assert_eq!(cmd.argv[load + 1], utf8(&cmd.runtime_file).expect("utf8"));
        assert!(cmd.runtime_file.ends_with(runtime_file_name()));
        let last = cmd.argv.last().expect("non-empty");
        let form = sexp::parse(last).expect("the start form is readable");
        let list = form.as_list().expect("a list");
        assert_eq!(list[1].as_str(), Some("hello-lisp"));
        assert_eq!(list[2].as_str(), Some("hello-lisp:main"));
        assert!(last.starts_with("(windlass-launcher:start "), "{last}");
        assert!(last.ends_with(" :swank t)"), "{last}");
        assert!(cmd.argv.iter().map(String::len).sum::<usize>() < 1024);
        // The compile step runs the same way, with the compile form.
        assert_eq!(
            cmd.compile_argv[..cmd.argv.len() - 1],
            cmd.argv[..cmd.argv.len() - 1]
        );
        let compile = cmd.compile_argv.last().expect("non-empty");
        assert!(
            compile.starts_with("(windlass-launcher:compile-system \"hello-lisp\" :directories"),
            "{compile}"
        );
        assert!(sexp::parse(compile).is_ok());
    }

    #[test]
    fn the_runtime_file_is_content_addressed_and_written_whole() {
        let name = runtime_file_name();
        assert!(
            name.starts_with("runtime-") && name.ends_with(".lisp"),
            "{name}"
        );
        assert_eq!(name.len(), "runtime-".len() + 16 + ".lisp".len());
        let dir = std::env::temp_dir().join(format!("windlass-runtime-{}", std::process::id()));
        let path = dir.join("lisp").join(&name);
        write_runtime_file(&path).expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), RUNTIME_LISP);
        // A damaged file is replaced; no temporary file is left behind.
        std::fs::write(&path, "(oops").expect("damage");
        write_runtime_file(&path).expect("rewrite");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), RUNTIME_LISP);
        let files: Vec<_> = std::fs::read_dir(dir.join("lisp"))
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(files, [std::ffi::OsString::from(&name)]);
        std::fs::remove_dir_all(&dir).expect("cleanup");
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
