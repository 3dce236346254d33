//! Log capture: every line an app writes, timestamped, into `.windlass/logs/APP.log`, rotated by
//! size, never blocking the app and never losing a line silently.
//!
//! One [`AppLog`] per app receives the lines of every instance and both streams. A record is one
//! line of text: `TIMESTAMP INSTANCE STREAM LINE` (instance `-` for windlass's own notes), so the
//! files stay readable with `tail` and parse back into [`LogLine`]s. Writes go straight to the
//! file (page cache, no user-space buffer to lose). When a write fails (disk full), the lines are
//! counted as dropped, the count is shown by `status`, and a note saying how many were lost is
//! written as soon as writing works again. Rotation happens at line boundaries, so the files
//! together hold every line exactly once.

pub mod tail;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::config::LogsConfig;
pub(crate) use crate::layout::{log_path, rotated_path};
use crate::protocol::{LogLine, Stream};

/// Lines that followers (`logs -f`, the foreground printer) receive.
pub type Tap = broadcast::Sender<Arc<LogLine>>;

/// The current time as written in log records.
pub fn timestamp() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// The log of one app.
pub struct AppLog {
    app: String,
    file: Mutex<LogFile>,
    dropped: AtomicU64,
    tap: Tap,
}

struct LogFile {
    dir: PathBuf,
    app: String,
    cfg: LogsConfig,
    file: Option<File>,
    size: u64,
    /// Lines dropped since the last successful write, to report once writing works again.
    unreported: u64,
    last_error: Option<String>,
    /// The records being written, kept between appends while the app writes a lot (see
    /// [`OUT_MAX`]).
    out: Vec<u8>,
}

/// Records are written in pieces of at most this many bytes (or one record, if longer): one
/// `write` per pipe read for most lines, and a bounded buffer.
const OUT_MAX: usize = 128 * 1024;
/// After an append that wrote less than this, a larger output buffer is freed: a burst is over,
/// and an app that writes a line now and then should not keep 128 KiB.
const OUT_SMALL: usize = 4 * 1024;

/// Splits `data` at `\n`, dropping the newline (and a `\r` before it); a trailing piece without a
/// newline is a line too (so `"a\n"` is one line, `"a\nb"` two, and `"\n"` one empty line).
pub fn lines(data: &[u8]) -> Lines<'_> {
    Lines {
        rest: Some(data.strip_suffix(b"\n").unwrap_or(data)),
    }
}

/// Iterator returned by [`lines`].
#[derive(Clone)]
pub struct Lines<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let line = match memchr::memchr(b'\n', rest) {
            Some(i) => {
                self.rest = Some(&rest[i + 1..]);
                &rest[..i]
            }
            None => {
                self.rest = None;
                rest
            }
        };
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

impl AppLog {
    pub fn new(dir: &Path, app: &str, cfg: LogsConfig, tap: Tap) -> AppLog {
        AppLog {
            app: app.to_owned(),
            file: Mutex::new(LogFile {
                dir: dir.to_path_buf(),
                app: app.to_owned(),
                cfg,
                file: None,
                size: 0,
                unreported: 0,
                last_error: None,
                out: Vec::new(),
            }),
            dropped: AtomicU64::new(0),
            tap,
        }
    }

    /// Lines that could not be written to disk since the supervisor started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Appends `lines` (without their newlines), all stamped with the same time.
    pub fn append(&self, instance: Option<u32>, stream: Stream, lines: &[&[u8]]) {
        if lines.is_empty() {
            return;
        }
        self.append_iter(instance, stream, lines.iter().copied());
    }

    /// Appends the lines of `data` as split by [`lines`] (what a read from an app's pipe gave,
    /// cut after its last newline), all stamped with the same time. Empty `data` is no line.
    pub fn append_chunk(&self, instance: Option<u32>, stream: Stream, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.append_iter(instance, stream, lines(data));
    }

    fn append_iter<'a, I>(&self, instance: Option<u32>, stream: Stream, lines: I)
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        let ts = timestamp();
        let dropped = {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.append(&ts, instance, stream, lines.clone())
        };
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
        if self.tap.receiver_count() > 0 {
            for l in lines {
                // A send error only means every follower left meanwhile.
                let _ = self.tap.send(Arc::new(LogLine {
                    ts: ts.clone(),
                    app: self.app.clone(),
                    instance,
                    stream,
                    line: String::from_utf8_lossy(l).into_owned(),
                }));
            }
        }
    }

    /// Writes one note from windlass about this app (started, exited, ...).
    pub fn note(&self, instance: Option<u32>, text: &str) {
        self.append(instance, Stream::Windlass, &[text.as_bytes()]);
    }
}

impl LogFile {
    fn path(&self) -> PathBuf {
        log_path(&self.dir, &self.app)
    }

