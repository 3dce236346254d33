//! Immutable releases for every app: `windlass build` turns an app into
//! `.windlass/releases/<id>/` with a `release.json` manifest, `windlass releases` lists them,
//! `release = "latest" | "<id>"` in the config runs one instead of the sources, and
//! `windlass rollback` switches the running app to another one.
//!
//! Two kinds share one model. A Common Lisp app (without `build = [...]`) becomes one
//! executable plus its assets (`kind = "lisp-executable"`). Every other app becomes a copy of
//! its files (`kind = "files"`): the tracked files of the git revision `HEAD` (or, outside
//! git, the directory minus `.windlass/`, `.git/` and what `.gitignore` excludes), then its
//! `build` commands run inside that copy (`cargo build --release`, `npm ci`... when not set),
//! so the build's outputs are part of the release. The app then runs with the release as its
//! working directory. `shared = ["uploads"]` paths are relative symlinks to
//! `.windlass/shared/<app>/uploads`, so a release directory copied into another host's
//! releases directory works as is.
//!
//! A release id is the UTC build time, `20261124T031500Z`, with `-2`, `-3`... appended when
//! that second is taken. A release is built in a hidden temporary directory and renamed into
//! place once its manifest is written, so a directory with a visible id is always complete;
//! a failed build removes it and touches nothing that runs. `"latest"` is resolved at every
//! start of an instance. `windlass rollback` writes the chosen id to `<app>.current` in the
//! releases directory (atomically), which wins over the config's `release` from then on,
//! across supervisor restarts. After each build only the newest `keep_releases` (default 5)
//! releases of the app are kept; the one pinned by the config or by rollback, and any that a
//! process runs, are never removed.

use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{AppConfig, ReleaseSel, envvars, valid_release_id};
use crate::lisp::executable::{self, BuildError, BuildSpec};

/// The manifest's file name inside a release directory.
pub const MANIFEST: &str = "release.json";
/// Version of the manifest format (fields may be added, never removed or retyped).
pub const MANIFEST_VERSION: u32 = 1;
/// `kind` of a Common Lisp app's release: one executable and its assets.
pub const KIND_LISP: &str = "lisp-executable";
/// `kind` of every other release: the app's files plus its build's outputs.
pub const KIND_FILES: &str = "files";

