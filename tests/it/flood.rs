//! Idle-connection floods against the public port, through the real binary started with a
//! low open-files limit (issue 10: 1,129 idle connections took an app down). The app must
//! keep serving, never be stopped, and the supervisor must keep answering.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helper::*;

/// Connections in the flood.
const FLOOD: usize = 1500;

fn config(port: u16, admin: u16) -> String {
    format!(
        "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\n\
         health = {{ path = \"/health\", interval = \"1s\" }}\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n",
        hello_app().display()
    )
}

/// Raises this test process's soft open-files limit to its hard limit (the flood needs
/// 1,500 sockets); false if the hard limit is too low to run the test at all.
fn enough_fds_for_the_flood() -> bool {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    lim.rlim_cur >= (FLOOD as u64) + 512
}

/// Starts `windlass up` with the open-files limit `soft:hard`.
fn up_limited(p: &Project, soft: u64, hard: u64) -> Supervisor {
    p.up_with(&[], move |cmd| {
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

/// (soft, hard) "Max open files" of a process.
fn nofile_of(pid: i64) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

/// How many connections wait in the accept queue of the listener on `port`.
fn listen_queue(port: u16) -> Option<u64> {
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 5 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if local_port == Some(port) {
                return f[4]
                    .split(':')
                    .nth(1)
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
            }
        }
    }
    None
}

/// Polls `f` until true or `deadline`; unlike `wait_for`, a timeout is an answer.
fn within(deadline: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Opens up to `n` idle connections to `port` (sending nothing), in batches the proxy can
/// take from its accept queue, and stops early once connects fail: the rest are what a
/// full backlog refuses.
fn flood(port: u16, n: usize) -> Vec<TcpStream> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut socks = Vec::with_capacity(n);
    let mut failures = 0;
    let mut stuck = 0;
    while socks.len() < n && failures < 20 {
        // A SYN dropped by a full backlog is sent again after 1 s: 2 s tolerates one.
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(s) => socks.push(s),
            Err(_) => failures += 1,
        }
        if stuck < 2 && socks.len() % 64 == 0 {
            // Once the queue no longer drains, the server stopped accepting: stop pacing.
            let drained = within(Duration::from_secs(10), || {
                listen_queue(port).is_some_and(|q| q <= 16)
            });
            stuck = if drained { 0 } else { stuck + 1 };
        }
    }
    socks
}

/// One request with a bounded wait for the answer; the status code.
fn quick_get(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs a windlass command, killed if it takes longer than `deadline`.
fn run_within(mut cmd: Command, deadline: Duration) -> Option<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn windlass");
    let end = Instant::now() + deadline;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().ok();
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `status --json` within 20 s, or None if the supervisor did not answer.
fn status_within(p: &Project) -> Option<serde_json::Value> {
    let out = run_within(p.cmd(&["status", "--json"]), Duration::from_secs(20))?;
    serde_json::from_slice(&out.stdout).ok()
}

fn health_checks_seen(p: &Project) -> usize {
    p.log_lines("hello")
        .iter()
        .filter(|l| l.contains("GET /health"))
        .count()
}

/// A proxy series of app `hello` from `/metrics`.
fn proxy_sample(admin: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(admin, "/metrics").ok()?;
    sample(&body, &format!("{name}{{app=\"hello\"}}"))
}

/// Waits, while the flood holds, until the app has passed three more health checks (or
/// the deadline: a failing check shows in the assertions that follow).
fn let_health_checks_run(p: &Project) {
    let before = health_checks_seen(p);
    within(Duration::from_secs(20), || {
        health_checks_seen(p) >= before + 3
    });
}

#[test]
fn an_idle_flood_above_the_soft_limit_leaves_the_app_serving() {
    if !enough_fds_for_the_flood() {
        eprintln!("skipped: the hard open-files limit is too low for a {FLOOD}-connection flood");
        return;
    }
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&config(port, admin));
    let sup = up_limited(&p, 1024, 4096);
    wait_for("hello behind the proxy", DEADLINE, || {
        (quick_get(port) == Some(200)).then_some(())
    });
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    assert_eq!(
        nofile_of(pid),
        (1024, 4096),
        "the app keeps the limit windlass was started with"
    );

    let socks = flood(port, FLOOD);
    assert_eq!(
        socks.len(),
        FLOOD,
        "every connection of the flood was taken"
    );
    let open = wait_for("the proxy to hold the flood", DEADLINE, || {
        proxy_sample(admin, "windlass_proxy_client_connections").filter(|n| *n >= FLOOD as f64)
    });
    assert!(open >= FLOOD as f64, "{open}");
    assert_eq!(
        quick_get(port),
        Some(200),
        "a fresh client is served during the flood"
    );
    let_health_checks_run(&p);
    let status = status_within(&p).expect("`windlass status` answers during the flood");
    let inst = &status["apps"][0]["instances"][0];
    assert_eq!(inst["restarts"], 0, "{inst}");
    assert_eq!(inst["pid"].as_i64(), Some(pid), "{inst}");
    assert_eq!(quick_get(port), Some(200));
    // The control socket and app starts keep their descriptors: a restart under the
    // flood is prompt (on main it hung until the flood ended).
    let out = run_within(p.cmd(&["restart", "hello"]), Duration::from_secs(30))
        .expect("`windlass restart` answers during the flood");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inst = p.instance("hello", 0);
    assert_ne!(inst["pid"].as_i64(), Some(pid), "restarted: {inst}");
    assert_eq!(inst["state"], "running", "{inst}");
    assert_eq!(quick_get(port), Some(200));
    drop(socks);
    assert!(
        !sup.stderr().contains("Too many open files"),
        "{}",
        sup.stderr()
    );
    assert_eq!(
        nofile_of(i64::from(sup.pid())).0,
        4096,
        "windlass raised its own soft limit to the hard one"
    );
}

