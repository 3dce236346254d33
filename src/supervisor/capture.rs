//! Reads an instance's stdout or stderr pipe and hands whole lines to its app's log.
//!
//! The pipe is drained as fast as the app fills it: each read takes what is there (up to 64 KiB)
//! and writes it to the log file in one go. A line longer than the buffer is cut into pieces
//! rather than held back; a last line without a newline is kept at end of file.
//!
//! The buffer starts small and doubles (up to 64 KiB) only when a read fills it: most apps write
//! a few short lines, and with two pipes per instance a full 64 KiB buffer each from the start
//! cost about 64 KiB of resident memory per instance (3 MiB with 50 apps; see bench/README.md).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::logs::AppLog;
use crate::protocol::Stream;

/// How many stderr lines an instance keeps for `status`.
pub const STDERR_TAIL: usize = 10;
const BUF: usize = 64 * 1024;
/// The buffer's first size; it grows to [`BUF`] when the app writes faster.
const BUF_START: usize = 4 * 1024;

/// Copies lines from `pipe` into `log` until end of file. The last lines are also kept in
/// each of `tails` (stderr's, shown by `status` after a crash; both streams', shown when a
/// reload's new process fails).
pub async fn capture<R: AsyncRead + Unpin>(
    mut pipe: R,
    log: Arc<AppLog>,
    instance: u32,
    stream: Stream,
    tails: Vec<Arc<Mutex<VecDeque<String>>>>,
) {
    let mut buf = vec![0u8; BUF_START];
    let mut filled = 0usize;
    loop {
        let n = match pipe.read(&mut buf[filled..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        filled += n;
        if filled == buf.len() && buf.len() < BUF {
            // The app writes faster than one small buffer: take more per read from now on.
            buf.resize((buf.len() * 2).min(BUF), 0);
        }
        let data = &buf[..filled];
        let cut = match memchr_last(data) {
            Some(i) => i + 1,
            // No newline in a full (largest) buffer: emit it as one (cut) line.
            None if filled == BUF => filled,
            None => continue,
        };
        let lines: Vec<&[u8]> = split_lines(&data[..cut]);
        log.append(Some(instance), stream, &lines);
        for t in &tails {
            remember(t, &lines);
        }
        buf.copy_within(cut..filled, 0);
        filled -= cut;
    }
    if filled > 0 {
        let lines = split_lines(&buf[..filled]);
        log.append(Some(instance), stream, &lines);
        for t in &tails {
            remember(t, &lines);
        }
    }
}

fn memchr_last(data: &[u8]) -> Option<usize> {
    data.iter().rposition(|b| *b == b'\n')
}

/// Splits at `\n`, dropping the newline (and a `\r` before it); a trailing piece without a
/// newline is a line too.
fn split_lines(data: &[u8]) -> Vec<&[u8]> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    body.split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

fn remember(tail: &Mutex<VecDeque<String>>, lines: &[&[u8]]) {
    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
    for l in lines.iter().rev().take(STDERR_TAIL).rev() {
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(String::from_utf8_lossy(l).into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::split_lines;

    #[test]
    fn splits_lines() {
        assert_eq!(split_lines(b"a\nb\r\n"), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(split_lines(b"a\n\nc"), vec![&b"a"[..], &b""[..], &b"c"[..]]);
    }
}
