//! `windlass up`: run the supervisor in the foreground (printing every app's output with a
//! name prefix), or detached with `-d`.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;

use super::output::{self, paint};
use super::{CliError, Result, exit, load_config};
use crate::control::client::Client;
use crate::daemon;
use crate::protocol::{LogLine, State, Status, Stream};
use crate::supervisor::guardian::Guardian;
use crate::supervisor::{Options, Supervisor};

/// Start the apps of the config and keep them running.
///
/// In the foreground (the default), every app's output is shown with a coloured name prefix;
/// Ctrl-C or SIGTERM stops every app gracefully (stop signal, then SIGKILL after the stop
/// timeout); a second Ctrl-C kills at once. With -d, the supervisor detaches and the command
/// returns once the apps are started or have failed.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass up                   every app of ./windlass.toml, in the foreground
  windlass up web worker        only these apps
  windlass up -d                detached; then `windlass status`, `windlass logs -f`
  windlass up -f deploy/windlass.toml")]
pub struct Args {
    /// Apps to start (default: every app with autostart).
    #[arg(value_name = "APP")]
    pub apps: Vec<String>,
    /// Detach: keep the supervisor running in the background.
    #[arg(short, long)]
    pub detach: bool,
    /// The config file.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How long `-d` waits for the apps to start.
    #[arg(long, default_value = "120s", value_parser = parse_dur, hide_short_help = true)]
    pub wait: Duration,
    /// Run N instances of every app instead of each app's `instances` (a Kubernetes pod runs
    /// 1: the cluster runs the replicas).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub instances: Option<u32>,
    /// Internal: this process is the detached supervisor.
    #[arg(long, hide = true)]
    pub detached_child: bool,
}

fn parse_dur(s: &str) -> std::result::Result<Duration, String> {
    crate::config::raw::parse_duration(s)
}

pub async fn run(args: Args, guardian: Option<Guardian>) -> Result {
    let mut config = load_config(args.file.as_ref())?;
    if let Some(n) = args.instances {
        for app in &mut config.apps {
            app.instances = n;
        }
    }
    if args.detach {
        return detach(&args, &config).await;
    }
    // The printer subscribes before any app starts: an app that prints and exits at once
    // still has its lines on the terminal.
    let (tap, printer): (_, Option<daemon::OnStarted>) = if args.detached_child {
        (None, None)
    } else {
        let (tap, rx) = crate::supervisor::log_tap();
        (
            Some(tap),
            Some(Box::new(move |sup: &Supervisor| spawn_printer(sup, rx))),
        )
    };
    let opts = Options {
        only: args.apps.clone(),
        guardian,
        admin: None,
        tap,
    };
    daemon::run(config, opts, printer).await?;
    Ok(exit::OK)
}

/// Prints every log line with a `app.N |` prefix: coloured on a terminal, plain otherwise
/// (journald-friendly). A slow terminal never slows the apps: this reader may fall behind,
/// and then says how many lines it skipped (they are all in the log files).
fn spawn_printer(sup: &Supervisor, mut rx: tokio::sync::broadcast::Receiver<Arc<LogLine>>) {
    let color = output::color_stdout();
    let names = sup.app_names().join(", ");
    let dashboard = sup
        .admin_url()
        .map(|u| format!("; dashboard {u}dashboard, metrics {u}metrics"))
        .unwrap_or_default();
    println!(
        "{}",
        paint(
            color,
            output::DIM,
            &format!("windlass: supervising {names}{dashboard}; Ctrl-C stops")
        )
    );
    let width = sup
        .config()
        .apps
        .iter()
        .map(|a| a.name.len() + 1 + a.instances.to_string().len())
        .max()
        .unwrap_or(4);
    tokio::spawn(async move {
        loop {
            let line = match rx.recv().await {
                Ok(l) => l,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    println!(
                        "{}",
                        paint(
                            color,
                            output::DIM,
                            &format!("windlass: {n} lines not shown here; see `windlass logs`")
                        )
                    );
                    continue;
                }
                Err(_) => break,
            };
            let who = match line.instance {
                Some(i) => format!("{}.{i}", line.app),
                None => line.app.clone(),
            };
            let prefix = paint(
                color,
                output::app_color(&line.app),
                &format!("{who:<width$} |"),
            );
            let text = match line.stream {
                Stream::Windlass => paint(
                    color,
                    output::DIM,
                    &format!("[windlass] {}", output::sanitize(&line.line)),
                ),
                _ => output::sanitize(&line.line).into_owned(),
            };
            let mut out = std::io::stdout().lock();
            if writeln!(out, "{prefix} {text}").is_err() {
                // stdout closed (a pipe reader went away): keep supervising, stop printing.
                break;
            }
        }
    });
}

