//! `windlass pack` (guix pack's job): one self-contained artefact holding a project's apps —
//! each app's release (or, for an app without one, the project directory minus `.windlass`,
//! `.git` and what `.gitignore` leaves out), the interpreter a script needs (python3 with
//! its standard library, node...), every shared library those executables load (resolved
//! like `ldd`, the dynamic loader included: [`closure`]), the windlass binary and the
//! config. The artefact is a root file system: host files keep their absolute paths, so it
//! runs under `chroot`, in a user namespace, or as a container image. This module decides
//! what goes in ([`plan`]); [`tree`] holds it, [`archive`] writes reproducible tars, and
//! [`oci`] turns it into images without a daemon.

pub mod archive;
pub mod closure;
pub mod oci;
pub mod tree;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::config::{AppConfig, Config, ReleaseSel, Source};
use crate::release;
use tree::{APP_UID, Node, Tree};

/// Where things live inside the artefact.
pub const APP_DIR: &str = "/app";
pub const WINDLASS_BIN: &str = "/usr/local/bin/windlass";
/// The launcher script at the top of a `tar` pack.
pub const LAUNCHER: &str = "run";

/// The artefact's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A relocatable .tar.gz root with a `run` launcher.
    Tar,
    /// An OCI image layout in a tar (`oci-archive`), for `podman load` / `skopeo`.
    Oci,
    /// A `docker save`-style archive, for `docker load`.
    Docker,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Pack only this app (default: every app of the config).
    pub app: Option<String>,
    pub format: Format,
    /// The output file (default: `<project>-<tag>.<ext>` in the current directory).
    pub output: Option<PathBuf>,
    /// The mtime of every entry and the image's creation time (SOURCE_DATE_EPOCH).
    pub epoch: Option<u64>,
    /// The windlass binary to pack (default: this one).
    pub windlass: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("no app named `{0}`")]
    UnknownApp(String),
    #[error(
        "app `{app}` is a Common Lisp app with no release: a pack holds a built executable, not SBCL and the sources"
    )]
    LispWithoutRelease { app: String },
    #[error(transparent)]
    Release(#[from] release::ReleaseError),
    #[error("app `{app}`: cannot find `{program}` in PATH")]
    NoProgram { app: String, program: String },
    #[error("app `{app}`: asking `{program}` where it lives failed: {reason}")]
    Interpreter {
        app: String,
        program: String,
        reason: String,
    },
    #[error(
        "cannot pin the release in {}: no `[app.{app}]` header line to put `release = \"{id}\"` under",
        file.display()
    )]
    CannotPin {
        file: PathBuf,
        app: String,
        id: String,
    },
    #[error(transparent)]
    Closure(#[from] closure::ClosureError),
    #[error(transparent)]
    Tree(#[from] tree::TreeError),
    #[error("reading the project {}: {source}", dir.display())]
    Walk {
        dir: PathBuf,
        #[source]
        source: ignore::Error,
    },
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PackError {
    pub fn hint(&self) -> Option<String> {
        match self {
            PackError::LispWithoutRelease { app } => Some(format!(
                "build one first: `windlass build {app}` (then `windlass pack` packs it)"
            )),
            PackError::CannotPin { app, .. } => Some(format!(
                "add `release = \"latest\"` to the table of app `{app}`"
            )),
            PackError::Release(e) => e.hint(),
            PackError::NoProgram { .. } => {
                Some("install it, or give the command as an absolute path".into())
            }
            _ => None,
        }
    }

    /// Errors about what was asked (exit 2) rather than about the machine (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            PackError::UnknownApp(_)
                | PackError::LispWithoutRelease { .. }
                | PackError::CannotPin { .. }
                | PackError::NoProgram { .. }
        )
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PackError + use<> {
    let path = path.to_path_buf();
    move |source| PackError::Io {
        action,
        path,
        source,
    }
}

/// What will be packed, and how it runs.
#[derive(Debug)]
pub struct Plan {
    pub tree: Tree,
    /// `<project>:<tag>`, the image's name; the tag is the release id, or `latest`.
    pub project: String,
    pub tag: String,
    pub entrypoint: Vec<String>,
    pub env: Vec<(String, String)>,
    pub ports: Vec<u16>,
    pub labels: Vec<(String, String)>,
    /// What the user should know: an app packed from its directory, libraries left out...
    pub notes: Vec<String>,
    pub epoch: u64,
}

/// The finished artefact.
#[derive(Debug)]
pub struct Packed {
    pub path: PathBuf,
    pub image: String,
    pub tag: String,
    pub entries: usize,
    pub size: u64,
    pub notes: Vec<String>,
}

/// Directories of a Python standard library that a server does not import: tests, GUIs,
/// the build configuration, bytecode caches and installed packages (apps bring theirs).
fn python_skip(rel: &Path) -> bool {
    let mut comps = rel.components().map(|c| c.as_os_str().to_string_lossy());
    let Some(first) = comps.next() else {
        return false;
    };
    matches!(
        first.as_ref(),
        "site-packages"
            | "dist-packages"
            | "test"
            | "idlelib"
            | "tkinter"
            | "turtledemo"
            | "ensurepip"
            | "lib2to3"
    ) || first.starts_with("config-")
        // Tk's extension module would pull X11 and Tk into the closure.
        || rel.file_name().is_some_and(|n| n.to_string_lossy().starts_with("_tkinter"))
        || rel.components().any(|c| c.as_os_str() == "__pycache__")
}

/// An executable found in `path` (a `PATH` value) or given with a `/` (relative to `cwd`).
fn which(program: &str, path: &str, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return ok(&p).then_some(p);
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| ok(p))
}

/// The `#!` line of a script: interpreter and optional argument.
fn shebang(path: &Path) -> Option<(String, Option<String>)> {
    use std::io::Read;
    let mut head = [0u8; 256];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    let text = std::str::from_utf8(&head[..n]).ok()?;
    let line = text.strip_prefix("#!")?.lines().next()?.trim();
    let mut parts = line.splitn(2, char::is_whitespace);
    let interp = parts.next()?.to_owned();
    let arg = parts
        .next()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty());
    Some((interp, arg))
}

