//! Supervision: restarts with backoff, crash loops, whole-group stops, no orphans, signals.

use std::time::Duration;

use crate::helper::*;

fn hello_config(port: u16, extra: &str) -> String {
    format!(
        "[app.hello]\ncommand = [\"python3\", \"{}\"]\nport = {port}\n{extra}\n",
        hello_app().display()
    )
}

#[test]
fn a_crashed_app_is_restarted_and_the_restart_counted() {
    let port = free_port();
    let p = Project::new(&hello_config(port, ""));
    let _sup = p.up(&[]);
    let (_, body) = wait_for("hello to answer", DEADLINE, || http_get(port, "/").ok());
    let first_pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    assert!(body.contains(&format!("pid={first_pid}")), "{body}");
    // /crash makes the app exit with status 3 (the connection just drops).
    let _ = http_get(port, "/crash");
    let (_, body) = wait_for("a new pid to answer", DEADLINE, || {
        http_get(port, "/")
            .ok()
            .filter(|(c, b)| *c == 200 && !b.contains(&format!("pid={first_pid} ")))
    });
    let inst = p.instance("hello", 0);
    assert_eq!(inst["restarts"], 1, "{inst}");
    assert_eq!(inst["last_exit"]["code"], 3, "{inst}");
    assert_eq!(inst["state"], "running");
    assert!(
        body.contains(&format!("pid={}", inst["pid"])),
        "{body} vs {inst}"
    );
}

