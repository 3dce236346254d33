//! `watch = [globs]`: reload an app when files matching its globs change (development).
//!
//! One inotify-backed watcher (the `notify` crate) on the project directory feeds a task that
//! matches changed paths against each app's globs (relative to the project directory, `**`
//! spans directories) and fires once per app after `debounce` of quiet: an editor's save that
//! writes several files, or a `git pull`, triggers one reload. SBCL judges staleness with a
//! 1-second resolution, so the debounce is at least one second. windlass's own directory,
//! `.git` and `target` are never watched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobSet, GlobSetBuilder};
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Default quiet period before a reload fires.
pub const DEBOUNCE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("invalid watch glob `{glob}`: {reason}")]
    Glob { glob: String, reason: String },
    #[error("cannot watch {}: {reason}", path.display())]
    Watch { path: PathBuf, reason: String },
}

/// Compiles an app's globs (also used by config validation).
pub fn compile(globs: &[String]) -> Result<GlobSet, WatchError> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let glob = globset::GlobBuilder::new(g.trim_start_matches("./"))
            .literal_separator(true)
            .build()
            .map_err(|e| WatchError::Glob {
                glob: g.clone(),
                reason: e.kind().to_string(),
            })?;
        b.add(glob);
    }
    b.build().map_err(|e| WatchError::Glob {
        glob: globs.join(", "),
        reason: e.to_string(),
    })
}

/// A running watcher; dropping it stops watching.
pub struct WatchHandle {
    _watcher: notify::RecommendedWatcher,
    _task: tokio::task::JoinHandle<()>,
}

/// Watches `root` and sends an app's name on `fire` once its files settle after a change.
pub fn spawn(
    root: &Path,
    apps: Vec<(String, Vec<String>)>,
    debounce: Duration,
    fire: mpsc::Sender<String>,
) -> Result<Option<WatchHandle>, WatchError> {
    let mut sets: Vec<(String, GlobSet)> = Vec::new();
    for (app, globs) in apps {
        if !globs.is_empty() {
            sets.push((app, compile(&globs)?));
        }
    }
    if sets.is_empty() {
        return Ok(None);
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            for p in ev.paths {
                // The receiver is gone only when windlass stops watching.
                let _ = tx.send(p);
            }
        }
    })
    .map_err(|e| WatchError::Watch {
        path: root.to_path_buf(),
        reason: e.to_string(),
    })?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(|e| WatchError::Watch {
            path: root.to_path_buf(),
            reason: e.to_string(),
        })?;
    let root = root.to_path_buf();
    let debounce = debounce.max(DEBOUNCE);
    let task = tokio::spawn(async move {
        let mut pending: HashMap<String, Instant> = HashMap::new();
        loop {
            let next = pending.values().min().copied();
            tokio::select! {
                p = rx.recv() => {
                    let Some(p) = p else { return };
                    let Some(rel) = relevant(&root, &p) else { continue };
                    for (app, set) in &sets {
                        if set.is_match(&rel) {
                            pending.insert(app.clone(), Instant::now() + debounce);
                        }
                    }
                }
                _ = async { tokio::time::sleep_until(next.expect("guarded by the if")).await }, if next.is_some() => {
                    let now = Instant::now();
                    let due: Vec<String> = pending.iter().filter(|(_, t)| **t <= now).map(|(a, _)| a.clone()).collect();
                    for app in due {
                        pending.remove(&app);
                        if fire.send(app).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(Some(WatchHandle {
        _watcher: watcher,
        _task: task,
    }))
}

/// The path relative to the project, unless it is one windlass ignores.
fn relevant(root: &Path, p: &Path) -> Option<PathBuf> {
    let rel = p.strip_prefix(root).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    if matches!(first, ".windlass" | ".git" | "target") {
        return None;
    }
    Some(rel.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_relative_paths_and_stars_do_not_cross_directories() {
        let set = compile(&["src/**/*.lisp".into(), "*.asd".into()]).expect("globs");
        assert!(set.is_match("src/a/b.lisp"));
        assert!(set.is_match("src/b.lisp"));
        assert!(set.is_match("app.asd"));
        assert!(!set.is_match("sub/app.asd"));
        assert!(!set.is_match("src/b.py"));
        assert!(compile(&["src/[".into()]).is_err());
    }

    #[test]
    fn windlass_own_files_are_ignored() {
        let root = Path::new("/p");
        assert_eq!(relevant(root, Path::new("/p/.windlass/logs/a.log")), None);
        assert_eq!(
            relevant(root, Path::new("/p/src/a.lisp")),
            Some(PathBuf::from("src/a.lisp"))
        );
    }

    #[tokio::test]
    async fn a_burst_of_changes_fires_once_after_the_quiet_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canon");
        std::fs::create_dir(root.join("src")).expect("mkdir");
        let (tx, mut rx) = mpsc::channel(8);
        let _h = spawn(
            &root,
            vec![
                ("web".into(), vec!["src/**/*.py".into()]),
                ("other".into(), vec!["*.rb".into()]),
            ],
            DEBOUNCE,
            tx,
        )
        .expect("watch")
        .expect("some");
        for i in 0..5 {
            std::fs::write(root.join("src").join(format!("m{i}.py")), "x").expect("write");
        }
        std::fs::write(root.join("ignored.txt"), "x").expect("write");
        let fired = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("fires")
            .expect("app");
        assert_eq!(fired, "web");
        // Only one reload for the burst, and nothing for `other`.
        assert!(
            tokio::time::timeout(Duration::from_millis(1500), rx.recv())
                .await
                .is_err()
        );
    }
}
