//! The admin listener's guard and the console's input path, attacked the way issue 10 did:
//! a console attach or a log read without the token, a DNS-rebinding `Host`, a log read asking
//! for a million lines, and a paste into an app that never reads its terminal.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use crate::helper::*;

const TOKEN: &str = "adm1n-s3cret";

/// A project with one console app running an interactive `sh`, plus `extra` in `[admin]`.
fn console_project(admin: u16, extra: &str) -> Project {
    Project::new(&format!(
        "[app.sh]\ncommand = [\"sh\"]\nconsole = true\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{extra}"
    ))
}

/// Reads one HTTP response head (and its `Content-Length` body) from `s`: (status, head, body).
fn read_response(s: &mut impl Read) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            other => panic!(
                "the connection ended inside a response head ({other:?}): {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {head:?}"));
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).expect("read the body");
    (code, head, String::from_utf8_lossy(&body).into_owned())
}

/// One request on a new loopback connection with `Host: host` (`Connection: close`).
fn with_host(port: u16, host: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    (code, text)
}

/// Asks the admin listener for the console of `sh` (an upgrade), with `auth` when given, and
/// sends `typed` right behind the request, as an attacker would. The connection stays open
/// (it is returned) when the answer is a `101`.
fn admin_console(port: u16, auth: Option<&str>, typed: &str) -> (u16, String, String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut req = format!(
        "GET /api/v1/apps/sh/console HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: upgrade\r\nUpgrade: windlass-console\r\n"
    );
    if let Some(a) = auth {
        req.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(typed);
    s.write_all(req.as_bytes()).expect("send");
    let (code, head, body) = read_response(&mut s);
    (code, head, body, s)
}

/// One request on the project's control socket: (status, body).
fn socket_request(p: &Project, method: &str, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(p.path().join(".windlass/control.sock")).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: windlass\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .expect("send");
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .unwrap_or_else(|e| panic!("no answer to {method} {path} within {DEADLINE:?}: {e}"));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    (code, text)
}

/// Runs a windlass command, killing it (and failing) if it has not finished by the deadline.
fn run_within(p: &Project, args: &[&str]) -> Output {
    let mut child: Child = p
        .cmd(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn windlass");
    let end = Instant::now() + DEADLINE;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`windlass {}` did not answer within {DEADLINE:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(15));
    }
}

fn wait_running(p: &Project, app: &str) -> i64 {
    wait_for(&format!("{app} to run"), DEADLINE, || {
        let i = p.instance(app, 0);
        (i["state"] == "running")
            .then(|| i["pid"].as_i64())
            .flatten()
    })
}

#[test]
fn the_admin_console_needs_the_token() {
    let admin = free_port();
    let p = console_project(admin, &format!("token = \"{TOKEN}\"\n"));
    let _sup = p.up(&[]);
    wait_running(&p, "sh");

    // Issue 10's attack: a plain GET with the upgrade headers, the keystrokes right behind.
    let (code, head, body, _s) = admin_console(admin, None, "touch pwned-no-token\n");
    assert_eq!(code, 401, "{head}{body}");
    assert!(!head.contains("windlass-console-role"), "{head}");
    assert!(
        body.contains("Bearer"),
        "the error says what to send: {body}"
    );
    let (code, head, body, _s) =
        admin_console(admin, Some("wrong-token"), "touch pwned-wrong-token\n");
    assert_eq!(code, 401, "{head}{body}");
    // A read-only viewer still sees what the app prints: it needs the token too.
    let mut s = TcpStream::connect(("127.0.0.1", admin)).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(
        s,
        "GET /api/v1/apps/sh/console?read_only=true HTTP/1.1\r\nHost: 127.0.0.1:{admin}\r\nConnection: upgrade\r\nUpgrade: windlass-console\r\n\r\n"
    )
    .expect("send");
    let (code, head, _) = read_response(&mut s);
    assert_eq!(code, 401, "{head}");
    let (code, body) = http_request(
        admin,
        "POST",
        "/api/v1/apps/sh/console/size?rows=10&cols=10",
        &[],
    )
    .expect("POST size");
    assert_eq!(code, 401, "{body}");

    // With the token the console works; once what it typed ran, everything typed before it
    // would have run too (a shell reads its terminal in order): nothing was.
    let (code, head, body, mut s) = admin_console(admin, Some(TOKEN), "");
    assert_eq!(code, 101, "{head}{body}");
    assert!(head.contains("windlass-console-role: writer"), "{head}");
    s.write_all(b"touch by-token\n").expect("type");
    wait_for("the typed command to run", DEADLINE, || {
        p.path().join("by-token").exists().then_some(())
    });
    assert!(!p.path().join("pwned-no-token").exists());
    assert!(!p.path().join("pwned-wrong-token").exists());
}

#[test]
fn without_a_token_consoles_and_logs_are_only_on_the_control_socket() {
    let admin = free_port();
    let p = console_project(admin, "");
    let _sup = p.up(&[]);
    wait_running(&p, "sh");

    let (code, head, body, _s) = admin_console(admin, None, "touch pwned\n");
    assert_eq!(code, 403, "{head}{body}");
    assert!(!head.contains("windlass-console-role"), "{head}");
    assert!(body.contains("windlass attach"), "names the way in: {body}");
    let (code, body) = http_get(admin, "/api/v1/logs?app=sh").expect("logs");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("windlass logs"), "names the way in: {body}");
    // Other reads stay open on loopback.
    let (code, body) = http_get(admin, "/api/v1/status").expect("status");
    assert_eq!(code, 200, "{body}");

    // The control socket (mode 0600) still gives the console.
    let mut attach = p
        .cmd(&["attach", "sh"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("attach");
    let mut stdin = attach.stdin.take().expect("stdin");
    stdin.write_all(b"touch via-socket\n").expect("type");
    wait_for("the typed command to run", DEADLINE, || {
        p.path().join("via-socket").exists().then_some(())
    });
    assert!(!p.path().join("pwned").exists());
    drop(stdin);
    let status = wait_for("attach to exit", DEADLINE, || {
        attach.try_wait().expect("try_wait")
    });
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_rebinding_host_is_misdirected() {
    let admin = free_port();
    let p = console_project(
        admin,
        &format!("token = \"{TOKEN}\"\nhosts = [\"windlass.internal\"]\n"),
    );
    let _sup = p.up(&[]);
    wait_running(&p, "sh");
    let auth = format!("Bearer {TOKEN}");
    for path in [
        "/api/v1/logs",
        "/api/v1/status",
        "/metrics",
        "/dashboard",
        "/",
        "/nope",
    ] {
        for host in [
            "rebind.evil.example".to_owned(),
            format!("rebind.evil.example:{admin}"),
            "127.0.0.1.evil.example".to_owned(),
            format!("localhost.evil.example:{admin}"),
        ] {
            // Even with the token: the page of another site must not reach the listener.
            let (code, text) = with_host(admin, &host, path, &[("Authorization", &auth)]);
            assert_eq!(code, 421, "Host {host} {path}: {text}");
            assert!(text.contains("hosts"), "says how to allow a name: {text}");
        }
    }
    for host in [
        format!("127.0.0.1:{admin}"),
        format!("localhost:{admin}"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        format!("127.1.2.3:{admin}"),
        format!("[::1]:{admin}"),
        "windlass.internal".to_owned(),
        format!("Windlass.Internal:{admin}"),
    ] {
        for path in ["/api/v1/status", "/metrics", "/dashboard"] {
            let (code, text) = with_host(admin, &host, path, &[]);
            assert_eq!(code, 200, "Host {host} {path}: {text}");
        }
        let (code, text) = with_host(admin, &host, "/api/v1/logs", &[("Authorization", &auth)]);
        assert_eq!(code, 200, "Host {host} logs: {text}");
    }
}

#[test]
fn log_reads_need_the_token_and_ask_for_at_most_10000_lines() {
    let admin = free_port();
    let p = Project::new(&format!(
        "[app.talk]\ncommand = [\"sh\", \"-c\", \"echo the-secret-42; echo err-secret-43 >&2; exec sleep 100000\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken = \"{TOKEN}\"\n"
    ));
    let _sup = p.up(&[]);
    wait_for("the secrets in the log", DEADLINE, || {
        let lines = p.log_lines("talk");
        (lines.iter().any(|l| l.contains("the-secret-42"))
            && lines.iter().any(|l| l.contains("err-secret-43")))
        .then_some(())
    });
    let auth = format!("Bearer {TOKEN}");
    // Status stays open on loopback, but the stderr lines in it are app output: token only.
    assert!(
        p.instance("talk", 0)["last_stderr"]
            .to_string()
            .contains("err-secret-43"),
        "the control socket shows them"
    );
    for path in ["/api/v1/status", "/api/v1/apps/talk"] {
        let (code, body) = http_get(admin, path).expect("status");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"talk\""), "{body}");
        assert!(
            !body.contains("err-secret-43"),
            "{path} without the token: {body}"
        );
        let (code, body) =
            http_request(admin, "GET", path, &[("Authorization", &auth)]).expect("status");
        assert_eq!(code, 200, "{body}");
        assert!(
            body.contains("err-secret-43"),
            "{path} with the token: {body}"
        );
    }
    let (code, body) = http_get(admin, "/api/v1/logs").expect("logs");
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("the-secret-42"), "{body}");
    let (code, body) = http_request(
        admin,
        "GET",
        "/api/v1/logs",
        &[("Authorization", "Bearer nope")],
    )
    .expect("logs");
    assert_eq!(code, 401, "{body}");
    let (code, body) =
        http_request(admin, "GET", "/api/v1/logs", &[("Authorization", &auth)]).expect("logs");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("the-secret-42"), "{body}");

    // n: up to 10,000 lines a request, on both listeners; more is a 400 saying so.
    let (code, body) = http_request(
        admin,
        "GET",
        "/api/v1/logs?n=10000",
        &[("Authorization", &auth)],
    )
    .expect("logs");
    assert_eq!(code, 200, "{body}");
    for path in ["/api/v1/logs?n=10001", "/api/v1/logs?n=1000000&app=talk"] {
        let (code, body) =
            http_request(admin, "GET", path, &[("Authorization", &auth)]).expect("logs");
        assert_eq!(code, 400, "{path}: {body}");
        assert!(body.contains("10000"), "{body}");
    }
    let (code, body) = socket_request(&p, "GET", "/v1/logs?n=1000000");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("10000"), "{body}");
    let (code, body) = socket_request(&p, "GET", "/v1/logs?n=10000&app=talk");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("the-secret-42"), "{body}");

    // The command line says so before asking.
    let o = run_within(&p, &["logs", "talk", "-n", "1000000"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("10000"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let o = run_within(&p, &["logs", "talk", "-n", "10000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("the-secret-42"));
}

#[test]
fn a_paste_into_a_console_nobody_reads_blocks_nothing_else() {
    // `sh` runs `sleep`: nothing reads the terminal, so its input queue fills up at once.
    let p = Project::new(
        "[app.deaf]\ncommand = [\"sh\", \"-c\", \"sleep 100000\"]\nconsole = true\n\n\
         [app.other]\ncommand = [\"sleep\", \"100000\"]\n",
    );
    let _sup = p.up(&[]);
    let first_pid = wait_running(&p, "deaf");

    let mut s = UnixStream::connect(p.path().join(".windlass/control.sock")).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    s.write_all(b"GET /v1/apps/deaf/console HTTP/1.1\r\nHost: windlass\r\nConnection: upgrade\r\nUpgrade: windlass-console\r\n\r\n")
        .expect("send");
    let (code, head, _) = read_response(&mut s);
    assert_eq!(code, 101, "{head}");
    assert!(head.contains("windlass-console-role: writer"), "{head}");
    // What the console echoes is read (and dropped) all along: only the input is stuck.
    let mut out = s.try_clone().expect("clone");
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
    });
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut input = s.try_clone().expect("clone");
    let counter = written.clone();
    let paste = std::thread::spawn(move || {
        // 16 KiB writes of 64-byte lines (a paste, as a terminal sends it).
        let chunk = [b"x".repeat(63), b"\n".to_vec()].concat().repeat(256);
        for _ in 0..(1 << 20) / chunk.len() {
            if input.write_all(&chunk).is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    // Far more than the terminal's input queue holds: the app is not reading it.
    wait_for("128 KiB of the paste to be sent", DEADLINE, || {
        (written.load(std::sync::atomic::Ordering::Relaxed) >= 128 * 1024).then_some(())
    });

    for round in 0..5 {
        let o = run_within(&p, &["status", "--json"]);
        assert!(
            o.status.success(),
            "status, round {round}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let rows = 20 + round;
        let (code, body) = socket_request(
            &p,
            "POST",
            &format!("/v1/apps/deaf/console/size?rows={rows}&cols=90"),
        );
        assert_eq!(code, 204, "resize, round {round}: {body}");
    }
    assert!(
        written.load(std::sync::atomic::Ordering::Relaxed) < 1 << 20,
        "the paste was held back (its socket is not read while the terminal is full)"
    );
    assert_eq!(p.instance("other", 0)["state"], "running");
    // A restart replaces the process that holds the full terminal; the viewer stays.
    let o = run_within(&p, &["restart", "deaf"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let new_pid = wait_running(&p, "deaf");
    assert_ne!(new_pid, first_pid);

    let _ = s.shutdown(std::net::Shutdown::Both);
    paste.join().expect("paste thread");
    drain.join().expect("drain thread");
}

#[test]
fn a_bad_admin_host_name_is_a_config_error_at_its_place() {
    let p = Project::new(
        "[app.a]\ncommand = [\"sleep\", \"1\"]\n\n[admin]\nlisten = \"127.0.0.1:0\"\nhosts = [\"ok.example\", \"http://evil:80/\"]\n",
    );
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("windlass.toml:6:24"),
        "file:line:column: {err}"
    );
    assert!(
        err.contains("`hosts`") && err.contains("without a scheme"),
        "{err}"
    );
}

/// Open descriptors of a process.
fn open_fds(pid: i64) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn idle_and_half_sent_connections_cannot_pile_up_on_the_admin_listener() {
    let admin = free_port();
    let p = Project::new(&format!(
        "[app.a]\ncommand = [\"sleep\", \"1000\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    ));
    let _sup = p.up(&[]);
    wait_running(&p, "a");
    let status: serde_json::Value =
        serde_json::from_slice(&run_within(&p, &["status", "--json"]).stdout).expect("json");
    let pid = status["supervisor"]["pid"].as_i64().expect("pid");
    let before = open_fds(pid);

    // A request head that never ends (slowloris) is cut off: the server closes the connection.
    let mut slow = TcpStream::connect(("127.0.0.1", admin)).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .expect("part of a head");
    slow.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut rest = Vec::new();
    let ended = slow.read_to_end(&mut rest);
    assert!(
        ended.is_ok(),
        "windlass closes a connection whose head never ends: {ended:?}"
    );
    let answer = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a half-sent head gets nothing or a 408, then the close: {answer:?}"
    );

    // 300 connections that send nothing: windlass does not hold a descriptor for each, and
    // the control socket keeps answering.
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", admin)).ok())
        .collect();
    assert!(idle.len() > 200, "the kernel took the connections");
    let st = run_within(&p, &["status"]);
    assert!(st.status.success(), "status answers during the flood");
    let held = open_fds(pid).saturating_sub(before);
    assert!(
        held <= 80,
        "windlass holds {held} descriptors for 300 idle admin connections (cap 64)"
    );
    drop(idle);
    // Once the flood is gone the listener serves again.
    wait_for(
        "the admin listener to answer after the flood",
        DEADLINE,
        || (with_host(admin, "127.0.0.1", "/metrics", &[]).0 == 200).then_some(()),
    );
}
