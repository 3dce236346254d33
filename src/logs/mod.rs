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
use crate::protocol::{LogLine, Stream};

/// Lines that followers (`logs -f`, the foreground printer) receive.
pub type Tap = broadcast::Sender<Arc<LogLine>>;

/// Path of an app's current log file.
pub fn log_path(dir: &Path, app: &str) -> PathBuf {
    dir.join(format!("{app}.log"))
}

/// Path of an app's `k`-th rotated log file (`k >= 1`).
pub fn rotated_path(dir: &Path, app: &str, k: u32) -> PathBuf {
    dir.join(format!("{app}.log.{k}"))
}

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
            }),
            dropped: AtomicU64::new(0),
            tap,
        }
    }

    pub fn app(&self) -> &str {
        &self.app
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
        let ts = timestamp();
        let dropped = {
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.append(&ts, instance, stream, lines)
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
    fn append(&mut self, ts: &str, instance: Option<u32>, stream: Stream, lines: &[&[u8]]) -> u64 {
        let inst_buf = itoa_u32(instance);
        let inst = inst_buf.as_str();
        let mut buf: Vec<u8> = Vec::with_capacity(lines.iter().map(|l| l.len() + 48).sum());
        let mut in_buf = 0u64;
        let mut dropped = 0u64;
        for line in lines {
            let rec = ts.len() + inst.len() + stream.as_str().len() + line.len() + 4;
            if self.size + (buf.len() + rec) as u64 > self.cfg.max_size
                && self.size + buf.len() as u64 > 0
            {
                dropped += self.write_buf(&buf, in_buf);
                buf.clear();
                in_buf = 0;
                self.rotate();
            }
            buf.extend_from_slice(ts.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(inst.as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(stream.as_str().as_bytes());
            buf.push(b' ');
            // A record is one line: a stray CR or NUL is kept, but no newline can be inside.
            buf.extend_from_slice(line);
            buf.push(b'\n');
            in_buf += 1;
        }
        dropped += self.write_buf(&buf, in_buf);
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
