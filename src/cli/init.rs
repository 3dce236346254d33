//! `windlass init`: detect the project in the current directory and write a commented
//! `windlass.toml`, then say what was found and what to type next.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::output::{self, paint};
use super::{CliError, Result, exit};
use crate::config::CONFIG_FILE;
use crate::init::{self, AppPlan, Kind};

/// Write a windlass.toml for the project in this directory.
///
/// Looks at the files here (Procfile, *.asd and run.lisp, Cargo.toml, package.json,
/// requirements.txt or pyproject.toml, config.ru, go.mod), guesses how the app starts, writes a
/// commented windlass.toml and prints what it found. It never overwrites an existing
/// windlass.toml unless --force is given. When it cannot tell, it writes a template and says
/// which line to fill in.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass init                 detect, write ./windlass.toml, print the next step
  windlass init --port 3000     the app's port (default 8080)
  windlass init --force         overwrite an existing windlass.toml
  windlass init --json          the same, reported as JSON (schema in docs/json.md)
  windlass init --dry-run       print the config instead of writing it")]
pub struct Args {
    /// The port the app listens on (passed to it in $PORT or the detected variable).
    #[arg(long, default_value_t = init::DEFAULT_PORT)]
    pub port: u16,
    /// Overwrite an existing windlass.toml.
    #[arg(long)]
    pub force: bool,
    /// Print the config to stdout instead of writing it.
    #[arg(long, conflicts_with = "json")]
    pub dry_run: bool,
    /// Report as JSON: {version, file, written, kind, found, apps, fill_in, next}.
    #[arg(long)]
    pub json: bool,
}

/// `windlass init --json`.
#[derive(Debug, Serialize)]
struct Report<'a> {
    version: u32,
    file: &'a Path,
    written: bool,
    kind: Kind,
    found: &'a [String],
    apps: &'a [AppPlan],
    fill_in: Vec<FillIn<'a>>,
    next: String,
}

#[derive(Debug, Serialize)]
struct FillIn<'a> {
    line: usize,
    what: &'a str,
}

pub fn run(args: Args) -> Result {
    let dir = std::env::current_dir().map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot read the current directory: {e}"),
        )
    })?;
    let file: PathBuf = dir.join(CONFIG_FILE);
    if args.port == 0 {
        return Err(CliError::new(
            exit::USAGE,
            "--port 0 is not a port an app can be reached on",
        )
        .with_hint("pick the port your app should listen on, e.g. --port 8080"));
    }
    if file.exists() && !args.force && !args.dry_run {
        return Err(CliError::new(
            exit::USAGE,
            format!("{} already exists; not overwriting it", file.display()),
        )
        .with_hint(
            "validate it with `windlass check`, or rewrite it with `windlass init --force`",
        ));
    }
    let detection = init::detect(&dir);
    let rendered = init::render(&detection, args.port);
    if args.dry_run {
        print!("{}", rendered.text);
        return Ok(exit::OK);
    }
    crate::layout::write_atomic(&file, rendered.text.as_bytes()).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot write {}: {e}", file.display()),
        )
        .with_hint("check that this directory is writable")
    })?;

    let next = match rendered.fill_in.first() {
        Some((line, what)) => format!(
            "edit {CONFIG_FILE} line {line} ({what}), then run `windlass check` and `windlass up`"
        ),
        None => "windlass up".to_owned(),
    };
    if args.json {
        let report = Report {
            version: 1,
            file: &file,
            written: true,
            kind: detection.kind,
            found: &detection.found,
            apps: &detection.apps,
            fill_in: rendered
                .fill_in
                .iter()
                .map(|(line, what)| FillIn { line: *line, what })
                .collect(),
            next,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report is plain data")
        );
        return Ok(exit::OK);
    }
    let color = output::color_stdout();
    println!(
        "{} {} ({} project)",
        paint(color, output::GREEN, "wrote"),
        file.display(),
        detection.kind.as_str()
    );
    for f in &detection.found {
        println!("  found: {f}");
    }
    for app in &detection.apps {
        let cmd = match &app.command {
            init::Command::Argv(a) => {
                shlex::try_join(a.iter().map(String::as_str)).unwrap_or_else(|_| a.join(" "))
            }
            init::Command::Shell(s) => format!("sh -c {s:?}"),
            init::Command::Lisp(l) => format!(
                "lisp = {{ system = {:?}, entry = {:?} }} (windlass's Lisp runtime)",
                l.system, l.entry
            ),
        };
        let port = app
            .port
            .map(|_| format!(" on port {} (${})", args.port, app.port_env))
            .unwrap_or_default();
        println!(
            "  app {}: {cmd}{port}",
            paint(color, output::app_color(&app.name), &app.name)
        );
    }
    for (line, what) in &rendered.fill_in {
        println!(
            "  {} {CONFIG_FILE}:{line}: {what}",
            paint(color, output::YELLOW, "fill in")
        );
    }
    println!("next: {}", paint(color, output::BOLD, &next));
    Ok(exit::OK)
}
