//! The shared-library closure of ELF executables, resolved the way the dynamic loader (and
//! `ldd`) does: each object's `DT_NEEDED` entries are looked up in its `DT_RPATH` (and its
//! loaders', when it has no `DT_RUNPATH`), its `DT_RUNPATH`, the directories of
//! `/etc/ld.so.conf` (and the files it includes), then the standard library directories; a
//! candidate of the wrong ELF class or machine is skipped, as ld.so skips it. The loader named
//! by `PT_INTERP` is part of the closure. ELF parsing is goblin's; this module owns the search.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use goblin::elf::Elf;

/// Why the closure could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not an ELF file the loader can run: {reason}", path.display())]
    NotElf { path: PathBuf, reason: String },
    #[error("{lib} (needed by {}) not found in {}", by.display(), searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":"))]
    NotFound {
        lib: String,
        by: PathBuf,
        searched: Vec<PathBuf>,
    },
}

/// What the loader will map for a set of objects.
#[derive(Debug, Default)]
pub struct Closure {
    /// Every object: the roots, the libraries (as found, before symlinks are resolved), and
    /// the dynamic loaders.
    pub files: BTreeSet<PathBuf>,
    /// The directories libraries were found in through ld.so.conf or the standard
    /// directories (not through a RUNPATH, which the packed object still carries): what
    /// `LD_LIBRARY_PATH` must list where no `ld.so.cache` exists.
    pub lib_dirs: BTreeSet<PathBuf>,
    /// Libraries that could not be found, for roots that were added as optional.
    pub missing: Vec<ClosureError>,
}

/// The ELF identity a library must share with the object that needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    is_64: bool,
    machine: u16,
}

/// The library search: ld.so.conf directories, then the standard ones.
#[derive(Debug, Clone)]
pub struct Resolver {
    /// Prefixed onto every absolute path read (tests point it at a fake root); "/" normally.
    root: PathBuf,
    conf_dirs: Vec<PathBuf>,
}

/// The standard directories of the loader on 64-bit Debian-like systems (multiarch first),
/// then on the rest.
const STANDARD_DIRS_64: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];
const STANDARD_DIRS_32: &[&str] = &[
    "/lib/i386-linux-gnu",
    "/usr/lib/i386-linux-gnu",
    "/lib/arm-linux-gnueabihf",
    "/usr/lib/arm-linux-gnueabihf",
    "/lib32",
    "/usr/lib32",
    "/lib",
    "/usr/lib",
];

impl Resolver {
    /// The host's search: `/etc/ld.so.conf` read now.
    pub fn host() -> Resolver {
        Resolver::with_root(Path::new("/"))
    }

    /// The search of the system rooted at `root` (its `etc/ld.so.conf`).
    pub fn with_root(root: &Path) -> Resolver {
        let mut r = Resolver {
            root: root.to_path_buf(),
            conf_dirs: Vec::new(),
        };
        let mut seen = BTreeSet::new();
        r.conf_dirs = r.read_conf(Path::new("/etc/ld.so.conf"), &mut seen);
        r
    }

    fn host_path(&self, p: &Path) -> PathBuf {
        match p.strip_prefix("/") {
            Ok(rel) => self.root.join(rel),
            Err(_) => self.root.join(p),
        }
    }

