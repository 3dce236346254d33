//! A minimal s-expression reader and printer for the swank wire protocol and for the
//! values the generated Lisp forms return. It owns only the syntax a Lisp printer
//! produces for data (lists, strings with backslash escapes, symbols, keywords,
//! numbers, `#\c`, `#(...)`, `#:sym`, quote) and treats every input as untrusted: swank
//! replies and app output can be anything, so malformed, truncated or hostile input
//! (deep nesting, huge tokens) yields a [`SexpError`], never a panic.
//!
//! Memory is bounded by the input: the reader walks the text in place (no per-character
//! copy), nesting is capped at [`MAX_DEPTH`] and a datum at [`MAX_NODES`] atoms and lists,
//! so a 16 MiB message of `()()()...` cannot become hundreds of MiB of nodes.

use std::fmt;

/// Nesting deeper than this is rejected rather than risking the stack.
pub const MAX_DEPTH: usize = 256;
/// A datum with more atoms and lists than this is rejected (a node is 32 bytes; swank's
/// messages have a few hundred, its largest, `:indentation-update`, a few thousand).
pub const MAX_NODES: usize = 1 << 18;

/// One Lisp datum as read from text.
#[derive(Debug, Clone, PartialEq)]
pub enum Sexp {
    /// `( ... )`, also `#( ... )`. The empty list is `List(vec![])`.
    List(Vec<Sexp>),
    /// `"..."` with escapes resolved.
    String(String),
    /// A keyword without its leading colon, as written (`:OK` → `"OK"`).
    Keyword(String),
    /// Any other symbol as written, package prefix included (`swank:foo`, `nil`, `t`).
    Symbol(String),
    /// An integer that fits in i64.
    Integer(i64),
    /// Any other number token (floats, ratios, bignums), kept as text.
    Number(String),
}

/// Why some text is not one readable datum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SexpError {
    #[error("unexpected end of input at byte {0}")]
    Eof(usize),
    #[error("unexpected `{found}` at byte {at}")]
    Unexpected { found: char, at: usize },
    #[error("nesting deeper than {MAX_DEPTH} at byte {0}")]
    TooDeep(usize),
    #[error("more than {MAX_NODES} atoms and lists (at byte {0})")]
    TooLarge(usize),
    #[error("trailing text after the datum at byte {0}")]
    Trailing(usize),
    #[error("unsupported `#{found}` syntax at byte {at}")]
    Dispatch { found: char, at: usize },
}

impl Sexp {
    /// True for the symbol `nil` (any case) and the empty list.
    pub fn is_nil(&self) -> bool {
        match self {
            Sexp::Symbol(s) => s.eq_ignore_ascii_case("nil"),
            Sexp::List(items) => items.is_empty(),
            _ => false,
        }
    }

    /// True when this is the keyword `name` (case-insensitive, no colon).
    pub fn is_keyword(&self, name: &str) -> bool {
        matches!(self, Sexp::Keyword(k) if k.eq_ignore_ascii_case(name))
    }

    pub fn as_list(&self) -> Option<&[Sexp]> {
        match self {
            Sexp::List(items) => Some(items),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Sexp::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Sexp::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// Non-negative integers, bignums included when they fit in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Sexp::Integer(n) => u64::try_from(*n).ok(),
            Sexp::Number(text) => text.trim_end_matches('.').parse().ok(),
            _ => None,
        }
    }

    /// Look `key` up in a property list `(:k1 v1 :k2 v2 ...)`.
    pub fn plist_get(&self, key: &str) -> Option<&Sexp> {
        self.as_list()?
            .chunks(2)
            .find(|pair| pair[0].is_keyword(key))
            .and_then(|pair| pair.get(1))
    }

    /// A Lisp string literal for `text`.
    pub fn string_literal(text: &str) -> String {
        let mut out = String::with_capacity(text.len() + 2);
        out.push('"');
        for c in text.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        out
    }
}

impl fmt::Display for Sexp {
    /// Prints readable Lisp text (the inverse of [`parse`] for what it produces).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sexp::List(items) => {
                f.write_str("(")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(")")
            }
            Sexp::String(s) => f.write_str(&Sexp::string_literal(s)),
            Sexp::Keyword(k) => write!(f, ":{k}"),
            Sexp::Symbol(s) | Sexp::Number(s) => f.write_str(s),
            Sexp::Integer(n) => write!(f, "{n}"),
        }
    }
}

