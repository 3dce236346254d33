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
        // Only the new bytes can hold a newline: what was left over had none.
        let last_nl = memchr::memrchr(b'\n', &buf[filled..filled + n]).map(|i| filled + i);
        filled += n;
        let cut = match last_nl {
            Some(i) => i + 1,
            // No newline in a full (largest) buffer: emit it as one (cut) line.
            None if filled == BUF => filled,
            None => {
                grow(&mut buf, filled);
                continue;
            }
        };
        emit(&log, instance, stream, &tails, &buf[..cut]);
        buf.copy_within(cut..filled, 0);
        filled -= cut;
        grow(&mut buf, cut + filled);
    }
    if filled > 0 {
        emit(&log, instance, stream, &tails, &buf[..filled]);
    }
}

/// Doubles the buffer (up to [`BUF`]) when the last read filled it: the app writes faster than
/// one small buffer, so take more per read from now on.
fn grow(buf: &mut Vec<u8>, used: usize) {
    if used == buf.len() && buf.len() < BUF {
        buf.resize((buf.len() * 2).min(BUF), 0);
    }
}

/// Hands `data` (whole lines, the last one possibly without its newline) to the log and the tails.
fn emit(
    log: &AppLog,
    instance: u32,
    stream: Stream,
    tails: &[Arc<Mutex<VecDeque<String>>>],
    data: &[u8],
) {
    log.append_chunk(Some(instance), stream, data);
    if tails.is_empty() {
        return;
    }
    let last = last_lines(data, STDERR_TAIL);
    for t in tails {
        remember(t, &last);
    }
}

/// The last `n` lines of `data` (split as [`crate::logs::lines`] does), in order.
fn last_lines(data: &[u8], n: usize) -> Vec<&[u8]> {
    let body = data.strip_suffix(b"\n").unwrap_or(data);
    let mut out = Vec::with_capacity(n);
    let mut end = body.len();
    for nl in memchr::memrchr_iter(b'\n', body) {
        if out.len() == n {
            break;
        }
        out.push(&body[nl + 1..end]);
        end = nl;
    }
    if out.len() < n {
        out.push(&body[..end]);
    }
    out.reverse();
    out.into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

fn remember(tail: &Mutex<VecDeque<String>>, lines: &[&[u8]]) {
    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
    for l in lines {
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(String::from_utf8_lossy(l).into_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::last_lines;

    #[test]
    fn keeps_the_last_lines() {
        assert_eq!(last_lines(b"a\nb\r\n", 10), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(
            last_lines(b"a\n\nc", 10),
            vec![&b"a"[..], &b""[..], &b"c"[..]]
        );
        assert_eq!(last_lines(b"a\nb\nc\n", 2), vec![&b"b"[..], &b"c"[..]]);
        assert_eq!(
            last_lines(b"a\nb\nc", 3),
            vec![&b"a"[..], &b"b"[..], &b"c"[..]]
        );
        assert_eq!(last_lines(b"\n", 3), vec![&b""[..]]);
    }
}
