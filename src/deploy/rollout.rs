//! Runs a [`Plan`]: batch after batch, each host of a batch in its own thread, every step
//! reported as an [`Event`]. The first failure stops the rollout after the current batch
//! and puts every host that changed back: its previous config and `.env`, and each switched
//! app on its previous release (through the remote `windlass rollback`), so every host
//! serves what it served before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::plan::{Plan, Target};
use super::ssh::{Ran, Ssh, quote};
use super::{DeployError, Event};

/// The remote windlass, relative to the project directory (`cd PATH` starts every command).
const WL: &str = ".windlass/bin/windlass";
/// Deploy's own records on the host: `current`, the previous config and `.env`.
const DEPLOY_DIR: &str = ".windlass/deploy";
/// Lines of the failed app's output shown with the error.
const LOG_LINES: u32 = 20;

/// Why the rollout stopped.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub host: String,
    pub app: Option<String>,
    pub message: String,
    /// The last lines of the failed app's output on that host (sanitized by the printer).
    pub logs: String,
}

#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub failure: Option<Failure>,
    /// Hosts now serving the new releases.
    pub updated: Vec<String>,
    /// Hosts put back after the failure.
    pub rolled_back: Vec<String>,
    /// Hosts whose rollback itself failed (each with why).
    pub rollback_failed: Vec<(String, String)>,
}

type Report<'a> = &'a (dyn Fn(Event) + Sync);

/// What one host is and what this deploy changed on it.
struct Host<'p> {
    t: &'p Target,
    ssh: Ssh,
    connected: bool,
    rsync: bool,
    systemd: bool,
    running: bool,
    sha: Option<String>,
    remote_releases: Vec<String>,
    /// `current` before this deploy: app → release.
    prev: BTreeMap<String, String>,
    saved_config: bool,
    saved_env: bool,
    started: bool,
    switched: Vec<String>,
}

impl Host<'_> {
    fn remote(&self, script: &str) -> Result<Ran, String> {
        self.ssh
            .run(&format!("cd {} && {script}", quote(&self.t.path)))
            .map_err(|e| format!("cannot run ssh: {e}"))
    }

    fn remote_input(&self, script: &str, input: &[u8]) -> Result<Ran, String> {
        self.ssh
            .run_with_input(&format!("cd {} && {script}", quote(&self.t.path)), input)
            .map_err(|e| format!("cannot run ssh: {e}"))
    }

    fn abs(&self, rel: &str) -> String {
        format!("{}/{rel}", self.t.path.trim_end_matches('/'))
    }
}

fn fail(host: &Target, app: Option<&str>, message: impl Into<String>) -> Failure {
    Failure {
        host: host.name.clone(),
        app: app.map(str::to_owned),
        message: message.into(),
        logs: String::new(),
    }
}

/// A private directory for the ssh control sockets, removed on drop.
struct ControlDir(PathBuf);

