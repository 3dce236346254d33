//! The project's configuration: finding it, parsing it, validating it into resolved types.
//!
//! `windlass.toml` is parsed into the raw types of [`raw`] (value-level checks carry their span),
//! then [`validate`] checks everything that spans fields or touches the disk and collects *every*
//! error, each with file:line:column and a hint. With no `windlass.toml`, a `Procfile` is read
//! ([`procfile`]). The rest of windlass only ever sees the resolved [`Config`].

pub mod deploy;
pub(crate) mod diagnostic;
pub(crate) mod envfile;
pub(crate) mod procfile;
pub mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::layout::Layout;

pub use diagnostic::{ConfigError, Diagnostic};
pub use raw::{ReloadStrategy, RestartPolicy};

/// The config file names windlass looks for, in order of preference.
pub const CONFIG_FILE: &str = "windlass.toml";
pub const PROCFILE: &str = "Procfile";

/// Environment variable names windlass reads or sets, declared once.
pub mod envvars {
    /// Default variable through which an instance learns the port to listen on.
    pub const PORT: &str = "PORT";
    /// The instance index (0-based) within its app.
    pub const INSTANCE: &str = "INSTANCE";
    /// The app's name.
    pub const APP: &str = "WINDLASS_APP";
    /// The id of the release an instance runs (set only when it runs one).
    pub const RELEASE: &str = "WINDLASS_RELEASE";
    /// Overrides the directory windlass keeps its files in (default `.windlass` beside the config).
    pub const STATE_DIR: &str = crate::layout::STATE_DIR_ENV;
    /// Disables colour when set to any value (<https://no-color.org>).
    pub const NO_COLOR: &str = "NO_COLOR";
    /// Set to `1` for apps with `console = true`: stdin is a terminal someone may attach to
    /// (the Lisp runtime then runs a REPL on it).
    pub const CONSOLE: &str = "WINDLASS_CONSOLE";
}

/// Where the apps came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Toml,
    Procfile,
}

/// The resolved, validated configuration of one project.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file the config was read from.
    pub file: PathBuf,
    /// The project directory: the config file's directory.
    pub root: PathBuf,
    pub source: Source,
    /// Apps in the order they appear in the file.
    pub apps: Vec<AppConfig>,
    pub admin: AdminConfig,
    /// `[deploy]`: the hosts `windlass deploy` ships to.
    pub deploy: deploy::DeployConfig,
}

impl Config {
    pub fn app(&self, name: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.name == name)
    }

    /// Where windlass keeps this project's files.
    pub fn layout(&self) -> Layout {
        Layout::of_root(&self.root)
    }
}

/// Releases of an app `windlass build` keeps by default.
pub const KEEP_RELEASES: u32 = 5;

/// True if `id` can name a release (a folder in [`Layout::releases_dir`]): what
/// `release = "ID"` accepts and what `windlass build` and `releases` list.
pub fn valid_release_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with(['.', '-'])
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[derive(Clone)]
pub struct AppConfig {
    pub name: String,
    /// The argv to execute (`["sh", "-c", line]` when `shell = true`).
    pub argv: Vec<String>,
    pub shell: bool,
    pub cwd: PathBuf,
    /// Environment added to windlass's own: env_file first, then `env` (which wins).
    pub env: Vec<(String, String)>,
    /// `env_file`, resolved against the project directory (its values are in `env`; the
    /// exporters need to know which came from it, to keep them out of generated files).
    pub env_file: Option<PathBuf>,
    pub port: Option<u16>,
    /// The address the public port is bound on (default 0.0.0.0, every interface).
    pub bind: std::net::IpAddr,
    pub port_env: String,
    pub instances: u32,
    pub restart: RestartPolicy,
    pub backoff: BackoffConfig,
    pub stop: StopConfig,
    pub health: HealthConfig,
    pub reload: ReloadStrategy,
    /// For `reload = "in-place"` on non-Lisp apps: the signal that makes the app reload itself.
    pub reload_signal: Option<nix::sys::signal::Signal>,
    pub watch: Vec<String>,
    /// The built-in proxy's settings (`proxy.*`, with `instances` filled in).
    pub proxy: crate::proxy::ProxyConfig,
    pub console: bool,
    pub logs: LogsConfig,
    pub autostart: bool,
    /// Set for Common Lisp apps (`lisp = { system, entry }`).
    pub lisp: Option<LispConfig>,
    /// `release`, `keep_releases`, `build` and `shared`: how the app's releases are made and run.
    pub releases: ReleaseConfig,
}