    fn ensure_open(&mut self) -> io::Result<&mut File> {
        if self.file.is_none() {
            let path = self.path();
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(self.file.as_mut().expect("opened just above"))
    }

    /// Returns how many lines were dropped.
    fn append<'a>(
        &mut self,
        ts: &str,
        instance: Option<u32>,
        stream: Stream,
        lines: impl Iterator<Item = &'a [u8]>,
    ) -> u64 {
        // `TIMESTAMP INSTANCE STREAM `, the same for every record of this append.
        let prefix = format!("{ts} {} {} ", itoa_u32(instance), stream.as_str());
        let prefix = prefix.as_bytes();
        let mut buf = std::mem::take(&mut self.out);
        buf.clear();
        let mut in_buf = 0u64;
        let mut dropped = 0u64;
        let mut total = 0usize;
        for line in lines {
            let rec = prefix.len() + line.len() + 1;
            if self.size + (buf.len() + rec) as u64 > self.cfg.max_size
                && self.size + buf.len() as u64 > 0
            {
                dropped += self.write_buf(&buf, in_buf);
                total += buf.len();
                buf.clear();
                in_buf = 0;
                self.rotate();
            } else if buf.len() + rec > OUT_MAX && !buf.is_empty() {
                dropped += self.write_buf(&buf, in_buf);
                total += buf.len();
                buf.clear();
                in_buf = 0;
            }
            buf.extend_from_slice(prefix);
            // A record is one line: a stray CR or NUL is kept, but no newline can be inside.
            buf.extend_from_slice(line);
            buf.push(b'\n');
            in_buf += 1;
        }
        dropped += self.write_buf(&buf, in_buf);
        total += buf.len();
        if total >= OUT_SMALL {
            self.out = buf;
        }
        dropped
    }

    /// Writes whole records; returns how many records did not make it to the file.
    fn write_buf(&mut self, buf: &[u8], records: u64) -> u64 {
        if buf.is_empty() {
            return 0;
        }
        if self.unreported > 0 {
            let note = format!(
                "{} - windlass {} log lines were dropped before this one: {}\n",
                timestamp(),
                self.unreported,
                self.last_error.as_deref().unwrap_or("write error")
            );
            if self.raw_write(note.as_bytes()).is_ok() {
                self.unreported = 0;
            }
        }
        match self.raw_write(buf) {
            Ok(()) => 0,
            Err((written, e)) => {
                // Records fully written before the error are kept; the rest are counted.
                let kept = buf[..written].iter().filter(|b| **b == b'\n').count() as u64;
                let lost = records.saturating_sub(kept);
                self.unreported += lost;
                self.last_error = Some(e.to_string());
                lost
            }
        }
    }

    fn raw_write(&mut self, mut data: &[u8]) -> Result<(), (usize, io::Error)> {
        let total = data.len();
        if let Err(e) = self.ensure_open() {
            return Err((0, e));
        }
        let f = self.file.as_mut().expect("opened just above");
        while !data.is_empty() {
            match f.write(data) {
                Ok(0) => {
                    return Err((
                        total - data.len(),
                        io::Error::from(io::ErrorKind::WriteZero),
                    ));
                }
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let written = total - data.len();
                    if written > 0 {
                        // Keep the file line-aligned: a partial record would glue onto the next.
                        let _ = f.write_all(b"\n");
                    }
                    self.size += written as u64;
                    self.file = None;
                    return Err((written, e));
                }
            }
        }
        self.size += total as u64;
        Ok(())
    }

    fn rotate(&mut self) {
        self.file = None;
        let keep = self.cfg.keep;
        let result = (|| -> io::Result<()> {
            if keep == 0 {
                return match std::fs::remove_file(self.path()) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                };
            }
            for k in (1..keep).rev() {
                let from = rotated_path(&self.dir, &self.app, k);
                if from.exists() {
                    std::fs::rename(&from, rotated_path(&self.dir, &self.app, k + 1))?;
                }
            }
            std::fs::rename(self.path(), rotated_path(&self.dir, &self.app, 1))
        })();
        if let Err(e) = result {
            // Rotation failing must not lose lines: keep appending to the current file.
            tracing::warn!(app = %self.app, error = %e, "log rotation failed; appending to the current file");
        }
        self.size = 0;
    }
}

/// Formats the instance field of a record.
fn itoa_u32(i: Option<u32>) -> String {
    match i {
        Some(i) => i.to_string(),
        None => "-".to_owned(),
    }
}

