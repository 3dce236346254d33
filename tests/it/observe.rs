//! Observability: the admin listener's `/metrics` (values move as the apps do, promtool
//! accepts the output, the Grafana dashboard only queries what is exported), its token rules,
//! a taken port, and `windlass top`.

use std::process::{Command, Stdio};

use crate::helper::*;

fn hello_config(port: u16, admin: u16, extra: &str) -> String {
    format!(
        "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\n\n[app.worker]\ncommand = [\"sleep\", \"1000\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{extra}",
        hello_app().display()
    )
}

const UP: &str = "windlass_instance_up{app=\"hello\",index=\"0\"}";
const RESTARTS: &str = "windlass_instance_restarts_total{app=\"hello\",index=\"0\"}";
const RSS: &str = "windlass_instance_resident_memory_bytes{app=\"hello\",index=\"0\"}";

#[test]
fn metrics_follow_crashes_restarts_and_stops() {
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&hello_config(port, admin, ""));
    let _sup = p.up(&[]);
    wait_for("hello to answer", DEADLINE, || {
        http_get(port, "/health").ok()
    });
    let m = wait_for("the admin listener", DEADLINE, || {
        http_get(admin, "/metrics").ok().map(|r| r.1)
    });
    assert_eq!(sample(&m, UP), Some(1.0), "{m}");
    assert_eq!(sample(&m, RESTARTS), Some(0.0), "{m}");
    assert!(sample(&m, RSS).is_some_and(|v| v > 0.0), "{m}");
    for s in [
        "windlass_instance_threads{app=\"hello\",index=\"0\"}",
        "windlass_instance_open_fds{app=\"hello\",index=\"0\"}",
        "windlass_supervisor_resident_memory_bytes",
        "windlass_supervisor_open_fds",
    ] {
        assert!(sample(&m, s).is_some_and(|v| v > 0.0), "{s} in {m}");
    }
    // The proxy counts what it serves: the one /health request so far, then three more.
    const OK: &str = "windlass_proxy_requests_total{app=\"hello\",code=\"2xx\"}";
    const SEEN: &str = "windlass_proxy_request_duration_seconds_count{app=\"hello\"}";
    assert_eq!(sample(&m, OK), Some(1.0), "{m}");
    for _ in 0..3 {
        assert_eq!(http_get(port, "/").expect("get").0, 200);
    }
    let m = scrape(admin);
    assert_eq!(sample(&m, OK), Some(4.0), "{m}");
    assert_eq!(sample(&m, SEEN), Some(4.0), "{m}");
    assert_eq!(
        sample(&m, "windlass_proxy_requests_in_flight{app=\"hello\"}"),
        Some(0.0),
        "{m}"
    );
    assert!(!m.contains("windlass_proxy_requests_total{app=\"worker\""));

    let _ = http_get(port, "/crash");
    wait_for("the crash to be counted", DEADLINE, || {
        let m = scrape(admin);
        (sample(&m, RESTARTS) == Some(1.0) && sample(&m, UP) == Some(1.0)).then_some(())
    });

    let o = p.run(&["stop", "hello"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = scrape(admin);
    assert_eq!(sample(&m, UP), Some(0.0), "{m}");
    assert_eq!(
        sample(
            &m,
            "windlass_instance_state{app=\"hello\",index=\"0\",state=\"stopped\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(sample(&m, RSS), None, "no process, no memory series: {m}");
}

#[test]
fn promtool_accepts_the_metrics() {
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&hello_config(port, admin, ""));
    let _sup = p.up(&[]);
    wait_for("hello to answer", DEADLINE, || {
        http_get(port, "/health").ok()
    });
    let m = wait_for("the admin listener", DEADLINE, || {
        http_get(admin, "/metrics").ok().map(|r| r.1)
    });
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(m.as_bytes())
        .expect("write to promtool");
    let o = child.wait_with_output().expect("promtool");
    assert!(
        o.status.success(),
        "promtool: {}{}\n{m}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Prometheus itself asks for OpenMetrics and gets it.
    let (code, om) = http_request(
        admin,
        "GET",
        "/metrics",
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
    )
    .expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
}

/// Every `windlass_*` name in a PromQL expression, without histogram sample suffixes.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("windlass_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/grafana/windlass.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("the dashboard is valid JSON");
    assert!(
        d["templating"]["list"]
            .as_array()
            .expect("templating")
            .iter()
            .any(|v| v["name"] == "app"),
        "an `app` variable"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut all = Vec::new();
    for panel in panels {
        let mut e = Vec::new();
        exprs(panel, &mut e);
        assert!(!e.is_empty(), "panel without a query: {}", panel["title"]);
        all.extend(e);
    }
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&hello_config(port, admin, ""));
    let _sup = p.up(&[]);
    wait_for("hello to answer", DEADLINE, || {
        http_get(port, "/health").ok()
    });
    let m = wait_for("the admin listener", DEADLINE, || {
        http_get(admin, "/metrics").ok().map(|r| r.1)
    });
    // A family counts when declared, even without samples here (the windlass_lisp_* series
    // exist only for Lisp apps with swank; tests/it/lisp.rs scrapes them).
    let exported: Vec<&str> = m
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split(' ').next(),
            None if !l.starts_with('#') => l.split(['{', ' ']).next(),
            None => None,
        })
        .collect();
    let mut names: Vec<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for n in names {
        assert!(
            exported.contains(&n.as_str()),
            "the dashboard queries `{n}`, which windlass does not export"
        );
    }
}

