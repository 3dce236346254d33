//! Consoles: apps with `console = true` run with stdin, stdout and stderr on a pseudo-terminal
//! (the tmux part of the story: `windlass up -d`, then `windlass attach web` gets the REPL).
//!
//! The child starts a new session (`setsid`) and makes the PTY its controlling terminal
//! (`TIOCSCTTY`), so Ctrl-C typed in an attached terminal reaches it as SIGINT. A new session
//! is also a new process group led by the child, so stopping the whole group works as for
//! other apps. Everything the app writes is captured into its log (stream `out`), kept in a
//! 64 KiB ring replayed to each new viewer, and broadcast to attached viewers. The
//! [`Console`] outlives restarts of its instance: viewers stay attached across them. Several
//! viewers may watch; one at a time may type (the first that asked to).
//!
//! The PTY master is non-blocking and driven by the runtime ([`AsyncFd`]): one task reads the
//! app's output, another writes what the typing viewer sends, from a small bounded queue. An
//! app that does not read its terminal fills the terminal's input buffer, then that queue; the
//! viewer's [`Keyboard::send`] then waits, so its connection stops being read (back-pressure
//! to the client), and nothing else waits: no thread is blocked and no lock is held across a
//! write, so status, resizes, other apps and restarts go on.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::io::unix::AsyncFd;
use tokio::process::Child;
use tokio::sync::{broadcast, mpsc};

use super::capture::capture;
use super::process::Launch;
use crate::config::{AppConfig, envvars};
use crate::logs::AppLog;
use crate::protocol::Stream;

/// How much console output is replayed to a viewer that attaches.
pub const REPLAY: usize = 64 * 1024;

/// Pieces of typed input (each one read from a viewer's connection, up to 4 KiB) queued for
/// the terminal: beyond these, the viewer waits.
const INPUT_QUEUE: usize = 16;

/// The terminal of the running process.
#[derive(Clone)]
struct Pty {
    /// The non-blocking PTY master (also read by the output task).
    master: Arc<AsyncFd<OwnedFd>>,
    /// Typed input, written to `master` by the input task.
    input: mpsc::Sender<Bytes>,
}

/// One instance's console, shared by the instance task and the viewers.
pub struct Console {
    ring: Mutex<VecDeque<u8>>,
    out: broadcast::Sender<Bytes>,
    /// The terminal of the running process, if any.
    pty: Mutex<Option<Pty>>,
    /// The viewer that may type.
    writer: Mutex<Option<u64>>,
    next_viewer: AtomicU64,
    /// The terminal's size (rows, columns): the typing viewer's window, 24×80 until one
    /// says otherwise; a restarted process gets it too.
    size: Mutex<(u16, u16)>,
}

/// Largest terminal accepted, in rows or columns.
pub const MAX_SIZE: u16 = 10_000;

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").finish_non_exhaustive()
    }
}

impl Default for Console {
    fn default() -> Self {
        Console {
            ring: Mutex::new(VecDeque::new()),
            // 128 PTY reads (up to 4 KiB each) for a slow viewer; every instance has one, so
            // it stays small (1024 slots cost ~57 KiB per instance, console or not).
            out: broadcast::channel(128).0,
            pty: Mutex::new(None),
            writer: Mutex::new(None),
            next_viewer: AtomicU64::new(1),
            size: Mutex::new((24, 80)),
        }
    }
}

/// An attached viewer; gives up the keyboard when dropped.
pub struct Viewer {
    console: Arc<Console>,
    id: u64,
    /// True when this viewer may type.
    pub writer: bool,
    /// Console output from now on.
    pub output: broadcast::Receiver<Bytes>,
    /// The last output before attaching (up to [`REPLAY`] bytes).
    pub replay: Vec<u8>,
}

impl Drop for Viewer {
    fn drop(&mut self) {
        let mut w = self
            .console
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *w == Some(self.id) {
            *w = None;
        }
    }
}

impl Viewer {
    /// The typing viewer's window changed size (ignored for read-only viewers).
    pub fn resize(&self, rows: u16, cols: u16) {
        if self.writer {
            self.console.resize(rows, cols);
        }
    }

    /// The way to type into the app: `None` for a read-only viewer.
    pub fn keyboard(&self) -> Option<Keyboard> {
        self.writer.then(|| Keyboard {
            console: self.console.clone(),
        })
    }
}

/// What the typing viewer sends keystrokes with (the viewer itself holds the keyboard: drop
/// it to give it up).
#[derive(Clone)]
pub struct Keyboard {
    console: Arc<Console>,
}

impl Keyboard {
    /// Queues keystrokes for the app's terminal; waits while the queue is full (the app is
    /// not reading), which is the back-pressure on the viewer. Input sent while no process
    /// holds the terminal (between restarts) is dropped, as is what was queued for a process
    /// that ended.
    pub async fn send(&self, data: Bytes) {
        let input = self
            .console
            .pty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.input.clone());
        if let Some(input) = input {
            // An error only means that process ended meanwhile.
            let _ = input.send(data).await;
        }
    }
}