#[test]
fn at_the_hard_limit_connections_stay_under_the_cap_and_the_app_is_never_stopped() {
    if !enough_fds_for_the_flood() {
        eprintln!("skipped: the hard open-files limit is too low for a {FLOOD}-connection flood");
        return;
    }
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&config(port, admin));
    let sup = up_limited(&p, 1024, 1024);
    wait_for("hello behind the proxy", DEADLINE, || {
        (quick_get(port) == Some(200)).then_some(())
    });
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");

    let socks = flood(port, FLOOD);
    let clients = || proxy_sample(admin, "windlass_proxy_client_connections");
    let open_early = clients();
    let_health_checks_run(&p);
    let open_later = clients();
    let status = status_within(&p).expect("`windlass status` answers during the flood");
    let inst = &status["apps"][0]["instances"][0];
    assert_eq!(inst["restarts"], 0, "{inst}");
    assert_eq!(
        inst["pid"].as_i64(),
        Some(pid),
        "the app was never stopped: {inst}"
    );
    assert_eq!(
        quick_get(port),
        Some(200),
        "a fresh client is served during the flood"
    );
    let max = proxy_sample(admin, "windlass_proxy_max_connections").expect("the cap in /metrics");
    assert!(
        (32.0..1024.0).contains(&max),
        "the cap leaves room under the limit: {max}"
    );
    for open in [open_early, open_later] {
        let open = open.expect("the open connections in /metrics");
        assert!(
            open <= max,
            "{open} connections open, more than the cap {max}"
        );
    }
    // The excess was not served: it waited in the backlog, or idle connections were
    // closed for room (which is what lets the fresh client in).
    let shed = proxy_sample(admin, "windlass_proxy_idle_connections_closed_total").unwrap_or(0.0);
    assert!(
        socks.len() <= max as usize || shed > 0.0,
        "{} connections, {shed} closed",
        socks.len()
    );
    drop(socks);

    wait_for("a fresh request after the flood", DEADLINE, || {
        (quick_get(port) == Some(200)).then_some(())
    });
    let inst = p.instance("hello", 0);
    assert_eq!(inst["restarts"], 0, "{inst}");
    assert_eq!(inst["pid"].as_i64(), Some(pid), "{inst}");
    let log = p.log_lines("hello").join("\n");
    assert!(!log.contains("unhealthy"), "{log}");
    assert!(
        !sup.stderr().contains("Too many open files"),
        "{}",
        sup.stderr()
    );
}

/// The public port's listen backlog (as `ss` reports it: Send-Q of the listening socket) is
/// nginx's 511 or more, not the 128 of a plain `bind`: a burst of new clients waits in the
/// kernel instead of being refused while the proxy is at its cap.
#[test]
fn the_public_port_has_a_deep_listen_backlog() {
    let (port, admin) = (free_port(), free_port());
    let p = Project::new(&config(port, admin));
    let _sup = p.up(&[]);
    let backlog = wait_for("ss to show the public listener", DEADLINE, || {
        let o = Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let f: Vec<&str> = text.split_whitespace().collect();
        (f.len() >= 3).then(|| f[2].parse::<u64>().ok()).flatten()
    });
    assert!(backlog >= 511, "listen backlog {backlog}");
}
