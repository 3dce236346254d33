//! Procfiles (the foreman/Heroku convention): one `name: command` per line, run by a shell.
//!
//! The `web` process gets the proxy's public port: `$PORT` from windlass's environment, or 5000,
//! as foreman does. Every other setting takes its default.

use std::collections::BTreeSet;
use std::path::Path;

use super::{
    AdminConfig, AppConfig, BackoffConfig, Config, ConfigError, Diagnostic, HealthConfig,
    LogsConfig, ReloadStrategy, RestartPolicy, Source, StopConfig, envvars,
};

pub const DEFAULT_WEB_PORT: u16 = 5000;

pub fn parse(file: &Path, root: &Path, text: &str) -> Result<Config, ConfigError> {
    let mut diags = Vec::new();
    let mut apps = Vec::new();
    let mut seen = BTreeSet::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let Some((name, cmd)) = t.split_once(':') else {
            diags.push(Diagnostic::at(
                file,
                text,
                Some(start..start + line.trim_end().len()),
                "expected `name: command`",
                Some("each Procfile line names a process, e.g. `web: python3 app.py`".into()),
            ));
            continue;
        };
        let name = name.trim();
        let cmd = cmd.trim();
        if !super::valid_app_name(name) {
            diags.push(Diagnostic::at(
                file,
                text,
                Some(start..start + name.len().max(1)),
                format!("invalid process name `{name}`"),
                Some("use letters, digits, `-` and `_` only".into()),
            ));
            continue;
        }
        if cmd.is_empty() {
            diags.push(Diagnostic::at(
                file,
                text,
                Some(start..start + line.trim_end().len()),
                format!("process `{name}` has no command"),
                None,
            ));
            continue;
        }
        if !seen.insert(name.to_owned()) {
            diags.push(Diagnostic::at(
                file,
                text,
                Some(start..start + name.len()),
                format!("process `{name}` is defined twice"),
                None,
            ));
            continue;
        }
        let port = (name == "web").then(|| {
            std::env::var(envvars::PORT)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .unwrap_or(DEFAULT_WEB_PORT)
        });
        apps.push(AppConfig {
            name: name.to_owned(),
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.to_owned()],
            shell: true,
            cwd: root.to_path_buf(),
            env: Vec::new(),
            env_file: None,
            port,
            bind: std::net::IpAddr::from([0, 0, 0, 0]),
            port_env: envvars::PORT.to_owned(),
            instances: 1,
            restart: RestartPolicy::Always,
            backoff: BackoffConfig::default(),
            stop: StopConfig::default(),
            health: HealthConfig::default(),
            reload: if port.is_some() {
                ReloadStrategy::BlueGreen
            } else {
                ReloadStrategy::Restart
            },
            reload_signal: None,
            watch: Vec::new(),
            proxy: crate::proxy::ProxyConfig::default(),
            console: false,
            logs: LogsConfig::default(),
            releases: super::ReleaseConfig {
                dir: crate::layout::Layout::of_root(root).releases_dir(),
                shared_dir: crate::layout::Layout::of_root(root).shared_dir(name),
                keep: super::KEEP_RELEASES,
                ..Default::default()
            },
            autostart: true,
            lisp: None,
        });
    }
    if apps.is_empty() && diags.is_empty() {
        diags.push(Diagnostic::at(
            file,
            text,
            None,
            "the Procfile defines no process",
            Some("add a line like `web: python3 app.py`".into()),
        ));
    }
    if !diags.is_empty() {
        return Err(ConfigError::Invalid(diags));
    }
    Ok(Config {
        file: file.to_path_buf(),
        root: root.to_path_buf(),
        source: Source::Procfile,
        apps,
        admin: AdminConfig::default(),
        deploy: super::deploy::DeployConfig::default(),
    })
}
