//! Turns the raw TOML form into the resolved [`Config`], collecting every error.
//!
//! Parse errors (syntax, unknown keys, bad values) stop at the first one, as the TOML parser
//! does; all cross-field and on-disk checks then run to completion so the user sees every
//! remaining problem at once. Nothing here has side effects beyond reading files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawApp, RawCommand, RawConfig, RawLogs, ReloadStrategy, RestartPolicy};
use super::{
    AdminConfig, AppConfig, BackoffConfig, Config, ConfigError, Diagnostic, HealthConfig,
    LispConfig, LogsConfig, ReleaseSel, Source, StopConfig, did_you_mean, envfile, envvars,
    valid_app_name, valid_env_name,
};
use super::{KEEP_RELEASES, ReleaseConfig};
use crate::layout::Layout;
use crate::lisp::launcher::{self, LispApp, SourceOptions};

struct Ctx<'a> {
    file: &'a Path,
    text: &'a str,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn error(&mut self, span: Option<Range<usize>>, msg: impl Into<String>, help: Option<String>) {
        self.diags
            .push(Diagnostic::at(self.file, self.text, span, msg, help));
    }
}

pub(super) fn from_toml(file: &Path, root: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let (message, help) = explain(e.message());
        ConfigError::Invalid(vec![Diagnostic::at(file, text, e.span(), message, help)])
    })?;
    let mut cx = Ctx {
        file,
        text,
        diags: Vec::new(),
    };
    let defaults_logs = resolve_logs(None, raw.logs);

    let mut apps: Vec<(usize, AppConfig)> = Vec::new();
    let mut ports: BTreeMap<u16, String> = BTreeMap::new();
    for (name, spanned) in &raw.app {
        let span = spanned.span();
        if !valid_app_name(name) {
            cx.error(
                Some(span.clone()),
                format!("invalid app name `{name}`"),
                Some("use letters, digits, `-` and `_` only (the name becomes a file name)".into()),
            );
            continue;
        }
        if let Some(raw_port) = &spanned.get_ref().port {
            let port = *raw_port.get_ref();
            if let Some(other) = ports.insert(port, name.clone()) {
                cx.error(
                    Some(raw_port.span()),
                    format!("port {port} is used by both app `{other}` and app `{name}`"),
                    Some("each app needs its own public port".into()),
                );
            }
        }
        if let Some(app) = resolve_app(
            &mut cx,
            root,
            name,
            spanned.get_ref(),
            span.clone(),
            defaults_logs,
        ) {
            apps.push((span.start, app));
        }
    }
    check_across_apps(&mut cx, &raw, &ports, &apps);
    if raw.app.is_empty() {
        cx.error(
            None,
            "the config defines no app",
            Some("add an app, for example:\n\n    [app.web]\n    command = [\"python3\", \"app.py\"]\n    port = 8080\n".into()),
        );
    }

    let admin = resolve_admin(&mut cx, raw.admin.as_ref());
    let mut deploy_errors = Vec::new();
    let deploy = super::deploy::resolve(root, raw.deploy.as_ref(), &mut deploy_errors);
    for (span, msg, help) in deploy_errors {
        cx.error(span, msg, help);
    }

    if !cx.diags.is_empty() {
        return Err(ConfigError::Invalid(cx.diags));
    }
    apps.sort_by_key(|(start, _)| *start);
    Ok(Config {
        file: file.to_path_buf(),
        root: root.to_path_buf(),
        source: Source::Toml,
        apps: apps.into_iter().map(|(_, a)| a).collect(),
        admin,
        deploy,
    })
}

fn resolve_logs(base: Option<LogsConfig>, raw: Option<RawLogs>) -> LogsConfig {
    let base = base.unwrap_or_default();
    match raw {
        None => base,
        Some(r) => LogsConfig {
            max_size: r.max_size.map_or(base.max_size, |s| s.0.max(1024)),
            keep: r.keep.map_or(base.keep, |k| k.0),
        },
    }
}

