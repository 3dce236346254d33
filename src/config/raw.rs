//! The raw shape of `windlass.toml`, exactly as written by the user.
//!
//! These types only deserialize: every value-level check (durations, signals, sizes, enum
//! spellings, unknown keys) happens inside `Deserialize` so that the TOML parser attaches the
//! offending span to the error. Cross-field checks live in `super::validate`, which turns this
//! raw form into the resolved [`super::Config`].
//!
//! Every duration and size has a maximum, checked here so that nothing downstream can
//! overflow (`Instant + duration`, backoff doubling): a duration key takes at most
//! [`YEAR`] unless its type names a smaller cap (`Dur<HOUR>`, `Dur<DAY>`), a size at most
//! [`MAX_SIZE`] (1 TiB), and a count of files kept at most [`MAX_KEEP`]. A new key gets the
//! general cap by using [`Dur`] or [`ByteSize`]; [`cap_duration`] and [`cap_size`] are the
//! one place the rule and its message live. The limits are listed in docs/configuration.md.
//!
//! A timeout or interval where zero is nonsense (every request, check or start would time
//! out at once, or a crashing app would be restarted without a pause) is a `Dur<CAP, true>`:
//! it must be at least [`MIN_POSITIVE`] (1ms).

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
    #[serde(default)]
    pub deploy: Option<super::deploy::RawDeploy>,
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
    /// Shell lines `windlass build` runs in the release being built.
    pub build: Option<Spanned<Vec<String>>>,
    /// Directories kept across releases, linked into each.
    pub shared: Option<Spanned<Vec<String>>>,
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
    /// Names the admin listener answers for besides localhost and its address; checked
    /// (with their positions) by validation.
    pub hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogs {
    pub max_size: Option<ByteSize>,
    pub keep: Option<Count<MAX_KEEP>>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial: Option<Dur<HOUR, true>>,
    pub max: Option<Dur<DAY, true>>,
    pub reset_after: Option<Dur<DAY, true>>,
    pub crashloop_after: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStop {
    pub signal: Option<Sig>,
    pub timeout: Option<Dur<DAY>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxy {
    pub hold: Option<Dur<HOUR>>,
    pub connect_timeout: Option<Dur<HOUR, true>>,
    pub response_timeout: Option<Dur<DAY, true>>,
    pub idle_timeout: Option<Dur<DAY, true>>,
    pub header_timeout: Option<Dur<HOUR, true>>,
    pub body_timeout: Option<Dur<DAY, true>>,
    /// Client connections open at once (default derived from the open-files limit).
    pub max_connections: Option<Spanned<u64>>,
    /// IP addresses or CIDR ranges, checked (with their positions) by validation.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    /// Serve plain requests on the raw-socket path (default true).
    pub plain_path: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<String>,
    pub interval: Option<Dur<HOUR, true>>,
    pub timeout: Option<Dur<HOUR, true>>,
    pub start_timeout: Option<Dur<DAY, true>>,
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
                if v.contains('\0') {
                    // The OS cannot pass it (the app would never start); the value may be
                    // a secret, so it is not quoted.
                    return Err(E::custom(
                        "an environment value cannot hold a NUL byte (`\\u0000`): remove it",
                    ));
                }
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

/// One hour, in seconds: the cap of timeouts that bound a wait someone is watching.
pub const HOUR: u64 = 3600;
/// One day, in seconds: the cap of stop, drain and start timeouts and backoff ceilings.
pub const DAY: u64 = 24 * HOUR;
/// 365 days, in seconds: the cap of any duration (and of every duration the CLI reads).
pub const YEAR: u64 = 365 * DAY;
/// The largest size any key takes: 1 TiB.
pub const MAX_SIZE: u64 = 1 << 40;
/// The most rotated log files (`logs.keep`) or releases (`keep_releases`) kept.
pub const MAX_KEEP: u32 = 1000;

/// `86400` -> `1d`: a cap as a duration the config accepts.
fn secs_text(secs: u64) -> String {
    if secs % DAY == 0 {
        format!("{}d", secs / DAY)
    } else if secs % HOUR == 0 {
        format!("{}h", secs / HOUR)
    } else {
        format!("{secs}s")
    }
}

/// The one duration rule: `d` (written `written`) may not exceed `max_secs`.
pub fn cap_duration(d: Duration, max_secs: u64, written: &str) -> Result<Duration, String> {
    if d > Duration::from_secs(max_secs) {
        return Err(format!(
            "duration `{}` is too long: the maximum here is {}; write {} or less",
            written.trim(),
            secs_text(max_secs),
            secs_text(max_secs)
        ));
    }
    Ok(d)
}

/// The one size rule: `n` bytes (written `written`) may not exceed `max` bytes.
pub fn cap_size(n: u64, max: u64, written: &str) -> Result<u64, String> {
    if n > max {
        let shown = if max % MAX_SIZE == 0 {
            format!("{}TiB", max / MAX_SIZE)
        } else {
            format!("{max} bytes")
        };
        return Err(format!(
            "size `{}` is too large: the maximum here is {shown}; write {shown} or less",
            written.trim()
        ));
    }
    Ok(n)
}

/// The shortest a `Dur<_, true>` may be.
pub const MIN_POSITIVE: Duration = Duration::from_millis(1);

/// The rule of the timeouts where zero is nonsense: `d` (written `written`) is at least
/// [`MIN_POSITIVE`].
pub fn floor_duration(d: Duration, written: &str) -> Result<Duration, String> {
    if d < MIN_POSITIVE {
        return Err(format!(
            "duration `{}` is too short: zero would time out (or repeat) at once; write at least 1ms, \
             like `10s`, or leave the key out for its default",
            written.trim()
        ));
    }
    Ok(d)
}

/// A duration written like `500ms`, `10s`, `2m`, `1h 30m`, at most `MAX_SECS` seconds
/// (by default [`YEAR`]); with `POSITIVE`, at least [`MIN_POSITIVE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur<const MAX_SECS: u64 = YEAR, const POSITIVE: bool = false>(pub Duration);

impl<'de, const MAX_SECS: u64, const POSITIVE: bool> Deserialize<'de> for Dur<MAX_SECS, POSITIVE> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_uncapped(&s)
            .and_then(|d| cap_duration(d, MAX_SECS.min(YEAR), &s))
            .and_then(|d| {
                if POSITIVE {
                    floor_duration(d, &s)
                } else {
                    Ok(d)
                }
            })
            .map(Dur)
            .map_err(de::Error::custom)
    }
}

/// Parses `500ms`, `10s`, `2m`... A bare number is refused: the unit must be explicit.
/// Longer than [`YEAR`] is refused too, so no caller can overflow an `Instant` with it.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    cap_duration(parse_uncapped(s)?, YEAR, s)
}

