//! `.env` files: `KEY=VALUE` lines, `#` comments, an optional `export ` prefix, and single or
//! double quotes around values (double-quoted values understand `\n`, `\"` and `\\`).
//!
//! These files hold secrets, so an error names the file, the line and (when it is a valid
//! name) the key, and never quotes the line or the value.

use std::path::{Path, PathBuf};

/// Why an env file cannot be used. The text never contains a value from the file.
#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

pub fn read(path: &Path) -> Result<Vec<(String, String)>, EnvFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text).map_err(|(line, problem)| EnvFileError::Line {
        path: path.to_path_buf(),
        line,
        problem,
    })
}

/// The variables of `text`, or the first bad line (1-based) and what is wrong with it;
/// the message names the key when it is a valid name, and never quotes the value.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            return Err((
                i + 1,
                "expected KEY=VALUE (the line is not shown: it may hold a secret)".to_owned(),
            ));
        };
        let k = k.trim();
        if !super::valid_env_name(k) {
            return Err((
                i + 1,
                "invalid variable name before `=`: use letters, digits and `_`, not starting with a digit (the line is not shown: it may hold a secret)".to_owned(),
            ));
        }
        let v = v.trim();
        let v = match v.chars().next() {
            Some(q @ ('"' | '\'')) => {
                let (value, rest) = quoted(&v[1..], q).ok_or_else(|| {
                    (
                        i + 1,
                        format!(
                            "the value of `{k}` opens a {q} quote that the line does not close"
                        ),
                    )
                })?;
                let rest = rest.trim_start();
                if !(rest.is_empty() || rest.starts_with('#')) {
                    return Err((
                        i + 1,
                        format!("the value of `{k}` has text after its closing quote"),
                    ));
                }
                value
            }
            // Unquoted: an inline comment starts at ` #`.
            _ => v.split(" #").next().unwrap_or("").trim_end().to_owned(),
        };
        if v.contains('\0') {
            // The OS cannot pass it: the app would never start.
            return Err((
                i + 1,
                format!(
                    "the value of `{k}` holds a NUL byte, which an environment variable cannot carry"
                ),
            ));
        }
        out.retain(|(ek, _)| ek != k);
        out.push((k.to_owned(), v));
    }
    Ok(out)
}

/// The value of a quoted string that starts after its opening quote `q`, and the text after
/// its closing quote; `None` when it is not closed. Double quotes understand `\n`, `\"`
/// and `\\`; single quotes take everything literally.
fn quoted(s: &str, q: char) -> Option<(String, &str)> {
    let mut value = String::with_capacity(s.len());
    let mut chars = s.char_indices();
    while let Some((at, c)) = chars.next() {
        if c == q {
            return Some((value, &s[at + c.len_utf8()..]));
        }
        if c == '\\' && q == '"' {
            match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, o)) => value.push(o),
                None => return None,
            }
        } else {
            value.push(c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parses_the_common_forms() {
        let v = parse("# c\nA=1\nexport B = \"x\\ny\"\nC='$HOME'\nD=plain # note\nA=2\n")
            .expect("valid");
        assert_eq!(
            v,
            vec![
                ("B".into(), "x\ny".into()),
                ("C".into(), "$HOME".into()),
                ("D".into(), "plain".into()),
                ("A".into(), "2".into()),
            ]
        );
    }

    #[test]
    fn reports_the_bad_line() {
        assert_eq!(parse("A=1\nnonsense\n").map_err(|e| e.0), Err(2));
    }

    #[test]
    fn errors_never_quote_the_secret() {
        for (text, line, key) in [
            ("A=1\nsk_live_SECRET\n", 2, None),
            ("A=1\n\nsk-live SECRET=x\n", 3, None),
            ("TOKEN=\"sk_live_SECRET\n", 1, Some("TOKEN")),
            ("export TOKEN='sk_live_SECRET\n", 1, Some("TOKEN")),
        ] {
            let (n, msg) = parse(text).expect_err(text);
            assert_eq!(n, line, "{text}");
            assert!(!msg.contains("SECRET"), "{msg}");
            if let Some(k) = key {
                assert!(msg.contains(k), "{msg}");
            }
        }
        // A lone quote character is a value too.
        assert_eq!(parse("Q=\"\n").map_err(|e| e.0), Err(1));
        assert_eq!(parse("Q=\"\"\n").expect("empty")[0].1, "");
        assert_eq!(parse("Q=\"a b\" # note\n").expect("comment")[0].1, "a b");
        let (_, msg) = parse("Q=\"x\"SECRET\n").expect_err("trailing text");
        assert!(msg.contains("`Q`") && !msg.contains("SECRET"), "{msg}");
    }
}
