//! `windlass build` for ASDF apps: it owns the build script and the build runner that
//! turn a system into one self-contained SBCL executable plus its static assets. The
//! script loads the system like the launcher does, checks that no thread runs (SBCL
//! cannot save an image with threads; the usual cause is a server started at load
//! time), and saves the image with `uiop:dump-image` (what ASDF's `program-op` does)
//! straight to a temporary path, so `asdf:make`'s "output newer than inputs: do nothing"
//! shortcut can never leave a stale executable. The toplevel is the runtime's `run`:
//! disabled debugger, signal handlers, entry point, foreground. Success means exit 0
//! *and* a fresh file, which is then renamed into place; the build has a deadline.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::Mutex;

use crate::lisp::detect::ASSET_DIR_CANDIDATES;
use crate::lisp::launcher::{self, LauncherError, LispApp, Loader};
use crate::lisp::sexp::Sexp;

/// Exit code of the build script when a thread runs at save time.
const EXIT_THREADS_AT_SAVE: i32 = 3;
/// The build log is capped; later lines are counted, not kept.
const MAX_LOG_BYTES: usize = 4 << 20;

/// What to build and how.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub app: LispApp,
    /// The SBCL binary (default `sbcl`).
    pub sbcl: Option<PathBuf>,
    /// Executable file name (default: the system name).
    pub exe_name: Option<String>,
    /// Put swank in the image so `WINDLASS_SWANK_PORT` works at run time.
    pub swank: bool,
    /// The fasl cache (`XDG_CACHE_HOME`); default `<project>/.windlass/cache`.
    pub cache_dir: Option<PathBuf>,
    /// Asset directories relative to the project; `None` = those of `static`, `assets`,
    /// `public` that exist.
    pub assets: Option<Vec<PathBuf>>,
    /// Override loader detection.
    pub loader: Option<Loader>,
    /// Kill the build after this long.
    pub timeout: Duration,
}

impl BuildSpec {
    /// Defaults: no swank, detected assets and loader, a 10 minute deadline.
    pub fn new(app: LispApp) -> BuildSpec {
        BuildSpec {
            app,
            sbcl: None,
            exe_name: None,
            swank: false,
            cache_dir: None,
            assets: None,
            loader: None,
            timeout: Duration::from_secs(600),
        }
    }
}

/// A finished build.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    /// The executable, in the output directory.
    pub exe: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// The asset directories copied beside it.
    pub assets: Vec<PathBuf>,
    /// SBCL's stdout and stderr, interleaved by line.
    pub log: String,
    /// Wall time of the SBCL run.
    pub duration: Duration,
}

/// Why a build failed. Variants that ran SBCL carry its log.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Launcher(#[from] LauncherError),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("asset directory {0} does not exist")]
    MissingAsset(PathBuf),
    #[error("invalid executable name {0:?}")]
    ExeName(String),
    #[error(
        "a thread was running at save time ({threads}): don't start the server (or any thread) at load time; windlass calls the entry point at startup"
    )]
    ThreadsAtSave { threads: String, log: String },
    #[error("loading system {system} failed: {condition}")]
    LoadFailed {
        system: String,
        condition: String,
        log: String,
    },
    #[error("the build did not finish within {after:?}; killed. Last output:\n{tail}")]
    Timeout {
        after: Duration,
        tail: String,
        log: String,
    },
    #[error("sbcl exited with {status}. Last output:\n{tail}")]
    Failed {
        status: String,
        tail: String,
        log: String,
    },
    #[error("sbcl exited 0 but wrote no fresh executable at {path}")]
    NoOutput { path: PathBuf, log: String },
}

