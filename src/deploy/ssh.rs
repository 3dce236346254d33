//! The wire to one host: the system's OpenSSH client, one multiplexed connection per host
//! (`ControlMaster`), remote commands as quoted shell lines, and file trees copied with
//! `rsync` when both ends have it, else as a tar stream over the same connection.
//!
//! Nothing here knows what a release is; it moves bytes and runs commands. Secrets travel on
//! a command's stdin, never on a command line (which `ps` on either end would show).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Quotes `s` for a POSIX shell (the remote end of every ssh command).
pub(crate) fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%+,".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One host's connection settings.
#[derive(Debug, Clone)]
pub(crate) struct Ssh {
    /// `user@name` or `name`.
    pub dest: String,
    /// The user's `ssh_options`.
    pub options: Vec<String>,
    /// The multiplexing socket (in a private temporary directory).
    control: PathBuf,
}

/// What a remote command did.
#[derive(Debug)]
pub(crate) struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    fn from(out: Output) -> Ran {
        Ran {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The command's output for an error message: stderr, else stdout, trimmed.
    pub fn output(&self) -> String {
        let e = self.stderr.trim();
        if e.is_empty() {
            self.stdout.trim().to_owned()
        } else {
            e.to_owned()
        }
    }
}

impl Ssh {
    pub fn new(dest: String, options: Vec<String>, control_dir: &Path, index: usize) -> Ssh {
        Ssh {
            dest,
            options,
            control: control_dir.join(format!("c{index}")),
        }
    }

    /// The options every ssh of this host gets: the user's, then batch mode (never prompt)
    /// and the shared connection.
    fn args(&self) -> Vec<String> {
        let mut a = self.options.clone();
        a.extend(
            [
                "-o",
                "BatchMode=yes",
                "-o",
                &format!("ControlPath={}", self.control.display()),
            ]
            .map(String::from),
        );
        a
    }

    /// Opens the shared connection (authenticating once); the error says why not.
    pub fn connect(&self) -> Result<(), String> {
        let log = self.control.with_extension("log");
        let err = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let status = Command::new("ssh")
            .args(self.args())
            .args([
                "-o",
                "ControlMaster=yes",
                "-o",
                "ControlPersist=300",
                "-f",
                "-N",
                "--",
            ])
            .arg(&self.dest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .status()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Err(format!("ssh {} failed: {}", self.dest, text.trim()))
        }
    }

    /// Closes the shared connection (its background process exits).
    pub fn close(&self) {
        let _ = Command::new("ssh")
            .args(self.args())
            .args(["-O", "exit", "--"])
            .arg(&self.dest)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    fn command(&self, script: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.args()).arg("--").arg(&self.dest).arg(script);
        c
    }

    /// Runs a shell line on the host.
    pub fn run(&self, script: &str) -> std::io::Result<Ran> {
        self.command(script)
            .stdin(Stdio::null())
            .output()
            .map(Ran::from)
    }

    /// Runs a shell line on the host with `input` on its stdin.
    pub fn run_with_input(&self, script: &str, input: &[u8]) -> std::io::Result<Ran> {
        let mut child = self
            .command(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        Ok(Ran::from(out))
    }

    /// `rsync`'s `-e`: ssh and our options, quoted the way rsync splits it (spaces separate,
    /// single or double quotes keep an argument whole).
    fn rsync_shell(&self) -> String {
        let mut parts = vec!["ssh".to_owned()];
        for a in self.args() {
            if a.contains([' ', '\'']) {
                parts.push(format!("\"{a}\""));
            } else {
                parts.push(a);
            }
        }
        parts.join(" ")
    }

    /// Copies the tree `src` into `dest` on the host with rsync (`dest` is created; files equal
    /// to those in `link_dest`, paths relative to `dest`, are hard-linked instead of sent).
    /// Returns the bytes sent.
    pub fn rsync(&self, src: &Path, dest: &str, link_dest: &[String]) -> Result<u64, String> {
        let mut c = Command::new("rsync");
        c.args(["-a", "--delete", "--stats", "--mkpath", "-e"])
            .arg(self.rsync_shell());
        for l in link_dest {
            c.arg(format!("--link-dest={l}"));
        }
        let mut from = src.as_os_str().to_owned();
        if src.is_dir() {
            from.push("/");
        }
        c.arg(from).arg(format!("{}:{dest}", self.dest));
        let out = c
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run rsync: {e}"))?;
        let ran = Ran::from(out);
        if !ran.ok {
            return Err(format!(
                "rsync to {}:{dest} failed: {}",
                self.dest,
                ran.output()
            ));
        }
        Ok(ran
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("Total bytes sent: "))
            .and_then(|n| n.trim().replace(',', "").parse().ok())
            .unwrap_or(0))
    }

    /// Copies the tree `src` into `dest` on the host as a tar stream over ssh (for hosts
    /// without rsync). Returns the bytes sent.
    pub fn tar(&self, src: &Path, dest: &str) -> Result<u64, String> {
        let (dir, what) = if src.is_dir() {
            (src.to_path_buf(), ".".to_owned())
        } else {
            let parent = src.parent().unwrap_or(Path::new("/")).to_path_buf();
            let name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (parent, name)
        };
        let script = if src.is_dir() {
            format!("mkdir -p {d} && tar -C {d} -xf -", d = quote(dest))
        } else {
            // A single file: unpack beside it, then rename over it.
            let parent = dest.rsplit_once('/').map_or(".", |(p, _)| p);
            format!(
                "mkdir -p {p} && t=$(mktemp -d {p}/.upload.XXXXXX) && tar -C \"$t\" -xf - && mv -f \"$t\"/{n} {d} && rmdir \"$t\"",
                p = quote(parent),
                n = quote(&what),
                d = quote(dest)
            )
        };
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&dir)
            .args(["-cf", "-", "--"])
            .arg(&what)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run tar: {e}"))?;
        let mut ssh = self
            .command(&script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run ssh: {e}"))?;
        let mut from = tar.stdout.take().expect("stdout is piped");
        let mut to = ssh.stdin.take().expect("stdin is piped");
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut write_error = None;
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = to.write_all(&buf[..n]) {
                        write_error = Some(e);
                        break;
                    }
                    sent += n as u64;
                }
                Err(e) => {
                    write_error = Some(e);
                    break;
                }
            }
        }
        drop(to);
        drop(from);
        let tar_out = tar.wait_with_output().map_err(|e| e.to_string())?;
        let ssh_out = Ran::from(ssh.wait_with_output().map_err(|e| e.to_string())?);
        if !tar_out.status.success() {
            return Err(format!(
                "tar of {} failed: {}",
                src.display(),
                String::from_utf8_lossy(&tar_out.stderr).trim()
            ));
        }
        if !ssh_out.ok {
            return Err(format!(
                "unpacking into {}:{dest} failed: {}",
                self.dest,
                ssh_out.output()
            ));
        }
        if let Some(e) = write_error {
            return Err(format!("sending to {} failed: {e}", self.dest));
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting_survives_the_shell() {
        for s in [
            "plain",
            "with space",
            "it's",
            "$(id)",
            "a\"b",
            "",
            "/srv/x y/'z'",
        ] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(s)))
                .output()
                .expect("sh runs");
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }
}