fn resolve_app(
    cx: &mut Ctx<'_>,
    root: &Path,
    name: &str,
    raw: &RawApp,
    span: Range<usize>,
    default_logs: LogsConfig,
) -> Option<AppConfig> {
    let before = cx.diags.len();
    let shell = raw.shell.unwrap_or(false);
    let argv = match &raw.command {
        None if raw.lisp.is_some() => Vec::new(),
        Some(_) if raw.lisp.is_some() => {
            let lspan = raw.lisp.as_ref().map(|l| l.span());
            cx.error(
                lspan,
                format!("app `{name}` has both `command` and `lisp`"),
                Some("keep one: `lisp = { system, entry }` runs an ASDF system with windlass's Lisp runtime, `command` runs any program".into()),
            );
            Vec::new()
        }
        None => {
            cx.error(
                Some(span.clone()),
                format!("app `{name}` has no `command` (and no `lisp`)"),
                Some(
                    "add the command that starts it, e.g. command = [\"python3\", \"app.py\"], or for a Common Lisp app lisp = { system = \"my-app\", entry = \"my-app:main\" }"
                        .into(),
                ),
            );
            Vec::new()
        }
        Some(cmd) => {
            let cspan = cmd.span();
            let argv = match (cmd.get_ref(), shell) {
                (RawCommand::Line(line), true) => {
                    if line.trim().is_empty() {
                        cx.error(Some(cspan.clone()), "`command` is empty", None);
                    }
                    vec!["/bin/sh".into(), "-c".into(), line.clone()]
                }
                (RawCommand::Argv(_), true) => {
                    cx.error(
                        Some(cspan.clone()),
                        "`shell = true` needs `command` as one string",
                        Some("write the command line as a string, e.g. command = \"./run.sh | tee out.log\"".into()),
                    );
                    Vec::new()
                }
                (RawCommand::Line(line), false) => match shlex::split(line) {
                    Some(v) if !v.is_empty() => v,
                    Some(_) => {
                        cx.error(Some(cspan.clone()), "`command` is empty", None);
                        Vec::new()
                    }
                    None => {
                        cx.error(
                            Some(cspan.clone()),
                            "`command` has an unterminated quote or a trailing backslash",
                            Some(
                                "write it as an argv array, e.g. [\"python3\", \"app.py\"]".into(),
                            ),
                        );
                        Vec::new()
                    }
                },
                (RawCommand::Argv(v), false) => {
                    if v.is_empty() || v[0].is_empty() {
                        cx.error(Some(cspan.clone()), "`command` is empty", None);
                    }
                    v.clone()
                }
            };
            if argv.iter().any(|a| a.contains('\0')) {
                cx.error(
                    Some(cspan),
                    "`command` holds a NUL byte (`\\u0000`), which no program argument can carry",
                    Some("remove it".into()),
                );
            }
            argv
        }
    };

    let cwd = match &raw.cwd {
        None => root.to_path_buf(),
        Some(c) => {
            let p = root.join(c.get_ref());
            if !p.is_dir() {
                cx.error(
                    Some(c.span()),
                    format!("`cwd` {} is not a directory", p.display()),
                    Some("paths are relative to the config file's directory".into()),
                );
            }
            p
        }
    };

    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(ef) = &raw.env_file {
        let p: PathBuf = root.join(ef.get_ref());
        match envfile::read(&p) {
            Ok(vars) => env.extend(vars),
            Err(e @ envfile::EnvFileError::Read { .. }) => cx.error(
                Some(ef.span()),
                format!("cannot use env_file: {e}"),
                Some("create the file, or remove `env_file`".into()),
            ),
            Err(e @ envfile::EnvFileError::Line { .. }) => cx.error(
                Some(ef.span()),
                format!("cannot use env_file: {e}"),
                Some("write one KEY=VALUE per line (`#` starts a comment)".into()),
            ),
        }
    }
    for (k, v) in &raw.env {
        if !valid_env_name(k) {
            cx.error(
                Some(span.clone()),
                format!("invalid environment variable name `{k}` in app `{name}`"),
                Some("use letters, digits and `_`, not starting with a digit".into()),
            );
        }
        env.retain(|(ek, _)| ek != k);
        env.push((k.clone(), v.0.clone()));
    }

    let port = raw.port.as_ref().and_then(|p| {
        if *p.get_ref() == 0 {
            cx.error(
                Some(p.span()),
                "`port` cannot be 0",
                Some("pick the public port the app is reached on, e.g. 8080".into()),
            );
            None
        } else {
            Some(*p.get_ref())
        }
    });
    let bind = match &raw.bind {
        None => std::net::IpAddr::from([0, 0, 0, 0]),
        Some(b) => b.get_ref().parse().unwrap_or_else(|_| {
            cx.error(
                Some(b.span()),
                format!("invalid `bind` address `{}`", b.get_ref()),
                Some("write an IP address, like \"127.0.0.1\" or \"0.0.0.0\"".into()),
            );
            std::net::IpAddr::from([0, 0, 0, 0])
        }),
    };
    let port_env = match &raw.port_env {
        None => envvars::PORT.to_owned(),
        Some(p) => {
            if !valid_env_name(p.get_ref()) {
                cx.error(
                    Some(p.span()),
                    format!("invalid `port_env` `{}`", p.get_ref()),
                    Some("use a variable name such as PORT or PROJECT_PORT".into()),
                );
            }
            p.get_ref().clone()
        }
    };
    let instances = match &raw.instances {
        None => 1,
        Some(i) => {
            let n = *i.get_ref();
            if n == 0 || n > 256 {
                cx.error(
                    Some(i.span()),
                    format!("`instances` must be between 1 and 256, not {n}"),
                    None,
                );
            }
            n.max(1)
        }
    };

    let d = BackoffConfig::default();
    let backoff = match raw.backoff {
        None => d,
        Some(b) => BackoffConfig {
            initial: b.initial.map_or(d.initial, |x| x.0),
            max: b.max.map_or(d.max, |x| x.0),
            reset_after: b.reset_after.map_or(d.reset_after, |x| x.0),
            crashloop_after: b.crashloop_after.unwrap_or(d.crashloop_after).max(1),
        },
    };
    if backoff.max < backoff.initial {
        cx.error(
            Some(span.clone()),
            format!("app `{name}`: `backoff.max` is shorter than `backoff.initial`"),
            None,
        );
    }
    let sd = StopConfig::default();
    let stop = match raw.stop {
        None => sd,
        Some(s) => StopConfig {
            signal: s.signal.map_or(sd.signal, |x| x.0),
            timeout: s.timeout.map_or(sd.timeout, |x| x.0),
        },
    };
    let hd = HealthConfig::default();
    let health = match &raw.health {
        None => hd,
        Some(h) => {
            if let Some(p) = &h.path {
                if !p.starts_with('/') {
                    cx.error(
                        Some(span.clone()),
                        format!("app `{name}`: `health.path` must start with `/`, not `{p}`"),
                        None,
                    );
                }
            }
            HealthConfig {
                path: h.path.clone(),
                interval: h.interval.map_or(hd.interval, |x| x.0),
                timeout: h.timeout.map_or(hd.timeout, |x| x.0),
                start_timeout: h.start_timeout.map_or(hd.start_timeout, |x| x.0),
            }
        }
    };
    let reload = raw.reload.unwrap_or(if port.is_some() {
        ReloadStrategy::BlueGreen
    } else {
        ReloadStrategy::Restart
    });

    let watch = match &raw.watch {
        None => Vec::new(),
        Some(w) => {
            if let Err(e) = crate::watch::compile(w.get_ref()) {
                cx.error(
                    Some(w.span()),
                    e.to_string(),
                    Some(
                        "globs are relative to the config's directory, like \"src/**/*.lisp\""
                            .into(),
                    ),
                );
            }
            w.get_ref().clone()
        }
    };
    // The proxy's own type, from its defaults: each setting written in the config
    // replaces its default, and nothing else is copied.
    let mut proxy = crate::proxy::ProxyConfig {
        instances,
        ..crate::proxy::ProxyConfig::default()
    };
    if let Some(p) = raw.proxy.clone() {
        let set = |slot: &mut Duration, v: Option<Duration>| {
            if let Some(v) = v {
                *slot = v;
            }
        };
        set(&mut proxy.hold, p.hold.map(|x| x.0));
        set(&mut proxy.connect_timeout, p.connect_timeout.map(|x| x.0));
        set(&mut proxy.response_timeout, p.response_timeout.map(|x| x.0));
        set(&mut proxy.idle_timeout, p.idle_timeout.map(|x| x.0));
        set(&mut proxy.header_timeout, p.header_timeout.map(|x| x.0));
        set(&mut proxy.body_timeout, p.body_timeout.map(|x| x.0));
        if let Some(on) = p.plain_path {
            proxy.plain_path = on;
        }
        proxy.max_connections = p.max_connections.as_ref().and_then(|m| {
            let n = *m.get_ref();
            match usize::try_from(n) {
                Ok(n) if (1..=MAX_CONNECTIONS_CAP).contains(&n) => Some(n),
                _ => {
                    cx.error(
                        Some(m.span()),
                        format!(
                            "`proxy.max_connections` must be between 1 and {MAX_CONNECTIONS_CAP}, not {n}"
                        ),
                        Some(
                            "leave it out to derive it from the open-files limit (see docs/configuration.md)"
                                .into(),
                        ),
                    );
                    None
                }
            }
        });
        proxy.trusted_proxies = p
            .trusted_proxies
            .unwrap_or_default()
            .into_iter()
            .filter_map(|net| match net.get_ref().parse() {
                Ok(range) => Some(range),
                Err(e) => {
                    cx.error(Some(net.span()), e, None);
                    None
                }
            })
            .collect();
    }
    if reload == ReloadStrategy::BlueGreen && port.is_none() && raw.reload.is_some() {
        cx.error(
            Some(span.clone()),
            format!("app `{name}` uses reload = \"blue-green\" but has no `port`"),
            Some("blue-green needs the proxy: set `port`, or use reload = \"restart\"".into()),
        );
    }

    let health = match &raw.health {
        // A cold compile of a Lisp system and its dependencies takes 16-60 s on 2 cores.
        Some(h) if h.start_timeout.is_some() => health,
        _ if raw.lisp.is_some() => HealthConfig {
            start_timeout: LISP_START_TIMEOUT,
            ..health
        },
        _ => health,
    };
    let console = raw.console.unwrap_or(raw.lisp.is_some());
    let releases = resolve_releases(cx, root, name, raw);
    let mut argv = argv;
    let lisp = resolve_lisp(
        cx,
        root,
        name,
        raw,
        LispCtx {
            cwd: &cwd,
            env: &mut env,
            stop: &stop,
            console,
            shell,
            release: releases.sel.is_some(),
        },
    )
    .map(|(lisp, lisp_argv)| {
        if let Some(a) = lisp_argv {
            argv = a;
        }
        lisp
    });

    if cx.diags.len() > before {
        return None;
    }
    Some(AppConfig {
        name: name.to_owned(),
        argv,
        shell,
        cwd,
        env,
        env_file: raw.env_file.as_ref().map(|ef| root.join(ef.get_ref())),
        port,
        bind,
        port_env,
        instances,
        restart: raw.restart.unwrap_or(RestartPolicy::Always),
        backoff,
        stop,
        health,
        reload,
        reload_signal: raw.reload_signal.map(|s| s.0),
        watch,
        proxy,
        console,
        logs: resolve_logs(Some(default_logs), raw.logs),
        autostart: raw.autostart.unwrap_or(true),
        lisp,
        releases,
    })
}