    /// The directories of an ld.so.conf file, following `include` lines (glob patterns).
    fn read_conf(&self, file: &Path, seen: &mut BTreeSet<PathBuf>) -> Vec<PathBuf> {
        if !seen.insert(file.to_path_buf()) {
            return Vec::new();
        }
        let Ok(text) = std::fs::read_to_string(self.host_path(file)) else {
            return Vec::new();
        };
        let mut dirs = Vec::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            if let Some(pattern) = line.strip_prefix("include") {
                let pattern = pattern.trim();
                let pattern = if pattern.starts_with('/') {
                    PathBuf::from(pattern)
                } else {
                    file.parent().unwrap_or(Path::new("/")).join(pattern)
                };
                for inc in self.glob(&pattern) {
                    dirs.extend(self.read_conf(&inc, seen));
                }
            } else if line.starts_with('/') {
                // `dir=TYPE` (libc4/5 era) keeps the directory.
                let dir = line.split('=').next().unwrap_or(line).trim();
                dirs.push(PathBuf::from(dir));
            }
        }
        dirs
    }

    /// The files matching `pattern` (a glob in its last component only, as in practice),
    /// sorted like glob(3) does.
    fn glob(&self, pattern: &Path) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
            return Vec::new();
        };
        let Ok(matcher) = globset::Glob::new(&name.to_string_lossy()) else {
            return Vec::new();
        };
        let matcher = matcher.compile_matcher();
        let Ok(entries) = std::fs::read_dir(self.host_path(dir)) else {
            return Vec::new();
        };
        let mut out: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| matcher.is_match(e.file_name()))
            .map(|e| dir.join(e.file_name()))
            .collect();
        out.sort();
        out
    }

    /// The search path for libraries of `kind`, after an object's own paths.
    fn system_dirs(&self, kind: Kind) -> Vec<PathBuf> {
        let standard = if kind.is_64 {
            STANDARD_DIRS_64
        } else {
            STANDARD_DIRS_32
        };
        let mut out: Vec<PathBuf> = Vec::new();
        for d in self
            .conf_dirs
            .iter()
            .cloned()
            .chain(standard.iter().map(PathBuf::from))
        {
            if !out.contains(&d) {
                out.push(d);
            }
        }
        out
    }

    /// The closure of `roots`: each must be an ELF file (an error otherwise), and each of
    /// their libraries must be found. `optional` roots (extension modules of an interpreter's
    /// library) are parsed too, but a library they need that is missing is only recorded in
    /// [`Closure::missing`] (as ldd would print "not found"), and non-ELF files are skipped.
    pub fn closure(
        &self,
        roots: &[PathBuf],
        optional: &[PathBuf],
    ) -> Result<Closure, ClosureError> {
        let mut out = Closure::default();
        // (object, inherited DT_RPATH directories, required)
        let mut work: Vec<(PathBuf, Vec<PathBuf>, bool)> = roots
            .iter()
            .map(|r| (r.clone(), Vec::new(), true))
            .chain(optional.iter().map(|r| (r.clone(), Vec::new(), false)))
            .collect();
        work.reverse();
        let mut done: BTreeMap<PathBuf, ()> = BTreeMap::new();
        while let Some((path, inherited, required)) = work.pop() {
            if done.insert(path.clone(), ()).is_some() {
                continue;
            }
            let bytes =
                std::fs::read(self.host_path(&path)).map_err(|source| ClosureError::Read {
                    path: path.clone(),
                    source,
                })?;
            let elf = match Elf::parse(&bytes) {
                Ok(e) => e,
                Err(e) if required => {
                    return Err(ClosureError::NotElf {
                        path,
                        reason: e.to_string(),
                    });
                }
                Err(_) => continue,
            };
            out.files.insert(path.clone());
            let kind = Kind {
                is_64: elf.is_64,
                machine: elf.header.e_machine,
            };
            if let Some(interp) = elf.interpreter {
                work.push((PathBuf::from(interp), Vec::new(), required));
            }
            let origin = path.parent().unwrap_or(Path::new("/")).to_path_buf();
            let expand = |s: &str| -> Vec<PathBuf> {
                s.split(':')
                    .filter(|d| !d.is_empty())
                    .map(|d| {
                        PathBuf::from(
                            d.replace("$ORIGIN", &origin.to_string_lossy())
                                .replace("${ORIGIN}", &origin.to_string_lossy())
                                .replace("$LIB", "lib")
                                .replace("${LIB}", "lib")
                                .replace("$PLATFORM", std::env::consts::ARCH)
                                .replace("${PLATFORM}", std::env::consts::ARCH),
                        )
                    })
                    .collect()
            };
            let runpath: Vec<PathBuf> = elf.runpaths.iter().flat_map(|s| expand(s)).collect();
            // DT_RPATH counts only without DT_RUNPATH, and is inherited by what it loads.
            let rpath: Vec<PathBuf> = if runpath.is_empty() {
                let mut r: Vec<PathBuf> = elf.rpaths.iter().flat_map(|s| expand(s)).collect();
                r.extend(inherited.iter().cloned());
                r
            } else {
                Vec::new()
            };
            let system = self.system_dirs(kind);
            for lib in &elf.libraries {
                if lib.contains('/') {
                    work.push((PathBuf::from(lib), rpath.clone(), required));
                    continue;
                }
                let found = rpath
                    .iter()
                    .chain(runpath.iter())
                    .map(|d| (d, false))
                    .chain(system.iter().map(|d| (d, true)))
                    .find_map(|(d, sys)| {
                        let cand = d.join(lib);
                        self.matches(&cand, kind).then_some((cand, d.clone(), sys))
                    });
                match found {
                    Some((cand, dir, sys)) => {
                        if sys {
                            out.lib_dirs.insert(dir);
                        }
                        work.push((cand, rpath.clone(), required));
                    }
                    None => {
                        let err = ClosureError::NotFound {
                            lib: (*lib).to_owned(),
                            by: path.clone(),
                            searched: rpath
                                .iter()
                                .chain(&runpath)
                                .chain(&system)
                                .cloned()
                                .collect(),
                        };
                        if required {
                            return Err(err);
                        }
                        out.missing.push(err);
                    }
                }
            }
        }
        Ok(out)
    }

    /// True if `cand` is an ELF file of `kind` (what ld.so accepts for a needed library).
    fn matches(&self, cand: &Path, kind: Kind) -> bool {
        use std::io::Read;
        let Ok(mut f) = std::fs::File::open(self.host_path(cand)) else {
            return false;
        };
        let mut head = [0u8; 64];
        if f.read_exact(&mut head).is_err() {
            return false;
        }
        match Elf::parse_header(&head) {
            Ok(h) => {
                h.e_machine == kind.machine
                    && (h.e_ident[goblin::elf::header::EI_CLASS] == goblin::elf::header::ELFCLASS64)
                        == kind.is_64
            }
            Err(_) => false,
        }
    }
}

