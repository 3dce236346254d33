//! Integration tests for `windlass::lisp` with real SBCL, real Hunchentoot and real
//! sockets on 127.0.0.1. Every wait is a condition with a deadline. All tests share one
//! fasl cache under the target directory (warmed once, idempotently, so no test depends
//! on another having run); each test works on its own copy of the example app.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use windlass::lisp::executable::{self, BuildError, BuildSpec};
use windlass::lisp::launcher::{self, LispApp, Loader, SourceOptions};
use windlass::lisp::swank::{self, SwankClient, SwankError};

/// Generous: a cold compile of Hunchentoot takes ~16 s on 2 cores, more when tests
/// compile in parallel.
const START_DEADLINE: Duration = Duration::from_secs(240);
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "windlass-lisp-it-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A private copy of examples/hello-lisp.
fn hello_copy() -> Result<TempDir> {
    let dir = TempDir::new("hello");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello-lisp");
    copy_tree(&example, dir.path())?;
    Ok(dir)
}

fn hello_app() -> LispApp {
    LispApp::new("hello-lisp", "hello-lisp:main").expect("valid app")
}

/// A one-file ASDF system `name` whose only source is `code`.
fn fixture_system(name: &str, code: &str) -> Result<TempDir> {
    let dir = TempDir::new(name);
    std::fs::write(
        dir.path().join(format!("{name}.asd")),
        format!("(defsystem \"{name}\" :depends-on (\"uiop\") :components ((:file \"app\")))\n"),
    )?;
    std::fs::write(dir.path().join("app.lisp"), code)?;
    Ok(dir)
}

/// The fasl cache shared by every Lisp test (see the helper).
fn shared_cache() -> PathBuf {
    crate::helper::lisp_cache()
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// A running app with its stdout and stderr captured.
struct App {
    child: Child,
    output: Arc<Mutex<String>>,
    port: u16,
}

fn capture(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static, output: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut stream = stream;
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => output
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
    });
}

impl App {
    fn spawn(argv: &[String], env: &[(String, String)], cwd: &Path, port: u16) -> Result<App> {
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PORT", port.to_string())
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| format!("spawn {argv:?}"))?;
        let output = Arc::new(Mutex::new(String::new()));
        capture(child.stdout.take().context("stdout")?, output.clone());
        capture(child.stderr.take().context("stderr")?, output.clone());
        Ok(App {
            child,
            output,
            port,
        })
    }

    /// hello-lisp from source through the launcher.
    fn from_source(project: &Path, swank_port: Option<u16>) -> Result<App> {
        let options = SourceOptions {
            swank_port,
            cache_dir: Some(shared_cache()),
            stop_timeout: Some(Duration::from_secs(10)),
            loader: Some(Loader::Asdf),
            ..SourceOptions::default()
        };
        let cmd = launcher::source_command(&hello_app(), project, &options)?;
        App::spawn(&cmd.argv, &cmd.env, project, free_port())
    }

    fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running child has a pid")
    }

    async fn wait_for_output(&mut self, needle: &str, deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "exited ({status}) before printing {needle:?}; output:\n{}",
                    self.output()
                );
            }
            if Instant::now() > end {
                bail!(
                    "no {needle:?} within {deadline:?}; output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_healthy(&mut self) -> Result<()> {
        let end = Instant::now() + START_DEADLINE;
        loop {
            if let Ok((200, body)) = get(self.port, "/health").await {
                ensure!(body == "ok", "health body {body:?}");
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "exited ({status}) before becoming healthy; output:\n{}",
                    self.output()
                );
            }
            if Instant::now() > end {
                bail!(
                    "not healthy within {START_DEADLINE:?}; output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, name: &str) -> Result<()> {
        let status = std::process::Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()?;
        ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    async fn wait_exit(&mut self) -> Result<std::process::ExitStatus> {
        match tokio::time::timeout(EXIT_DEADLINE, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => bail!(
                "did not exit within {EXIT_DEADLINE:?}; output:\n{}",
                self.output()
            ),
        }
    }

    /// The swank port announced on stderr.
    async fn swank_addr(&mut self) -> Result<SocketAddr> {
        self.wait_for_output(launcher::SWANK_PORT_ANNOUNCE, START_DEADLINE)
            .await?;
        let output = self.output();
        let port: u16 = output
            .lines()
            .find_map(|l| {
                l.split_once(launcher::SWANK_PORT_ANNOUNCE)
                    .map(|(_, p)| p.trim().to_string())
            })
            .context("announcement line")?
            .parse()?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }
}

/// A one-shot HTTP/1.1 GET on 127.0.0.1: (status, body).
async fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw)).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    Ok((status, body.to_string()))
}

