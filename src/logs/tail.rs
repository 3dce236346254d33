//! Reading the last lines of an app's logs, across rotated files, without reading whole files.
//!
//! Each file is read once, backwards from its end, in blocks, until enough line ends are seen;
//! the blocks read are kept (no re-copying while going back), then handed out as lines, oldest
//! first, each block freed once its lines are parsed. Work and memory are proportional to the
//! lines returned (plus one block), however large the files: a read asks for at most
//! [`MAX_LINES`] lines and returns at most about [`MAX_BYTES`] per app.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::{log_path, parse_record, rotated_path};
use crate::protocol::LogLine;

const BLOCK: usize = 64 * 1024;

/// The most past lines one log read may ask for (`n` of `GET /v1/logs`, `windlass logs -n`),
/// per app.
pub const MAX_LINES: usize = 10_000;

/// The most bytes of records one read returns per app (about: whole lines, up to one block
/// more): 10,000 lines of 1.6 KiB. An app whose lines are longer gets fewer lines, and a note
/// saying so.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

/// Calls `line` with each of the last `n` lines of `path` (fewer if the file is shorter, or if
/// they take more than `budget` bytes; `budget` is reduced by what was taken), oldest first.
/// Lines are what `str::lines` makes of the file: split at `\n` (a `\r` before it dropped), a
/// last line without a newline is a line. Returns true when the budget cut the lines short.
fn tail_file(
    path: &Path,
    n: usize,
    budget: &mut usize,
    line: &mut dyn FnMut(&[u8]),
) -> io::Result<bool> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos = len;
    // Blocks read, newest first; together they are the bytes [pos, len).
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut found = 0usize;
    // Where the wanted lines start, once known.
    let mut start: Option<u64> = None;
    // The earliest line end seen so far (for a cut at the byte budget).
    let mut earliest_nl: Option<u64> = None;
    let mut cut = false;
    while n > 0 && start.is_none() && pos > 0 {
        let step = (BLOCK as u64).min(pos);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0u8; step as usize];
        f.read_exact(&mut block)?;
        for i in memchr::memrchr_iter(b'\n', &block) {
            let at = pos + i as u64;
            if at + 1 == len {
                continue; // the file's last newline ends its last line; it starts none
            }
            earliest_nl = Some(at);
            found += 1;
            if found == n {
                start = Some(at + 1);
                break;
            }
        }
        blocks.push(block);
        if start.is_none() && pos > 0 && (len - pos) as usize > *budget {
            // Too many bytes: keep the whole lines seen (none if one line is that long).
            start = Some(earliest_nl.map_or(len, |at| at + 1));
            cut = true;
        }
    }
    let start = start.unwrap_or(pos);
    // Hand out the lines block by block, oldest first, each block freed once done: only a line
    // that spans two blocks is copied.
    let mut carry: Vec<u8> = Vec::new();
    let mut at = pos;
    while let Some(block) = blocks.pop() {
        let end = at + block.len() as u64;
        if end > start {
            let mut rest = &block[(start.max(at) - at) as usize..];
            *budget = budget.saturating_sub(rest.len());
            while let Some(i) = memchr::memchr(b'\n', rest) {
                let whole = if carry.is_empty() {
                    &rest[..i]
                } else {
                    carry.extend_from_slice(&rest[..i]);
                    &carry[..]
                };
                line(whole.strip_suffix(b"\r").unwrap_or(whole));
                carry.clear();
                rest = &rest[i + 1..];
            }
            carry.extend_from_slice(rest);
        }
        at = end;
    }
    if !carry.is_empty() {
        line(&carry);
    }
    Ok(cut)
}

/// The last records of one app: [`last_records`]'s answer.
pub struct Records {
    /// Oldest first.
    pub records: Vec<LogLine>,
    /// True when older lines were left out because of the byte limit.
    pub cut: bool,
}

