//! `windlass export docker`: a multi-stage Dockerfile for the project's stack and its
//! `.dockerignore`.
//!
//! The build stage has the toolchain (SBCL and Debian's `cl-*` libraries with `windlass build`,
//! which saves the image the way ASDF's `program-op` does; cargo; npm; pip); the runtime stage
//! is a slim Debian (or the language's slim image) where windlass runs as PID 1 as a non-root
//! user: it reaps orphaned processes ([`crate::supervisor::reaper`]) and stops every app
//! gracefully on the `STOPSIGNAL`. The image runs a *container config*
//! ([`container_config`]): the project's `windlass.toml` with what only makes sense on a
//! developer's machine replaced (`cargo run` by the built binary, a Lisp app's sources by its
//! built release, `env_file` dropped: secrets come from `docker run --env-file`, never from
//! the image). The windlass binary that exported the files is copied beside them, so the
//! image runs the same version.

use std::path::Path;

use super::{ExportError, Generated, max_over, project_name};
use crate::config::{Config, Source};

/// Where the container config and the windlass binary go, relative to the project.
pub const SUPPORT_DIR: &str = ".windlass/docker";
/// The runtime user's uid (a fixed one, so volume permissions can be set ahead).
const UID: u32 = 10001;

/// The stack a Dockerfile is written for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stack {
    /// Common Lisp on SBCL; the Debian packages of its ASDF dependencies.
    Lisp { packages: Vec<String> },
    /// A Cargo package; `locked` when it has a Cargo.lock.
    Rust { locked: bool },
    /// npm; `lock` when it has a package-lock.json (then `npm ci`).
    Node { lock: bool },
    /// pip: `requirements.txt`, else a `pyproject.toml` installed as a package, else nothing.
    Python { requirements: bool, pyproject: bool },
}

impl Stack {
    pub fn name(&self) -> &'static str {
        match self {
            Stack::Lisp { .. } => "Common Lisp",
            Stack::Rust { .. } => "Rust",
            Stack::Node { .. } => "Node.js",
            Stack::Python { .. } => "Python",
        }
    }
}

/// Tells the stack from the config (a `lisp` app) and the project's files.
pub fn detect(config: &Config) -> Result<Stack, ExportError> {
    let root = &config.root;
    let has = |f: &str| root.join(f).is_file();
    if config.apps.iter().any(|a| a.lisp.is_some()) || has_ext(root, "asd") {
        return Ok(Stack::Lisp {
            packages: lisp_packages(root),
        });
    }
    if has("Cargo.toml") {
        return Ok(Stack::Rust {
            locked: has("Cargo.lock"),
        });
    }
    if has("package.json") {
        return Ok(Stack::Node {
            lock: has("package-lock.json"),
        });
    }
    let python_cmd = config.apps.iter().any(|a| {
        a.argv.iter().any(|w| {
            let w = w.rsplit('/').next().unwrap_or(w);
            w.starts_with("python") || w == "gunicorn" || w == "uvicorn"
        })
    });
    if has("requirements.txt") || has("pyproject.toml") || has_ext(root, "py") || python_cmd {
        return Ok(Stack::Python {
            requirements: has("requirements.txt"),
            pyproject: has("pyproject.toml"),
        });
    }
    Err(ExportError::Unsupported {
        what: format!(
            "cannot tell the stack of {}: no .asd, Cargo.toml, package.json, requirements.txt, pyproject.toml or .py file",
            root.display()
        ),
        hint: "windlass export docker knows Common Lisp (SBCL), Rust, Node.js and Python projects"
            .into(),
    })
}

fn has_ext(dir: &Path, ext: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.path().extension().is_some_and(|x| x == ext))
    })
}

