//! `windlass git-remote init [PATH]`: `git push` deploys (Heroku/Dokku style). It creates a
//! bare repository whose `pre-receive` hook runs `windlass git-remote receive`: for a push to
//! the deploy branch it exports the pushed revision, builds a release of every app that runs
//! releases (`release` set), and switches each to it with `windlass rollback`'s blue-green
//! reload, the output going to the pusher as it comes. The hook runs before git updates the
//! branch, so a failed build or health check rejects the push: the branch keeps the old
//! revision, the running version keeps serving, and `git push` exits non-zero saying why.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hyper::Method;

use super::{CliError, Result, exit, load_config};
use crate::control::client::ClientError;
use crate::protocol::RollbackResult;
use crate::release;

/// Deploy with `git push`: a bare repository whose hook builds and switches to each push.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass git-remote init
  windlass git-remote init /srv/git/shop.git --branch production")]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    Init(InitArgs),
    #[command(hide = true)]
    Receive(ReceiveArgs),
}

/// Create the bare repository to push to (default .windlass/repo.git).
///
/// A push to the deploy branch builds a release of every app with `release` set (from the
/// pushed revision; the project's windlass.toml stays the one here) and switches each to it
/// with a zero-downtime reload, streaming the output to `git push`. A failed build or health
/// check rejects the push: the old version keeps serving and the branch is not moved.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass git-remote init
  git remote add prod ssh://server/srv/shop/.windlass/repo.git && git push prod main
  windlass git-remote init /srv/git/shop.git --branch production")]
pub struct InitArgs {
    /// Where to create the bare repository (default: .windlass/repo.git of the project).
    pub path: Option<PathBuf>,
    /// The branch whose pushes deploy (others are accepted and not deployed).
    #[arg(long, default_value = "main")]
    pub branch: String,
    #[command(flatten)]
    pub project: super::ProjectArg,
}

/// The hook's side (run by git, not by hand).
#[derive(Debug, clap::Args)]
pub struct ReceiveArgs {
    #[arg(long)]
    pub branch: String,
    #[command(flatten)]
    pub project: super::ProjectArg,
}

pub async fn run(args: Args) -> Result {
    match args.command {
        Sub::Init(a) => init(a),
        Sub::Receive(a) => receive(a).await,
    }
}

/// `'...'` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn init(args: InitArgs) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    if Command::new("git")
        .arg("check-ref-format")
        .arg(format!("refs/heads/{}", args.branch))
        .status()
        .map_or(true, |s| !s.success())
    {
        return Err(CliError::new(
            exit::USAGE,
            format!("`{}` is not a branch name", args.branch),
        ));
    }
    let path = args
        .path
        .unwrap_or_else(|| config.layout().dir().join("repo.git"));
    let path = std::path::absolute(&path).unwrap_or(path);
    let out = Command::new("git")
        .args(["init", "--quiet", "--bare"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(CliError::new(
            exit::FAILURE,
            format!(
                "git init --bare {} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot find windlass itself: {e}")))?;
    let file = std::path::absolute(&config.file).unwrap_or(config.file.clone());
    let hook = format!(
        "#!/bin/sh\n# Written by `windlass git-remote init`: a push to {branch} builds and runs it.\n\
         exec {exe} git-remote receive --branch {branch_q} --file {file}\n",
        branch = args.branch,
        exe = sh_quote(&exe.to_string_lossy()),
        branch_q = sh_quote(&args.branch),
        file = sh_quote(&file.to_string_lossy()),
    );
    let hook_path = path.join("hooks/pre-receive");
    crate::layout::write_atomic(&hook_path, hook.as_bytes())
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&hook_path, std::fs::Permissions::from_mode(0o755))
        })
        .map_err(|e| {
            CliError::new(
                exit::FAILURE,
                format!("cannot write {}: {e}", hook_path.display()),
            )
        })?;
    println!("created {} (hook: {})", path.display(), hook_path.display());
    println!(
        "  from your checkout: git remote add deploy {}",
        path.display()
    );
    println!("  then: git push deploy {}", args.branch);
    Ok(exit::OK)
}

/// Prints to stderr, which git shows the pusher as `remote: ...`.
macro_rules! say {
    ($($t:tt)*) => { eprintln!("windlass: {}", format!($($t)*)) };
}

async fn receive(args: ReceiveArgs) -> Result {
    let zero = |s: &str| s.chars().all(|c| c == '0');
    let wanted = format!("refs/heads/{}", args.branch);
    let mut deploy = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [_old, new, name] = parts[..] else {
            continue;
        };
        if name != wanted {
            say!("{name}: accepted, not deployed (pushes to {wanted} deploy)");
        } else if zero(new) {
            say!("{name} deleted: nothing deployed");
        } else {
            deploy = Some(new.to_owned());
        }
    }
    let Some(rev) = deploy else {
        return Ok(exit::OK);
    };
    match deploy_revision(&args, &rev).await {
        Ok(()) => Ok(exit::OK),
        Err(e) => {
            say!("{}", e.message);
            if let Some(h) = &e.hint {
                say!("{h}");
            }
            say!("push rejected: the running version keeps serving");
            Ok(exit::FAILURE)
        }
    }
}

