//! Orphans: windlass is a child subreaper and reaps the orphans of its apps; as PID 1 of a
//! PID namespace (a container) it reaps them too and stops cleanly on SIGTERM.
//!
//! The app double-forks: its child forks a grandchild and exits at once, so the grandchild
//! is orphaned and adopted by windlass. The grandchild records its new parent, then becomes
//! `sh` waiting for the file `g.go` (so the test can find it by its command line), and exits
//! when the test creates that file. Nothing but windlass can then reap it.

use std::process::{Command, Stdio};

use crate::helper::*;

const DOUBLE_FORK: &str = r#"
import os, time
a = os.fork()
if a == 0:
    parent = os.getpid()
    if os.fork() == 0:
        while os.getppid() == parent:
            time.sleep(0.01)
        with open("g.tmp", "w") as f:
            f.write(str(os.getppid()))
        os.rename("g.tmp", "g.ppid")
        os.execvp("sh", ["sh", "-c", "while [ ! -e g.go ]; do sleep 0.05; done"])
    os._exit(0)
os.waitpid(a, 0)
while True:
    time.sleep(3600)
"#;

fn project() -> Project {
    let p = Project::new(
        "[app.forker]\ncommand = [\"python3\", \"forker.py\"]\nstop = { timeout = \"5s\" }\n",
    );
    p.write("forker.py", DOUBLE_FORK);
    p
}

fn stat(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The grandchild (host pid), found by its parent and command line.
fn grandchild_of(parent: i32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let (_, ppid) = stat(pid)?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (ppid == parent && String::from_utf8_lossy(&cmd).contains("g.go")).then_some(pid)
    })
}

/// Lets the grandchild exit and waits until it is reaped (gone from /proc, not a zombie).
fn release_and_see_reaped(p: &Project, windlass: i32) {
    let g = wait_for("the grandchild under windlass", DEADLINE, || {
        grandchild_of(windlass)
    });
    std::fs::write(p.path().join("g.go"), "").expect("g.go");
    wait_for(
        "the orphaned grandchild to be reaped (not left a zombie)",
        DEADLINE,
        || stat(g).is_none().then_some(()),
    );
}

#[test]
fn orphans_of_apps_are_adopted_and_reaped() {
    let p = project();
    let sup = p.up(&[]);
    let ppid = wait_for("g.ppid", DEADLINE, || {
        std::fs::read_to_string(p.path().join("g.ppid")).ok()
    });
    // A subreaper: the orphan went to windlass, not to init.
    assert_eq!(ppid.trim(), sup.pid().to_string());
    release_and_see_reaped(&p, sup.pid());
}

#[test]
fn as_pid1_in_a_pid_namespace_reaps_orphans_and_stops_on_sigterm() {
    let p = project();
    let mut child = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(BIN)
        .arg("up")
        .current_dir(p.path())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(p.path().join("up.err")).expect("err"))
        .spawn()
        .expect("unshare (util-linux; needs root or user namespaces)");
    let unshare = child.id() as i32;
    // windlass is unshare's child: PID 1 inside, some pid outside.
    let windlass = wait_for("windlass under unshare", DEADLINE, || {
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            (stat(pid)?.1 == unshare).then_some(pid)
        })
    });
    let ppid = wait_for("g.ppid", DEADLINE, || {
        std::fs::read_to_string(p.path().join("g.ppid")).ok()
    });
    assert_eq!(ppid.trim(), "1", "the orphan's parent inside the namespace");
    release_and_see_reaped(&p, windlass);
    // SIGTERM to PID 1: the apps stop gracefully and windlass exits 0.
    // SAFETY: plain kill(2) of the process this test started (through unshare).
    unsafe { libc::kill(windlass, libc::SIGTERM) };
    let status = wait_for("unshare to exit", DEADLINE, || {
        child.try_wait().expect("try_wait")
    });
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(p.path().join("up.err")).unwrap_or_default()
    );
    assert!(stat(windlass).is_none());
}
