//! Test helpers: a temp project per test, the real `windlass` binary, real HTTP over loopback,
//! and waiting on conditions with deadlines (never bare sleeps).

#![allow(dead_code)]

pub mod hosts;
pub mod webdriver;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_windlass");
pub const DEADLINE: Duration = Duration::from_secs(90);

/// Polls `f` until it returns `Some`, or panics with `what` at the deadline.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(15));
    }
}

/// A free TCP port on 127.0.0.1 (bound to port 0, then released for the app to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 0")
        .local_addr()
        .expect("addr")
        .port()
}

/// Path of the example app shipped in the repo.
pub fn hello_app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello/app.py")
}

/// One HTTP/1.1 GET with `Connection: close`; returns (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, &[])
}

/// True while a process with this pid exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X") | None)
        }
        Err(_) => false,
    }
}

/// A temporary project directory with a config, and ways to run windlass in it.
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project with this `windlass.toml`. Without an `[admin]` table, the admin listener
    /// goes on an ephemeral port (`127.0.0.1:0`) so parallel tests never share 9180.
    pub fn new(config: &str) -> Project {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = if config.contains("[admin]") {
            config.to_owned()
        } else {
            format!("{config}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
        };
        std::fs::write(dir.path().join("windlass.toml"), config).expect("write config");
        Project { dir }
    }

    pub fn empty() -> Project {
        Project {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path().join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&p, contents).expect("write");
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.path())
            .env_remove("NO_COLOR")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs a windlass command to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .expect("run windlass")
    }

    /// Starts `windlass up` in the foreground, as a child of the test.
    pub fn up(&self, args: &[&str]) -> Supervisor {
        self.up_with(args, |_| {})
    }

    /// Like [`up`](Self::up), with `setup` applied to the command first (a `pre_exec`
    /// hook, say).
    pub fn up_with(&self, args: &[&str], setup: impl FnOnce(&mut Command)) -> Supervisor {
        let mut all = vec!["up"];
        all.extend_from_slice(args);
        let out = self.path().join("up.out");
        let err = self.path().join("up.err");
        let mut cmd = self.cmd(&all);
        setup(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("out"))
            .stderr(std::fs::File::create(&err).expect("err"))
            .spawn()
            .expect("spawn windlass up");
        let s = Supervisor {
            child,
            out,
            err,
            dir: self.path().to_path_buf(),
        };
        let sock = self.path().join(".windlass/control.sock");
        wait_for("the control socket", DEADLINE, || {
            sock.exists().then_some(())
        });
        s
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let o = self.run(&["status", "--json"]);
        assert!(
            o.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).expect("status json")
    }

    /// The first instance of `app` in `status --json`.
    pub fn instance(&self, app: &str, index: usize) -> serde_json::Value {
        let s = self.status();
        s["apps"]
            .as_array()
            .expect("apps")
            .iter()
            .find(|a| a["name"] == app)
            .unwrap_or_else(|| panic!("no app {app} in {s}"))["instances"][index]
            .clone()
    }

    /// Every line of the app's log files, oldest first.
    pub fn log_lines(&self, app: &str) -> Vec<String> {
        let dir = self.path().join(".windlass/logs");
        let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        let k = name.strip_prefix(&format!("{app}.log."))?.parse().ok()?;
                        Some((k, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut lines = Vec::new();
        for (_, p) in rotated {
            lines.extend(
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned),
            );
        }
        lines.extend(
            std::fs::read_to_string(dir.join(format!("{app}.log")))
                .unwrap_or_default()
                .lines()
                .map(str::to_owned),
        );
        lines
    }
}

/// A `windlass up` started by a test; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Supervisor {
    pub child: Child,
    pub out: PathBuf,
    pub err: PathBuf,
    pub dir: PathBuf,
}

impl Supervisor {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the supervisor to exit; returns its exit code.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<i32> {
        wait_for("windlass to exit", deadline, || {
            self.child.try_wait().expect("try_wait")
        })
        .code()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let end = Instant::now() + Duration::from_secs(15);
            while Instant::now() < end {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One HTTP/1.1 request with extra headers and `Connection: close`; returns (status, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of the sample `series` (name and labels exactly as exposed) in a Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `GET /metrics` on the admin port.
pub fn scrape(admin: u16) -> String {
    let (code, body) = http_get(admin, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// One fasl cache for every Lisp test of the run, under the target directory, warmed with
/// Hunchentoot and swank exactly once (behind a lock: concurrent compiles into one cache
/// would race). Tests point apps at it with `XDG_CACHE_HOME`.
pub fn lisp_cache() -> PathBuf {
    static WARM: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lisp-fasl-cache");
    let mut warm = WARM.lock().unwrap_or_else(|e| e.into_inner());
    if !*warm {
        let started = Instant::now();
        let status = Command::new("sbcl")
            .args([
                "--noinform",
                "--non-interactive",
                "--no-sysinit",
                "--no-userinit",
                "--eval",
                "(require :asdf)",
                "--eval",
                "(asdf:load-system :hunchentoot)",
                "--eval",
                "(asdf:load-system :swank)",
            ])
            .env("XDG_CACHE_HOME", &cache)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run sbcl to warm the cache");
        assert!(status.success(), "warming the fasl cache failed");
        eprintln!("fasl cache warm after {:?}", started.elapsed());
        *warm = true;
    }
    cache
}

/// Copies a directory tree (the Lisp example into a test's project).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A detached supervisor (`up -d`) outlives the test that started it: whatever happens in
/// the test (a failed assert included), stop the one left in this project, so no daemon
/// keeps running (and respawning apps) after its temp directory is gone.
impl Drop for Project {
    fn drop(&mut self) {
        let pid_file = self.path().join(".windlass/windlass.pid");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return;
        };
        // SAFETY: plain kill(2); the pid is the project's own supervisor.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(20);
        while alive(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(pid) {
            // SAFETY: as above; its guardian then kills the apps.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Reads what the PTY master has until `needle` shows up after `from`.
pub fn read_until(
    master: &mut std::fs::File,
    seen: &mut String,
    from: usize,
    needle: &str,
) -> Option<()> {
    let mut buf = [0u8; 4096];
    match master.read(&mut buf) {
        Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
        _ => {}
    }
    seen[from.min(seen.len())..].contains(needle).then_some(())
}

/// A PTY whose master reads without blocking (every wait has a deadline), `rows`×`cols`.
pub fn pty(rows: u16, cols: u16) -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::os::fd::AsRawFd;
    let size = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
    let master = std::fs::File::from(pty.master);
    // SAFETY: plain fcntl on an fd this test owns.
    unsafe {
        let fd = master.as_raw_fd();
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK,
        );
    }
    (master, pty.slave)
}

/// `windlass attach APP` on a new `rows`×`cols` PTY, once its banner is shown: the PTY's
/// master, the attach process, and the output read so far.
pub fn attach_on_pty(
    p: &Project,
    app: &str,
    rows: u16,
    cols: u16,
) -> (std::fs::File, Child, String) {
    let (mut master, slave) = pty(rows, cols);
    let child = p
        .cmd(&["attach", app])
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::from(slave.try_clone().expect("dup")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawn attach");
    let mut seen = String::new();
    wait_for("the attach banner", DEADLINE, || {
        read_until(&mut master, &mut seen, 0, "detach with Ctrl-]")
    });
    (master, child, seen)
}