fn kind_lisp() -> String {
    KIND_LISP.to_owned()
}

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
    /// [`KIND_LISP`] or [`KIND_FILES`] (manifests without it are Lisp executables).
    #[serde(default = "kind_lisp")]
    pub kind: String,
    /// Lisp: the executable's file name, inside the release directory ("" otherwise).
    #[serde(default)]
    pub exe: String,
    /// Bytes: the executable (Lisp) or every file of the release.
    #[serde(default)]
    pub size: u64,
    /// `git rev-parse HEAD` of the project, when it is a git checkout.
    pub git_commit: Option<String>,
    /// True when tracked files differed from `git_commit` at build time (they are not in it).
    #[serde(default)]
    pub git_dirty: bool,
    /// Lisp: asset directories copied beside the executable (names relative to the release).
    #[serde(default)]
    pub assets: Vec<String>,
    /// Lisp: the ASDF system and entry point it was built from.
    #[serde(default)]
    pub system: String,
    #[serde(default)]
    pub entry: String,
    /// Wall time of the build, seconds.
    pub build_secs: f64,
    /// The build commands that ran (shell lines; the Lisp build is `asdf:make`).
    #[serde(default)]
    pub build: Vec<String>,
    /// Regular files in the release (symlinks not counted).
    #[serde(default)]
    pub files: u64,
    /// `sha256:<hex>` over every path, file content and symlink target of the release
    /// (but this manifest), in path order: `windlass releases --verify` recomputes it.
    #[serde(default)]
    pub checksum: String,
    /// The `shared` paths linked into the release.
    #[serde(default)]
    pub shared: Vec<String>,
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
    #[error("`{command}` failed ({status}) in {}", dir.display())]
    CommandFailed {
        command: String,
        status: String,
        dir: PathBuf,
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
            ReleaseError::CommandFailed { .. } => Some(
                "its output is above; what runs was left untouched. Fix the build (the app's `build` key) and build again"
                    .into(),
            ),
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
        // A manifest names its own directory: a copied or renamed folder is not this release.
        if manifest.id != name {
            continue;
        }
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

/// The releases of `app` in `dir`, oldest first.
pub fn list_app(dir: &Path, app: &str) -> Result<Vec<Release>, ReleaseError> {
    Ok(list(dir)?
        .into_iter()
        .filter(|r| r.manifest.app == app)
        .collect())
}

/// The release `sel` of `app`.
pub fn find(dir: &Path, app: &str, sel: &ReleaseSel) -> Result<Release, ReleaseError> {
    let mut mine = list_app(dir, app)?.into_iter();
    match sel {
        ReleaseSel::Latest => mine.next_back().ok_or_else(|| ReleaseError::NoRelease {
            app: app.to_owned(),
            dir: dir.to_path_buf(),
        }),
        ReleaseSel::Id(id) => {
            mine.find(|r| r.manifest.id == *id)
                .ok_or_else(|| ReleaseError::NoSuchRelease {
                    app: app.to_owned(),
                    id: id.clone(),
                    dir: dir.to_path_buf(),
                })
        }
    }
}

/// The file holding the release `windlass rollback` chose for `app`.
pub fn selection_file(app: &AppConfig) -> PathBuf {
    app.releases.dir.join(format!("{}.current", app.name))
}

/// The release id `windlass rollback` chose for `app`, if any.
pub fn selected(app: &AppConfig) -> Option<String> {
    let text = std::fs::read_to_string(selection_file(app)).ok()?;
    let id = text.trim();
    valid_release_id(id).then(|| id.to_owned())
}

/// Records (atomically) the release `app` runs from its next start on; `None` forgets the
/// choice, so the config's `release` applies again.
pub fn set_selected(app: &AppConfig, id: Option<&str>) -> std::io::Result<()> {
    let file = selection_file(app);
    match id {
        Some(id) => {
            std::fs::create_dir_all(&app.releases.dir)?;
            crate::layout::write_atomic(&file, format!("{id}\n").as_bytes())
        }
        None => match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    }
}

/// The release `app` runs at its next start: the one `windlass rollback` chose, else the
/// config's `release`; `None` when it runs from source.
pub fn current(app: &AppConfig) -> Result<Option<Release>, ReleaseError> {
    let Some(sel) = &app.releases.sel else {
        return Ok(None);
    };
    let sel = selected(app).map_or_else(|| sel.clone(), ReleaseSel::Id);
    find(&app.releases.dir, &app.name, &sel).map(Some)
}

/// The release before `id` among `app`'s (by build time), for `windlass rollback APP`.
pub fn previous(app: &AppConfig, id: &str) -> Result<Option<Release>, ReleaseError> {
    let mine = list_app(&app.releases.dir, &app.name)?;
    Ok(mine
        .iter()
        .position(|r| r.manifest.id == id)
        .and_then(|i| i.checked_sub(1))
        .map(|i| mine[i].clone()))
}

/// How an instance of an app starts: its argv, working directory and release.
#[derive(Debug)]
pub struct Start<'a> {
    pub argv: Cow<'a, [String]>,
    pub cwd: Cow<'a, Path>,
    /// The release id (also handed to the app as `WINDLASS_RELEASE`).
    pub release: Option<String>,
}

/// How an instance of `app` starts now: the configured argv in `cwd`, or for an app that runs
/// releases, the current release (looked up now, so the newest build or the rollback's
/// choice is used by the next start).
pub fn start_for(app: &AppConfig) -> std::io::Result<Start<'_>> {
    let release = current(app).map_err(|e| {
        std::io::Error::other(match e.hint() {
            Some(h) => format!("{e} ({h})"),
            None => e.to_string(),
        })
    })?;
    let Some(r) = release else {
        return Ok(Start {
            argv: Cow::Borrowed(&app.argv),
            cwd: Cow::Borrowed(&app.cwd),
            release: None,
        });
    };
    // A release copied from another host finds its shared directories made.
    for s in &r.manifest.shared {
        let _ = std::fs::create_dir_all(app.releases.shared_dir.join(s));
    }
    let id = Some(r.manifest.id.clone());
    if r.manifest.kind == KIND_LISP {
        return Ok(Start {
            argv: Cow::Owned(vec![r.exe().to_string_lossy().into_owned()]),
            cwd: Cow::Borrowed(&app.cwd),
            release: id,
        });
    }
    Ok(Start {
        argv: Cow::Borrowed(&app.argv),
        cwd: Cow::Owned(r.dir),
        release: id,
    })
}