/// [`parse_duration`], at least [`MIN_POSITIVE`] (an interval where zero would spin).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    floor_duration(parse_duration(s)?, s)
}

fn parse_uncapped(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!(
            "invalid duration `{s}` ({e}): write a number and a unit, like `500ms`, `10s` or `2m`"
        )
    })
}

/// A count (`logs.keep`) of at most `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count<const MAX: u32>(pub u32);

impl<'de, const MAX: u32> Deserialize<'de> for Count<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u32::deserialize(d)?;
        if n > MAX {
            return Err(de::Error::custom(format!(
                "{n} is too many: the maximum here is {MAX}"
            )));
        }
        Ok(Count(n))
    }
}

/// A size in bytes: an integer, or a string like `10MB`, `512KiB`, `1G`; at most `MAX`
/// bytes (by default [`MAX_SIZE`], 1 TiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize<const MAX: u64 = MAX_SIZE>(pub u64);

impl<'de, const MAX: u64> Deserialize<'de> for ByteSize<MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const MAX: u64>;
        impl<const MAX: u64> Visitor<'_> for V<MAX> {
            type Value = ByteSize<MAX>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like \"10MB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize<MAX>, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))?;
                self.visit_u64(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize<MAX>, E> {
                cap_size(v, MAX, &v.to_string())
                    .map(ByteSize)
                    .map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize<MAX>, E> {
                parse_size(v)
                    .and_then(|n| cap_size(n, MAX, v))
                    .map(ByteSize)
                    .map_err(E::custom)
            }
        }
        d.deserialize_any(V::<MAX>)
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
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    // Float to int saturates: an absurd size becomes u64::MAX, which the cap refuses.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_stop_at_their_caps() {
        assert_eq!(parse_size("1TiB"), Ok(MAX_SIZE));
        assert_eq!(parse_size("2tb"), Ok(2_000_000_000_000));
        // Absurd sizes saturate instead of wrapping, and the cap refuses them.
        let huge = parse_size("99999999999999999999999TB").expect("a number");
        assert_eq!(huge, u64::MAX);
        assert!(cap_size(huge, MAX_SIZE, "x").is_err());
        assert!(cap_size(MAX_SIZE, MAX_SIZE, "x").is_ok());
        assert!(parse_duration("365d").is_ok());
        let e = parse_duration("366d").expect_err("past a year");
        assert!(e.contains("maximum here is 365d"), "{e}");
        assert!(parse_duration("300000000000y").is_err());
        assert!(parse_duration("99999999999999999999999y").is_err());
        let d: Dur<HOUR> = toml::from_str::<BTreeMap<String, Dur<HOUR>>>("a = \"3601s\"")
            .map(|m| m["a"])
            .unwrap_or(Dur(Duration::ZERO));
        assert_eq!(d, Dur(Duration::ZERO), "3601s is refused under a 1h cap");
    }
}
