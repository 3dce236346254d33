//! `windlass init` on a fixture of each kind: the config it writes passes `windlass check`
//! and, where the runtime is installed, `windlass up` starts the app and it answers over HTTP.

use std::path::Path;
use std::time::Duration;

use crate::helper::*;

/// Copies `tests/fixtures/init/<kind>` into a fresh temp project.
fn fixture(kind: &str) -> Project {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for e in std::fs::read_dir(from).expect("read fixture dir") {
            let e = e.expect("dir entry");
            let dest = to.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), &dest).expect("copy fixture file");
            }
        }
    }
    let p = Project::empty();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/init")
        .join(kind);
    copy(&src, p.path());
    p
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
}

/// `init --json --port PORT` then `check`; returns the init report.
fn init_and_check(p: &Project, port: u16) -> serde_json::Value {
    let o = p.run(&["init", "--json", "--port", &port.to_string()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "init: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("init --json");
    let o = p.run(&["check"]);
    let config = std::fs::read_to_string(p.path().join("windlass.toml")).expect("config");
    assert_eq!(
        o.status.code(),
        Some(0),
        "check rejected what init wrote:\n{config}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    report
}

/// Starts the project with `windlass up` and waits for `GET /` to answer with `expect`.
fn serves(p: &Project, port: u16, expect: &str, deadline: Duration) {
    let sup = p.up(&[]);
    let body = wait_for(
        &format!("the app to answer on port {port}"),
        deadline,
        || http_get(port, "/").ok().filter(|(code, _)| *code == 200),
    )
    .1;
    assert!(
        body.contains(expect),
        "{body:?}; supervisor said: {}",
        sup.stdout()
    );
}

#[test]
fn python_script_is_detected_and_served() {
    let p = fixture("python");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(r["kind"], "python");
    assert_eq!(
        r["apps"][0]["command"],
        serde_json::json!(["python3", "app.py"])
    );
    serves(&p, port, "hello from python", DEADLINE);
}

#[test]
fn node_start_script_is_detected_and_served() {
    let p = fixture("node");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(r["kind"], "node");
    assert_eq!(
        r["apps"][0]["command"],
        serde_json::json!(["node", "server.js"])
    );
    serves(&p, port, "hello from node", DEADLINE);
}

#[test]
fn rust_binary_is_detected_built_and_served() {
    let p = fixture("rust");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(r["kind"], "rust");
    assert_eq!(
        r["apps"][0]["command"],
        serde_json::json!(["cargo", "run", "--release"])
    );
    // `cargo run --release` compiles first: allow for a slow, shared machine.
    serves(&p, port, "hello from rust", Duration::from_secs(300));
}

#[test]
fn lisp_cookbook_app_is_detected_with_project_port_and_served() {
    let p = fixture("lisp");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(r["kind"], "lisp");
    assert_eq!(r["apps"][0]["port_env"], "PROJECT_PORT");
    assert_eq!(
        r["apps"][0]["command"],
        serde_json::json!([
            "sbcl",
            "--noinform",
            "--non-interactive",
            "--load",
            "run.lisp"
        ])
    );
    // The raw command keeps working, but init offers the first-class config and says what
    // the raw command loses.
    let found = r["found"].to_string();
    for lost in [
        "swank",
        "graceful stop",
        "windlass build",
        "in-place reload",
        "metrics",
    ] {
        assert!(
            found.contains(lost),
            "init does not say the raw command loses {lost}: {found}"
        );
    }
    let config = std::fs::read_to_string(p.path().join("windlass.toml")).expect("config");
    assert!(
        config.contains(r#"# lisp = { system = "hello", entry = "hello:start-app" }"#),
        "{config}"
    );
    let o = p.run(&["init", "--force", "--port", &port.to_string()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("lisp = { system, entry }"), "{out}");
    if on_path("sbcl") {
        serves(&p, port, "hello from lisp", Duration::from_secs(240));
    } else {
        eprintln!("sbcl not installed: checked the config only (scripts/test.sh installs it)");
    }
}

#[test]
fn lisp_asdf_app_without_run_lisp_gets_first_class_lisp_config_and_is_served() {
    let p = fixture("lisp-asdf");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(r["kind"], "lisp");
    let app = &r["apps"][0];
    assert_eq!(
        app["command"],
        serde_json::json!({"system": "shop", "entry": "shop:start-app"}),
        "{r:#}"
    );
    assert_eq!(app["port_env"], "PROJECT_PORT");
    let config = std::fs::read_to_string(p.path().join("windlass.toml")).expect("config");
    assert!(
        config.contains(r#"lisp = { system = "shop", entry = "shop:start-app" }"#),
        "{config}"
    );
    assert!(!config.contains("sbcl"), "no raw sbcl command: {config}");
    // It says what it guessed and where to change it.
    let found = r["found"].to_string();
    assert!(
        found.contains("shop:start-app") && found.contains("src/web.lisp"),
        "{found}"
    );
    assert!(found.contains("entry"), "{found}");
    if on_path("sbcl") {
        // A cold compile of Hunchentoot on a shared 2-core machine: generous deadline.
        serves(
            &p,
            port,
            "hello from the lisp shop",
            Duration::from_secs(240),
        );
    } else {
        eprintln!("sbcl not installed: checked the config only (scripts/test.sh installs it)");
    }
}

#[test]
fn procfile_lines_become_apps_and_web_is_served() {
    let p = fixture("procfile");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(r["kind"], "procfile");
    assert_eq!(r["apps"][1]["name"], "worker");
    serves(&p, port, "hello from python", DEADLINE);
}

#[test]
fn gunicorn_app_is_bound_through_a_shell_with_port() {
    let p = fixture("python-gunicorn");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(
        r["apps"][0]["command"],
        "exec gunicorn app:app --bind 127.0.0.1:$PORT"
    );
    if on_path("gunicorn") {
        serves(&p, port, "hello from flask", DEADLINE);
    } else {
        eprintln!("gunicorn not installed: checked the config only");
    }
}

#[test]
fn ruby_rack_app_is_detected() {
    let p = fixture("ruby");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(r["kind"], "ruby");
    assert_eq!(
        r["apps"][0]["command"],
        "exec bundle exec rackup -p $PORT -o 127.0.0.1"
    );
    if on_path("bundle") && on_path("rackup") {
        serves(&p, port, "hello from ruby", DEADLINE);
    } else {
        eprintln!("ruby/bundler not installed: checked the config only");
    }
}

#[test]
fn go_module_is_detected() {
    let p = fixture("go");
    let port = free_port();
    let r = init_and_check(&p, port);
    assert_eq!(r["kind"], "go");
    assert_eq!(
        r["apps"][0]["command"],
        serde_json::json!(["go", "run", "."])
    );
    if on_path("go") {
        serves(&p, port, "hello from go", Duration::from_secs(300));
    } else {
        eprintln!("go not installed: checked the config only");
    }
}

#[test]
fn unknown_project_gets_a_template_and_the_line_to_fill_in() {
    let p = fixture("unknown");
    let o = p.run(&["init"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    let config = std::fs::read_to_string(p.path().join("windlass.toml")).expect("config");
    let line = config
        .lines()
        .position(|l| l.starts_with("command = "))
        .expect("a command line")
        + 1;
    assert!(out.contains(&format!("windlass.toml:{line}:")), "{out}");
    assert!(
        out.contains(&format!("next: edit windlass.toml line {line}")),
        "{out}"
    );
    assert_eq!(p.run(&["check"]).status.code(), Some(0));
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let p = fixture("python");
    p.write("windlass.toml", "# mine\n");
    let o = p.run(&["init"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already exists"), "{err}");
    assert!(err.contains("--force"), "{err}");
    let kept = std::fs::read_to_string(p.path().join("windlass.toml")).expect("config");
    assert_eq!(kept, "# mine\n");

    let o = p.run(&["init", "--force"]);
    assert_eq!(o.status.code(), Some(0));
    let now = std::fs::read_to_string(p.path().join("windlass.toml")).expect("config");
    assert!(now.contains("python3"), "{now}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("next: windlass up"), "{out}");
}
