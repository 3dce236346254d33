//! `windlass check`: validate the config and exit, like `nginx -t`; warn about ports already
//! taken by another process, naming that process.

use std::path::PathBuf;

use serde::Serialize;

use super::output::{self, paint};
use super::{CliError, ProjectArg, Result, exit};
use crate::config::{self, Config, ConfigError};

/// Validate the config and exit: 0 when valid, 2 with every error otherwise.
///
/// Also warns (without failing) when an app's port is already taken by another process, and
/// names that process, read from /proc.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass check
  windlass check -f deploy/windlass.toml
  windlass check --json | jq '.errors[].message'")]
pub struct Args {
    #[command(flatten)]
    pub project: ProjectArg,
    /// Report as JSON: {version, ok, file, apps, warnings, errors} (schema in docs/json.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    version: u32,
    ok: bool,
    file: Option<PathBuf>,
    apps: Vec<AppReport>,
    warnings: Vec<Warning>,
    errors: Vec<ErrorReport>,
}

#[derive(Debug, Serialize)]
struct AppReport {
    name: String,
    command: Vec<String>,
    port: Option<u16>,
    instances: u32,
}

#[derive(Debug, Serialize)]
struct Warning {
    app: String,
    message: String,
    /// The process holding the app's port, when it can be seen.
    pid: Option<u32>,
    cmdline: Option<String>,
}

#[derive(Debug, Serialize)]
struct ErrorReport {
    file: Option<PathBuf>,
    line: Option<usize>,
    column: Option<usize>,
    message: String,
    help: Option<String>,
}

pub fn run(args: Args) -> Result {
    let cwd = std::env::current_dir().map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot read the current directory: {e}"),
        )
    })?;
    let loaded = config::find_and_load(&cwd, args.project.file.as_deref());
    if !args.json {
        let config = loaded?;
        let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
        println!(
            "{}: ok ({} app{}: {})",
            config.file.display(),
            names.len(),
            if names.len() == 1 { "" } else { "s" },
            names.join(", ")
        );
        let color = output::color_stderr();
        for w in port_warnings(&config) {
            // The message quotes another process's command line: it may hold anything.
            eprintln!(
                "{} {}",
                paint(color, output::YELLOW, "warning:"),
                output::sanitize(&w.message)
            );
        }
        return Ok(exit::OK);
    }
    let report = match &loaded {
        Ok(config) => Report {
            version: 1,
            ok: true,
            file: Some(config.file.clone()),
            apps: config
                .apps
                .iter()
                .map(|a| AppReport {
                    name: a.name.clone(),
                    command: a.argv.clone(),
                    port: a.port,
                    instances: a.instances,
                })
                .collect(),
            warnings: port_warnings(config),
            errors: Vec::new(),
        },
        Err(e) => Report {
            version: 1,
            ok: false,
            file: None,
            apps: Vec::new(),
            warnings: Vec::new(),
            errors: error_reports(e),
        },
    };
    // Warnings quote another process's command line: C1 and DEL escaped too.
    println!(
        "{}",
        output::json_for_terminal(
            &serde_json::to_string_pretty(&report).expect("the report is plain data")
        )
    );
    Ok(if report.ok { exit::OK } else { exit::USAGE })
}

fn error_reports(e: &ConfigError) -> Vec<ErrorReport> {
    match e {
        ConfigError::Invalid(diags) => diags
            .iter()
            .map(|d| ErrorReport {
                file: Some(d.file.clone()),
                line: Some(d.line),
                column: Some(d.column),
                message: d.message.clone(),
                help: d.help.clone(),
            })
            .collect(),
        other => vec![ErrorReport {
            file: None,
            line: None,
            column: None,
            message: other.to_string(),
            help: None,
        }],
    }
}

/// One warning per app whose port some process already listens on.
fn port_warnings(config: &Config) -> Vec<Warning> {
    config
        .apps
        .iter()
        .filter_map(|a| {
            let port = a.port?;
            if !crate::ports::listening(port) {
                return None;
            }
            let holder = crate::ports::who_holds_port(port);
            let who = match &holder {
                Some((pid, cmd)) => format!("pid {pid} (`{cmd}`)"),
                None => "a process windlass cannot inspect (another user's?)".to_owned(),
            };
            Some(Warning {
                app: a.name.clone(),
                message: format!(
                    "port {port} of app `{}` is already in use by {who}; the app will fail to bind it. \
                     Stop that process, or pick another port in {}",
                    a.name,
                    config.file.display()
                ),
                pid: holder.as_ref().map(|h| h.0),
                cmdline: holder.map(|h| h.1),
            })
        })
        .collect()
}