/// Read exactly one datum from `input` (surrounding whitespace allowed).
pub fn parse(input: &str) -> Result<Sexp, SexpError> {
    let mut reader = Reader {
        input,
        pos: 0,
        len: input.len(),
        nodes: 0,
    };
    let value = reader.read(0)?;
    reader.skip_whitespace();
    match reader.peek() {
        None => Ok(value),
        Some((at, _)) => Err(SexpError::Trailing(at)),
    }
}

/// A cursor over the text: `pos` is a byte offset, always on a character boundary.
struct Reader<'a> {
    input: &'a str,
    pos: usize,
    len: usize,
    /// Atoms and lists read so far.
    nodes: usize,
}

fn is_terminator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '"' | '\'' | ';' | '`' | ',')
}

impl Reader<'_> {
    fn peek(&self) -> Option<(usize, char)> {
        self.input
            .get(self.pos..)
            .and_then(|rest| rest.chars().next())
            .map(|c| (self.pos, c))
    }

    fn next(&mut self) -> Option<(usize, char)> {
        let item = self.peek();
        if let Some((_, c)) = item {
            self.pos += c.len_utf8();
        }
        item
    }

    /// Steps over the character `c` just peeked.
    fn skip(&mut self, c: char) {
        self.pos += c.len_utf8();
    }

    fn offset(&self) -> usize {
        self.peek().map_or(self.len, |(at, _)| at)
    }

    fn skip_whitespace(&mut self) {
        while let Some((_, c)) = self.peek() {
            if c.is_whitespace() {
                self.skip(c);
            } else if c == ';' {
                while let Some((_, c)) = self.next() {
                    if c == '\n' {
                        break;
                    }
                }
            } else {
                break;
            }
        }
    }

    fn read(&mut self, depth: usize) -> Result<Sexp, SexpError> {
        if depth > MAX_DEPTH {
            return Err(SexpError::TooDeep(self.offset()));
        }
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(SexpError::TooLarge(self.offset()));
        }
        self.skip_whitespace();
        let (at, c) = self.next().ok_or(SexpError::Eof(self.len))?;
        match c {
            '(' => self.read_list(depth),
            ')' => Err(SexpError::Unexpected { found: c, at }),
            '"' => self.read_string().map(Sexp::String),
            '\'' => {
                let quoted = self.read(depth + 1)?;
                Ok(Sexp::List(vec![Sexp::Symbol("quote".into()), quoted]))
            }
            '#' => self.read_dispatch(depth, at),
            _ => {
                self.pos = at;
                self.read_atom()
            }
        }
    }

    fn read_list(&mut self, depth: usize) -> Result<Sexp, SexpError> {
        let mut items = Vec::new();
        loop {
            self.skip_whitespace();
            match self.peek() {
                None => return Err(SexpError::Eof(self.len)),
                Some((_, ')')) => {
                    self.pos += 1;
                    return Ok(Sexp::List(items));
                }
                Some(_) => items.push(self.read(depth + 1)?),
            }
        }
    }

    fn read_string(&mut self) -> Result<String, SexpError> {
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(SexpError::Eof(self.len)),
                Some((_, '"')) => return Ok(out),
                Some((_, '\\')) => match self.next() {
                    None => return Err(SexpError::Eof(self.len)),
                    Some((_, escaped)) => out.push(escaped),
                },
                Some((_, c)) => out.push(c),
            }
        }
    }

    fn read_dispatch(&mut self, depth: usize, at: usize) -> Result<Sexp, SexpError> {
        match self.next() {
            None => Err(SexpError::Eof(self.len)),
            Some((_, '(')) => self.read_list(depth),
            Some((_, '\\')) => {
                // #\c or #\Name: one char, then any constituent chars.
                let (_, first) = self.next().ok_or(SexpError::Eof(self.len))?;
                let mut name = format!("#\\{first}");
                while let Some((_, c)) = self.peek() {
                    if is_terminator(c) {
                        break;
                    }
                    name.push(c);
                    self.skip(c);
                }
                Ok(Sexp::Symbol(name))
            }
            Some((_, ':')) => match self.read_atom()? {
                Sexp::Symbol(name) => Ok(Sexp::Symbol(format!("#:{name}"))),
                other => Ok(other),
            },
            Some((_, '\'')) => {
                let quoted = self.read(depth + 1)?;
                Ok(Sexp::List(vec![Sexp::Symbol("function".into()), quoted]))
            }
            Some((_, found)) => Err(SexpError::Dispatch { found, at }),
        }
    }

    fn read_atom(&mut self) -> Result<Sexp, SexpError> {
        let mut token = String::new();
        let mut escaped = false;
        while let Some((_, c)) = self.peek() {
            match c {
                '|' => {
                    escaped = true;
                    self.skip(c);
                    loop {
                        match self.next() {
                            None => return Err(SexpError::Eof(self.len)),
                            Some((_, '|')) => break,
                            Some((_, '\\')) => {
                                let (_, e) = self.next().ok_or(SexpError::Eof(self.len))?;
                                token.push(e);
                            }
                            Some((_, c)) => token.push(c),
                        }
                    }
                }
                '\\' => {
                    escaped = true;
                    self.skip(c);
                    let (_, e) = self.next().ok_or(SexpError::Eof(self.len))?;
                    token.push(e);
                }
                c if is_terminator(c) => break,
                c => {
                    token.push(c);
                    self.skip(c);
                }
            }
        }
        if token.is_empty() && !escaped {
            let (at, found) = self.peek().ok_or(SexpError::Eof(self.len))?;
            return Err(SexpError::Unexpected { found, at });
        }
        if !escaped {
            if let Ok(n) = token.parse::<i64>() {
                return Ok(Sexp::Integer(n));
            }
            if looks_numeric(&token) {
                return Ok(Sexp::Number(token));
            }
            if let Some(name) = token.strip_prefix(':') {
                return Ok(Sexp::Keyword(name.to_string()));
            }
        }
        Ok(Sexp::Symbol(token))
    }
}