#[test]
fn quick_failures_back_off_exponentially_then_flag_a_crash_loop() {
    let p = Project::new(
        "[app.bad]\ncommand = [\"sh\", \"-c\", \"echo boom-$INSTANCE >&2; exit 7\"]\n\
         backoff = { initial = \"50ms\", max = \"400ms\", crashloop_after = 4 }\n",
    );
    let _sup = p.up(&[]);
    let inst = wait_for("the crash loop", DEADLINE, || {
        let i = p.instance("bad", 0);
        (i["state"] == "crashloop").then_some(i)
    });
    assert_eq!(inst["last_exit"]["code"], 7, "{inst}");
    assert!(inst["restarts"].as_u64().expect("restarts") >= 3, "{inst}");
    assert_eq!(inst["last_stderr"][0], "boom-0", "{inst}");
    // The delays double from `initial` and stop at `max`: read them from windlass's notes.
    wait_for("four backoff notes", DEADLINE, || {
        let delays: Vec<String> = p
            .log_lines("bad")
            .iter()
            .filter_map(|l| {
                l.split_once("next start in ")
                    .or_else(|| l.split_once("restarting in "))
            })
            .map(|(_, d)| d.to_owned())
            .collect();
        (delays.len() >= 5).then(|| {
            assert_eq!(
                delays[..5],
                ["50ms", "100ms", "200ms", "400ms", "400ms"],
                "{delays:?}"
            )
        })
    });
    // `status` (human) shows the reason and the stderr lines.
    let o = p.run(&["status"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("crashloop") && out.contains("exit code 7") && out.contains("boom-0"),
        "{out}"
    );
}

#[test]
fn restart_never_leaves_a_failed_app_fatal() {
    let p = Project::new(
        "[app.once]\ncommand = [\"sh\", \"-c\", \"exit 2\"]\nrestart = \"never\"\n\n[app.ok]\ncommand = [\"true\"]\nrestart = \"on-failure\"\n",
    );
    let _sup = p.up(&[]);
    wait_for("fatal and exited", DEADLINE, || {
        (p.instance("once", 0)["state"] == "fatal" && p.instance("ok", 0)["state"] == "exited")
            .then_some(())
    });
    assert_eq!(p.instance("once", 0)["restarts"], 0);
}

/// A shell that ignores SIGTERM and starts a grandchild that ignores it too; both write their
/// pids so the test can watch them.
fn stubborn_app(p: &Project) -> String {
    p.write(
        "stubborn.sh",
        "trap '' TERM\nsh -c 'trap \"\" TERM; echo $$ > grandchild.pid; while :; do sleep 0.05; done' &\necho $$ > child.pid\nwhile :; do sleep 0.05; done\n",
    );
    "[app.stubborn]\ncommand = [\"sh\", \"stubborn.sh\"]\nstop = { timeout = \"300ms\" }\n"
        .to_owned()
}

fn read_pid(p: &Project, name: &str) -> i32 {
    wait_for(name, DEADLINE, || {
        std::fs::read_to_string(p.path().join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn stop_timeout_kills_the_whole_group_grandchildren_included() {
    let p = Project::empty();
    let cfg = stubborn_app(&p);
    p.write("windlass.toml", &cfg);
    let _sup = p.up(&[]);
    let child = read_pid(&p, "child.pid");
    let grandchild = read_pid(&p, "grandchild.pid");
    assert!(alive(child) && alive(grandchild));
    let o = p.run(&["stop", "stubborn"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // `stop` returns once every process of the group is gone.
    assert!(!alive(child), "child {child} survived");
    assert!(!alive(grandchild), "grandchild {grandchild} survived");
    let inst = p.instance("stubborn", 0);
    assert_eq!(inst["state"], "stopped");
    assert_eq!(inst["last_exit"]["signal"], "SIGKILL", "{inst}");
}

#[test]
fn sigkill_of_windlass_leaves_no_orphan() {
    let p = Project::empty();
    let cfg = stubborn_app(&p);
    p.write("windlass.toml", &cfg);
    let mut sup = p.up(&[]);
    let child = read_pid(&p, "child.pid");
    let grandchild = read_pid(&p, "grandchild.pid");
    sup.signal(libc::SIGKILL);
    sup.wait_exit(DEADLINE);
    wait_for(
        "the app and its child to be killed by the guardian",
        DEADLINE,
        || (!alive(child) && !alive(grandchild)).then_some(()),
    );
}

#[test]
fn sigterm_stops_every_app_gracefully_and_exits_0() {
    let port = free_port();
    let p = Project::new(&hello_config(port, "instances = 1"));
    let mut sup = p.up(&[]);
    wait_for("hello to answer", DEADLINE, || http_get(port, "/").ok());
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid") as i32;
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait_exit(DEADLINE), Some(0));
    assert!(!alive(pid));
    assert!(!p.path().join(".windlass/control.sock").exists());
    let out = sup.stdout();
    assert!(
        out.contains("hello.0 | [windlass] stopping pid ") && out.contains("(SIGTERM)"),
        "{out}"
    );
}

#[test]
fn a_second_interrupt_kills_at_once() {
    let p = Project::empty();
    p.write(
        "slow.sh",
        "trap '' TERM INT\necho $$ > child.pid\nwhile :; do sleep 0.05; done\n",
    );
    p.write(
        "windlass.toml",
        "[app.slow]\ncommand = [\"sh\", \"slow.sh\"]\nstop = { timeout = \"1h\" }\n",
    );
    let mut sup = p.up(&[]);
    let child = read_pid(&p, "child.pid");
    sup.signal(libc::SIGINT);
    wait_for("the stopping state", DEADLINE, || {
        (p.instance("slow", 0)["state"] == "stopping").then_some(())
    });
    sup.signal(libc::SIGINT);
    // The stop timeout is an hour: exiting now proves the second Ctrl-C killed at once.
    assert_eq!(sup.wait_exit(DEADLINE), Some(0));
    assert!(!alive(child));
}

#[test]
fn env_env_file_port_and_instance_reach_the_app() {
    let p = Project::empty();
    let port = free_port();
    p.write(".env", "# secrets\nFROM_FILE=file\nOVERRIDDEN=file\n");
    p.write(
        "windlass.toml",
        &format!(
            "[app.envy]\ncommand = [\"sh\", \"-c\", \"echo vars $PROJECT_PORT $INSTANCE $FROM_FILE $OVERRIDDEN $WINDLASS_APP; exec sleep 1000\"]\n\
             port = {port}\nport_env = \"PROJECT_PORT\"\ninstances = 2\nenv_file = \".env\"\nenv = {{ OVERRIDDEN = \"toml\" }}\n"
        ),
    );
    let _sup = p.up(&[]);
    // Behind the proxy each instance gets its own private port, not the public one.
    let private = wait_for("both instances' lines", DEADLINE, || {
        let lines = p.log_lines("envy");
        let port_of = |i: u32| -> Option<u16> {
            lines.iter().find_map(|l| {
                let rest = l.split_once(&format!(" {i} out vars "))?.1;
                let (port, tail) = rest.split_once(' ')?;
                (tail == format!("{i} file toml envy")).then(|| port.parse().ok())?
            })
        };
        Some((port_of(0)?, port_of(1)?))
    });
    assert_ne!(private.0, private.1);
    assert!(
        private.0 != port && private.1 != port,
        "{private:?} vs public {port}"
    );
    assert_eq!(p.instance("envy", 0)["port"], private.0);
}

#[test]
fn up_with_app_names_starts_only_those_and_start_starts_the_others() {
    let p = Project::new(
        "[app.a]\ncommand = [\"sleep\", \"1000\"]\n\n[app.b]\ncommand = [\"sleep\", \"1000\"]\n",
    );
    let _sup = p.up(&["a"]);
    wait_for("a running", DEADLINE, || {
        (p.instance("a", 0)["state"] == "running").then_some(())
    });
    assert_eq!(p.instance("b", 0)["state"], "stopped");
    let o = p.run(&["start", "b"]);
    assert!(o.status.success());
    assert_eq!(p.instance("b", 0)["state"], "running");
    let o = p.run(&["restart", "nope"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no app named `nope`") && err.contains("apps: a, b"),
        "{err}"
    );
}

#[test]
fn restart_replaces_the_process() {
    let p = Project::new("[app.a]\ncommand = [\"sleep\", \"1000\"]\n");
    let _sup = p.up(&[]);
    let pid = wait_for("a pid", DEADLINE, || p.instance("a", 0)["pid"].as_i64());
    let o = p.run(&["restart", "a"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let inst = p.instance("a", 0);
    assert_ne!(inst["pid"].as_i64(), Some(pid));
    assert_eq!(inst["restarts"], 1);
    assert!(!alive(pid as i32));
    let _ = Duration::ZERO;
}
