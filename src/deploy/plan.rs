//! What a deploy will do, decided before any host is contacted: the hosts (from `[deploy]`
//! or `--host`) in batches, where each one keeps the project, the release of each app, the
//! windlass binary and its hash, the env file. `--dry-run` prints this and stops.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::DeployError;
use crate::config::Config;
use crate::config::deploy::HostSpec;
use crate::release;

/// One host, resolved: what ssh connects to and the project directory there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub name: String,
    pub user: Option<String>,
    pub path: String,
}

impl Target {
    /// ssh's destination: `user@name` or `name`.
    pub fn dest(&self) -> String {
        match &self.user {
            Some(u) => format!("{u}@{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// The release of one app that goes out.
#[derive(Debug, Clone)]
pub(crate) struct AppRelease {
    pub app: String,
    pub id: String,
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub batches: Vec<Vec<Target>>,
    pub releases: Vec<AppRelease>,
    /// The config file, uploaded beside the releases under its own name.
    pub config_file: PathBuf,
    pub binary: PathBuf,
    pub binary_sha256: String,
    pub env_file: Option<PathBuf>,
    pub ssh_options: Vec<String>,
    pub setup: bool,
}

impl Plan {
    /// Resolves the hosts (`--host` arguments, else `[deploy] hosts`), the newest release of
    /// every app and the local binary.
    pub fn new(config: &Config, hosts: &[String], setup: bool) -> Result<Plan, DeployError> {
        let d = &config.deploy;
        let project = config
            .root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".into());
        let specs: Vec<HostSpec> = if hosts.is_empty() {
            d.hosts.clone()
        } else {
            hosts
                .iter()
                .map(|h| match d.hosts.iter().find(|c| c.name == *h) {
                    Some(c) => Ok(c.clone()),
                    None => HostSpec::parse(h).map_err(|why| DeployError::Usage {
                        message: format!("invalid --host `{h}`: {why}"),
                        hint:
                            "write NAME, USER@NAME or USER@NAME:PATH, or a name from [deploy] hosts"
                                .into(),
                    }),
                })
                .collect::<Result<_, _>>()?
        };
        if specs.is_empty() {
            return Err(DeployError::Usage {
                message: format!("no hosts to deploy to in {}", config.file.display()),
                hint:
                    "add `[deploy] hosts = [\"web1.example\"]` to the config, or pass --host NAME"
                        .into(),
            });
        }
        let targets: Vec<Target> = specs
            .into_iter()
            .map(|s| Target {
                path: s
                    .path
                    .or_else(|| d.path.clone())
                    .unwrap_or_else(|| format!("/srv/{project}")),
                user: s.user.or_else(|| d.user.clone()),
                name: s.name,
            })
            .collect();
        let batches = targets.chunks(d.batch.max(1)).map(<[_]>::to_vec).collect();

        let dir = config.layout().releases_dir();
        let all = release::list(&dir).map_err(|e| DeployError::Local(e.to_string()))?;
        let mut releases = Vec::new();
        let mut missing = Vec::new();
        for app in &config.apps {
            match all.iter().rev().find(|r| r.manifest.app == app.name) {
                Some(r) => releases.push(AppRelease {
                    app: app.name.clone(),
                    id: r.manifest.id.clone(),
                    dir: r.dir.clone(),
                }),
                None => missing.push(app.name.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(DeployError::Usage {
                message: format!(
                    "no release of {} in {}: deploy ships releases",
                    missing
                        .iter()
                        .map(|a| format!("`{a}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    dir.display()
                ),
                hint: "run `windlass build` first".into(),
            });
        }
        if let Some(env) = &d.env_file
            && !env.is_file()
        {
            return Err(DeployError::Usage {
                message: format!("[deploy] env_file {} does not exist", env.display()),
                hint: "create it (each host gets it as PATH/.env, mode 0600) or remove the key"
                    .into(),
            });
        }
        let binary = std::env::current_exe()
            .map_err(|e| DeployError::Local(format!("cannot find the windlass binary: {e}")))?;
        let binary_sha256 = sha256(&binary)?;
        Ok(Plan {
            batches,
            releases,
            config_file: config.file.clone(),
            binary,
            binary_sha256,
            env_file: d.env_file.clone(),
            ssh_options: d.ssh_options.clone(),
            setup,
        })
    }

    pub fn hosts(&self) -> impl Iterator<Item = &Target> {
        self.batches.iter().flatten()
    }

    /// The config file's name on the hosts.
    pub fn config_name(&self) -> String {
        self.config_file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "windlass.toml".into())
    }

    /// The steps each host goes through, in order, as (step, what) lines for `--dry-run`.
    pub fn steps(&self) -> Vec<(&'static str, String)> {
        let mut s = vec![
            ("connect", "ssh, one shared connection".to_owned()),
            (
                "probe",
                "rsync present? windlass binary's sha256, supervisor running, releases there"
                    .into(),
            ),
            (
                "upload-binary",
                format!(
                    "{} to PATH/.windlass/bin/windlass when the host's sha256 differs from {}",
                    self.binary.display(),
                    &self.binary_sha256[..12.min(self.binary_sha256.len())]
                ),
            ),
        ];
        for r in &self.releases {
            s.push((
                "upload-release",
                format!(
                    "{} release {} to PATH/.windlass/releases/{} (rsync, or tar over ssh)",
                    r.app, r.id, r.id
                ),
            ));
        }
        s.push((
            "upload-config",
            format!(
                "{} to PATH/{}",
                self.config_file.display(),
                self.config_name()
            ),
        ));
        if let Some(e) = &self.env_file {
            s.push((
                "upload-env",
                format!("{} to PATH/.env, mode 0600", e.display()),
            ));
        }
        if self.setup {
            s.push((
                "start",
                "when no supervisor runs: `windlass export systemd` + systemctl enable --now where systemd runs, else `windlass up -d`".into(),
            ));
        }
        for r in &self.releases {
            s.push((
                "switch",
                format!(
                    "windlass rollback {} {} (zero-downtime reload)",
                    r.app, r.id
                ),
            ));
        }
        s.push((
            "healthy",
            "every app reports its new release healthy; then the next batch".into(),
        ));
        s
    }
}

/// The sha256 of a local file, by coreutils' `sha256sum` (the hosts compute theirs the same way).
pub(crate) fn sha256(path: &Path) -> Result<String, DeployError> {
    let out = Command::new("sha256sum")
        .arg("--")
        .arg(path)
        .output()
        .map_err(|e| DeployError::Local(format!("cannot run sha256sum: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(h) if out.status.success() && h.len() == 64 => Ok(h.to_owned()),
        _ => Err(DeployError::Local(format!(
            "sha256sum {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}
