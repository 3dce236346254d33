//! `windlass check`: validate the config and exit, like `nginx -t`.

use super::{ProjectArg, Result, exit, load_config};

/// Validate the config and exit: 0 when valid, 2 with every error otherwise.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass check
  windlass check -f deploy/windlass.toml")]
pub struct Args {
    #[command(flatten)]
    pub project: ProjectArg,
}

pub fn run(args: Args) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    let names: Vec<&str> = config.apps.iter().map(|a| a.name.as_str()).collect();
    println!(
        "{}: ok ({} app{}: {})",
        config.file.display(),
        names.len(),
        if names.len() == 1 { "" } else { "s" },
        names.join(", ")
    );
    Ok(exit::OK)
}