impl BuildError {
    /// SBCL's output, when SBCL ran.
    pub fn log(&self) -> Option<&str> {
        match self {
            BuildError::ThreadsAtSave { log, .. }
            | BuildError::LoadFailed { log, .. }
            | BuildError::Timeout { log, .. }
            | BuildError::Failed { log, .. }
            | BuildError::NoOutput { log, .. } => Some(log),
            _ => None,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
    let path = path.to_path_buf();
    move |source| BuildError::Io {
        action,
        path,
        source,
    }
}

/// The Lisp build script: load, check threads, save `app` as an executable at `exe`.
pub fn build_script(
    app: &LispApp,
    project_dir: &Path,
    exe: &Path,
    loader: &Loader,
    swank: bool,
) -> Result<String, LauncherError> {
    let mut code = launcher::prelude(app, project_dir, loader, swank, "build")?;
    code.push_str(&format!(
        "(windlass-launcher:check-savable)
(setf uiop:*image-entry-point*
      (lambda (&rest arguments)
        (declare (ignore arguments))
        (windlass-launcher:run {entry})))
(windlass-launcher:say \"saving executable\")
(uiop:dump-image {exe} :executable t)
",
        entry = Sexp::string_literal(&app.entry),
        exe = Sexp::string_literal(&launcher::utf8(exe)?),
    ));
    Ok(code)
}

/// Build `spec.app` from `project_dir` into `out_dir/<name>` and copy its assets beside it.
pub async fn build(
    spec: &BuildSpec,
    project_dir: &Path,
    out_dir: &Path,
) -> Result<BuildOutput, BuildError> {
    let project_dir = std::fs::canonicalize(project_dir)
        .map_err(io_err("resolving project directory", project_dir))?;
    tokio::fs::create_dir_all(out_dir)
        .await
        .map_err(io_err("creating", out_dir))?;
    let out_dir =
        std::fs::canonicalize(out_dir).map_err(io_err("resolving output directory", out_dir))?;
    let name = spec
        .exe_name
        .clone()
        .unwrap_or_else(|| spec.app.system.replace('/', "-"));
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(BuildError::ExeName(name));
    }
    let assets = asset_dirs(spec, &project_dir)?;
    let exe = out_dir.join(&name);
    let tmp = out_dir.join(format!(".{name}.windlass-build-{}", std::process::id()));
    remove_if_exists(&tmp).await?;

    let home = std::env::var_os("HOME").map(PathBuf::from);
    let loader = spec
        .loader
        .clone()
        .unwrap_or_else(|| Loader::detect(&project_dir, home.as_deref()));
    let script = build_script(&spec.app, &project_dir, &tmp, &loader, spec.swank)?;
    let cache = spec
        .cache_dir
        .clone()
        .unwrap_or_else(|| crate::layout::Layout::of_root(&project_dir).cache_dir());
    let sbcl = launcher::sbcl_binary(spec.sbcl.as_deref());

    let mut command = tokio::process::Command::new(&sbcl);
    command
        .args(launcher::sbcl_options(None))
        .args(["--eval", "(require :asdf)", "--eval"])
        .arg(launcher::load_string_form(&script))
        .env(launcher::ENV_XDG_CACHE_HOME, &cache)
        .env_remove(launcher::ENV_SWANK_PORT)
        .current_dir(&project_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started_wall = SystemTime::now();
    let started = Instant::now();
    tracing::info!(system = %spec.app.system, exe = %exe.display(), "building lisp executable");
    let mut child = command.spawn().map_err(io_err("spawning", &sbcl))?;
    let log = Arc::new(Mutex::new(Log::default()));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| tokio::spawn(collect(s, log.clone()))),
        child
            .stderr
            .take()
            .map(|s| tokio::spawn(collect(s, log.clone()))),
    ];
    let waited = tokio::time::timeout(spec.timeout, child.wait()).await;
    let status = match waited {
        Ok(status) => status.map_err(io_err("waiting for", &sbcl))?,
        Err(_) => {
            // Killing cannot meaningfully fail here; the wait reaps the process.
            let _ = child.start_kill();
            let _ = child.wait().await;
            let _ = remove_if_exists(&tmp).await;
            let log = finish_log(readers, &log).await;
            return Err(BuildError::Timeout {
                after: spec.timeout,
                tail: tail(&log),
                log,
            });
        }
    };
    let duration = started.elapsed();
    let log = finish_log(readers, &log).await;

    if !status.success() {
        let _ = remove_if_exists(&tmp).await;
        return Err(classify_failure(&spec.app.system, status, log));
    }
    let fresh = match tokio::fs::metadata(&tmp).await {
        // Compare with one second of slack: some filesystems keep whole seconds.
        Ok(meta) => {
            meta.is_file()
                && meta.len() > 0
                && meta
                    .modified()
                    .is_ok_and(|m| m + Duration::from_secs(1) >= started_wall)
        }
        Err(_) => false,
    };
    if !fresh {
        return Err(BuildError::NoOutput { path: tmp, log });
    }
    tokio::fs::rename(&tmp, &exe)
        .await
        .map_err(io_err("renaming the new executable to", &exe))?;
    let size = tokio::fs::metadata(&exe)
        .await
        .map_err(io_err("reading", &exe))?
        .len();

    let mut copied = Vec::new();
    for source in assets {
        let file_name = source
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| BuildError::MissingAsset(source.clone()))?;
        let dest = out_dir.join(file_name);
        let (from, to) = (source.clone(), dest.clone());
        tokio::task::spawn_blocking(move || replace_dir(&from, &to))
            .await
            .map_err(|e| BuildError::Io {
                action: "copying",
                path: source.clone(),
                source: std::io::Error::other(e),
            })??;
        copied.push(dest);
    }
    tracing::info!(exe = %exe.display(), size, ?duration, "built lisp executable");
    Ok(BuildOutput {
        exe,
        size,
        assets: copied,
        log,
        duration,
    })
}

fn classify_failure(system: &str, status: std::process::ExitStatus, log: String) -> BuildError {
    if status.code() == Some(EXIT_THREADS_AT_SAVE)
        || log.contains("Cannot save core with multiple threads running")
    {
        let threads = log
            .lines()
            .find_map(|l| {
                l.split_once("windlass-lisp: threads-at-save: ")
                    .map(|(_, t)| t.to_string())
            })
            .unwrap_or_else(|| "see the log".to_string());
        return BuildError::ThreadsAtSave { threads, log };
    }
    if let Some(condition) = log.lines().find_map(|l| {
        l.split_once("windlass-lisp: failed to load system ")
            .and_then(|(_, rest)| rest.split_once(": "))
            .map(|(_, condition)| condition.to_string())
    }) {
        return BuildError::LoadFailed {
            system: system.to_string(),
            condition,
            log,
        };
    }
    BuildError::Failed {
        status: status.to_string(),
        tail: tail(&log),
        log,
    }
}

