//! `windlass status` (alias `ps`): one row per app instance, with the reason for any failure.

use hyper::Method;

use super::output::{self, paint};
use super::{ProjectArg, Result, client, exit};
use crate::protocol::{State, Status};

/// Show every app instance: state, pid, port, uptime, restarts, memory, CPU.
///
/// Failed apps (crashloop, fatal) also show how their last run ended and the last lines they
/// wrote to stderr.
#[derive(Debug, clap::Args)]
#[command(
    visible_alias = "ps",
    after_long_help = "Examples:
  windlass status
  windlass status --json | jq '.apps[].state'"
)]
pub struct Args {
    /// Print the status as JSON (the schema is `Status` in the guide).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub project: ProjectArg,
}

pub async fn run(args: Args) -> Result {
    let c = client(args.project.file.as_ref())?;
    let status: Status = c.json(Method::GET, "/v1/status").await?;
    if args.json {
        println!(
            "{}",
            output::json_for_terminal(&serde_json::to_string_pretty(&status).unwrap_or_default())
        );
    } else {
        print!("{}", render(&status, output::color_stdout(), true));
    }
    Ok(exit::OK)
}

/// The human table.
pub fn render(status: &Status, color: bool, details: bool) -> String {
    let mut rows = vec![
        [
            "APP",
            "STATE",
            "PID",
            "PORT",
            "UPTIME",
            "RESTARTS",
            "MEM",
            "CPU",
            "LAST EXIT",
        ]
        .iter()
        .map(|h| paint(color, output::BOLD, h))
        .collect::<Vec<_>>(),
    ];
    let mut notes = String::new();
    for app in &status.apps {
        for i in &app.instances {
            let name = if app.instances.len() > 1 {
                format!("{}.{}", output::sanitize(&app.name), i.index)
            } else {
                output::sanitize(&app.name).into_owned()
            };
            let port = match (app.port, i.port) {
                (Some(p), Some(q)) if p != q => format!("{p}→{q}"),
                (Some(p), _) => p.to_string(),
                (None, _) => "-".into(),
            };
            let mut state = i.state.as_str().to_owned();
            if let Some(s) = i.next_start_in_secs {
                state.push_str(&format!(" ({:.1}s)", s));
            }
            rows.push(vec![
                name.clone(),
                paint(color, output::state_color(i.state), &state),
                i.pid.map_or("-".into(), |p| p.to_string()),
                port,
                i.uptime_secs.map_or("-".into(), output::since),
                i.restarts.to_string(),
                i.memory_bytes.map_or("-".into(), output::bytes),
                i.cpu_seconds.map_or("-".into(), |c| format!("{c:.1}s")),
                i.last_exit.as_ref().map_or("-".into(), |e| e.to_string()),
            ]);
            if details && (i.state.is_failed() || matches!(i.state, State::Backoff)) {
                notes.push_str(&format!(
                    "\n{} {}",
                    paint(color, output::RED, &format!("{name}:")),
                    i.state.as_str()
                ));
                if let Some(e) = &i.last_exit {
                    notes.push_str(&format!(", last run {e} after {:.1}s", e.uptime_secs));
                }
                if let Some(m) = &i.message {
                    notes.push_str(&format!(
                        "\n  {}",
                        output::sanitize_text(m).replace('\n', "\n  ")
                    ));
                }
                notes.push('\n');
                if !i.last_stderr.is_empty() {
                    notes.push_str("  last stderr lines:\n");
                    for l in &i.last_stderr {
                        notes.push_str(&format!(
                            "  {} {}\n",
                            paint(color, output::DIM, "│"),
                            output::sanitize(l)
                        ));
                    }
                }
                notes.push_str(&format!(
                    "  more: windlass logs {} -n 100\n",
                    output::sanitize(&app.name)
                ));
            }
        }
        if app.log_lines_dropped > 0 {
            notes.push_str(&format!(
                "\n{} {} log lines could not be written (disk full?)\n",
                paint(
                    color,
                    output::RED,
                    &format!("{}:", output::sanitize(&app.name))
                ),
                app.log_lines_dropped
            ));
        }
    }
    let mut out = output::table(&rows);
    out.push_str(&notes);
    out
}
