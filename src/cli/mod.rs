//! The command line: clap definitions, dispatch, and the mapping of errors to exit codes.
//!
//! Thin by design: one file per verb, each a few calls into the library. Exit codes are part
//! of the contract: 0 ok, 1 runtime failure, 2 usage or config error, 3 no supervisor running.

mod attach;
mod build;
mod check;
mod completions;
pub(crate) mod ctl;
mod deploy;
mod export;
mod git_remote;
mod init;
mod logs;
pub(crate) mod output;
mod pack;
mod releases;
mod repl;
mod status;
mod top;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError};
use crate::control::client::{Client, ClientError};
use crate::daemon::DaemonError;
use crate::layout::Layout;

/// Documented exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NO_SUPERVISOR: u8 = 3;
}

const AFTER_HELP: &str = "\
Exit codes: 0 ok, 1 runtime failure, 2 usage or config error, 3 no supervisor running.

Examples:
  windlass init               write a windlass.toml for the project here
  windlass up                 run every app of ./windlass.toml in the foreground
  windlass up -d              the same, detached
  windlass status             one row per app instance
  windlass logs web -f        follow the logs of app `web`
  windlass restart web        restart app `web`
  windlass reload web         zero-downtime reload of app `web`
  windlass top                live CPU, memory and requests per instance
  windlass down               stop every app and the supervisor
  windlass build              build a release of each app
  windlass rollback web       switch app `web` back to its previous release
  windlass git-remote init    `git push` to .windlass/repo.git builds and runs the pushed code
  windlass pack --format oci  the project as an OCI image (no daemon needed)
  windlass repl hello         a Lisp REPL into app `hello` over swank
  windlass attach hello       the app's console (its REPL); detach with Ctrl-]
  windlass export systemd     a systemd unit for the project (also: docker, k8s)
  windlass deploy             ship the releases to the hosts of [deploy] over ssh";

/// Run, supervise, hot-reload, monitor and deploy web apps.
#[derive(Debug, Parser)]
#[command(name = "windlass", version, about, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// More log output from windlass itself (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Up(up::Args),
    Down(ctl::DownArgs),
    Status(status::Args),
    Logs(logs::Args),
    Start(ctl::AppArgs),
    Stop(ctl::AppArgs),
    Restart(ctl::AppArgs),
    Reload(ctl::ReloadArgs),
    Check(check::Args),
    Top(top::Args),
    Init(init::Args),
    Completions(completions::Args),
    Man(completions::ManArgs),
    Build(build::Args),
    Releases(releases::Args),
    Rollback(ctl::RollbackArgs),
    GitRemote(git_remote::Args),
    Pack(pack::Args),
    Repl(repl::Args),
    Attach(attach::Args),
    Export(export::Args),
    Deploy(deploy::Args),
}

/// An error on its way to the terminal: message, hint, exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(code: u8, message: impl Into<String>) -> CliError {
        CliError {
            code,
            message: message.into(),
            hint: None,
        }
    }
    pub fn with_hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> CliError {
        CliError {
            code: exit::USAGE,
            message: e.to_string(),
            hint: None,
        }
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let code = match e {
            ClientError::NoSupervisor(_) => exit::NO_SUPERVISOR,
            ClientError::Api {
                status: 404 | 422, ..
            } => exit::USAGE,
            _ => exit::FAILURE,
        };
        CliError {
            code,
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

impl From<DaemonError> for CliError {
    fn from(e: DaemonError) -> CliError {
        let code = match &e {
            DaemonError::Supervisor(crate::supervisor::SupervisorError::UnknownApp { .. }) => {
                exit::USAGE
            }
            _ => exit::FAILURE,
        };
        CliError {
            code,
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

pub use completions::contrib_files;

pub type Result<T = u8> = std::result::Result<T, CliError>;

/// Loads the project's config, honouring `--file`/`-f`.
pub fn load_config(file: Option<&PathBuf>) -> Result<Config> {
    let cwd = std::env::current_dir().map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot read the current directory: {e}"),
        )
    })?;
    Ok(config::find_and_load(&cwd, file.map(PathBuf::as_path))?)
}

/// The control client of the current project. The config need not be valid for this: only
/// its location matters, so a broken config never locks you out of `status` or `down`.
pub fn client(file: Option<&PathBuf>) -> Result<Client> {
    let cwd = std::env::current_dir().map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot read the current directory: {e}"),
        )
    })?;
    let path = config::discover(&cwd, file.map(PathBuf::as_path))?;
    let root = path.parent().map(PathBuf::from).unwrap_or_default();
    Ok(Client::new(&Layout::of_root(&root).socket()))
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("windlass={default}")));
    if crate::notify::under_systemd() {
        // journald reads each line's `<N>` priority.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(crate::notify::JournalFormat)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(output::color_stderr())
        .try_init();
}

/// The whole program: parse, maybe fork the guardian, run, map the result to an exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            // Printing help to a closed pipe is not an error worth reporting.
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    init_tracing(cli.verbose);
    // The guardian must be forked while the process still has one thread.
    let guardian = match &cli.command {
        Command::Up(a) if !a.detach => match crate::supervisor::guardian::Guardian::spawn() {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("error: cannot start the guardian process: {e}");
                return ExitCode::from(exit::FAILURE);
            }
        },
        _ => None,
    };
    // Worker threads: one per core, or TOKIO_WORKER_THREADS (tokio's own setting).
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = rt.block_on(dispatch(cli, guardian));
    // Do not wait for lingering blocking tasks (a follower's read).
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let color = output::color_stderr();
            if crate::notify::under_systemd() {
                eprint!("<{}>", crate::notify::priority(tracing::Level::ERROR));
            }
            // Messages can quote what apps wrote (a reload's diagnostics, a health check's
            // answer): control characters are shown, not obeyed.
            eprintln!(
                "{} {}",
                output::paint(color, output::RED, "error:"),
                output::sanitize_text(e.message.trim_start_matches("error: "))
            );
            if let Some(h) = e.hint {
                eprintln!("  = help: {}", output::sanitize_text(&h));
            }
            ExitCode::from(e.code)
        }
    }
}

async fn dispatch(cli: Cli, guardian: Option<crate::supervisor::guardian::Guardian>) -> Result {
    use crate::protocol::Action;
    match cli.command {
        Command::Up(a) => up::run(a, guardian).await,
        Command::Down(a) => ctl::down(a).await,
        Command::Status(a) => status::run(a).await,
        Command::Logs(a) => logs::run(a).await,
        Command::Start(a) => ctl::act(a, Action::Start).await,
        Command::Stop(a) => ctl::act(a, Action::Stop).await,
        Command::Restart(a) => ctl::act(a, Action::Restart).await,
        Command::Reload(a) => ctl::reload(a).await,
        Command::Check(a) => check::run(a),
        Command::Top(a) => top::run(a).await,
        Command::Init(a) => init::run(a),
        Command::Completions(a) => completions::run(a),
        Command::Man(a) => completions::man(a),
        Command::Build(a) => build::run(a).await,
        Command::Releases(a) => releases::run(a).await,
        Command::Rollback(a) => ctl::rollback(a).await,
        Command::GitRemote(a) => git_remote::run(a).await,
        Command::Pack(a) => pack::run(a),
        Command::Repl(a) => repl::run(a).await,
        Command::Attach(a) => attach::run(a).await,
        Command::Export(a) => export::run(a),
        Command::Deploy(a) => deploy::run(a).await,
    }
}

/// `-f/--file FILE`: which config to use.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectArg {
    /// The config file (default: windlass.toml or Procfile here or in a parent directory).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
}
