//! Project detection for `windlass init`: look at the files of a directory, guess how its web
//! app starts, and render a commented `windlass.toml`.
//!
//! Detection reads files only (never runs anything) and is ordered from the most explicit
//! statement of intent to the least: a `Procfile`, then an ASDF system, Cargo, Node, Python,
//! Ruby (Rack) and Go. What it cannot tell it leaves as a template, and says which line to fill
//! in. Commands run as argv without a shell, so wherever `$PORT` must be expanded on the command
//! line the app gets `shell = true` and a string command starting with `exec` (the shell then
//! becomes the app, so signals reach it directly).

mod lisp;

use std::path::Path;

use serde::Serialize;

/// What kind of project was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Procfile,
    Lisp,
    Rust,
    Node,
    Python,
    Ruby,
    Go,
    Unknown,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Procfile => "Procfile",
            Kind::Lisp => "Common Lisp",
            Kind::Rust => "Rust",
            Kind::Node => "Node.js",
            Kind::Python => "Python",
            Kind::Ruby => "Ruby",
            Kind::Go => "Go",
            Kind::Unknown => "unknown",
        }
    }
}

/// How an app is started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    /// Run as is, no shell.
    Argv(Vec<String>),
    /// One line for `/bin/sh -c` (`shell = true`).
    Shell(String),
    /// A Common Lisp app run by windlass's Lisp runtime (`lisp = { system, entry }`).
    Lisp(LispEntry),
}

/// `lisp = { system, entry }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LispEntry {
    pub system: String,
    pub entry: String,
}

/// One app to write into the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AppPlan {
    pub name: String,
    pub command: Command,
    /// The public port (only for apps that serve HTTP).
    pub port: Option<u16>,
    pub port_env: String,
    /// Comment lines written above the command.
    #[serde(skip)]
    pub comment: Vec<String>,
    /// What the user must fill in on the command line, when detection could not tell.
    pub fill_in: Option<String>,
    /// Further lines (keys or comments) written after the port.
    #[serde(skip)]
    pub extra: Vec<String>,
}

impl AppPlan {
    /// A `web` app on the default port; detection fills in the rest.
    fn web() -> AppPlan {
        AppPlan {
            name: "web".into(),
            command: Command::Argv(Vec::new()),
            port: Some(DEFAULT_PORT),
            port_env: "PORT".into(),
            comment: Vec::new(),
            fill_in: None,
            extra: Vec::new(),
        }
    }
}

/// The port written when none is asked for.
pub const DEFAULT_PORT: u16 = 8080;

/// The result of looking at a directory.
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    pub kind: Kind,
    pub apps: Vec<AppPlan>,
    /// What was found, in words, for the user.
    pub found: Vec<String>,
}

/// A detector: the apps it plans and what it found, or `None` when the project is not its kind.
type Detector = fn(&Path) -> Option<(Vec<AppPlan>, Vec<String>)>;

/// Looks at `dir` and plans its apps. Never fails: an unknown project gets a template.
pub fn detect(dir: &Path) -> Detection {
    let detectors: [(Kind, Detector); 7] = [
        (Kind::Procfile, procfile),
        (Kind::Lisp, |d| lisp::detect(d).map(single)),
        (Kind::Rust, |d| rust(d).map(single)),
        (Kind::Node, |d| node(d).map(single)),
        (Kind::Python, |d| python(d).map(single)),
        (Kind::Ruby, |d| ruby(d).map(single)),
        (Kind::Go, |d| go(d).map(single)),
    ];
    for (kind, f) in detectors {
        if let Some((apps, found)) = f(dir) {
            return Detection { kind, apps, found };
        }
    }
    Detection {
        kind: Kind::Unknown,
        apps: vec![AppPlan {
            command: Command::Argv(vec!["./start-my-app".into(), "--port".into(), "8080".into()]),
            comment: vec![
                "the command that starts your app, as an argv array (no shell);".into(),
                "for $PORT expansion write a string and add `shell = true`".into(),
            ],
            fill_in: Some("the command that starts your app".into()),
            ..AppPlan::web()
        }],
        found: vec!["no known project files (Procfile, *.asd, Cargo.toml, package.json, requirements.txt, pyproject.toml, config.ru, go.mod)".into()],
    }
}

