//! Common Lisp detection: an ASDF system (`*.asd`), run from source with SBCL.
//!
//! Kept to one small function on purpose: richer Lisp support (a `lisp = { system, entry }`
//! key, executable builds, swank) replaces it later. Cookbook-style apps (a `run.lisp` that
//! loads the system and reads `PROJECT_PORT`) are run exactly as the Cookbook does.

use std::path::Path;

use super::{AppPlan, Command, list_files, mentions};

/// Detects an ASDF system in `dir`.
pub fn detect(dir: &Path) -> Option<(AppPlan, Vec<String>)> {
    let asds: Vec<String> = list_files(dir, "asd")
        .into_iter()
        .filter(|f| !f.ends_with("-test.asd") && !f.ends_with("-tests.asd"))
        .collect();
    let asd = asds.first()?.clone();
    let system = asd.trim_end_matches(".asd").to_owned();
    let mut found = vec![format!("ASDF system `{system}` ({asd})")];
    let port_env = if mentions(dir, &["lisp", "asd"], "PROJECT_PORT") {
        found.push("the code reads PROJECT_PORT (Lisp Cookbook style)".into());
        "PROJECT_PORT"
    } else {
        "PORT"
    };
    let plan = if dir.join("run.lisp").is_file() {
        found.push("run.lisp: windlass runs it as the Cookbook does".into());
        AppPlan {
            command: Command::Argv(
                [
                    "sbcl",
                    "--noinform",
                    "--non-interactive",
                    "--load",
                    "run.lisp",
                ]
                .map(String::from)
                .to_vec(),
            ),
            comment: vec![
                "run from source: run.lisp loads the system and starts the server".into(),
            ],
            port_env: port_env.into(),
            ..AppPlan::web()
        }
    } else {
        AppPlan {
            command: Command::Argv(vec![
                "sbcl".into(),
                "--noinform".into(),
                "--non-interactive".into(),
                "--eval".into(),
                "(require \"asdf\")".into(),
                "--eval".into(),
                format!("(asdf:load-asd (merge-pathnames \"{asd}\" (uiop:getcwd)))"),
                "--eval".into(),
                format!("(asdf:load-system \"{system}\")"),
                "--eval".into(),
                format!("(progn ({system}:start) (sleep most-positive-fixnum))"),
            ]),
            comment: vec![
                "loads the system from source, then calls its entry point and waits".into(),
            ],
            fill_in: Some(format!(
                "the entry point: replace `({system}:start)` with the function that starts your server"
            )),
            port_env: port_env.into(),
            ..AppPlan::web()
        }
    };
    Some((plan, found))
}
