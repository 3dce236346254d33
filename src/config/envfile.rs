//! `.env` files: `KEY=VALUE` lines, `#` comments, an optional `export ` prefix, and single or
//! double quotes around values (double-quoted values understand `\n`, `\"` and `\\`).

use std::io;
use std::path::Path;

pub fn read(path: &Path) -> io::Result<Vec<(String, String)>> {
    parse(&std::fs::read_to_string(path)?).map_err(|(line, msg)| {
        io::Error::new(io::ErrorKind::InvalidData, format!("line {line}: {msg}"))
    })
}

pub fn parse(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((k, v)) = t.split_once('=') else {
            return Err((i + 1, format!("expected KEY=VALUE, got `{t}`")));
        };
        let k = k.trim();
        if !super::valid_env_name(k) {
            return Err((i + 1, format!("invalid variable name `{k}`")));
        }
        let v = v.trim();
        let v = if let Some(inner) = v.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            let mut s = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    match chars.next() {
                        Some('n') => s.push('\n'),
                        Some(o) => s.push(o),
                        None => s.push('\\'),
                    }
                } else {
                    s.push(c);
                }
            }
            s
        } else if let Some(inner) = v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
            inner.to_owned()
        } else {
            // Unquoted: an inline comment starts at ` #`.
            v.split(" #").next().unwrap_or("").trim_end().to_owned()
        };
        out.retain(|(ek, _)| ek != k);
        out.push((k.to_owned(), v));
    }
    Ok(out)
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
}