// ---------------------------------------------------------------- run from source

#[tokio::test]
async fn source_run_answers_health_on_the_port_from_the_env() -> Result<()> {
    let project = hello_copy()?;
    let mut app = App::from_source(project.path(), None)?;
    app.wait_healthy().await?;
    let (status, page) = get(app.port, "/").await?;
    ensure!(
        status == 200 && page.contains("/static/style.css"),
        "{status} {page}"
    );
    let (status, css) = get(app.port, "/static/style.css").await?;
    ensure!(
        status == 200 && css.contains("font-family"),
        "{status} {css}"
    );
    app.signal("TERM")?;
    ensure!(app.wait_exit().await?.success());
    Ok(())
}

async fn graceful_stop_finishes_in_flight_request(signal: &str) -> Result<()> {
    let project = hello_copy()?;
    let mut app = App::from_source(project.path(), None)?;
    app.wait_healthy().await?;
    let port = app.port;
    let slow = tokio::spawn(async move { get(port, "/slow?ms=2000").await });
    // The handler announces itself, so the signal surely lands mid-request.
    app.wait_for_output("slow: sleeping 2000 ms", Duration::from_secs(30))
        .await?;
    app.signal(signal)?;
    let status = app.wait_exit().await?;
    let (code, body) = slow.await??;
    ensure!(code == 200 && body == "slept 2000 ms", "{code} {body}");
    ensure!(
        status.code() == Some(0),
        "exit {status}; output:\n{}",
        app.output()
    );
    let output = app.output();
    ensure!(
        output.contains(&format!(
            "windlass-lisp: SIG{signal}: stopping 1 acceptor(s)"
        )),
        "{output}"
    );
    ensure!(
        output.contains("windlass-lisp: stopped cleanly"),
        "{output}"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_the_in_flight_request_finish_then_exits_0() -> Result<()> {
    graceful_stop_finishes_in_flight_request("TERM").await
}

#[tokio::test]
async fn sigint_lets_the_in_flight_request_finish_then_exits_0() -> Result<()> {
    graceful_stop_finishes_in_flight_request("INT").await
}

#[tokio::test]
async fn load_error_exits_nonzero_with_the_condition_on_stderr() -> Result<()> {
    let project = fixture_system("broken-app", "(defun main () (no-such-package:start))\n")?;
    let app = LispApp::new("broken-app", "broken-app::main")?;
    let options = SourceOptions {
        cache_dir: Some(shared_cache()),
        ..SourceOptions::default()
    };
    let cmd = launcher::source_command(&app, project.path(), &options)?;
    let mut app = App::spawn(&cmd.argv, &cmd.env, project.path(), free_port())?;
    let status = app.wait_exit().await?;
    let output = app.output();
    ensure!(
        !status.success() && status.code().is_some(),
        "exit {status}; output:\n{output}"
    );
    ensure!(
        output.contains("windlass-lisp: failed to load system broken-app"),
        "{output}"
    );
    ensure!(
        output.contains("NO-SUCH-PACKAGE"),
        "condition text missing:\n{output}"
    );
    Ok(())
}

#[tokio::test]
async fn missing_entry_function_exits_nonzero() -> Result<()> {
    let project = hello_copy()?;
    let app = LispApp::new("hello-lisp", "hello-lisp::no-such-main")?;
    let options = SourceOptions {
        cache_dir: Some(shared_cache()),
        ..SourceOptions::default()
    };
    let cmd = launcher::source_command(&app, project.path(), &options)?;
    let mut app = App::spawn(&cmd.argv, &cmd.env, project.path(), free_port())?;
    let status = app.wait_exit().await?;
    ensure!(
        status.code() == Some(1),
        "exit {status}; output:\n{}",
        app.output()
    );
    ensure!(
        app.output().contains("is not a function"),
        "{}",
        app.output()
    );
    Ok(())
}

// ---------------------------------------------------------------- swank

#[tokio::test]
async fn swank_eval_changes_the_version_in_the_same_process() -> Result<()> {
    let project = hello_copy()?;
    let mut app = App::from_source(project.path(), Some(0))?;
    app.wait_healthy().await?;
    let pid = app.pid();
    ensure!(get(app.port, "/version").await? == (200, "1".to_string()));
    let mut client = SwankClient::connect(app.swank_addr().await?).await?;
    let result = client
        .eval(
            "(progn (princ \"changing\") (setf hello-lisp::*version* \"2\"))",
            swank::DEFAULT_PACKAGE,
        )
        .await?;
    ensure!(
        result.value == "\"2\"" && result.output == "changing",
        "{result:?}"
    );
    ensure!(get(app.port, "/version").await? == (200, "2".to_string()));
    ensure!(app.pid() == pid && app.child.try_wait()?.is_none());

    let metrics = client.metrics().await?;
    ensure!(
        metrics.dynamic_usage_bytes > 0
            && metrics.dynamic_space_size_bytes > metrics.dynamic_usage_bytes
    );
    ensure!(
        metrics.threads >= 2 && metrics.bytes_consed_total > 0,
        "{metrics:?}"
    );
    app.signal("TERM")?;
    ensure!(app.wait_exit().await?.success());
    Ok(())
}

#[tokio::test]
async fn swank_eval_error_is_reported_and_the_image_keeps_serving() -> Result<()> {
    let project = hello_copy()?;
    let mut app = App::from_source(project.path(), Some(0))?;
    app.wait_healthy().await?;
    let mut client = SwankClient::connect(app.swank_addr().await?).await?;
    let error = client
        .eval(
            "(error \"deliberate failure ~a\" 42)",
            swank::DEFAULT_PACKAGE,
        )
        .await
        .expect_err("the form signals");
    match &error {
        SwankError::LispError { condition, .. } => {
            ensure!(condition.contains("deliberate failure 42"), "{condition}")
        }
        other => bail!("expected a Lisp error, got {other}"),
    }
    // Same connection still usable, same process still serving.
    let result = client.eval("(+ 1 2)", swank::DEFAULT_PACKAGE).await?;
    ensure!(result.value == "3", "{result:?}");
    ensure!(get(app.port, "/health").await? == (200, "ok".to_string()));
    ensure!(
        app.child.try_wait()?.is_none(),
        "the app exited:\n{}",
        app.output()
    );
    Ok(())
}

#[tokio::test]
async fn in_place_reload_applies_edits_and_reports_compile_errors() -> Result<()> {
    let project = hello_copy()?;
    let mut app = App::from_source(project.path(), Some(0))?;
    app.wait_healthy().await?;
    let mut client = SwankClient::connect(app.swank_addr().await?).await?;
    client.set_timeout(Duration::from_secs(120));
    let source = project.path().join("src/app.lisp");
    let original = std::fs::read_to_string(&source)?;

    // An edit, saved right away (possibly within the fasl's second).
    std::fs::write(&source, original.replace("\"ok\")", "\"ok, reloaded\")"))?;
    let report = client.reload_system("hello-lisp").await?;
    ensure!(report.ok && report.error.is_none(), "{report:?}");
    ensure!(get(app.port, "/health").await? == (200, "ok, reloaded".to_string()));

    // A compile error: reported with the compiler's diagnostics; old code keeps serving.
    std::fs::write(&source, format!("{original}\n(defun broken ( \n"))?;
    let report = client.reload_system("hello-lisp").await?;
    ensure!(!report.ok, "{report:?}");
    let error = report.error.clone().unwrap_or_default();
    ensure!(error.to_ascii_uppercase().contains("COMPILE"), "{report:?}");
    ensure!(!report.diagnostics.is_empty(), "{report:?}");
    ensure!(get(app.port, "/health").await? == (200, "ok, reloaded".to_string()));
    Ok(())
}

// ---------------------------------------------------------------- executables

#[tokio::test]
async fn built_executable_runs_elsewhere_without_sources() -> Result<()> {
    let project = hello_copy()?;
    let out = TempDir::new("out");
    let mut spec = BuildSpec::new(hello_app());
    spec.cache_dir = Some(shared_cache());
    spec.swank = true;
    spec.timeout = Duration::from_secs(400);
    let built = executable::build(&spec, project.path(), out.path()).await?;
    ensure!(
        built.exe == out.path().canonicalize()?.join("hello-lisp"),
        "{:?}",
        built.exe
    );
    ensure!(built.size > 1 << 20, "size {}", built.size);
    ensure!(
        built.assets.len() == 1 && built.assets[0].join("style.css").is_file(),
        "{:?}",
        built.assets
    );
    eprintln!("built {} bytes in {:?}", built.size, built.duration);

    // Elsewhere, with no Lisp sources anywhere.
    drop(project);
    let elsewhere = TempDir::new("deployed");
    std::fs::copy(&built.exe, elsewhere.path().join("hello-lisp"))?;
    copy_tree(&built.assets[0], &elsewhere.path().join("static"))?;
    drop(out);
    let cwd = TempDir::new("cwd");
    let exe = elsewhere
        .path()
        .join("hello-lisp")
        .to_string_lossy()
        .into_owned();
    let env = [(launcher::ENV_SWANK_PORT.to_string(), "0".to_string())];
    let mut app = App::spawn(&[exe], &env, cwd.path(), free_port())?;
    app.wait_healthy().await?;
    let (status, css) = get(app.port, "/static/style.css").await?;
    ensure!(
        status == 200 && css.contains("font-family"),
        "{status} {css}\n{}",
        app.output()
    );

    // swank was built in: live change, same process.
    let mut client = SwankClient::connect(app.swank_addr().await?).await?;
    client
        .eval(
            "(setf hello-lisp:*version* \"exe-2\")",
            swank::DEFAULT_PACKAGE,
        )
        .await?;
    ensure!(get(app.port, "/version").await? == (200, "exe-2".to_string()));

    // Graceful stop is the same toplevel.
    let port = app.port;
    let slow = tokio::spawn(async move { get(port, "/slow?ms=1000").await });
    app.wait_for_output("slow: sleeping 1000 ms", Duration::from_secs(30))
        .await?;
    app.signal("TERM")?;
    let status = app.wait_exit().await?;
    ensure!(slow.await?? == (200, "slept 1000 ms".to_string()));
    ensure!(status.code() == Some(0), "exit {status}\n{}", app.output());
    Ok(())
}

#[tokio::test]
async fn building_a_system_that_starts_a_thread_at_load_time_fails_clearly() -> Result<()> {
    let project = fixture_system(
        "eager-app",
        "(defvar *server* (sb-thread:make-thread (lambda () (loop (sleep 1))) :name \"eager server\"))\n\
         (defun main () nil)\n",
    )?;
    let out = TempDir::new("eager-out");
    let mut spec = BuildSpec::new(LispApp::new("eager-app", "cl-user::main")?);
    spec.cache_dir = Some(shared_cache());
    spec.timeout = Duration::from_secs(300);
    let error = executable::build(&spec, project.path(), out.path())
        .await
        .expect_err("the build must fail");
    match &error {
        BuildError::ThreadsAtSave { threads, .. } => {
            ensure!(threads.contains("eager server"), "{threads}")
        }
        other => bail!(
            "expected ThreadsAtSave, got {other}\n{}",
            other.log().unwrap_or("")
        ),
    }
    ensure!(
        error.to_string().contains("don't start the server"),
        "{error}"
    );
    ensure!(
        std::fs::read_dir(out.path())?.next().is_none(),
        "no executable or temp file is left"
    );
    Ok(())
}

#[tokio::test]
async fn build_of_a_broken_system_reports_the_condition() -> Result<()> {
    let project = fixture_system("broken-build", "(defun main () (no-such-package:start))\n")?;
    let out = TempDir::new("broken-out");
    let mut spec = BuildSpec::new(LispApp::new("broken-build", "cl-user::main")?);
    spec.cache_dir = Some(shared_cache());
    let error = executable::build(&spec, project.path(), out.path())
        .await
        .expect_err("the build must fail");
    match &error {
        BuildError::LoadFailed { condition, .. } => ensure!(!condition.is_empty(), "{error}"),
        other => bail!(
            "expected LoadFailed, got {other}\n{}",
            other.log().unwrap_or("")
        ),
    }
    ensure!(
        error.log().is_some_and(|l| l.contains("NO-SUCH-PACKAGE")),
        "{:?}",
        error.log()
    );
    Ok(())
}