/// Builds the plan of what goes into the artefact.
struct Planner<'a> {
    config: &'a Config,
    tree: Tree,
    /// ELF files every library of which must be found.
    required: BTreeSet<PathBuf>,
    /// ELF files (extension modules) whose missing libraries are only reported.
    optional: BTreeSet<PathBuf>,
    /// Directories the packed interpreters are in, for `PATH`.
    path_dirs: Vec<PathBuf>,
    notes: Vec<String>,
    project_packed: bool,
    /// Host paths already planned as interpreters.
    interpreters: BTreeSet<PathBuf>,
    /// Lisp images (release executables), whose dlopen'ed libraries are looked for too.
    images: Vec<PathBuf>,
    /// Files never packed (the output, when it is inside the project).
    skip: Vec<PathBuf>,
}

impl Planner<'_> {
    fn app_path(&self, host: &Path) -> PathBuf {
        let rel = host.strip_prefix(&self.config.root).unwrap_or(host);
        Path::new(APP_DIR).join(rel)
    }

    /// The project directory minus `.windlass`, `.git` and what `.gitignore` leaves out.
    fn pack_project(&mut self) -> Result<(), PackError> {
        if self.project_packed {
            return Ok(());
        }
        self.project_packed = true;
        let root = &self.config.root;
        let state = self.config.layout().dir().to_path_buf();
        let walker = ignore::WalkBuilder::new(root)
            .hidden(false)
            .git_ignore(true)
            .git_global(false)
            .git_exclude(true)
            .require_git(false)
            .ignore(false)
            .parents(false)
            .follow_links(false)
            .sort_by_file_name(|a, b| a.cmp(b))
            .filter_entry(|e| e.file_name() != ".git" && e.file_name() != ".windlass")
            .build();
        for entry in walker {
            let entry = entry.map_err(|source| PackError::Walk {
                dir: root.clone(),
                source,
            })?;
            let p = entry.path();
            if p == root.as_path() || p.starts_with(&state) || self.skip.iter().any(|s| s == p) {
                continue;
            }
            // A pack being written there (`-o` inside the project) is not part of it.
            if p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with('.') && n.to_string_lossy().ends_with(".tmp")
            }) {
                continue;
            }
            let dest = self.app_path(p);
            self.tree.copy_entry(p, &dest)?;
            if entry.file_type().is_some_and(|t| t.is_file()) && closure::is_elf(p) {
                self.optional.insert(p.to_path_buf());
            }
        }
        Ok(())
    }

    /// Packs the interpreter or program `argv0` of `app` (and, for a script, what runs it).
    fn pack_program(&mut self, app: &AppConfig, argv0: &str, depth: u8) -> Result<(), PackError> {
        if depth > 4 {
            return Ok(());
        }
        let path_var = app
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_default();
        let found = which(argv0, &path_var, &app.cwd).ok_or_else(|| PackError::NoProgram {
            app: app.name.clone(),
            program: argv0.to_owned(),
        })?;
        if found.starts_with(&self.config.root) {
            // The app's own program: packed with the project; its libraries are needed.
            self.pack_project()?;
            if closure::is_elf(&found) {
                self.required.insert(found);
            } else if let Some((interp, arg)) = shebang(&found) {
                self.pack_shebang(app, &interp, arg.as_deref(), depth)?;
            }
            return Ok(());
        }
        let name = Path::new(argv0)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with("python") {
            return self.pack_python(app, &found, &name);
        }
        if name == "node" || name == "nodejs" {
            let exe = ask(app, &found, &["-p", "process.execPath"])?;
            return self.pack_exe(Path::new(exe.trim()), Some(&name));
        }
        if closure::is_elf(&found) {
            return self.pack_exe(&found, None);
        }
        if let Some((interp, arg)) = shebang(&found) {
            self.tree.add_host(&found)?;
            self.path_dirs
                .push(found.parent().unwrap_or(Path::new("/")).to_path_buf());
            return self.pack_shebang(app, &interp, arg.as_deref(), depth);
        }
        self.tree.add_host(&found)?;
        Ok(())
    }

    fn pack_shebang(
        &mut self,
        app: &AppConfig,
        interp: &str,
        arg: Option<&str>,
        depth: u8,
    ) -> Result<(), PackError> {
        self.pack_program(app, interp, depth + 1)?;
        if Path::new(interp).file_name().is_some_and(|n| n == "env") {
            if let Some(prog) = arg.and_then(|a| a.split_whitespace().find(|w| !w.starts_with('-')))
            {
                self.pack_program(app, prog, depth + 1)?;
            }
        }
        Ok(())
    }

    /// An ELF executable at its host path (symlinks kept); `alias` adds `<dir>/<alias>`
    /// pointing at it when the name the config uses differs.
    fn pack_exe(&mut self, exe: &Path, alias: Option<&str>) -> Result<(), PackError> {
        if !self.interpreters.insert(exe.to_path_buf()) {
            return Ok(());
        }
        let real = self.tree.add_host(exe)?;
        self.required.insert(real);
        let dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
        if let Some(alias) = alias {
            let link = dir.join(alias);
            if let Some(target) = exe.file_name() {
                self.tree.put_new(
                    &link,
                    Node::Link {
                        target: PathBuf::from(target),
                    },
                );
            }
        }
        if !self.path_dirs.contains(&dir) {
            self.path_dirs.push(dir);
        }
        Ok(())
    }

    /// python3 (whatever `python3` in PATH is: a pyenv shim, a venv...) asked for its real
    /// executable and standard library; extension modules' libraries join the closure.
    fn pack_python(&mut self, app: &AppConfig, found: &Path, name: &str) -> Result<(), PackError> {
        let out = ask(
            app,
            found,
            &[
                "-c",
                "import sys, sysconfig; p = sysconfig.get_paths(); print(sys.executable); print(p['stdlib']); print(p['platstdlib'])",
            ],
        )?;
        let mut lines = out.lines();
        let exe = PathBuf::from(lines.next().unwrap_or("").trim());
        if !exe.is_absolute() {
            return Err(PackError::Interpreter {
                app: app.name.clone(),
                program: name.to_owned(),
                reason: "sys.executable is empty".into(),
            });
        }
        if self.interpreters.contains(&exe) {
            return Ok(());
        }
        self.pack_exe(&exe, Some(name))?;
        let dirs: BTreeSet<PathBuf> = lines.map(|l| PathBuf::from(l.trim())).collect();
        for dir in dirs {
            if !dir.is_absolute() || !dir.is_dir() {
                continue;
            }
            let real = self.tree.add_host_dir(&dir, &python_skip)?;
            // Extension modules (lib-dynload) load libraries too.
            for (p, n) in self.tree.nodes() {
                if let Node::File { src, .. } = n {
                    if Path::new("/").join(p).starts_with(&real)
                        && src.extension().is_some_and(|e| e == "so")
                    {
                        self.optional.insert(src.clone());
                    }
                }
            }
        }
        Ok(())
    }

    /// A Lisp app's release: only that release goes in, under the same relative path.
    fn pack_release(&mut self, app: &AppConfig) -> Result<Option<String>, PackError> {
        let Some(_) = &app.lisp else {
            return Ok(None);
        };
        let sel = app.releases.sel.clone().unwrap_or(ReleaseSel::Latest);
        let r = match release::find(&app.releases.dir, &app.name, &sel) {
            Ok(r) => r,
            Err(release::ReleaseError::NoRelease { .. }) if app.releases.sel.is_none() => {
                return Err(PackError::LispWithoutRelease {
                    app: app.name.clone(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let rel = app
            .releases
            .dir
            .strip_prefix(&self.config.root)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| PathBuf::from(".windlass/releases"));
        let dest = Path::new(APP_DIR).join(rel).join(&r.manifest.id);
        self.tree.put(
            &dest,
            Node::Dir {
                mode: 0o755,
                uid: 0,
            },
        );
        self.tree.copy_dir(&r.dir, &r.dir, &dest, &|_| false)?;
        self.required.insert(r.exe());
        self.images.push(r.exe());
        Ok(Some(r.manifest.id))
    }
}

/// Runs `program args` and returns its stdout (a short question to an interpreter).
fn ask(app: &AppConfig, program: &Path, args: &[&str]) -> Result<String, PackError> {
    let err = |reason: String| PackError::Interpreter {
        app: app.name.clone(),
        program: program.display().to_string(),
        reason,
    };
    let out = std::process::Command::new(program)
        .args(args)
        .envs(app.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&app.cwd)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The config text with `release = "id"` under `[app.NAME]` (for a Lisp app whose config
/// runs from source: the pack has no sources, so it runs the packed release).
fn pin_release(text: &str, file: &Path, app: &str, id: &str) -> Result<String, PackError> {
    let headers = [format!("[app.{app}]"), format!("[app.\"{app}\"]")];
    let mut out = String::with_capacity(text.len() + 40);
    let mut pinned = false;
    for line in text.split_inclusive('\n') {
        out.push_str(line);
        let bare = line.split('#').next().unwrap_or("").trim();
        if !pinned && headers.iter().any(|h| bare == h) {
            if !line.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&format!(
                "release = \"{id}\"                # pinned by windlass pack\n"
            ));
            pinned = true;
        }
    }
    if !pinned {
        return Err(PackError::CannotPin {
            file: file.to_path_buf(),
            app: app.to_owned(),
            id: id.to_owned(),
        });
    }
    Ok(out)
}

/// Decides what goes into the pack of `config`.
pub fn plan(config: &Config, opts: &Options) -> Result<Plan, PackError> {
    let apps: Vec<&AppConfig> = match &opts.app {
        Some(name) => vec![
            config
                .app(name)
                .ok_or_else(|| PackError::UnknownApp(name.clone()))?,
        ],
        None => config.apps.iter().collect(),
    };
    let mut p = Planner {
        config,
        tree: Tree::new(),
        required: BTreeSet::new(),
        optional: BTreeSet::new(),
        path_dirs: Vec::new(),
        notes: Vec::new(),
        project_packed: false,
        interpreters: BTreeSet::new(),
        images: Vec::new(),
        skip: opts
            .output
            .iter()
            .filter_map(|o| std::path::absolute(o).ok())
            .collect(),
    };
    let mut config_text =
        std::fs::read_to_string(&config.file).map_err(io_err("read", &config.file))?;
    let mut releases: Vec<String> = Vec::new();
    let mut created: Vec<u64> = Vec::new();
    let mut git_commit = None;
    for app in &apps {
        if let Some(id) = p.pack_release(app)? {
            if app.releases.sel.is_none() {
                config_text = pin_release(&config_text, &config.file, &app.name, &id)?;
                p.notes.push(format!(
                    "{}: the config runs it from source; the packed config runs release {id}",
                    app.name
                ));
            }
            if let Ok(r) = release::find(&app.releases.dir, &app.name, &ReleaseSel::Id(id.clone()))
            {
                created.push(r.manifest.created_unix as u64);
                git_commit = git_commit.or(r.manifest.git_commit);
            }
            releases.push(id);
            continue;
        }
        p.pack_project()?;
        p.notes.push(format!(
            "{}: no release; packed the project directory (without .windlass, .git and ignored files)",
            app.name
        ));
        let argv0 = app.argv.first().cloned().unwrap_or_default();
        p.pack_program(app, &argv0, 0)?;
        if app.shell || config.source == Source::Procfile {
            // `sh -c LINE`: the line's own program too, when it names one.
            if let Some(line) = app.argv.last() {
                if let Some(word) = shlex::split(line).and_then(|w| {
                    w.into_iter()
                        .find(|w| !w.contains('=') && !matches!(w.as_str(), "exec" | "env"))
                }) {
                    if which(&word, &std::env::var("PATH").unwrap_or_default(), &app.cwd).is_some()
                    {
                        p.pack_program(app, &word, 1)?;
                    }
                }
            }
        }
    }
    // The config (and its env_file, without which windlass refuses to start).
    let config_dest = p.app_path(&config.file);
    p.tree.put(
        &config_dest,
        Node::Data {
            bytes: config_text.into_bytes(),
            exec: false,
        },
    );
    if let Some(env_file) = env_file_of(config) {
        if env_file.starts_with(&config.root) && env_file.is_file() {
            let dest = p.app_path(&env_file);
            if !p.tree.contains(&dest) {
                p.tree.copy_entry(&env_file, &dest)?;
            }
            p.notes.push(format!(
                "packed {}: the artefact holds its values; keep it private",
                env_file.display()
            ));
        }
    }
    // windlass itself.
    p.tree.put(
        Path::new(WINDLASS_BIN),
        Node::File {
            src: opts.windlass.clone(),
            exec: true,
        },
    );
    let mut required: Vec<PathBuf> = p.required.iter().cloned().collect();
    required.push(opts.windlass.clone());
    let optional: Vec<PathBuf> = p.optional.iter().cloned().collect();
    // Libraries a Lisp image opens with dlopen at startup (cl+ssl's libssl...): named in
    // the image, not in its ELF headers.
    let resolver = closure::Resolver::host();
    let mut optional = optional;
    let mut dl_dirs = BTreeSet::new();
    for image in &p.images {
        let bytes = std::fs::read(image).map_err(io_err("read", image))?;
        for name in closure::library_names(&bytes) {
            if let Some(lib) = resolver.find_library(&name, image) {
                if let Some(dir) = lib.parent() {
                    dl_dirs.insert(dir.to_path_buf());
                }
                p.tree.add_host(&lib)?;
                optional.push(lib);
            }
        }
    }
    let mut c = resolver.closure(&required, &optional)?;
    c.lib_dirs.extend(dl_dirs);
    let roots: BTreeSet<&PathBuf> = required.iter().chain(optional.iter()).collect();
    for f in &c.files {
        if !roots.contains(f) {
            p.tree.add_host(f)?;
        }
    }
    for m in &c.missing {
        p.notes.push(format!("left out: {m}"));
    }
    // A root the apps can run in: the state directory the image user writes, /tmp, users.
    let state = Path::new(APP_DIR).join(".windlass");
    p.tree.put(
        &state,
        Node::Dir {
            mode: 0o755,
            uid: APP_UID,
        },
    );
    for mountpoint in ["/dev", "/proc"] {
        p.tree.put_new(
            Path::new(mountpoint),
            Node::Dir {
                mode: 0o755,
                uid: 0,
            },
        );
    }
    p.tree.put(
        Path::new("/tmp"),
        Node::Dir {
            mode: 0o1777,
            uid: 0,
        },
    );
    p.tree.put_new(Path::new("/etc/passwd"), Node::Data {
        bytes: format!("root:x:0:0:root:/root:/bin/sh\nwindlass:x:{APP_UID}:{APP_UID}:windlass:/app:/bin/sh\n").into_bytes(),
        exec: false,
    });
    p.tree.put_new(
        Path::new("/etc/group"),
        Node::Data {
            bytes: format!("root:x:0:\nwindlass:x:{APP_UID}:\n").into_bytes(),
            exec: false,
        },
    );

    let mut path: Vec<String> = p
        .path_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
        if !path.iter().any(|p| p == d) {
            path.push(d.into());
        }
    }
    let mut env = vec![("PATH".to_owned(), path.join(":"))];
    if !c.lib_dirs.is_empty() {
        let dirs: Vec<String> = c.lib_dirs.iter().map(|d| d.display().to_string()).collect();
        env.push(("LD_LIBRARY_PATH".into(), dirs.join(":")));
    }
    let mut entrypoint = vec![
        WINDLASS_BIN.to_owned(),
        "up".into(),
        "-f".into(),
        config_dest.display().to_string(),
    ];
    if let Some(app) = &opts.app {
        entrypoint.push(app.clone());
    }
    releases.sort();
    let tag = releases.last().cloned().unwrap_or_else(|| "latest".into());
    // The name `windlass export k8s` refers to the image by.
    let project = crate::export::project_name(config);
    let epoch = opts
        .epoch
        .or_else(|| created.iter().max().copied())
        .unwrap_or(0);
    let mut labels = vec![
        ("org.opencontainers.image.title".to_owned(), project.clone()),
        ("org.opencontainers.image.version".into(), tag.clone()),
        (
            "io.windlass.apps".into(),
            apps.iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "io.windlass.version".into(),
            env!("CARGO_PKG_VERSION").to_owned(),
        ),
    ];
    if let Some(c) = git_commit {
        labels.push(("org.opencontainers.image.revision".into(), c));
    }
    labels.sort();
    let mut ports: Vec<u16> = apps.iter().filter_map(|a| a.port).collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(Plan {
        tree: p.tree,
        project,
        tag,
        entrypoint,
        env,
        ports,
        labels,
        notes: p.notes,
        epoch,
    })
}

/// The env_file the config names, if any (read back from the raw file: the resolved config
/// keeps only its values).
fn env_file_of(config: &Config) -> Option<PathBuf> {
    if config.source != Source::Toml {
        return None;
    }
    let text = std::fs::read_to_string(&config.file).ok()?;
    let v: toml::Table = toml::from_str(&text).ok()?;
    let apps = v.get("app")?.as_table()?;
    apps.values().find_map(|a| {
        let ef = a.get("env_file")?.as_str()?;
        Some(config.root.join(ef))
    })
}

/// The launcher of a `tar` pack: runs windlass in the unpacked root, wherever that is.
pub fn launcher(plan: &Plan) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let exports: String = plan
        .env
        .iter()
        .map(|(k, v)| format!("export {k}={}\n", quote(v)))
        .collect();
    let cmd: Vec<String> = plan.entrypoint.iter().map(|a| quote(a)).collect();
    let cmd = cmd.join(" ");
    format!(
        r#"#!/bin/sh
# Runs this pack (made by `windlass pack`) from wherever it was unpacked: the directory of
# this script is the root the apps see (chroot). The host's /dev and /proc are bound into it
# inside a private mount namespace (what a container runtime does; the host's mounts stay
# as they are). As root directly; otherwise in a new user namespace. Needs sh, unshare and
# mount (util-linux) and chroot (coreutils) on the host, nothing else. Extra arguments go
# to `windlass up` (e.g. -d).
set -e
here=$(cd "$(dirname "$0")" && pwd)
PATH="${{PATH:-/usr/bin:/bin}}:/usr/sbin:/sbin:/usr/bin:/bin"
unshare=$(command -v unshare)
mount=$(command -v mount)
chroot=$(command -v chroot)
user=""
[ "$(id -u)" = 0 ] || user="--user --map-root-user"
# What the apps see inside the root:
{exports}# shellcheck disable=SC2086
exec "$unshare" $user --mount --propagation private /bin/sh -c '
  here=$1 mount=$2 chroot=$3; shift 3
  "$mount" --rbind /dev "$here/dev"
  "$mount" --rbind /proc "$here/proc" 2>/dev/null || true
  exec "$chroot" "$here" "$@"' windlass-pack "$here" "$mount" "$chroot" {cmd} "$@"
"#
    )
}

/// The default output: `.windlass/packs/<project>-<tag>.tar.gz` / `.oci.tar` / `.docker.tar`
/// (in the state directory, which no pack holds: a pack never contains the previous one).
pub fn default_output(config: &Config, plan: &Plan, format: Format) -> PathBuf {
    let ext = match format {
        Format::Tar => "tar.gz",
        Format::Oci => "oci.tar",
        Format::Docker => "docker.tar",
    };
    config
        .layout()
        .packs_dir()
        .join(format!("{}-{}.{ext}", plan.project, plan.tag))
}

/// Packs `config` as asked: plans, then writes the artefact atomically (a temporary file
/// beside it, fsync, rename).
pub fn pack(config: &Config, opts: &Options) -> Result<Packed, PackError> {
    let mut plan = plan(config, opts)?;
    let out = opts
        .output
        .clone()
        .unwrap_or_else(|| default_output(config, &plan, opts.format));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let tmp = out.with_file_name(format!(
        ".{}.{}.tmp",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result = write(&mut plan, opts.format, &out, &tmp);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    let size = result?;
    std::fs::rename(&tmp, &out).map_err(io_err("rename into place", &out))?;
    Ok(Packed {
        image: format!("{}:{}", plan.project, plan.tag),
        tag: plan.tag,
        path: out,
        entries: plan.tree.nodes().count(),
        size,
        notes: plan.notes,
    })
}

fn write(plan: &mut Plan, format: Format, out: &Path, tmp: &Path) -> Result<u64, PackError> {
    let file = std::fs::File::create(tmp).map_err(io_err("create", tmp))?;
    let w = std::io::BufWriter::new(file);
    let werr = io_err("write", out);
    let w = match format {
        Format::Tar => {
            plan.tree.put(
                Path::new(LAUNCHER),
                Node::Data {
                    bytes: launcher(plan).into_bytes(),
                    exec: true,
                },
            );
            let (gz, _) = archive::write_layer(&plan.tree, plan.epoch, true, w).map_err(werr)?;
            gz
        }
        Format::Oci | Format::Docker => {
            let img = oci::ImageConfig {
                name: format!("{}:{}", plan.project, plan.tag),
                tag: plan.tag.clone(),
                entrypoint: plan.entrypoint.clone(),
                env: plan.env.clone(),
                user: format!("{APP_UID}:{APP_UID}"),
                working_dir: APP_DIR.into(),
                ports: plan.ports.clone(),
                labels: plan.labels.clone(),
                stop_signal: "SIGTERM".into(),
                created: plan.epoch,
            };
            let (app, base) = plan.tree.clone().split(Path::new(APP_DIR));
            let layers = oci::Layers {
                trees: vec![
                    (&base, "windlass, interpreters and shared libraries"),
                    (&app, "the apps and their config"),
                ],
            };
            let r = if format == Format::Oci {
                oci::write_oci(out, w, &img, &layers)
            } else {
                oci::write_docker(out, w, &img, &layers)
            };
            r.map_err(werr)?
        }
    };
    let file = w
        .into_inner()
        .map_err(|e| io_err("write", out)(e.into_error()))?;
    file.sync_all().map_err(io_err("sync", out))?;
    Ok(file.metadata().map_err(io_err("stat", out))?.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_is_pinned_under_the_apps_own_header_only() {
        let text = "# top\n[app.web]\ncommand = \"x\"\n\n[app.hello] # lisp\nlisp = { system = \"h\", entry = \"h:main\" }\n";
        let out = pin_release(
            text,
            Path::new("windlass.toml"),
            "hello",
            "20261124T031500Z",
        )
        .expect("pinned");
        let v: toml::Table = toml::from_str(&out).expect("still TOML");
        assert_eq!(
            v["app"]["hello"]["release"].as_str(),
            Some("20261124T031500Z")
        );
        assert!(v["app"]["web"].get("release").is_none());
        assert!(matches!(
            pin_release("app.hello.lisp = 1\n", Path::new("w"), "hello", "x"),
            Err(PackError::CannotPin { .. })
        ));
    }

    #[test]
    fn python_test_suites_and_caches_stay_out() {
        assert!(python_skip(Path::new("test/test_os.py")));
        assert!(python_skip(Path::new("site-packages/pip")));
        assert!(python_skip(Path::new("json/__pycache__/x.pyc")));
        assert!(python_skip(Path::new("config-3.11-x86_64-linux-gnu")));
        assert!(!python_skip(Path::new("json/decoder.py")));
        assert!(!python_skip(Path::new(
            "lib-dynload/_json.cpython-311-x86_64-linux-gnu.so"
        )));
    }

    #[test]
    fn the_launcher_quotes_what_it_exports() {
        let plan = Plan {
            tree: Tree::new(),
            project: "p".into(),
            tag: "latest".into(),
            entrypoint: vec![WINDLASS_BIN.into(), "up".into()],
            env: vec![("PATH".into(), "/a b:/it's".into())],
            ports: vec![],
            labels: vec![],
            notes: vec![],
            epoch: 0,
        };
        let l = launcher(&plan);
        assert!(l.contains(r"export PATH='/a b:/it'\''s'"), "{l}");
        assert!(
            l.contains(r#""$chroot" '/usr/local/bin/windlass' 'up' "$@""#),
            "{l}"
        );
    }
}
