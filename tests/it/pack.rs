//! `windlass pack` through the real binary: the tar unpacked into an empty directory and run
//! by its launcher (chroot in a private mount namespace, nothing but the pack in the root)
//! for a Python app and for a built Lisp executable; the OCI and docker archives read by
//! skopeo and umoci, the unpacked image run under chroot as its user; the same input packed
//! twice gives the same bytes. Needs root (chroot, unshare), skopeo and umoci
//! (scripts/test.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helper::*;

/// A pack of the debug windlass binary (≈150 MiB) takes a while on 2 busy cores.
const PACK_DEADLINE: Duration = Duration::from_secs(300);

/// The Python example app with its public port on `port`.
fn python_app(port: u16) -> Project {
    let p = Project::new(&format!(
        "[app.hello]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\n\
         health = {{ path = \"/health\" }}\n"
    ));
    std::fs::copy(hello_app(), p.path().join("app.py")).expect("copy app.py");
    // Left out of the pack: git-ignored files and windlass's own state.
    p.write(".gitignore", "secret.txt\n");
    p.write("secret.txt", "not for the pack");
    p.write(".windlass/stale", "state");
    p
}

fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn pack(p: &Project, args: &[&str]) -> String {
    let mut all = vec!["pack"];
    all.extend_from_slice(args);
    ok(&p.run(&all), &format!("windlass {}", all.join(" ")))
}

fn sha256sum(path: &Path) -> String {
    let o = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    ok(&o, "sha256sum")
        .split_whitespace()
        .next()
        .expect("hash")
        .to_owned()
}

/// Asserts that two packs are the same bytes; if not, shows how their listings differ.
fn assert_same_bytes(a: &Path, b: &Path) {
    if sha256sum(a) == sha256sum(b) {
        return;
    }
    let list = |p: &Path| -> Vec<String> {
        tool(Command::new("tar").arg("-tvf").arg(p), "tar -t")
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let (la, lb) = (list(a), list(b));
    let only_a: Vec<&String> = la.iter().filter(|l| !lb.contains(l)).take(20).collect();
    let only_b: Vec<&String> = lb.iter().filter(|l| !la.contains(l)).take(20).collect();
    panic!(
        "{} and {} differ\nonly in the first: {only_a:#?}\nonly in the second: {only_b:#?}",
        a.display(),
        b.display()
    );
}

fn tool(cmd: &mut Command, what: &str) -> String {
    let o = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| {
        panic!("{what}: {e} (scripts/test.sh installs it)");
    });
    ok(&o, what)
}

/// Unpacks a tar pack into a fresh empty directory.
fn unpack(archive: &Path) -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    tool(
        Command::new("tar")
            .arg("-xzf")
            .arg(archive)
            .arg("-C")
            .arg(root.path()),
        "tar -x",
    );
    root
}

/// A launched pack; stopped with SIGTERM (windlass stops its apps) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: plain kill(2) of our child.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = wait_for("the pack to stop", DEADLINE, || {
                self.0.try_wait().expect("try_wait")
            });
        }
    }
}

/// Runs `./run` of an unpacked pack with an empty environment: nothing from the host's PATH.
fn launch(root: &Path) -> Running {
    let log = std::fs::File::create(root.with_extension("log")).expect("log");
    Running(
        Command::new(root.join("run"))
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn run"),
    )
}

