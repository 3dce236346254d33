//! Every duration and size in the config has a maximum (docs/configuration.md, "Limits"),
//! so no arithmetic on a config value can overflow: a value past it is refused by `check`
//! at file:line:column, the maximum itself is accepted and runs. env_file errors never
//! quote the file's values.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::helper::*;

/// A duration or size key of raw.rs: its table (the raw struct), its name, its maximum.
#[derive(Debug)]
struct Key {
    table: String,
    name: String,
    kind: Kind,
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Duration { max_secs: u64 },
    Size { max: u64 },
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;
const YEAR: u64 = 365 * DAY;
const TIB: u64 = 1 << 40;

/// Every `Dur`/`ByteSize` field of src/config/raw.rs, read from the source so that a key
/// added later is checked too.
fn cap(rest: &str) -> Option<&str> {
    rest.strip_prefix('<')
        .map(|r| r.split(['>', ',']).next().unwrap_or(""))
}

fn capped_keys() -> Vec<Key> {
    let src = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/config/raw.rs"))
        .expect("read raw.rs");
    let mut table = String::new();
    let mut keys = Vec::new();
    for line in src.lines() {
        if line.starts_with('}') {
            table.clear();
        }
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            table = rest
                .split(|c: char| !c.is_alphanumeric())
                .next()
                .unwrap_or("")
                .to_owned();
            continue;
        }
        let Some((name, ty)) = t.strip_prefix("pub ").and_then(|r| r.split_once(": ")) else {
            continue;
        };
        if table.is_empty() || name.contains(' ') {
            continue;
        }
        let ty = ty.trim_end_matches(',');
        let ty = ty.strip_prefix("Option<").unwrap_or(ty);
        let ty = ty.strip_prefix("Spanned<").unwrap_or(ty);
        let kind = if let Some(rest) = ty.strip_prefix("Dur") {
            let max_secs = match cap(rest) {
                None => YEAR,
                Some("HOUR") => HOUR,
                Some("DAY") => DAY,
                Some("YEAR") => YEAR,
                Some(other) => {
                    panic!("raw.rs: unknown duration cap {other} of `{name}`; add it here")
                }
            };
            Kind::Duration { max_secs }
        } else if let Some(rest) = ty.strip_prefix("ByteSize") {
            assert!(
                cap(rest).is_none(),
                "raw.rs: add the size cap of `{name}` here"
            );
            Kind::Size { max: TIB }
        } else {
            continue;
        };
        keys.push(Key {
            table: table.clone(),
            name: name.to_owned(),
            kind,
        });
    }
    keys
}

/// A config with `key = "value"` on line 4; column of the value's opening quote.
fn config_with(key: &Key, value: &str) -> (String, usize) {
    let app = "[app.web]\ncommand = [\"sleep\", \"1000\"]\n";
    let line = format!("{} = \"{value}\"\n", key.name);
    let text = match key.table.as_str() {
        "RawApp" => format!("{app}autostart = true\n{line}"),
        "RawBackoff" => {
            // backoff.max may not be shorter than backoff.initial.
            let max = if key.name == "max" {
                ""
            } else {
                "max = \"1d\"\n"
            };
            format!("{app}[app.web.backoff]\n{line}{max}")
        }
        "RawStop" => format!("{app}[app.web.stop]\n{line}"),
        "RawHealth" => format!("{app}[app.web.health]\n{line}"),
        "RawProxy" => format!("{app}[app.web.proxy]\n{line}"),
        "RawLogs" => format!("{app}[logs]\n{line}"),
        "RawAdmin" => format!("{app}[admin]\n{line}"),
        other => panic!("raw.rs: place the keys of {other} in a test config here"),
    };
    (text, key.name.len() + 4)
}

