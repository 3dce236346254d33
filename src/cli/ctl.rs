//! `windlass start|stop|restart APP` and `windlass down`: one request each to the supervisor.

use hyper::Method;

use super::output;
use super::{ProjectArg, Result, client, exit};
use crate::protocol::Action;
use crate::protocol::ActionResult;

/// Start, stop or restart every instance of an app.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass restart web
  windlass stop worker
  windlass start worker")]
pub struct AppArgs {
    /// The app's name, as in the config.
    pub app: String,
    #[command(flatten)]
    pub project: ProjectArg,
}

/// Stop every app gracefully, then the supervisor.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Example:
  windlass down")]
pub struct DownArgs {
    #[command(flatten)]
    pub project: ProjectArg,
}

pub async fn act(args: AppArgs, action: Action) -> Result {
    let c = client(args.project.file.as_ref())?;
    let r: ActionResult = c
        .json(
            Method::POST,
            &format!("/v1/apps/{}/{}", urlencode(&args.app), action.as_str()),
        )
        .await?;
    // The message can quote the app (a reload's compiler output): shown, not obeyed.
    println!("{}", output::sanitize_text(&r.message));
    let failed = r.app.as_ref().is_some_and(|a| a.state.is_failed());
    Ok(if failed { exit::FAILURE } else { exit::OK })
}

/// Reload an app with zero downtime (its `reload` strategy).
///
/// blue-green (the default for apps with a port): new instances start beside the old ones on
/// fresh private ports; once healthy, traffic switches to them in one step and the old ones
/// drain (in-flight requests finish, up to stop.timeout) and stop. If a new instance fails its
/// health check, the old version keeps serving, the command prints why and exits 1. The app's
/// config is re-read first, so a changed command or environment takes effect.
///
/// in-place: a Common Lisp app with swank_port evaluates reload_eval (by default: reload its
/// ASDF system) in each running image and prints the compiler's warnings and output; a compile
/// error keeps the old code serving and exits 1. Other apps get their reload_signal.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass reload web
  git pull && windlass reload web")]
pub struct ReloadArgs {
    /// The app's name, as in the config.
    pub app: String,
    #[command(flatten)]
    pub project: ProjectArg,
}

pub async fn reload(args: ReloadArgs) -> Result {
    let c = client(args.project.file.as_ref())?;
    let r: ActionResult = c
        .json(
            Method::POST,
            &format!(
                "/v1/apps/{}/{}",
                urlencode(&args.app),
                Action::Reload.as_str()
            ),
        )
        .await?;
    // The message can quote the app (a reload's compiler output): shown, not obeyed.
    println!("{}", output::sanitize_text(&r.message));
    Ok(exit::OK)
}

pub async fn down(args: DownArgs) -> Result {
    let c = client(args.project.file.as_ref())?;
    let r: ActionResult = c.json(Method::POST, "/v1/down").await?;
    // The supervisor removes its socket as it exits; wait for that so `down && up` works.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.socket().exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!(
        "{}",
        output::paint(
            output::color_stdout(),
            output::GREEN,
            &output::sanitize_text(&r.message)
        )
    );
    Ok(exit::OK)
}

/// Percent-encodes everything but unreserved characters (app names are already restricted,
/// but user input reaches this from the command line).
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
