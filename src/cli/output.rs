//! Output conventions: colour only on a terminal and never with `NO_COLOR`; human sizes and
//! durations; aligned tables; and text that apps control (their output, exit messages, what
//! a reload reported) made harmless before it reaches a terminal ([`sanitize`]): an app that
//! logs a decoded request path must not be able to move the operator's cursor, fake lines
//! or write their clipboard (OSC 52).

use std::borrow::Cow;
use std::fmt::Write as _;
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

/// True for what a terminal may act on rather than show: C0 controls except tab, DEL, and
/// the C1 controls (U+0080..U+009F; U+009B is a one-character CSI for some terminals).
fn is_control(c: char) -> bool {
    (c < ' ' && c != '\t') || ('\u{7f}'..='\u{9f}').contains(&c)
}

/// One line of app-controlled text, safe to print on a terminal: every control character
/// (see [`is_control`]; ESC included, so no escape sequence survives) is shown as `\xNN`.
/// Tab and every printable character are kept. Borrowed when there is nothing to escape.
pub fn sanitize(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if is_control(c) {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// [`sanitize`] for text of several lines: the line breaks are kept (a CR before one is
/// dropped), everything else is escaped.
pub fn sanitize_text(s: &str) -> String {
    s.split('\n')
        .map(|l| sanitize(l.strip_suffix('\r').unwrap_or(l)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// JSON text with DEL and the C1 controls in its strings written as `\u00XX`: serde_json
/// escapes C0 but emits those as is, and a terminal showing the JSON could act on them.
/// Still valid JSON meaning the same thing (they only occur inside strings).
pub fn json_for_terminal(json: &str) -> Cow<'_, str> {
    if !json.chars().any(is_control) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if ('\u{7f}'..='\u{9f}').contains(&c) {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
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
    use crate::testrng::Rng;

    fn assert_terminal_safe(out: &str, input: &[u8]) {
        for b in out.bytes() {
            assert!(
                b >= 0x20 && b != 0x7f || b == b'\t',
                "byte {b:#x} left in {out:?} (from {input:?})"
            );
        }
        for c in out.chars() {
            assert!(
                !('\u{80}'..='\u{9f}').contains(&c),
                "C1 {c:?} left in {out:?} (from {input:?})"
            );
        }
    }

    #[test]
    fn escape_sequences_are_made_visible() {
        let osc52 = "path=/\x1b]52;c;ZWNobyBwd25lZA==\x07 done";
        assert_eq!(
            sanitize(osc52),
            "path=/\\x1b]52;c;ZWNobyBwd25lZA==\\x07 done"
        );
        assert_eq!(
            sanitize("a\tb\u{9b}31m\u{7f}\r\n"),
            "a\tb\\x9b31m\\x7f\\x0d\\x0a"
        );
        assert!(matches!(sanitize("plain é ✓"), Cow::Borrowed(_)));
        assert_eq!(sanitize_text("one\r\ntwo\x1b\n"), "one\ntwo\\x1b\n");
        assert_eq!(
            json_for_terminal("{\"line\":\"a\u{9b}b\"}"),
            "{\"line\":\"a\\u009bb\"}"
        );
    }

    /// Property: whatever the bytes (random, and biased towards ESC, BEL, C1 and broken
    /// UTF-8), the output holds no control byte but tab, no DEL and no C1 code point.
    #[test]
    fn sanitised_output_never_holds_a_control_character() {
        const ALPHABET: &[&[u8]] = &[
            b"\x1b",
            b"]52;c;",
            b"\x07",
            b"[2J",
            b"\xc2\x9b",
            b"\xc2\x85",
            b"\x7f",
            b"\t",
            b"\r",
            b"\n",
            b"\xff",
            b"\xe2\x82",
            b"\xf0\x9f\x98\x80",
            b"a",
            b"\\",
            b"\x00",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let len = (rng.next() % 40) as usize;
            let mut input = Vec::with_capacity(len * 2);
            for _ in 0..len {
                if rng.next() % 2 == 0 {
                    input.push((rng.next() & 0xff) as u8);
                } else {
                    input.extend_from_slice(ALPHABET[(rng.next() as usize) % ALPHABET.len()]);
                }
            }
            let lossy = String::from_utf8_lossy(&input);
            assert_terminal_safe(&sanitize(&lossy), &input);
            let json = serde_json::to_string(&lossy).expect("json");
            assert_terminal_safe(&json_for_terminal(&json), &input);
            for line in sanitize_text(&lossy).split('\n') {
                assert_terminal_safe(line, &input);
            }
        }
    }

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
