//! Common Lisp apps through the real `windlass` binary: config checks, running from source,
//! `repl`, in-place reload, metrics, `build` + `release = "latest"`, and `attach`. Real SBCL
//! and Hunchentoot on 127.0.0.1; every app shares the warm fasl cache of
//! [`lisp_cache`], and every test works on its own copy of examples/hello-lisp.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::helper::*;

/// A cold compile takes 16-60 s on 2 busy cores; warm starts take a few seconds.
const LISP_DEADLINE: Duration = Duration::from_secs(240);

/// A project holding a copy of examples/hello-lisp and a config for it (the admin listener
/// on a free port unless `extra` has an `[admin]` table, so parallel tests never share 9180).
fn hello_lisp(port: u16, extra: &str) -> Project {
    let admin = if extra.contains("[admin]") {
        ""
    } else {
        "\n[admin]\nlisten = \"127.0.0.1:0\""
    };
    let p = Project::empty();
    copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp"),
        p.path(),
    );
    let cache = lisp_cache();
    p.write(
        "windlass.toml",
        &format!(
            "[app.hello]\nlisp = {{ system = \"hello-lisp\", entry = \"hello-lisp:main\" }}\n\
             port = {port}\nenv = {{ XDG_CACHE_HOME = \"{}\" }}\n{extra}{admin}\n",
            cache.display()
        ),
    );
    p
}

