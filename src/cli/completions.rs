//! `windlass completions SHELL` and `windlass man`: shell completions and the man page,
//! generated from the clap definition, so they cannot drift from the code.
//!
//! The same text is committed under `contrib/` for packagers; a test regenerates it and fails on
//! any difference (`UPDATE_CONTRIB=1 cargo test --test it contrib` rewrites the files).

use clap::CommandFactory;
use clap_complete::Shell;

use super::{Cli, CliError, Result, exit};

/// Print shell completions for bash, zsh or fish (also elvish, powershell).
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass completions bash > ~/.local/share/bash-completion/completions/windlass
  windlass completions zsh > ~/.zfunc/_windlass      # with fpath+=(~/.zfunc) in .zshrc
  windlass completions fish > ~/.config/fish/completions/windlass.fish")]
pub struct Args {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

/// Print the man page (roff) to stdout.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass man | man -l -
  windlass man > /usr/local/share/man/man1/windlass.1")]
pub struct ManArgs {}

pub fn run(args: Args) -> Result {
    print_bytes(&completions(args.shell))
}

pub fn man(_: ManArgs) -> Result {
    print_bytes(&man_page()?)
}

fn print_bytes(b: &[u8]) -> Result {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(b).and_then(|()| out.flush()) {
        Ok(()) => Ok(exit::OK),
        // A closed pipe (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(CliError::new(
            exit::FAILURE,
            format!("cannot write to stdout: {e}"),
        )),
    }
}

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "windlass", &mut buf);
    buf
}

/// The man page, in roff.
pub fn man_page() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot render the man page: {e}")))?;
    Ok(buf)
}

/// Every generated file committed under `contrib/`, by its path in the repository.
pub fn contrib_files() -> Result<Vec<(&'static str, Vec<u8>)>> {
    Ok(vec![
        (
            "contrib/completions/windlass.bash",
            completions(Shell::Bash),
        ),
        ("contrib/completions/_windlass", completions(Shell::Zsh)),
        (
            "contrib/completions/windlass.fish",
            completions(Shell::Fish),
        ),
        ("contrib/man/windlass.1", man_page()?),
    ])
}