impl Resolver {
    /// Where the loader would find `name` (a bare `libfoo.so.N`) for an object like `like`:
    /// ld.so.conf's directories, then the standard ones. What `dlopen(name)` opens.
    pub fn find_library(&self, name: &str, like: &Path) -> Option<PathBuf> {
        use std::io::Read;
        let mut head = [0u8; 64];
        std::fs::File::open(self.host_path(like))
            .and_then(|mut f| f.read_exact(&mut head))
            .ok()?;
        let h = Elf::parse_header(&head).ok()?;
        let kind = Kind {
            is_64: h.e_ident[goblin::elf::header::EI_CLASS] == goblin::elf::header::ELFCLASS64,
            machine: h.e_machine,
        };
        self.system_dirs(kind)
            .into_iter()
            .map(|d| d.join(name))
            .find(|c| self.matches(c, kind))
    }
}

/// Library names (`libssl.so.3`, `libz.so`) written in `bytes` as ASCII or as UTF-32LE: the
/// libraries a program opens with dlopen(3) rather than through DT_NEEDED — a Lisp image
/// keeps the names of the libraries it loaded (cl+ssl's libssl, say) and opens them again
/// at startup, which neither the ELF headers nor ldd show.
pub fn library_names(bytes: &[u8]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let word = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.');
    // ASCII: the name around each ".so".
    for at in memchr::memmem::find_iter(bytes, b".so") {
        let mut start = at;
        while start > 0 && word(bytes[start - 1]) && at - start < 64 {
            start -= 1;
        }
        let mut end = at + 3;
        while end < bytes.len() && (bytes[end].is_ascii_digit() || bytes[end] == b'.') {
            end += 1;
        }
        push_name(&bytes[start..end], &mut out);
    }
    // UTF-32LE: each character in 4 bytes.
    let wide = b".\0\0\0s\0\0\0o\0\0\0";
    for at in memchr::memmem::find_iter(bytes, wide) {
        let ch = |i: usize| -> Option<u8> {
            let c = bytes.get(i..i + 4)?;
            (c[1] == 0 && c[2] == 0 && c[3] == 0).then_some(c[0])
        };
        let mut name = Vec::new();
        let mut i = at;
        while i >= 4 && ch(i - 4).is_some_and(word) && name.len() < 64 {
            i -= 4;
            name.insert(0, ch(i).expect("checked"));
        }
        name.extend_from_slice(b".so");
        let mut j = at + 12;
        while let Some(c) = ch(j).filter(|c| c.is_ascii_digit() || *c == b'.') {
            name.push(c);
            j += 4;
        }
        push_name(&name, &mut out);
    }
    out
}

