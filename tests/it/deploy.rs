//! `windlass deploy` against real hosts: three OpenSSH servers, each in its own network
//! namespace made by the test (helper::hosts), reached with keys, a known_hosts and an ssh
//! config the test generates. Each host keeps the project in its own directory (the
//! namespaces share the filesystem) and runs the windlass binary the deploy uploaded there.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::helper::hosts::Hosts;
use crate::helper::{DEADLINE, Project, wait_for};

/// The app's public port on every host (each host has its own network).
const PORT: u16 = 8080;
const SECRET: &str = "s3cret-value-that-must-never-be-printed";

/// A Python app answering its VERSION; its health check fails when a file `BREAK_<version>`
/// sits in one of its parent directories (the test drops one in host 3's directory).
const APP: &str = r#"import os, http.server
here = os.path.dirname(os.path.abspath(__file__))
version = open(os.path.join(here, "VERSION")).read().strip()
broken, d = False, here
while True:
    broken = broken or os.path.exists(os.path.join(d, "BREAK_" + version))
    if os.path.dirname(d) == d:
        break
    d = os.path.dirname(d)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        code = 500 if (self.path == "/health" and broken) else 200
        body = version.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
print("app", version, "starting", flush=True)
if broken:
    print("app", version, "found BREAK_" + version + ": its health check fails", flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn project(hosts: &Hosts, extra: &str) -> Project {
    let config = format!(
        r#"[app.web]
command = ["python3", "app.py"]
port = {PORT}
release = "latest"
health = {{ path = "/health", interval = "100ms", timeout = "1s", start_timeout = "5s" }}
stop = {{ timeout = "3s" }}

[admin]
listen = "127.0.0.1:0"

{}{extra}"#,
        hosts.deploy_table()
    );
    let p = Project::new(&config);
    p.write("app.py", APP);
    p
}

fn build(p: &Project, version: &str) {
    p.write("VERSION", version);
    let out = p.run(&["build", "web"]);
    assert!(
        out.status.success(),
        "windlass build: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One GET to `ip:PORT/`: the body on a 200.
fn get(ip: Ipv4Addr) -> Result<String, String> {
    let addr = SocketAddr::from((ip, PORT));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or(format!("no header end: {buf:?}"))?;
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.to_owned())
    } else {
        Err(head.lines().next().unwrap_or("").to_owned())
    }
}

fn deploy(p: &Project, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["deploy"];
    all.extend_from_slice(args);
    let out = p.run(&all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn setup_deploys_v1_to_three_hosts_and_a_v2_failing_on_host3_rolls_hosts_1_and_2_back() {
    // Host 3 has no rsync: it gets the files as a tar stream over ssh.
    let hosts = Hosts::with_rsync(3, &[2]);
    let p = project(&hosts, "env_file = \"prod.env\"\n");
    p.write("prod.env", &format!("API_KEY={SECRET}\n"));
    p.write(".gitignore", "prod.env\n");
    build(&p, "v1");

    let (ok, stdout, stderr) = deploy(&p, &["--setup", "--json"]);
    assert!(ok, "deploy --setup failed:\n{stdout}\n{stderr}");
    let ev = events(&stdout);
    for h in &hosts.hosts {
        for step in [
            "connect",
            "probe",
            "upload-binary",
            "upload-release",
            "upload-config",
            "upload-env",
            "start",
            "switch",
            "healthy",
        ] {
            assert!(
                ev.iter().any(|e| e["host"] == h.name.as_str()
                    && e["step"] == step
                    && e["status"] == "ok"),
                "no `{step}` ok event for {}:\n{stdout}",
                h.name
            );
        }
        assert_eq!(get(h.ip).as_deref(), Ok("v1"), "{} serves v1", h.name);
        let env = h.path.join(".env");
        assert_eq!(
            std::fs::read_to_string(&env).expect("test fixture"),
            format!("API_KEY={SECRET}\n")
        );
        assert_eq!(
            std::fs::metadata(&env)
                .expect("test fixture")
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    assert_eq!(ev.last().expect("events")["step"], "deploy");
    assert_eq!(ev.last().expect("events")["status"], "ok");
    let transport = |host: &str| {
        ev.iter()
            .find(|e| e["host"] == host && e["step"] == "probe")
            .and_then(|e| e["detail"].as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(transport("host1").contains("transport rsync"), "{stdout}");
    assert!(
        transport("host3").contains("transport tar over ssh"),
        "{stdout}"
    );
    // The env file went to PATH/.env only: not into the release, not onto a terminal.
    let on_host =
        std::fs::read_dir(hosts.hosts[0].path.join(".windlass/releases")).expect("test fixture");
    for r in on_host.flatten().filter(|r| r.path().is_dir()) {
        assert!(
            !r.path().join("prod.env").exists(),
            "the env file is in the release"
        );
    }
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the secret was printed"
    );

    // v2 breaks on host 3 only.
    build(&p, "v2");
    std::fs::write(hosts.hosts[2].path.join("BREAK_v2"), "").expect("test fixture");
    let (ok, stdout, stderr) = deploy(&p, &[]);
    assert!(
        !ok,
        "deploy of a v2 failing on host3 succeeded:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("deploy failed on host host3"),
        "host3 not named:\n{stderr}"
    );
    assert!(
        stderr.contains("found BREAK_v2"),
        "the app's last lines are missing:\n{stderr}"
    );
    assert!(
        stderr.contains("rolled back") && stderr.contains("host1") && stderr.contains("host2"),
        "{stderr}"
    );
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the secret was printed"
    );
    for h in &hosts.hosts {
        assert_eq!(
            get(h.ip).as_deref(),
            Ok("v1"),
            "{} serves v1 after the rollback",
            h.name
        );
    }
}

#[test]
fn a_good_rollout_under_load_fails_no_request_and_reuses_the_hosts_binary() {
    let hosts = Hosts::new(3);
    let p = project(&hosts, "");
    build(&p, "v1");
    let (ok, stdout, stderr) = deploy(&p, &["--setup"]);
    assert!(ok, "deploy --setup failed:\n{stdout}\n{stderr}");
    for h in &hosts.hosts {
        assert_eq!(get(h.ip).as_deref(), Ok("v1"));
    }
    build(&p, "v2");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = hosts
        .hosts
        .iter()
        .map(|h| {
            let (ip, name) = (h.ip, h.name.clone());
            let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match get(ip) {
                        Ok(_) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().expect("lock").push(format!("{name}: {e}")),
                    }
                }
            })
        })
        .collect();
    wait_for("the load to start", DEADLINE, || {
        (done.load(Ordering::Relaxed) > 30).then_some(())
    });
    let (ok, stdout, stderr) = deploy(&p, &["--json"]);
    let before_end = done.load(Ordering::Relaxed);
    wait_for("more requests after the deploy", DEADLINE, || {
        (done.load(Ordering::Relaxed) > before_end + 30).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    assert!(ok, "deploy v2 failed:\n{stdout}\n{stderr}");
    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed requests during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    for h in &hosts.hosts {
        assert_eq!(get(h.ip).as_deref(), Ok("v2"), "{} serves v2", h.name);
    }
    let ev = events(&stdout);
    for h in &hosts.hosts {
        assert!(
            ev.iter().any(|e| e["host"] == h.name.as_str()
                && e["step"] == "upload-binary"
                && e["status"] == "skipped"),
            "the host's windlass (same sha256) was uploaded again:\n{stdout}"
        );
    }
    // Host after host: host1 is healthy before host2 connects.
    let pos = |host: &str, step: &str| {
        ev.iter()
            .position(|e| e["host"] == host && e["step"] == step)
            .unwrap_or_else(|| panic!("no {step} for {host}:\n{stdout}"))
    };
    assert!(pos("host1", "healthy") < pos("host2", "connect"));
    assert!(pos("host2", "healthy") < pos("host3", "connect"));
}

#[test]
fn dry_run_prints_the_plan_and_contacts_no_host() {
    // Hosts that do not exist: a dry run must not try them.
    let p = Project::new(
        "[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = 8080\nrelease = \"latest\"\n\n[deploy]\nhosts = [\"web1.invalid\", \"deploy@web2.invalid:/opt/shop\", { name = \"web3.invalid\", path = \"/opt/other\" }]\nuser = \"ops\"\nbatch = 2\n",
    );
    p.write("app.py", APP);
    build(&p, "v1");
    let (ok, stdout, stderr) = deploy(&p, &["--dry-run"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("batch 1  web1.invalid (ops@web1.invalid:/srv/"),
        "{stdout}"
    );
    assert!(
        stdout.contains("web2.invalid (deploy@web2.invalid:/opt/shop)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("batch 2  web3.invalid (ops@web3.invalid:/opt/other)"),
        "{stdout}"
    );
    assert!(stdout.contains("windlass rollback web "), "{stdout}");

    let (ok, stdout, _) = deploy(&p, &["--dry-run", "--json", "--host", "web3.invalid"]);
    assert!(ok);
    let ev = events(&stdout);
    assert!(
        ev.iter()
            .all(|e| e["host"] == "web3.invalid" && e["status"] == "planned"),
        "{stdout}"
    );
    assert!(ev.iter().any(|e| e["step"] == "switch"));

    // A --host that would become an ssh option is a usage error.
    let out = p.run(&["deploy", "--dry-run", "--host=-oProxyCommand=id"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