async fn deploy_revision(args: &ReceiveArgs, rev: &str) -> Result<()> {
    let config = load_config(args.project.file.as_ref())?;
    let apps: Vec<_> = config
        .apps
        .iter()
        .filter(|a| a.releases.sel.is_some())
        .collect();
    for a in config.apps.iter().filter(|a| a.releases.sel.is_none()) {
        say!(
            "app `{}` runs from source (no `release` key): not deployed",
            a.name
        );
    }
    if apps.is_empty() {
        return Err(
            CliError::new(exit::FAILURE, "no app of the config runs releases")
                .with_hint("set release = \"latest\" on the apps a push deploys"),
        );
    }
    let short = &rev[..rev.len().min(12)];
    say!("deploying {short}");
    // The pushed revision, exported beside the releases (git's quarantine makes its objects
    // visible to this hook only).
    let state = config.layout().dir().to_path_buf();
    std::fs::create_dir_all(&state).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot create {}: {e}", state.display()),
        )
    })?;
    let export = Export(state.join(format!(".push-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(export.path());
    std::fs::create_dir(export.path()).map_err(|e| {
        CliError::new(
            exit::FAILURE,
            format!("cannot create {}: {e}", export.path().display()),
        )
    })?;
    export_revision(rev, export.path())?;
    let mut built = Vec::new();
    for app in &apps {
        let rel = app.cwd.strip_prefix(&config.root).unwrap_or(Path::new(""));
        let checkout = release::Checkout {
            dir: export.path().join(rel),
            commit: rev.to_owned(),
        };
        say!("building {}", app.name);
        let mut progress = |s: &str| say!("  {s}");
        let r = release::build_with(app, Some(&checkout), &mut progress)
            .await
            .map_err(|e| {
                let mut err = CliError::new(exit::FAILURE, format!("building {}: {e}", app.name));
                if let Some(h) = e.hint() {
                    err = err.with_hint(h);
                }
                err
            })?;
        say!("built {} release {}", app.name, r.manifest.id);
        built.push((app.name.clone(), r.manifest.id));
    }
    let client = super::client(args.project.file.as_ref())?;
    let mut switched: Vec<(String, Option<String>)> = Vec::new();
    for (app, id) in &built {
        let path = format!("/v1/apps/{}/rollback/{id}", super::ctl::urlencode(app));
        match client.json::<RollbackResult>(Method::POST, &path).await {
            Ok(r) => {
                for line in r.message.lines() {
                    say!("  {}", super::output::sanitize_text(line));
                }
                say!("{app} runs release {id}");
                switched.push((app.clone(), r.from));
            }
            Err(ClientError::NoSupervisor(_)) => {
                say!("{app}: no supervisor running; `windlass up` will run release {id}");
            }
            Err(e) => {
                // Apps switched by this push go back to what they ran.
                for (done, from) in switched.iter().rev() {
                    if let Some(from) = from {
                        let back =
                            format!("/v1/apps/{}/rollback/{from}", super::ctl::urlencode(done));
                        let undone = client.json::<RollbackResult>(Method::POST, &back).await;
                        say!(
                            "{done}: back to release {from}{}",
                            if undone.is_ok() { "" } else { " FAILED" }
                        );
                    }
                }
                let e: CliError = e.into();
                return Err(CliError::new(
                    exit::FAILURE,
                    format!("{app}: release {id} failed: {}", e.message),
                ));
            }
        }
    }
    say!("deployed {short}");
    Ok(())
}

/// The exported revision, removed when the hook is done.
struct Export(PathBuf);

impl Export {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `git archive REV | tar -x -C dest` in the hook's repository.
fn export_revision(rev: &str, dest: &Path) -> Result<()> {
    let mut archive = Command::new("git")
        .args(["archive", "--format=tar", rev])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot run git archive: {e}")))?;
    let out = archive.stdout.take().expect("piped");
    let tar = Command::new("tar")
        .args(["-x", "-f", "-", "-C"])
        .arg(dest)
        .stdin(Stdio::from(out))
        .status()
        .map_err(|e| CliError::new(exit::FAILURE, format!("cannot run tar: {e}")))?;
    let git = archive
        .wait()
        .map_err(|e| CliError::new(exit::FAILURE, format!("git archive: {e}")))?;
    if !git.success() || !tar.success() {
        return Err(CliError::new(
            exit::FAILURE,
            format!("cannot export revision {rev} (git archive {git}, tar {tar})"),
        ));
    }
    Ok(())
}
