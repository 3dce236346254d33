//! `windlass export`: deployment files generated from the `windlass.toml` windlass already
//! understands, so a systemd unit, a Dockerfile or Kubernetes manifests never drift from the
//! config they run. Each generator ([`systemd`], [`docker`], [`k8s`]) is a pure function from
//! the resolved [`Config`] (plus a few facts about the machine, passed in) to a list of
//! [`Generated`] files; writing them is [`write`]'s job, so generators are testable as text and
//! the files they produce are checked by the real tools in the tests (`systemd-analyze verify`,
//! `hadolint`, `kubernetes-validate`).

pub mod docker;
pub mod k8s;
pub mod systemd;

use std::path::{Path, PathBuf};

use crate::config::Config;

/// One generated file: its name relative to the output directory, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub name: String,
    pub contents: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Unsupported { what: String, hint: String },
}

impl ExportError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ExportError::Unsupported { hint, .. } => Some(hint.clone()),
            ExportError::Write { .. } => Some("choose another directory with -o DIR".into()),
            ExportError::Read { .. } => None,
        }
    }
    /// Usage errors (the project cannot be exported as asked) exit 2, the rest 1.
    pub fn is_usage(&self) -> bool {
        matches!(self, ExportError::Unsupported { .. })
    }
}

/// The project's name in generated files: the project directory's name, lowercased, as a
/// DNS-1123 label (what Kubernetes requires of names; a fine unit and image name too).
pub fn project_name(config: &Config) -> String {
    let base = config
        .root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dns_label(&base).unwrap_or_else(|| "windlass-app".into())
}

/// `s` as a DNS-1123 label: lowercase letters, digits and `-`, at most 63 characters,
/// starting and ending with a letter or digit; `None` if nothing is left.
pub fn dns_label(s: &str) -> Option<String> {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(63);
    let out = out.trim_matches('-').to_owned();
    (!out.is_empty()).then_some(out)
}

/// Writes every file into `dir` (created if needed), each atomically (temp, fsync, rename).
pub fn write(dir: &Path, files: &[Generated]) -> Result<Vec<PathBuf>, ExportError> {
    std::fs::create_dir_all(dir).map_err(|source| ExportError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for f in files {
        let path = dir.join(&f.name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| ExportError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        crate::layout::write_atomic(&path, f.contents.as_bytes()).map_err(|source| {
            ExportError::Write {
                path: path.clone(),
                source,
            }
        })?;
        written.push(path);
    }
    Ok(written)
}

/// The largest of a duration over the apps (zero with no apps).
fn max_over(config: &Config, f: impl Fn(&crate::config::AppConfig) -> std::time::Duration) -> u64 {
    config
        .apps
        .iter()
        .map(|a| f(a).as_secs_f64().ceil() as u64)
        .max()
        .unwrap_or(0)
}

/// The keys of an app's `env` written in the config itself, with their values: those that
/// did not come from its `env_file` (whose values are secrets until shown otherwise and never
/// go into a generated file). A key in both, with the file's value, counts as the file's.
pub fn inline_env(app: &crate::config::AppConfig) -> Vec<(String, String)> {
    let from_file: Vec<(String, String)> = app
        .env_file
        .as_deref()
        .and_then(|p| crate::config::envfile::read(p).ok())
        .unwrap_or_default();
    app.env
        .iter()
        .filter(|(k, v)| !from_file.iter().any(|(fk, fv)| fk == k && fv == v))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_label_lowercases_and_replaces() {
        assert_eq!(dns_label("My_App.v2").as_deref(), Some("my-app-v2"));
        assert_eq!(dns_label("--x--").as_deref(), Some("x"));
        assert_eq!(dns_label("___"), None);
        assert_eq!(dns_label(&"a".repeat(80)).map(|s| s.len()), Some(63));
    }
}
