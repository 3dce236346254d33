//! The proxy in front of the apps and zero-downtime reloads, end to end through the real
//! binary: every request counted, every response checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::helper::*;

fn config(port: u16, version: &str, extra: &str) -> String {
    format!(
        "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\nenv = {{ VERSION = \"{version}\" }}\n\
         health = {{ path = \"/health\" }}\nstop = {{ timeout = \"5s\" }}\n{extra}\n",
        hello_app().display()
    )
}

fn set_version(p: &Project, port: u16, version: &str, extra: &str) {
    std::fs::write(p.path().join("windlass.toml"), config(port, version, extra))
        .expect("write config");
}

/// A keep-alive HTTP/1.1 client on one connection (as browsers and load generators use).
pub(crate) struct KeepAlive {
    pub(crate) port: u16,
    pub(crate) stream: Option<std::io::BufReader<std::net::TcpStream>>,
}

impl KeepAlive {
    pub(crate) fn get(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        use std::io::{BufRead, Read, Write};
        if self.stream.is_none() {
            let s = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
            s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
            self.stream = Some(std::io::BufReader::new(s));
        }
        let r = self.stream.as_mut().expect("connected");
        write!(r.get_mut(), "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")?;
        let mut status_line = String::new();
        r.read_line(&mut status_line)?;
        let code: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        if close {
            self.stream = None;
        }
        Ok((code, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[test]
fn reloads_under_load_fail_no_request() {
    let port = free_port();
    let p = Project::new(&config(port, "1", "instances = 2"));
    let _sup = p.up(&[]);
    wait_for("hello behind the proxy", DEADLINE, || {
        http_get(port, "/").ok().filter(|(c, _)| *c == 200)
    });

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(std::thread::spawn(move || -> Result<(), String> {
            let mut ka = KeepAlive { port, stream: None };
            let mut n = 0;
            // Each client sends requests until told to stop, at least 20.
            while n < 20 || !stop.load(Ordering::Relaxed) {
                // Half the clients use one keep-alive connection, half a fresh one each time.
                let r = if c % 2 == 0 {
                    ka.get("/")
                } else {
                    http_get(port, "/")
                };
                match r {
                    Ok((200, body)) if body.starts_with("hello from") => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((code, body)) => {
                        return Err(format!("client {c} request {n}: {code} {body}"));
                    }
                    Err(e) => return Err(format!("client {c} request {n}: {e}")),
                }
                n += 1;
                if n > 100_000 {
                    break;
                }
            }
            Ok(())
        }));
    }
    let reloads = 4;
    for v in 2..2 + reloads {
        let version = v.to_string();
        set_version(&p, port, &version, "instances = 2");
        let o = p.run(&["reload", "hello"]);
        assert!(
            o.status.success(),
            "reload {v}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let (_, body) = http_get(port, "/").expect("after reload");
        assert!(body.contains(&format!("version={version}")), "{body}");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join()
            .expect("client thread")
            .expect("every request succeeds");
    }
    assert!(ok.load(Ordering::Relaxed) >= 8 * 20);
    let inst = p.instance("hello", 0);
    assert_eq!(inst["reloads"], reloads, "{inst}");
    assert_eq!(inst["restarts"], 0, "{inst}");
}

#[test]
fn a_failing_new_version_keeps_the_old_one_serving() {
    let port = free_port();
    let p = Project::new(&config(port, "1", ""));
    let _sup = p.up(&[]);
    wait_for("hello behind the proxy", DEADLINE, || {
        http_get(port, "/").ok().filter(|(c, _)| *c == 200)
    });
    let old_pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    // The new version answers /health with 404: it never becomes healthy.
    std::fs::write(
        p.path().join("windlass.toml"),
        format!(
            "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\nenv = {{ VERSION = \"2\" }}\n\
             health = {{ path = \"/missing\", start_timeout = \"20s\" }}\n",
            hello_app().display()
        ),
    )
    .expect("config");
    let o = p.run(&["reload", "hello"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not become healthy") && err.contains("404"),
        "{err}"
    );
    assert!(
        err.contains("last output lines of the new process"),
        "{err}"
    );
    let (code, body) = http_get(port, "/").expect("still serving");
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("pid={old_pid} ")) && body.contains("version=1"),
        "{body}"
    );
    assert_eq!(p.instance("hello", 0)["state"], "running");
}

#[test]
fn a_slow_request_in_flight_finishes_during_the_drain() {
    let port = free_port();
    let p = Project::new(&config(port, "1", ""));
    let _sup = p.up(&[]);
    wait_for("hello behind the proxy", DEADLINE, || {
        http_get(port, "/").ok().filter(|(c, _)| *c == 200)
    });
    // The request is answered only once the test creates `release`: no timing involved.
    let release = p.path().join("release");
    let path = format!("/hold?until={}", release.display());
    let slow = std::thread::spawn(move || http_get(port, &path));
    wait_for(
        "the slow request in flight through the proxy",
        DEADLINE,
        || (p.status()["apps"][0]["proxy"]["in_flight"] == 1).then_some(()),
    );
    set_version(&p, port, "2", "");
    let dir = p.path().to_path_buf();
    let reload = std::thread::spawn(move || {
        std::process::Command::new(BIN)
            .args(["reload", "hello"])
            .current_dir(dir)
            .output()
    });
    wait_for(
        "the switch, with the old instance draining",
        DEADLINE,
        || {
            p.log_lines("hello")
                .iter()
                .any(|l| l.contains("traffic switched from pid") && l.contains("draining it"))
                .then_some(())
        },
    );
    // New requests already go to the new version while the old one drains.
    let (_, body) = http_get(port, "/").expect("during the drain");
    assert!(body.contains("version=2"), "{body}");
    std::fs::write(&release, "").expect("release the slow request");
    let o = reload.join().expect("thread").expect("reload");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("1 request(s) in flight") && !out.contains("deadline"),
        "the drain waited for the slow request: {out}"
    );
    let (code, body) = slow.join().expect("thread").expect("slow request");
    assert_eq!(code, 200);
    assert!(
        body.contains("version=1"),
        "answered by the old version: {body}"
    );
}

#[test]
fn requests_wait_while_the_only_instance_restarts() {
    let port = free_port();
    let p = Project::new(&config(port, "1", "backoff = { reset_after = \"100ms\" }"));
    let _sup = p.up(&[]);
    wait_for("hello behind the proxy", DEADLINE, || {
        http_get(port, "/").ok().filter(|(c, _)| *c == 200)
    });
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    // `restart` stops the only instance (drained first) and starts a new one; requests sent
    // meanwhile are held by the proxy until the new one is healthy.
    let dir = p.path().to_path_buf();
    let restart = std::thread::spawn(move || {
        std::process::Command::new(BIN)
            .args(["restart", "hello"])
            .current_dir(dir)
            .output()
    });
    wait_for("the old instance to go", DEADLINE, || {
        let i = p.instance("hello", 0);
        (i["pid"].as_i64() != Some(pid) || i["state"] != "running").then_some(())
    });
    let handles: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || http_get(port, "/")))
        .collect();
    for h in handles {
        let (code, body) = h.join().expect("thread").expect("request");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("hello from"), "{body}");
        assert!(!body.contains(&format!("pid={pid} ")), "{body}");
    }
    let o = restart.join().expect("thread").expect("restart");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_public_port_in_use_is_reported_clearly() {
    let holder = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = holder.local_addr().expect("addr").port();
    let p = Project::new(&config(port, "1", ""));
    let o = p.run(&["up"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on 0.0.0.0:{port} for app `hello`")),
        "{err}"
    );
    assert!(err.contains("another process holds port"), "{err}");
    // The holder is this test process, found through /proc.
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn requests_right_after_a_crash_wait_for_the_new_instance() {
    let port = free_port();
    let p = Project::new(&config(port, "1", ""));
    let _sup = p.up(&[]);
    // Warm keep-alive connections into the proxy's pool.
    let mut ka = KeepAlive { port, stream: None };
    for _ in 0..5 {
        assert_eq!(ka.get("/").expect("warm").0, 200);
    }
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    // SAFETY: plain kill(2) of the app's pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // Once windlass has seen the crash, requests are held until the new instance is ready
    // (a request on the wire at the very instant of the kill may fail: see the README).
    wait_for("windlass to notice the crash", DEADLINE, || {
        let i = p.instance("hello", 0);
        (i["pid"].as_i64() != Some(pid) || i["state"] != "running").then_some(())
    });
    let handles: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || http_get(port, "/")))
        .collect();
    let mut seen = vec![ka.get("/")];
    seen.extend(handles.into_iter().map(|h| h.join().expect("thread")));
    for r in seen {
        let (code, body) = r.expect("request");
        assert_eq!(code, 200, "{body}");
        assert!(!body.contains(&format!("pid={pid} ")), "{body}");
    }
}

