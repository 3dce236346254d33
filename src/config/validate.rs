//! Turns the raw TOML form into the resolved [`Config`], collecting every error.
//!
//! Parse errors (syntax, unknown keys, bad values) stop at the first one, as the TOML parser
//! does; all cross-field and on-disk checks then run to completion so the user sees every
//! remaining problem at once. Nothing here has side effects beyond reading files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::raw::{RawApp, RawCommand, RawConfig, RawLogs, ReloadStrategy, RestartPolicy};
use super::{
    AdminConfig, AppConfig, BackoffConfig, Config, ConfigError, Diagnostic, HealthConfig,
    LogsConfig, ProxySettings, Source, StopConfig, did_you_mean, envfile, envvars, valid_app_name,
    valid_env_name,
};

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
    if raw.app.is_empty() {
        cx.error(
            None,
            "the config defines no app",
            Some("add an app, for example:\n\n    [app.web]\n    command = [\"python3\", \"app.py\"]\n    port = 8080\n".into()),
        );
    }

    let admin = resolve_admin(&mut cx, raw.admin.as_ref());

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
    })
}

fn resolve_logs(base: Option<LogsConfig>, raw: Option<RawLogs>) -> LogsConfig {
    let base = base.unwrap_or_default();
    match raw {
        None => base,
        Some(r) => LogsConfig {
            max_size: r.max_size.map_or(base.max_size, |s| s.0.max(1024)),
            keep: r.keep.unwrap_or(base.keep),
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
        None => {
            cx.error(
                Some(span.clone()),
                format!("app `{name}` has no `command`"),
                Some(
                    "add the command that starts it, e.g. command = [\"python3\", \"app.py\"]"
                        .into(),
                ),
            );
            Vec::new()
        }
        Some(cmd) => {
            let cspan = cmd.span();
            match (cmd.get_ref(), shell) {
                (RawCommand::Line(line), true) => {
                    if line.trim().is_empty() {
                        cx.error(Some(cspan), "`command` is empty", None);
                    }
                    vec!["/bin/sh".into(), "-c".into(), line.clone()]
                }
                (RawCommand::Argv(_), true) => {
                    cx.error(
                        Some(cspan),
                        "`shell = true` needs `command` as one string",
                        Some("write the command line as a string, e.g. command = \"./run.sh | tee out.log\"".into()),
                    );
                    Vec::new()
                }
                (RawCommand::Line(line), false) => match shlex::split(line) {
                    Some(v) if !v.is_empty() => v,
                    Some(_) => {
                        cx.error(Some(cspan), "`command` is empty", None);
                        Vec::new()
                    }
                    None => {
                        cx.error(
                            Some(cspan),
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
                        cx.error(Some(cspan), "`command` is empty", None);
                    }
                    v.clone()
                }
            }
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
            Err(e) => cx.error(
                Some(ef.span()),
                format!("cannot use env_file {}: {e}", p.display()),
                Some("create the file, or remove `env_file`".into()),
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
    let pd = ProxySettings::default();
    let proxy = match raw.proxy {
        None => pd,
        Some(p) => ProxySettings {
            hold: p.hold.map_or(pd.hold, |x| x.0),
            connect_timeout: p.connect_timeout.map_or(pd.connect_timeout, |x| x.0),
            response_timeout: p.response_timeout.map_or(pd.response_timeout, |x| x.0),
            idle_timeout: p.idle_timeout.map_or(pd.idle_timeout, |x| x.0),
        },
    };
    if reload == ReloadStrategy::BlueGreen && port.is_none() && raw.reload.is_some() {
        cx.error(
            Some(span.clone()),
            format!("app `{name}` uses reload = \"blue-green\" but has no `port`"),
            Some("blue-green needs the proxy: set `port`, or use reload = \"restart\"".into()),
        );
    }

    if cx.diags.len() > before {
        return None;
    }
    Some(AppConfig {
        name: name.to_owned(),
        argv,
        shell,
        cwd,
        env,
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
        console: raw.console.unwrap_or(false),
        logs: resolve_logs(Some(default_logs), raw.logs),
        autostart: raw.autostart.unwrap_or(true),
    })
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
    AdminConfig { listen, token }
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