/// A single-app detection as a list of apps.
fn single((app, found): (AppPlan, Vec<String>)) -> (Vec<AppPlan>, Vec<String>) {
    (vec![app], found)
}

/// Each line `name: command` becomes an app run by a shell; `web` gets the port.
fn procfile(dir: &Path) -> Option<(Vec<AppPlan>, Vec<String>)> {
    let text = std::fs::read_to_string(dir.join("Procfile")).ok()?;
    let mut apps = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((name, cmd)) = t.split_once(':') else {
            continue;
        };
        let (name, cmd) = (name.trim(), cmd.trim());
        if !crate::config::valid_app_name(name) || cmd.is_empty() {
            continue;
        }
        let web = name == "web";
        apps.push(AppPlan {
            name: name.into(),
            command: Command::Shell(cmd.into()),
            port: web.then_some(DEFAULT_PORT),
            port_env: "PORT".into(),
            comment: vec![format!("from the Procfile: `{name}: {cmd}`")],
            fill_in: None,
            extra: Vec::new(),
        });
    }
    if apps.is_empty() {
        return None;
    }
    let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
    Some((
        apps.clone(),
        vec![format!("a Procfile with {}", names.join(", "))],
    ))
}

fn rust(dir: &Path) -> Option<(AppPlan, Vec<String>)> {
    let text = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
    let manifest: toml::Table = toml::from_str(&text).ok()?;
    let package = manifest.get("package")?.get("name")?.as_str()?.to_owned();
    let mut bins: Vec<String> = manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|b| b.get("name")?.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if bins.is_empty() && dir.join("src/main.rs").is_file() {
        bins.push(package.clone());
    }
    let bin = bins
        .iter()
        .find(|b| **b == package)
        .or(bins.first())?
        .clone();
    let mut argv: Vec<String> = ["cargo", "run", "--release"].map(String::from).to_vec();
    if bins.len() > 1 {
        argv.extend(["--bin".into(), bin.clone()]);
    }
    let mut found = vec![format!(
        "a Cargo package `{package}` with the binary `{bin}`"
    )];
    if !mentions(dir, &["rs"], "PORT") {
        found.push("no mention of PORT in src/: make the server listen on $PORT".into());
    }
    Some((
        AppPlan {
            command: Command::Argv(argv),
            comment: vec![
                "compiles on first start (the app shows `starting` until it runs);".into(),
                format!("on a server, run the built binary instead: [\"target/release/{bin}\"]"),
            ],
            ..AppPlan::web()
        },
        found,
    ))
}

fn node(dir: &Path) -> Option<(AppPlan, Vec<String>)> {
    let text = std::fs::read_to_string(dir.join("package.json")).ok()?;
    let pkg: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let start = pkg["scripts"]["start"].as_str();
    let main = pkg["main"].as_str().filter(|m| dir.join(m).is_file());
    let (command, found) = match (start, main) {
        (Some(s), _) => match s.split_whitespace().collect::<Vec<_>>()[..] {
            // `node server.js`: run node directly, so signals reach the app, not npm.
            ["node", file] => (
                vec!["node".to_owned(), file.to_owned()],
                format!("package.json start script `{s}`"),
            ),
            _ => (
                vec!["npm".to_owned(), "start".to_owned()],
                format!("package.json start script `{s}`"),
            ),
        },
        (None, Some(m)) => (
            vec!["node".to_owned(), m.to_owned()],
            format!("package.json main `{m}`"),
        ),
        (None, None) => {
            let file = ["server.js", "app.js", "index.js", "main.js"]
                .into_iter()
                .find(|f| dir.join(f).is_file())?;
            (
                vec!["node".to_owned(), file.to_owned()],
                format!("package.json and {file}"),
            )
        }
    };
    let mut found = vec![found];
    if !mentions(dir, &["js", "mjs", "cjs", "ts"], "PORT") {
        found.push(
            "no mention of PORT in the code: make the server listen on process.env.PORT".into(),
        );
    }
    Some((
        AppPlan {
            command: Command::Argv(command),
            ..AppPlan::web()
        },
        found,
    ))
}