#[test]
fn a_watched_file_change_reloads_the_app() {
    let port = free_port();
    let p = Project::new(&config(port, "1", "watch = [\"conf/*.txt\"]"));
    p.write("conf/a.txt", "1");
    let _sup = p.up(&[]);
    wait_for("hello behind the proxy", DEADLINE, || {
        http_get(port, "/").ok().filter(|(c, _)| *c == 200)
    });
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    // A file outside the globs changes nothing; one inside reloads the app (blue-green).
    p.write("other.txt", "x");
    p.write("conf/a.txt", "2");
    wait_for("the watch to reload the app", DEADLINE, || {
        let i = p.instance("hello", 0);
        (i["reloads"] == 1 && i["pid"].as_i64() != Some(pid)).then_some(())
    });
    let lines = p.log_lines("hello");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("reload requested (blue-green)")),
        "{lines:?}"
    );
    assert_eq!(http_get(port, "/").expect("after").0, 200);
}

/// A blue-green reload whose new version never becomes healthy (its /health answers 404,
/// and it may take 10 minutes to say so): returns the project, the old pid and the new pid
/// once the new process is running beside the old, with the `reload` command still waiting.
fn reload_stuck_starting(port: u16) -> (Project, Supervisor, i64, i32, std::process::Child) {
    let p = Project::new(&config(port, "1", ""));
    let sup = p.up(&[]);
    wait_for("hello behind the proxy", DEADLINE, || {
        http_get(port, "/").ok().filter(|(c, _)| *c == 200)
    });
    let old_pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    std::fs::write(
        p.path().join("windlass.toml"),
        format!(
            "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\nenv = {{ VERSION = \"2\" }}\n\
             health = {{ path = \"/missing\", start_timeout = \"10m\" }}\nstop = {{ timeout = \"5s\" }}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            hello_app().display()
        ),
    )
    .expect("config");
    let reload = p
        .cmd(&["reload", "hello"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn reload");
    let new_pid = wait_for("the new process started beside the old", DEADLINE, || {
        p.log_lines("hello").iter().find_map(|l| {
            let rest = l.split("reload: started pid ").nth(1)?;
            rest.split_whitespace().next()?.parse::<i32>().ok()
        })
    });
    assert!(alive(new_pid) && alive(old_pid as i32));
    (p, sup, old_pid, new_pid, reload)
}

#[test]
fn a_stop_during_a_blue_green_start_acts_at_once() {
    let port = free_port();
    let (p, _sup, old_pid, new_pid, reload) = reload_stuck_starting(port);
    let mut stop = p
        .cmd(&["stop", "hello"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn stop");
    // With start_timeout = 10m, a stop queued behind the reload would time out here.
    let status = wait_for("`stop` to return", DEADLINE, || {
        stop.try_wait().expect("try_wait")
    });
    assert!(status.success(), "stop: {status}");
    assert!(!alive(old_pid as i32), "the old process is gone");
    assert!(!alive(new_pid), "the new process is gone");
    let o = reload.wait_with_output().expect("reload");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("interrupted by `stop`"), "{err}");
    assert_eq!(p.instance("hello", 0)["state"], "stopped");
}

#[test]
fn ctrl_c_during_a_blue_green_start_stops_both_processes_at_once() {
    let port = free_port();
    let (_p, mut sup, old_pid, new_pid, reload) = reload_stuck_starting(port);
    sup.signal(libc::SIGINT);
    sup.signal(libc::SIGINT);
    let code = sup.wait_exit(DEADLINE);
    assert!(code.is_some(), "windlass exited");
    assert!(!alive(old_pid as i32), "the old process is gone");
    assert!(!alive(new_pid), "the new process is gone");
    let o = reload.wait_with_output().expect("reload");
    assert!(!o.status.success());
}