/// Debian's `cl-NAME` packages for the `:depends-on` of the project's `.asd` files (systems
/// that come with SBCL, and the project's own, left out).
fn lisp_packages(root: &Path) -> Vec<String> {
    let mut own = Vec::new();
    let mut deps = Vec::new();
    for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "asd") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            own.extend(crate::lisp::detect::defsystem_names(&text));
            deps.extend(asd_depends(&text));
        }
    }
    let mut out: Vec<String> = deps
        .into_iter()
        .filter(|d| !own.contains(d) && !bundled(d))
        .map(|d| {
            if d.starts_with("cl-") {
                d
            } else {
                format!("cl-{d}")
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn bundled(system: &str) -> bool {
    system == "asdf" || system == "uiop" || system.starts_with("sb-")
}

/// The system names of every `:depends-on (...)` in an `.asd` text: `#:x`, `:x`, `"x"` or
/// `x`, and the name inside `(:version x ...)` / `(:feature f x)` forms.
pub fn asd_depends(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut out = Vec::new();
    let mut rest = lower.as_str();
    while let Some(i) = rest.find(":depends-on") {
        rest = &rest[i + ":depends-on".len()..];
        let Some(open) = rest.find('(') else { break };
        if !rest[..open].trim().is_empty() {
            continue;
        }
        let body = &rest[open + 1..];
        let mut depth = 0usize;
        let mut end = body.len();
        for (j, c) in body.char_indices() {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => {
                    end = j;
                    break;
                }
                ')' => depth -= 1,
                _ => {}
            }
        }
        let list = &body[..end];
        let mut words: Vec<&str> = Vec::new();
        for w in list.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
            let w = w
                .trim_start_matches("#:")
                .trim_start_matches(':')
                .trim_matches('"');
            if !w.is_empty() && !matches!(w, "version" | "feature" | "require") {
                // A version string ("1.2") is not a system.
                if !w.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                    words.push(w);
                }
            }
        }
        out.extend(words.into_iter().map(String::from));
        rest = &body[end..];
    }
    out
}

/// The Dockerfile, the `.dockerignore` and the container config (under [`SUPPORT_DIR`];
/// absent for a Procfile project, which runs as it is).
pub fn generate(config: &Config, stack: &Stack) -> Result<Vec<Generated>, ExportError> {
    let mut files = vec![
        Generated {
            name: "Dockerfile".into(),
            contents: dockerfile(config, stack),
        },
        Generated {
            name: ".dockerignore".into(),
            contents: dockerignore(config),
        },
    ];
    if config.source == Source::Toml {
        files.push(Generated {
            name: format!("{SUPPORT_DIR}/windlass.toml"),
            contents: container_config(config)?,
        });
    }
    Ok(files)
}

/// The config the image runs: `config`'s file with `env_file` dropped (secrets are passed
/// at run time), `cargo run ...` replaced by the built binary and Lisp apps set to run their
/// latest built release. Comments are not kept: the project's file stays the one to edit.
pub fn container_config(config: &Config) -> Result<String, ExportError> {
    let text = std::fs::read_to_string(&config.file).map_err(|source| ExportError::Read {
        path: config.file.clone(),
        source,
    })?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| ExportError::Unsupported {
        what: format!("cannot read {}: {e}", config.file.display()),
        hint: "run `windlass check`".into(),
    })?;
    if let Some(toml::Value::Table(apps)) = table.get_mut("app") {
        for (name, app) in apps.iter_mut() {
            let Some(app) = app.as_table_mut() else {
                continue;
            };
            app.remove("env_file");
            if app.contains_key("lisp") && !app.contains_key("release") {
                app.insert("release".into(), toml::Value::String("latest".into()));
            }
            let argv = config.app(name).map(|a| a.argv.clone()).unwrap_or_default();
            if let Some(bin) = cargo_run_binary(&argv, &config.root) {
                app.insert(
                    "command".into(),
                    toml::Value::Array(vec![toml::Value::String(format!("target/release/{bin}"))]),
                );
                app.remove("shell");
            }
        }
    }
    let body = toml::to_string(&table).map_err(|e| ExportError::Unsupported {
        what: format!("cannot write the container config: {e}"),
        hint: "report this as a bug".into(),
    })?;
    Ok(format!(
        "# Generated by `windlass export docker` from {}: the config the image runs.\n# Edit the project's windlass.toml and export again.\n\n{body}",
        config
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ))
}

/// The binaries the apps run from `target/release/` (directly, or through `cargo run`).
fn rust_binaries(config: &Config) -> Vec<String> {
    let mut bins: Vec<String> = config
        .apps
        .iter()
        .filter_map(|a| {
            cargo_run_binary(&a.argv, &config.root).or_else(|| {
                let first = a.argv.first()?;
                let bin = first
                    .strip_prefix("./")
                    .unwrap_or(first)
                    .strip_prefix("target/release/")?;
                (!bin.contains('/')).then(|| bin.to_owned())
            })
        })
        .collect();
    bins.sort();
    bins.dedup();
    bins
}

/// The binary `cargo run --release [--bin X]` runs, when `argv` is that.
fn cargo_run_binary(argv: &[String], root: &Path) -> Option<String> {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    if words.first() != Some(&"cargo") || words.get(1) != Some(&"run") {
        return None;
    }
    if let Some(i) = words.iter().position(|w| *w == "--bin") {
        return words.get(i + 1).map(|s| (*s).to_owned());
    }
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(root.join("Cargo.toml")).ok()?).ok()?;
    Some(manifest.get("package")?.get("name")?.as_str()?.to_owned())
}