impl Console {
    /// Sets the terminal's size (each clamped to 1..=[`MAX_SIZE`]); the app gets
    /// `SIGWINCH`, as in a terminal emulator.
    pub fn resize(&self, rows: u16, cols: u16) {
        let (rows, cols) = (rows.clamp(1, MAX_SIZE), cols.clamp(1, MAX_SIZE));
        *self.size.lock().unwrap_or_else(|p| p.into_inner()) = (rows, cols);
        let master = self
            .pty
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.master.clone());
        if let Some(master) = master {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one `winsize` from a valid pointer; the fd is the
            // PTY master this console owns (kept open by the `Arc` held here). It never blocks.
            let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            if r < 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "cannot resize the console");
            }
        }
    }

    /// The terminal's size (rows, columns).
    pub fn size(&self) -> (u16, u16) {
        *self.size.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches a viewer: it gets the replay and the output from now on, and the keyboard
    /// when it wants it and nobody else has it.
    pub fn attach(self: &Arc<Self>, want_keyboard: bool) -> Viewer {
        let id = self.next_viewer.fetch_add(1, Ordering::Relaxed);
        // Subscribe and snapshot under the ring's lock so no byte is missed or doubled.
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let output = self.out.subscribe();
        let replay: Vec<u8> = ring.iter().copied().collect();
        drop(ring);
        let writer = want_keyboard && {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            if w.is_none() {
                *w = Some(id);
            }
            *w == Some(id)
        };
        Viewer {
            console: self.clone(),
            id,
            writer,
            output,
            replay,
        }
    }

    fn record(&self, data: &[u8]) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.extend(data);
        let excess = ring.len().saturating_sub(REPLAY);
        ring.drain(..excess);
        let _ = self.out.send(Bytes::copy_from_slice(data));
    }
}

/// Spawns an instance of `app` on a new PTY: a new session whose controlling terminal is the
/// PTY. Its output goes to `log` (and `tail`), the ring and the viewers.
pub fn spawn(
    app: &AppConfig,
    launch: &Launch,
    console: &Arc<Console>,
    log: Arc<AppLog>,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> std::io::Result<Child> {
    let (rows, cols) = console.size();
    let pty = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )?;
    let master: OwnedFd = pty.master;
    let slave: OwnedFd = pty.slave;
    set_cloexec(&master)?;
    set_nonblocking(&master)?;
    let mut cmd = super::process::command(app, launch)?;
    cmd.env(envvars::CONSOLE, "1")
        .env("TERM", "xterm-256color")
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let guardian_fd = launch.guardian_fd;
    // SAFETY: the hook only calls async-signal-safe functions (setsid, ioctl, getpid, write).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = guardian_fd {
                super::guardian::register_from_child(fd);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // `cmd` (and with it the parent's copies of the slave) is dropped on return, so reading
    // the master ends (EIO) once every process of the session has closed the terminal.
    // SAFETY: an `OwnedFd`'s descriptor is open and stays the same until it is dropped, and
    // the `AsyncFd` owns it from here on.
    let master = Arc::new(unsafe { AsyncFd::register(master) }?);
    let (input, queue) = mpsc::channel(INPUT_QUEUE);
    *console.pty.lock().unwrap_or_else(|p| p.into_inner()) = Some(Pty {
        master: master.clone(),
        input,
    });
    let (rx, tx) = tokio::net::UnixStream::pair()?;
    tokio::spawn(capture(rx, log, launch.index, Stream::Out, vec![tail]));
    tokio::spawn(type_in(master.clone(), queue));
    tokio::spawn(pump(master, tx, console.clone()));
    Ok(child)
}

/// Copies the PTY's output to the log capture, the ring and the viewers until the terminal
/// closes; then the console has no terminal until the next process.
async fn pump(
    master: Arc<AsyncFd<OwnedFd>>,
    mut to_log: tokio::net::UnixStream,
    console: Arc<Console>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let Ok(mut ready) = master.readable().await else {
            break;
        };
        match ready
            .try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from))
        {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                console.record(&buf[..n]);
                // The capture task drains this as fast as it can; if it is gone, the log
                // is closed and only viewers remain.
                let _ = to_log.write_all(&buf[..n]).await;
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // EIO: every slave fd is closed (the session ended).
            Ok(Err(_)) => break,
            Err(_would_block) => {}
        }
    }
    let mut pty = console.pty.lock().unwrap_or_else(|p| p.into_inner());
    // A restart may have put the next process's terminal there already.
    if pty
        .as_ref()
        .is_some_and(|p| Arc::ptr_eq(&p.master, &master))
    {
        *pty = None;
    }
}

/// Writes queued input to the PTY as the terminal takes it, until the queue closes (the
/// console moved on to another process) or the terminal does.
async fn type_in(master: Arc<AsyncFd<OwnedFd>>, mut queue: mpsc::Receiver<Bytes>) {
    while let Some(mut data) = queue.recv().await {
        while data.has_remaining() {
            let Ok(mut ready) = master.writable().await else {
                return;
            };
            match ready
                .try_io(|fd| nix::unistd::write(fd.get_ref(), &data).map_err(std::io::Error::from))
            {
                Ok(Ok(n)) => data.advance(n),
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // EIO: the session ended; what is queued goes nowhere.
                Ok(Err(_)) => return,
                Err(_would_block) => {}
            }
        }
    }
}

fn set_cloexec(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_last_64k_and_one_viewer_types() {
        let c = Arc::new(Console::default());
        c.record(&vec![b'a'; REPLAY]);
        c.record(b"xyz");
        let first = c.attach(true);
        assert_eq!(first.replay.len(), REPLAY);
        assert!(first.replay.ends_with(b"aaxyz"));
        assert!(first.writer);
        let second = c.attach(true);
        assert!(!second.writer);
        drop(first);
        let third = c.attach(true);
        assert!(third.writer);
        assert!(!c.attach(false).writer);
    }
}
