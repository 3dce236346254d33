//! Resource usage read from /proc: summed over an instance's process group (the app and every
//! process it started), and windlass's own. The one reader of usage: `status` and `/metrics`
//! both count with these rules, so they report the same memory for an instance.
//!
//! One pass over /proc per reading buckets every process by its process group, so the cost
//! does not grow with the number of instances. Zombies hold no memory and are skipped; a process
//! that exits during the scan is skipped too (its numbers are simply gone).

use std::collections::HashMap;

/// Usage of one process, or summed over a group.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Live processes counted.
    pub processes: u64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
    /// Open file descriptors (0 for processes whose fd table cannot be read).
    pub open_fds: u64,
}

impl Usage {
    fn add(&mut self, o: &Usage) {
        self.processes += o.processes;
        self.resident_bytes += o.resident_bytes;
        self.virtual_bytes += o.virtual_bytes;
        self.cpu_seconds += o.cpu_seconds;
        self.threads += o.threads;
        self.open_fds += o.open_fds;
    }
}

fn usage_of(p: &procfs::process::Process, stat: &procfs::process::Stat) -> Usage {
    let tps = procfs::ticks_per_second().max(1) as f64;
    Usage {
        processes: 1,
        resident_bytes: stat.rss.saturating_mul(procfs::page_size()),
        virtual_bytes: stat.vsize,
        cpu_seconds: (stat.utime + stat.stime) as f64 / tps,
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        open_fds: p.fd_count().map_or(0, |n| n as u64),
    }
}

/// Usage summed per process group, for the groups in `pgids` only.
pub fn groups(pgids: &[i32]) -> HashMap<i32, Usage> {
    let mut out: HashMap<i32, Usage> = HashMap::new();
    if pgids.is_empty() {
        return out;
    }
    let Ok(all) = procfs::process::all_processes() else {
        return out;
    };
    for p in all.flatten() {
        let Ok(stat) = p.stat() else { continue };
        if stat.state == 'Z' || stat.state == 'X' || !pgids.contains(&stat.pgrp) {
            continue;
        }
        out.entry(stat.pgrp).or_default().add(&usage_of(&p, &stat));
    }
    out
}

/// windlass's own process.
pub fn myself() -> Option<Usage> {
    let p = procfs::process::Process::myself().ok()?;
    let stat = p.stat().ok()?;
    Some(usage_of(&p, &stat))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_usage_is_plausible() {
        let u = myself().expect("/proc/self is readable");
        assert_eq!(u.processes, 1);
        assert!(u.resident_bytes > 0);
        assert!(u.virtual_bytes >= u.resident_bytes);
        assert!(u.threads >= 1);
        assert!(u.open_fds >= 3, "stdin, stdout, stderr at least: {u:?}");
    }

    #[test]
    fn a_group_sums_its_members_and_ignores_others() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let pgid = child.id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let g = groups(&[pgid]);
            if g.get(&pgid).is_some_and(|u| u.processes == 3) {
                break g[&pgid];
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never saw 3 processes in the group: {g:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert!(found.resident_bytes > 0 && found.threads >= 3);
        // SAFETY: plain kill(2) on the group this test created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
        assert!(groups(&[]).is_empty());
    }

    use std::os::unix::process::CommandExt;
}
