//! The raw shape of `windlass.toml`, exactly as written by the user.
//!
//! These types only deserialize: every value-level check (durations, signals, sizes, enum
//! spellings, unknown keys) happens inside `Deserialize` so that the TOML parser attaches the
//! offending span to the error. Cross-field checks live in `super::validate`, which turns this
//! raw form into the resolved [`super::Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub app: BTreeMap<String, Spanned<RawApp>>,
    #[serde(default)]
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub logs: Option<RawLogs>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApp {
    pub command: Option<Spanned<RawCommand>>,
    pub shell: Option<bool>,
    pub cwd: Option<Spanned<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    pub env_file: Option<Spanned<String>>,
    pub port: Option<Spanned<u16>>,
    pub bind: Option<Spanned<String>>,
    pub port_env: Option<Spanned<String>>,
    pub instances: Option<Spanned<u32>>,
    pub restart: Option<RestartPolicy>,
    pub backoff: Option<RawBackoff>,
    pub stop: Option<RawStop>,
    pub health: Option<RawHealth>,
    pub reload: Option<ReloadStrategy>,
    pub reload_signal: Option<Sig>,
    pub watch: Option<Spanned<Vec<String>>>,
    pub proxy: Option<RawProxy>,
    pub console: Option<bool>,
    pub logs: Option<RawLogs>,
    pub autostart: Option<bool>,
    /// Common Lisp apps: `lisp = { system, entry }` instead of `command`.
    pub lisp: Option<Spanned<RawLisp>>,
    pub swank_port: Option<Spanned<u16>>,
    pub reload_eval: Option<Spanned<String>>,
    pub release: Option<Spanned<String>>,
    pub keep_releases: Option<Spanned<u32>>,
}

/// `lisp = { system = "...", entry = "package:function" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLisp {
    pub system: String,
    pub entry: String,
    /// The SBCL binary (default `sbcl` from `PATH`).
    pub sbcl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogs {
    pub max_size: Option<ByteSize>,
    pub keep: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial: Option<Dur>,
    pub max: Option<Dur>,
    pub reset_after: Option<Dur>,
    pub crashloop_after: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStop {
    pub signal: Option<Sig>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub hold: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub response_timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    /// Client connections open at once (default derived from the open-files limit).
    pub max_connections: Option<Spanned<u64>>,
    /// IP addresses or CIDR ranges, checked (with their positions) by validation.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub start_timeout: Option<Dur>,
}

/// `restart = "always" | "on-failure" | "never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// `reload = "blue-green" | "restart" | "in-place"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReloadStrategy {
    BlueGreen,
    Restart,
    InPlace,
}

/// `command`: an argv array, or a string split like a shell would (but run without one).
#[derive(Debug, Clone)]
pub enum RawCommand {
    Argv(Vec<String>),
    Line(String),
}

impl<'de> Deserialize<'de> for RawCommand {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawCommand;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a command line string or an argv array like ["python3", "app.py"]"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawCommand, E> {
                Ok(RawCommand::Line(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawCommand, A::Error> {
                let mut argv = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    argv.push(s);
                }
                Ok(RawCommand::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

/// An environment value: TOML strings, integers, floats and booleans are accepted and
/// turned into their string form, since that is what the process will see.
#[derive(Debug, Clone)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written like `500ms`, `10s`, `2m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(Dur).map_err(de::Error::custom)
    }
}

/// Parses `500ms`, `10s`, `2m`... A bare number is refused: the unit must be explicit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "invalid duration `{s}` ({e}): write a number and a unit, like `500ms`, `10s` or `2m`"
        )
    })
}

/// A size in bytes: an integer, or a string like `10MB`, `512KiB`, `1G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"10MB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_size(v).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad =
        || format!("invalid size `{s}`: write a number and a unit, like `10MB`, `512KiB` or `1GB`");
    let n: f64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1_000_000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1024 * 1024 * 1024,
        _ => return Err(bad()),
    };
    Ok((n * mult as f64) as u64)
}

/// A signal name: `SIGTERM`, `TERM`, `term`, or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub nix::sys::signal::Signal);

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_signal(&s).map(Sig).map_err(de::Error::custom)
    }
}

pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, String> {
    use nix::sys::signal::Signal;
    use std::str::FromStr;
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| format!("unknown signal number {n}"));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| {
        format!("unknown signal `{s}`: use a name like SIGTERM, SIGINT, SIGQUIT or SIGHUP")
    })
}