/// Removes the oldest releases of `app` beyond `keep`, never one of `protected`. Returns the
/// removed ids.
pub fn prune(
    dir: &Path,
    app: &str,
    keep: u32,
    protected: &[String],
) -> Result<Vec<String>, ReleaseError> {
    let mine = list_app(dir, app)?;
    let excess = mine.len().saturating_sub(keep as usize);
    let mut removed = Vec::new();
    for r in mine.into_iter().take(excess) {
        if protected.contains(&r.manifest.id) {
            continue;
        }
        std::fs::remove_dir_all(&r.dir).map_err(io("remove", &r.dir))?;
        removed.push(r.manifest.id);
    }
    Ok(removed)
}

/// The releases of `app` that a process of this user runs now (its environment says
/// `WINDLASS_APP=app` and `WINDLASS_RELEASE=id`).
pub fn running_ids(app: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let Ok(procs) = procfs::process::all_processes() else {
        return ids;
    };
    for p in procs.flatten() {
        if let Some(id) = release_of_env(p.environ().ok().as_ref(), app) {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    ids
}

/// The release id in a process environment when it belongs to `app`.
fn release_of_env(
    env: Option<&std::collections::HashMap<std::ffi::OsString, std::ffi::OsString>>,
    app: &str,
) -> Option<String> {
    let env = env?;
    (env.get(std::ffi::OsStr::new(envvars::APP))? == app).then_some(())?;
    Some(
        env.get(std::ffi::OsStr::new(envvars::RELEASE))?
            .to_string_lossy()
            .into_owned(),
    )
}

/// The release the process `pid` was started with (its `WINDLASS_RELEASE`).
pub fn release_of_pid(pid: u32) -> Option<String> {
    let env = procfs::process::Process::new(pid as i32)
        .ok()?
        .environ()
        .ok()?;
    Some(
        env.get(std::ffi::OsStr::new(envvars::RELEASE))?
            .to_string_lossy()
            .into_owned(),
    )
}

/// Variables git sets for its hooks: a build run from `windlass git-remote`'s hook must not
/// see them (they point at the bare repository, relative to the hook's directory).
const GIT_HOOK_ENV: [&str; 6] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_QUARANTINE_PATH",
];

/// `cmd` without git's hook variables.
fn without_git_env(cmd: &mut Command) -> &mut Command {
    for k in GIT_HOOK_ENV {
        cmd.env_remove(k);
    }
    cmd
}

/// Runs `git args` in `dir`; its trimmed stdout when it succeeds.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = without_git_env(&mut Command::new("git"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    out.status.success().then_some(text)
}

/// The project's git commit, if it is a git checkout with git installed.
fn git_commit(dir: &Path) -> Option<String> {
    git(dir, &["rev-parse", "--verify", "-q", "HEAD"]).filter(|c| !c.is_empty())
}

/// The build commands of `app` whose files are in `dir`: its `build` key, else the stack's
/// obvious default.
pub fn build_commands(app: &AppConfig, dir: &Path) -> Vec<String> {
    if let Some(b) = &app.releases.build {
        return b.clone();
    }
    let has = |f: &str| dir.join(f).is_file();
    if has("Cargo.toml") {
        vec!["cargo build --release".into()]
    } else if has("package-lock.json") || has("npm-shrinkwrap.json") {
        vec!["npm ci".into()]
    } else {
        Vec::new()
    }
}

/// What a build reports as it goes (the CLI shows it; the hook streams it to the pusher).
pub trait Progress: Send {
    fn step(&mut self, what: &str);
}

impl<F: FnMut(&str) + Send> Progress for F {
    fn step(&mut self, what: &str) {
        self(what)
    }
}

/// A revision exported outside the app's directory (a push to `windlass git-remote`): the
/// app's files in it and the commit they are.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub dir: PathBuf,
    pub commit: String,
}

