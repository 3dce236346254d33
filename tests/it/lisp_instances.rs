//! Common Lisp apps with several instances, from a cold fasl cache (issue 17): windlass
//! compiles the system once, then starts the instances, which only load fasls; no process
//! ever reads a half-written fasl; `build` and `up` never write the cache at the same time;
//! and the command line of an instance is short. Real SBCL, Hunchentoot and swank on
//! 127.0.0.1; unlike tests/it/lisp.rs every test here has its own, cold, cache.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::helper::*;

/// A cold compile of Hunchentoot, its dependencies and swank takes 15-60 s alone on 2 busy
/// cores; several SBCL processes compiling at once (the bug) take longer.
const COLD_DEADLINE: Duration = Duration::from_secs(600);

/// `n` consecutive free ports on 127.0.0.1 (swank of instance i listens on base + i).
fn free_ports(n: u16) -> u16 {
    wait_for("a run of free ports", DEADLINE, || {
        let base = free_port();
        let free = (1..n).all(|i| {
            base.checked_add(i)
                .is_some_and(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        });
        free.then_some(base)
    })
}

/// A copy of examples/hello-lisp with `instances` instances, swank, and the default (cold)
/// fasl cache in the project's `.windlass/cache`.
fn cold_hello(port: u16, instances: u32) -> Project {
    let p = Project::empty();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp"),
        p.path(),
    );
    let swank = free_ports(instances as u16);
    p.write(
        "windlass.toml",
        &format!(
            "[app.hello]\nlisp = {{ system = \"hello-lisp\", entry = \"hello-lisp:main\" }}\n\
             port = {port}\ninstances = {instances}\nswank_port = {swank}\n\
             reload = \"blue-green\"\nhealth = {{ path = \"/health\", start_timeout = \"600s\" }}\n\
             stop = {{ timeout = \"5s\" }}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        ),
    );
    assert!(!p.path().join(".windlass/cache").exists());
    p
}

fn instances(p: &Project, app: &str) -> Vec<serde_json::Value> {
    let s = p.status();
    s["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == app)
        .unwrap_or_else(|| panic!("no app {app} in {s}"))["instances"]
        .as_array()
        .expect("instances")
        .clone()
}

/// Waits until every instance runs; fails at once when any instance restarted or failed.
fn wait_all_running(p: &Project, n: usize) -> Vec<serde_json::Value> {
    wait_for("every instance to be healthy", COLD_DEADLINE, || {
        let all = instances(p, "hello");
        assert_eq!(all.len(), n);
        for inst in &all {
            assert!(
                inst["restarts"] == 0
                    && !inst["state"]
                        .as_str()
                        .is_some_and(|s| ["fatal", "crashloop", "backoff"].contains(&s)),
                "an instance restarted or failed: {inst}\n{}",
                log_tail(p)
            );
        }
        all.iter().all(|i| i["state"] == "running").then_some(all)
    })
}

/// The newest fasl of the project's own sources in its cache.
fn newest_project_fasl(p: &Project) -> std::time::SystemTime {
    fn walk(dir: &Path, out: &mut Vec<std::time::SystemTime>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "fasl")
                && path.parent().is_some_and(|d| d.ends_with("src"))
            {
                out.extend(e.metadata().and_then(|m| m.modified()));
            }
        }
    }
    let mut times = Vec::new();
    walk(&p.path().join(".windlass/cache"), &mut times);
    times
        .into_iter()
        .max()
        .expect("the project's fasls are in its cache")
}

/// Sets `*version*` in the project's copy of hello-lisp, in a later second than the last
/// compile of it (ASDF judges fasls by whole seconds).
fn set_version(p: &Project, version: &str) {
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    };
    let compiled = secs(newest_project_fasl(p));
    wait_for("a second after the last compile", DEADLINE, || {
        (secs(std::time::SystemTime::now()) > compiled).then_some(())
    });
    let src = p.path().join("src/app.lisp");
    let text = std::fs::read_to_string(&src).expect("read");
    let edited = text.replace(
        "(defvar *version* \"1\"",
        &format!("(defvar *version* \"{version}\""),
    );
    assert_ne!(text, edited);
    std::fs::write(&src, edited).expect("write");
}

