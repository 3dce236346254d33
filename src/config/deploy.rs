//! The `[deploy]` table: which hosts `windlass deploy` ships to, as whom, where, over which
//! ssh options, how many at once, and which secrets file goes with the release.
//!
//! A host is written `"name"`, `"user@name"`, `"user@name:/path"` (the `--host` spelling, so a
//! one-off host on the command line reads like one in the file) or a table
//! `{ name = "...", user = "...", path = "..." }`. `name` is what `ssh` connects to: a DNS
//! name, an address or an alias of `~/.ssh/config`. Per-host `user` and `path` override the
//! table's; `path` defaults to `/srv/<project>` (the project directory's name). Everything
//! that reaches an `ssh` command line is checked here so that no value can become an option
//! (`-oProxyCommand=...`) or break the remote shell's quoting with a newline.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

/// The raw `[deploy]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeploy {
    pub hosts: Option<Vec<Spanned<RawHost>>>,
    pub user: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub ssh_options: Option<Vec<String>>,
    pub batch: Option<Spanned<u32>>,
    pub env_file: Option<Spanned<String>>,
}

/// One entry of `hosts`: a `[user@]name[:path]` string or a table.
#[derive(Debug, Clone)]
pub enum RawHost {
    Spec(String),
    Table(RawHostTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHostTable {
    pub name: String,
    pub user: Option<String>,
    pub path: Option<String>,
}

impl<'de> Deserialize<'de> for RawHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHost;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a host like "web1", "deploy@web1:/srv/shop" or { name = "web1", path = "/srv/shop" }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawHost, E> {
                Ok(RawHost::Spec(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawHost, A::Error> {
                RawHostTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawHost::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// The resolved `[deploy]` table (empty when the config has none).
#[derive(Debug, Clone, PartialEq)]
pub struct DeployConfig {
    pub hosts: Vec<HostSpec>,
    pub user: Option<String>,
    /// The remote project directory unless a host names its own (default `/srv/<project>`).
    pub path: Option<String>,
    /// Extra arguments for every `ssh` (and rsync's `-e ssh`), like `["-p", "2222"]`.
    pub ssh_options: Vec<String>,
    /// Hosts updated at once (default 1).
    pub batch: usize,
    /// A local file uploaded as the project's `.env` (mode 0600) on every host.
    pub env_file: Option<PathBuf>,
}

impl Default for DeployConfig {
    fn default() -> Self {
        DeployConfig {
            hosts: Vec::new(),
            user: None,
            path: None,
            ssh_options: Vec::new(),
            batch: 1,
            env_file: None,
        }
    }
}

/// One host: what `ssh` connects to, and optionally as whom and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    pub name: String,
    pub user: Option<String>,
    pub path: Option<String>,
}

impl HostSpec {
    /// Parses `[user@]name[:path]` (the `--host` argument and a string in `hosts`).
    pub fn parse(spec: &str) -> Result<HostSpec, String> {
        let (login, path) = match spec.split_once(':') {
            Some((l, p)) => (l, Some(p.to_owned())),
            None => (spec, None),
        };
        let (user, name) = match login.rsplit_once('@') {
            Some((u, n)) => (Some(u.to_owned()), n.to_owned()),
            None => (None, login.to_owned()),
        };
        let h = HostSpec { name, user, path };
        h.check()?;
        Ok(h)
    }

    /// Why this host cannot be used safely on an ssh command line, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        check_word("host name", &self.name)?;
        if let Some(u) = &self.user {
            check_word("user", u)?;
            if u.contains(['@', ':']) {
                return Err(format!("user `{u}` contains `@` or `:`"));
            }
        }
        if let Some(p) = &self.path {
            check_path(p)?;
        }
        Ok(())
    }
}

impl fmt::Display for HostSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

fn check_word(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Err(format!("empty {what}"));
    }
    if v.starts_with('-') {
        return Err(format!(
            "{what} `{v}` starts with `-` (ssh would read it as an option)"
        ));
    }
    if let Some(c) = v
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "'\"`$\\;&|<>(){}*?".contains(*c))
    {
        return Err(format!("{what} `{}` contains {c:?}", v.escape_debug()));
    }
    Ok(())
}

fn check_path(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.chars().any(char::is_control) {
        return Err(format!(
            "path `{}` contains a control character",
            p.escape_debug()
        ));
    }
    Ok(())
}

/// A problem found in `[deploy]`: where, what, and how to fix it.
pub(super) type Problem = (Option<Range<usize>>, String, Option<String>);

/// Resolves `[deploy]`; problems are returned for the caller's diagnostics.
pub(super) fn resolve(
    root: &Path,
    raw: Option<&RawDeploy>,
    errors: &mut Vec<Problem>,
) -> DeployConfig {
    let mut out = DeployConfig::default();
    let Some(raw) = raw else { return out };
    for h in raw.hosts.iter().flatten() {
        let parsed = match h.get_ref() {
            RawHost::Spec(s) => HostSpec::parse(s),
            RawHost::Table(t) => {
                let spec = HostSpec {
                    name: t.name.clone(),
                    user: t.user.clone(),
                    path: t.path.clone(),
                };
                spec.check().map(|()| spec)
            }
        };
        match parsed {
            Ok(spec) if out.hosts.iter().any(|o| o.name == spec.name) => errors.push((
                Some(h.span()),
                format!("host `{}` is listed twice in `hosts`", spec.name),
                Some("each host once; give a second checkout on one machine an alias in ~/.ssh/config".into()),
            )),
            Ok(spec) => out.hosts.push(spec),
            Err(why) => errors.push((
                Some(h.span()),
                format!("invalid host in `hosts`: {why}"),
                Some(r#"write "name", "user@name", "user@name:/path" or { name = "...", user = "...", path = "..." }"#.into()),
            )),
        }
    }
    if let Some(u) = &raw.user {
        match check_word("user", u.get_ref()) {
            Ok(()) => out.user = Some(u.get_ref().clone()),
            Err(why) => errors.push((Some(u.span()), format!("invalid `user`: {why}"), None)),
        }
    }
    if let Some(p) = &raw.path {
        match check_path(p.get_ref()) {
            Ok(()) => out.path = Some(p.get_ref().clone()),
            Err(why) => errors.push((Some(p.span()), format!("invalid `path`: {why}"), None)),
        }
    }
    out.ssh_options = raw.ssh_options.clone().unwrap_or_default();
    if let Some(b) = &raw.batch {
        if *b.get_ref() == 0 {
            errors.push((
                Some(b.span()),
                "`batch` is 0: no host would ever be updated".into(),
                Some("batch = 1 updates one host at a time (the default)".into()),
            ));
        } else {
            out.batch = *b.get_ref() as usize;
        }
    }
    // Checked when deploying, not here: the config is uploaded with the release, and the
    // hosts do not have the file (they get it as `.env`).
    out.env_file = raw.env_file.as_ref().map(|e| root.join(e.get_ref()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_specs_parse_user_name_and_path() {
        assert_eq!(
            HostSpec::parse("deploy@web1:/srv/shop").expect("valid"),
            HostSpec {
                name: "web1".into(),
                user: Some("deploy".into()),
                path: Some("/srv/shop".into())
            }
        );
        assert_eq!(HostSpec::parse("web2").expect("valid").user, None);
        assert_eq!(
            HostSpec::parse("10.0.0.3:app")
                .expect("valid")
                .path
                .as_deref(),
            Some("app")
        );
    }

    #[test]
    fn host_specs_that_would_become_ssh_options_or_shell_are_refused() {
        for bad in [
            "-oProxyCommand=x",
            "web1 -v",
            "a;b",
            "",
            "deploy@",
            "-u@web",
            "w$(id)",
        ] {
            assert!(HostSpec::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(HostSpec::parse("web:/srv/a\nb").is_err());
    }
}