/// The last `n` records of `app` (at most about `max_bytes` of them), reading rotated files as
/// needed, oldest first.
pub fn last_records(
    dir: &Path,
    app: &str,
    n: usize,
    keep: u32,
    max_bytes: usize,
) -> io::Result<Records> {
    let mut files = vec![log_path(dir, app)];
    files.extend((1..=keep.max(1)).map(|k| rotated_path(dir, app, k)));
    // Newest file first.
    let mut parts: Vec<Vec<LogLine>> = Vec::new();
    let mut got = 0usize;
    let mut budget = max_bytes;
    let mut cut = false;
    for path in files {
        if got >= n || cut {
            break;
        }
        let mut recs = Vec::new();
        let mut add = |l: &[u8]| recs.push(parse_record(app, &String::from_utf8_lossy(l)));
        match tail_file(&path, n - got, &mut budget, &mut add) {
            Ok(c) => {
                cut = c;
                got += recs.len();
                parts.push(recs);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    let mut records = Vec::with_capacity(got);
    while let Some(mut older) = parts.pop() {
        records.append(&mut older);
    }
    Ok(Records { records, cut })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// The last `n` lines of `path` (fewer if the file is shorter), oldest first.
    fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut budget = usize::MAX;
        tail_file(path, n, &mut budget, &mut |l| {
            out.push(String::from_utf8_lossy(l).into_owned())
        })?;
        Ok(out)
    }

    #[test]
    fn reads_the_tail_across_block_boundaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let mut f = File::create(&p).expect("create");
        for i in 0..20_000 {
            writeln!(f, "line number {i}").expect("write");
        }
        let last = last_lines(&p, 3).expect("tail");
        assert_eq!(
            last,
            vec![
                "line number 19997",
                "line number 19998",
                "line number 19999"
            ]
        );
        let many = last_lines(&p, 10_000).expect("tail");
        assert_eq!(many.len(), 10_000);
        assert_eq!(many[0], "line number 10000");
        assert_eq!(last_lines(&p, 50_000).expect("tail").len(), 20_000);
    }

    /// A small xorshift PRNG: deterministic, so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    /// What the files say, read whole: every line of every file, oldest file first.
    fn naive(dir: &Path, app: &str, keep: u32) -> Vec<String> {
        let mut all = Vec::new();
        for k in (1..=keep.max(1)).rev() {
            if let Ok(b) = std::fs::read(rotated_path(dir, app, k)) {
                all.extend(String::from_utf8_lossy(&b).lines().map(str::to_owned));
            }
        }
        if let Ok(b) = std::fs::read(log_path(dir, app)) {
            all.extend(String::from_utf8_lossy(&b).lines().map(str::to_owned));
        }
        all
    }

    /// Random file sets (lines of 0 to 200 KB, empty lines, CRLF, no trailing newline, empty
    /// and missing files, multibyte text) against the naive reading, for random `n`.
    #[test]
    fn the_tail_matches_reading_every_file_whole() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..150 {
            let dir = tempfile::tempdir().expect("tempdir");
            let keep = rng.below(4) as u32;
            for k in 0..=keep.max(1) {
                let path = if k == 0 {
                    log_path(dir.path(), "a")
                } else {
                    rotated_path(dir.path(), "a", k)
                };
                if rng.below(6) == 0 {
                    continue; // missing
                }
                let mut data = Vec::new();
                for _ in 0..rng.below(40) {
                    let len = match rng.below(10) {
                        0 => 0,
                        1 => rng.below(200_000),
                        2 => BLOCK as u64 - 1 + rng.below(3),
                        _ => rng.below(80),
                    };
                    for j in 0..len {
                        data.push(match (j + rng.below(50)) % 50 {
                            0 => b' ',
                            1 => 0xc3, // with the next byte: é, or invalid UTF-8
                            2 => 0xa9,
                            _ => b'a' + (j % 26) as u8,
                        });
                    }
                    data.extend_from_slice(if rng.below(8) == 0 { b"\r\n" } else { b"\n" });
                }
                if !data.is_empty() && rng.below(3) == 0 {
                    data.pop(); // no newline at the end
                }
                std::fs::write(&path, &data).expect("write");
            }
            let all = naive(dir.path(), "a", keep);
            for _ in 0..4 {
                let n = match rng.below(4) {
                    0 => rng.below(3) as usize,
                    1 => all.len(),
                    2 => all.len() + 1 + rng.below(5) as usize,
                    _ => rng.below(all.len() as u64 + 1) as usize,
                };
                let got = last_records(dir.path(), "a", n, keep, usize::MAX).expect("tail");
                let want = &all[all.len().saturating_sub(n)..];
                let lines: Vec<&str> = got.records.iter().map(|r| r.line.as_str()).collect();
                assert_eq!(lines, want, "round {round}, n = {n}, keep = {keep}");
                assert!(!got.cut);
            }
        }
    }

    #[test]
    fn the_byte_budget_keeps_whole_lines_and_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let line = "y".repeat(999);
        let mut data = String::new();
        for _ in 0..1000 {
            data.push_str(&line);
            data.push('\n');
        }
        std::fs::write(log_path(dir.path(), "b"), &data).expect("write");
        std::fs::write(rotated_path(dir.path(), "b", 1), &data).expect("write");
        let got = last_records(dir.path(), "b", 10_000, 1, 300_000).expect("tail");
        assert!(got.cut);
        // About 300 KB of 1000-byte lines: whole lines only, at most one block more.
        let n = got.records.len();
        assert!((300..=300 + BLOCK / 1000 + 1).contains(&n), "{n} lines");
        assert!(got.records.iter().all(|r| r.line == line));
    }
}