fn python(dir: &Path) -> Option<(AppPlan, Vec<String>)> {
    let deps = ["requirements.txt", "pyproject.toml", "Pipfile"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .collect::<Vec<_>>()
        .join("\n")
        .to_ascii_lowercase();
    let has = |name: &str| {
        deps.lines().any(|l| {
            let l = l.trim().trim_start_matches('"');
            l.starts_with(name)
                && !l[name.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
        })
    };
    let scripts = ["app.py", "main.py", "server.py", "wsgi.py", "asgi.py"];
    let any_script = scripts.iter().any(|s| dir.join(s).is_file());
    if deps.is_empty() && !any_script {
        return None;
    }
    let server = if has("gunicorn") {
        Some("gunicorn")
    } else if has("uvicorn") || has("fastapi") {
        Some("uvicorn")
    } else {
        None
    };
    if let Some(server) = server {
        let target = find_python_app(dir);
        let (target, fill_in) = match target {
            Some(t) => (t, None),
            None => (
                "app:app".to_owned(),
                Some("the `module:variable` of your app object (`app:app` is a guess)".to_owned()),
            ),
        };
        // Neither server expands $PORT from argv; the shell does. `exec` makes the server the
        // process windlass signals.
        let line = if server == "gunicorn" {
            format!("exec gunicorn {target} --bind 127.0.0.1:$PORT")
        } else {
            format!("exec uvicorn {target} --host 127.0.0.1 --port $PORT")
        };
        return Some((
            AppPlan {
                command: Command::Shell(line),
                comment: vec![format!(
                    "{server} serves `{target}`; the shell expands $PORT (hence shell = true)"
                )],
                fill_in,
                ..AppPlan::web()
            },
            vec![format!("a Python app served by {server} ({target})")],
        ));
    }
    let script = scripts.iter().find(|s| dir.join(s).is_file())?;
    let mut found = vec![format!("a Python script {script}")];
    if !mentions(dir, &["py"], "PORT") {
        found.push(format!(
            "{script} does not mention PORT: make it listen on int(os.environ[\"PORT\"])"
        ));
    }
    Some((
        AppPlan {
            command: Command::Argv(vec!["python3".into(), (*script).into()]),
            ..AppPlan::web()
        },
        found,
    ))
}

/// `module:variable` of a WSGI/ASGI app: `app = Flask(...)`, `application = ...` in a
/// top-level module, or a Django-style `PROJECT/wsgi.py`.
fn find_python_app(dir: &Path) -> Option<String> {
    for module in ["app", "main", "wsgi", "asgi", "server", "application"] {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{module}.py"))) else {
            continue;
        };
        for var in ["app", "application"] {
            if text.lines().any(|l| {
                l.strip_prefix(var).is_some_and(|r| {
                    r.trim_start().starts_with('=') && !r.trim_start().starts_with("==")
                })
            }) {
                return Some(format!("{module}:{var}"));
            }
        }
    }
    let mut subdirs: Vec<_> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.path().join("wsgi.py").is_file())
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    subdirs.sort();
    subdirs.first().map(|d| format!("{d}.wsgi:application"))
}

fn ruby(dir: &Path) -> Option<(AppPlan, Vec<String>)> {
    if !dir.join("config.ru").is_file() {
        return None;
    }
    let bundle = dir.join("Gemfile").is_file();
    let line = if bundle {
        "exec bundle exec rackup -p $PORT -o 127.0.0.1"
    } else {
        "exec rackup -p $PORT -o 127.0.0.1"
    };
    Some((
        AppPlan {
            command: Command::Shell(line.into()),
            comment: vec!["rackup serves config.ru; the shell expands $PORT".into()],
            ..AppPlan::web()
        },
        vec![format!(
            "a Rack app (config.ru{})",
            if bundle { " and a Gemfile" } else { "" }
        )],
    ))
}