/// The largest `proxy.max_connections` (far above any open-files limit).
const MAX_CONNECTIONS_CAP: usize = 16 * 1024 * 1024;

/// Default `health.start_timeout` of a Lisp app: a cold compile is slow.
const LISP_START_TIMEOUT: Duration = Duration::from_secs(120);

/// What [`resolve_lisp`] needs of the app resolved so far.
struct LispCtx<'a> {
    cwd: &'a Path,
    env: &'a mut Vec<(String, String)>,
    stop: &'a StopConfig,
    console: bool,
    shell: bool,
    /// The app runs built releases (`release` is set).
    release: bool,
}

/// Resolves `release`, `keep_releases`, `build` and `shared` (every app).
fn resolve_releases(cx: &mut Ctx<'_>, root: &Path, name: &str, raw: &RawApp) -> ReleaseConfig {
    let sel = raw.release.as_ref().and_then(|r| {
        let v = r.get_ref().trim();
        if v == "latest" {
            Some(ReleaseSel::Latest)
        } else if super::valid_release_id(v) {
            Some(ReleaseSel::Id(v.to_owned()))
        } else {
            cx.error(
                Some(r.span()),
                format!("invalid `release` `{v}`"),
                Some("write \"latest\" (the newest `windlass build`) or a release id from `windlass releases`".into()),
            );
            None
        }
    });
    let keep_releases = match &raw.keep_releases {
        Some(k) if *k.get_ref() == 0 => {
            cx.error(Some(k.span()), "`keep_releases` must be at least 1", None);
            KEEP_RELEASES
        }
        Some(k) if *k.get_ref() > super::raw::MAX_KEEP => {
            cx.error(
                Some(k.span()),
                format!(
                    "`keep_releases` is too large: the maximum is {}",
                    super::raw::MAX_KEEP
                ),
                Some("keep fewer releases; older ones can be rebuilt from git".into()),
            );
            KEEP_RELEASES
        }
        Some(k) => *k.get_ref(),
        None => KEEP_RELEASES,
    };
    let build = raw.build.as_ref().map(|b| {
        if b.get_ref().iter().any(|l| l.trim().is_empty()) {
            cx.error(
                Some(b.span()),
                "`build` has an empty command",
                Some(
                    "write one shell line per step, e.g. build = [\"npm ci\", \"npm run build\"]"
                        .into(),
                ),
            );
        }
        b.get_ref().clone()
    });
    let mut shared = Vec::new();
    if let Some(sh) = &raw.shared {
        for d in sh.get_ref() {
            let p = Path::new(d);
            let ok = !d.is_empty()
                && p.is_relative()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if ok {
                shared.push(d.clone());
            } else {
                cx.error(
                    Some(sh.span()),
                    format!("`shared` entry `{d}` is not a plain relative path"),
                    Some(
                        "name directories inside the release, e.g. shared = [\"uploads\", \"log\"]"
                            .into(),
                    ),
                );
            }
        }
    }
    let layout = Layout::of_root(root);
    ReleaseConfig {
        sel,
        dir: layout.releases_dir(),
        shared_dir: layout.shared_dir(name),
        keep: keep_releases,
        build,
        shared,
    }
}

