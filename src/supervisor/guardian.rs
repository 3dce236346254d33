//! The guardian: a tiny process that outlives windlass only to kill the apps if windlass dies.
//!
//! `PR_SET_PDEATHSIG` is not enough: it reaches only the direct child (not the app's own
//! children) and fires when the *thread* that spawned it exits. Instead, before any thread
//! exists, windlass forks the guardian and keeps the write end of a pipe to it. Each app
//! process, between fork and exec, writes its own pid (which is its process group id) into that
//! pipe; windlass writes `-pgid` once a group is gone. When windlass dies in any way, even
//! SIGKILL, the kernel closes the pipe, the guardian reads end-of-file, sends SIGKILL to every
//! group still registered, and exits. The guardian ignores terminal signals so that a Ctrl-C
//! meant for windlass cannot take it down first.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::{ForkResult, Pid, fork};

/// The write end of the guardian's pipe.
#[derive(Debug)]
pub struct Guardian {
    fd: OwnedFd,
}

const REC: usize = 5;

impl Guardian {
    /// Forks the guardian. Must be called while the process has a single thread (before the
    /// tokio runtime starts).
    pub fn spawn() -> std::io::Result<Guardian> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: windlass calls this before starting any thread, so the child is a faithful
        // single-threaded copy; it only calls async-signal-safe functions before `_exit`.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(write);
                guard(read.as_raw_fd())
            }
            ForkResult::Parent { .. } => {
                drop(read);
                Ok(Guardian { fd: write })
            }
        }
    }

    /// The raw fd, for [`register_from_child`] in a `pre_exec` hook.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Tells the guardian that process group `pgid` is gone.
    pub fn unregister(&self, pgid: i32) {
        write_rec(self.fd.as_raw_fd(), b'-', pgid);
    }
}

/// Called in the app's process between fork and exec: registers its own process group.
/// Only async-signal-safe calls.
pub fn register_from_child(fd: RawFd) {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    let pid = unsafe { libc::getpid() };
    write_rec(fd, b'+', pid);
}

fn write_rec(fd: RawFd, op: u8, pgid: i32) {
    let b = pgid.to_le_bytes();
    let rec = [op, b[0], b[1], b[2], b[3]];
    // A record is smaller than PIPE_BUF, so the write is atomic. Nothing useful can be done
    // if it fails (the guardian is gone), and this may run in a forked child.
    // SAFETY: rec is a valid buffer of REC bytes.
    let _ = unsafe { libc::write(fd, rec.as_ptr().cast(), REC) };
}

fn guard(read: RawFd) -> ! {
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { signal::signal(s, SigHandler::SigIgn) };
    }
    // SAFETY: prctl with PR_SET_NAME reads a NUL-terminated buffer.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"windlass-guard".as_ptr()) };
    // Close every other fd (the terminal, sockets...) so the guardian holds nothing open.
    // SAFETY: plain syscalls on integers.
    unsafe {
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if devnull >= 0 {
            for fd in 0..3 {
                libc::dup2(devnull, fd);
            }
        }
        for fd in 3..1024 {
            if fd != read {
                libc::close(fd);
            }
        }
    }
    // SAFETY: `read` is the pipe's read end, owned by this process from here on.
    let read = unsafe { OwnedFd::from_raw_fd(read) };
    let mut groups: Vec<i32> = Vec::new();
    let mut buf = [0u8; REC * 64];
    let mut have = 0usize;
    loop {
        // SAFETY: reading into the unused tail of `buf`.
        let n = unsafe {
            libc::read(
                read.as_raw_fd(),
                buf[have..].as_mut_ptr().cast(),
                buf.len() - have,
            )
        };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        if n == 0 {
            break;
        }
        have += n as usize;
        let whole = have / REC * REC;
        for rec in buf[..whole].chunks_exact(REC) {
            let pgid = i32::from_le_bytes([rec[1], rec[2], rec[3], rec[4]]);
            match rec[0] {
                b'+' => groups.push(pgid),
                _ => groups.retain(|g| *g != pgid),
            }
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
    for g in groups {
        if g > 1 {
            let _ = signal::killpg(Pid::from_raw(g), Signal::SIGKILL);
        }
    }
    // SAFETY: leaving without running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(0) }
}