fn go(dir: &Path) -> Option<(AppPlan, Vec<String>)> {
    let text = std::fs::read_to_string(dir.join("go.mod")).ok()?;
    let module = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("module "))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let mut found = vec![format!("a Go module `{module}`")];
    if !mentions(dir, &["go"], "PORT") {
        found.push(
            "no mention of PORT in the code: make the server listen on os.Getenv(\"PORT\")".into(),
        );
    }
    Some((
        AppPlan {
            command: Command::Argv(["go", "run", "."].map(String::from).to_vec()),
            comment: vec![
                "compiles on start; on a server, `go build` and run the binary instead".into(),
            ],
            ..AppPlan::web()
        },
        found,
    ))
}

/// True when a source file (in `dir`, or one or two levels below, skipping dependency and build
/// directories) with one of `exts` contains `needle`.
fn mentions(dir: &Path, exts: &[&str], needle: &str) -> bool {
    fn walk(dir: &Path, exts: &[&str], needle: &str, depth: u32) -> bool {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return false;
        };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                let skip = name.starts_with('.')
                    || ["node_modules", "target", "venv", "__pycache__", "vendor"]
                        .contains(&name.as_str());
                if depth > 0 && !skip && walk(&p, exts, needle, depth - 1) {
                    return true;
                }
            } else if name
                .rsplit_once('.')
                .is_some_and(|(_, x)| exts.contains(&x))
                && std::fs::read_to_string(&p).is_ok_and(|t| t.contains(needle))
            {
                return true;
            }
        }
        false
    }
    walk(dir, exts, needle, 2)
}

/// A rendered config: its text, and the 1-based lines the user must fill in.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub text: String,
    pub fill_in: Vec<(usize, String)>,
}