/// Checks that need every app resolved: swank ports (one per instance) must not collide
/// with public ports or each other, and a Lisp app on a console must not stop on SIGINT
/// (in the REPL it only aborts the current form, so every stop would end in SIGKILL).
fn check_across_apps(
    cx: &mut Ctx<'_>,
    raw: &RawConfig,
    ports: &BTreeMap<u16, String>,
    apps: &[(usize, AppConfig)],
) {
    let mut taken: BTreeMap<u32, String> = ports
        .iter()
        .map(|(p, app)| (u32::from(*p), format!("the port of app `{app}`")))
        .collect();
    for (_, app) in apps {
        let Some(raw_app) = raw.app.get(&app.name) else {
            continue;
        };
        if let (Some(lisp), Some(span)) = (&app.lisp, raw_app.get_ref().swank_port.as_ref()) {
            for i in 0..app.instances {
                let Some(base) = lisp.swank_port else { break };
                let port = u32::from(base) + i;
                let what = format!("the swank port of app `{}` instance {i}", app.name);
                if port > u32::from(u16::MAX) {
                    cx.error(
                        Some(span.span()),
                        format!("{what} would be {port}, past 65535"),
                        Some("instance i uses swank_port + i: pick a lower swank_port".into()),
                    );
                    break;
                }
                if let Some(other) = taken.insert(port, what.clone()) {
                    cx.error(
                        Some(span.span()),
                        format!("port {port} is both {other} and {what}"),
                        Some(
                            "instance i uses swank_port + i: pick a swank_port whose range is free"
                                .into(),
                        ),
                    );
                }
            }
        }
        if app.lisp.is_some() && app.console && app.stop.signal == nix::sys::signal::Signal::SIGINT
        {
            cx.error(
                Some(raw_app.span()),
                format!(
                    "app `{}` is a Lisp app on a console: stop.signal = \"SIGINT\" only aborts the REPL's current form, so every stop would end in SIGKILL",
                    app.name
                ),
                Some("leave stop.signal at SIGTERM (windlass's Lisp runtime stops the server cleanly on it), or set console = false".into()),
            );
        }
    }
}