/// Builds a new release of `app` into its releases directory, then prunes old ones. The
/// build commands' output goes to this process's stderr as it is written.
pub async fn build(app: &AppConfig, progress: &mut dyn Progress) -> Result<Release, ReleaseError> {
    build_with(app, None, progress).await
}

/// [`build`] from `checkout` instead of the app's directory when given.
pub async fn build_with(
    app: &AppConfig,
    checkout: Option<&Checkout>,
    progress: &mut dyn Progress,
) -> Result<Release, ReleaseError> {
    if app.lisp.is_some() && app.releases.build.is_none() {
        let mut app = app.clone();
        if let (Some(c), Some(lisp)) = (checkout, app.lisp.as_mut()) {
            lisp.project_dir = c.dir.clone();
        }
        return build_lisp(&app, checkout, progress).await;
    }
    let app2 = app.clone();
    let checkout = checkout.cloned();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let work = tokio::task::spawn_blocking(move || {
        build_files(&app2, checkout.as_ref(), &mut |s: &str| {
            let _ = tx.send(s.to_owned());
        })
    });
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => {
                while let Ok(s) = rx.try_recv() {
                    progress.step(&s);
                }
                return r.unwrap_or_else(|e| Err(ReleaseError::Io {
                    action: "build",
                    path: app.cwd.clone(),
                    source: std::io::Error::other(e.to_string()),
                }));
            }
            Some(s) = rx.recv() => progress.step(&s),
        }
    }
}

/// A release of a non-Lisp app (see the module doc): snapshot, build, link, checksum, rename.
fn build_files(
    app: &AppConfig,
    checkout: Option<&Checkout>,
    progress: &mut dyn FnMut(&str),
) -> Result<Release, ReleaseError> {
    let dir = &app.releases.dir;
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let started = Instant::now();
    let now = SystemTime::now();
    let id = new_id(dir, now);
    let tmp = dir.join(format!(".build-{id}-{}", std::process::id()));
    let result = build_into(app, checkout, &tmp, &id, now, started, progress);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let final_dir = dir.join(&id);
    if let Err(e) = std::fs::rename(&tmp, &final_dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io("rename into place", &final_dir)(e));
    }
    prune_after_build(app)?;
    Ok(Release {
        manifest,
        dir: final_dir,
    })
}

fn prune_after_build(app: &AppConfig) -> Result<Vec<String>, ReleaseError> {
    let mut protected = running_ids(&app.name);
    if let Some(ReleaseSel::Id(p)) = &app.releases.sel {
        protected.push(p.clone());
    }
    protected.extend(selected(app));
    prune(&app.releases.dir, &app.name, app.releases.keep, &protected)
}

fn build_into(
    app: &AppConfig,
    checkout: Option<&Checkout>,
    tmp: &Path,
    id: &str,
    now: SystemTime,
    started: Instant,
    progress: &mut dyn FnMut(&str),
) -> Result<Manifest, ReleaseError> {
    let src = &app.cwd;
    std::fs::create_dir_all(tmp).map_err(io("create", tmp))?;
    let mut commit = git_commit(src);
    let mut dirty = false;
    if let Some(c) = checkout {
        progress(&format!(
            "copying the files of git revision {}",
            &c.commit[..c.commit.len().min(12)]
        ));
        commit = Some(c.commit.clone());
        copy_tree(&c.dir, tmp, &app.releases.dir)?;
    } else if let Some(commit) = &commit {
        let prefix = git(src, &["rev-parse", "--show-prefix"]).unwrap_or_default();
        progress(&format!(
            "copying the files of git revision {}",
            &commit[..commit.len().min(12)]
        ));
        git_archive(src, &format!("{commit}:{prefix}"), tmp)?;
        dirty = git(
            src,
            &["status", "--porcelain", "--untracked-files=no", "--", "."],
        )
        .is_some_and(|s| !s.is_empty());
    } else {
        progress(&format!("copying {}", src.display()));
        copy_tree(src, tmp, &app.releases.dir)?;
    }
    let commands = build_commands(app, tmp);
    for line in &commands {
        progress(&format!("running `{line}`"));
        run_build_command(app, line, tmp)?;
    }
    for s in &app.releases.shared {
        link_shared(app, tmp, s)?;
    }
    progress("computing the checksum");
    let sum = checksum(tmp)?;
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        app: app.name.clone(),
        id: id.to_owned(),
        created: humantime::format_rfc3339_seconds(now).to_string(),
        created_unix: unix(now),
        kind: KIND_FILES.to_owned(),
        exe: String::new(),
        size: sum.bytes,
        git_commit: commit,
        git_dirty: dirty,
        assets: Vec::new(),
        system: String::new(),
        entry: String::new(),
        build_secs: started.elapsed().as_secs_f64(),
        build: commands,
        files: sum.files,
        checksum: sum.hex,
        shared: app.releases.shared.clone(),
    };
    write_manifest(tmp, &manifest)?;
    Ok(manifest)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<(), ReleaseError> {
    let json = serde_json::to_vec_pretty(m).expect("a manifest always serializes");
    let mpath = dir.join(MANIFEST);
    crate::layout::write_atomic(&mpath, &json).map_err(io("write", &mpath))
}