/// Log lines where an instance (not the compile step, whose lines have no instance)
/// compiled a file.
fn instance_compiles(p: &Project) -> Vec<String> {
    p.log_lines("hello")
        .into_iter()
        .filter(|l| {
            let mut fields = l.split(' ');
            let instance = fields.nth(1).unwrap_or("-");
            instance != "-" && l.contains("; compiling file")
        })
        .collect()
}

/// The last lines of the app's log, for failure messages (a cold compile logs thousands).
fn log_tail(p: &Project) -> String {
    let lines = p.log_lines("hello");
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn cmdline(pid: i64) -> Vec<u8> {
    std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline")
}

#[test]
fn four_instances_from_a_cold_cache_start_without_a_restart_and_reload_under_load() {
    let port = free_port();
    let p = cold_hello(port, 4);
    let _sup = p.up(&[]);
    let all = wait_all_running(&p, 4);
    assert_eq!(http_get(port, "/version").expect("get").1, "1");
    assert_eq!(instance_compiles(&p), Vec::<String>::new());

    // The command line is short and says what runs.
    for inst in &all {
        let pid = inst["pid"].as_i64().expect("pid");
        let line = cmdline(pid);
        let text = String::from_utf8_lossy(&line).replace('\0', " ");
        assert!(line.len() < 1024, "{} bytes: {text}", line.len());
        assert!(text.contains("hello-lisp:main"), "{text}");
        assert!(text.contains("\"hello-lisp\""), "{text}");
    }

    // An edit, then a blue-green reload of the four instances under load.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut ka = crate::reload::KeepAlive { port, stream: None };
                let mut n = 0;
                while n < 20 || !stop.load(Ordering::Relaxed) {
                    let r = if c % 2 == 0 {
                        ka.get("/version")
                    } else {
                        http_get(port, "/version")
                    };
                    match r {
                        Ok((200, body)) if body == "1" || body == "2" => {}
                        Ok((code, body)) => {
                            return Err(format!("client {c} request {n}: {code} {body}"));
                        }
                        Err(e) => return Err(format!("client {c} request {n}: {e}")),
                    }
                    ok.fetch_add(1, Ordering::Relaxed);
                    n += 1;
                }
                Ok(())
            })
        })
        .collect();
    set_version(&p, "2");
    let o = p.run(&["reload", "hello"]);
    assert!(
        o.status.success(),
        "reload: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        log_tail(&p)
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join()
            .expect("client thread")
            .expect("every request succeeds");
    }
    assert!(ok.load(Ordering::Relaxed) >= 4 * 20);
    let after = instances(&p, "hello");
    for (old, new) in all.iter().zip(&after) {
        assert_eq!(new["state"], "running", "{new}");
        assert_eq!(new["restarts"], 0, "{new}");
        assert_eq!(new["reloads"], 1, "{new}");
        assert_ne!(new["pid"], old["pid"], "{new}");
    }
    for _ in 0..8 {
        assert_eq!(http_get(port, "/version").expect("get").1, "2");
    }
    // Compiled once per command, by the compile step: the instances only loaded fasls.
    assert_eq!(instance_compiles(&p), Vec::<String>::new());
    let log = p.log_lines("hello");
    let compiles = log
        .iter()
        .filter(|l| l.contains("windlass compiled hello-lisp in"))
        .count();
    assert_eq!(compiles, 2, "{}", log_tail(&p));
}

