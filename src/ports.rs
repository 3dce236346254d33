//! Who holds a TCP port: read from `/proc`, so that "address already in use" can name the
//! culprit instead of leaving the user to run `ss -ltnp`.
//!
//! A listening socket appears in `/proc/net/tcp` (and `tcp6`) with its inode; the process that
//! holds it has a `/proc/PID/fd/N` link to `socket:[INODE]`. Processes of other users cannot be
//! inspected without privileges: then the port is known to be taken, but not by whom.

use std::path::Path;

/// The process listening on TCP `port` (any local address, IPv4 or IPv6): its pid and command
/// line (arguments joined by spaces). `None` when nothing listens there, or when the holder
/// cannot be seen (another user's process; see [`listening`]).
pub fn who_holds_port(port: u16) -> Option<(u32, String)> {
    who_holds_port_in(Path::new("/proc"), port)
}

/// True when some socket listens on TCP `port`, whoever holds it.
pub fn listening(port: u16) -> bool {
    !listening_inodes(Path::new("/proc"), port).is_empty()
}

/// [`who_holds_port`] against another proc root (tests use a fake tree).
pub fn who_holds_port_in(proc_root: &Path, port: u16) -> Option<(u32, String)> {
    let inodes = listening_inodes(proc_root, port);
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let mut pids: Vec<u32> = std::fs::read_dir(proc_root)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|t| t.to_str().map(|s| targets.iter().any(|x| x == s)))
                .unwrap_or(false)
        });
        if holds {
            return Some((pid, cmdline(proc_root, pid)));
        }
    }
    None
}

fn cmdline(proc_root: &Path, pid: u32) -> String {
    let raw = std::fs::read(proc_root.join(pid.to_string()).join("cmdline")).unwrap_or_default();
    let args: Vec<String> = raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        // Kernel threads and zombies have no command line; `comm` still names them.
        std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    } else {
        args.join(" ")
    }
}

/// Inodes of the sockets in state LISTEN on `port`, from `net/tcp` and `net/tcp6`.
fn listening_inodes(proc_root: &Path, port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(proc_root.join(table)) else {
            continue;
        };
        out.extend(parse_table(&text, port));
    }
    out
}

/// Parses one `/proc/net/tcp`-format table; returns the inodes listening on `port`.
fn parse_table(text: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let local = f.get(1)?;
            let (_, hex_port) = local.rsplit_once(':')?;
            let p = u16::from_str_radix(hex_port, 16).ok()?;
            (p == port && *f.get(3)? == LISTEN).then_some(())?;
            f.get(9)?.parse::<u64>().ok().filter(|i| *i != 0)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 100 0 0 10 0
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn only_listening_sockets_on_the_port_count() {
        assert_eq!(parse_table(TABLE, 8080), vec![4242]);
        assert_eq!(parse_table(TABLE, 80), vec![77]);
        assert!(parse_table(TABLE, 9999).is_empty());
        assert!(parse_table("garbage\nmore garbage here\n", 80).is_empty());
    }

    #[test]
    fn finds_this_very_process_holding_a_real_port() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = l.local_addr().expect("local addr").port();
        let (pid, cmd) = who_holds_port(port).expect("our own listener is visible");
        assert_eq!(pid, std::process::id());
        assert!(!cmd.is_empty());
        assert!(listening(port));
        drop(l);
        assert!(who_holds_port(port).is_none());
    }
}