/// Integers with a trailing dot, ratios, floats with exponent markers, bignums.
fn looks_numeric(token: &str) -> bool {
    let body = token.strip_prefix(['+', '-']).unwrap_or(token);
    body.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && body.chars().any(|c| c.is_ascii_digit())
        && body.chars().all(|c| {
            c.is_ascii_digit()
                || matches!(
                    c,
                    '.' | '/'
                        | 'e'
                        | 'E'
                        | 'd'
                        | 'D'
                        | 'f'
                        | 'F'
                        | 's'
                        | 'S'
                        | 'l'
                        | 'L'
                        | '+'
                        | '-'
                )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testrng::Rng;

    #[test]
    fn reads_a_swank_return() {
        let value = parse(r#"(:return (:ok ("out\"put\\" "42")) 7)"#).expect("parses");
        let items = value.as_list().expect("list");
        assert!(items[0].is_keyword("return"));
        assert_eq!(items[2], Sexp::Integer(7));
        let ok = items[1].as_list().expect("list");
        assert!(ok[0].is_keyword("OK"));
        let pair = ok[1].as_list().expect("list");
        assert_eq!(pair[0].as_str(), Some("out\"put\\"));
    }

    #[test]
    fn reads_symbols_numbers_chars_and_vectors() {
        let value = parse("(swank:foo nil t 1.5d0 123456789012345678901234 1/2 #\\a #(1 2) #:g1 |a b| 'x #'car -3)")
            .expect("parses");
        let items = value.as_list().expect("list");
        assert_eq!(items[0], Sexp::Symbol("swank:foo".into()));
        assert!(items[1].is_nil());
        assert_eq!(items[3], Sexp::Number("1.5d0".into()));
        assert_eq!(items[4], Sexp::Number("123456789012345678901234".into()));
        assert_eq!(items[5], Sexp::Number("1/2".into()));
        assert_eq!(items[6], Sexp::Symbol("#\\a".into()));
        assert_eq!(
            items[7],
            Sexp::List(vec![Sexp::Integer(1), Sexp::Integer(2)])
        );
        assert_eq!(items[9], Sexp::Symbol("a b".into()));
        assert_eq!(items[12], Sexp::Integer(-3));
    }

    #[test]
    fn plist_lookup() {
        let value = parse("(:a 1 :b \"x\" :odd)").expect("parses");
        assert_eq!(value.plist_get("b").and_then(Sexp::as_str), Some("x"));
        assert_eq!(value.plist_get("A").and_then(Sexp::as_u64), Some(1));
        assert_eq!(value.plist_get("odd"), None);
        assert_eq!(value.plist_get("missing"), None);
    }

    #[test]
    fn printing_round_trips() {
        let text = r#"(:emacs-rex (swank:eval-and-grab-output "(print \"x\\y\")") "CL-USER" t 3)"#;
        let value = parse(text).expect("parses");
        assert_eq!(value.to_string(), text);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let inputs = [
            "", "(", ")", "\"abc", "(a b", "#<thing>", "#", "#\\", "|abc", "a\\", "(1 2) 3", "#:",
            ":", "(((", "\u{0}", "é(", "#(", "'", "#'",
        ];
        for input in inputs {
            let _ = parse(input);
        }
        assert!(matches!(parse("(a"), Err(SexpError::Eof(_))));
        assert!(matches!(parse("#<x>"), Err(SexpError::Dispatch { .. })));
        let deep = "(".repeat(100_000);
        assert!(matches!(parse(&deep), Err(SexpError::TooDeep(_))));
    }

    #[test]
    fn every_prefix_of_a_valid_message_is_handled() {
        let text = r#"(:debug 1 1 ("err \"q\"" "type" nil) (("ABORT" "x")) ((0 "frame")) (nil))"#;
        for end in 0..text.len() {
            if text.is_char_boundary(end) {
                let _ = parse(&text[..end]);
            }
        }
        assert!(parse(text).is_ok());
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let nested = |n: usize| format!("{}x{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nested(MAX_DEPTH)).is_ok());
        assert!(matches!(
            parse(&nested(MAX_DEPTH + 2)),
            Err(SexpError::TooDeep(_))
        ));
        let quotes = format!("{}x", "'".repeat(10_000));
        assert!(matches!(parse(&quotes), Err(SexpError::TooDeep(_))));
        // Many small nodes: refused before they become 32 bytes each.
        let wide = format!("({})", "() ".repeat(MAX_NODES));
        assert!(matches!(parse(&wide), Err(SexpError::TooLarge(_))));
        let fits = format!("({})", "a ".repeat(MAX_NODES - 1));
        assert!(parse(&fits).is_ok());
        // One big string is one node.
        let big = format!("(:write-string \"{}\")", "é".repeat(1 << 20));
        assert!(parse(&big).is_ok());
    }

    /// Property: mutated swank messages (bounded, deterministic) are read or refused,
    /// never a panic; printing what was read and reading that again does not panic either.
    #[test]
    fn mutated_messages_never_panic() {
        const SEEDS: &[&str] = &[
            r#"(:return (:ok ("out \"q\"" "42")) 17)"#,
            r#"(:debug 1 1 ("err" "type" nil) (("ABORT" "x")) ((0 "frame")) (nil))"#,
            r#"(:indentation-update (("with-foo" . 1) ("def-bar" . 2)))"#,
            r#"(swank:foo nil t 1.5d0 1/2 #\a #(1 2) #:g1 |a b| 'x #'car -3 :kw é)"#,
        ];
        const BITS: &[&str] = &[
            "(",
            ")",
            "\"",
            "\\",
            "|",
            "#",
            "#\\",
            "#:",
            "#(",
            "'",
            ";",
            "\n",
            " ",
            "é",
            "\u{0}",
            "18446744073709551616",
            "-",
            ".",
            ":",
            "1/",
            "`",
            ",",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let mut text: Vec<char> = SEEDS[rng.below(SEEDS.len())].chars().collect();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(text.len() + 1);
                match rng.below(3) {
                    0 => {
                        let end = (at + rng.below(8)).min(text.len());
                        text.drain(at..end);
                    }
                    1 => {
                        let bit = BITS[rng.below(BITS.len())];
                        text.splice(at..at, bit.chars());
                    }
                    _ => {
                        let c = char::from_u32((rng.next() % 0x250) as u32).unwrap_or('?');
                        text.insert(at, c);
                    }
                }
            }
            let text: String = text.into_iter().collect();
            if let Ok(v) = parse(&text) {
                let printed = v.to_string();
                let _ = parse(&printed);
            }
        }
    }
}
