//! Real "hosts" for the deploy tests: each an OpenSSH `sshd` in its own network namespace
//! (`ip netns`, a veth pair, private addresses this test run picks), with host and client
//! keys generated here, a test-only `known_hosts` and an ssh config that checks host keys
//! strictly. Namespaces share the filesystem, so each host gets its own deploy directory.
//! Everything is torn down on drop: the supervisors the deploys started, sshd, the
//! namespaces (which takes their veth pairs with them).

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{DEADLINE, wait_for};

static RUN: AtomicU32 = AtomicU32::new(0);

pub struct Host {
    /// The ssh name (an alias of the generated ssh config).
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    /// This host's project directory (what the config's per-host `path` says).
    pub path: PathBuf,
    sshd: Child,
}

pub struct Hosts {
    pub dir: tempfile::TempDir,
    pub hosts: Vec<Host>,
    /// `-F <ssh_config>`: what the config's `ssh_options` should say.
    pub ssh_config: PathBuf,
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Hosts {
    /// `n` hosts. Panics with what is missing when namespaces or sshd cannot be had.
    pub fn new(n: usize) -> Hosts {
        Hosts::with_rsync(n, &[])
    }

    /// `n` hosts; those whose index is in `no_rsync` run sessions with a PATH that has every
    /// command of /usr/bin but rsync (a host without rsync installed).
    pub fn with_rsync(n: usize, no_rsync: &[usize]) -> Hosts {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let run = std::process::id()
            .wrapping_mul(8)
            .wrapping_add(RUN.fetch_add(1, Ordering::Relaxed))
            & 0xffff;
        let tag = format!("{run:04x}");
        // 10.<hi>.<lo>.0/24 for this run (from the pid, so parallel runs differ), a /30 per host.
        let (hi, lo) = (((run >> 8) & 0xff) as u8, (run & 0xff) as u8);
        std::fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let key = d.join("id_ed25519");
        sh(&[
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "windlass-test",
            "-f",
            key.to_str().expect("utf-8 temp path"),
        ])
        .expect("ssh-keygen (openssh-client)");
        std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys"))
            .expect("authorized_keys");
        let mut known = String::new();
        let mut ssh_config = String::new();
        let mut hosts: Vec<Host> = Vec::new();
        let mut out = Hosts {
            dir,
            hosts: Vec::new(),
            ssh_config: PathBuf::new(),
        };
        let d = out.dir.path().to_path_buf();
        for i in 0..n {
            let name = format!("host{}", i + 1);
            let netns = format!("wd{tag}h{i}");
            let (va, vb) = (format!("wd{tag}{i}a"), format!("wd{tag}{i}b"));
            let base = 4 * i as u8;
            let gw = Ipv4Addr::new(10, hi, lo, base + 1);
            let ip = Ipv4Addr::new(10, hi, lo, base + 2);
            let steps: Vec<Vec<String>> = vec![
                vec!["ip".into(), "netns".into(), "add".into(), netns.clone()],
                vec![
                    "ip".into(),
                    "link".into(),
                    "add".into(),
                    va.clone(),
                    "type".into(),
                    "veth".into(),
                    "peer".into(),
                    "name".into(),
                    vb.clone(),
                ],
                vec![
                    "ip".into(),
                    "link".into(),
                    "set".into(),
                    vb.clone(),
                    "netns".into(),
                    netns.clone(),
                ],
                vec![
                    "ip".into(),
                    "addr".into(),
                    "add".into(),
                    format!("{gw}/30"),
                    "dev".into(),
                    va.clone(),
                ],
                vec![
                    "ip".into(),
                    "link".into(),
                    "set".into(),
                    va.clone(),
                    "up".into(),
                ],
                vec![
                    "ip".into(),
                    "netns".into(),
                    "exec".into(),
                    netns.clone(),
                    "ip".into(),
                    "addr".into(),
                    "add".into(),
                    format!("{ip}/30"),
                    "dev".into(),
                    vb.clone(),
                ],
                vec![
                    "ip".into(),
                    "netns".into(),
                    "exec".into(),
                    netns.clone(),
                    "ip".into(),
                    "link".into(),
                    "set".into(),
                    vb.clone(),
                    "up".into(),
                ],
                vec![
                    "ip".into(),
                    "netns".into(),
                    "exec".into(),
                    netns.clone(),
                    "ip".into(),
                    "link".into(),
                    "set".into(),
                    "lo".into(),
                    "up".into(),
                ],
            ];
            for s in &steps {
                let args: Vec<&str> = s.iter().map(String::as_str).collect();
                if let Err(e) = sh(&args) {
                    out.hosts = hosts;
                    drop(out);
                    let _ = sh(&["ip", "netns", "del", &netns]);
                    panic!(
                        "cannot make the test's network namespace (needs root and iproute2): {e}"
                    );
                }
            }
            let hostkey = d.join(format!("hostkey{i}"));
            sh(&[
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                hostkey.to_str().expect("utf-8 temp path"),
            ])
            .expect("host key");
            let pubkey =
                std::fs::read_to_string(d.join(format!("hostkey{i}.pub"))).expect("host pub");
            let mut fields = pubkey.split_whitespace();
            known.push_str(&format!(
                "{ip} {} {}\n",
                fields.next().expect("a host key line"),
                fields.next().expect("a host key line")
            ));
            let mut set_env = String::new();
            if no_rsync.contains(&i) {
                let bin = d.join(format!("bin-without-rsync{i}"));
                std::fs::create_dir_all(&bin).expect("mkdir");
                for e in std::fs::read_dir("/usr/bin").expect("/usr/bin").flatten() {
                    if e.file_name() != "rsync" {
                        let _ = std::os::unix::fs::symlink(e.path(), bin.join(e.file_name()));
                    }
                }
                set_env = format!("SetEnv PATH={}:/usr/sbin\n", bin.display());
            }
            let cfg = d.join(format!("sshd{i}.conf"));
            std::fs::write(
                &cfg,
                format!(
                    "Port 22\nListenAddress {ip}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nMaxSessions 50\nMaxStartups 50\nLogLevel ERROR\n{set_env}",
                    hostkey.display(),
                    d.join("authorized_keys").display()
                ),
            )
            .expect("sshd config");
            let sshd = Command::new("ip")
                .args(["netns", "exec", &netns, "/usr/sbin/sshd", "-D", "-e", "-f"])
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join(format!("sshd{i}.log"))).expect("log"))
                .spawn()
                .expect("sshd (openssh-server) starts");
            let path = d.join(format!("srv{}", i + 1)).join("shop");
            ssh_config.push_str(&format!(
                "Host {name}\n  HostName {ip}\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  GlobalKnownHostsFile /dev/null\n  LogLevel ERROR\n\n",
                key.display(),
                d.join("known_hosts").display()
            ));
            hosts.push(Host {
                name,
                ip,
                netns,
                path,
                sshd,
            });
        }
        std::fs::write(d.join("known_hosts"), known).expect("known_hosts");
        out.ssh_config = d.join("ssh_config");
        std::fs::write(&out.ssh_config, ssh_config).expect("ssh_config");
        out.hosts = hosts;
        for h in &out.hosts {
            let addr = SocketAddr::from((h.ip, 22));
            wait_for(&format!("sshd of {} on {addr}", h.name), DEADLINE, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            });
        }
        out
    }

    /// The `[deploy]` table for these hosts, each with its own path.
    pub fn deploy_table(&self) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| {
                format!(
                    "{{ name = \"{}\", path = \"{}\" }}",
                    h.name,
                    h.path.display()
                )
            })
            .collect();
        format!(
            "[deploy]\nhosts = [{}]\nssh_options = [\"-F\", \"{}\"]\n",
            hosts.join(", "),
            self.ssh_config.display()
        )
    }

    /// Runs `ssh HOST CMD` through the test's ssh config.
    pub fn ssh(&self, host: usize, cmd: &str) -> std::process::Output {
        Command::new("ssh")
            .arg("-F")
            .arg(&self.ssh_config)
            .arg(&self.hosts[host].name)
            .arg(cmd)
            .output()
            .expect("ssh runs")
    }
}

impl Host {
    /// The windlass the deploy put on this host.
    pub fn windlass(&self) -> PathBuf {
        self.path.join(".windlass/bin/windlass")
    }
}

fn stop_supervisor(path: &Path) {
    let wl = path.join(".windlass/bin/windlass");
    if wl.exists() && path.join(".windlass/control.sock").exists() {
        let _ = Command::new(&wl)
            .arg("down")
            .current_dir(path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            stop_supervisor(&h.path);
            let _ = h.sshd.kill();
            let _ = h.sshd.wait();
            // Anything left in the namespace was started by this test (through its sshd).
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &h.netns])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", &h.netns]).status();
        }
    }
}
