//! `windlass releases [APP] [--json]`: the releases `windlass build` made, oldest first.

use serde::Serialize;

use super::output;
use super::{ProjectArg, Result, exit, load_config};
use hyper::Method;

use crate::config::AppConfig;
use crate::protocol::Status;
use crate::release::{self, Manifest};

/// List built releases (oldest first): `*` marks the one the next start runs, RUNNING the
/// instances that run each one.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass releases
  windlass releases hello --json")]
pub struct Args {
    /// Only the releases of this app.
    pub app: Option<String>,
    /// One JSON object: {\"releases\": [manifest + \"path\" + \"selected\"]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub project: ProjectArg,
}

#[derive(Serialize)]
struct Row<'a> {
    #[serde(flatten)]
    manifest: &'a Manifest,
    path: String,
    /// True for the release the next start of the app runs (the config's `release`, or the
    /// one `windlass rollback` chose).
    selected: bool,
    /// Indices of the running instances whose process runs this release.
    instances: Vec<u32>,
}

#[derive(Serialize)]
struct Listing<'a> {
    releases: Vec<Row<'a>>,
}

pub async fn run(args: Args) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    let dir = config.layout().releases_dir();
    let all =
        release::list(&dir).map_err(|e| super::CliError::new(exit::FAILURE, e.to_string()))?;
    // Which release each instance runs, when a supervisor is up.
    let status: Option<Status> = match super::client(args.project.file.as_ref()) {
        Ok(c) => c.json(Method::GET, "/v1/status").await.ok(),
        Err(_) => None,
    };
    let running = |app: &str, id: &str| -> Vec<u32> {
        status
            .iter()
            .flat_map(|s| s.apps.iter().filter(|a| a.name == app))
            .flat_map(|a| a.instances.iter())
            .filter(|i| i.pid.is_some() && i.release.as_deref() == Some(id))
            .map(|i| i.index)
            .collect()
    };
    let selected = |app: Option<&AppConfig>| -> Option<String> {
        release::current(app?).ok().flatten().map(|r| r.manifest.id)
    };
    let rows: Vec<Row> = all
        .iter()
        .filter(|r| args.app.as_deref().is_none_or(|a| a == r.manifest.app))
        .map(|r| Row {
            manifest: &r.manifest,
            path: r.dir.display().to_string(),
            selected: selected(config.app(&r.manifest.app)).as_deref() == Some(&r.manifest.id),
            instances: running(&r.manifest.app, &r.manifest.id),
        })
        .collect();
    if args.json {
        let text = serde_json::to_string_pretty(&Listing { releases: rows })
            .expect("a listing always serializes");
        println!("{text}");
        return Ok(exit::OK);
    }
    if rows.is_empty() {
        println!(
            "no releases in {} (build one with `windlass build`)",
            dir.display()
        );
        return Ok(exit::OK);
    }
    let color = output::color_stdout();
    println!(
        "{}",
        output::paint(
            color,
            output::BOLD,
            &format!(
                "  {:<12} {:<20} {:<22} {:>10}  {:<13} {}",
                "APP", "ID", "CREATED", "SIZE", "COMMIT", "RUNNING"
            )
        )
    );
    for r in rows {
        let m = r.manifest;
        let commit = m.git_commit.as_deref().map_or_else(
            || "-".to_owned(),
            |c| {
                format!(
                    "{}{}",
                    &c[..c.len().min(12)],
                    if m.git_dirty { "+" } else { "" }
                )
            },
        );
        let running = if r.instances.is_empty() {
            "-".to_owned()
        } else {
            r.instances
                .iter()
                .map(|i| format!("{}.{i}", m.app))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "{} {:<12} {:<20} {:<22} {:>10}  {:<13} {running}",
            if r.selected { "*" } else { " " },
            m.app,
            m.id,
            m.created,
            output::bytes(m.size),
            commit,
        );
    }
    Ok(exit::OK)
}
