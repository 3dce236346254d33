//! `windlass build [APP]`: build a release of each Common Lisp app (or of APP) into
//! `.windlass/releases/<id>/`. See [`crate::release`].

use std::time::{Duration, Instant};

use super::output;
use super::{CliError, ProjectArg, Result, exit, load_config};
use crate::config::ReleaseSel;
use crate::release;

/// Build a release: one self-contained executable plus its assets, in .windlass/releases/ID/.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Builds every Common Lisp app of the config (or only APP) into an
executable that needs no Lisp sources: .windlass/releases/<UTC time>/ with release.json.
With `release = \"latest\"` in the config, the next start, restart or reload of the app runs it.
Only the newest `keep_releases` (default 5) releases of an app are kept.

Examples:
  windlass build
  windlass build hello && windlass restart hello
  windlass releases"
)]
pub struct Args {
    /// The app to build (default: every Lisp app).
    pub app: Option<String>,
    #[command(flatten)]
    pub project: ProjectArg,
}

pub async fn run(args: Args) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    let apps: Vec<_> = match &args.app {
        Some(name) => {
            let app = config.app(name).ok_or_else(|| {
                CliError::new(exit::USAGE, format!("no app named `{name}`")).with_hint(format!(
                    "apps: {}",
                    config
                        .apps
                        .iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            if app.lisp.is_none() {
                return Err(CliError::new(
                    exit::USAGE,
                    release::ReleaseError::NotBuildable(name.clone()).to_string(),
                ));
            }
            vec![app]
        }
        None => config.apps.iter().filter(|a| a.lisp.is_some()).collect(),
    };
    if apps.is_empty() {
        return Err(
            CliError::new(exit::USAGE, "the config has no Common Lisp app to build")
                .with_hint("`windlass build` builds apps with `lisp = { system, entry }`"),
        );
    }
    let color = output::color_stdout();
    for app in apps {
        let lisp = app.lisp.as_ref().expect("filtered on lisp above");
        println!(
            "building {} (system {}); with a warm fasl cache this takes about 10 s...",
            output::paint(color, output::BOLD, &app.name),
            lisp.app.system
        );
        let started = Instant::now();
        let build = release::build(app);
        tokio::pin!(build);
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        tick.tick().await;
        let built = loop {
            tokio::select! {
                r = &mut build => break r,
                _ = tick.tick() => eprintln!("  still building ({}s)", started.elapsed().as_secs()),
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
        println!(
            "{} {} release {}: {} ({}{}) in {:.1}s",
            output::paint(color, output::GREEN, "built"),
            app.name,
            m.id,
            r.exe().display(),
            output::bytes(m.size),
            if m.assets.is_empty() {
                String::new()
            } else {
                format!(", assets: {}", m.assets.join(", "))
            },
            m.build_secs
        );
        match &lisp.release {
            Some(ReleaseSel::Latest) => println!(
                "  `windlass restart {}` (or reload) runs it; new starts use it from now on",
                app.name
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