fn dockerignore(config: &Config) -> String {
    let mut s = String::from(
        "# Generated by `windlass export docker`: kept out of the build context.\n\
         .git\n\
         # windlass's state (logs, sockets, caches), except the files the Dockerfile copies\n\
         .windlass/*\n\
         !.windlass/docker/\n\
         # build output and dependencies, rebuilt inside the image\n\
         target/\n\
         node_modules/\n\
         __pycache__/\n\
         *.pyc\n\
         .venv/\n\
         # secrets: pass them with `docker run --env-file`, never in an image\n\
         .env\n\
         .env.*\n",
    );
    for app in &config.apps {
        if let Some(f) = &app.env_file {
            if let Ok(rel) = f.strip_prefix(&config.root) {
                let line = format!("{}\n", rel.display());
                if !s.contains(&format!("\n{line}")) {
                    s.push_str(&line);
                }
            }
        }
    }
    s
}

/// The HEALTHCHECK command: the admin listener's status API (it answers while the
/// supervisor runs; windlass itself restarts failing apps), or the control socket when the
/// admin listener is off or on a port chosen at start.
fn healthcheck(config: &Config) -> String {
    match config.admin.listen {
        Some(a) if a.port() != 0 => {
            let host = if a.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else if a.is_ipv6() {
                format!("[{}]", a.ip())
            } else {
                a.ip().to_string()
            };
            format!(
                "[\"curl\", \"-fsS\", \"-o\", \"/dev/null\", \"http://{host}:{}/api/v1/status\"]",
                a.port()
            )
        }
        _ => "[\"windlass\", \"status\"]".into(),
    }
}