/// How an app's releases are built and run (every stack; see `crate::release`).
#[derive(Debug, Clone, Default)]
pub struct ReleaseConfig {
    /// Run a built release instead of the sources.
    pub sel: Option<ReleaseSel>,
    /// Where `windlass build` puts releases (`.windlass/releases`).
    pub dir: PathBuf,
    /// Persistent directories (`.windlass/shared/<app>/<name>`) linked into every release.
    pub shared_dir: PathBuf,
    /// How many releases of this app `windlass build` keeps.
    pub keep: u32,
    /// `build = [...]`: shell lines run in the release being built; `None` when not set
    /// (the detected default applies).
    pub build: Option<Vec<String>>,
    /// `shared = ["uploads"]`: paths, relative to the release, that link to `shared_dir`.
    pub shared: Vec<String>,
}

/// A Common Lisp app: what `lisp = { ... }` and its companion keys resolve to.
#[derive(Debug, Clone)]
pub struct LispConfig {
    pub app: crate::lisp::launcher::LispApp,
    /// The SBCL binary, when not `sbcl` from `PATH`.
    pub sbcl: Option<PathBuf>,
    /// The project directory (the app's `cwd`): where the `.asd` files are.
    pub project_dir: PathBuf,
    /// The fasl cache (`XDG_CACHE_HOME` of the app's env, else `.windlass/cache`).
    pub cache_dir: PathBuf,
    /// Swank on 127.0.0.1: instance `i` listens on `swank_port + i`.
    pub swank_port: Option<u16>,
    /// The form an in-place reload evaluates in the running image.
    pub reload_eval: String,
    /// From source: the compile step run once before instances start (none for a release).
    pub compile: Option<crate::lisp::launcher::CompileStep>,
}

impl LispConfig {
    /// The swank address of instance `index`, when swank is configured.
    pub fn swank_addr(&self, index: u32) -> Option<SocketAddr> {
        let port = u32::from(self.swank_port?) + index;
        u16::try_from(port)
            .ok()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
    }
}

/// `release = "latest" | "<id>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseSel {
    /// The newest release of the app, looked up at every start.
    Latest,
    /// One release, by id.
    Id(String),
}

/// Hand-written so that environment values (which often hold secrets) never reach a log.
impl fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let env_keys: Vec<&str> = self.env.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("AppConfig")
            .field("name", &self.name)
            .field("argv", &self.argv)
            .field("cwd", &self.cwd)
            .field("env_keys", &env_keys)
            .field("port", &self.port)
            .field("instances", &self.instances)
            .field("restart", &self.restart)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the second restart in a row of quick failures (the first is immediate).
    pub initial: Duration,
    /// The delay doubles up to this.
    pub max: Duration,
    /// An instance that stayed up this long resets the backoff and the quick-failure count.
    pub reset_after: Duration,
    /// After this many quick failures in a row the app is in state `crashloop`.
    pub crashloop_after: u32,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(1),
            crashloop_after: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopConfig {
    pub signal: nix::sys::signal::Signal,
    pub timeout: Duration,
}

impl Default for StopConfig {
    fn default() -> Self {
        StopConfig {
            signal: nix::sys::signal::Signal::SIGTERM,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// HTTP path to GET; `None` means a TCP connect.
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: None,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            start_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogsConfig {
    /// Rotate `APP.log` when it would grow past this many bytes.
    pub max_size: u64,
    /// How many rotated files (`APP.log.1` ... `APP.log.K`) to keep.
    pub keep: u32,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_size: 10 * 1024 * 1024,
            keep: 5,
        }
    }
}

#[derive(Clone)]
pub struct AdminConfig {
    /// Where `/metrics`, `/dashboard` and `/api` are served; `None` when `listen = "off"`.
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
    /// Other names a request's `Host` may give (`hosts`), lowercase, without a port.
    pub hosts: Vec<String>,
    /// True when `listen` was written in the config. The default address may be taken (by
    /// another project's windlass on the same host): then a free loopback port is used.
    pub explicit: bool,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("hosts", &self.hosts)
            .finish()
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9180))),
            token: None,
            hosts: Vec::new(),
            explicit: false,
        }
    }
}

/// Finds the project's config: `explicit` if given, else `windlass.toml` or a `Procfile` in
/// `start` or the nearest parent directory that has one.
///
/// The search trusts only what the user controls (the rule git adopted for CVE-2022-24765):
/// it stops at a directory owned by another user than the effective uid, at `$HOME` (it does
/// not look above it) and where the filesystem changes (`st_dev`). A config file found there,
/// or a config file owned by another user, is refused with [`ConfigError::Untrusted`], whose
/// hint names the file and `-f`, the way to use it anyway. `-f` is never second-guessed.
pub fn discover(start: &Path, explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            start.join(p)
        };
        if !p.is_file() {
            return Err(ConfigError::NotFound {
                searched: p.display().to_string(),
            });
        }
        return Ok(p);
    }
    discover_as(
        start,
        nix::unistd::geteuid().as_raw(),
        std::env::var_os("HOME").map(PathBuf::from).as_deref(),
    )
}

