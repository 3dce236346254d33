//! The guide cannot drift from the code: every ```toml block of the configuration reference
//! loads with windlass's own loader, every key the config accepts is documented, and every
//! `windlass ...` command line in the guide, the README and the help texts parses.
//!
//! Commands that are announced but not built yet are written with a `# coming` comment (in a
//! code block) or followed by `(coming` (inline), and are skipped.

use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use windlass::cli::Cli;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown file under docs/.
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read docs dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    let mut out = vec![root().join("README.md")];
    walk(&root().join("docs"), &mut out);
    out.sort();
    out
}

/// The fenced code blocks of a Markdown text: (info string, body, first line number).
fn code_blocks(text: &str) -> Vec<(String, String, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => current = Some((info.trim().to_owned(), String::new(), i + 2)),
            }
        } else if let Some((_, body, _)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[test]
fn every_toml_example_in_the_guide_loads() {
    let mut checked = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("read markdown");
        for (info, body, line) in code_blocks(&text) {
            if info != "toml" {
                continue;
            }
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join(".env"), "SECRET=x\n").expect("write .env");
            let config = dir.path().join("windlass.toml");
            std::fs::write(&config, &body).expect("write config");
            if let Err(e) = windlass::config::load(&config) {
                panic!(
                    "{}:{line}: this ```toml block does not load:\n{e}",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "only {checked} toml blocks found");
}

/// Every key a raw config table accepts, read from serde's own "expected one of" message, so
/// that a key added to `src/config/raw.rs` shows up here without a hand-kept list.
fn accepted_keys(wrap: &dyn Fn(&str) -> String) -> Vec<String> {
    let err = toml::from_str::<windlass::config::raw::RawConfig>(&wrap("zz_not_a_key = 1"))
        .expect_err("an unknown key is refused")
        .to_string();
    let expected = err
        .split_once("expected")
        .unwrap_or_else(|| panic!("no key list in: {err}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Puts a `key = value` line where a table's keys go.
type Wrap = Box<dyn Fn(&str) -> String>;

#[test]
fn every_config_key_is_in_the_reference() {
    let reference =
        std::fs::read_to_string(root().join("docs/configuration.md")).expect("reference");
    let app = "[app.web]\ncommand = \"x\"\n";
    let tables: Vec<(&str, Wrap)> = vec![
        ("", Box::new(|k| k.to_owned())),
        ("app.NAME.", Box::new(move |k| format!("{app}{k}\n"))),
        (
            "app.NAME.backoff.",
            Box::new(move |k| format!("{app}backoff = {{ {k} }}\n")),
        ),
        (
            "app.NAME.stop.",
            Box::new(move |k| format!("{app}stop = {{ {k} }}\n")),
        ),
        (
            "app.NAME.health.",
            Box::new(move |k| format!("{app}health = {{ {k} }}\n")),
        ),
        (
            "app.NAME.logs.",
            Box::new(move |k| format!("{app}logs = {{ {k} }}\n")),
        ),
        ("admin.", Box::new(|k| format!("[admin]\n{k}\n"))),
        ("logs.", Box::new(|k| format!("[logs]\n{k}\n"))),
        ("deploy.", Box::new(|k| format!("[deploy]\n{k}\n"))),
    ];
    let mut missing = Vec::new();
    let mut total = 0;
    for (prefix, wrap) in &tables {
        let keys = accepted_keys(wrap.as_ref());
        assert!(!keys.is_empty(), "no keys found for `{prefix}`");
        for k in keys {
            total += 1;
            let full = format!("`{prefix}{k}`");
            if !reference.contains(&full) {
                missing.push(full);
            }
        }
    }
    assert!(total > 20, "only {total} keys found");
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document {missing:?}: add a row for each"
    );
}

/// `windlass ...` command lines: in code blocks (after an optional `$ `) and in inline code.
fn command_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut in_block = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            let t = t.strip_prefix("$ ").unwrap_or(t);
            if t.starts_with("windlass ") || t == "windlass" {
                let comment = t.split_once(" #").map(|(_, c)| c).unwrap_or("");
                if !comment.contains("coming") {
                    out.push((i + 1, t.to_owned()));
                }
            }
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find('`') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('`') else { break };
            let span = &after[..end];
            let tail = &after[end + 1..];
            if (span.starts_with("windlass ") || span == "windlass")
                && !tail.trim_start().starts_with("(coming")
            {
                out.push((i + 1, span.to_owned()));
            }
            rest = tail;
        }
    }
    out
}

/// Parses one documented command line: cut at the first shell operator or comment, split like
/// a shell, hand to clap.
fn parses(line: &str) -> Result<(), String> {
    let mut cut = line.len();
    for op in [" #", " |", " >", " &&", " ;", " 2>"] {
        if let Some(i) = line.find(op) {
            cut = cut.min(i);
        }
    }
    let words = shlex::split(&line[..cut]).ok_or("unbalanced quotes")?;
    if words.iter().any(|w| w.contains("...") || w.contains('[')) {
        // A synopsis (`windlass up [-d] [APP...]`), not an example.
        return Ok(());
    }
    match Cli::try_parse_from(&words) {
        Ok(_) => Ok(()),
        // `windlass --help`, `windlass --version`, a bare `windlass`: valid, they print.
        Err(e)
            if !e.use_stderr()
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[test]
fn every_documented_command_line_parses() {
    let mut failures = Vec::new();
    let mut count = 0;
    for file in markdown_files() {
        let text = std::fs::read_to_string(&file).expect("read markdown");
        for (line, cmd) in command_lines(&text) {
            count += 1;
            if let Err(e) = parses(&cmd) {
                failures.push(format!("{}:{line}: `{cmd}`: {e}", file.display()));
            }
        }
    }
    // The examples in every command's long help, too.
    let cli = Cli::command();
    let mut helps = vec![cli.get_after_help().map(|h| h.to_string())];
    for sub in cli.get_subcommands() {
        helps.push(sub.get_after_long_help().map(|h| h.to_string()));
        helps.push(sub.get_after_help().map(|h| h.to_string()));
    }
    for help in helps.into_iter().flatten() {
        for l in help.lines() {
            let t = l.trim();
            if t.starts_with("windlass ") {
                count += 1;
                // Help examples are followed by their explanation after two spaces.
                let cmd = t.split("  ").next().unwrap_or(t);
                if let Err(e) = parses(cmd) {
                    failures.push(format!("help example `{cmd}`: {e}"));
                }
            }
        }
    }
    assert!(count > 30, "only {count} command lines found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_subcommand_has_a_summary_and_examples() {
    let cli = Cli::command();
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        assert!(
            sub.get_about().is_some(),
            "`windlass {name}` has no summary line"
        );
        let examples = sub
            .get_after_long_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(
            examples.contains("windlass "),
            "`windlass {name} --help` has no example"
        );
    }
}

#[test]
fn the_extractor_finds_and_skips_what_it_should() {
    let md = "Run `windlass up -d` now; `windlass attach web` (coming).\n```sh\n$ windlass logs -f\nwindlass repl web   # coming\n```\n";
    let found: Vec<String> = command_lines(md).into_iter().map(|(_, c)| c).collect();
    assert_eq!(found, ["windlass up -d", "windlass logs -f"]);
    assert!(parses("windlass nope").is_err());
    assert!(parses("windlass status --json | jq .").is_ok());
}

/// README's "Layout" is a map of `src/`: every source file and folder is named in it, and
/// every `name.rs` it names exists (a renamed or deleted module cannot leave it stale).
#[test]
fn readme_layout_names_every_source_file_and_only_those() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let start = readme
        .find("## Layout\n")
        .expect("README has a Layout section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let src = root().join("src");
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs" || x == "lisp") {
                out.push(p);
            }
        }
    }
    walk(&src, &mut files);
    let mut missing = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).expect("under src");
        let name = rel.file_name().expect("file name").to_string_lossy();
        let top = rel.components().next().expect("a component");
        let top = top.as_os_str().to_string_lossy();
        let named = if rel.components().count() == 1 {
            section.contains(&format!("`{name}`"))
        } else {
            // `proxy/` and, inside its row, `server.rs`, or a verb named without `.rs`.
            let stem = name.trim_end_matches(".rs");
            section.contains(&format!("`{top}/`"))
                && (name == "mod.rs"
                    || section.contains(&format!("`{name}`"))
                    || section.contains(&format!("`{stem}`")))
        };
        if !named {
            missing.push(rel.display().to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "README Layout does not name: {missing:?}"
    );
    // Every `something.rs` the section names is a file under src/.
    let names: Vec<String> = files
        .iter()
        .flat_map(|f| {
            [
                f.file_name().expect("name").to_string_lossy().into_owned(),
                f.strip_prefix(&src)
                    .expect("under src")
                    .display()
                    .to_string(),
            ]
        })
        .collect();
    for cited in section.split('`').skip(1).step_by(2) {
        if cited.ends_with(".rs") && !names.iter().any(|n| n == cited) {
            panic!("README Layout names `{cited}`, which is not in src/");
        }
    }
}
