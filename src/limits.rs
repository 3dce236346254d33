//! The open-files limit (`RLIMIT_NOFILE`) of the supervisor and of the apps it starts.
//!
//! Every client connection of the proxy is a file descriptor, and so is every connection
//! to an app, every log file, pipe, health check and control client. The usual default
//! soft limit (1,024) is far below what a public port can be asked to hold, while the hard
//! limit is usually much higher (4,096 to 1,048,576), so at start the supervisor raises its
//! soft limit to the hard one ([`raise`], as Go's runtime does) and the apps get the soft
//! limit windlass itself was started with ([`restore_in_child`], in the child before exec):
//! they see no change. [`connection_budget`] then derives each proxy's default
//! `proxy.max_connections` from the raised limit, keeping [`RESERVE`] descriptors (plus
//! [`PER_INSTANCE`] per instance) for the supervisor's own files, sockets, health checks,
//! control connections and children, and counting two descriptors per client connection
//! (the client's, and the app connection a request in flight holds).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Descriptors kept for the supervisor itself: its runtimes, the control and admin
/// sockets and their clients, log files, the file watcher, health checks, app starts.
pub const RESERVE: u64 = 256;
/// Descriptors kept per app instance: its output pipes, its console, its health check,
/// the process handle.
pub const PER_INSTANCE: u64 = 16;
/// The smallest default `proxy.max_connections`, however low the limit.
pub const MIN_CONNECTIONS: u64 = 32;

/// The soft limit windlass was started with (0: not raised, children inherit ours).
static ORIGINAL_SOFT: AtomicU64 = AtomicU64::new(0);

/// What [`raise`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// The soft limit windlass was started with (what the apps get).
    pub original: u64,
    /// The soft limit now.
    pub soft: u64,
    pub hard: u64,
}

/// The current (soft, hard) open-files limit.
pub fn current() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// Raises the soft open-files limit to the hard limit, remembering the original for the
/// apps. Call once, early in the supervisor. On failure the limit stays as it was.
pub fn raise() -> io::Result<Raised> {
    let (soft, hard) = current()?;
    ORIGINAL_SOFT.store(soft, Ordering::Relaxed);
    if soft >= hard {
        return Ok(Raised {
            original: soft,
            soft,
            hard,
        });
    }
    let lim = libc::rlimit {
        rlim_cur: hard,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Raised {
        original: soft,
        soft: hard,
        hard,
    })
}

/// The soft limit to give a child: the one windlass was started with, if [`raise`] changed
/// it; `None` when the child should simply inherit ours.
pub fn child_soft_limit() -> Option<u64> {
    let original = ORIGINAL_SOFT.load(Ordering::Relaxed);
    let (soft, _) = current().ok()?;
    (original != 0 && original != soft).then_some(original)
}

/// Gives the child of `cmd` the soft limit windlass was started with (the hard limit is
/// kept), in the child before exec, so an app never notices that windlass raised its own.
pub fn restore_in_child(cmd: &mut tokio::process::Command) {
    if let Some(soft) = child_soft_limit() {
        // SAFETY: the hook only calls getrlimit and setrlimit, which are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || set_soft_in_child(soft));
        }
    }
}

/// The body of [`restore_in_child`]'s hook (for commands that have a hook of their own).
/// Async-signal-safe: only getrlimit and setrlimit.
pub fn set_soft_in_child(soft: u64) -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = soft.min(lim.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The default `proxy.max_connections` of each app with a public port, for a soft limit of
/// `nofile`, `proxied_apps` apps with a port and `instances` instances in all:
/// `(nofile - RESERVE - PER_INSTANCE × instances) / (2 × proxied_apps)`, at least
/// [`MIN_CONNECTIONS`].
pub fn connection_budget(nofile: u64, proxied_apps: usize, instances: usize) -> usize {
    let apps = proxied_apps.max(1) as u64;
    let usable = nofile
        .saturating_sub(RESERVE)
        .saturating_sub(PER_INSTANCE.saturating_mul(instances as u64));
    let each = (usable / (2 * apps)).max(MIN_CONNECTIONS);
    usize::try_from(each).unwrap_or(usize::MAX)
}

/// Whether `e` means this process (or the system) is out of descriptors, buffers or
/// memory: windlass's own trouble, not a fault of the app or the peer.
pub fn is_local_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// What to tell the user about a local exhaustion error `e`, or `None` for other errors.
pub fn exhaustion_hint(e: &io::Error) -> Option<&'static str> {
    match e.raw_os_error() {
        Some(libc::EMFILE) => Some(
            "windlass has run out of file descriptors: raise its open-files limit (`ulimit -n`, or LimitNOFILE= in its systemd unit) or lower `proxy.max_connections`",
        ),
        Some(libc::ENFILE) => Some(
            "the system has run out of file descriptors (fs.file-max): raise it, or lower `proxy.max_connections`",
        ),
        Some(libc::ENOBUFS | libc::ENOMEM) => {
            Some("the system is out of memory for sockets or processes")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_a_reserve_and_splits_the_rest() {
        // The usual 1,024: (1024 - 256 - 16) / 2.
        assert_eq!(connection_budget(1024, 1, 1), 376);
        assert_eq!(connection_budget(4096, 1, 1), 1912);
        assert_eq!(connection_budget(4096, 2, 4), (4096 - 256 - 64) / 4);
        // Never below the floor, never a division by zero.
        assert_eq!(connection_budget(100, 1, 1), MIN_CONNECTIONS as usize);
        assert_eq!(connection_budget(0, 0, 0), MIN_CONNECTIONS as usize);
        assert_eq!(
            connection_budget(u64::MAX, 1, usize::MAX),
            MIN_CONNECTIONS as usize
        );
    }

    #[test]
    fn exhaustion_errors_are_recognised() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(is_local_exhaustion(&e), "{e}");
            assert!(exhaustion_hint(&e).is_some(), "{e}");
        }
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert!(!is_local_exhaustion(&refused));
        assert!(exhaustion_hint(&refused).is_none());
    }
}