fn dockerfile(config: &Config, stack: &Stack) -> String {
    let name = project_name(config);
    let stop = max_over(config, |a| a.stop.timeout) + 10;
    let start = max_over(config, |a| a.health.start_timeout).max(10);
    let ports: Vec<u16> = config.apps.iter().filter_map(|a| a.port).collect();
    let publish: String = ports.iter().map(|p| format!(" -p {p}:{p}")).collect();
    let support = SUPPORT_DIR;
    let toml_copy = if config.source == Source::Toml {
        format!("COPY {support}/windlass.toml ./windlass.toml\n")
    } else {
        String::new()
    };
    let mut d = format!(
        "# syntax=docker/dockerfile:1\n\
         # Generated by `windlass export docker` for a {stack} project.\n\
         # A build stage with the toolchain; a slim runtime stage where windlass runs as PID 1\n\
         # (it reaps orphaned processes and stops every app gracefully on SIGTERM), non-root.\n\
         #   docker build -t {name} .\n\
         #   docker run --rm{publish} --env-file .env --stop-timeout {stop} {name}\n\
         # (--stop-timeout: longer than the apps' stop timeouts; --env-file: only if you have one)\n\n",
        stack = stack.name()
    );
    let apt = |pkgs: &str| {
        format!(
            "# Debian's versions move with its point releases; the base image tag is what is pinned.\n\
             # hadolint ignore=DL3008\n\
             RUN apt-get update \\\n && apt-get install -y --no-install-recommends {pkgs} \\\n && rm -rf /var/lib/apt/lists/*"
        )
    };
    let (runtime_base, runtime_pkgs) = match stack {
        Stack::Lisp { packages } => {
            let pkgs = if packages.is_empty() {
                "sbcl ca-certificates".to_owned()
            } else {
                format!("sbcl ca-certificates {}", packages.join(" "))
            };
            d.push_str(&format!(
                "FROM debian:bookworm-slim AS build\n\
                 # SBCL and Debian's packages of the system's ASDF dependencies (cl-NAME); a library\n\
                 # Debian does not have needs Quicklisp or a copy in the project.\n\
                 {}\n\
                 WORKDIR /app\n\
                 COPY {support}/windlass /usr/local/bin/windlass\n\
                 COPY . .\n\
                 {toml_copy}\
                 # ASDF program-op's job: load the system, save one executable (uiop:dump-image)\n\
                 # with its assets under .windlass/releases/; the container config runs it.\n\
                 RUN windlass build\n\n",
                apt(&pkgs)
            ));
            ("debian:bookworm-slim", "curl ca-certificates libzstd1")
        }
        Stack::Rust { locked } => {
            d.push_str(&format!(
                "FROM rust:1-bookworm AS build\n\
                 WORKDIR /app\n\
                 COPY . .\n\
                 RUN cargo build --release{}\n\n",
                if *locked { " --locked" } else { "" }
            ));
            ("debian:bookworm-slim", "curl ca-certificates")
        }
        Stack::Node { lock } => {
            d.push_str(&format!(
                "FROM node:22-bookworm-slim AS build\n\
                 WORKDIR /app\n\
                 COPY package*.json ./\n\
                 RUN {}\n\
                 COPY . .\n\n",
                if *lock {
                    "npm ci --omit=dev"
                } else {
                    "npm install --omit=dev --no-audit --no-fund"
                }
            ));
            ("node:22-bookworm-slim", "curl ca-certificates")
        }
        Stack::Python {
            requirements,
            pyproject,
        } => {
            let install = if *requirements {
                "COPY requirements.txt ./\nRUN pip install --no-cache-dir --prefix=/install -r requirements.txt\nCOPY . .\n"
            } else if *pyproject {
                "COPY . .\nRUN pip install --no-cache-dir --prefix=/install .\n"
            } else {
                "COPY . .\nRUN mkdir -p /install && python -m compileall -q .\n"
            };
            d.push_str(&format!(
                "FROM python:3.12-slim-bookworm AS build\n\
                 WORKDIR /app\n\
                 {install}\n"
            ));
            ("python:3.12-slim-bookworm", "curl ca-certificates")
        }
    };
    d.push_str(&format!("FROM {runtime_base}\n"));
    d.push_str(&format!(
        "# hadolint ignore=DL3008\n\
         RUN apt-get update \\\n && apt-get install -y --no-install-recommends {runtime_pkgs} \\\n && rm -rf /var/lib/apt/lists/* \\\n && useradd --system --uid {UID} --home-dir /app --shell /usr/sbin/nologin windlass \\\n && mkdir -p /app/.windlass \\\n && chown windlass:windlass /app/.windlass\n\
         WORKDIR /app\n\
         COPY {support}/windlass /usr/local/bin/windlass\n"
    ));
    match stack {
        Stack::Lisp { .. } => {
            d.push_str("COPY . .\n");
            d.push_str(&toml_copy);
            d.push_str("COPY --from=build --chown=windlass:windlass /app/.windlass/releases ./.windlass/releases\n");
        }
        Stack::Rust { .. } => {
            d.push_str("COPY . .\n");
            d.push_str(&toml_copy);
            let bins = rust_binaries(config);
            if bins.is_empty() {
                d.push_str("COPY --from=build /app/target/release/ ./target/release/\n");
            }
            for bin in bins {
                d.push_str(&format!(
                    "COPY --from=build /app/target/release/{bin} ./target/release/{bin}\n"
                ));
            }
        }
        Stack::Node { .. } => {
            d.push_str("COPY --from=build /app ./\n");
            d.push_str(&toml_copy);
        }
        Stack::Python { .. } => {
            d.push_str("COPY --from=build /install /usr/local\n");
            d.push_str("COPY . .\n");
            d.push_str(&toml_copy);
        }
    }
    d.push_str(&format!("USER {UID}\n"));
    for p in &ports {
        d.push_str(&format!("EXPOSE {p}\n"));
    }
    d.push_str(&format!(
        "STOPSIGNAL SIGTERM\n\
         HEALTHCHECK --interval=10s --timeout=3s --start-period={start}s --retries=3 \\\n  CMD {}\n\
         ENTRYPOINT [\"/usr/local/bin/windlass\"]\n\
         CMD [\"up\", \"-f\", \"/app/{}\"]\n",
        healthcheck(config),
        config
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "windlass.toml".into())
    ));
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asd_depends_reads_every_spelling() {
        let asd = r#"(defsystem "shop" :depends-on (#:hunchentoot :cl-ppcre "alexandria"
              (:version "uiop" "3.0") bordeaux-threads) :components ((:file "main")))
            (defsystem "shop/test" :depends-on ("shop" "fiveam"))"#;
        assert_eq!(
            asd_depends(asd),
            [
                "hunchentoot",
                "cl-ppcre",
                "alexandria",
                "uiop",
                "bordeaux-threads",
                "shop",
                "fiveam"
            ]
        );
    }

    #[test]
    fn cargo_run_binary_reads_bin_flag() {
        let argv: Vec<String> = ["cargo", "run", "--release", "--bin", "api"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            cargo_run_binary(&argv, Path::new("/nonexistent")).as_deref(),
            Some("api")
        );
        assert_eq!(cargo_run_binary(&["python3".into()], Path::new("/")), None);
    }
}
