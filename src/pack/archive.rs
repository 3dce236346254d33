//! Reproducible tar streams of a [`Tree`]: entries in path order, owner 0 (or the image
//! user for the state directory), modes 0755/0644, one fixed mtime, no user or group names,
//! and gzip with no timestamp or file name. The same tree gives the same bytes; the digests
//! the OCI and docker writers need are computed while the bytes stream out.

use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::tree::{Node, Tree};

/// A writer that counts and hashes what goes through it.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The inner writer, the hex sha256 and the length of what was written.
    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex(&self.hasher.finalize()), self.len)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// sha256 of `bytes`, hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A gzip encoder with a fixed header (no mtime, no name): the same input, the same bytes.
pub fn gzip<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .mtime(0)
        .write(w, flate2::Compression::default())
}

fn header(kind: tar::EntryType, mode: u32, uid: u64, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(uid);
    h.set_size(size);
    h.set_mtime(mtime);
    h
}

/// Writes `tree` as a tar stream into `w` (entries only; the caller finishes the archive).
pub fn append_tree<W: Write>(b: &mut tar::Builder<W>, tree: &Tree, mtime: u64) -> io::Result<()> {
    for (path, node) in tree.nodes() {
        append_node(b, path, node, mtime)?;
    }
    Ok(())
}

/// Appends one entry at `path` (relative).
pub fn append_node<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    node: &Node,
    mtime: u64,
) -> io::Result<()> {
    let mode = |exec: bool| if exec { 0o755 } else { 0o644 };
    match node {
        Node::Dir { mode, uid } => {
            let mut h = header(tar::EntryType::Directory, *mode, *uid, 0, mtime);
            b.append_data(&mut h, path, io::empty())
        }
        Node::File { src, exec } => {
            let f = std::fs::File::open(src).map_err(|e| with_path(e, src))?;
            let len = f.metadata().map_err(|e| with_path(e, src))?.len();
            let mut h = header(tar::EntryType::Regular, mode(*exec), 0, len, mtime);
            // A file that changes size while packed would make a corrupt entry: take `len`
            // bytes exactly and fail if fewer come.
            use std::io::Read;
            let mut r = f.take(len);
            b.append_data(&mut h, path, &mut r)
        }
        Node::Data { bytes, exec } => {
            let mut h = header(
                tar::EntryType::Regular,
                mode(*exec),
                0,
                bytes.len() as u64,
                mtime,
            );
            b.append_data(&mut h, path, bytes.as_slice())
        }
        Node::Link { target } => {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0, mtime);
            b.append_link(&mut h, path, target)
        }
    }
}

fn with_path(e: io::Error, p: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// Digests of a layer written by [`write_layer`].
#[derive(Debug, Clone)]
pub struct Layer {
    /// sha256 of the uncompressed tar (the image config's `diff_id`), hex.
    pub diff_id: String,
    /// sha256 and size of the bytes written (compressed when gzip).
    pub digest: String,
    pub size: u64,
}

/// Writes `tree` as a tar (gzipped when `gz`) into `out`, returning its digests.
pub fn write_layer<W: Write>(tree: &Tree, mtime: u64, gz: bool, out: W) -> io::Result<(W, Layer)> {
    let outer = Hashing::new(out);
    if gz {
        let inner = Hashing::new(gzip(outer));
        let mut b = tar::Builder::new(inner);
        append_tree(&mut b, tree, mtime)?;
        let inner = b.into_inner()?;
        let (enc, diff_id, _) = inner.finish();
        let (w, digest, size) = enc.finish()?.finish();
        Ok((
            w,
            Layer {
                diff_id,
                digest,
                size,
            },
        ))
    } else {
        let mut b = tar::Builder::new(outer);
        append_tree(&mut b, tree, mtime)?;
        let (w, digest, size) = b.into_inner()?.finish();
        Ok((
            w,
            Layer {
                diff_id: digest.clone(),
                digest,
                size,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_tree_gives_the_same_bytes_and_the_digests_match_them() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("f");
        std::fs::write(&f, b"hello").expect("w");
        let mut t = Tree::new();
        t.put(Path::new("/a/b/f"), Node::File { src: f, exec: true });
        t.put(
            Path::new("/a/l"),
            Node::Link {
                target: "b/f".into(),
            },
        );
        let (one, l1) = write_layer(&t, 0, true, Vec::new()).expect("layer");
        let (two, l2) = write_layer(&t, 0, true, Vec::new()).expect("layer");
        assert_eq!(one, two);
        assert_eq!(l1.digest, sha256(&one));
        assert_eq!(l1.size, one.len() as u64);
        assert_eq!(l1.diff_id, l2.diff_id);
        let (plain, lp) = write_layer(&t, 0, false, Vec::new()).expect("layer");
        assert_eq!(lp.diff_id, l1.diff_id);
        assert_eq!(lp.digest, sha256(&plain));
        // Entries come in path order, with the fixed owner and time.
        let mut ar = tar::Archive::new(plain.as_slice());
        let names: Vec<String> = ar
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                assert_eq!(e.header().mtime().expect("mtime"), 0);
                assert_eq!(e.header().uid().expect("uid"), 0);
                e.path().expect("path").display().to_string()
            })
            .collect();
        assert_eq!(names, ["a", "a/b", "a/b/f", "a/l"]);
    }
}