/// Resolves `lisp`, `swank_port` and `reload_eval` (in release mode when `release` is set). Returns the
/// Lisp config and, in source mode, the argv (the runtime's environment goes into `env`,
/// before the user's own, which wins).
fn resolve_lisp(
    cx: &mut Ctx<'_>,
    root: &Path,
    name: &str,
    raw: &RawApp,
    lc: LispCtx<'_>,
) -> Option<(LispConfig, Option<Vec<String>>)> {
    let only_lisp = |cx: &mut Ctx<'_>, span: Range<usize>, key: &str| {
        cx.error(
            Some(span),
            format!("`{key}` is only for Common Lisp apps, and app `{name}` has no `lisp`"),
            Some(
                "add lisp = { system = \"my-app\", entry = \"my-app:main\" }, or remove the key"
                    .into(),
            ),
        );
    };
    let Some(rl) = &raw.lisp else {
        for (key, span) in [
            ("swank_port", raw.swank_port.as_ref().map(|s| s.span())),
            ("reload_eval", raw.reload_eval.as_ref().map(|s| s.span())),
        ] {
            if let Some(span) = span {
                only_lisp(cx, span, key);
            }
        }
        return None;
    };
    let lspan = rl.span();
    let r = rl.get_ref();
    let app = match LispApp::new(r.system.clone(), r.entry.clone()) {
        Ok(a) => a,
        Err(e) => {
            cx.error(
                Some(lspan),
                format!("app `{name}`: {e}"),
                Some(
                    "for example lisp = { system = \"hello-lisp\", entry = \"hello-lisp:main\" }"
                        .into(),
                ),
            );
            return None;
        }
    };
    if lc.shell {
        cx.error(
            Some(lspan.clone()),
            format!("app `{name}` has `lisp` and `shell = true`"),
            Some("remove `shell`: a Lisp app runs SBCL directly".into()),
        );
    }
    let swank_port = match &raw.swank_port {
        Some(p) if *p.get_ref() == 0 => {
            cx.error(
                Some(p.span()),
                "`swank_port` cannot be 0",
                Some("pick a fixed port such as 4005: `windlass repl` finds swank through it (instance i uses swank_port + i)".into()),
            );
            None
        }
        Some(p) => Some(*p.get_ref()),
        None => None,
    };
    let reload_eval = match &raw.reload_eval {
        Some(f) => {
            if crate::lisp::sexp::parse(f.get_ref()).is_err() {
                cx.error(
                    Some(f.span()),
                    "`reload_eval` is not one readable Lisp form",
                    Some("write one form, e.g. reload_eval = \"(asdf:load-system \\\"my-app\\\")\"; wrap several in (progn ...)".into()),
                );
            }
            f.get_ref().clone()
        }
        None => crate::lisp::swank::reload_form(&app.system),
    };
    let release = lc.release;
    let layout = Layout::of_root(root);
    let cache_dir = lc
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == launcher::ENV_XDG_CACHE_HOME)
        .map(|(_, v)| lc.cwd.join(v))
        .unwrap_or_else(|| layout.cache_dir());
    let sbcl = r.sbcl.as_ref().map(PathBuf::from);
    // The runtime's grace for in-flight requests stays below windlass's stop timeout, so
    // the app exits by itself before windlass resorts to SIGKILL.
    let grace = lc
        .stop
        .timeout
        .saturating_sub(Duration::from_millis(500))
        .max(lc.stop.timeout / 2);
    let mut runtime_env: Vec<(String, String)> = Vec::new();
    let mut compile = None;
    let argv = if release {
        runtime_env.push((
            launcher::ENV_STOP_TIMEOUT.to_owned(),
            format!("{:.3}", grace.as_secs_f64()),
        ));
        None
    } else {
        let options = SourceOptions {
            sbcl: sbcl.clone(),
            swank_port,
            cache_dir: Some(cache_dir.clone()),
            stop_timeout: Some(grace),
            // Absolute: the instance runs in its own `cwd`, windlass writes the file from its.
            runtime_dir: Some(
                std::path::absolute(layout.lisp_dir()).unwrap_or_else(|_| layout.lisp_dir()),
            ),
            ..SourceOptions::default()
        };
        match launcher::plan_source_command(&app, lc.cwd, &options) {
            Ok(cmd) => {
                runtime_env.extend(cmd.env);
                compile = Some(launcher::CompileStep {
                    argv: cmd.compile_argv,
                    runtime_file: cmd.runtime_file,
                });
                Some(cmd.argv)
            }
            Err(e) => {
                cx.error(
                    Some(lspan),
                    format!("app `{name}`: cannot prepare the Lisp launcher: {e}"),
                    Some("check `cwd`: it must be the directory of the .asd file".into()),
                );
                return None;
            }
        }
    };
    if let Some(p) = swank_port {
        // In source mode the launcher put it there already.
        if !runtime_env
            .iter()
            .any(|(k, _)| k == launcher::ENV_SWANK_PORT)
        {
            runtime_env.push((launcher::ENV_SWANK_PORT.to_owned(), p.to_string()));
        }
    }
    if lc.console {
        runtime_env.push((envvars::CONSOLE.to_owned(), "1".to_owned()));
    }
    runtime_env.retain(|(k, _)| !lc.env.iter().any(|(uk, _)| uk == k));
    runtime_env.append(lc.env);
    *lc.env = runtime_env;
    Some((
        LispConfig {
            app,
            sbcl,
            project_dir: lc.cwd.to_path_buf(),
            cache_dir,
            swank_port,
            reload_eval,
            compile,
        },
        argv,
    ))
}

