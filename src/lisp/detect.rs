//! ASDF project detection for `windlass init` and for the launcher. It owns reading a
//! project directory (never writing it): the `.asd` files and primary system, how the
//! dependencies load (Qlot, Quicklisp or plain ASDF), what the sources reveal (an entry
//! function, a health route, `PROJECT_PORT`, `:build-operation`), and rendering that as a
//! commented `windlass.toml` snippet. Detection is text scanning, not Lisp evaluation, so
//! it is quick, safe on untrusted checkouts and bounded in files, bytes and depth.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Directories never scanned: VCS data, dependency trees, windlass's own state.
const SKIP_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".qlot",
    ".windlass",
    "node_modules",
    "target",
    "quicklisp",
];
const MAX_DEPTH: usize = 6;
const MAX_FILES: usize = 2000;
const MAX_FILE_BYTES: u64 = 1 << 20;
/// Candidate static asset directories, in the order they are reported.
pub const ASSET_DIR_CANDIDATES: &[&str] = &["static", "assets", "public"];

/// What detection found in a Common Lisp project directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LispProject {
    /// The directory scanned.
    pub dir: PathBuf,
    /// Every `.asd` file found (sorted), relative paths resolved against `dir`.
    pub asd_files: Vec<PathBuf>,
    /// The primary ASDF system name (lower case).
    pub system: String,
    /// The `.asd` file that defines `system`.
    pub system_file: PathBuf,
    /// A `run.lisp` at the top (the Cookbook's run-from-source script).
    pub has_run_lisp: bool,
    /// A `qlfile` at the top: dependencies come from Qlot (`.qlot/`).
    pub uses_qlot: bool,
    /// `~/quicklisp/setup.lisp` when it exists.
    pub quicklisp_setup: Option<PathBuf>,
    /// The defsystem already has `:build-operation`.
    pub has_build_operation: bool,
    /// The defsystem's `:entry-point`, when it has one.
    pub asd_entry_point: Option<String>,
    /// Some source mentions `PROJECT_PORT` (the Cookbook's variable).
    pub reads_project_port: bool,
    /// The best guess for the entry function, `package:function`.
    pub entry_guess: Option<String>,
    /// A health route found in the sources (`/health`, `/healthz`).
    pub health_path: Option<String>,
    /// Static asset directories present at the top (`static`, `assets`, `public`).
    pub asset_dirs: Vec<String>,
}

/// Reading the project failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Detect a Common Lisp project in `dir`; `Ok(None)` when it has no `.asd` file.
/// `home` is where `quicklisp/setup.lisp` is looked for (usually `$HOME`).
pub fn detect(dir: &Path, home: Option<&Path>) -> Result<Option<LispProject>, DetectError> {
    let files = scan(dir)?;
    let mut asd_files: Vec<PathBuf> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "asd"))
        .cloned()
        .collect();
    asd_files.sort();
    if asd_files.is_empty() {
        return Ok(None);
    }
    let sources: Vec<(PathBuf, String)> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "lisp" || e == "asd"))
        .filter_map(|f| read_small(f).map(|text| (f.clone(), text)))
        .collect();

    let (system_file, system) = primary_system(dir, &asd_files, &sources);
    let asd_text = sources
        .iter()
        .find(|(path, _)| *path == system_file)
        .map(|(_, text)| strip_comments(text))
        .unwrap_or_default();
    let lower = asd_text.to_ascii_lowercase();
    let asd_entry_point = keyword_string(&asd_text, ":entry-point");
    let entry_guess = asd_entry_point.clone().or_else(|| guess_entry(&sources));
    let quicklisp_setup = home
        .map(|h| h.join("quicklisp").join("setup.lisp"))
        .filter(|p| p.is_file());
    Ok(Some(LispProject {
        dir: dir.to_path_buf(),
        has_run_lisp: dir.join("run.lisp").is_file(),
        uses_qlot: dir.join("qlfile").is_file(),
        quicklisp_setup,
        has_build_operation: lower.contains(":build-operation"),
        asd_entry_point,
        reads_project_port: sources
            .iter()
            .any(|(_, text)| text.contains("PROJECT_PORT")),
        entry_guess,
        health_path: ["\"/health\"", "\"/healthz\""]
            .iter()
            .find(|lit| sources.iter().any(|(_, text)| text.contains(*lit)))
            .map(|lit| lit.trim_matches('"').to_string()),
        asset_dirs: ASSET_DIR_CANDIDATES
            .iter()
            .filter(|d| dir.join(d).is_dir())
            .map(|d| d.to_string())
            .collect(),
        asd_files,
        system,
        system_file,
    }))
}

