//! The control socket and the commands that use it: permissions, JSON shape, one supervisor
//! per project, detach, down, and the "no supervisor" exit code.

use std::os::unix::fs::PermissionsExt;

use crate::helper::*;

#[test]
fn the_control_socket_is_private() {
    let p = Project::new("[app.a]\ncommand = [\"sleep\", \"1000\"]\n");
    let _sup = p.up(&[]);
    let sock = p.path().join(".windlass/control.sock");
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(p.path().join(".windlass"))
        .expect("dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "dir mode {dir_mode:o}");
}

#[test]
fn status_json_has_the_documented_shape() {
    let port = free_port();
    let p = Project::new(&format!(
        "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\ninstances = 1\n\n[app.idle]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n",
        hello_app().display()
    ));
    let _sup = p.up(&[]);
    wait_for("hello to answer", DEADLINE, || {
        http_get(port, "/health").ok()
    });
    let s = p.status();
    assert_eq!(s["version"], 1);
    assert!(s["supervisor"]["pid"].as_u64().is_some(), "{s}");
    assert!(s["supervisor"]["memory_bytes"].as_u64().expect("mem") > 0);
    let apps = s["apps"].as_array().expect("apps");
    assert_eq!(apps.len(), 2);
    let hello = &apps[0];
    assert_eq!(hello["name"], "hello");
    assert_eq!(hello["state"], "running");
    assert_eq!(hello["port"], port);
    assert_eq!(hello["log_lines_dropped"], 0);
    let i = &hello["instances"][0];
    for key in [
        "index",
        "state",
        "pid",
        "port",
        "started_at",
        "uptime_secs",
        "restarts",
        "memory_bytes",
        "cpu_seconds",
        "last_exit",
        "last_stderr",
    ] {
        assert!(i.get(key).is_some(), "instance lacks `{key}`: {i}");
    }
    assert!(
        i["memory_bytes"].as_u64().expect("memory") > 1024 * 1024,
        "{i}"
    );
    assert_eq!(apps[1]["state"], "stopped");
}

#[test]
fn a_second_up_in_the_same_project_refuses() {
    let p = Project::new("[app.a]\ncommand = [\"sleep\", \"1000\"]\n");
    let sup = p.up(&[]);
    let o = p.run(&["up"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("already running") && err.contains(&format!("pid {}", sup.pid())),
        "{err}"
    );
    let o = p.run(&["up", "-d"]);
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn without_a_supervisor_commands_say_so_and_exit_3() {
    let p = Project::new("[app.a]\ncommand = [\"sleep\", \"1000\"]\n");
    for args in [&["status"][..], &["logs"], &["stop", "a"], &["down"]] {
        let o = p.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(3), "{args:?}: {err}");
        assert!(
            err.contains("no supervisor is running") && err.contains("windlass up -d"),
            "{err}"
        );
    }
}

#[test]
fn up_detached_then_down() {
    let port = free_port();
    let p = Project::new(&format!(
        "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\n",
        hello_app().display()
    ));
    let o = p.run(&["up", "-d"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("hello") && out.contains("running"), "{out}");
    let pid: i32 = std::fs::read_to_string(p.path().join(".windlass/windlass.pid"))
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid));
    let app_pid = p.instance("hello", 0)["pid"].as_i64().expect("app pid") as i32;
    wait_for("hello to answer", DEADLINE, || http_get(port, "/").ok());
    let o = p.run(&["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for("the supervisor to exit", DEADLINE, || {
        (!alive(pid)).then_some(())
    });
    assert!(!alive(app_pid));
    assert!(!p.path().join(".windlass/windlass.pid").exists());
    let o = p.run(&["status"]);
    assert_eq!(o.status.code(), Some(3));
}

#[test]
fn up_detached_reports_an_app_that_fails() {
    let p = Project::new(
        "[app.bad]\ncommand = [\"sh\", \"-c\", \"echo nope >&2; exit 1\"]\nbackoff = { initial = \"10ms\", max = \"20ms\", crashloop_after = 2 }\n",
    );
    let o = p.run(&["up", "-d"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("crashloop") && out.contains("nope"), "{out}");
    let o = p.run(&["down"]);
    assert!(o.status.success());
}

#[test]
fn attach_gives_the_app_the_terminal_size_and_follows_it() {
    use std::io::Write;
    let p = Project::new(
        "[app.sh]\ncommand = [\"sh\", \"-c\", \"while read l; do stty size; done\"]\nconsole = true\n",
    );
    let _sup = p.up(&[]);
    wait_for("the app to run", DEADLINE, || {
        p.instance("sh", 0)["pid"].as_i64()
    });
    let (mut master, mut child, mut seen) = attach_on_pty(&p, "sh", 50, 132);
    let from = seen.len();
    master.write_all(b"x\r").expect("type");
    wait_for("the app to see the window's size", DEADLINE, || {
        read_until(&mut master, &mut seen, from, "50 132")
    });
    // The window shrinks: the terminal says so with SIGWINCH, attach passes it on.
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize; the fd is this test's PTY master.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::TIOCSWINSZ,
            &size,
        )
    };
    assert_eq!(r, 0, "resize the test terminal");
    let attach = nix::unistd::Pid::from_raw(child.id() as i32);
    let from = seen.len();
    wait_for("the app to see the new size", DEADLINE, || {
        // attach is not this terminal's foreground process: send its SIGWINCH by hand,
        // then ask the app again, until the new size shows.
        let _ = nix::sys::signal::kill(attach, nix::sys::signal::Signal::SIGWINCH);
        let _ = master.write_all(b"x\r");
        read_until(&mut master, &mut seen, from, "40 100")
    });
    master.write_all(&[0x1d]).expect("Ctrl-]");
    let status = wait_for("attach to exit", DEADLINE, || {
        let _ = read_until(&mut master, &mut seen, 0, "");
        child.try_wait().expect("try_wait")
    });
    assert_eq!(status.code(), Some(0), "{seen}");
}