/// Parses one record of a log file back into a [`LogLine`]. Lines that are not records (a file
/// edited by hand) come back whole as the line text.
pub fn parse_record(app: &str, raw: &str) -> LogLine {
    let mut parts = raw.splitn(4, ' ');
    let (ts, inst, stream) = (parts.next(), parts.next(), parts.next());
    if let (Some(ts), Some(inst), Some(stream)) = (ts, inst, stream.and_then(Stream::parse)) {
        if ts.len() >= 20 && ts.as_bytes()[4] == b'-' {
            let instance = if inst == "-" { None } else { inst.parse().ok() };
            if instance.is_some() || inst == "-" {
                return LogLine {
                    ts: ts.to_owned(),
                    app: app.to_owned(),
                    instance,
                    stream,
                    line: parts.next().unwrap_or("").to_owned(),
                };
            }
        }
    }
    LogLine {
        ts: String::new(),
        app: app.to_owned(),
        instance: None,
        stream: Stream::Out,
        line: raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dir: &Path, app: &str, keep: u32) -> Vec<String> {
        let mut all = Vec::new();
        for k in (1..=keep).rev() {
            if let Ok(t) = std::fs::read_to_string(rotated_path(dir, app, k)) {
                all.extend(t.lines().map(str::to_owned));
            }
        }
        if let Ok(t) = std::fs::read_to_string(log_path(dir, app)) {
            all.extend(t.lines().map(str::to_owned));
        }
        all
    }

    #[test]
    fn rotation_keeps_every_line_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tap, _) = broadcast::channel(4);
        let log = AppLog::new(
            dir.path(),
            "web",
            LogsConfig {
                max_size: 2048,
                keep: 50,
            },
            tap,
        );
        for i in 0..500 {
            let l = format!("line {i}");
            log.append(Some(0), Stream::Out, &[l.as_bytes()]);
        }
        let lines = collect(dir.path(), "web", 50);
        assert_eq!(lines.len(), 500);
        for (i, l) in lines.iter().enumerate() {
            let rec = parse_record("web", l);
            assert_eq!(rec.line, format!("line {i}"));
            assert_eq!(rec.instance, Some(0));
        }
        for k in 1..=50 {
            if let Ok(m) = std::fs::metadata(rotated_path(dir.path(), "web", k)) {
                assert!(m.len() <= 2048, "rotated file {k} has {} bytes", m.len());
            }
        }
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn rotation_drops_the_oldest_files_beyond_keep() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tap, _) = broadcast::channel(4);
        let log = AppLog::new(
            dir.path(),
            "w",
            LogsConfig {
                max_size: 1024,
                keep: 2,
            },
            tap,
        );
        for i in 0..300 {
            log.append(None, Stream::Err, &[format!("l{i}").as_bytes()]);
        }
        assert!(rotated_path(dir.path(), "w", 2).exists());
        assert!(!rotated_path(dir.path(), "w", 3).exists());
        let lines = collect(dir.path(), "w", 2);
        let last = parse_record("w", lines.last().expect("lines"));
        assert_eq!(last.line, "l299");
        assert_eq!(last.stream, Stream::Err);
        assert_eq!(last.instance, None);
    }

    #[test]
    fn chunks_split_into_lines() {
        let split = |d: &'static [u8]| lines(d).collect::<Vec<_>>();
        assert_eq!(split(b"a\nb\r\n"), vec![&b"a"[..], &b"b"[..]]);
        assert_eq!(split(b"a\n\nc"), vec![&b"a"[..], &b""[..], &b"c"[..]]);
        assert_eq!(split(b"\n"), vec![&b""[..]]);
        let dir = tempfile::tempdir().expect("tempdir");
        let (tap, _) = broadcast::channel(4);
        let log = AppLog::new(dir.path(), "c", LogsConfig::default(), tap);
        log.append_chunk(Some(1), Stream::Err, b"x\r\ny\n");
        log.append_chunk(Some(1), Stream::Err, b"");
        log.append_chunk(Some(1), Stream::Err, b"cut");
        let got: Vec<String> = collect(dir.path(), "c", 0)
            .iter()
            .map(|l| parse_record("c", l).line)
            .collect();
        assert_eq!(got, ["x", "y", "cut"]);
    }

    #[test]
    fn records_parse_back_and_junk_is_kept_whole() {
        let r = parse_record("a", "2026-11-24T03:00:00.000000Z 3 err hello  world ");
        assert_eq!(
            (r.instance, r.stream, r.line.as_str()),
            (Some(3), Stream::Err, "hello  world ")
        );
        let j = parse_record("a", "not a record");
        assert_eq!(j.line, "not a record");
    }

    #[test]
    fn write_errors_are_counted_and_reported() {
        // /dev/full fails every write with ENOSPC: the real thing, not a mock.
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink("/dev/full", log_path(dir.path(), "full")).expect("symlink");
        let (tap, _) = broadcast::channel(4);
        let log = AppLog::new(dir.path(), "full", LogsConfig::default(), tap);
        log.append(Some(0), Stream::Out, &[b"a", b"b", b"c"]);
        assert_eq!(log.dropped(), 3);
        // Space comes back: the next write reports the loss first.
        std::fs::remove_file(log_path(dir.path(), "full")).expect("rm");
        log.append(Some(0), Stream::Out, &[b"d"]);
        let text = std::fs::read_to_string(log_path(dir.path(), "full")).expect("read");
        assert!(text.contains("3 log lines were dropped"), "{text}");
        assert!(text.ends_with(" 0 out d\n"), "{text}");
    }
}
