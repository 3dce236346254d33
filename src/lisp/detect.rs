//! ASDF project detection for `windlass init` and for the launcher. It owns reading a
//! project directory (never writing it): the `.asd` files and primary system, how the
//! dependencies load (Qlot, Quicklisp or plain ASDF), what the sources reveal (an entry
//! function, a health route, the port variable, `:build-operation`). `windlass init` renders
//! it (src/init/lisp.rs) and the launcher uses its `.asd` scan; there is no other copy.
//! Detection is text scanning, not Lisp evaluation, so it is quick, safe on untrusted
//! checkouts and bounded in files, bytes and depth.

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
    /// The port variable the code reads (`(uiop:getenv "PROJECT_PORT")` and the like).
    pub port_env: Option<String>,
    /// The best guess for the entry function, and why.
    pub entry: Option<EntryGuess>,
    /// A health route found in the sources (`/health`, `/healthz`).
    pub health_path: Option<String>,
    /// Static asset directories present at the top (`static`, `assets`, `public`).
    pub asset_dirs: Vec<String>,
}

/// A guessed entry point: `package:function`, the file defining it and the reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EntryGuess {
    pub entry: String,
    /// The file (relative to the project) it was found in.
    pub file: PathBuf,
    /// Why it was picked, in words ("exported and starts Hunchentoot").
    pub why: String,
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
    let entry = match &asd_entry_point {
        Some(e) => Some(EntryGuess {
            entry: e.clone(),
            file: system_file
                .strip_prefix(dir)
                .unwrap_or(&system_file)
                .to_path_buf(),
            why: "the defsystem's :entry-point".into(),
        }),
        None => guess_entry(dir, &sources),
    };
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
        port_env: port_variable(&sources),
        entry,
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

/// The variable holding the port: the first `getenv "NAME"` (uiop, sb-posix, sb-ext) whose
/// name contains `PORT`, else `PROJECT_PORT` when mentioned at all (the Cookbook's name).
fn port_variable(sources: &[(PathBuf, String)]) -> Option<String> {
    for (_, text) in sources {
        let code = strip_comments(text);
        let lower = code.to_ascii_lowercase();
        let mut from = 0;
        while let Some(found) = lower[from..].find("getenv \"") {
            let start = from + found + "getenv \"".len();
            from = start;
            let name: String = code[start..].chars().take_while(|c| *c != '"').collect();
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if valid && name.to_ascii_uppercase().contains("PORT") {
                return Some(name);
            }
        }
    }
    sources
        .iter()
        .any(|(_, text)| text.contains("PROJECT_PORT"))
        .then(|| "PROJECT_PORT".to_string())
}

/// A `(defun ...)` seen while scanning.
struct Defun {
    package: String,
    name: String,
    /// Callable with no arguments (no required parameters).
    no_required: bool,
    /// Its text up to the next top-level form (lower case, comments stripped).
    body: String,
    file: PathBuf,
}

/// Names that usually start an app, in order of preference.
const ENTRY_NAMES: &[&str] = &["main", "start", "start-server", "start-app"];
/// Calls that start a web server.
const SERVER_STARTS: &[&str] = &["hunchentoot:start", "clack:clackup", "(clackup", "woo:run"];

