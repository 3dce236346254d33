//! The committed completions and man page match what the CLI definition generates now.
//! `UPDATE_CONTRIB=1 cargo test --test it contrib` rewrites them.

use std::path::Path;

use crate::helper::*;

#[test]
fn completions_and_man_page_have_not_drifted_from_the_cli() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let update = std::env::var_os("UPDATE_CONTRIB").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (path, generated) in windlass::cli::contrib_files().expect("generate contrib files") {
        let file = root.join(path);
        if update {
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(&file, &generated).expect("write contrib file");
            continue;
        }
        if std::fs::read(&file).ok().as_deref() != Some(&generated[..]) {
            stale.push(path);
        }
    }
    assert!(
        stale.is_empty(),
        "out of date with the CLI definition: {stale:?}\n\
         regenerate with: UPDATE_CONTRIB=1 cargo test --test it contrib\n\
         (or `windlass completions bash > contrib/completions/windlass.bash`, `windlass man > contrib/man/windlass.1`)"
    );
}

#[test]
fn completions_command_prints_the_committed_script() {
    let p = Project::empty();
    let o = p.run(&["completions", "bash"]);
    assert_eq!(o.status.code(), Some(0));
    let committed = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/completions/windlass.bash"),
    )
    .expect("committed bash completions");
    assert_eq!(o.stdout, committed);
    let o = p.run(&["completions", "tcsh"]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}
