//! Config errors a person can act on: what is wrong, where (file:line:column, with the line
//! quoted and the span underlined) and what to do next (a did-you-mean or a hint).

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem at one place in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column (in characters).
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
    /// The source line, for display.
    pub source_line: String,
    /// How many characters to underline.
    pub width: usize,
}

impl Diagnostic {
    /// Builds a diagnostic for the byte range `span` of `text`.
    pub fn at(
        file: &Path,
        text: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        help: Option<String>,
    ) -> Diagnostic {
        let span = span.unwrap_or(0..0);
        let start = floor_char_boundary(text, span.start.min(text.len()));
        let end = floor_char_boundary(text, span.end.clamp(start, text.len()));
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        let line = text[..start].matches('\n').count() + 1;
        let column = text[line_start..start].chars().count() + 1;
        let width = text[start..end.min(line_end).max(start)]
            .chars()
            .count()
            .max(1);
        Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
            help,
            source_line: masked(
                text,
                line_start,
                text[line_start..line_end].trim_end_matches('\r'),
            ),
            width,
        }
    }
}

/// The line as shown under an error: quoted values masked (`"*****"`, same width, so the
/// underline still points at the right place) when the line can hold a secret: an `env`
/// key or a line in an `env` table, or `token` (the admin token).
fn masked(text: &str, line_start: usize, line: &str) -> String {
    if !holds_secrets(text, line_start, line) {
        return line.to_owned();
    }
    let mut out = String::with_capacity(line.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in line.chars() {
        match quote {
            Some(_) if escaped => {
                escaped = false;
                out.push('*');
            }
            Some('"') if c == '\\' => {
                escaped = true;
                out.push('*');
            }
            Some(q) if c == q => {
                quote = None;
                out.push(c);
            }
            Some(_) => out.push('*'),
            None => {
                if c == '"' || c == '\'' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

/// True for a line whose key is `env`/`env.X`/`token`, or that sits in a table named
/// `[...env]` (the nearest header above it).
fn holds_secrets(text: &str, line_start: usize, line: &str) -> bool {
    let key = line.trim_start();
    let key = key.split(['=', '.', ' ', '\t']).next().unwrap_or("");
    if matches!(key.trim_matches('"'), "env" | "token") {
        return true;
    }
    text[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .is_some_and(|header| {
            let name = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("");
            let name = name.trim();
            name == "env" || name.ends_with(".env")
        })
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        writeln!(
            f,
            "  --> {}:{}:{}",
            self.file.display(),
            self.line,
            self.column
        )?;
        if !self.source_line.is_empty() {
            let num = self.line.to_string();
            let pad = " ".repeat(num.len());
            writeln!(f, " {pad} |")?;
            writeln!(f, " {num} | {}", self.source_line)?;
            writeln!(
                f,
                " {pad} | {}{}",
                " ".repeat(self.column.saturating_sub(1)),
                "^".repeat(self.width)
            )?;
        }
        if let Some(help) = &self.help {
            writeln!(f, "  = help: {help}")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong while finding, reading or validating a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no windlass.toml or Procfile found in {searched}\n  = help: run `windlass init` to write one for this project, or pass -f FILE"
    )]
    NotFound { searched: String },
    #[error(
        "found {} but {} is owned by uid {owner}, not you (uid {uid}): windlass does not run a config another user can change\n  = help: run with --file {} if you trust it",
        file.display(),
        owner_of.display(),
        file.display()
    )]
    Untrusted {
        /// The config file that was refused.
        file: PathBuf,
        /// The file or directory whose owner is not the user.
        owner_of: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

impl ConfigError {
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid(d) => d,
            _ => &[],
        }
    }
}

fn render(diags: &[Diagnostic]) -> String {
    let mut out = String::new();
    for d in diags {
        out.push_str(&d.to_string());
    }
    if diags.len() > 1 {
        out.push_str(&format!("{} errors in the config\n", diags.len()));
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_that_can_hold_secrets_are_shown_with_their_values_masked() {
        let text = "[app.a]\nenv = { K = \"s3\\\"cret\", N = [1] }\n[app.a.env]\nX = 'abc'\n[admin]\ntoken = \"tok\"\nlisten = \"x\"\n";
        let shown = |needle: &str| {
            let at = text.find(needle).expect("in text");
            Diagnostic::at(Path::new("w.toml"), text, Some(at..at + 1), "bad", None).source_line
        };
        assert_eq!(shown("N = "), "env = { K = \"********\", N = [1] }");
        assert_eq!(shown("X = "), "X = '***'");
        assert_eq!(shown("token"), "token = \"***\"");
        // Other lines are quoted as they are.
        assert_eq!(shown("listen"), "listen = \"x\"");
    }

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = "a = 1\n[app.wéb]\ncomand = \"x\"\n";
        let start = text.find("comand").expect("in text");
        let d = Diagnostic::at(
            Path::new("w.toml"),
            text,
            Some(start..start + 6),
            "bad",
            None,
        );
        assert_eq!((d.line, d.column, d.width), (3, 1, 6));
        assert_eq!(d.source_line, "comand = \"x\"");
        let s = d.to_string();
        assert!(s.contains("--> w.toml:3:1"), "{s}");
        assert!(s.contains("^^^^^^"), "{s}");
    }

    #[test]
    fn spans_past_the_end_do_not_panic() {
        let d = Diagnostic::at(Path::new("w"), "é", Some(1..99), "m", None);
        assert_eq!(d.line, 1);
    }
}
