//! `windlass deploy [--host H]... [--setup] [--dry-run] [--json]`: load the config, make the
//! plan ([`crate::deploy::plan`]), print it or run it ([`crate::deploy::rollout`]), and print
//! each step: a line per step and host on a terminal, one JSON object a line with `--json`.

use std::io::Write;

use super::{CliError, ProjectArg, Result, exit, load_config, output};
use crate::deploy::plan::Plan;
use crate::deploy::{DeployError, Event, rollout};

/// Ship the newest release of every app to the hosts of `[deploy]` over ssh, host by host
/// (or `batch` at once), switch each through a health-gated zero-downtime reload, and roll
/// the updated hosts back on the first failure.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass build && windlass deploy --setup      first contact: make the layout, start windlass
  windlass deploy                                every host of [deploy] hosts
  windlass deploy --host web1 --host deploy@web9:/srv/shop
  windlass deploy --dry-run                      print the plan, contact no host
  windlass deploy --json | jq .                  one event per step and host

Exit codes: 0 every host serves the new releases; 1 a host failed (the updated hosts were
rolled back, the failed host and its app's last output are printed); 2 usage or config error.")]
pub struct Args {
    /// Deploy to this host only (a name of [deploy] hosts, or NAME, USER@NAME, USER@NAME:PATH);
    /// repeat for several.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// First contact: create PATH/.windlass on the hosts and start the remote supervisor
    /// (a systemd unit where systemd runs, else `windlass up -d`).
    #[arg(long)]
    pub setup: bool,
    /// Print the plan and exit, contacting no host.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object a line per step: {"host","step","status","app","release","bytes","detail"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub project: ProjectArg,
}

impl From<DeployError> for CliError {
    fn from(e: DeployError) -> CliError {
        let code = match e {
            DeployError::Usage { .. } => exit::USAGE,
            DeployError::Local(_) => exit::FAILURE,
        };
        CliError {
            code,
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

fn print_json(e: &Event) {
    let line = serde_json::to_string(e).expect("an event serializes");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", output::json_for_terminal(&line));
    let _ = out.flush();
}

fn print_text(e: &Event, width: usize, color: bool) {
    if e.step == "logs" || e.step == "deploy" {
        return; // the logs go with the error at the end; the end is the summary
    }
    let mark = match e.status {
        "ok" => output::paint(color, output::GREEN, "ok  "),
        "failed" => output::paint(color, output::RED, "FAIL"),
        "skipped" => output::paint(color, output::DIM, "--  "),
        s => s.to_owned(),
    };
    let mut what = e.step.to_owned();
    if let (Some(a), Some(r)) = (&e.app, &e.release) {
        what.push_str(&format!(" {a} {r}"));
    }
    if let Some(b) = e.bytes {
        what.push_str(&format!(" ({} sent)", output::bytes(b)));
    }
    if let Some(d) = &e.detail {
        what.push_str(&format!(": {d}"));
    }
    let host = output::paint(color, output::BOLD, &format!("{:width$}", e.host));
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{host}  {mark}  {}", output::sanitize_text(&what));
    let _ = out.flush();
}

pub async fn run(args: Args) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    let plan = Plan::new(&config, &args.hosts, args.setup)?;
    if args.dry_run {
        return Ok(dry_run(&plan, args.json));
    }
    let width = plan.hosts().map(|t| t.name.len()).max().unwrap_or(0);
    let color = output::color_stdout();
    let json = args.json;
    let outcome = tokio::task::spawn_blocking(move || {
        let report = move |e: Event| {
            if json {
                print_json(&e);
            } else {
                print_text(&e, width, color);
            }
        };
        rollout::run(&plan, &report)
    })
    .await
    .map_err(|e| CliError::new(exit::FAILURE, format!("the deploy stopped: {e}")))??;
    let Some(f) = outcome.failure else {
        if !json {
            println!("deployed to {}", outcome.updated.join(", "));
        }
        return Ok(exit::OK);
    };
    let mut message = format!("deploy failed on host {}: {}", f.host, f.message);
    if !f.logs.trim().is_empty() {
        let who = f.app.as_deref().unwrap_or("windlass");
        message.push_str(&format!("\n  last lines of {who}'s output on {}:", f.host));
        for l in f.logs.trim_end().lines() {
            message.push_str(&format!("\n    {l}"));
        }
    }
    if !outcome.rolled_back.is_empty() {
        message.push_str(&format!(
            "\n  rolled back to what they ran before: {}",
            outcome.rolled_back.join(", ")
        ));
    }
    for (h, why) in &outcome.rollback_failed {
        message.push_str(&format!("\n  rollback FAILED on {h}: {why}"));
    }
    Err(CliError::new(exit::FAILURE, message).with_hint(format!(
        "`ssh {}` and `windlass status` / `windlass logs` there show more",
        f.host
    )))
}

fn dry_run(plan: &Plan, json: bool) -> u8 {
    let steps = plan.steps();
    if json {
        for t in plan.hosts() {
            for (step, what) in &steps {
                let what = what.replace("PATH", &t.path);
                print_json(&Event::new(&t.name, step, "planned").detail(what));
            }
        }
        return exit::OK;
    }
    let mut out = String::from("deploy plan (dry run: no host contacted)\n");
    for r in &plan.releases {
        out.push_str(&format!(
            "  release  {} {}  ({})\n",
            r.app,
            r.id,
            r.dir.display()
        ));
    }
    for (i, b) in plan.batches.iter().enumerate() {
        let hosts: Vec<String> = b
            .iter()
            .map(|t| format!("{} ({}:{})", t.name, t.dest(), t.path))
            .collect();
        out.push_str(&format!("  batch {}  {}\n", i + 1, hosts.join(", ")));
    }
    out.push_str("  on each host, in order:\n");
    for (step, what) in &steps {
        out.push_str(&format!("    {step:15} {what}\n"));
    }
    out.push_str(
        "  on the first failure: stop after the batch, put every updated host back on its previous releases, exit 1\n",
    );
    print!("{}", output::sanitize_text(&out));
    exit::OK
}
