//! Output conventions: no escape codes when piped or with NO_COLOR, colour on a terminal;
//! a port already taken is reported with the process that holds it.

use std::io::Read;
use std::net::TcpListener;
use std::os::fd::OwnedFd;
use std::process::Stdio;

use crate::helper::*;

fn no_escapes(what: &str, bytes: &[u8]) {
    assert!(
        !bytes.contains(&0x1b),
        "{what} has escape codes: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

#[test]
fn piped_output_has_no_escape_codes() {
    let p = Project::new("[app.web]\ncommand = \"python3 -m http.server\"\nport = 8080\n");
    for args in [
        &["check"][..],
        &["check", "--json"],
        &["--help"],
        &["up", "--help"],
        &["status"],
    ] {
        let o = p.run(args);
        no_escapes(&format!("{args:?} stdout"), &o.stdout);
        no_escapes(&format!("{args:?} stderr"), &o.stderr);
    }
    let q = Project::empty();
    q.write("app.py", "import os\n");
    let o = q.run(&["init"]);
    assert_eq!(o.status.code(), Some(0));
    no_escapes("init stdout", &o.stdout);
}

/// Runs `windlass init` with its stdout on a pseudo-terminal; returns what it printed.
fn init_on_a_terminal(no_color: bool) -> Vec<u8> {
    let p = Project::empty();
    p.write("app.py", "import os\nport = os.environ['PORT']\n");
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut cmd = p.cmd(&["init"]);
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let slave: OwnedFd = pty.slave;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(slave.try_clone().expect("dup slave")))
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawn windlass init");
    // `cmd` keeps its copies of the slave open until dropped; the master sees EOF only after.
    drop(cmd);
    let status = child.wait().expect("wait");
    assert!(status.success());
    // The child has exited and our slave copies are closed: read until EIO.
    let mut master = std::fs::File::from(pty.master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn no_color_is_respected_on_a_terminal() {
    let coloured = init_on_a_terminal(false);
    assert!(
        coloured.contains(&0x1b),
        "a terminal gets colour: {:?}",
        String::from_utf8_lossy(&coloured)
    );
    no_escapes(
        "init with NO_COLOR on a terminal",
        &init_on_a_terminal(true),
    );
}

#[test]
fn check_names_the_process_holding_an_apps_port() {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let p = Project::new(&format!(
        "[app.web]\ncommand = \"python3 app.py\"\nport = {port}\n"
    ));
    let o = p.run(&["check"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "a taken port is a warning, not an error"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "port {port} of app `web` is already in use by pid {}",
            std::process::id()
        )),
        "{err}"
    );
    let o = p.run(&["check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("check --json");
    assert_eq!(v["ok"], true);
    assert_eq!(v["warnings"][0]["pid"], std::process::id());
    drop(l);
    let o = p.run(&["check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("check --json");
    assert_eq!(v["warnings"], serde_json::json!([]));
}

#[test]
fn check_json_lists_every_error_with_its_position() {
    let p = Project::new("[app.web]\ncomand = \"x\"\n");
    let o = p.run(&["check", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("check --json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], 2);
    assert_eq!(v["errors"][0]["column"], 1);
}

/// What a remote client can make an app log (a decoded request path, a header): a clipboard
/// write (OSC 52), a screen clear, a cursor move, a fake line, a C1 CSI, broken UTF-8.
const HOSTILE: &str =
    r"printf 'GET /\033]52;c;cHduZWQ=\007\033[2J\033[1;1H\rfake ok line\302\233\061m\377 end\n'";

#[test]
fn app_output_cannot_drive_the_operators_terminal() {
    let p = Project::empty();
    p.write("hostile.sh", &format!("{HOSTILE}\n{HOSTILE} >&2\nexit 3\n"));
    p.write(
        "windlass.toml",
        "[app.evil]\ncommand = [\"sh\", \"hostile.sh\"]\nrestart = \"never\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let sup = p.up(&[]);
    wait_for("the app to fail", DEADLINE, || {
        (p.instance("evil", 0)["state"] == "fatal").then_some(())
    });

    let logs = p.run(&["logs", "evil"]);
    assert!(logs.status.success());
    no_escapes("logs", &logs.stdout);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(
        text.contains(r"GET /\x1b]52;c;cHduZWQ=\x07\x1b[2J"),
        "{text}"
    );
    assert!(text.contains(r"\x0dfake ok line\x9b1m"), "{text}");
    assert!(!text.contains('\u{9b}'), "a C1 CSI is left: {text}");

    let raw = p.run(&["logs", "evil", "--raw"]);
    assert!(raw.status.success());
    let bytes = &raw.stdout;
    assert!(
        bytes.windows(6).any(|w| w == b"\x1b]52;c"),
        "--raw keeps the bytes: {:?}",
        String::from_utf8_lossy(bytes)
    );

    let json = p.run(&["logs", "evil", "--json"]);
    assert!(json.status.success());
    no_escapes("logs --json", &json.stdout);
    let first: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&json.stdout)
            .lines()
            .find(|l| l.contains("fake ok line"))
            .expect("a hostile line"),
    )
    .expect("json");
    assert!(
        first["line"]
            .as_str()
            .expect("line")
            .contains("\u{1b}]52;c;"),
        "JSON keeps the text: {first}"
    );
    assert!(!String::from_utf8_lossy(&json.stdout).contains('\u{9b}'));

    let status = p.run(&["status"]);
    assert!(status.status.success());
    no_escapes("status", &status.stdout);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("last stderr lines"), "{text}");
    assert!(text.contains(r"\x1b]52;c;"), "{text}");
    assert!(!text.contains('\u{9b}'), "{text}");

    let top = p.run(&["top", "--once"]);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    no_escapes("top --once", &top.stdout);

    // `up` in the foreground prints every line too.
    let shown = wait_for("the lines on up's stdout", DEADLINE, || {
        let out = sup.stdout();
        (out.matches("fake ok line").count() >= 2).then_some(out)
    });
    no_escapes("up", shown.as_bytes());
    assert!(shown.contains(r"\x1b]52;c;"), "{shown}");
    drop(sup);
}