/// Directories holding `.asd` files under `dir` (deduplicated, sorted): what the
/// launcher adds to ASDF's source registry.
pub fn asd_directories(dir: &Path) -> Result<Vec<PathBuf>, DetectError> {
    let mut dirs: Vec<PathBuf> = scan(dir)?
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "asd"))
        .filter_map(|f| f.parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    Ok(dirs)
}

/// Render the commented `[app.NAME]` snippet `windlass init` writes.
pub fn render_toml(project: &LispProject) -> String {
    let name: String = project
        .system
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = if name.is_empty() {
        "lisp".to_string()
    } else {
        name
    };
    let asd = project
        .system_file
        .strip_prefix(&project.dir)
        .unwrap_or(&project.system_file)
        .display()
        .to_string();
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# Common Lisp app: ASDF system {} ({asd}), run with SBCL.",
        toml_string(&project.system)
    );
    let _ = writeln!(
        out,
        "# windlass loads the system, calls `entry` with no arguments (it must read its port from"
    );
    let _ = writeln!(
        out,
        "# the `port_env` variable, start the server and return or block), keeps the process in"
    );
    let _ = writeln!(
        out,
        "# the foreground and stops Hunchentoot gracefully on SIGTERM."
    );
    if project.uses_qlot {
        let _ = writeln!(
            out,
            "# qlfile found: dependencies load from .qlot/ (run `qlot install` first)."
        );
    } else if project.quicklisp_setup.is_some() {
        let _ = writeln!(
            out,
            "# Quicklisp found: dependencies load with ql:quickload."
        );
    }
    if project.has_run_lisp {
        let _ = writeln!(
            out,
            "# run.lisp found: not needed under windlass (command = [\"sbcl\", \"--load\", \"run.lisp\"] also works)."
        );
    }
    if project.has_build_operation {
        let _ = writeln!(
            out,
            "# The .asd has :build-operation; `windlass build` saves the image with its own script anyway."
        );
    }
    let _ = writeln!(out, "[app.{name}]");
    match &project.entry_guess {
        Some(entry) => {
            let _ = writeln!(
                out,
                "lisp = {{ system = {}, entry = {} }}",
                toml_string(&project.system),
                toml_string(entry)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# TODO: no entry function found. Set entry to the function windlass calls at start,"
            );
            let _ = writeln!(
                out,
                "#       e.g. \"my-app:main\": no arguments, reads the port variable, starts the server."
            );
            let _ = writeln!(
                out,
                "lisp = {{ system = {}, entry = \"TODO\" }}",
                toml_string(&project.system)
            );
        }
    }
    let _ = writeln!(out, "port = 8080");
    let port_env = if project.reads_project_port {
        "PROJECT_PORT"
    } else {
        "PORT"
    };
    let _ = writeln!(out, "port_env = \"{port_env}\"");
    match &project.health_path {
        Some(path) => {
            let _ = writeln!(
                out,
                "health = {{ path = {}, start_timeout = \"120s\" }}   # a cold first compile takes ~16 s",
                toml_string(path)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "# No /health route found: add one and set path = \"/health\"."
            );
            let _ = writeln!(
                out,
                "health = {{ start_timeout = \"120s\" }}   # a cold first compile takes ~16 s"
            );
        }
    }
    let _ = writeln!(out, "console = true");
    let _ = writeln!(
        out,
        "# swank_port = 4005    # swank on 127.0.0.1 for `windlass repl` and reload = \"in-place\""
    );
    let _ = writeln!(out, "reload = \"blue-green\"");
    if !project.asset_dirs.is_empty() {
        let _ = writeln!(
            out,
            "# `windlass build` copies {} beside the executable.",
            project.asset_dirs.join(", ")
        );
    }
    out
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Files under `dir`, bounded in depth and count, skipping VCS and state directories.
fn scan(dir: &Path) -> Result<Vec<PathBuf>, DetectError> {
    let mut files = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((current, depth)) = stack.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(source) if depth == 0 => {
                return Err(DetectError::Read {
                    path: current,
                    source,
                });
            }
            Err(_) => continue, // an unreadable subdirectory is not fatal
        };
        let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() {
                if depth < MAX_DEPTH && !SKIP_DIRS.contains(&name.as_ref()) {
                    stack.push((path, depth + 1));
                }
            } else if kind.is_file() {
                files.push(path);
                if files.len() >= MAX_FILES {
                    return Ok(files);
                }
            }
        }
    }
    Ok(files)
}

