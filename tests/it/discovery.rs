//! Config discovery trusts only what the user controls: a `Procfile` or `windlass.toml`
//! planted by another account in a parent directory (the class of git's CVE-2022-24765) is
//! refused with a hint naming it, never run; the user's own project still works from any
//! subdirectory.

use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::helper::*;

/// The uid of `nobody`: another account than the one running the tests (root in CI).
const OTHER_UID: u32 = 65534;

/// `windlass ARGS` run in `dir`.
fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("NO_COLOR")
        .env_remove("WINDLASS_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run windlass")
}

/// A temp dir owned by [`OTHER_UID`] holding `planted` (owned by the same account), and a
/// subdirectory of it owned by the current user, with no config of its own. `None` when
/// this process may not give files away (not root): then the scenario cannot be built.
fn planted(name: &str, contents: &str) -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    let top = tempfile::tempdir().expect("tempdir");
    let file = top.path().join(name);
    std::fs::write(&file, contents).expect("write planted file");
    let sub = top.path().join("mine");
    std::fs::create_dir(&sub).expect("mkdir");
    if let Err(e) = chown(top.path(), Some(OTHER_UID), Some(OTHER_UID))
        .and_then(|()| chown(&file, Some(OTHER_UID), Some(OTHER_UID)))
    {
        eprintln!("skipped: cannot chown to uid {OTHER_UID} ({e}); run the tests as root");
        return None;
    }
    Some((top, file, sub))
}

fn assert_refused(o: &Output, file: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(2),
        "stdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(err.contains(&format!("found {}", file.display())), "{err}");
    assert!(err.contains(&format!("owned by uid {OTHER_UID}")), "{err}");
    assert!(err.contains(&format!("--file {}", file.display())), "{err}");
}

#[test]
fn a_procfile_planted_in_a_parent_owned_by_another_user_is_refused() {
    let Some((top, file, sub)) = planted("Procfile", "web: touch planted-ran; exec sleep 1000\n")
    else {
        return;
    };
    for args in [&["check"][..], &["up"], &["status"], &["logs"]] {
        assert_refused(&run_in(&sub, args), &file);
    }
    assert!(!sub.join("planted-ran").exists() && !top.path().join("planted-ran").exists());
    assert!(
        !top.path().join(".windlass").exists(),
        "nothing is created beside the planted file"
    );
}

#[test]
fn a_windlass_toml_planted_in_a_parent_owned_by_another_user_is_refused() {
    let Some((_top, file, sub)) = planted(
        "windlass.toml",
        "[app.evil]\ncommand = [\"sh\", \"-c\", \"touch planted-ran; exec sleep 1000\"]\n",
    ) else {
        return;
    };
    for args in [&["check"][..], &["up"], &["status"], &["down"]] {
        assert_refused(&run_in(&sub, args), &file);
    }
    assert!(!sub.join("planted-ran").exists());
    // -f is the way to say "I trust it".
    let o = run_in(&sub, &["check", "-f", file.to_str().expect("utf-8 path")]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_config_file_owned_by_another_user_in_my_own_directory_is_refused() {
    let p = Project::empty();
    let file = p.write("Procfile", "web: exec sleep 1000\n");
    let sub = p.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    if chown(&file, Some(OTHER_UID), Some(OTHER_UID)).is_err() {
        eprintln!("skipped: cannot chown; run the tests as root");
        return;
    }
    assert_refused(&run_in(&sub, &["check"]), &file);
    assert_refused(&run_in(p.path(), &["check"]), &file);
}

#[test]
fn my_own_project_still_works_from_its_subdirectories() {
    let p = Project::new("[app.web]\ncommand = [\"sleep\", \"1000\"]\n");
    let deep = p.path().join("a/b/c");
    std::fs::create_dir_all(&deep).expect("mkdir");
    let o = run_in(&deep, &["check"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok (1 app: web)"));
    // No supervisor runs: the CLI looked for this project's socket, not another one.
    let o = run_in(&deep, &["status"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn nothing_found_exits_2_and_says_where_the_search_stopped() {
    let Some((_top, _file, sub)) = planted("unrelated.txt", "") else {
        return;
    };
    let o = run_in(&sub, &["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no windlass.toml or Procfile found"), "{err}");
    assert!(err.contains(&format!("owned by uid {OTHER_UID}")), "{err}");
    assert!(err.contains("windlass init"), "{err}");
}