/// The upward search of [`discover`] for the user `uid` whose home is `home`.
fn discover_as(start: &Path, uid: u32, home: Option<&Path>) -> Result<PathBuf, ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let start_dev = std::fs::metadata(start).map(|m| m.dev()).ok();
    let mut stopped: Option<String> = None;
    for dir in start.ancestors() {
        let Ok(meta) = std::fs::metadata(dir) else {
            break;
        };
        if Some(meta.dev()) != start_dev {
            stopped = Some(format!("{} (another filesystem)", dir.display()));
            break;
        }
        let candidates = [CONFIG_FILE, PROCFILE].map(|n| dir.join(n));
        let found = candidates.iter().find(|p| p.is_file());
        if meta.uid() != uid {
            if let Some(file) = found {
                return Err(ConfigError::Untrusted {
                    file: file.clone(),
                    owner_of: dir.to_path_buf(),
                    owner: meta.uid(),
                    uid,
                });
            }
            stopped = Some(format!(
                "{} (owned by uid {}, not you)",
                dir.display(),
                meta.uid()
            ));
            break;
        }
        if let Some(file) = found {
            let owner = std::fs::metadata(file).map_or(uid, |m| m.uid());
            if owner != uid {
                return Err(ConfigError::Untrusted {
                    file: file.clone(),
                    owner_of: file.clone(),
                    owner,
                    uid,
                });
            }
            return Ok(file.clone());
        }
        if home.is_some_and(|h| h == dir) {
            stopped = Some(format!("{} (your home directory)", dir.display()));
            break;
        }
    }
    Err(ConfigError::NotFound {
        searched: match stopped {
            Some(at) => format!("{} and its parent directories up to {at}", start.display()),
            None => format!("{} and its parent directories", start.display()),
        },
    })
}

/// Reads and validates the config file at `path` (a `Procfile` when so named).
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let path = std::path::absolute(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Read {
        path: path.clone(),
        source: e,
    })?;
    let root = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let is_procfile = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(PROCFILE));
    if is_procfile {
        procfile::parse(&path, &root, &text)
    } else {
        validate::from_toml(&path, &root, &text)
    }
}

/// `discover` then `load`.
pub fn find_and_load(start: &Path, explicit: Option<&Path>) -> Result<Config, ConfigError> {
    load(&discover(start, explicit)?)
}

/// Suggests the closest of `candidates` to `word`, when one is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// True if `name` can be used as an app name (it becomes part of file names and URLs).
pub fn valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-')
}

/// True if `name` is a usable environment variable name.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_pick_the_closest_name() {
        let keys = ["command", "cwd", "env", "env_file", "port"];
        assert_eq!(did_you_mean("comand", keys), Some("command"));
        assert_eq!(did_you_mean("envfile", keys), Some("env_file"));
        assert_eq!(did_you_mean("zzzzzz", keys), None);
    }

    #[test]
    fn discovery_stops_at_home_and_at_directories_of_another_user() {
        use std::os::unix::fs::MetadataExt;
        let top = tempfile::tempdir().expect("tempdir");
        let me = std::fs::metadata(top.path()).expect("stat").uid();
        let sub = top.path().join("a/b");
        std::fs::create_dir_all(&sub).expect("mkdir");
        std::fs::write(top.path().join(PROCFILE), "web: true\n").expect("write");
        // Found from a subdirectory when every directory on the way is mine.
        assert_eq!(
            discover_as(&sub, me, None).expect("found"),
            top.path().join(PROCFILE)
        );
        // Not above home.
        let home = top.path().join("a");
        let e = discover_as(&sub, me, Some(&home)).expect_err("stops at home");
        assert!(matches!(e, ConfigError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("your home directory"), "{e}");
        // Another user: refused, naming the file.
        let e = discover_as(&sub, me + 1, None).expect_err("not mine");
        assert!(e.to_string().contains("owned by uid"), "{e}");
        std::fs::write(sub.join(CONFIG_FILE), "").expect("write");
        let e = discover_as(&sub, me + 1, None).expect_err("not mine");
        assert!(
            e.to_string()
                .contains(&format!("--file {}", sub.join(CONFIG_FILE).display())),
            "{e}"
        );
    }

    #[test]
    fn app_and_env_names() {
        assert!(valid_app_name("web-1_x"));
        assert!(!valid_app_name("web/1"));
        assert!(!valid_app_name(""));
        assert!(valid_env_name("PROJECT_PORT"));
        assert!(!valid_env_name("1X"));
        assert!(!valid_env_name("A=B"));
    }
}