/// One request on the project's control socket; (status, body).
fn control(p: &Project, method: &str, path: &str) -> (u16, String) {
    let mut s = UnixStream::connect(p.path().join(".windlass/control.sock")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: windlass\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (status, body.unwrap_or_default())
}

fn wait_healthy(p: &Project, port: u16) {
    wait_for(
        "hello-lisp to answer /health",
        LISP_DEADLINE,
        || match http_get(port, "/health") {
            Ok((200, body)) if body == "ok" => Some(()),
            _ => {
                let inst = p.instance("hello", 0);
                assert!(
                    !inst["state"]
                        .as_str()
                        .is_some_and(|s| s == "fatal" || s == "crashloop"),
                    "hello failed: {inst}\n{}",
                    p.log_lines("hello").join("\n")
                );
                None
            }
        },
    );
}

#[test]
fn lisp_config_errors_name_the_key_and_the_fix() {
    for (config, expect) in [
        (
            "[app.a]\ncommand = \"x\"\nlisp = { system = \"s\", entry = \"s:main\" }\n",
            "has both `command` and `lisp`",
        ),
        (
            "[app.a]\nlisp = { system = \"s\", entry = \"main\" }\n",
            "is not a function name",
        ),
        (
            "[app.a]\ncommand = \"x\"\nswank_port = 4005\n",
            "only for Common Lisp apps",
        ),
        (
            "[app.a]\nlisp = { system = \"s\", entry = \"s:main\" }\nrelease = \"../x\"\n",
            "invalid `release`",
        ),
        (
            "[app.a]\nlisp = { system = \"s\", entry = \"s:main\" }\nreload_eval = \"(foo\"\n",
            "not one readable Lisp form",
        ),
        (
            "[app.a]\nlisp = { system = \"s\", entry = \"s:main\" }\nstop = { signal = \"SIGINT\" }\n",
            "only aborts the REPL's current form",
        ),
        (
            "[app.a]\nlisp = { system = \"s\", entry = \"s:main\" }\nswank_port = 4005\ninstances = 2\n\n[app.b]\ncommand = \"x\"\nport = 4006\n",
            "port 4006 is both the port of app `b` and the swank port of app `a` instance 1",
        ),
        (
            "[app.a]\nlisp = { system = \"s\", entry = \"s:main\" }\nswank_port = 65535\ninstances = 2\n",
            "would be 65536, past 65535",
        ),
    ] {
        let p = Project::new(config);
        let o = p.run(&["check"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{config}: {err}");
        assert!(err.contains(expect), "{config}: {err}");
        assert!(err.contains("windlass.toml:"), "{err}");
    }
    let p = Project::new("[app.a]\nlisp = { system = \"s\", entry = \"s:main\" }\n");
    let o = p.run(&["check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_lisp_app_from_source_is_changed_live_through_swank() {
    let port = free_port();
    let swank = free_port();
    let admin = free_port();
    let p = hello_lisp(
        port,
        &format!(
            "swank_port = {swank}\nreload = \"in-place\"\nstop = {{ timeout = \"5s\" }}\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\""
        ),
    );
    let _sup = p.up(&[]);
    wait_healthy(&p, port);
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    assert_eq!(http_get(port, "/version").expect("get").1, "1");

    // repl --eval: the value is printed, the running image changed.
    let o = p.run(&[
        "repl",
        "hello",
        "--eval",
        "(setf hello-lisp::*version* \"2\")",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "\"2\"");
    assert_eq!(http_get(port, "/version").expect("get").1, "2");
    // A Lisp error: exit 1 and the condition.
    let o = p.run(&["repl", "hello", "--eval", "(error \"boom ~a\" 42)"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("boom 42"));
    // Forms on stdin, one of them on two lines.
    let mut child = p
        .cmd(&["repl", "hello"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn repl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"(+ 1 2)\n(list 4\n 5)\n")
        .expect("write");
    let out = child.wait_with_output().expect("repl output");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "3\n(4 5)\n");

    // The status API has the image's metrics.
    let (code, body) = control(&p, "GET", "/v1/apps/hello");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let m = &v["instances"][0]["lisp"];
    assert!(m["dynamic_usage_bytes"].as_u64().expect("usage") > 0, "{v}");
    assert!(m["threads"].as_u64().expect("threads") >= 2, "{v}");
    // And /metrics, from the figures the daemon reads in the background.
    let labels = "{app=\"hello\",index=\"0\"}";
    let text = wait_for("the Lisp image's figures in /metrics", DEADLINE, || {
        let text = scrape(admin);
        let usage = sample(
            &text,
            &format!("windlass_lisp_dynamic_space_usage_bytes{labels}"),
        )?;
        (usage > 0.0).then_some(text)
    });
    let size = sample(
        &text,
        &format!("windlass_lisp_dynamic_space_size_bytes{labels}"),
    );
    assert!(size.is_some_and(|s| s > 0.0), "{text}");
    let threads = sample(&text, &format!("windlass_lisp_threads{labels}"));
    assert!(threads.is_some_and(|t| t >= 2.0), "{text}");
    let consed = sample(&text, &format!("windlass_lisp_bytes_consed_total{labels}"));
    assert!(consed.is_some_and(|b| b > 0.0), "{text}");
    assert!(
        sample(&text, &format!("windlass_lisp_gc_seconds_total{labels}")).is_some(),
        "{text}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let o = promtool.wait_with_output().expect("promtool");
    assert!(
        o.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );

    // `windlass reload` (reload = "in-place") picks up an edit, in the same process, and
    // says which files it compiled.
    let src = p.path().join("src/app.lisp");
    let text = std::fs::read_to_string(&src).expect("read");
    let edited = text.replace("(princ-to-string *version*)", "\"3-reloaded\"");
    assert_ne!(text, edited);
    std::fs::write(&src, &edited).expect("write");
    let o = p.run(&["reload", "hello"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("hello.0: reloaded in place"), "{out}");
    assert!(out.contains("app.lisp"), "{out}");
    assert_eq!(http_get(port, "/version").expect("get").1, "3-reloaded");
    assert_eq!(p.instance("hello", 0)["pid"].as_i64(), Some(pid));
    assert_eq!(p.instance("hello", 0)["restarts"], 0);

    // A compile error is reported, and the old code keeps serving.
    std::fs::write(
        &src,
        format!("{edited}\n(defun broken (x) (let ((y x)) y)\n"),
    )
    .expect("write");
    let o = p.run(&["reload", "hello"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("the old code keeps serving"), "{err}");
    // The condition, and the compiler's own words on the app's stderr.
    assert!(err.contains("hello.0: "), "{err}");
    assert!(err.contains("  | "), "{err}");
    assert_eq!(http_get(port, "/version").expect("get").1, "3-reloaded");
    assert_eq!(p.instance("hello", 0)["pid"].as_i64(), Some(pid));
    // Both reloads are counted.
    let text = scrape(admin);
    for (result, n) in [("success", 1.0), ("failure", 1.0)] {
        let series = format!("windlass_app_reloads_total{{app=\"hello\",result=\"{result}\"}}");
        assert_eq!(sample(&text, &series), Some(n), "{series}\n{text}");
    }
}

/// Sets `*version*` in the project's copy of hello-lisp. The file's time is set two seconds
/// ahead: ASDF judges fasls by whole seconds, and an edit in the second the running image
/// compiled it would otherwise load the old fasl.
fn set_source_version(p: &Project, version: &str) {
    let src = p.path().join("src/app.lisp");
    let text = std::fs::read_to_string(&src).expect("read");
    let head = "(defvar *version* \"";
    let start = text.find(head).expect("the defvar") + head.len();
    let end = start + text[start..].find('"').expect("closing quote");
    let edited = format!("{}{version}{}", &text[..start], &text[end..]);
    std::fs::write(&src, edited).expect("write");
    let later = std::time::SystemTime::now() + Duration::from_secs(2);
    std::fs::File::options()
        .write(true)
        .open(&src)
        .and_then(|f| f.set_modified(later))
        .expect("set mtime");
}

#[test]
fn a_lisp_app_reloads_blue_green_under_load_without_a_failed_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let port = free_port();
    let p = hello_lisp(
        port,
        "reload = \"blue-green\"\nhealth = { path = \"/health\" }\nstop = { timeout = \"5s\" }",
    );
    let _sup = p.up(&[]);
    wait_healthy(&p, port);
    assert_eq!(http_get(port, "/version").expect("get").1, "1");
    let mut pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");

    let reloads = 2u32;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let mut ka = crate::reload::KeepAlive { port, stream: None };
                let mut seen = 1u32;
                let mut n = 0;
                while n < 20 || !stop.load(Ordering::Relaxed) {
                    // Half the clients keep one connection, half open one per request.
                    let r = if c % 2 == 0 {
                        ka.get("/version")
                    } else {
                        http_get(port, "/version")
                    };
                    // Every answer is 200 and from the current or the next version: requests
                    // are sequential, so once the new version answered the old one never does.
                    match r {
                        Ok((200, body)) => match body.parse::<u32>() {
                            Ok(v) if v == seen || v == seen + 1 => seen = v,
                            _ => {
                                return Err(format!(
                                    "client {c} request {n}: version {body:?} after {seen}"
                                ));
                            }
                        },
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
    for v in 2..2 + reloads {
        let version = v.to_string();
        set_source_version(&p, &version);
        let o = p.run(&["reload", "hello"]);
        assert!(
            o.status.success(),
            "reload {v}: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            p.log_lines("hello").join("\n")
        );
        // A clean new image: the new source, in a new process.
        assert_eq!(http_get(port, "/version").expect("get").1, version);
        let new_pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
        assert_ne!(new_pid, pid);
        pid = new_pid;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join()
            .expect("client thread")
            .expect("every request succeeds");
    }
    assert!(ok.load(Ordering::Relaxed) >= 4 * 20);
    let inst = p.instance("hello", 0);
    assert_eq!(inst["reloads"], reloads, "{inst}");
    assert_eq!(inst["restarts"], 0, "{inst}");
    // The old images stopped gracefully (exit 0 after draining), not by SIGKILL.
    let log = p.log_lines("hello").join("\n");
    assert!(!log.contains("SIGKILL"), "{log}");
}

#[test]
fn a_built_release_runs_without_the_sources() {
    let port = free_port();
    let p = hello_lisp(port, "release = \"latest\"");
    // No release yet: the instance cannot start, and says why.
    let o = p.run(&["build"]);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("built hello release"), "{out}");
    let o = p.run(&["releases", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let rel = &v["releases"][0];
    assert_eq!(rel["app"], "hello", "{v}");
    assert_eq!(rel["selected"], true, "{v}");
    assert_eq!(rel["assets"][0], "static", "{v}");
    let dir = std::path::PathBuf::from(rel["path"].as_str().expect("path"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("release.json")).expect("manifest"))
            .expect("json");
    assert_eq!(manifest["id"], rel["id"]);

    // The sources go away: the release does not need them.
    std::fs::remove_dir_all(p.path().join("src")).expect("rm src");
    std::fs::remove_file(p.path().join("hello-lisp.asd")).expect("rm asd");
    let _sup = p.up(&[]);
    wait_healthy(&p, port);
    let (code, css) = http_get(port, "/static/style.css").expect("css");
    assert_eq!(code, 200);
    assert!(css.contains('{'), "{css}");
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert!(
        exe.starts_with(&dir),
        "{} not in {}",
        exe.display(),
        dir.display()
    );

    // kill -9 of the image: windlass restarts it, and the proxy serves the new one.
    // SAFETY: plain kill(2) of the app's pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let (code, _) = wait_for("the restarted image to answer", DEADLINE, || {
        let i = p.instance("hello", 0);
        (i["restarts"] == 1 && i["state"] == "running" && i["pid"].as_i64() != Some(pid))
            .then(|| http_get(port, "/health").ok())
            .flatten()
    });
    assert_eq!(code, 200);
    assert_eq!(p.instance("hello", 0)["last_exit"]["signal"], "SIGKILL");
}

#[test]
fn attach_reaches_the_lisp_repl_and_detaches_with_ctrl_bracket() {
    let port = free_port();
    let p = hello_lisp(port, "");
    let _sup = p.up(&[]);
    wait_healthy(&p, port);
    let pid = p.instance("hello", 0)["pid"].as_i64().expect("pid");

    let (mut master, mut child, mut seen) = attach_on_pty(&p, "hello", 24, 80);
    let from = seen.len();
    master.write_all(b"(+ 1 2)\r").expect("type");
    wait_for("the REPL's answer", DEADLINE, || {
        read_until(&mut master, &mut seen, from, "\n3")
    });
    let from = seen.len();
    master
        .write_all(b"(length (hunchentoot:acceptor-address hello-lisp::*acceptor*))\r")
        .expect("type");
    wait_for("the REPL to see the app", DEADLINE, || {
        read_until(&mut master, &mut seen, from, "\n9")
    });
    master.write_all(&[0x1d]).expect("Ctrl-]");
    let status = wait_for("attach to exit", DEADLINE, || {
        let _ = read_until(&mut master, &mut seen, 0, "");
        child.try_wait().expect("try_wait")
    });
    assert_eq!(status.code(), Some(0), "{seen}");
    assert!(seen.contains("detached"), "{seen}");
    // The app is still there, same process, and serving.
    assert_eq!(http_get(port, "/health").expect("get").1, "ok");
    assert_eq!(p.instance("hello", 0)["pid"].as_i64(), Some(pid));
    // The console's output is in the app's log, as stream `out`.
    let log = p.log_lines("hello").join("\n");
    assert!(log.contains("out hello-lisp 1 listening"), "{log}");
}

/// The fasl of `src/app.lisp` of project `p` in the shared test cache.
fn app_fasl(p: &Project) -> std::path::PathBuf {
    let project = std::fs::canonicalize(p.path()).expect("canonical project dir");
    let mut stack = vec![lisp_cache().join("common-lisp")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.ends_with("src/app.fasl")
                && path.to_string_lossy().contains(&*project.to_string_lossy())
            {
                return path;
            }
        }
    }
    panic!("no fasl of {}/src/app.lisp in the cache", project.display());
}

/// An edit written in the same second as the last compile (ASDF compares whole seconds)
/// is still compiled by an in-place reload: the new code is served, every time.
#[test]
fn an_edit_in_the_same_second_as_the_last_compile_is_reloaded_in_place() {
    let swank = free_port();
    same_second_edits_are_served(&format!("swank_port = {swank}\nreload = \"in-place\""));
}

/// The same through the compile step of a restart (a fresh SBCL compiles, a new process
/// loads the fasls).
#[test]
fn an_edit_in_the_same_second_as_the_last_compile_is_served_after_a_restart_reload() {
    same_second_edits_are_served("reload = \"restart\"");
}

fn same_second_edits_are_served(extra: &str) {
    let port = free_port();
    let p = hello_lisp(port, &format!("{extra}\nstop = {{ timeout = \"5s\" }}"));
    let _sup = p.up(&[]);
    wait_healthy(&p, port);
    let src = p.path().join("src/app.lisp");
    let original = std::fs::read_to_string(&src).expect("read");
    for round in 1..=3 {
        let fasl = app_fasl(&p);
        let compiled_at = std::fs::metadata(&fasl)
            .and_then(|m| m.modified())
            .expect("fasl mtime");
        let version = format!("same-second-{round}");
        let edited = original.replace("(princ-to-string *version*)", &format!("{version:?}"));
        assert_ne!(edited, original);
        std::fs::write(&src, &edited).expect("write");
        // The edit lands in the very second of the compile (its mtime set to the fasl's,
        // rather than hoping a fast write does it).
        std::fs::File::options()
            .write(true)
            .open(&src)
            .and_then(|f| f.set_modified(compiled_at))
            .expect("set mtime");
        let o = p.run(&["reload", "hello"]);
        assert!(
            o.status.success(),
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            http_get(port, "/version").expect("get").1,
            version,
            "round {round}"
        );
    }
}
