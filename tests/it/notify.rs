//! The sd_notify protocol, against a real AF_UNIX datagram socket the test binds and hands
//! to windlass as `NOTIFY_SOCKET` (what systemd does): READY=1 only once health passes,
//! STATUS= lines, RELOADING=1 with MONOTONIC_USEC around a reload, WATCHDOG=1 at half of
//! WATCHDOG_USEC, STOPPING=1 on SIGTERM and no ping after it; and journald priorities on
//! windlass's own log lines.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::helper::*;

/// An app whose /health answers 503 until the file `gate` exists.
const GATED: &str = r#"
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path != "/health" or os.path.exists("gate")
        self.send_response(200 if ok else 503)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

struct Socket {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Socket {
    fn bind(p: &Project) -> (Socket, std::path::PathBuf) {
        let path = p.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        (
            Socket {
                sock,
                seen: Vec::new(),
            },
            path,
        )
    }

    /// Reads what has arrived; every datagram is one message of `KEY=VALUE` lines.
    fn drain(&mut self) {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.sock.recv(&mut buf) {
            self.seen
                .push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }

    /// Waits until a message has a line `line`; returns the message's index.
    fn wait_line(&mut self, line: &str, from: usize) -> usize {
        let mut found = None;
        wait_for(&format!("{line:?} on NOTIFY_SOCKET"), DEADLINE, || {
            self.drain();
            found = self.seen[from.min(self.seen.len())..]
                .iter()
                .position(|m| m.lines().any(|l| l == line))
                .map(|i| i + from);
            found.map(|_| ())
        });
        found.expect("found")
    }

    fn lines(&self) -> Vec<&str> {
        self.seen.iter().flat_map(|m| m.lines()).collect()
    }
}

fn gated_project() -> (Project, u16) {
    let port = free_port();
    let p = Project::new(&format!(
        "[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\nhealth = {{ path = \"/health\", interval = \"100ms\", start_timeout = \"60s\" }}\nstop = {{ timeout = \"5s\" }}\n"
    ));
    p.write("app.py", GATED);
    (p, port)
}

#[test]
fn ready_only_after_health_passes_then_stopping_on_sigterm() {
    let (p, _port) = gated_project();
    let (mut sock, path) = Socket::bind(&p);
    let mut sup = p.up_with(&[], |c| {
        c.env("NOTIFY_SOCKET", &path);
    });
    // The app runs but is not healthy: windlass says so, and not READY.
    wait_for("the instance to be starting", DEADLINE, || {
        (p.instance("web", 0)["state"] == "starting").then_some(())
    });
    sock.wait_line("STATUS=web starting 0/1", 0);
    sock.drain();
    assert!(
        !sock.lines().contains(&"READY=1"),
        "READY before health passed: {:?}",
        sock.seen
    );
    std::fs::write(p.path().join("gate"), "").expect("gate");
    let ready = sock.wait_line("READY=1", 0);
    assert!(
        sock.seen[ready..]
            .iter()
            .any(|m| m.contains("STATUS=web running 1/1")),
        "{:?}",
        sock.seen
    );
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE), Some(0));
    let stopping = sock.wait_line("STOPPING=1", ready);
    sock.drain();
    assert!(stopping > ready);
    // Apps do not inherit the socket.
    let env = std::fs::read_to_string(p.path().join("up.err")).unwrap_or_default();
    assert!(!env.contains("cannot notify"), "{env}");
}

#[test]
fn apps_do_not_inherit_notify_socket() {
    let port = free_port();
    let p = Project::new(&format!(
        "[app.web]\ncommand = \"env > env.txt; exec python3 -m http.server {port} --bind 127.0.0.1\"\nshell = true\n"
    ));
    let (_sock, path) = Socket::bind(&p);
    let _sup = p.up_with(&[], |c| {
        c.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "30000000");
    });
    let env = wait_for("env.txt", DEADLINE, || {
        std::fs::read_to_string(p.path().join("env.txt"))
            .ok()
            .filter(|s| s.contains("WINDLASS_APP"))
    });
    assert!(
        !env.contains("NOTIFY_SOCKET") && !env.contains("WATCHDOG_USEC"),
        "{env}"
    );
}

