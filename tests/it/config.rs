//! Config errors point at file:line:column with a suggestion; Procfiles are read.

use crate::helper::*;

#[test]
fn unknown_key_is_reported_with_its_position_and_a_suggestion() {
    let p = Project::new("[app.web]\nport = 8080\ncomand = \"python3 app.py\"\n");
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("windlass.toml:3:1"), "{err}");
    assert!(err.contains("unknown key `comand`"), "{err}");
    assert!(err.contains("did you mean `command`?"), "{err}");
}

#[test]
fn bad_values_are_reported_where_they_stand() {
    let p = Project::new("[app.web]\ncommand = \"x\"\nrestart = \"alwayz\"\n");
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("windlass.toml:3:11"), "{err}");
    assert!(err.contains("did you mean `always`?"), "{err}");

    let p = Project::new("[app.web]\ncommand = \"x\"\nstop = { timeout = \"10 parsecs\" }\n");
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("windlass.toml:3:20"), "{err}");
    assert!(err.contains("invalid duration"), "{err}");

    let p = Project::new(
        "[app.web]\ncommand = \"x\"\nproxy = { trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"] }\n",
    );
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("windlass.toml:3:44"), "{err}");
    assert!(err.contains("not an IP address or a CIDR range"), "{err}");

    let p = Project::new("[app.web]\ncommand = \"x\"\nproxy = { max_connections = 0 }\n");
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("windlass.toml:3:29"), "{err}");
    assert!(
        err.contains("`proxy.max_connections` must be between 1"),
        "{err}"
    );
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let p = Project::new(
        "[app.a]\ncommand = []\nport = 9000\n\n[app.b]\ncommand = \"x\"\nport = 9000\nenv_file = \"missing.env\"\n",
    );
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("windlass.toml:2:11"), "empty command: {err}");
    assert!(err.contains("`command` is empty"), "{err}");
    assert!(err.contains("windlass.toml:8:12"), "env_file: {err}");
    assert!(err.contains("3 errors"), "{err}");
}

#[test]
fn syntax_errors_have_a_position_too() {
    let p = Project::new("[app.web\ncommand = \"x\"\n");
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("windlass.toml:1:"), "{err}");
}

#[test]
fn a_valid_config_checks_ok_and_no_config_says_what_to_do() {
    let p = Project::new("[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = 8080\n");
    let o = p.run(&["check"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok (1 app: web)"));

    let empty = Project::empty();
    let o = empty.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("windlass init"), "{err}");
}

#[test]
fn a_procfile_is_run_when_there_is_no_windlass_toml() {
    let p = Project::empty();
    let port = free_port();
    p.write(
        "Procfile",
        &format!(
            "# a comment\nweb: exec python3 {}\nworker: echo worker-$INSTANCE-$WINDLASS_APP; exec sleep 1000\n",
            hello_app().display()
        ),
    );
    let o = p.run(&["check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("web, worker"));

    let _sup = {
        let mut c = p.cmd(&["up"]);
        c.env("PORT", port.to_string());
        let out = p.path().join("up.out");
        let child = c
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("up");
        Supervisor {
            child,
            out: out.clone(),
            err: out,
            dir: p.path().to_path_buf(),
        }
    };
    let (code, body) = wait_for("the Procfile's web process to answer", DEADLINE, || {
        http_get(port, "/").ok()
    });
    assert_eq!(code, 200);
    assert!(body.contains("hello from"), "{body}");
    wait_for("the worker's line in its log", DEADLINE, || {
        p.log_lines("worker")
            .iter()
            .any(|l| l.ends_with("out worker-0-worker"))
            .then_some(())
    });
}