fn read_small(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_FILE_BYTES {
        return None;
    }
    let bytes = std::fs::read(path).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Drop `;` comments (naively: a `;` inside a string also starts one).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split(';').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The primary system: the top-level `.asd` named like the directory, else the first
/// top-level one that is not a test system, else the first found. Its name is the
/// file stem when the file defines that system, else the file's first defsystem.
fn primary_system(
    dir: &Path,
    asd_files: &[PathBuf],
    sources: &[(PathBuf, String)],
) -> (PathBuf, String) {
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase());
    let stem = |p: &PathBuf| {
        p.file_stem()
            .map(|s| s.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default()
    };
    let top: Vec<&PathBuf> = asd_files
        .iter()
        .filter(|p| p.parent() == Some(dir))
        .collect();
    let is_test = |p: &PathBuf| {
        let s = stem(p);
        s.ends_with("-test") || s.ends_with("-tests") || s.ends_with("/test")
    };
    let chosen = top
        .iter()
        .find(|p| Some(stem(p)) == dir_name)
        .or_else(|| top.iter().find(|p| !is_test(p)))
        .or_else(|| top.first())
        .copied()
        .or_else(|| asd_files.iter().find(|p| !is_test(p)))
        .or_else(|| asd_files.first())
        .cloned()
        .unwrap_or_default();
    let text = sources
        .iter()
        .find(|(path, _)| *path == chosen)
        .map(|(_, text)| strip_comments(text))
        .unwrap_or_default();
    let names = defsystem_names(&text);
    let file_stem = stem(&chosen);
    let name = if names.contains(&file_stem) || names.is_empty() {
        file_stem
    } else {
        names[0].clone()
    };
    (chosen, name)
}

/// Names of every `(defsystem NAME` / `(asdf:defsystem NAME` in `text`, lower case.
pub fn defsystem_names(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(found) = lower[from..].find("defsystem") {
        let pos = from + found;
        let before = &lower[..pos];
        let after = &lower[pos + "defsystem".len()..];
        from = pos + "defsystem".len();
        // Must be the operator of a form: `(defsystem` or `(pkg:defsystem`.
        let head = before.trim_end_matches(|c: char| {
            c.is_ascii_alphanumeric() || c == '-' || c == '/' || c == ':'
        });
        if !head.ends_with('(') || !after.starts_with(char::is_whitespace) {
            continue;
        }
        if let Some(name) = read_name(after.trim_start()) {
            names.push(name);
        }
    }
    names
}

/// A system or package designator at the start of `text`: `"x"`, `:x`, `#:x` or `x`.
fn read_name(text: &str) -> Option<String> {
    let text = text
        .strip_prefix("#:")
        .or_else(|| text.strip_prefix(':'))
        .unwrap_or(text);
    let name: String = if let Some(quoted) = text.strip_prefix('"') {
        quoted.split('"').next()?.to_string()
    } else {
        text.chars()
            .take_while(|c| !c.is_whitespace() && !matches!(c, '(' | ')' | '"' | '\''))
            .collect()
    };
    (!name.is_empty()).then_some(name)
}

/// The string after `key` in a defsystem, e.g. `:entry-point "app:main"`.
fn keyword_string(text: &str, key: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let pos = lower.find(key)?;
    let after = text[pos + key.len()..].trim_start();
    let quoted = after.strip_prefix('"')?;
    let value = quoted.split('"').next()?.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Look for `(defun main (` then `(defun start (` callable with no arguments, and
/// qualify it with the file's `(in-package ...)`. Uses `pkg:fn` when the name appears
/// in an export list, else `pkg::fn`.
fn guess_entry(sources: &[(PathBuf, String)]) -> Option<String> {
    let exported = |name: &str| {
        sources.iter().any(|(_, text)| {
            let lower = text.to_ascii_lowercase();
            lower.contains("(:export")
                && (lower.contains(&format!("#:{name}"))
                    || lower.contains(&format!(":{name} "))
                    || lower.contains(&format!(":{name})")))
        })
    };
    for wanted in ["main", "start", "start-server"] {
        for (path, text) in sources {
            if path.extension().is_some_and(|e| e == "asd") {
                continue;
            }
            let code = strip_comments(text).to_ascii_lowercase();
            let mut package = None;
            for line in code.lines() {
                let line = line.trim();
                if let Some(rest) = line.strip_prefix("(in-package") {
                    package =
                        read_name(rest.trim_start()).map(|p| p.trim_end_matches(')').to_string());
                }
                let Some(rest) = line.strip_prefix("(defun ") else {
                    continue;
                };
                let rest = rest.trim_start();
                let Some(args) = rest.strip_prefix(wanted).map(str::trim_start) else {
                    continue;
                };
                let Some(args) = args.strip_prefix('(') else {
                    continue;
                };
                let no_required = args.starts_with(')') || args.starts_with('&');
                if let (true, Some(pkg)) = (no_required, &package) {
                    let sep = if exported(wanted) { ":" } else { "::" };
                    return Some(format!("{pkg}{sep}{wanted}"));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(files: &[(&str, &str)]) -> (tempdir::Dir, PathBuf) {
        let dir = tempdir::Dir::new("detect");
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
            std::fs::write(&path, text).expect("write");
        }
        let root = dir.path().to_path_buf();
        (dir, root)
    }

    /// A tiny self-cleaning temp dir (no extra dependencies).
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicUsize, Ordering};
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new(prefix: &str) -> Dir {
                static N: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "windlass-{prefix}-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&path).expect("mkdir temp");
                Dir(path)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn detects_the_example_app() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp");
        let found = detect(&dir, None)
            .expect("readable")
            .expect("a lisp project");
        assert_eq!(found.system, "hello-lisp");
        assert_eq!(found.entry_guess.as_deref(), Some("hello-lisp:main"));
        assert_eq!(found.health_path.as_deref(), Some("/health"));
        assert_eq!(found.asset_dirs, vec!["static".to_string()]);
        assert!(!found.has_build_operation && !found.uses_qlot && !found.reads_project_port);
        let toml = render_toml(&found);
        assert!(toml.contains("[app.hello-lisp]"), "{toml}");
        assert!(
            toml.contains(r#"lisp = { system = "hello-lisp", entry = "hello-lisp:main" }"#),
            "{toml}"
        );
        assert!(
            toml.contains(r#"health = { path = "/health", start_timeout = "120s" }"#),
            "{toml}"
        );
        assert!(
            toml.contains("port_env = \"PORT\"") && toml.contains("# swank_port"),
            "{toml}"
        );
    }

    #[test]
    fn cookbook_style_project() {
        let (_guard, dir) = project(&[
            (
                "myapp.asd",
                "(asdf:defsystem #:my-app\n  :build-operation \"program-op\"\n  :entry-point \"my-app:main\"\n  :components ((:file \"app\")))\n",
            ),
            (
                "app.lisp",
                "(in-package :my-app)\n(defun find-port () (uiop:getenv \"PROJECT_PORT\"))\n",
            ),
            ("run.lisp", "(load \"myapp.asd\")"),
            ("qlfile", "ql hunchentoot"),
        ]);
        let found = detect(&dir, None)
            .expect("readable")
            .expect("a lisp project");
        assert_eq!(
            found.system, "my-app",
            "the defsystem name wins over a different stem"
        );
        assert!(
            found.has_build_operation
                && found.uses_qlot
                && found.has_run_lisp
                && found.reads_project_port
        );
        assert_eq!(found.entry_guess.as_deref(), Some("my-app:main"));
        let toml = render_toml(&found);
        assert!(toml.contains("port_env = \"PROJECT_PORT\""), "{toml}");
        assert!(
            toml.contains("health = { start_timeout = \"120s\" }"),
            "{toml}"
        );
        assert!(toml.contains("qlfile"), "{toml}");
    }

    #[test]
    fn entry_guess_needs_a_zero_argument_function() {
        let (_guard, dir) = project(&[
            (
                "svc.asd",
                "(defsystem \"svc\" :components ((:file \"a\") (:file \"b\")))",
            ),
            ("a.lisp", "(in-package #:svc)\n(defun main (port) port)\n"),
            (
                "b.lisp",
                "(in-package #:svc)\n(defun start (&key (port 8080)) port)\n",
            ),
        ]);
        let found = detect(&dir, None)
            .expect("readable")
            .expect("a lisp project");
        assert_eq!(found.entry_guess.as_deref(), Some("svc::start"));
    }

    #[test]
    fn missing_entry_leaves_a_todo() {
        let (_guard, dir) = project(&[("x.asd", "(defsystem :x)")]);
        let found = detect(&dir, None)
            .expect("readable")
            .expect("a lisp project");
        assert_eq!(found.entry_guess, None);
        let toml = render_toml(&found);
        assert!(toml.contains("# TODO: no entry function found"), "{toml}");
        assert!(toml.contains("entry = \"TODO\""), "{toml}");
    }

    #[test]
    fn no_asd_is_not_a_lisp_project() {
        let (_guard, dir) = project(&[("main.py", "print(1)")]);
        assert!(detect(&dir, None).expect("readable").is_none());
        assert!(detect(&dir.join("missing"), None).is_err());
    }

    #[test]
    fn defsystem_name_forms() {
        assert_eq!(
            defsystem_names("(defsystem \"a\")(asdf:defsystem :b)(asdf/defsystem:defsystem #:c)"),
            vec!["a", "b", "c"]
        );
        assert!(defsystem_names("(defsystem-depends-on x) defsystem y").is_empty());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
