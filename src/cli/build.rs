//! `windlass build [APP]`: build a release of every app (or of APP) into
//! `.windlass/releases/<id>/`. See [`crate::release`].

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use super::output;
use super::{CliError, ProjectArg, Result, exit, load_config};
use crate::config::ReleaseSel;
use crate::release;

/// Build a release of each app (or APP): an immutable copy in .windlass/releases/ID/.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Builds every app of the config (or only APP) into .windlass/releases/<UTC time>/
with release.json (app, id, git revision and dirty flag, build time, commands, checksum).

A Common Lisp app becomes one executable (asdf:make) plus its assets. Any other app becomes a
copy of the tracked files of git HEAD (outside git: the directory minus .windlass/, .git/ and
what .gitignore excludes), in which its `build = [...]` commands run (default: `cargo build
--release` with a Cargo.toml, `npm ci` with a package-lock.json, nothing otherwise). Their
output is shown as it comes; a failed build exits 1 and leaves what runs untouched.
`shared = [\"uploads\"]` directories live in .windlass/shared/APP/ and are linked into each
release. With `release = \"latest\"` the next start, reload or `windlass rollback` runs it.
Only the newest `keep_releases` (default 5) are kept, never one that runs or is pinned.

Examples:
  windlass build
  windlass build web && windlass rollback web $(ls -t .windlass/releases | head -1)
  windlass releases"
)]
pub struct Args {
    /// The app to build (default: every app).
    pub app: Option<String>,
    #[command(flatten)]
    pub project: ProjectArg,
}

pub async fn run(args: Args) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    let apps: Vec<_> = match &args.app {
        Some(name) => vec![config.app(name).ok_or_else(|| {
            CliError::new(exit::USAGE, format!("no app named `{name}`")).with_hint(format!(
                "apps: {}",
                config
                    .apps
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?],
        None => config.apps.iter().collect(),
    };
    let color = output::color_stdout();
    let tty = std::io::stderr().is_terminal();
    for app in apps {
        println!("building {}", output::paint(color, output::BOLD, &app.name));
        let started = Instant::now();
        let mut progress = |s: &str| eprintln!("  {s}");
        let build = release::build(app, &mut progress);
        tokio::pin!(build);
        let mut tick = tokio::time::interval(Duration::from_secs(if tty { 5 } else { 30 }));
        tick.tick().await;
        let built = loop {
            tokio::select! {
                r = &mut build => break r,
                _ = tick.tick() => eprintln!("  still building {} ({}s)", app.name, started.elapsed().as_secs()),
            }
        };
        let r = built.map_err(|e| {
            let hint = e.hint();
            let mut err = CliError::new(exit::FAILURE, format!("building {}: {e}", app.name));
            if let Some(h) = hint {
                err = err.with_hint(h);
            }
            err
        })?;
        let m = &r.manifest;
        let what = if m.kind == release::KIND_LISP {
            format!(
                "{} ({}{})",
                r.exe().display(),
                output::bytes(m.size),
                if m.assets.is_empty() {
                    String::new()
                } else {
                    format!(", assets: {}", m.assets.join(", "))
                }
            )
        } else {
            format!(
                "{} ({} files, {})",
                r.dir.display(),
                m.files,
                output::bytes(m.size)
            )
        };
        println!(
            "{} {} release {}: {what} in {:.1}s",
            output::paint(color, output::GREEN, "built"),
            app.name,
            m.id,
            m.build_secs
        );
        if let Some(pinned) = release::selected(app) {
            println!(
                "  `windlass rollback` pinned {} to {pinned}: `windlass rollback {} {}` switches to this one",
                app.name, app.name, m.id
            );
            continue;
        }
        match &app.releases.sel {
            Some(ReleaseSel::Latest) => println!(
                "  `windlass reload {}` (or `windlass rollback {} {}`) runs it",
                app.name, app.name, m.id
            ),
            Some(ReleaseSel::Id(id)) => println!(
                "  the config pins release {id}: set release = \"{}\" or \"latest\" to run this one",
                m.id
            ),
            None => println!(
                "  the app runs from source: set release = \"latest\" in [app.{}] to run releases",
                app.name
            ),
        }
    }
    Ok(exit::OK)
}
