//! `windlass pack [APP] [--format tar|oci|docker] [-o PATH]`: a self-contained artefact of
//! the project (see [`crate::pack`]). Prints where it went, the image name and the tag (the
//! release id, or `latest`), and how to run or load it.

use std::path::PathBuf;

use super::output;
use super::{CliError, ProjectArg, Result, exit, load_config};
use crate::pack::{self, Format, Options};

/// Pack the project into one self-contained artefact: releases, interpreters, shared libraries, windlass.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "A root file system holding each app's release (or, for an app without
one, the project directory minus .windlass, .git and ignored files), the interpreter a script
needs (python3 and its standard library, node...), every shared library these executables load
(found like ldd, the dynamic loader included), the windlass binary and the config. Host files
keep their absolute paths; the apps live in /app.

  tar     a .tar.gz with a `run` launcher at its top: unpack it anywhere on a Linux host with
          none of the dependencies installed and run ./run (chroot as root, a user namespace
          otherwise)
  oci     an OCI image layout in a tar (oci-archive), built without a daemon or a base image:
          `podman load -i FILE`, `skopeo copy oci-archive:FILE ...`
  docker  a `docker save`-style archive: `docker load -i FILE`

The image is named <project>:<tag>, the tag being the release id (or `latest` when no app has a
release). The same release packs to the same bytes (entries sorted, fixed times and owners;
SOURCE_DATE_EPOCH sets the time, else the release's build time).

Examples:
  windlass build && windlass pack
  windlass pack web --format oci -o web.oci.tar
  windlass pack --format docker && docker load -i .windlass/packs/myapp-latest.docker.tar
  mkdir /srv/app && tar -xzf .windlass/packs/myapp-latest.tar.gz -C /srv/app && /srv/app/run"
)]
pub struct Args {
    /// Pack only this app (default: every app of the config).
    pub app: Option<String>,
    /// The artefact's format.
    #[arg(long, value_enum, default_value = "tar")]
    pub format: Format,
    /// Where to write it (default: .windlass/packs/<project>-<tag>.tar.gz / .oci.tar / .docker.tar).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub project: ProjectArg,
}

pub fn run(args: Args) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    let windlass = std::env::current_exe().map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot find the windlass binary: {e}"),
        )
    })?;
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Some(v.trim().parse::<u64>().map_err(|_| {
            CliError::new(
                exit::USAGE,
                format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"),
            )
        })?),
        Err(_) => None,
    };
    let opts = Options {
        app: args.app,
        format: args.format,
        output: args.output,
        epoch,
        windlass,
    };
    let packed = pack::pack(&config, &opts).map_err(|e| {
        let code = if e.is_usage() {
            exit::USAGE
        } else {
            exit::FAILURE
        };
        let mut err = CliError::new(code, format!("pack: {e}"));
        if let Some(h) = e.hint() {
            err = err.with_hint(h);
        }
        err
    })?;
    let color = output::color_stdout();
    for note in &packed.notes {
        println!("  note: {}", output::sanitize_text(note));
    }
    println!(
        "{} {} ({} entries, {})",
        output::paint(color, output::GREEN, "packed"),
        packed.path.display(),
        packed.entries,
        output::bytes(packed.size)
    );
    println!("  image {}  (tag {})", packed.image, packed.tag);
    let file = packed.path.display();
    match args.format {
        Format::Tar => println!("  run it: mkdir DIR && tar -xzf {file} -C DIR && DIR/run"),
        Format::Oci => println!(
            "  load it: podman load -i {file}   (or skopeo copy oci-archive:{file} docker://REGISTRY/{})",
            packed.image
        ),
        Format::Docker => println!("  load it: docker load -i {file}"),
    }
    Ok(exit::OK)
}