/// Renders `detection` as a commented `windlass.toml`; `port` replaces the default port.
pub fn render(detection: &Detection, port: u16) -> Rendered {
    let mut lines: Vec<String> = vec![
        format!(
            "# windlass.toml, written by `windlass init` ({} project).",
            detection.kind.as_str()
        ),
        "# `windlass check` validates it; `windlass up` runs it. Every key: docs/configuration.md"
            .into(),
    ];
    let mut fill_in = Vec::new();
    for app in &detection.apps {
        lines.push(String::new());
        lines.push(format!("[app.{}]", app.name));
        for c in &app.comment {
            lines.push(format!("# {c}"));
        }
        if let Some(f) = &app.fill_in {
            lines.push(format!("# FILL IN on the next line: {f}"));
        }
        match &app.command {
            Command::Argv(argv) => {
                let arr =
                    toml::Value::Array(argv.iter().cloned().map(toml::Value::String).collect());
                lines.push(format!("command = {arr}"));
            }
            Command::Shell(line) => {
                lines.push(format!("command = {}", toml::Value::String(line.clone())));
                lines.push(
                    "shell = true                  # run by /bin/sh -c, so $PORT is expanded"
                        .into(),
                );
            }
            Command::Lisp(l) => {
                lines.push(format!(
                    "lisp = {{ system = {}, entry = {} }}",
                    toml::Value::String(l.system.clone()),
                    toml::Value::String(l.entry.clone())
                ));
            }
        }
        if let Some(f) = &app.fill_in {
            fill_in.push((lines.len(), f.clone()));
        }
        if app.port.is_some() {
            lines.push(format!(
                "port = {port:<23}# the port the app listens on; it learns it from ${}",
                app.port_env
            ));
            lines.push(format!(
                "port_env = {:<19}# the variable that carries the port",
                toml::Value::String(app.port_env.clone()).to_string()
            ));
        }
        lines.extend(app.extra.iter().cloned());
        lines.push("restart = \"always\"            # always | on-failure | never".into());
        lines.push("# instances = 1".into());
        lines.push("# env = { APP_ENV = \"production\" }".into());
        lines.push("# env_file = \".env\"".into());
        lines.push("# stop = { signal = \"SIGTERM\", timeout = \"10s\" }".into());
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Rendered { text, fill_in }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (name, body) in files {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, body).expect("write");
        }
        d
    }

    fn parses(r: &Rendered) -> toml::Table {
        toml::from_str(&r.text).unwrap_or_else(|e| panic!("{e}\n{}", r.text))
    }

    #[test]
    fn gunicorn_gets_a_shell_so_port_expands() {
        let d = dir_with(&[
            ("requirements.txt", "flask==3\ngunicorn>=21\n"),
            ("app.py", "from flask import Flask\napp = Flask(__name__)\n"),
        ]);
        let det = detect(d.path());
        assert_eq!(det.kind, Kind::Python);
        assert_eq!(
            det.apps[0].command,
            Command::Shell("exec gunicorn app:app --bind 127.0.0.1:$PORT".into())
        );
        let t = parses(&render(&det, 9000));
        assert_eq!(t["app"]["web"]["shell"].as_bool(), Some(true));
        assert_eq!(t["app"]["web"]["port"].as_integer(), Some(9000));
    }

    #[test]
    fn gunicorn_plus_is_not_gunicorn() {
        let d = dir_with(&[("requirements.txt", "gunicorn-extras\n"), ("main.py", "")]);
        assert_eq!(
            detect(d.path()).apps[0].command,
            Command::Argv(vec!["python3".into(), "main.py".into()])
        );
    }

    #[test]
    fn django_wsgi_module_is_found() {
        let d = dir_with(&[
            ("requirements.txt", "Django\ngunicorn\n"),
            ("mysite/wsgi.py", "application = get_wsgi_application()\n"),
        ]);
        assert_eq!(
            detect(d.path()).apps[0].command,
            Command::Shell("exec gunicorn mysite.wsgi:application --bind 127.0.0.1:$PORT".into())
        );
    }

    #[test]
    fn node_start_script_with_a_shell_feature_uses_npm() {
        let d = dir_with(&[(
            "package.json",
            r#"{"scripts": {"start": "NODE_ENV=production node server.js"}}"#,
        )]);
        assert_eq!(
            detect(d.path()).apps[0].command,
            Command::Argv(vec!["npm".into(), "start".into()])
        );
    }

    #[test]
    fn rust_with_several_binaries_names_one() {
        let d = dir_with(&[(
            "Cargo.toml",
            "[package]\nname = \"shop\"\n[[bin]]\nname = \"admin\"\n[[bin]]\nname = \"shop\"\n",
        )]);
        assert_eq!(
            detect(d.path()).apps[0].command,
            Command::Argv(
                ["cargo", "run", "--release", "--bin", "shop"]
                    .map(String::from)
                    .to_vec()
            )
        );
    }

    #[test]
    fn lisp_without_run_lisp_marks_the_entry_point_to_fill_in() {
        let d = dir_with(&[("shop.asd", "(defsystem \"shop\")"), ("shop-tests.asd", "")]);
        let det = detect(d.path());
        assert_eq!(det.kind, Kind::Lisp);
        let r = render(&det, 8080);
        parses(&r);
        let (line, what) = &r.fill_in[0];
        let text_line = r.text.lines().nth(line - 1).expect("line exists");
        assert_eq!(
            text_line,
            r#"lisp = { system = "shop", entry = "shop:main" }"#
        );
        assert!(what.contains("entry point"));
    }

    #[test]
    fn unknown_projects_get_a_template_that_parses() {
        let d = dir_with(&[("README", "hi")]);
        let det = detect(d.path());
        assert_eq!(det.kind, Kind::Unknown);
        let r = render(&det, 8080);
        parses(&r);
        assert_eq!(r.fill_in.len(), 1);
    }

    #[test]
    fn procfile_lines_become_apps_and_only_web_gets_a_port() {
        let d = dir_with(&[(
            "Procfile",
            "# comment\nweb: python3 app.py\nworker: python3 worker.py\nbad line\n",
        )]);
        let det = detect(d.path());
        let names: Vec<_> = det.apps.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["web", "worker"]);
        let t = parses(&render(&det, 5000));
        assert!(t["app"]["worker"].get("port").is_none());
    }
}
