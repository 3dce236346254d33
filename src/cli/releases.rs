//! `windlass releases [APP] [--json]`: the releases `windlass build` made, oldest first.

use serde::Serialize;

use super::output;
use super::{ProjectArg, Result, exit, load_config};
use crate::config::{AppConfig, ReleaseSel};
use crate::release::{self, Manifest};

/// List built releases (oldest first); `*` marks the one the config runs.
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
    /// True for the release the config's `release` selects (what the next start runs).
    selected: bool,
}

#[derive(Serialize)]
struct Listing<'a> {
    releases: Vec<Row<'a>>,
}

pub fn run(args: Args) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    let dir = config.layout().releases_dir();
    let all =
        release::list(&dir).map_err(|e| super::CliError::new(exit::FAILURE, e.to_string()))?;
    let selected = |app: Option<&AppConfig>| -> Option<String> {
        let lisp = app?.lisp.as_ref()?;
        let sel = lisp.release.as_ref()?;
        match sel {
            ReleaseSel::Id(id) => Some(id.clone()),
            ReleaseSel::Latest => release::find(&dir, &app?.name, sel)
                .ok()
                .map(|r| r.manifest.id),
        }
    };
    let rows: Vec<Row> = all
        .iter()
        .filter(|r| args.app.as_deref().is_none_or(|a| a == r.manifest.app))
        .map(|r| Row {
            manifest: &r.manifest,
            path: r.dir.display().to_string(),
            selected: selected(config.app(&r.manifest.app)).as_deref() == Some(&r.manifest.id),
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
                "  {:<12} {:<20} {:<22} {:>10}  {}",
                "APP", "ID", "CREATED", "SIZE", "COMMIT"
            )
        )
    );
    for r in rows {
        let m = r.manifest;
        println!(
            "{} {:<12} {:<20} {:<22} {:>10}  {}",
            if r.selected { "*" } else { " " },
            m.app,
            m.id,
            m.created,
            output::bytes(m.size),
            m.git_commit
                .as_deref()
                .map_or("-", |c| &c[..c.len().min(12)])
        );
    }
    Ok(exit::OK)
}
