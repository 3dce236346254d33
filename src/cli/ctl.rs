//! `windlass start|stop|restart APP` and `windlass down`: one request each to the supervisor.

use hyper::Method;

use super::output;
use super::{ProjectArg, Result, client, exit};
use crate::protocol::Action;
use crate::protocol::{ActionResult, RollbackResult};

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

/// Switch an app to its previous release, or to any built RELEASE, with zero downtime.
///
/// New instances of the chosen release start beside the old ones (blue-green; a restart for
/// an app without a port); once they are healthy traffic switches and the old ones drain. On
/// success the choice is recorded in .windlass/releases/APP.current and survives supervisor
/// restarts (it wins over the config's `release` until the next rollback). If a new instance
/// fails its health check, the old release keeps serving and the command exits 1. The app
/// must run releases (`release = "latest"` or an id in its config).
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass rollback web
  windlass rollback web 20261124T031500Z
  windlass rollback web 20261124T031500Z --json")]
pub struct RollbackArgs {
    /// The app's name, as in the config.
    pub app: String,
    /// The release id to run (default: the one built before the running one); see
    /// `windlass releases`.
    pub release: Option<String>,
    /// Print one JSON object: {ok, app, from, to, message, hint?, status?}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub project: ProjectArg,
}

pub async fn rollback(args: RollbackArgs) -> Result {
    if let Some(id) = &args.release {
        if !crate::config::valid_release_id(id) {
            return Err(
                super::CliError::new(exit::USAGE, format!("`{id}` is not a release id"))
                    .with_hint("see the ids with `windlass releases`"),
            );
        }
    }
    let c = client(args.project.file.as_ref())?;
    let mut path = format!("/v1/apps/{}/rollback", urlencode(&args.app));
    if let Some(id) = &args.release {
        path.push('/');
        path.push_str(id);
    }
    let r: std::result::Result<RollbackResult, _> = c.json(Method::POST, &path).await;
    match r {
        Ok(r) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&r).expect("a result always serializes")
                );
            } else {
                println!("{}", output::sanitize_text(&r.message));
                println!(
                    "{} {}: release {} (was {})",
                    output::paint(output::color_stdout(), output::GREEN, "switched"),
                    r.app,
                    r.to.as_deref().unwrap_or("-"),
                    r.from.as_deref().unwrap_or("source")
                );
            }
            Ok(exit::OK)
        }
        Err(e)
            if args.json && !matches!(e, crate::control::client::ClientError::NoSupervisor(_)) =>
        {
            let (error, hint) = match &e {
                crate::control::client::ClientError::Api { error, hint, .. } => {
                    (error.clone(), hint.clone())
                }
                other => (other.to_string(), None),
            };
            let code = super::CliError::from(e).code;
            let out = RollbackResult {
                ok: false,
                app: args.app.clone(),
                from: None,
                to: args.release.clone(),
                message: error,
                hint,
                status: None,
            };
            println!(
                "{}",
                serde_json::to_string(&out).expect("a result always serializes")
            );
            Ok(code)
        }
        Err(e) => Err(e.into()),
    }
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