impl ControlDir {
    fn new() -> Result<ControlDir, DeployError> {
        use std::os::unix::fs::DirBuilderExt;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("windlass-deploy-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| DeployError::Local(format!("cannot create {}: {e}", dir.display())))?;
        Ok(ControlDir(dir))
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn local_rsync() -> bool {
    Command::new("rsync")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the plan. `Err` only for local problems before any host changed; a host's failure
/// is in [`Outcome::failure`].
pub(crate) fn run(plan: &Plan, report: Report<'_>) -> Result<Outcome, DeployError> {
    let control = ControlDir::new()?;
    let rsync_here = local_rsync();
    let config = std::fs::read(&plan.config_file).map_err(|e| {
        DeployError::Local(format!("cannot read {}: {e}", plan.config_file.display()))
    })?;
    let env = match &plan.env_file {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| DeployError::Local(format!("cannot read {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let shared = Shared {
        plan,
        rsync_here,
        config: &config,
        env: env.as_deref(),
    };
    let mut outcome = Outcome::default();
    let mut done: Vec<Host> = Vec::new();
    let mut index = 0;
    for batch in &plan.batches {
        let hosts: Vec<Host> = batch
            .iter()
            .map(|t| {
                index += 1;
                Host {
                    t,
                    ssh: Ssh::new(t.dest(), plan.ssh_options.clone(), &control.0, index),
                    connected: false,
                    rsync: false,
                    systemd: false,
                    running: false,
                    sha: None,
                    remote_releases: Vec::new(),
                    prev: BTreeMap::new(),
                    saved_config: false,
                    saved_env: false,
                    started: false,
                    switched: Vec::new(),
                }
            })
            .collect();
        let results: Vec<(Host, Result<(), Failure>)> = std::thread::scope(|s| {
            let handles: Vec<_> = hosts
                .into_iter()
                .map(|mut h| {
                    let shared = &shared;
                    s.spawn(move || {
                        let r = shared.deploy(&mut h, report);
                        (h, r)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|j| j.join().expect("a host's deploy thread does not panic"))
                .collect()
        });
        for (h, r) in results {
            match r {
                Ok(()) => outcome.updated.push(h.t.name.clone()),
                Err(f) => {
                    if outcome.failure.is_none() {
                        outcome.failure = Some(f);
                    }
                }
            }
            done.push(h);
        }
        if outcome.failure.is_some() {
            break;
        }
    }
    if outcome.failure.is_some() {
        for h in done.iter_mut().rev() {
            if !(h.saved_config || h.saved_env || h.started || !h.switched.is_empty()) {
                continue;
            }
            match rollback(h, &shared, report) {
                Ok(()) => outcome.rolled_back.push(h.t.name.clone()),
                Err(why) => outcome.rollback_failed.push((h.t.name.clone(), why)),
            }
        }
        outcome.updated.clear();
    }
    for h in &done {
        if h.connected {
            h.ssh.close();
        }
    }
    let mut end = Event::new(
        "",
        "deploy",
        if outcome.failure.is_some() {
            "failed"
        } else {
            "ok"
        },
    );
    if let Some(f) = &outcome.failure {
        end = end.detail(format!("{}: {}", f.host, f.message));
    }
    report(end);
    Ok(outcome)
}

struct Shared<'a> {
    plan: &'a Plan,
    rsync_here: bool,
    config: &'a [u8],
    env: Option<&'a [u8]>,
}

impl Shared<'_> {
    fn deploy(&self, h: &mut Host<'_>, report: Report<'_>) -> Result<(), Failure> {
        let name = h.t.name.clone();
        let step = |e: Event| report(e);
        let check = |r: Result<Ran, String>, what: &str| -> Result<Ran, String> {
            let ran = r?;
            if ran.ok {
                Ok(ran)
            } else {
                Err(format!("{what} failed on {}: {}", h.t.name, ran.output()))
            }
        };

        // connect
        if let Err(why) = h.ssh.connect() {
            step(Event::new(&name, "connect", "failed").detail(why.clone()));
            return Err(fail(h.t, None, why));
        }
        h.connected = true;
        step(Event::new(&name, "connect", "ok").detail(h.ssh.dest.clone()));

        // probe (and with --setup, make the layout)
        let mkdir = if self.plan.setup {
            format!(
                "mkdir -p {p}/.windlass/bin {p}/.windlass/releases {p}/{DEPLOY_DIR} && ",
                p = quote(&h.t.path)
            )
        } else {
            String::new()
        };
        let probe = format!(
            "{mkdir}command -v rsync >/dev/null 2>&1 && echo rsync=1; \
             [ -d /run/systemd/system ] && echo systemd=1; \
             cd {p} 2>/dev/null || exit 0; echo dir=1; \
             if [ -x {WL} ]; then if [ -f {WL}.sha256 ] && [ {WL}.sha256 -nt {WL} ]; then echo sha=$(cat {WL}.sha256); else echo sha=$(sha256sum {WL} | cut -d' ' -f1); fi; fi; \
             [ -x {WL} ] && [ -S .windlass/control.sock ] && {WL} status >/dev/null 2>&1 && echo running=1; \
             [ -f {DEPLOY_DIR}/current ] && sed 's/^/current=/' {DEPLOY_DIR}/current; \
             for d in .windlass/releases/*/; do [ -f \"$d\"release.json ] && echo release=$(basename \"$d\"); done; true",
            p = quote(&h.t.path)
        );
        let ran = match h.ssh.run(&probe) {
            Ok(r) if r.ok => r,
            Ok(r) => {
                let why = format!("probing {} failed: {}", h.t.name, r.output());
                step(Event::new(&name, "probe", "failed").detail(why.clone()));
                return Err(fail(h.t, None, why));
            }
            Err(e) => return Err(fail(h.t, None, format!("cannot run ssh: {e}"))),
        };
        let mut dir = false;
        for line in ran.stdout.lines() {
            match line.split_once('=') {
                Some(("rsync", _)) => h.rsync = true,
                Some(("systemd", _)) => h.systemd = true,
                Some(("dir", _)) => dir = true,
                Some(("running", _)) => h.running = true,
                Some(("sha", s)) if !s.is_empty() => h.sha = Some(s.to_owned()),
                Some(("release", r)) => h.remote_releases.push(r.to_owned()),
                Some(("current", c)) => {
                    if let Some((app, id)) = c.split_once(' ') {
                        h.prev.insert(app.to_owned(), id.trim().to_owned());
                    }
                }
                _ => {}
            }
        }
        h.remote_releases.sort();
        let transport = if self.rsync_here && h.rsync {
            "rsync"
        } else {
            "tar over ssh"
        };
        if !dir {
            let why = format!("{} does not exist on {}", h.t.path, h.t.name);
            step(Event::new(&name, "probe", "failed").detail(why.clone()));
            let mut f = fail(h.t, None, why);
            f.message
                .push_str(" (first contact: run `windlass deploy --setup`)");
            return Err(f);
        }
        if !h.running && !self.plan.setup {
            let why = format!(
                "no windlass supervisor runs in {} on {}",
                h.t.path, h.t.name
            );
            step(Event::new(&name, "probe", "failed").detail(why.clone()));
            let mut f = fail(h.t, None, why);
            f.message.push_str(" (`windlass deploy --setup` starts it)");
            return Err(f);
        }
        step(Event::new(&name, "probe", "ok").detail(format!(
            "transport {transport}; supervisor {}; {} release(s) there",
            if h.running { "running" } else { "not running" },
            h.remote_releases.len()
        )));
        let send = |h: &Host, src: &Path, rel: &str, link: &[String]| -> Result<u64, String> {
            if self.rsync_here && h.rsync {
                h.ssh.rsync(src, &h.abs(rel), link)
            } else {
                h.ssh.tar(src, &h.abs(rel))
            }
        };

        // the windlass binary
        if h.sha.as_deref() == Some(self.plan.binary_sha256.as_str()) {
            step(
                Event::new(&name, "upload-binary", "skipped")
                    .detail("the host's windlass is the same (sha256)"),
            );
        } else {
            // The hash is kept beside the binary so the next probe need not read it again
            // (it is recomputed when the binary is newer than the hash file).
            let sent = check(
                h.remote(&format!("rm -f {WL}.sha256")),
                "removing the old hash",
            )
            .and_then(|_| send(h, &self.plan.binary, WL, &[]))
            .and_then(|n| {
                check(
                    h.remote(&format!(
                        "echo {} > {WL}.sha256",
                        quote(&self.plan.binary_sha256)
                    )),
                    "recording the binary's sha256",
                )
                .map(|_| n)
            });
            match sent {
                Ok(n) => step(Event::new(&name, "upload-binary", "ok").bytes(n)),
                Err(why) => {
                    step(Event::new(&name, "upload-binary", "failed").detail(why.clone()));
                    return Err(fail(h.t, None, why));
                }
            }
        }

        // releases
        for r in &self.plan.releases {
            if h.remote_releases.contains(&r.id) {
                step(
                    Event::new(&name, "upload-release", "skipped")
                        .app(&r.app, &r.id)
                        .detail("already on the host"),
                );
                continue;
            }
            let partial = format!(".windlass/releases/.{}.partial", r.id);
            // Unchanged files are hard-linked from the newest releases already there.
            let link: Vec<String> = h
                .remote_releases
                .iter()
                .rev()
                .take(5)
                .map(|id| format!("../{id}"))
                .collect();
            if !(self.rsync_here && h.rsync) {
                let _ = h.remote(&format!("rm -rf {}", quote(&partial)));
            }
            let sent = send(h, &r.dir, &partial, &link).and_then(|n| {
                check(
                    h.remote(&format!(
                        "mv -T {} {}",
                        quote(&partial),
                        quote(&format!(".windlass/releases/{}", r.id))
                    )),
                    "moving the release into place",
                )
                .map(|_| n)
            });
            match sent {
                Ok(n) => {
                    h.remote_releases.push(r.id.clone());
                    step(
                        Event::new(&name, "upload-release", "ok")
                            .app(&r.app, &r.id)
                            .bytes(n),
                    );
                }
                Err(why) => {
                    step(
                        Event::new(&name, "upload-release", "failed")
                            .app(&r.app, &r.id)
                            .detail(why.clone()),
                    );
                    return Err(fail(h.t, Some(&r.app), why));
                }
            }
        }

        // config (the previous one kept for a rollback)
        let cfg = quote(&self.plan.config_name());
        let script = format!(
            "mkdir -p {DEPLOY_DIR} && {{ [ ! -f {cfg} ] || cp -p {cfg} {DEPLOY_DIR}/config.prev; }} && cat > {DEPLOY_DIR}/config.new && mv -f {DEPLOY_DIR}/config.new {cfg}"
        );
        h.saved_config = true;
        match check(h.remote_input(&script, self.config), "uploading the config") {
            Ok(_) => step(Event::new(&name, "upload-config", "ok").bytes(self.config.len() as u64)),
            Err(why) => {
                step(Event::new(&name, "upload-config", "failed").detail(why.clone()));
                return Err(fail(h.t, None, why));
            }
        }

        // the env file: on stdin, never on a command line; 0600 from its creation
        if let Some(env) = self.env {
            let script = format!(
                "umask 077 && {{ [ ! -f .env ] || cp -p .env {DEPLOY_DIR}/env.prev; }} && cat > {DEPLOY_DIR}/env.new && chmod 600 {DEPLOY_DIR}/env.new && mv -f {DEPLOY_DIR}/env.new .env"
            );
            h.saved_env = true;
            match check(h.remote_input(&script, env), "uploading the env file") {
                Ok(_) => step(Event::new(&name, "upload-env", "ok").detail("PATH/.env, mode 0600")),
                Err(why) => {
                    step(Event::new(&name, "upload-env", "failed").detail(why.clone()));
                    return Err(fail(h.t, None, why));
                }
            }
        }

        // first contact: start the supervisor
        if !h.running {
            let script = if h.systemd {
                format!(
                    "d=$(mktemp -d) && if [ \"$(id -u)\" = 0 ]; then {WL} export systemd -o \"$d\" >/dev/null && f=$(ls \"$d\"/*.service) && cp \"$f\" /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now \"$(basename \"$f\")\"; \
                     else mkdir -p ~/.config/systemd/user && {WL} export systemd --user -o \"$d\" >/dev/null && f=$(ls \"$d\"/*.service) && cp \"$f\" ~/.config/systemd/user/ && systemctl --user daemon-reload && systemctl --user enable --now \"$(basename \"$f\")\"; fi; r=$?; rm -rf \"$d\"; exit $r"
                )
            } else {
                format!("{WL} up -d")
            };
            h.started = true;
            match check(h.remote(&script), "starting the supervisor") {
                Ok(_) => step(Event::new(&name, "start", "ok").detail(if h.systemd {
                    "systemd unit enabled and started"
                } else {
                    "windlass up -d"
                })),
                Err(why) => {
                    step(Event::new(&name, "start", "failed").detail(why.clone()));
                    let mut f = fail(h.t, None, why);
                    f.logs = last_lines(h, None);
                    return Err(f);
                }
            }
        }

        // switch, app by app, each health-gated by the remote windlass
        for r in &self.plan.releases {
            let ran = h.remote(&format!("{WL} rollback {} {}", quote(&r.app), quote(&r.id)));
            match ran {
                Ok(ran) if ran.ok => {
                    h.switched.push(r.app.clone());
                    step(Event::new(&name, "switch", "ok").app(&r.app, &r.id));
                }
                Ok(ran) => {
                    let why = format!(
                        "app `{}` did not switch to release {}: {}",
                        r.app,
                        r.id,
                        ran.output()
                    );
                    step(
                        Event::new(&name, "switch", "failed")
                            .app(&r.app, &r.id)
                            .detail(why.clone()),
                    );
                    let mut f = fail(h.t, Some(&r.app), why);
                    f.logs = last_lines(h, Some(&r.app));
                    step(
                        Event::new(&name, "logs", "ok")
                            .app(&r.app, &r.id)
                            .detail(f.logs.clone()),
                    );
                    return Err(f);
                }
                Err(why) => return Err(fail(h.t, Some(&r.app), why)),
            }
        }

        // what the host now runs, for the next deploy's rollback
        let current: String = self
            .plan
            .releases
            .iter()
            .map(|r| format!("{} {}\n", r.app, r.id))
            .collect();
        match check(
            h.remote_input(&record_script(), current.as_bytes()),
            "recording the release",
        ) {
            Ok(_) => {
                step(Event::new(&name, "healthy", "ok").detail("every app serves its new release"));
                Ok(())
            }
            Err(why) => {
                step(Event::new(&name, "healthy", "failed").detail(why.clone()));
                Err(fail(h.t, None, why))
            }
        }
    }
}

fn record_script() -> String {
    format!(
        "mkdir -p {DEPLOY_DIR} && cat > {DEPLOY_DIR}/current.new && mv -f {DEPLOY_DIR}/current.new {DEPLOY_DIR}/current"
    )
}

/// The last lines of an app's output on the host (every app's when `app` is `None`).
fn last_lines(h: &Host<'_>, app: Option<&str>) -> String {
    let cmd = match app {
        Some(a) => format!("{WL} logs {} -n {LOG_LINES} 2>&1", quote(a)),
        None => {
            format!("{WL} logs -n {LOG_LINES} 2>&1 || tail -n {LOG_LINES} .windlass/windlass.log")
        }
    };
    h.remote(&cmd).map(|r| r.stdout).unwrap_or_default()
}

/// Puts one host back as it was before this deploy.
fn rollback(h: &mut Host<'_>, s: &Shared<'_>, report: Report<'_>) -> Result<(), String> {
    let name = h.t.name.clone();
    let cfg = quote(&s.plan.config_name());
    let mut restore = Vec::new();
    if h.saved_config {
        restore.push(format!(
            "{{ [ ! -f {DEPLOY_DIR}/config.prev ] || cp -p {DEPLOY_DIR}/config.prev {cfg}; }}"
        ));
    }
    if h.saved_env {
        restore.push(format!(
            "{{ [ ! -f {DEPLOY_DIR}/env.prev ] || cp -p {DEPLOY_DIR}/env.prev .env; }}"
        ));
    }
    if !restore.is_empty()
        && let Err(why) = h
            .remote(&restore.join(" && "))
            .and_then(|r| if r.ok { Ok(()) } else { Err(r.output()) })
    {
        report(Event::new(&name, "rollback", "failed").detail(why.clone()));
        return Err(why);
    }
    let mut errors = Vec::new();
    let switched = std::mem::take(&mut h.switched);
    for app in switched.iter().rev() {
        match h.prev.get(app) {
            Some(id) => {
                let r = h.remote(&format!("{WL} rollback {} {}", quote(app), quote(id)));
                match r {
                    Ok(r) if r.ok => report(Event::new(&name, "rollback", "ok").app(app, id)),
                    Ok(r) => {
                        let why = format!("app `{app}` back to {id}: {}", r.output());
                        report(
                            Event::new(&name, "rollback", "failed")
                                .app(app, id)
                                .detail(why.clone()),
                        );
                        errors.push(why);
                    }
                    Err(why) => errors.push(why),
                }
            }
            None if h.started => {}
            None => report(Event::new(&name, "rollback", "skipped").detail(format!(
                "app `{app}` had no earlier deployed release on this host"
            ))),
        }
    }
    if h.started {
        // Nothing ran here before this deploy: stop what it started.
        let r = h.remote(&format!("{WL} down"));
        match r {
            Ok(r) if r.ok => report(
                Event::new(&name, "rollback", "ok")
                    .detail("stopped the supervisor this deploy started"),
            ),
            Ok(r) => errors.push(r.output()),
            Err(why) => errors.push(why),
        }
    } else {
        let prev: String = h.prev.iter().map(|(a, id)| format!("{a} {id}\n")).collect();
        if let Ok(r) = h.remote_input(&record_script(), prev.as_bytes())
            && !r.ok
        {
            errors.push(r.output());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}