#[test]
fn watchdog_pings_at_half_the_period_and_stop_after_stopping() {
    let (p, _port) = gated_project();
    p.write("gate", "");
    let (mut sock, path) = Socket::bind(&p);
    let mut sup = p.up_with(&[], |c| {
        // 200 ms: a ping every 100 ms.
        c.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "200000");
    });
    sock.wait_line("READY=1", 0);
    // Several pings, each its own message.
    wait_for("5 watchdog pings", DEADLINE, || {
        sock.drain();
        (sock.seen.iter().filter(|m| *m == "WATCHDOG=1\n").count() >= 5).then_some(())
    });
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE), Some(0));
    sock.drain();
    let stopping = sock
        .seen
        .iter()
        .position(|m| m.contains("STOPPING=1"))
        .expect("STOPPING=1");
    assert!(
        sock.seen[stopping..]
            .iter()
            .all(|m| !m.contains("WATCHDOG=1")),
        "a ping after STOPPING: {:?}",
        &sock.seen[stopping..]
    );
}

#[test]
fn watchdog_meant_for_another_process_is_not_pinged() {
    let (p, _port) = gated_project();
    p.write("gate", "");
    let (mut sock, path) = Socket::bind(&p);
    let mut sup = p.up_with(&[], |c| {
        c.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000")
            .env("WATCHDOG_PID", "1");
    });
    sock.wait_line("READY=1", 0);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE), Some(0));
    sock.wait_line("STOPPING=1", 0);
    assert!(!sock.lines().contains(&"WATCHDOG=1"), "{:?}", sock.seen);
}

#[test]
fn reloading_then_ready_around_a_reload() {
    let (p, _port) = gated_project();
    p.write("gate", "");
    let (mut sock, path) = Socket::bind(&p);
    let _sup = p.up_with(&[], |c| {
        c.env("NOTIFY_SOCKET", &path);
    });
    let ready = sock.wait_line("READY=1", 0);
    let o = p.run(&["reload", "web"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reloading = sock.wait_line("RELOADING=1", ready + 1);
    let msg = sock.seen[reloading].clone();
    let usec = msg
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC with RELOADING=1: {msg:?}"));
    assert!(usec.parse::<u64>().expect("a number") > 0);
    sock.wait_line("READY=1", reloading + 1);
}

#[test]
fn own_log_lines_carry_journald_priorities_under_systemd() {
    let (p, _port) = gated_project();
    p.write("gate", "");
    let (mut sock, path) = Socket::bind(&p);
    let mut sup = p.up_with(&["-v"], |c| {
        c.env("NOTIFY_SOCKET", &path);
    });
    sock.wait_line("READY=1", 0);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE), Some(0));
    let err = sup.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines.iter().any(|l| l.starts_with("<6>INFO ")),
        "no info line: {err}"
    );
    for l in &lines {
        assert!(
            l.starts_with('<') && l.as_bytes().get(2) == Some(&b'>'),
            "a line without a priority: {l:?}"
        );
        assert!(!l.contains('\u{1b}'), "colour under journald: {l:?}");
    }
}

/// `JOURNAL_STREAM` counts only when it names windlass's actual stderr (systemd's contract):
/// an error then carries journald's error priority.
#[test]
fn journal_stream_naming_stderr_gets_priorities_and_a_stale_one_does_not() {
    use std::os::unix::fs::MetadataExt;
    let p = Project::new("[app.web]\ncommand = [\"true\"]\nbogus = 1\n");
    let err = p.path().join("check.err");
    for matching in [true, false] {
        let file = std::fs::File::create(&err).expect("stderr file");
        let meta = file.metadata().expect("stat");
        let stream = if matching {
            format!("{}:{}", meta.dev(), meta.ino())
        } else {
            format!("{}:{}", meta.dev(), meta.ino() + 1)
        };
        let status = p
            .cmd(&["check"])
            .env_remove("NOTIFY_SOCKET")
            .env("JOURNAL_STREAM", stream)
            .stderr(file)
            .status()
            .expect("check");
        assert_eq!(status.code(), Some(2));
        let text = std::fs::read_to_string(&err).expect("read");
        assert_eq!(text.starts_with("<3>"), matching, "{text}");
    }
}