fn resolve_admin(cx: &mut Ctx<'_>, raw: Option<&super::raw::RawAdmin>) -> AdminConfig {
    let d = AdminConfig::default();
    let Some(raw) = raw else { return d };
    let token = raw.token.clone().filter(|t| !t.is_empty());
    let listen = match &raw.listen {
        None => d.listen,
        Some(l) if l.get_ref() == "off" => None,
        Some(l) => match l.get_ref().parse::<SocketAddr>() {
            Ok(a) => {
                if !a.ip().is_loopback() && token.is_none() {
                    cx.error(
                        Some(l.span()),
                        format!("admin listener on non-loopback address {a} without a token"),
                        Some("set `token` in [admin] (actions then need `Authorization: Bearer TOKEN`), or listen on 127.0.0.1".into()),
                    );
                }
                Some(a)
            }
            Err(_) => {
                cx.error(
                    Some(l.span()),
                    format!("invalid `listen` address `{}`", l.get_ref()),
                    Some("write an IP and a port, like \"127.0.0.1:9180\", or \"off\"".into()),
                );
                d.listen
            }
        },
    };
    let mut hosts = Vec::new();
    for h in raw.hosts.iter().flatten() {
        match admin_host(h.get_ref()) {
            Ok(name) => hosts.push(name),
            Err(why) => cx.error(
                Some(h.span()),
                format!("invalid name `{}` in `hosts`: {why}", h.get_ref()),
                Some("write host names as a browser's address bar shows them, without scheme or port, like hosts = [\"windlass.example.internal\"]".into()),
            ),
        }
    }
    AdminConfig {
        listen,
        token,
        hosts,
        explicit: raw.listen.is_some(),
    }
}