/// `git archive TREE | tar -x -C dest`.
fn git_archive(src: &Path, tree: &str, dest: &Path) -> Result<(), ReleaseError> {
    let mut archive = without_git_env(&mut Command::new("git"))
        .args(["archive", "--format=tar", tree])
        .current_dir(src)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("run git archive in", src))?;
    let out = archive.stdout.take().expect("piped");
    let tar = Command::new("tar")
        .args(["-x", "-f", "-", "-C"])
        .arg(dest)
        .stdin(Stdio::from(out))
        .stderr(Stdio::piped())
        .output()
        .map_err(io("run tar into", dest))?;
    let mut err = String::new();
    if let Some(mut e) = archive.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let status = archive.wait().map_err(io("run git archive in", src))?;
    if !status.success() || !tar.status.success() {
        return Err(ReleaseError::CommandFailed {
            command: format!(
                "git archive {tree} | tar -x: {}{}",
                err.trim(),
                String::from_utf8_lossy(&tar.stderr).trim()
            ),
            status: if status.success() { tar.status } else { status }.to_string(),
            dir: src.to_path_buf(),
        });
    }
    Ok(())
}

/// Copies `src` into `dest` minus `.git/`, `.windlass/`, `skip` and what `.gitignore` excludes.
fn copy_tree(src: &Path, dest: &Path, skip: &Path) -> Result<(), ReleaseError> {
    let skip = std::path::absolute(skip).unwrap_or_else(|_| skip.to_path_buf());
    let state = skip.parent().map(Path::to_path_buf);
    let walk = ignore::WalkBuilder::new(src)
        .hidden(false)
        .git_ignore(true)
        .git_global(false)
        .git_exclude(true)
        .require_git(false)
        .parents(false)
        .follow_links(false)
        .filter_entry(move |e| {
            let name = e.file_name();
            if e.depth() > 0 && (name == ".git" || name == ".windlass") {
                return false;
            }
            let abs = std::path::absolute(e.path()).unwrap_or_else(|_| e.path().to_path_buf());
            abs != skip && Some(&abs) != state.as_ref()
        })
        .build();
    for entry in walk {
        let entry = entry.map_err(|e| ReleaseError::Io {
            action: "read",
            path: src.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry.path().strip_prefix(src).unwrap_or(entry.path());
        let to = dest.join(rel);
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_dir() {
            std::fs::create_dir_all(&to).map_err(io("create", &to))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(entry.path()).map_err(io("read", entry.path()))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io("create", &to))?;
        } else if ft.is_file() {
            std::fs::copy(entry.path(), &to).map_err(io("copy", entry.path()))?;
        }
    }
    Ok(())
}

/// Runs one build line (`sh -c`) in `dir` with the app's environment; its output goes to
/// this process's stderr as it comes.
fn run_build_command(app: &AppConfig, line: &str, dir: &Path) -> Result<(), ReleaseError> {
    use std::os::fd::AsFd;
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io("duplicate stderr for", dir))?;
    let stdout = stderr
        .try_clone()
        .map_err(io("duplicate stderr for", dir))?;
    let status = without_git_env(&mut Command::new("sh"))
        .arg("-c")
        .arg(line)
        .current_dir(dir)
        .envs(app.env.iter().map(|(k, v)| (k, v)))
        .env(envvars::APP, &app.name)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .status()
        .map_err(io("run a build command in", dir))?;
    if !status.success() {
        return Err(ReleaseError::CommandFailed {
            command: line.to_owned(),
            status: status.to_string(),
            dir: app.cwd.clone(),
        });
    }
    Ok(())
}

