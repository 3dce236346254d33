//! Immutable releases: `windlass build` turns an app into `.windlass/releases/<id>/` (an
//! executable, its assets and a `release.json` manifest), `windlass releases` lists them, and
//! `release = "latest" | "<id>"` in the config runs one instead of the sources.
//!
//! A release id is the UTC build time, `20261124T031500Z`, with `-2`, `-3`... appended when
//! that second is taken. A release is built in a hidden temporary directory and renamed into
//! place once its manifest is written, so a directory with a visible id is always complete.
//! `"latest"` is resolved at every start of an instance, so a new build is picked up by the
//! next restart or reload without touching the config. After each build only the newest
//! `keep_releases` (default 5) releases of the app are kept; a release pinned by the config
//! is never removed.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::config::{AppConfig, LispConfig, ReleaseSel, valid_release_id};
use crate::lisp::executable::{self, BuildError, BuildSpec};

/// The manifest's file name inside a release directory.
pub const MANIFEST: &str = "release.json";
/// Version of the manifest format (fields may be added, never removed or retyped).
pub const MANIFEST_VERSION: u32 = 1;

/// `release.json`: what a release is, for `windlass releases` and for starting it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u32,
    pub app: String,
    pub id: String,
    /// RFC 3339 UTC.
    pub created: String,
    /// Unix seconds.
    pub created_unix: f64,
    /// The executable's file name, inside the release directory.
    pub exe: String,
    /// Its size in bytes.
    pub size: u64,
    /// `git rev-parse HEAD` of the project, when it is a git checkout.
    pub git_commit: Option<String>,
    /// Asset directories copied beside the executable (names relative to the release).
    pub assets: Vec<String>,
    /// The ASDF system and entry point it was built from.
    pub system: String,
    pub entry: String,
    /// Wall time of the build, seconds.
    pub build_secs: f64,
}

/// A release on disk: its manifest and directory.
#[derive(Debug, Clone)]
pub struct Release {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

impl Release {
    pub fn exe(&self) -> PathBuf {
        self.dir.join(&self.manifest.exe)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(
        "app `{0}` is not a Common Lisp app: `windlass build` builds apps with `lisp = {{ system, entry }}`"
    )]
    NotBuildable(String),
    #[error("no release of app `{app}` in {}", dir.display())]
    NoRelease { app: String, dir: PathBuf },
    #[error("no release `{id}` of app `{app}` in {}", dir.display())]
    NoSuchRelease {
        app: String,
        id: String,
        dir: PathBuf,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] BuildError),
}

impl ReleaseError {
    pub fn hint(&self) -> Option<String> {
        match self {
            ReleaseError::NoRelease { app, .. } => Some(format!(
                "build one with `windlass build {app}`, or remove `release` from the config to run from source"
            )),
            ReleaseError::NoSuchRelease { .. } => {
                Some("see the ids with `windlass releases`".into())
            }
            _ => None,
        }
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + use<> {
    let path = path.to_path_buf();
    move |source| ReleaseError::Io {
        action,
        path,
        source,
    }
}

/// `20261124T031500Z` for `t`.
pub fn timestamp_id(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace(['-', ':'], "")
}

/// A fresh id in `dir`: the timestamp, with `-N` appended when already taken.
pub fn new_id(dir: &Path, t: SystemTime) -> String {
    let base = timestamp_id(t);
    let mut id = base.clone();
    let mut n = 2;
    while dir.join(&id).exists() {
        id = format!("{base}-{n}");
        n += 1;
    }
    id
}

/// Every release in `dir` (all apps), oldest first. Directories without a readable manifest
/// (a build in progress, a foreign folder) are skipped.
pub fn list(dir: &Path) -> Result<Vec<Release>, ReleaseError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("read", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !valid_release_id(&name) {
            continue;
        }
        let path = entry.path();
        let Ok(text) = std::fs::read(path.join(MANIFEST)) else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&text) else {
            continue;
        };
        out.push(Release {
            manifest,
            dir: path,
        });
    }
    out.sort_by(|a, b| {
        a.manifest
            .created_unix
            .total_cmp(&b.manifest.created_unix)
            .then_with(|| a.manifest.id.cmp(&b.manifest.id))
    });
    Ok(out)
}

/// The release `sel` of `app`.
pub fn find(dir: &Path, app: &str, sel: &ReleaseSel) -> Result<Release, ReleaseError> {
    let mut mine = list(dir)?.into_iter().filter(|r| r.manifest.app == app);
    match sel {
        ReleaseSel::Latest => mine.next_back().ok_or_else(|| ReleaseError::NoRelease {
            app: app.to_owned(),
            dir: dir.to_path_buf(),
        }),
        ReleaseSel::Id(id) => mine
            .into_iter()
            .find(|r| r.manifest.id == *id)
            .ok_or_else(|| ReleaseError::NoSuchRelease {
                app: app.to_owned(),
                id: id.clone(),
                dir: dir.to_path_buf(),
            }),
    }
}

/// The argv an instance of `app` starts with: the configured one, or for `release = ...` the
/// release's executable, looked up now (so the newest build is used by the next start).
pub fn argv_for(app: &AppConfig) -> std::io::Result<Cow<'_, [String]>> {
    let Some(LispConfig {
        release: Some(sel),
        releases_dir,
        ..
    }) = &app.lisp
    else {
        return Ok(Cow::Borrowed(&app.argv));
    };
    match find(releases_dir, &app.name, sel) {
        Ok(r) => Ok(Cow::Owned(vec![r.exe().to_string_lossy().into_owned()])),
        Err(e) => Err(std::io::Error::other(match e.hint() {
            Some(h) => format!("{e} ({h})"),
            None => e.to_string(),
        })),
    }
}