fn push_name(raw: &[u8], out: &mut BTreeSet<String>) {
    let Ok(s) = std::str::from_utf8(raw) else {
        return;
    };
    let s = s.trim_end_matches('.');
    // From the last "lib": a path's directories or a prefix glued on are not the name.
    let Some(start) = s.rfind("lib") else {
        return;
    };
    let name = &s[start..];
    if name.len() > 6 && name.contains(".so") && !name.starts_with("lib.") {
        out.insert(name.to_owned());
    }
}

/// True if the file at `path` starts with the ELF magic.
pub fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This very test binary: a dynamically linked ELF executable of the host.
    fn me() -> PathBuf {
        std::env::current_exe().expect("current exe")
    }

    #[test]
    fn the_closure_of_an_executable_holds_libc_and_the_loader_like_ldd() {
        let c = Resolver::host().closure(&[me()], &[]).expect("closure");
        let names: Vec<String> = c
            .files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        assert!(names.iter().any(|n| n == "libc.so.6"), "{names:?}");
        assert!(names.iter().any(|n| n.starts_with("ld-linux")), "{names:?}");
        // What ldd says is what we say (ldd runs the loader in trace mode).
        let ldd = std::process::Command::new("ldd")
            .arg(me())
            .output()
            .expect("ldd");
        let ldd = String::from_utf8_lossy(&ldd.stdout);
        for line in ldd.lines() {
            let Some((name, rest)) = line.trim().split_once(" => ") else {
                continue;
            };
            let path = rest.split(" (").next().unwrap_or("").trim();
            assert!(
                c.files.contains(Path::new(path)),
                "ldd resolves {name} to {path}, not in {:?}",
                c.files
            );
        }
        assert!(!c.lib_dirs.is_empty());
    }

    #[test]
    fn ld_so_conf_includes_are_followed_and_runpath_origin_is_expanded() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        std::fs::create_dir_all(r.join("etc/ld.so.conf.d")).expect("mkdir");
        std::fs::write(
            r.join("etc/ld.so.conf"),
            "include /etc/ld.so.conf.d/*.conf\n",
        )
        .expect("w");
        std::fs::write(r.join("etc/ld.so.conf.d/b.conf"), "/opt/b # comment\n").expect("w");
        std::fs::write(r.join("etc/ld.so.conf.d/a.conf"), "/opt/a\n").expect("w");
        let res = Resolver::with_root(r);
        assert_eq!(
            res.conf_dirs,
            [PathBuf::from("/opt/a"), PathBuf::from("/opt/b")]
        );
        // A library that is not found names itself, who needs it and where it looked.
        std::fs::copy(me(), r.join("exe")).expect("copy");
        let err = res
            .closure(&[PathBuf::from("/exe")], &[])
            .expect_err("no libc under a root with nothing");
        let msg = err.to_string();
        assert!(msg.contains("needed by") && msg.contains("/lib"), "{msg}");
    }

    #[test]
    fn library_names_are_found_in_ascii_and_in_utf32_strings() {
        let mut bytes = b"\0\0/usr/lib/libssl.so.3\0junk libz.so\0lib.so x.so.1\0".to_vec();
        for c in "libcrypto.so.3".chars() {
            bytes.extend_from_slice(&(c as u32).to_le_bytes());
        }
        bytes.extend_from_slice(&[0; 4]);
        let names: Vec<String> = library_names(&bytes).into_iter().collect();
        assert_eq!(names, ["libcrypto.so.3", "libssl.so.3", "libz.so"]);
        let libc = Resolver::host()
            .find_library("libc.so.6", &me())
            .expect("libc");
        assert!(libc.is_absolute() && libc.ends_with("libc.so.6"));
    }

    #[test]
    fn a_required_root_that_is_not_elf_is_an_error_an_optional_one_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("run.sh");
        std::fs::write(&script, "#!/bin/sh\n").expect("w");
        let res = Resolver::host();
        assert!(matches!(
            res.closure(std::slice::from_ref(&script), &[]),
            Err(ClosureError::NotElf { .. })
        ));
        let c = res.closure(&[], &[script]).expect("optional");
        assert!(c.files.is_empty());
        assert!(is_elf(&me()));
    }
}