/// Replaces `rel` in the release being built by a relative symlink to the app's shared
/// directory (`../../shared/<app>/rel` from a top-level entry), made if missing.
fn link_shared(app: &AppConfig, tmp: &Path, rel: &str) -> Result<(), ReleaseError> {
    let target_abs = app.releases.shared_dir.join(rel);
    std::fs::create_dir_all(&target_abs).map_err(io("create", &target_abs))?;
    let link = tmp.join(rel);
    if let Ok(meta) = std::fs::symlink_metadata(&link) {
        if meta.is_dir() {
            std::fs::remove_dir_all(&link).map_err(io("remove", &link))?;
        } else {
            std::fs::remove_file(&link).map_err(io("remove", &link))?;
        }
    }
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    // From the link's folder up to the state directory: one `..` per folder of `rel`, plus
    // the release's own folder and `releases/`.
    let depth = Path::new(rel).components().count() - 1 + 2;
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    let shared_rel = app
        .releases
        .shared_dir
        .strip_prefix(app.releases.dir.parent().unwrap_or(Path::new("")))
        .unwrap_or(&app.releases.shared_dir);
    target.push(shared_rel);
    target.push(rel);
    std::os::unix::fs::symlink(&target, &link).map_err(io("create", &link))
}

/// A release's files, bytes and checksum.
pub struct Sum {
    pub files: u64,
    pub bytes: u64,
    pub hex: String,
}

/// `sha256:` over every entry of `dir` but the manifest, in path order: `F path\0sha256`
/// for a file, `L path\0target` for a symlink.
pub fn checksum(dir: &Path) -> Result<Sum, ReleaseError> {
    let mut entries = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io("read", &d))? {
            let e = e.map_err(io("read", &d))?;
            let ft = e.file_type().map_err(io("read", &e.path()))?;
            if ft.is_dir() {
                stack.push(e.path());
            } else {
                entries.push((e.path(), ft.is_symlink()));
            }
        }
    }
    let rel = |p: &Path| {
        p.strip_prefix(dir)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    entries.sort_by_key(|a| rel(&a.0));
    let mut total = Sha256::new();
    let (mut files, mut bytes) = (0, 0);
    for (path, link) in entries {
        let name = rel(&path);
        if name == MANIFEST {
            continue;
        }
        if link {
            let t = std::fs::read_link(&path).map_err(io("read", &path))?;
            total.update(format!("L {name}\0{}\n", t.display()));
        } else {
            let mut f = std::fs::File::open(&path).map_err(io("read", &path))?;
            let mut h = Sha256::new();
            let n = std::io::copy(&mut f, &mut h).map_err(io("read", &path))?;
            files += 1;
            bytes += n;
            total.update(format!("F {name}\0{:x}\n", h.finalize()));
        }
    }
    Ok(Sum {
        files,
        bytes,
        hex: format!("sha256:{:x}", total.finalize()),
    })
}