#[test]
fn build_and_up_at_the_same_time_on_a_cold_cache_both_succeed() {
    let port = free_port();
    let p = cold_hello(port, 2);
    let build = p
        .cmd(&["build"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn windlass build");
    let _sup = p.up(&[]);
    let o = build.wait_with_output().expect("build");
    assert!(
        o.status.success(),
        "build: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    wait_all_running(&p, 2);
    assert_eq!(http_get(port, "/health").expect("get").1, "ok");
}

#[test]
fn a_compile_error_fails_the_reload_and_the_restart_before_any_instance_is_touched() {
    let port = free_port();
    let p = Project::empty();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp"),
        p.path(),
    );
    p.write(
        "windlass.toml",
        &format!(
            "[app.hello]\nlisp = {{ system = \"hello-lisp\", entry = \"hello-lisp:main\" }}\n\
             port = {port}\ninstances = 2\nreload = \"blue-green\"\n\
             health = {{ path = \"/health\" }}\nstop = {{ timeout = \"5s\" }}\n\
             env = {{ XDG_CACHE_HOME = \"{}\" }}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            lisp_cache().display()
        ),
    );
    let _sup = p.up(&[]);
    let before = wait_all_running(&p, 2);

    // An unreadable form: the compile step fails, like a load error would.
    let src = p.path().join("src/app.lisp");
    let text = std::fs::read_to_string(&src).expect("read");
    std::fs::write(&src, format!("{text}\n(defun broken (x) (let ((y x)) y)\n")).expect("write");
    for command in ["reload", "restart"] {
        let o = p.run(&[command, "hello"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{command}: {err}");
        // The condition, on one line, then the compiler's words (the reader error).
        assert!(
            err.contains(
                "compiling hello-lisp failed (exit code 1): COMPILE-FILE-ERROR while compiling "
            ),
            "{command}: {err}"
        );
        assert!(
            err.contains("end of file"),
            "{command}: the condition: {err}"
        );
        // No instance was touched: same processes, still serving the old code.
        let now = instances(&p, "hello");
        for (old, new) in before.iter().zip(&now) {
            assert_eq!(new["pid"], old["pid"], "{command}: {new}");
            assert_eq!(new["state"], "running", "{command}: {new}");
            assert_eq!(new["restarts"], 0, "{command}: {new}");
        }
        assert_eq!(http_get(port, "/version").expect("get").1, "1");
    }
    // A start fails like a load error: exit code 1 and the condition, for every instance.
    let o = p.run(&["stop", "hello"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let _ = p.run(&["start", "hello"]);
    wait_for(
        "both instances to report the failed compile",
        DEADLINE,
        || {
            let all = instances(&p, "hello");
            all.iter()
                .all(|i| {
                    i["pid"].is_null()
                        && i["last_exit"]["code"] == 1
                        && i["message"].as_str().is_some_and(|m| {
                            m.contains("compiling hello-lisp failed (exit code 1)")
                        })
                })
                .then_some(())
        },
    );
    // The compiler's words are in the app's log.
    let log = p.log_lines("hello").join("\n");
    assert!(
        log.contains("windlass-lisp: failed to load system hello-lisp"),
        "{}",
        log_tail(&p)
    );
}

#[test]
fn the_compile_step_and_build_wait_for_whoever_holds_the_cache_lock() {
    use std::os::fd::AsRawFd;
    let port = free_port();
    let p = Project::empty();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp"),
        p.path(),
    );
    // A warm cache of its own (a copy of the shared one): this test locks it.
    let cache = p.path().join("fasl-cache");
    copy_tree(&lisp_cache(), &cache);
    p.write(
        "windlass.toml",
        &format!(
            "[app.hello]\nlisp = {{ system = \"hello-lisp\", entry = \"hello-lisp:main\" }}\n\
             port = {port}\ninstances = 2\nhealth = {{ path = \"/health\" }}\n\
             env = {{ XDG_CACHE_HOME = \"{}\" }}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            cache.display()
        ),
    );
    // The test writes the cache, as far as windlass can tell.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache.join("windlass.lock"))
        .expect("open the lock file");
    // SAFETY: flock(2) on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    let mut build = p
        .cmd(&["build"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn windlass build");
    let _sup = p.up(&[]);
    wait_for(
        "the compile step to wait for the lock",
        COLD_DEADLINE,
        || {
            p.log_lines("hello")
                .iter()
                .any(|l| l.contains("windlass-lisp: waiting for the fasl cache lock"))
                .then_some(())
        },
    );
    // Nothing started meanwhile, and the build waits too.
    for inst in instances(&p, "hello") {
        assert_eq!(inst["state"], "starting", "{inst}");
        assert!(inst["pid"].is_null(), "{inst}");
        assert_eq!(inst["message"], "waiting for the compile step", "{inst}");
    }
    assert!(build.try_wait().expect("try_wait").is_none());

    drop(lock);
    wait_all_running(&p, 2);
    let o = build.wait_with_output().expect("build");
    assert!(
        o.status.success(),
        "build: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(http_get(port, "/health").expect("get").1, "ok");
}
