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
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("20000101T000000Z"));
}
