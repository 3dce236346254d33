//! The crate's layering rule, checked by reading the source (tests only).
//!
//! The lower rooms ([`LOWER`]: config, wire types, logs, proxy, Lisp, health checks and the
//! on-disk layout) never name the upper ones ([`UPPER`]: supervisor, daemon, control API, admin
//! listener, metrics, CLI), so each can be read, tested and changed without the machinery
//! above it, and no import cycle runs through the whole crate. The test reads every file under
//! `src/` and looks at each `crate::` path (in `use` lines and inline, grouped `crate::{a, b}`
//! included); comments are skipped, so a doc link is not an import. `scripts/import-graph.sh`
//! prints the whole graph.

use std::path::{Path, PathBuf};

/// Modules that must not depend on [`UPPER`].
const LOWER: [&str; 7] = [
    "config", "protocol", "logs", "proxy", "lisp", "health", "layout",
];

/// Modules that build on the lower ones.
const UPPER: [&str; 6] = ["supervisor", "daemon", "control", "admin", "metrics", "cli"];

/// The top-level modules named by `crate::` paths in `source`, with their 1-based lines.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            rest = &rest[at + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `windlass_crate::`, not ours
            }
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c, d::{e}}`: the first name of each top-level item. A group
                // split over lines continues on the next ones.
                let mut depth = 0;
                let mut item_start = true;
                let text: String = group
                    .chars()
                    .chain(
                        source
                            .lines()
                            .skip(i + 1)
                            .flat_map(|l| l.split("//").next().unwrap_or("").chars().chain([' '])),
                    )
                    .collect();
                let mut word = String::new();
                for c in text.chars() {
                    if c.is_alphanumeric() || c == '_' {
                        if item_start && depth == 0 {
                            word.push(c);
                        }
                        continue;
                    }
                    if !word.is_empty() {
                        out.push((i + 1, std::mem::take(&mut word)));
                        item_start = false;
                    }
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item_start = true,
                        _ => {}
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push((i + 1, name));
                }
            }
        }
    }
    out
}

/// The top-level module a file under `src/` belongs to (`config/validate.rs` -> `config`).
fn room(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap_or(file);
    let first = rel
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `file:line: lower imports upper` in `src`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let room = room(src, &f);
        if !LOWER.contains(&room.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read source");
        for (line, target) in crate_paths(&text) {
            if UPPER.contains(&target.as_str()) {
                out.push(format!(
                    "{}:{line}: `{room}` imports `crate::{target}`",
                    f.display()
                ));
            }
        }
    }
    out
}

#[test]
fn lower_modules_never_import_upper_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = violations(&src);
    assert!(
        found.is_empty(),
        "the layering rule (src/layering.rs) is broken:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_reader_sees_every_form_of_path() {
    let src = "use crate::supervisor::Supervisor;\n\
               use crate::{config::Config, daemon,\n    metrics::{self, M}};\n\
               fn f() { crate::cli::exit::OK; }\n\
               // crate::admin in a comment\n\
               /// [`crate::control`] in a doc link\n\
               let x = other_crate::admin;\n";
    let names: Vec<(usize, String)> = crate_paths(src);
    let names: Vec<(usize, &str)> = names.iter().map(|(l, n)| (*l, n.as_str())).collect();
    assert_eq!(
        names,
        [
            (1, "supervisor"),
            (2, "config"),
            (2, "daemon"),
            (2, "metrics"),
            (4, "cli")
        ]
    );
}

#[test]
fn a_violation_is_reported_with_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("config")).expect("mkdir");
    std::fs::write(
        dir.path().join("config/validate.rs"),
        "use crate::lisp::x;\nuse crate::daemon::write_atomic;\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("daemon.rs"), "use crate::config;\n").expect("write");
    let found = violations(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("config/validate.rs:2: `config` imports `crate::daemon`"),
        "{found:?}"
    );
}