#[test]
fn every_duration_and_size_is_capped_with_its_position_and_its_maximum() {
    let keys = capped_keys();
    assert!(keys.len() >= 12, "too few keys found in raw.rs: {keys:?}");
    let p = Project::empty();
    for key in &keys {
        let (at_max, over) = match key.kind {
            Kind::Duration { max_secs } => (format!("{max_secs}s"), format!("{}s", max_secs + 1)),
            Kind::Size { max } => (format!("{max}B"), format!("{}B", max + 1)),
        };
        let (text, column) = config_with(key, &over);
        p.write("windlass.toml", &text);
        let o = p.run(&["check"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{key:?} at {over} is refused:\n{text}\n{err}"
        );
        assert!(
            err.contains(&format!("windlass.toml:4:{column}")),
            "{key:?}: {err}"
        );
        assert!(err.contains("the maximum here is"), "{key:?}: {err}");

        let (text, _) = config_with(key, &at_max);
        p.write("windlass.toml", &text);
        let o = p.run(&["check"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{key:?} at {at_max} is accepted:\n{text}\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The value of the issue: it passed validation and then panicked on every request.
    p.write(
        "windlass.toml",
        "[app.web]\ncommand = \"sleep 1000\"\nport = 8080\nproxy = { hold = \"300000000000y\" }\n",
    );
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("windlass.toml:4:18") && err.contains("maximum here is 1h"),
        "{err}"
    );
}

/// The durations where zero is nonsense: every request, check or start would time out
/// at once, or a crashing app would be restarted without a pause.
const POSITIVE: [(&str, &str); 11] = [
    ("RawBackoff", "initial"),
    ("RawBackoff", "max"),
    ("RawBackoff", "reset_after"),
    ("RawProxy", "connect_timeout"),
    ("RawProxy", "response_timeout"),
    ("RawProxy", "idle_timeout"),
    ("RawProxy", "header_timeout"),
    ("RawProxy", "body_timeout"),
    ("RawHealth", "interval"),
    ("RawHealth", "timeout"),
    ("RawHealth", "start_timeout"),
];

#[test]
fn a_zero_duration_is_refused_where_it_is_nonsense_with_its_position() {
    let p = Project::empty();
    let keys = capped_keys();
    for (table, name) in POSITIVE {
        assert!(
            keys.iter().any(|k| k.table == table && k.name == name),
            "{table}.{name} is not a duration of raw.rs"
        );
    }
    for key in keys
        .iter()
        .filter(|k| matches!(k.kind, Kind::Duration { .. }))
    {
        let positive = POSITIVE.contains(&(key.table.as_str(), key.name.as_str()));
        for zero in ["0s", "0ms", "1ns"] {
            let (text, column) = config_with(key, zero);
            p.write("windlass.toml", &text);
            let o = p.run(&["check"]);
            let err = String::from_utf8_lossy(&o.stderr);
            if positive {
                assert_eq!(o.status.code(), Some(2), "{key:?} = {zero}:\n{text}\n{err}");
                assert!(
                    err.contains(&format!("windlass.toml:4:{column}")),
                    "{key:?}: {err}"
                );
                assert!(err.contains("at least 1ms"), "{key:?}: {err}");
            } else {
                // `proxy.hold = "0s"`: no holding; `stop.timeout = "0s"`: SIGKILL at once.
                assert_eq!(o.status.code(), Some(0), "{key:?} = {zero}:\n{text}\n{err}");
            }
        }
        if positive {
            let (mut text, _) = config_with(key, "1ms");
            if key.name == "max" {
                // backoff.max may not be shorter than backoff.initial (100ms by default).
                text.push_str("initial = \"1ms\"\n");
            }
            p.write("windlass.toml", &text);
            let o = p.run(&["check"]);
            assert_eq!(
                o.status.code(),
                Some(0),
                "{key:?} = 1ms:\n{text}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

#[test]
fn top_refuses_a_zero_interval() {
    let p = Project::new("[app.web]\ncommand = \"sleep 1000\"\n");
    let o = p.run(&["top", "--interval", "0s", "--once"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("at least 1ms"), "{err}");
}

#[test]
fn the_longest_durations_run_without_panicking() {
    let web = free_port();
    let cold = free_port();
    let caps = "stop = { timeout = \"1d\" }\nbackoff = { initial = \"1h\", max = \"1d\", reset_after = \"1d\" }\n\
                proxy = { hold = \"1h\", connect_timeout = \"1h\", response_timeout = \"1d\", idle_timeout = \"1d\" }\n";
    let p = Project::new(&format!(
        "[app.web]\ncommand = [\"python3\", \"{app}\"]\nport = {web}\n{caps}\
         health = {{ path = \"/\", interval = \"1h\", timeout = \"1h\", start_timeout = \"1d\" }}\n\
         [app.crash]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\n{caps}\
         [app.cold]\ncommand = [\"python3\", \"{app}\"]\nport = {cold}\nautostart = false\n{caps}",
        app = hello_app().display()
    ));
    let mut sup = p.up(&[]);
    // Health (start_timeout 1d) and the proxy (hold 1h) in use.
    let (code, _) = wait_for("web to answer through the proxy", DEADLINE, || {
        http_get(web, "/").ok()
    });
    assert_eq!(code, 200);
    // Backoff: the second quick failure waits `initial` (1h).
    wait_for("crash to wait out its backoff", DEADLINE, || {
        (p.instance("crash", 0)["state"] == "backoff").then_some(())
    });
    // A request to an app with no instance is held (up to 1h), not failed or dropped.
    let mut s = TcpStream::connect(("127.0.0.1", cold)).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("send");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the held request was answered or dropped: {other:?}"),
    }
    assert_eq!(p.status()["apps"].as_array().expect("apps").len(), 3);
    // Stop (timeout 1d): the apps stop on SIGTERM, the supervisor exits cleanly.
    let o = p.run(&["down"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(sup.wait_exit(DEADLINE), Some(0), "{}", sup.stderr());
    assert!(!sup.stderr().contains("panicked"), "{}", sup.stderr());
}

#[test]
fn a_malformed_env_file_line_is_named_without_its_secret() {
    let p = Project::new("[app.web]\ncommand = \"sleep 1000\"\nenv_file = \".env\"\n");
    for (env, line, key) in [
        ("A=1\n# ok\nsk_live_TOPSECRET\n", 3, None),
        ("A=1\nAPI_KEY=\"sk_live_TOPSECRET\n", 2, Some("API_KEY")),
        ("A=1\nbad name=sk_live_TOPSECRET\n", 2, None),
    ] {
        p.write(".env", env);
        let o = p.run(&["check"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(&format!(".env:{line}:")), "{err}");
        assert!(err.contains("windlass.toml:3:"), "{err}");
        assert!(!err.contains("TOPSECRET"), "the secret leaked: {err}");
        if let Some(k) = key {
            assert!(err.contains(k), "{err}");
        }
        let o = p.run(&["check", "--json"]);
        assert!(!String::from_utf8_lossy(&o.stdout).contains("TOPSECRET"));
    }
}

/// A NUL byte cannot reach a program's argv or environment: `check` refuses it at its
/// position (the app would otherwise fail every start), without quoting an env value.
#[test]
fn a_nul_byte_in_command_or_env_is_refused_where_it_is() {
    let p = Project::empty();
    for (text, at) in [
        (
            "[app.web]\ncommand = [\"sleep\", \"1\\u0000000\"]\n",
            "windlass.toml:2:11",
        ),
        (
            "[app.web]\ncommand = \"sleep 1\\u0000\"\n",
            "windlass.toml:2:11",
        ),
        (
            "[app.web]\ncommand = \"sleep 1000\"\nenv = { KEY = \"sk_live_TOPSECRET\\u0000\" }\n",
            "windlass.toml:3:15",
        ),
    ] {
        p.write("windlass.toml", text);
        let o = p.run(&["check"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}\n{err}");
        assert!(err.contains(at) && err.contains("NUL"), "{text}\n{err}");
        // The message does not quote the value (the snippet below it shows the config's
        // own line, as for every config error).
        let message = err.lines().next().unwrap_or("");
        assert!(!message.contains("TOPSECRET"), "{err}");
    }
    p.write(
        "windlass.toml",
        "[app.web]\ncommand = \"sleep 1000\"\nenv_file = \".env\"\n",
    );
    p.write(".env", "A=1\nKEY=sk_live_TOPSECRET\0\n");
    let o = p.run(&["check"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(".env:2:") && err.contains("NUL"), "{err}");
    assert!(!err.contains("TOPSECRET"), "{err}");
}

/// A config error on a line that holds secrets (an `env` table or key, the admin `token`)
/// shows the line with its quoted values masked, keeping the position and the underline.
#[test]
fn a_config_error_on_a_secret_line_does_not_quote_the_secret() {
    let p = Project::empty();
    for (text, at) in [
        (
            "[app.web]\ncommand = \"sleep 1000\"\nenv = { API_KEY = \"sk_live_TOPSECRET\", N = [3] }\n",
            "windlass.toml:3:",
        ),
        (
            "[app.web]\ncommand = \"sleep 1000\"\n\n[app.web.env]\nAPI_KEY = \"sk_live_TOPSECRET\"\nN = [3]\n",
            "windlass.toml:6:",
        ),
        (
            "[app.web]\ncommand = \"sleep 1000\"\n\n[admin]\ntoken = \"sk_live_TOPSECRET\"\nlisten = \"nowhere\"\n",
            "windlass.toml:",
        ),
        (
            "[app.web]\ncommand = \"sleep 1000\"\n\n[admin]\ntoken = [\"sk_live_TOPSECRET\"]\n",
            "windlass.toml:5:",
        ),
    ] {
        p.write("windlass.toml", text);
        let o = p.run(&["check"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(at), "{at} in {err}");
        assert!(!err.contains("TOPSECRET"), "the secret leaked: {err}");
        let o = p.run(&["check", "--json"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains("TOPSECRET"), "the secret leaked: {out}");
    }
}