fn asset_dirs(spec: &BuildSpec, project_dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    match &spec.assets {
        None => Ok(ASSET_DIR_CANDIDATES
            .iter()
            .map(|d| project_dir.join(d))
            .filter(|p| p.is_dir())
            .collect()),
        Some(list) => list
            .iter()
            .map(|rel| {
                let path = project_dir.join(rel);
                if path.is_dir() {
                    Ok(path)
                } else {
                    Err(BuildError::MissingAsset(path))
                }
            })
            .collect(),
    }
}

async fn remove_if_exists(path: &Path) -> Result<(), BuildError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BuildError::Io {
            action: "removing",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replace `to` with a copy of the directory `from` (symlinks are followed, up to a depth).
fn replace_dir(from: &Path, to: &Path) -> Result<(), BuildError> {
    match std::fs::remove_dir_all(to) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(BuildError::Io {
                action: "removing",
                path: to.to_path_buf(),
                source,
            });
        }
    }
    copy_dir(from, to, 0)
}

fn copy_dir(from: &Path, to: &Path, depth: usize) -> Result<(), BuildError> {
    if depth > 32 {
        return Err(BuildError::Io {
            action: "copying (too deep, symlink loop?)",
            path: from.to_path_buf(),
            source: std::io::Error::other("depth limit"),
        });
    }
    std::fs::create_dir_all(to).map_err(io_err("creating", to))?;
    for entry in std::fs::read_dir(from).map_err(io_err("reading", from))? {
        let entry = entry.map_err(io_err("reading", from))?;
        let path = entry.path();
        let target = to.join(entry.file_name());
        let meta = std::fs::metadata(&path).map_err(io_err("reading", &path))?;
        if meta.is_dir() {
            copy_dir(&path, &target, depth + 1)?;
        } else if meta.is_file() {
            std::fs::copy(&path, &target).map_err(io_err("copying", &path))?;
        }
    }
    Ok(())
}

#[derive(Default)]
struct Log {
    text: String,
    dropped_lines: usize,
}

async fn collect(stream: impl AsyncRead + Unpin, log: Arc<Mutex<Log>>) {
    let mut lines = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match lines.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let mut log = log.lock().await;
                if log.text.len() + line.len() > MAX_LOG_BYTES {
                    log.dropped_lines += 1;
                } else {
                    log.text.push_str(line.trim_end_matches(['\n', '\r']));
                    log.text.push('\n');
                }
            }
        }
    }
}

async fn finish_log(
    readers: [Option<tokio::task::JoinHandle<()>>; 2],
    log: &Arc<Mutex<Log>>,
) -> String {
    for reader in readers.into_iter().flatten() {
        // The pipes close when sbcl exits; a grandchild holding them is bounded here.
        let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
    }
    let log = log.lock().await;
    let mut text = log.text.clone();
    if log.dropped_lines > 0 {
        text.push_str(&format!(
            "[windlass: {} more lines not kept]\n",
            log.dropped_lines
        ));
    }
    text
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_saves_to_the_given_path_with_the_runtime_toplevel() {
        let app = LispApp::new("hello-lisp", "hello-lisp:main").expect("valid");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp");
        let script = build_script(&app, &dir, Path::new("/out/.x.tmp"), &Loader::Asdf, true)
            .expect("renders");
        assert!(script.contains("(windlass-launcher:check-savable)"));
        assert!(script.contains("(windlass-launcher:prepare \"hello-lisp\" :directories"));
        assert!(script.contains(" :swank t :lock t)"));
        assert!(script.contains("(windlass-launcher:run \"hello-lisp:main\")"));
        assert!(script.ends_with("(uiop:dump-image \"/out/.x.tmp\" :executable t)\n"));
    }

    #[test]
    fn failures_are_classified() {
        use std::os::unix::process::ExitStatusExt;
        let threads = classify_failure(
            "x",
            std::process::ExitStatus::from_raw(3 << 8),
            "windlass-lisp: threads-at-save: \"server\"\n".into(),
        );
        assert!(
            matches!(&threads, BuildError::ThreadsAtSave { threads, .. } if threads == "\"server\"")
        );
        assert!(threads.to_string().contains("don't start the server"));
        let load = classify_failure(
            "x",
            std::process::ExitStatus::from_raw(1 << 8),
            "noise\nwindlass-lisp: failed to load system x: Component \"y\" not found\n".into(),
        );
        assert!(
            matches!(&load, BuildError::LoadFailed { condition, .. } if condition == "Component \"y\" not found")
        );
        let other = classify_failure("x", std::process::ExitStatus::from_raw(9), "a\nb\n".into());
        assert!(matches!(other, BuildError::Failed { .. }));
    }
}