/// One name of `[admin] hosts`: a DNS name or an IP address, without a port; lowercase.
fn admin_host(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim().to_ascii_lowercase();
    let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.contains("://") || name.contains('/') {
        return Err("write only the name, without a scheme or a path");
    }
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
        return Ok(ip.to_string());
    }
    if name.contains(':') {
        return Err("write the name without a port (every port is accepted)");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("a host name is letters, digits, `-` and `.`");
    }
    Ok(name)
}

/// Rewrites serde's messages into ours and adds a did-you-mean from the names serde lists.
fn explain(message: &str) -> (String, Option<String>) {
    let ticked: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    for (prefix, what) in [("unknown field", "key"), ("unknown variant", "value")] {
        if message.starts_with(prefix) {
            if let Some((bad, expected)) = ticked.split_first() {
                let msg = format!("unknown {what} `{bad}`");
                let help = match did_you_mean(bad, expected.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if expected.is_empty() => "this table takes no keys".to_owned(),
                    None => format!(
                        "expected one of {}",
                        expected
                            .iter()
                            .map(|e| format!("`{e}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                return (msg, Some(help));
            }
        }
    }
    (message.trim().to_owned(), None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrng::Rng;

    const SEED: &str = r#"[app.web]
command = ["python3", "app.py"]
cwd = "."
env = { APP_ENV = "production", N = 3 }
env_file = ".env"
port = 8080
bind = "127.0.0.1"
port_env = "PORT"
instances = 2
restart = "on-failure"
backoff = { initial = "100ms", max = "30s", reset_after = "1s", crashloop_after = 5 }
health = { path = "/health", interval = "1s", timeout = "2s", start_timeout = "60s" }
stop = { signal = "SIGTERM", timeout = "10s" }
reload = "blue-green"
proxy = { hold = "30s", trusted_proxies = ["10.0.0.0/8"] }
logs = { max_size = "10MB", keep = 5 }

[app.lisp]
lisp = { system = "hello", entry = "hello:main" }
swank_port = 4005
reload_eval = "(asdf:load-system \"hello\")"

[admin]
listen = "127.0.0.1:9180"
token = "t"

[logs]
max_size = 1048576
"#;

    /// Tokens that steer mutations towards the interesting corners: huge and negative
    /// numbers, durations and sizes past their caps, unbalanced brackets and quotes.
    const TOKENS: &[&str] = &[
        "300000000000y",
        "18446744073709551615",
        "-1",
        "1e308",
        "99999999999999999999TB",
        "\"",
        "[",
        "]",
        "{",
        "}",
        "=",
        ",",
        "\n",
        "'''",
        "\"\"\"",
        "0",
        "65536",
        "4294967296",
        "\"1h\"",
        "\"0s\"",
        "\"1TiB\"",
        "inf",
        "nan",
        "[app.x]",
        "\u{1b}",
        "é",
        "\\u0000",
        "port",
        "instances",
        "swank_port",
        "keep",
        "hold",
        "((((((",
        "))",
        "\"300000000000y\"",
        "\"584942417355y\"",
        "\"9999999999999999999ms\"",
        "\"1d\"",
        "\"1PB\"",
        "\"16EiB\"",
        "4294967295",
    ];

    /// Every duration and size of a resolved config is within its cap, and usable in
    /// `Instant` arithmetic.
    fn assert_within_limits(c: &Config, text: &str) {
        use super::super::raw::{MAX_KEEP, MAX_SIZE, YEAR};
        let year = Duration::from_secs(YEAR);
        for a in &c.apps {
            for d in [
                a.backoff.initial,
                a.backoff.max,
                a.backoff.reset_after,
                a.stop.timeout,
                a.health.interval,
                a.health.timeout,
                a.health.start_timeout,
                a.proxy.hold,
                a.proxy.connect_timeout,
                a.proxy.response_timeout,
                a.proxy.idle_timeout,
            ] {
                assert!(d <= year, "{d:?} passed validation in:\n{text}");
                assert!(std::time::Instant::now().checked_add(d * 2).is_some());
            }
            assert!(a.logs.max_size <= MAX_SIZE, "size passed in:\n{text}");
            assert!(a.logs.keep <= MAX_KEEP, "keep passed in:\n{text}");
        }
    }

    /// Property: whatever the document (a valid config mutated at random, bounded and
    /// deterministic), validation returns `Ok` or diagnostics; it never panics.
    #[test]
    fn mutated_configs_never_panic_validation() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".env"), "A=1\n").expect("write .env");
        let file = dir.path().join("windlass.toml");
        let mut rng = Rng(0x2545_F491_4F6C_DD1D);
        let mut accepted = 0;
        for _ in 0..4_000 {
            let mut doc = SEED.as_bytes().to_vec();
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(doc.len() + 1);
                match rng.below(5) {
                    4 => {
                        // Replace one quoted value (or number) with a token.
                        let starts: Vec<usize> = doc
                            .iter()
                            .enumerate()
                            .filter(|(_, b)| **b == b'"' || **b == b'=')
                            .map(|(i, _)| i)
                            .collect();
                        let Some(&s) = starts.get(rng.below(starts.len())) else {
                            continue;
                        };
                        let s = if doc[s] == b'=' { s + 2 } else { s };
                        let end = doc
                            .iter()
                            .skip(s.min(doc.len()))
                            .position(|b| matches!(b, b',' | b'}' | b'\n'))
                            .map_or(doc.len(), |n| s + n);
                        let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                        if s <= end {
                            doc.splice(s..end, t.iter().copied());
                        }
                    }
                    0 => {
                        let end = (at + rng.below(12)).min(doc.len());
                        doc.drain(at..end);
                    }
                    1 => {
                        let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                        doc.splice(at..at, t.iter().copied());
                    }
                    2 if at < doc.len() => doc[at] = (rng.next() & 0xff) as u8,
                    _ => {
                        let end = (at + rng.below(20)).min(doc.len());
                        let copy = doc[at..end].to_vec();
                        let to = rng.below(doc.len() + 1);
                        doc.splice(to..to, copy);
                    }
                }
            }
            let text = String::from_utf8_lossy(&doc);
            if let Ok(c) = from_toml(&file, dir.path(), &text) {
                accepted += 1;
                assert_within_limits(&c, &text);
            }
        }
        // The mutations keep some documents valid, so the limits are really exercised.
        assert!(
            accepted > 100,
            "only {accepted} mutated documents were valid"
        );
    }
}

#[cfg(test)]
mod proxy_tests {
    use crate::proxy::ProxyConfig;
    use std::time::Duration;

    fn app_proxy(text: &str) -> ProxyConfig {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("windlass.toml");
        std::fs::write(&file, text).expect("write config");
        let c = crate::config::load(&file).expect("valid config");
        c.apps[0].proxy.clone()
    }

    /// The proxy's defaults are written once, in `ProxyConfig::default`: an app with no
    /// `proxy` table gets exactly them (with its instance count), and a setting written
    /// replaces only its own default.
    #[test]
    fn the_proxy_section_resolves_onto_the_proxys_own_defaults() {
        let p = app_proxy("[app.web]\ncommand = \"x\"\nport = 8080\ninstances = 3\n");
        assert_eq!(
            p,
            ProxyConfig {
                instances: 3,
                ..ProxyConfig::default()
            }
        );
        let p = app_proxy(
            "[app.web]\ncommand = \"x\"\nport = 8080\nproxy = { plain_path = false, hold = \"2s\", max_connections = 10 }\n",
        );
        assert_eq!(
            p,
            ProxyConfig {
                plain_path: false,
                hold: Duration::from_secs(2),
                max_connections: Some(10),
                ..ProxyConfig::default()
            }
        );
    }
}