/// The entry point: a function callable with no arguments, qualified by its file's
/// `(in-package ...)`. In order: an exported one that starts a server (Hunchentoot, Clack,
/// Woo); one named `main`, `start`, `start-server` or `start-app`; any that starts a server.
/// `pkg:fn` when exported, else `pkg::fn`.
fn guess_entry(dir: &Path, sources: &[(PathBuf, String)]) -> Option<EntryGuess> {
    let exports: Vec<String> = sources
        .iter()
        .map(|(_, text)| strip_comments(text).to_ascii_lowercase())
        .filter(|t| t.contains("(:export"))
        .collect();
    let exported = |name: &str| {
        exports.iter().any(|lower| {
            lower.contains(&format!("#:{name} "))
                || lower.contains(&format!("#:{name})"))
                || lower.contains(&format!("#:{name}\n"))
                || lower.contains(&format!(":{name} "))
                || lower.contains(&format!(":{name})"))
                || lower.contains(&format!(":{name}\n"))
        })
    };
    let mut defuns = Vec::new();
    for (path, text) in sources {
        if path.extension().is_some_and(|e| e == "asd") {
            continue;
        }
        let code = strip_comments(text).to_ascii_lowercase();
        let mut package = None;
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("(in-package") {
                package = read_name(rest.trim_start()).map(|p| p.trim_end_matches(')').to_string());
            }
            let Some(rest) = line.strip_prefix("(defun ") else {
                continue;
            };
            let Some(pkg) = &package else { continue };
            let Some(name) = read_name(rest.trim_start()) else {
                continue;
            };
            // `(defun :x` or `(defun "x"`: not a plain symbol, not an entry point.
            let Some(args) = rest.trim_start().strip_prefix(name.as_str()) else {
                continue;
            };
            let Some(args) = args.trim_start().strip_prefix('(') else {
                continue;
            };
            let end = lines[i + 1..]
                .iter()
                .position(|l| l.starts_with('('))
                .map_or(lines.len(), |n| i + 1 + n);
            defuns.push(Defun {
                package: pkg.clone(),
                no_required: args.starts_with(')') || args.starts_with('&'),
                body: lines[i..end].join("\n"),
                name,
                file: path.strip_prefix(dir).unwrap_or(path).to_path_buf(),
            });
        }
    }
    let starts_server = |d: &Defun| SERVER_STARTS.iter().any(|s| d.body.contains(s));
    let callable = || defuns.iter().filter(|d| d.no_required);
    let (found, why) = if let Some(d) = callable().find(|d| exported(&d.name) && starts_server(d)) {
        (d, "exported and starts the web server".to_string())
    } else if let Some(d) = ENTRY_NAMES
        .iter()
        .find_map(|n| callable().find(|d| d.name == *n))
    {
        (d, format!("a function named `{}`", d.name))
    } else {
        let d = callable().find(|d| starts_server(d))?;
        (d, "starts the web server".to_string())
    };
    let sep = if exported(&found.name) { ":" } else { "::" };
    Some(EntryGuess {
        entry: format!("{}{sep}{}", found.package, found.name),
        file: found.file.clone(),
        why,
    })
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

    fn entry(found: &LispProject) -> Option<&str> {
        found.entry.as_ref().map(|e| e.entry.as_str())
    }

    #[test]
    fn detects_the_example_app() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp");
        let found = detect(&dir, None)
            .expect("readable")
            .expect("a lisp project");
        assert_eq!(found.system, "hello-lisp");
        assert_eq!(entry(&found), Some("hello-lisp:main"));
        assert_eq!(found.health_path.as_deref(), Some("/health"));
        assert_eq!(found.asset_dirs, vec!["static".to_string()]);
        assert_eq!(found.port_env.as_deref(), Some("PORT"));
        assert!(!found.has_build_operation && !found.uses_qlot);
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
        assert!(found.has_build_operation && found.uses_qlot && found.has_run_lisp);
        assert_eq!(found.port_env.as_deref(), Some("PROJECT_PORT"));
        assert_eq!(entry(&found), Some("my-app:main"));
        assert_eq!(
            found.entry.as_ref().map(|e| e.file.clone()),
            Some(PathBuf::from("myapp.asd"))
        );
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
        assert_eq!(entry(&found), Some("svc::start"));
    }

    #[test]
    fn an_exported_function_starting_hunchentoot_beats_main() {
        let (_guard, dir) = project(&[
            ("web.asd", "(defsystem \"web\" :components ((:file \"a\")))"),
            (
                "a.lisp",
                "(defpackage :web (:use :cl) (:export #:launch #:main))\n(in-package :web)\n\
                 (defun main () (print :cli))\n\
                 (defun launch (&optional (port (parse-integer (sb-posix:getenv \"WEB_PORT\"))))\n  \
                 (hunchentoot:start (make-instance 'hunchentoot:easy-acceptor :port port)))\n\
                 (defun helper () (hunchentoot:start nil))\n",
            ),
        ]);
        let found = detect(&dir, None)
            .expect("readable")
            .expect("a lisp project");
        assert_eq!(entry(&found), Some("web:launch"));
        assert_eq!(found.port_env.as_deref(), Some("WEB_PORT"));
    }

    #[test]
    fn odd_defun_names_do_not_panic() {
        let (_guard, dir) = project(&[
            ("x.asd", "(defsystem :x)"),
            (
                "a.lisp",
                "(in-package :x)\n(defun :é () 1)\n(defun \"é\" () 1)\n(defun (setf é) (v) v)\n(defun \n(defun main)\n(defun start () (getenv \"é",
            ),
        ]);
        let found = detect(&dir, None)
            .expect("readable")
            .expect("a lisp project");
        assert_eq!(entry(&found), Some("x::start"));
    }

    #[test]
    fn missing_entry_is_none() {
        let (_guard, dir) = project(&[("x.asd", "(defsystem :x)")]);
        let found = detect(&dir, None)
            .expect("readable")
            .expect("a lisp project");
        assert_eq!(found.entry, None);
        assert_eq!(found.port_env, None);
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
}