fn wait_answer(port: u16, path: &str, running: &mut Running, log: &Path) -> String {
    wait_for(
        &format!("the packed app to answer {path}"),
        PACK_DEADLINE,
        || {
            if let Some(status) = running.0.try_wait().expect("try_wait") {
                panic!(
                    "the pack exited ({status}):\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            match http_get(port, path) {
                Ok((200, body)) => Some(body),
                _ => None,
            }
        },
    )
}

/// The pid of the app's instance, asked of the packed supervisor through its control socket.
fn packed_pid(root: &Path, app: &str) -> i64 {
    let o = Command::new(BIN)
        .args(["status", "--json", "-f"])
        .arg(root.join("app/windlass.toml"))
        .output()
        .expect("status");
    let v: serde_json::Value = serde_json::from_str(&ok(&o, "status")).expect("json");
    v["apps"]
        .as_array()
        .expect("apps")
        .iter()
        .find(|a| a["name"] == app)
        .expect("app")["instances"][0]["pid"]
        .as_i64()
        .expect("pid")
}

#[test]
fn a_packed_python_app_runs_under_chroot_from_an_empty_directory_and_packs_reproducibly() {
    let port = free_port();
    let p = python_app(port);
    // The default output is in .windlass/packs, which no pack holds.
    let said = pack(&p, &[]);
    let packs = p.path().join(".windlass/packs");
    let out = std::fs::read_dir(&packs)
        .expect("packs dir")
        .flatten()
        .map(|e| e.path())
        .find(|f| f.to_string_lossy().ends_with("-latest.tar.gz"))
        .unwrap_or_else(|| panic!("no <project>-latest.tar.gz in {}: {said}", packs.display()));
    assert!(
        said.contains("no release; packed the project directory"),
        "{said}"
    );
    assert!(
        said.contains("image ") && said.contains(":latest"),
        "{said}"
    );
    // The same project packs to the same bytes.
    let again = p.path().join("again.tar.gz");
    pack(&p, &["-o", again.to_str().expect("utf-8")]);
    assert_same_bytes(&out, &again);

    let root = unpack(&out);
    let r = root.path();
    assert!(r.join("app/app.py").is_file());
    assert!(
        !r.join("app/secret.txt").exists(),
        "a git-ignored file was packed"
    );
    assert!(
        !r.join("app/.windlass/stale").exists(),
        "windlass's state was packed"
    );
    assert!(r.join("usr/local/bin/windlass").is_file());
    let mut running = launch(r);
    let log = r.with_extension("log");
    assert_eq!(wait_answer(port, "/health", &mut running, &log), "ok\n");
    let body = wait_answer(port, "/", &mut running, &log);
    assert!(body.contains("hello from"), "{body}");
    // The app runs inside the unpacked root, not on the host's python.
    let pid = packed_pid(r, "hello");
    let seen_root = std::fs::read_link(format!("/proc/{pid}/root")).expect("root link");
    assert_eq!(seen_root, r.canonicalize().expect("canon"));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert!(
        exe.to_string_lossy().contains("python3"),
        "{}",
        exe.display()
    );
}

#[test]
fn packing_a_lisp_app_without_a_release_says_to_build_one_and_an_unknown_app_is_a_usage_error() {
    let p = Project::new(
        "[app.hello]\nlisp = { system = \"hello-lisp\", entry = \"hello-lisp:main\" }\nport = 8080\n",
    );
    let o = p.run(&["pack"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no release") && err.contains("windlass build hello"),
        "{err}"
    );
    let o = p.run(&["pack", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no app named `nope`"));
}

/// The image config of an unpacked OCI bundle: (args, env, uid, gid, cwd).
fn bundle_process(bundle: &Path) -> (Vec<String>, Vec<(String, String)>, u64, u64, String) {
    let c: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("config"))
            .expect("json");
    let proc_ = &c["process"];
    let args = proc_["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("str").to_owned())
        .collect();
    let env = proc_["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e.as_str()?.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (
        args,
        env,
        proc_["user"]["uid"].as_u64().expect("uid"),
        proc_["user"]["gid"].as_u64().expect("gid"),
        proc_["cwd"].as_str().unwrap_or("/").to_owned(),
    )
}

fn podman_step(image_file: &Path, port: u16) {
    if Command::new("podman").arg("--version").output().is_err() {
        eprintln!("skipping `podman run`: podman is not installed on this machine");
        return;
    }
    let loaded = Command::new("podman")
        .arg("load")
        .arg("-i")
        .arg(image_file)
        .output();
    let Some(loaded) = loaded.ok().filter(|o| o.status.success()) else {
        eprintln!("skipping `podman run`: `podman load` fails on this machine");
        return;
    };
    let name = String::from_utf8_lossy(&loaded.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Loaded image: ").map(str::to_owned))
        .unwrap_or_default();
    let run = Command::new("podman")
        .args(["run", "-d", "--rm", "--network", "host", &name])
        .output();
    match run {
        Ok(o) if o.status.success() => {
            let id = String::from_utf8_lossy(&o.stdout).trim().to_owned();
            let answered = wait_for("the podman container to answer", PACK_DEADLINE, || {
                http_get(port, "/health").ok()
            });
            let _ = Command::new("podman").args(["rm", "-f", &id]).output();
            assert_eq!(answered.0, 200);
        }
        Ok(o) => eprintln!(
            "skipping `podman run` (the rest of the test ran): it fails on this machine's cgroup setup: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("skipping `podman run`: {e}"),
    }
}

#[test]
fn oci_and_docker_archives_are_read_by_skopeo_and_umoci_and_the_image_runs_under_chroot() {
    let port = free_port();
    let p = python_app(port);
    let outs = tempfile::tempdir().expect("tempdir");
    let oci = outs.path().join("img.oci.tar");
    let said = pack(&p, &["--format", "oci", "-o", oci.to_str().expect("utf-8")]);
    assert!(said.contains("tag latest"), "{said}");
    let again = outs.path().join("again.oci.tar");
    pack(
        &p,
        &["--format", "oci", "-o", again.to_str().expect("utf-8")],
    );
    assert_same_bytes(&oci, &again);

    let inspect = tool(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", oci.display())),
        "skopeo inspect oci-archive",
    );
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["Labels"]["io.windlass.apps"], "hello", "{v}");
    assert_eq!(v["Os"], "linux");

    // umoci reads an OCI layout directory: the archive unpacked.
    let work = tempfile::tempdir().expect("tempdir");
    let layout = work.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    tool(
        Command::new("tar")
            .arg("-xf")
            .arg(&oci)
            .arg("-C")
            .arg(&layout),
        "tar -x",
    );
    let bundle = work.path().join("bundle");
    tool(
        Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:latest", layout.display()))
            .arg(&bundle),
        "umoci unpack",
    );
    let (args, env, uid, _, cwd) = bundle_process(&bundle);
    assert_eq!(
        args[..2],
        ["/usr/local/bin/windlass".to_owned(), "up".to_owned()]
    );
    assert!(env.iter().any(|(k, _)| k == "PATH"), "{env:?}");
    assert_eq!(uid, 65532);
    assert_eq!(cwd, "/app");
    let config = tool(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci-archive:{}", oci.display())),
        "skopeo inspect --config",
    );
    let cfg: serde_json::Value = serde_json::from_str(&config).expect("json");
    assert!(
        cfg["config"]["ExposedPorts"]
            .get(format!("{port}/tcp"))
            .is_some(),
        "{cfg}"
    );
    assert_eq!(cfg["config"]["User"], "65532:65532", "{cfg}");
    let mut running = run_rootfs_with_env(&bundle);
    let log = bundle.with_extension("log");
    assert_eq!(wait_answer(port, "/health", &mut running, &log), "ok\n");
    drop(running);

    // The docker archive: what `docker load` reads, checked by skopeo.
    let docker = outs.path().join("img.docker.tar");
    pack(
        &p,
        &["--format", "docker", "-o", docker.to_str().expect("utf-8")],
    );
    let inspect = tool(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", docker.display())),
        "skopeo inspect docker-archive",
    );
    let v: serde_json::Value = serde_json::from_str(&inspect).expect("json");
    assert_eq!(v["Layers"].as_array().map(Vec::len), Some(2), "{v}");
    assert!(v["Env"].as_array().is_some_and(|e| !e.is_empty()), "{v}");

    podman_step(&oci, port);
}

/// Runs an unpacked image's rootfs under chroot as the image's user and with its environment,
/// /dev bound in a private mount namespace (what a container runtime provides).
fn run_rootfs_with_env(bundle: &Path) -> Running {
    let (args, env, uid, gid, _) = bundle_process(bundle);
    let rootfs: PathBuf = bundle.join("rootfs");
    let log = std::fs::File::create(bundle.with_extension("log")).expect("log");
    let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot"]
        .into_iter()
        .find(|c| Path::new(c).exists())
        .expect("chroot");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "/bin/sh", "-c"])
        .arg(r#"root=$1 chroot=$2 user=$3; shift 3; mount --rbind /dev "$root/dev" && exec "$chroot" --userspec="$user" "$root" "$@""#)
        .arg("sh")
        .arg(&rootfs)
        .arg(chroot)
        .arg(format!("{uid}:{gid}"))
        .args(&args)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    Running(cmd.spawn().expect("spawn unshare"))
}

#[test]
fn a_packed_lisp_release_runs_under_chroot_and_the_same_release_packs_to_the_same_bytes() {
    let port = free_port();
    // The config runs from source: the pack pins the release it holds.
    let p = crate::lisp::hello_lisp(port, "");
    ok(&p.run(&["build"]), "windlass build");
    let v: serde_json::Value =
        serde_json::from_str(&ok(&p.run(&["releases", "--json"]), "releases")).expect("json");
    let id = v["releases"][0]["id"].as_str().expect("id").to_owned();
    let outs = tempfile::tempdir().expect("tempdir");
    let out = outs.path().join("lisp.tar.gz");
    let said = pack(&p, &["hello", "-o", out.to_str().expect("utf-8")]);
    assert!(said.contains(&format!("tag {id}")), "{said}");
    assert!(said.contains(&format!("runs release {id}")), "{said}");
    let again = outs.path().join("again.tar.gz");
    pack(&p, &["hello", "-o", again.to_str().expect("utf-8")]);
    assert_eq!(
        sha256sum(&out),
        sha256sum(&again),
        "the same release packed twice differs"
    );

    let root = unpack(&out);
    let r = root.path();
    assert!(
        !r.join("app/src").exists(),
        "the sources were packed with the release"
    );
    let mut running = launch(r);
    let log = r.with_extension("log");
    assert_eq!(wait_answer(port, "/health", &mut running, &log), "ok");
    let css = wait_answer(port, "/static/style.css", &mut running, &log);
    assert!(css.contains('{'), "{css}");
    let pid = packed_pid(r, "hello");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert!(
        exe.ends_with(format!("app/.windlass/releases/{id}/hello-lisp")),
        "{}",
        exe.display()
    );
}
