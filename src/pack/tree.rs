//! The file tree of a pack: every path of the artefact (relative to its root, sorted) and what
//! it is — a directory, a file copied from the host, bytes windlass generates, or a symlink.
//! Host files keep their absolute paths inside the tree (`/lib/x86_64-linux-gnu/libc.so.6`
//! stays that), and every symlink met on the way there is recorded as a symlink, so the
//! loader, RUNPATHs and interpreters' compiled-in prefixes find what they expect once the
//! tree is a root (chroot, container). Owners, modes and times are normalised here, once,
//! so that every writer (tar, OCI, docker) produces the same bytes for the same tree.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The owner of the project's state directory inside an image (the image's user).
pub const APP_UID: u64 = 65532;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32, uid: u64 },
    File { src: PathBuf, exec: bool },
    Data { bytes: Vec<u8>, exec: bool },
    Link { target: PathBuf },
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("too many levels of symbolic links at {}", .0.display())]
    Loop(PathBuf),
    #[error("{} is neither a file, a directory nor a symlink", .0.display())]
    Special(PathBuf),
}

/// The tree: relative paths (no leading `/`) to nodes; parents always present.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    nodes: BTreeMap<PathBuf, Node>,
}

/// `p` made relative to the root, with `.` and `..` resolved lexically.
pub fn rel(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    pub fn nodes(&self) -> impl Iterator<Item = (&PathBuf, &Node)> {
        self.nodes.iter()
    }

    #[cfg(test)]
    pub fn get(&self, p: &Path) -> Option<&Node> {
        self.nodes.get(&rel(p))
    }

    pub fn contains(&self, p: &Path) -> bool {
        self.nodes.contains_key(&rel(p))
    }

    /// Adds the directories above `p` that are missing.
    fn parents(&mut self, p: &Path) {
        let mut cur = PathBuf::new();
        let comps: Vec<_> = p.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            cur.push(c);
            self.nodes.entry(cur.clone()).or_insert(Node::Dir {
                mode: 0o755,
                uid: 0,
            });
        }
    }

    /// Puts `node` at `p` (absolute or relative), replacing what was there.
    pub fn put(&mut self, p: &Path, node: Node) {
        let p = rel(p);
        if p.as_os_str().is_empty() {
            return;
        }
        self.parents(&p);
        self.nodes.insert(p, node);
    }

    /// Puts `node` at `p` unless something is there already.
    pub fn put_new(&mut self, p: &Path, node: Node) {
        if !self.contains(p) {
            self.put(p, node);
        }
    }

    /// Mirrors the host path `host` (absolute) at the same path in the tree, recording every
    /// symlink on the way and the directories it passes; returns the host's real path of it.
    /// Directories are added empty (see [`Tree::add_host_dir`] for their contents).
    pub fn add_host(&mut self, host: &Path) -> Result<PathBuf, TreeError> {
        let mut pending: PathBuf = rel(host);
        let mut hops = 0;
        'restart: loop {
            let mut cur = PathBuf::from("/");
            let comps: Vec<_> = pending.components().collect();
            for (i, c) in comps.iter().enumerate() {
                cur.push(c);
                let meta = std::fs::symlink_metadata(&cur).map_err(|source| TreeError::Read {
                    path: cur.clone(),
                    source,
                })?;
                let ft = meta.file_type();
                if ft.is_symlink() {
                    hops += 1;
                    if hops > 40 {
                        return Err(TreeError::Loop(host.to_path_buf()));
                    }
                    let target = std::fs::read_link(&cur).map_err(|source| TreeError::Read {
                        path: cur.clone(),
                        source,
                    })?;
                    self.put_new(
                        &cur,
                        Node::Link {
                            target: target.clone(),
                        },
                    );
                    let base = cur.parent().unwrap_or(Path::new("/"));
                    let mut next = rel(&base.join(&target));
                    for rest in &comps[i + 1..] {
                        next.push(rest);
                    }
                    pending = rel(&next);
                    continue 'restart;
                } else if ft.is_dir() {
                    self.put_new(
                        &cur,
                        Node::Dir {
                            mode: 0o755,
                            uid: 0,
                        },
                    );
                } else if ft.is_file() {
                    if i + 1 != comps.len() {
                        return Err(TreeError::Read {
                            path: cur.clone(),
                            source: std::io::Error::from(std::io::ErrorKind::NotADirectory),
                        });
                    }
                    use std::os::unix::fs::PermissionsExt;
                    self.put(
                        &cur,
                        Node::File {
                            src: cur.clone(),
                            exec: meta.permissions().mode() & 0o111 != 0,
                        },
                    );
                } else {
                    return Err(TreeError::Special(cur));
                }
            }
            return Ok(cur);
        }
    }

    /// Mirrors the host directory `dir` and everything under it (symlinks kept as symlinks),
    /// leaving out entries for which `skip(relative path)` is true.
    pub fn add_host_dir(
        &mut self,
        dir: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<PathBuf, TreeError> {
        let real = self.add_host(dir)?;
        self.copy_dir(
            &real,
            &real,
            Path::new("/").join(rel(&real)).as_path(),
            skip,
        )?;
        Ok(real)
    }

    /// Copies the host directory `src` (recursively) to `dest` in the tree.
    pub fn copy_dir(
        &mut self,
        top: &Path,
        src: &Path,
        dest: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<(), TreeError> {
        let entries = std::fs::read_dir(src).map_err(|source| TreeError::Read {
            path: src.to_path_buf(),
            source,
        })?;
        let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for name in names {
            let path = src.join(&name);
            if skip(path.strip_prefix(top).unwrap_or(&path)) {
                continue;
            }
            self.copy_entry(&path, &dest.join(&name))?;
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                self.copy_dir(top, &path, &dest.join(&name), skip)?;
            }
        }
        Ok(())
    }

    /// Copies one host entry (not its contents, for a directory) to `dest`.
    pub fn copy_entry(&mut self, path: &Path, dest: &Path) -> Result<(), TreeError> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::symlink_metadata(path).map_err(|source| TreeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let ft = meta.file_type();
        let node = if ft.is_symlink() {
            Node::Link {
                target: std::fs::read_link(path).map_err(|source| TreeError::Read {
                    path: path.to_path_buf(),
                    source,
                })?,
            }
        } else if ft.is_dir() {
            Node::Dir {
                mode: 0o755,
                uid: 0,
            }
        } else if ft.is_file() {
            Node::File {
                src: path.to_path_buf(),
                exec: meta.permissions().mode() & 0o111 != 0,
            }
        } else {
            // Sockets and fifos (a running app's control socket) have no place in a pack.
            return Ok(());
        };
        self.put(dest, node);
        Ok(())
    }

    /// The subtree of entries under `prefix` (and the directories above it), and the rest.
    pub fn split(self, prefix: &Path) -> (Tree, Tree) {
        let prefix = rel(prefix);
        let mut inside = Tree::new();
        let mut outside = Tree::new();
        for (p, n) in self.nodes {
            if p.starts_with(&prefix) {
                inside.put(&p, n);
            } else {
                outside.nodes.insert(p, n);
            }
        }
        (inside, outside)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_keep_their_symlinks_and_directories() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().canonicalize().expect("canon");
        std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        std::fs::write(root.join("usr/lib/libx.so.1.2"), b"x").expect("w");
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).expect("ln");
        std::os::unix::fs::symlink("libx.so.1.2", root.join("usr/lib/libx.so.1")).expect("ln");
        let mut t = Tree::new();
        let real = t.add_host(&root.join("lib/libx.so.1")).expect("add");
        assert_eq!(real, root.join("usr/lib/libx.so.1.2"));
        assert_eq!(
            t.get(&root.join("lib")),
            Some(&Node::Link {
                target: "usr/lib".into()
            })
        );
        assert_eq!(
            t.get(&root.join("usr/lib/libx.so.1")),
            Some(&Node::Link {
                target: "libx.so.1.2".into()
            })
        );
        assert!(matches!(
            t.get(&root.join("usr/lib/libx.so.1.2")),
            Some(Node::File { exec: false, .. })
        ));
        assert!(matches!(t.get(&root.join("usr")), Some(Node::Dir { .. })));
        let (inside, outside) = t.split(&root.join("usr"));
        assert!(inside.contains(&root.join("usr/lib/libx.so.1.2")));
        assert!(outside.contains(&root.join("lib")) && !outside.contains(&root.join("usr/lib")));
    }

    #[test]
    fn a_symlink_loop_is_an_error_not_a_hang() {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().canonicalize().expect("canon");
        std::os::unix::fs::symlink("b", root.join("a")).expect("ln");
        std::os::unix::fs::symlink("a", root.join("b")).expect("ln");
        assert!(matches!(
            Tree::new().add_host(&root.join("a")),
            Err(TreeError::Loop(_))
        ));
    }
}