/// Starts the detached supervisor and waits until its apps have started or failed.
async fn detach(args: &Args, config: &crate::config::Config) -> Result {
    let paths = config.layout();
    std::fs::create_dir_all(paths.dir()).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot create {}: {e}", paths.dir().display()),
        )
    })?;
    let client = Client::new(&paths.socket());
    if client.alive().await {
        return Err(CliError::new(
            exit::FAILURE,
            "a supervisor is already running for this project",
        )
        .with_hint("see it with `windlass status`, stop it with `windlass down`"));
    }
    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot find the windlass executable: {e}"),
        )
    })?;
    let log_path = paths.daemon_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| {
            CliError::new(
                exit::FAILURE,
                format!("cannot open {}: {e}", log_path.display()),
            )
        })?;
    let log2 = log
        .try_clone()
        .map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("up")
        .arg("--detached-child")
        .arg("--file")
        .arg(&config.file)
        .args(&args.apps);
    if let Some(n) = args.instances {
        cmd.arg("--instances").arg(n.to_string());
    }
    cmd.stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .current_dir(&config.root);
    // SAFETY: setsid is async-signal-safe; the child leaves our session and terminal.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot start the supervisor: {e}")))?;

    let deadline = Instant::now() + args.wait;
    let selected: Vec<String> = if args.apps.is_empty() {
        config
            .apps
            .iter()
            .filter(|a| a.autostart)
            .map(|a| a.name.clone())
            .collect()
    } else {
        args.apps.clone()
    };
    let mut spinner = Spinner::new();
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            spinner.clear();
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            return Err(CliError::new(
                exit::FAILURE,
                format!(
                    "the supervisor exited at start ({st}):\n{}",
                    output::sanitize_text(&tail.join("\n"))
                ),
            ));
        }
        if let Ok(status) = client.json::<Status>(Method::GET, "/v1/status").await {
            let mine = || status.apps.iter().filter(|a| selected.contains(&a.name));
            // Started means healthy (apps behind the proxy are `running` only once their
            // health check passed) or, with no health check, alive past the quick-failure
            // window: a process that dies in its first second has not started.
            let settled = mine().all(|a| {
                let quick = config
                    .app(&a.name)
                    .filter(|c| c.port.is_none())
                    .map_or(0.0, |c| c.backoff.reset_after.as_secs_f64());
                a.instances.iter().all(|i| match i.state {
                    State::Running => i.uptime_secs.unwrap_or(0.0) >= quick,
                    State::Crashloop | State::Fatal | State::Exited => true,
                    _ => false,
                })
            });
            if settled || Instant::now() >= deadline {
                spinner.clear();
                print!(
                    "{}",
                    super::status::render(&status, output::color_stdout(), true)
                );
                let failed = mine().any(|a| a.state != State::Running);
                println!(
                    "supervisor pid {} detached; logs: windlass logs -f; stop: windlass down",
                    status.supervisor.pid
                );
                return Ok(if failed { exit::FAILURE } else { exit::OK });
            }
            let waiting: Vec<&str> = mine()
                .filter(|a| {
                    a.instances
                        .iter()
                        .any(|i| i.state != State::Running || i.uptime_secs.unwrap_or(0.0) < 1.0)
                })
                .map(|a| a.name.as_str())
                .collect();
            spinner.show(&waiting);
        } else if Instant::now() >= deadline {
            spinner.clear();
            return Err(CliError::new(
                exit::FAILURE,
                format!(
                    "the supervisor did not answer within {}",
                    output::dur(args.wait)
                ),
            )
            .with_hint(format!("see {}", log_path.display())));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The progress line of `up -d` ("starting web (3s)..."), on stderr and only on a terminal:
/// piped or redirected output gets no control characters at all.
struct Spinner {
    on: bool,
    started: Instant,
    frame: usize,
    last: Option<Instant>,
    shown: bool,
}

impl Spinner {
    fn new() -> Spinner {
        use std::io::IsTerminal;
        Spinner {
            on: std::io::stderr().is_terminal(),
            started: Instant::now(),
            frame: 0,
            last: None,
            shown: false,
        }
    }

    /// Redraws at most every 100 ms.
    fn show(&mut self, apps: &[&str]) {
        if !self.on
            || apps.is_empty()
            || self
                .last
                .is_some_and(|l| l.elapsed() < Duration::from_millis(100))
        {
            return;
        }
        const FRAMES: [char; 4] = ['|', '/', '-', '\\'];
        self.last = Some(Instant::now());
        self.frame = (self.frame + 1) % FRAMES.len();
        let secs = self.started.elapsed().as_secs();
        let mut err = std::io::stderr().lock();
        // `starting` covers compiling (cargo run, go run) and booting: the app is not serving yet.
        let _ = write!(
            err,
            "\r\x1b[2K{} starting {} ({secs}s)... state `starting`: compiling or booting",
            FRAMES[self.frame],
            apps.join(", ")
        );
        let _ = err.flush();
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}
