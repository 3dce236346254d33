//! The project's files on disk (DESIGN.md, "Files"): where the state directory is, the name of
//! every file and folder windlass keeps in it, and the one way they are written atomically.
//!
//! Everything lives in `.windlass/` beside the config (or in `$WINDLASS_DIR`): the project
//! `lock`, `windlass.pid`, `control.sock`, the detached supervisor's `windlass.log`, `logs/`
//! (`APP.log`, rotated `APP.log.1`...), `releases/`, the Lisp fasl `cache/` and the Lisp
//! runtime file's `lisp/`. A leaf: it imports nothing from the crate, so every room can use it
//! (the layering test in `lib.rs` checks this), and a new file is one edit here.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Overrides the directory windlass keeps its files in (default `.windlass` beside the config).
pub const STATE_DIR_ENV: &str = "WINDLASS_DIR";

/// The state directory of one project, and the paths inside it.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The layout of the project rooted at `root` (the config file's directory):
    /// `$WINDLASS_DIR`, else `root/.windlass`.
    pub fn of_root(root: &Path) -> Layout {
        let dir = match std::env::var_os(STATE_DIR_ENV) {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => root.join(".windlass"),
        };
        Layout { dir }
    }

    /// The state directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The control API's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The running supervisor's pid.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("windlass.pid")
    }

    /// The file whose `flock` makes one supervisor per project.
    pub fn lock_file(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// The detached supervisor's own output.
    pub fn daemon_log(&self) -> PathBuf {
        self.dir.join("windlass.log")
    }

    /// The apps' log files ([`log_path`], [`rotated_path`]).
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Built releases, one folder per release.
    pub fn releases_dir(&self) -> PathBuf {
        self.dir.join("releases")
    }

    /// An app's persistent directories (`shared = [...]`), linked into each of its releases.
    pub fn shared_dir(&self, app: &str) -> PathBuf {
        self.dir.join("shared").join(app)
    }

    /// The Lisp apps' fasl cache (their `XDG_CACHE_HOME`) unless the config sets one.
    pub fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Where the Lisp runtime file is written for source-mode apps.
    pub fn lisp_dir(&self) -> PathBuf {
        self.dir.join("lisp")
    }
}

/// An app's current log file in `logs_dir`.
pub fn log_path(logs_dir: &Path, app: &str) -> PathBuf {
    logs_dir.join(format!("{app}.log"))
}

/// An app's `k`-th rotated log file (`k >= 1`) in `logs_dir`.
pub fn rotated_path(logs_dir: &Path, app: &str, k: u32) -> PathBuf {
    logs_dir.join(format!("{app}.log.{k}"))
}

/// Writes `contents` to `path` atomically: a temp file beside it, fsync, rename, then fsync of
/// the directory, so a crash leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_the_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("windlass.toml");
        std::fs::write(&file, "old").expect("write");
        write_atomic(&file, b"new").expect("write_atomic");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("windlass.toml")]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The target is a non-empty directory: rename onto it fails after the temp is written.
        let target = dir.path().join("t");
        std::fs::create_dir(&target).expect("mkdir");
        std::fs::write(target.join("keep"), "x").expect("write");
        assert!(write_atomic(&target, b"new").is_err());
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec![std::ffi::OsString::from("t")]);
    }

    #[test]
    fn files_live_in_the_state_dir() {
        let l = Layout {
            dir: PathBuf::from("/p/.windlass"),
        };
        assert_eq!(l.socket(), Path::new("/p/.windlass/control.sock"));
        assert_eq!(l.pid_file(), Path::new("/p/.windlass/windlass.pid"));
        assert_eq!(l.lock_file(), Path::new("/p/.windlass/lock"));
        assert_eq!(l.daemon_log(), Path::new("/p/.windlass/windlass.log"));
        assert_eq!(l.releases_dir(), Path::new("/p/.windlass/releases"));
        assert_eq!(l.cache_dir(), Path::new("/p/.windlass/cache"));
        assert_eq!(l.lisp_dir(), Path::new("/p/.windlass/lisp"));
        let logs = l.logs_dir();
        assert_eq!(
            log_path(&logs, "web"),
            Path::new("/p/.windlass/logs/web.log")
        );
        assert_eq!(
            rotated_path(&logs, "web", 2),
            Path::new("/p/.windlass/logs/web.log.2")
        );
    }
}