#[test]
fn actions_on_the_admin_listener_need_the_token() {
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&hello_config(port, admin, "token = \"s3cret-token\"\n"));
    let _sup = p.up(&[]);
    wait_for("the admin listener", DEADLINE, || {
        http_get(admin, "/api/v1/status").ok()
    });
    // Reads are open on loopback.
    let (code, body) = http_get(admin, "/api/v1/status").expect("status");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"hello\""), "{body}");
    let restart = "/api/v1/apps/worker/restart";
    let (code, body) = http_request(admin, "POST", restart, &[]).expect("POST");
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("Bearer"),
        "the error says what to send: {body}"
    );
    let (code, _) = http_request(
        admin,
        "POST",
        restart,
        &[("Authorization", "Bearer wrong-token!")],
    )
    .expect("POST");
    assert_eq!(code, 401);
    let (code, body) = http_request(
        admin,
        "POST",
        restart,
        &[("Authorization", "Bearer s3cret-token")],
    )
    .expect("POST");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"ok\":true"), "{body}");
}

#[test]
fn without_a_token_the_admin_listener_is_read_only() {
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&hello_config(port, admin, ""));
    let _sup = p.up(&[]);
    wait_for("the admin listener", DEADLINE, || {
        http_get(admin, "/api/v1/status").ok()
    });
    let (code, body) = http_request(
        admin,
        "POST",
        "/api/v1/apps/worker/stop",
        &[("Authorization", "Bearer x")],
    )
    .expect("POST");
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no token is configured"), "{body}");
    assert_eq!(p.instance("worker", 0)["state"], "running");
    let (code, body) = http_get(admin, "/dashboard").expect("dashboard");
    assert_eq!(code, 200);
    assert!(body.contains("windlass"), "{body}");
}

#[test]
fn a_non_loopback_admin_listener_needs_a_token() {
    let p = Project::new("[app.a]\ncommand = \"sleep 1\"\n\n[admin]\nlisten = \"0.0.0.0:9180\"\n");
    let o = p.run(&["check"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("without a token"), "{err}");
}

#[test]
fn a_taken_admin_port_is_an_error_naming_its_holder() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let admin = held.local_addr().expect("addr").port();
    let p = Project::new(&format!(
        "[app.a]\ncommand = [\"sleep\", \"1000\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    ));
    let o = p.run(&["up"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{admin}"))
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(
        err.contains("[admin] listen"),
        "says how to change it: {err}"
    );
}

#[test]
fn the_admin_listener_can_be_off() {
    let p = Project::new("[app.a]\ncommand = [\"sleep\", \"1000\"]\n\n[admin]\nlisten = \"off\"\n");
    let _sup = p.up(&[]);
    // The control socket appears before the first instance is up: wait for it to run.
    wait_for("a to run with the admin listener off", DEADLINE, || {
        (p.instance("a", 0)["state"] == "running").then_some(())
    });
}

#[test]
fn top_prints_frames_without_a_terminal() {
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&hello_config(port, admin, ""));
    let _sup = p.up(&[]);
    wait_for("hello to answer", DEADLINE, || {
        http_get(port, "/health").ok()
    });
    let pid = p.instance("hello", 0)["pid"].as_u64().expect("pid");
    let o = p.run(&["top", "--once"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("hello") && out.contains("worker"), "{out}");
    assert!(out.contains(&pid.to_string()), "{out}");
    assert!(out.contains("CPU%") && out.contains("REQ/S"), "{out}");
    assert!(
        !out.contains('\x1b'),
        "no escape codes without a terminal: {out:?}"
    );
    let o = p.run(&["top", "--count", "2", "--interval", "100ms"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches("windlass top").count(), 2, "{out}");
}

#[test]
fn two_projects_with_the_default_admin_address_both_run() {
    // Neither config says where the admin listener goes: the second project on the host
    // must not fail because the first holds the default port.
    let projects: Vec<Project> = (0..2).map(|_| Project::empty()).collect();
    let mut sups = Vec::new();
    for p in &projects {
        p.write(
            "windlass.toml",
            "[app.idle]\ncommand = [\"sleep\", \"1000\"]\n",
        );
        sups.push(p.up(&[]));
    }
    let urls: Vec<String> = projects
        .iter()
        .map(|p| {
            p.status()["supervisor"]["admin_url"]
                .as_str()
                .expect("admin_url")
                .to_owned()
        })
        .collect();
    assert_ne!(urls[0], urls[1]);
    for u in &urls {
        let port: u16 = u
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in url");
        assert!(scrape(port).contains("windlass_instance_up{app=\"idle\",index=\"0\"} 1"));
    }
}

/// `status` and `/metrics` read an instance's usage with one reader: for a group whose
/// memory does not move (a shell and its sleeping child), they report the same bytes.
#[test]
fn status_and_metrics_report_the_same_memory_for_an_instance() {
    let admin = free_port();
    let p = Project::new(&format!(
        "[app.idle]\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    ));
    let _sup = p.up(&[]);
    let series = "windlass_instance_resident_memory_bytes{app=\"idle\",index=\"0\"}";
    // Both processes of the group are up once the metrics count two of them.
    wait_for("the shell and its sleep in the group", DEADLINE, || {
        let m = http_get(admin, "/metrics").ok()?.1;
        (sample(&m, "windlass_instance_processes{app=\"idle\",index=\"0\"}")? == 2.0).then_some(())
    });
    let from_status = p.instance("idle", 0)["memory_bytes"]
        .as_f64()
        .expect("status has memory_bytes");
    let from_metrics = sample(&scrape(admin), series).expect("metrics have the series");
    assert!(from_status > 0.0);
    assert_eq!(from_status, from_metrics);
}
