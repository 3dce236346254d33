//! `windlass repl APP [--eval FORM]`: a line REPL into a running Lisp image over swank.
//!
//! The swank port comes from the config (`swank_port`, plus the instance index), and swank
//! listens on 127.0.0.1 only, so over ssh the same command simply runs on the server: no
//! tunnel to set up. A form may span several lines: input is read until its parentheses
//! balance.

use std::io::{BufRead, IsTerminal, Write};

use super::output::sanitize_text;
use super::{CliError, ProjectArg, Result, exit, load_config};
use crate::lisp::swank::{SwankClient, SwankError};

/// Evaluate Lisp in a running app over swank: a REPL, or one form with --eval.
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "Needs `swank_port` in the app's config (swank then listens on
127.0.0.1:swank_port+INSTANCE inside the app's image). Exit status with --eval: 0, or 1 when
the form signals an error (the condition is printed).

Examples:
  windlass repl hello
  windlass repl hello --eval '(setf hello-lisp::*version* \"2\")'
  ssh prod windlass repl hello --eval '(room)'"
)]
pub struct Args {
    /// The app's name, as in the config.
    pub app: String,
    /// Evaluate this form, print its values and exit.
    #[arg(short, long, value_name = "FORM")]
    pub eval: Option<String>,
    /// Which instance (0-based).
    #[arg(long, default_value_t = 0)]
    pub instance: u32,
    /// The package forms are read and evaluated in.
    #[arg(short, long, default_value = "COMMON-LISP-USER")]
    pub package: String,
    #[command(flatten)]
    pub project: ProjectArg,
}

pub async fn run(args: Args) -> Result {
    let config = load_config(args.project.file.as_ref())?;
    let app = config
        .app(&args.app)
        .ok_or_else(|| CliError::new(exit::USAGE, format!("no app named `{}`", args.app)))?;
    let lisp = app.lisp.as_ref().ok_or_else(|| {
        CliError::new(
            exit::USAGE,
            format!("app `{}` is not a Common Lisp app", args.app),
        )
        .with_hint("`windlass repl` talks swank to apps with `lisp = { system, entry }`; for any app's console use `windlass attach`")
    })?;
    let addr = lisp.swank_addr(args.instance).ok_or_else(|| {
        CliError::new(
            exit::USAGE,
            format!("app `{}` has no `swank_port`", args.app),
        )
        .with_hint(format!(
            "add swank_port = 4005 to [app.{}] and restart it, or use `windlass attach {}`",
            args.app, args.app
        ))
    })?;
    let mut client = SwankClient::connect(addr).await.map_err(|e| {
        CliError::new(exit::FAILURE, e.to_string()).with_hint(format!(
            "is app `{}` running? (`windlass status`); swank starts once the system is loaded",
            args.app
        ))
    })?;
    client.set_timeout(std::time::Duration::from_secs(3600));
    if let Some(form) = &args.eval {
        return Ok(if eval_print(&mut client, form, &args.package).await? {
            exit::OK
        } else {
            exit::FAILURE
        });
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "connected to {} (swank {addr}); one form per line, Ctrl-D to quit",
            args.app
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let prompt = format!("{}> ", args.app);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lines = stdin.lock().lines();
        loop {
            if interactive {
                eprint!("{prompt}");
                let _ = std::io::stderr().flush();
            }
            let mut form = String::new();
            loop {
                match lines.next() {
                    Some(Ok(l)) => {
                        form.push_str(&l);
                        form.push('\n');
                    }
                    _ => {
                        if !form.trim().is_empty() {
                            let _ = tx.blocking_send(form);
                        }
                        return;
                    }
                }
                if balanced(&form) {
                    break;
                }
                if interactive {
                    eprint!("{}", " ".repeat(prompt.len()));
                    let _ = std::io::stderr().flush();
                }
            }
            if form.trim().is_empty() {
                continue;
            }
            if tx.blocking_send(form).is_err() || ready_rx.recv().is_err() {
                return;
            }
        }
    });
    let mut failures = 0u32;
    while let Some(form) = rx.recv().await {
        if !eval_print(&mut client, &form, &args.package).await? {
            failures += 1;
        }
        let _ = ready_tx.send(());
    }
    Ok(if failures > 0 && !interactive {
        exit::FAILURE
    } else {
        exit::OK
    })
}

/// Evaluates one form and prints its output and values; false on a Lisp error.
async fn eval_print(client: &mut SwankClient, form: &str, package: &str) -> Result<bool> {
    match client.eval(form, package).await {
        Ok(r) => {
            // What the image prints is shown, never obeyed: escape sequences are made visible.
            print!("{}", sanitize_text(&r.output));
            if !r.output.is_empty() && !r.output.ends_with('\n') {
                println!();
            }
            println!("{}", sanitize_text(&r.value));
            Ok(true)
        }
        Err(SwankError::LispError { condition, output }) => {
            print!("{}", sanitize_text(&output));
            eprintln!("error: {}", sanitize_text(condition.trim()));
            Ok(false)
        }
        Err(SwankError::Aborted { reason, output }) => {
            print!("{}", sanitize_text(&output));
            eprintln!("error: evaluation aborted: {}", sanitize_text(&reason));
            Ok(false)
        }
        Err(e) => Err(CliError::new(exit::FAILURE, e.to_string())),
    }
}

/// True when `text`'s parentheses balance (outside strings, `|symbols|`, `#\c` characters
/// and comments): the form is complete. Extra closing parentheses count as complete too,
/// so the reader reports them.
pub fn balanced(text: &str) -> bool {
    let mut depth: i64 = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' | '|' => {
                let mut closed = false;
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return false;
                }
            }
            ';' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '#' if chars.peek() == Some(&'\\') => {
                chars.next();
                chars.next();
            }
            '#' if chars.peek() == Some(&'|') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for d in chars.by_ref() {
                    if prev == '|' && d == '#' {
                        closed = true;
                        break;
                    }
                    prev = d;
                }
                if !closed {
                    return false;
                }
            }
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
    }
    depth <= 0
}

#[cfg(test)]
mod tests {
    use super::balanced;

    #[test]
    fn forms_are_complete_when_parens_balance() {
        assert!(balanced("(+ 1 2)\n"));
        assert!(!balanced("(defun f ()\n"));
        assert!(balanced("(f \")(\")"));
        assert!(balanced("(f #\\( )"));
        assert!(!balanced("(f ; )\n"));
        assert!(!balanced("\"open"));
        assert!(balanced("#| ( |# 1"));
        assert!(balanced("*version*"));
        assert!(balanced("(f))"));
    }
}
