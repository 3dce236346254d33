//! Reading the last lines of an app's logs, across rotated files, without reading whole files:
//! blocks are read backwards from the end until enough lines are found.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use super::{log_path, parse_record, rotated_path};
use crate::protocol::LogLine;

const BLOCK: u64 = 64 * 1024;

/// The last `n` lines of `path` (fewer if the file is shorter), oldest first.
pub fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos = len;
    let mut data: Vec<u8> = Vec::new();
    loop {
        let newlines = data.iter().filter(|b| **b == b'\n').count();
        // n lines need n+1 newlines in view (the one ending the line before them), unless we
        // reached the start of the file.
        if newlines > n || pos == 0 {
            break;
        }
        let step = BLOCK.min(pos);
        pos -= step;
        f.seek(SeekFrom::Start(pos))?;
        let mut block = vec![0u8; step as usize];
        f.read_exact(&mut block)?;
        block.extend_from_slice(&data);
        data = block;
    }
    let text = String::from_utf8_lossy(&data);
    let mut lines: Vec<&str> = text.lines().collect();
    if pos > 0 && !lines.is_empty() {
        lines.remove(0); // partial first line
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|s| (*s).to_owned()).collect())
}

/// The last `n` records of `app`, reading rotated files as needed, oldest first.
pub fn last_records(dir: &Path, app: &str, n: usize, keep: u32) -> io::Result<Vec<LogLine>> {
    let mut out: Vec<LogLine> = Vec::new();
    let mut files = vec![log_path(dir, app)];
    files.extend((1..=keep.max(1)).map(|k| rotated_path(dir, app, k)));
    for path in files {
        if out.len() >= n {
            break;
        }
        match last_lines(&path, n - out.len()) {
            Ok(lines) => {
                let mut recs: Vec<LogLine> = lines.iter().map(|l| parse_record(app, l)).collect();
                recs.append(&mut out);
                out = recs;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
}
