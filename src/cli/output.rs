//! Output conventions: colour only on a terminal and never with `NO_COLOR`; human sizes and
//! durations; aligned tables.

use std::io::IsTerminal;
use std::time::Duration;

use crate::config::envvars;
use crate::protocol::State;

/// True when stdout should get ANSI colours.
pub fn color_stdout() -> bool {
    std::env::var_os(envvars::NO_COLOR).is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal()
}

/// True when stderr should get ANSI colours.
pub fn color_stderr() -> bool {
    std::env::var_os(envvars::NO_COLOR).is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal()
}

/// Wraps `s` in an SGR colour code when `on`.
pub fn paint(on: bool, code: &str, s: &str) -> String {
    if on {
        format!("\x1b[{code}m{s}\x1b[0m")
    } else {
        s.to_owned()
    }
}

pub const BOLD: &str = "1";
pub const DIM: &str = "2";
pub const RED: &str = "31";
pub const GREEN: &str = "32";
pub const YELLOW: &str = "33";

/// A stable colour per app name, foreman-style.
pub fn app_color(name: &str) -> &'static str {
    const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "91"];
    let h = name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    PALETTE[(h as usize) % PALETTE.len()]
}

pub fn state_color(s: State) -> &'static str {
    match s {
        State::Running => GREEN,
        State::Starting | State::Stopping | State::Backoff => YELLOW,
        State::Crashloop | State::Fatal => RED,
        State::Stopped | State::Exited => DIM,
    }
}

/// `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `3s`, `5m`, `2h`, `4d`: the largest unit only.
pub fn since(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

pub fn dur(d: Duration) -> String {
    crate::supervisor::instance::human(d)
}

/// Prints rows as left-aligned columns; widths ignore ANSI codes.
pub fn table(rows: &[Vec<String>]) -> String {
    let visible = |s: &str| {
        let mut n = 0;
        let mut in_esc = false;
        for c in s.chars() {
            if c == '\x1b' {
                in_esc = true;
            } else if in_esc {
                if c == 'm' {
                    in_esc = false;
                }
            } else {
                n += 1;
            }
        }
        n
    };
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| visible(s))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < r.len() {
                line.push_str(&" ".repeat(widths[i] - visible(cell) + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(since(59.9), "59s");
        assert_eq!(since(7200.0), "2h");
        let t = table(&[
            vec!["a".into(), "bb".into()],
            vec![paint(true, RED, "ccc"), "d".into()],
        ]);
        assert_eq!(t, "a    bb\n\x1b[31mccc\x1b[0m  d\n");
    }
}
