//! Releases for every stack, `windlass rollback` and `windlass releases`, end to end through
//! the real binary: real builds, real child processes, a real proxy under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::helper::*;
use crate::reload::KeepAlive;

/// The example app with its version written into its source (so each release differs).
fn python_app(version: &str) -> String {
    let src = std::fs::read_to_string(hello_app()).expect("read hello app");
    let line = "VERSION = os.environ.get(\"VERSION\", \"1\")";
    assert!(src.contains(line), "hello app changed: update this test");
    src.replace(line, &format!("VERSION = \"{version}\""))
}

fn python_config(port: u16, extra: &str) -> String {
    format!(
        "[app.hello]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\n\
         health = {{ path = \"/health\", start_timeout = \"10s\" }}\nstop = {{ timeout = \"5s\" }}\n\
         release = \"latest\"\n{extra}\n"
    )
}

fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: exit {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds a release of `app` and returns its id (the newest in `releases --json`).
fn build(p: &Project, app: &str) -> String {
    ok(&p.run(&["build", app]), "build");
    let listing = releases(p, app);
    listing.last().expect("a release")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn releases(p: &Project, app: &str) -> Vec<serde_json::Value> {
    let out = ok(&p.run(&["releases", app, "--json"]), "releases");
    let v: serde_json::Value = serde_json::from_str(&out).expect("releases json");
    v["releases"].as_array().expect("releases").clone()
}

fn body(port: u16) -> String {
    let (code, body) = http_get(port, "/").expect("GET /");
    assert_eq!(code, 200, "{body}");
    body
}

#[test]
fn rollback_under_load_fails_no_request_and_survives_a_restart() {
    let port = free_port();
    let p = Project::new(&python_config(
        port,
        "instances = 2\nshared = [\"uploads\"]",
    ));
    p.write("app.py", &python_app("v1"));
    let v1 = build(&p, "hello");
    p.write("app.py", &python_app("v2"));
    let v2 = build(&p, "hello");
    assert_ne!(v1, v2);

    let sup = p.up(&[]);
    wait_for("v2 behind the proxy", DEADLINE, || {
        http_get(port, "/")
            .ok()
            .filter(|(c, b)| *c == 200 && b.contains("version=v2"))
    });
    assert_eq!(p.instance("hello", 0)["release"], v2.as_str());

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (stop, served) = (stop.clone(), served.clone());
        clients.push(std::thread::spawn(move || -> Result<(), String> {
            let mut ka = KeepAlive { port, stream: None };
            let mut n = 0;
            while n < 20 || !stop.load(Ordering::Relaxed) {
                let r = if c % 2 == 0 {
                    ka.get("/")
                } else {
                    http_get(port, "/")
                };
                match r {
                    Ok((200, body)) if body.starts_with("hello from") => {
                        served.fetch_add(1, Ordering::Relaxed);
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

    // To the previous release, with the JSON result.
    let out = ok(&p.run(&["rollback", "hello", "--json"]), "rollback");
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("rollback json");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["from"], v2.as_str(), "{r}");
    assert_eq!(r["to"], v1.as_str(), "{r}");
    assert!(body(port).contains("version=v1"));
    // Forward again by name (a newer release), then back by name.
    ok(&p.run(&["rollback", "hello", &v2]), "rollback to v2");
    assert!(body(port).contains("version=v2"));
    ok(&p.run(&["rollback", "hello", &v1]), "rollback to v1");
    assert!(body(port).contains("version=v1"));

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client").expect("every request succeeds");
    }
    assert!(served.load(Ordering::Relaxed) >= 8 * 20);

    // `releases` shows which release each instance runs.
    let rows = releases(&p, "hello");
    let row = |id: &str| rows.iter().find(|r| r["id"] == id).expect("row").clone();
    assert_eq!(row(&v1)["instances"], serde_json::json!([0, 1]), "{rows:?}");
    assert_eq!(row(&v1)["selected"], true);
    assert_eq!(row(&v2)["instances"], serde_json::json!([]));
    let text = ok(&p.run(&["releases", "hello"]), "releases");
    assert!(text.contains("hello.0 hello.1"), "{text}");

    // The release's files: a copy with its manifest and the shared link.
    let dir = p.path().join(".windlass/releases").join(&v1);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("release.json")).expect("manifest"))
            .expect("manifest json");
    assert_eq!(m["kind"], "files");
    assert!(
        m["checksum"]
            .as_str()
            .expect("checksum")
            .starts_with("sha256:")
    );
    assert_eq!(
        std::fs::read_link(dir.join("uploads")).expect("shared link"),
        std::path::Path::new("../../shared/hello/uploads")
    );
    assert!(p.path().join(".windlass/shared/hello/uploads").is_dir());

    // The choice survives a supervisor restart.
    ok(&p.run(&["down"]), "down");
    drop(sup);
    let _sup = p.up(&[]);
    wait_for("hello back", DEADLINE, || {
        http_get(port, "/").ok().filter(|(c, _)| *c == 200)
    });
    assert!(body(port).contains("version=v1"));
}

#[test]
fn a_rollback_to_an_unhealthy_release_keeps_the_old_one_serving() {
    let port = free_port();
    let config = |release: &str| {
        format!(
            "[app.hello]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\ninstances = 2\n\
             health = {{ path = \"/health\", start_timeout = \"2s\" }}\nrelease = \"{release}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n"
        )
    };
    let p = Project::new(&config("latest"));
    p.write("app.py", &python_app("good"));
    let good = build(&p, "hello");
    // This one never answers its health check.
    p.write(
        "app.py",
        &python_app("bad").replace("url.path == \"/health\"", "url.path == \"/never\""),
    );
    let bad = build(&p, "hello");
    p.write("windlass.toml", &config(&good));
    let _sup = p.up(&[]);
    wait_for("the good release serving", DEADLINE, || {
        http_get(port, "/")
            .ok()
            .filter(|(c, b)| *c == 200 && b.contains("version=good"))
    });
    let o = p.run(&["rollback", "hello", &bad, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let r: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("a JSON result on failure too");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["to"], bad.as_str(), "{r}");
    assert!(
        r["message"].as_str().expect("message").contains("health"),
        "{r}"
    );
    // The old release serves, on every instance, and it stays the one a restart runs.
    for _ in 0..10 {
        assert!(body(port).contains("version=good"));
    }
    for i in 0..2 {
        assert_eq!(p.instance("hello", i)["release"], good.as_str());
    }
    assert!(!p.path().join(".windlass/releases/hello.current").exists());
    // An unknown id is a usage error naming it.
    let o = p.run(&["rollback", "hello", "20000101T000000Z"]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("20000101T000000Z"));
}

/// Runs git in `dir` (an identity of its own, no global config).
fn git(dir: &std::path::Path, args: &[&str]) {
    let o = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn git_out(dir: &std::path::Path, args: &[&str]) -> String {
    let o = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

const NODE_SERVER: &str = r#"const http = require("http");
const fs = require("fs");
const version = fs.readFileSync("dist/version.txt", "utf8").trim();
http.createServer((req, res) => {
  const body = req.url === "/health" ? "ok\n" : `web ${version}\n`;
  res.writeHead(200, { "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}).listen(Number(process.env.PORT), "127.0.0.1");
"#;

/// The build step: dist/version.txt from version.txt; "broken" fails loudly.
const NODE_BUILD: &str = r#"const fs = require("fs");
const v = fs.readFileSync("version.txt", "utf8").trim();
if (v === "broken") { console.error("build broke: version.txt says broken"); process.exit(1); }
fs.mkdirSync("dist", { recursive: true });
fs.writeFileSync("dist/version.txt", v + "\n");
console.log("built dist for " + v);
"#;

#[test]
fn a_node_app_builds_from_git_head_rolls_back_and_prunes() {
    let port = free_port();
    let p = Project::new(&format!(
        "[app.web]\ncommand = [\"node\", \"server.js\"]\nport = {port}\n\
         health = {{ path = \"/health\", start_timeout = \"10s\" }}\nrelease = \"latest\"\nkeep_releases = 2\n\
         build = [\"npm ci --offline --no-audit --no-fund\", \"node build.js\"]\n"
    ));
    p.write(
        "package.json",
        r#"{"name":"web","version":"1.0.0","private":true}"#,
    );
    p.write(
        "package-lock.json",
        r#"{"name":"web","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"web","version":"1.0.0"}}}"#,
    );
    p.write("server.js", NODE_SERVER);
    p.write("build.js", NODE_BUILD);
    p.write(".gitignore", ".windlass/\ndist/\nnode_modules/\n");
    p.write("version.txt", "one\n");
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["commit", "-q", "-m", "one"]);
    let head1 = git_out(p.path(), &["rev-parse", "HEAD"]);
    // Untracked and uncommitted: not in the release (it is HEAD's files), which says dirty.
    p.write("scratch.txt", "not tracked\n");
    p.write("version.txt", "uncommitted\n");
    let r1 = build(&p, "web");
    let d1 = p.path().join(".windlass/releases").join(&r1);
    assert_eq!(
        std::fs::read_to_string(d1.join("dist/version.txt")).expect("build output"),
        "one\n"
    );
    assert!(!d1.join("scratch.txt").exists());
    let rows = releases(&p, "web");
    assert_eq!(rows[0]["git_commit"], head1.as_str());
    assert_eq!(rows[0]["git_dirty"], true);
    assert_eq!(
        rows[0]["build"],
        serde_json::json!(["npm ci --offline --no-audit --no-fund", "node build.js"])
    );
    assert!(rows[0]["files"].as_u64().expect("files") >= 5);

    p.write("version.txt", "two\n");
    git(p.path(), &["commit", "-q", "-am", "two"]);
    let r2 = build(&p, "web");
    assert_eq!(releases(&p, "web")[1]["git_dirty"], false);

    let _sup = p.up(&[]);
    wait_for("release two serving", DEADLINE, || {
        http_get(port, "/").ok().filter(|(_, b)| b == "web two\n")
    });
    ok(&p.run(&["rollback", "web"]), "rollback");
    assert_eq!(body(port), "web one\n");

    // A broken build: exit 1 with its output, no new release, what runs is untouched.
    p.write("version.txt", "broken\n");
    git(p.path(), &["commit", "-q", "-am", "broken"]);
    let o = p.run(&["build", "web"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("build broke: version.txt says broken"),
        "{err}"
    );
    assert!(err.contains("node build.js"), "{err}");
    assert_eq!(releases(&p, "web").len(), 2);
    assert_eq!(body(port), "web one\n");
    let leftovers: Vec<_> = std::fs::read_dir(p.path().join(".windlass/releases"))
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".build"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // keep_releases = 2: the running, rolled-back-to r1 stays; r2 goes once r3 and r4 exist.
    p.write("version.txt", "three\n");
    git(p.path(), &["commit", "-q", "-am", "three"]);
    let r3 = build(&p, "web");
    p.write("version.txt", "four\n");
    git(p.path(), &["commit", "-q", "-am", "four"]);
    let r4 = build(&p, "web");
    let ids: Vec<String> = releases(&p, "web")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids, [r1.clone(), r3, r4.clone()]);
    assert!(!ids.contains(&r2));
    assert_eq!(body(port), "web one\n");
    ok(&p.run(&["rollback", "web", &r4]), "to the newest");
    assert_eq!(body(port), "web four\n");
}

#[test]
fn a_release_outside_git_skips_ignored_files_and_runs_from_another_project() {
    let port = free_port();
    let config = python_config(port, "");
    let a = Project::new(&config);
    a.write("app.py", &python_app("moved"));
    a.write(".gitignore", "secret.log\ncache/\n");
    a.write("secret.log", "no\n");
    a.write("cache/x", "no\n");
    a.write("lib/helper.py", "X = 1\n");
    let id = build(&a, "hello");
    let dir = a.path().join(".windlass/releases").join(&id);
    assert!(dir.join("app.py").is_file() && dir.join("lib/helper.py").is_file());
    assert!(!dir.join("secret.log").exists() && !dir.join("cache").exists());
    assert!(!dir.join(".windlass").exists());

    // Copied into another project's releases directory (no sources there), it runs.
    let b = Project::new(&config);
    std::fs::create_dir_all(b.path().join(".windlass/releases")).expect("mkdir");
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(&dir)
        .arg(b.path().join(".windlass/releases"))
        .output()
        .expect("cp");
    assert!(o.status.success());
    let _sup = b.up(&[]);
    wait_for("the copied release serving", DEADLINE, || {
        http_get(port, "/")
            .ok()
            .filter(|(c, b)| *c == 200 && b.contains("version=moved"))
    });
    assert_eq!(b.instance("hello", 0)["release"], id.as_str());
}

#[test]
fn a_lisp_app_rolls_back_between_executables_and_prunes() {
    let port = free_port();
    let p = Project::empty();
    copy_tree(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp"),
        p.path(),
    );
    p.write(
        "windlass.toml",
        &format!(
            "[app.hello]\nlisp = {{ system = \"hello-lisp\", entry = \"hello-lisp:main\" }}\n\
             port = {port}\nenv = {{ XDG_CACHE_HOME = \"{}\" }}\nrelease = \"latest\"\nkeep_releases = 1\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            lisp_cache().display()
        ),
    );
    let source = p.path().join("src/app.lisp");
    let set_version = |v: &str| {
        let text = std::fs::read_to_string(&source).expect("read app.lisp");
        let start = text.find("(defvar *version* \"").expect("defvar") + 19;
        let end = start + text[start..].find('"').expect("quote");
        std::fs::write(&source, format!("{}{v}{}", &text[..start], &text[end..]))
            .expect("write app.lisp");
    };
    set_version("L1");
    let r1 = build(&p, "hello");
    set_version("L2");
    let r2 = build(&p, "hello");
    // keep_releases = 1, but nothing runs or is pinned yet: only the newest is kept.
    assert!(!p.path().join(".windlass/releases").join(&r1).exists());
    set_version("L1b");
    let _sup = p.up(&[]);
    let version = || {
        http_get(port, "/version")
            .ok()
            .filter(|(c, _)| *c == 200)
            .map(|(_, b)| b)
    };
    wait_for("release L2 serving", DEADLINE, || {
        version().filter(|b| b.contains("L2"))
    });
    let r3 = build(&p, "hello");
    // r2 runs: it is kept beside the newest.
    assert!(p.path().join(".windlass/releases").join(&r2).exists());
    ok(&p.run(&["rollback", "hello", &r3]), "forward to r3");
    assert!(version().expect("version").contains("L1b"));
    ok(&p.run(&["rollback", "hello"]), "back to r2");
    assert!(version().expect("version").contains("L2"));
    let rows = releases(&p, "hello");
    let row = rows
        .iter()
        .find(|r| r["id"] == r2.as_str())
        .expect("r2 row");
    assert_eq!(row["instances"], serde_json::json!([0]), "{rows:?}");
    assert_eq!(row["kind"], "lisp-executable");
}

/// `git push` with the output (git prints the hook's lines as `remote: ...` on stderr).
fn push(dev: &std::path::Path, repo: &std::path::Path) -> std::process::Output {
    std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t", "push", "-q"])
        .arg(repo)
        .arg("HEAD:main")
        .current_dir(dev)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dev)
        .output()
        .expect("git push")
}

fn commit_app(dev: &std::path::Path, source: &str, msg: &str) -> String {
    std::fs::write(dev.join("app.py"), source).expect("write app.py");
    git(dev, &["add", "-A"]);
    git(dev, &["commit", "-q", "-m", msg]);
    git_out(dev, &["rev-parse", "HEAD"])
}

#[test]
fn git_push_deploys_a_good_revision_and_rejects_a_broken_one() {
    let port = free_port();
    let p = Project::new(&format!(
        "[app.hello]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\n\
         health = {{ path = \"/health\", start_timeout = \"2s\" }}\nrelease = \"latest\"\n\
         build = [\"python3 -m py_compile app.py\"]\n"
    ));
    let out = ok(&p.run(&["git-remote", "init"]), "git-remote init");
    let repo = p.path().join(".windlass/repo.git");
    assert!(out.contains(&repo.display().to_string()), "{out}");
    assert!(repo.join("hooks/pre-receive").is_file());

    let dev = tempfile::tempdir().expect("tempdir");
    git(dev.path(), &["init", "-q"]);
    // The first push, before any supervisor runs: built, and run by the next `up`.
    let c1 = commit_app(dev.path(), &python_app("push1"), "one");
    let o = push(dev.path(), &repo);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("remote: windlass: built hello release"),
        "{err}"
    );
    assert_eq!(git_out(&repo, &["rev-parse", "main"]), c1);
    let _sup = p.up(&[]);
    wait_for("push1 serving", DEADLINE, || {
        http_get(port, "/")
            .ok()
            .filter(|(c, b)| *c == 200 && b.contains("version=push1"))
    });

    // A good push: built and switched to, the pusher sees it.
    let c2 = commit_app(dev.path(), &python_app("push2"), "two");
    let o = push(dev.path(), &repo);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    assert!(err.contains("hello runs release"), "{err}");
    assert!(body(port).contains("version=push2"));
    let rows = releases(&p, "hello");
    assert_eq!(rows.last().expect("row")["git_commit"], c2.as_str());

    // A revision that does not build: rejected, the branch and the app stay on push2.
    commit_app(dev.path(), "def broken(:\n", "syntax error");
    let o = push(dev.path(), &repo);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("SyntaxError"), "{err}");
    assert!(err.contains("push rejected"), "{err}");
    assert_eq!(git_out(&repo, &["rev-parse", "main"]), c2);
    assert!(body(port).contains("version=push2"));

    // A revision that builds but fails its health check: rejected the same way.
    commit_app(
        dev.path(),
        &python_app("push3").replace("url.path == \"/health\"", "url.path == \"/never\""),
        "unhealthy",
    );
    let o = push(dev.path(), &repo);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("health"), "{err}");
    assert!(err.contains("push rejected"), "{err}");
    assert_eq!(git_out(&repo, &["rev-parse", "main"]), c2);
    assert!(body(port).contains("version=push2"));
    assert_eq!(
        p.instance("hello", 0)["release"],
        rows.last().expect("row")["id"]
    );
}