/// Builds a new release of the Lisp app `app`: the executable and its assets in
/// `releases/<id>/`, with its manifest; then prunes old releases.
async fn build_lisp(
    app: &AppConfig,
    checkout: Option<&Checkout>,
    progress: &mut dyn Progress,
) -> Result<Release, ReleaseError> {
    let lisp = app.lisp.as_ref().expect("checked by build");
    let dir = &app.releases.dir;
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let now = SystemTime::now();
    let id = new_id(dir, now);
    let tmp = dir.join(format!(".build-{id}-{}", std::process::id()));
    let mut spec = BuildSpec::new(lisp.app.clone());
    spec.sbcl = lisp.sbcl.clone();
    spec.swank = lisp.swank_port.is_some();
    spec.cache_dir = Some(lisp.cache_dir.clone());
    progress.step(&format!(
        "building an executable of system {} (asdf:make); with a warm fasl cache this takes about 10 s",
        lisp.app.system
    ));
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
    let sum = match checksum(&tmp) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let manifest = Manifest {
        version: MANIFEST_VERSION,
        app: app.name.clone(),
        id: id.clone(),
        created: humantime::format_rfc3339_seconds(now).to_string(),
        created_unix: unix(now),
        kind: KIND_LISP.to_owned(),
        exe: file_name(&built.exe),
        size: built.size,
        git_commit: checkout
            .map(|c| c.commit.clone())
            .or_else(|| git_commit(&lisp.project_dir)),
        git_dirty: checkout.is_none()
            && git(
                &lisp.project_dir,
                &["status", "--porcelain", "--untracked-files=no", "--", "."],
            )
            .is_some_and(|s| !s.is_empty()),
        assets: built.assets.iter().map(|a| file_name(a)).collect(),
        system: lisp.app.system.clone(),
        entry: lisp.app.entry.clone(),
        build_secs: built.duration.as_secs_f64(),
        build: vec![format!("asdf:make {}", lisp.app.system)],
        files: sum.files,
        checksum: sum.hex,
        shared: Vec::new(),
    };
    if let Err(e) = write_manifest(&tmp, &manifest) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let final_dir = dir.join(&id);
    std::fs::rename(&tmp, &final_dir).map_err(io("rename into place", &final_dir))?;
    prune_after_build(app)?;
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
            kind: KIND_FILES.into(),
            exe: "x".into(),
            size: 1,
            git_commit: None,
            git_dirty: false,
            assets: vec![],
            system: "s".into(),
            entry: "p:f".into(),
            build_secs: 1.0,
            build: vec![],
            files: 1,
            checksum: String::new(),
            shared: vec![],
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
        let removed = prune(dir.path(), "web", 2, &["a1".to_owned()]).expect("prune");
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

    fn app_in(dir: &Path, extra: &str) -> AppConfig {
        let file = dir.join("windlass.toml");
        std::fs::write(&file, format!("[app.a]\ncommand = \"x\"\n{extra}")).expect("write");
        let config = crate::config::load(&file).expect("config");
        config.apps[0].clone()
    }

    #[test]
    fn build_commands_default_by_stack_and_the_build_key_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(build_commands(&app_in(dir.path(), ""), dir.path()).is_empty());
        std::fs::write(dir.path().join("package-lock.json"), "{}").expect("write");
        assert_eq!(
            build_commands(&app_in(dir.path(), ""), dir.path()),
            ["npm ci"]
        );
        std::fs::write(dir.path().join("Cargo.toml"), "").expect("write");
        assert_eq!(
            build_commands(&app_in(dir.path(), ""), dir.path()),
            ["cargo build --release"]
        );
        let own = app_in(dir.path(), "build = [\"make\"]\nshared = [\"a/b\"]\n");
        assert_eq!(build_commands(&own, dir.path()), ["make"]);
        assert_eq!(own.releases.shared, ["a/b"]);
    }

    #[test]
    fn shared_entries_must_stay_inside_the_release() {
        let dir = tempfile::tempdir().expect("tempdir");
        for bad in ["../x", "/abs", ""] {
            let file = dir.path().join("windlass.toml");
            std::fs::write(
                &file,
                format!("[app.a]\ncommand = \"x\"\nshared = [\"{bad}\"]\n"),
            )
            .expect("write");
            let e = crate::config::load(&file).expect_err(bad).to_string();
            assert!(e.contains("not a plain relative path"), "{e}");
        }
    }

    #[test]
    fn a_shared_link_is_relative_to_the_state_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = app_in(dir.path(), "shared = [\"public/uploads\"]\n");
        let tmp = dir.path().join(".windlass/releases/.build-x");
        std::fs::create_dir_all(tmp.join("public/uploads")).expect("mkdir");
        link_shared(&app, &tmp, "public/uploads").expect("link");
        assert_eq!(
            std::fs::read_link(tmp.join("public/uploads")).expect("link"),
            Path::new("../../../shared/a/public/uploads")
        );
        assert!(
            dir.path()
                .join(".windlass/shared/a/public/uploads")
                .is_dir()
        );
    }
}