/// Removes the oldest releases of `app` beyond `keep`, never `pinned`. Returns the removed ids.
pub fn prune(
    dir: &Path,
    app: &str,
    keep: u32,
    pinned: Option<&str>,
) -> Result<Vec<String>, ReleaseError> {
    let mine: Vec<Release> = list(dir)?
        .into_iter()
        .filter(|r| r.manifest.app == app)
        .collect();
    let excess = mine.len().saturating_sub(keep as usize);
    let mut removed = Vec::new();
    for r in mine.into_iter().take(excess) {
        if Some(r.manifest.id.as_str()) == pinned {
            continue;
        }
        std::fs::remove_dir_all(&r.dir).map_err(io("remove", &r.dir))?;
        removed.push(r.manifest.id);
    }
    Ok(removed)
}

/// The project's git commit, if it is a git checkout with git installed.
fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

/// Builds a new release of the Lisp app `app`: the executable and its assets in
/// `releases/<id>/`, with its manifest; then prunes old releases.
pub async fn build(app: &AppConfig) -> Result<Release, ReleaseError> {
    let lisp = app
        .lisp
        .as_ref()
        .ok_or_else(|| ReleaseError::NotBuildable(app.name.clone()))?;
    let dir = &lisp.releases_dir;
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let now = SystemTime::now();
    let id = new_id(dir, now);
    let tmp = dir.join(format!(".build-{id}-{}", std::process::id()));
    let mut spec = BuildSpec::new(lisp.app.clone());
    spec.sbcl = lisp.sbcl.clone();
    spec.swank = lisp.swank_port.is_some();
    spec.cache_dir = Some(lisp.cache_dir.clone());
    let built = match executable::build(&spec, &lisp.project_dir, &tmp).await {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e.into());
        }
    };
    let file_name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        app: app.name.clone(),
        id: id.clone(),
        created: humantime::format_rfc3339_seconds(now).to_string(),
        created_unix: now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64(),
        exe: file_name(&built.exe),
        size: built.size,
        git_commit: git_commit(&lisp.project_dir),
        assets: built.assets.iter().map(|a| file_name(a)).collect(),
        system: lisp.app.system.clone(),
        entry: lisp.app.entry.clone(),
        build_secs: built.duration.as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest always serializes");
    let mpath = tmp.join(MANIFEST);
    crate::layout::write_atomic(&mpath, &json).map_err(io("write", &mpath))?;
    let final_dir = dir.join(&id);
    std::fs::rename(&tmp, &final_dir).map_err(io("rename into place", &final_dir))?;
    let pinned = match &lisp.release {
        Some(ReleaseSel::Id(p)) => Some(p.as_str()),
        _ => None,
    };
    prune(dir, &app.name, lisp.keep_releases, pinned)?;
    Ok(Release {
        manifest,
        dir: final_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(app: &str, id: &str, t: f64) -> Manifest {
        Manifest {
            version: MANIFEST_VERSION,
            app: app.into(),
            id: id.into(),
            created: String::new(),
            created_unix: t,
            exe: "x".into(),
            size: 1,
            git_commit: None,
            assets: vec![],
            system: "s".into(),
            entry: "p:f".into(),
            build_secs: 1.0,
        }
    }

    fn put(dir: &Path, m: &Manifest) {
        let d = dir.join(&m.id);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(MANIFEST), serde_json::to_vec(m).expect("json")).expect("write");
    }

    #[test]
    fn ids_are_compact_utc_timestamps_made_unique() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(timestamp_id(t), "20261118T110640Z");
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(new_id(dir.path(), t), "20261118T110640Z");
        std::fs::create_dir(dir.path().join("20261118T110640Z")).expect("mkdir");
        assert_eq!(new_id(dir.path(), t), "20261118T110640Z-2");
        // Every id it makes is one `release = "ID"` accepts.
        assert!(valid_release_id("20261118T110640Z-2"));
        assert!(!valid_release_id("../x") && !valid_release_id(".build") && !valid_release_id(""));
    }

    #[test]
    fn latest_is_per_app_and_prune_keeps_the_newest_and_the_pinned() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (i, id) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
            put(dir.path(), &manifest("web", id, i as f64));
        }
        put(dir.path(), &manifest("other", "b9", 99.0));
        std::fs::create_dir(dir.path().join(".build-x")).expect("in progress");
        let latest = find(dir.path(), "web", &ReleaseSel::Latest).expect("latest");
        assert_eq!(latest.manifest.id, "a4");
        assert!(find(dir.path(), "web", &ReleaseSel::Id("b9".into())).is_err());
        let removed = prune(dir.path(), "web", 2, Some("a1")).expect("prune");
        assert_eq!(removed, ["a2"]);
        let left: Vec<String> = list(dir.path())
            .expect("list")
            .into_iter()
            .map(|r| r.manifest.id)
            .collect();
        assert_eq!(left, ["a1", "a3", "a4", "b9"]);
        assert!(matches!(
            find(dir.path(), "nope", &ReleaseSel::Latest),
            Err(ReleaseError::NoRelease { .. })
        ));
    }
}
