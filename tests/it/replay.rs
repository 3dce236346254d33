//! Instances dying under load (issue 18): a request an instance read and then died with is
//! sent once to another instance, so killing one of two instances costs no request; a
//! request that kills every instance it reaches (a query of death) stops at the second, gets
//! a 502 naming the cause, and is counted. Real `windlass`, a real Python app with two
//! instances, real SIGKILLs, and clients that count every response.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use crate::helper::{self, DEADLINE, Project};

/// Answers `ok` in one write (so an instance killed mid-response cannot cut a body in
/// two); `/die` records the instance's pid in `$DEATHS` and exits at once.
const APP: &str = r#"
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def one(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        if self.path.split("?")[0] == "/die":
            with open(os.environ["DEATHS"], "a") as f:
                f.write(f"{os.getpid()}\n")
            os._exit(3)
        self.wfile.write(OK)
    do_GET = do_PUT = do_POST = one
    def log_message(self, *args):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 256
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

struct App {
    p: Project,
    port: u16,
    admin: u16,
    _sup: helper::Supervisor,
}

fn start_app() -> App {
    let (port, admin) = (helper::free_port(), helper::free_port());
    let p = Project::new(&format!(
        "[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\ninstances = 2\n\
         env = {{ DEATHS = \"deaths.txt\" }}\n\
         health = {{ path = \"/health\", interval = \"1s\" }}\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    ));
    p.write("app.py", APP);
    let sup = p.up(&[]);
    let app = App {
        p,
        port,
        admin,
        _sup: sup,
    };
    app.both_running(&[]);
    app
}

impl App {
    /// Waits until both instances are running (in rotation for a second at least, so a
    /// kill is restarted at once), none with a pid in `gone`; returns their pids.
    fn both_running(&self, gone: &[u32]) -> [u32; 2] {
        helper::wait_for("both instances running", DEADLINE, || {
            let s = self.p.status();
            let app = s["apps"].as_array()?.iter().find(|a| a["name"] == "web")?;
            let mut pids = [0u32; 2];
            for (i, inst) in app["instances"].as_array()?.iter().enumerate().take(2) {
                let pid = u32::try_from(inst["pid"].as_u64()?).ok()?;
                let up = inst["uptime_secs"].as_f64().unwrap_or(0.0);
                if inst["state"] != "running" || gone.contains(&pid) || up < 1.2 {
                    return None;
                }
                pids[i] = pid;
            }
            (pids[1] != 0).then_some(pids)
        })
    }

    fn deaths(&self) -> Vec<String> {
        std::fs::read_to_string(self.p.path().join("deaths.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Every response the clients got: the 200s counted, anything else kept to show.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    fresh_ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(what);
    }

    fn failed(&self) -> Vec<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reads one response (framed by `Content-Length`): its status and body.
fn read_response(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::Error::other("connection closed before a response"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not a status line: {line:?}")))?;
    let mut length = 0;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Sends `method /` on one keep-alive connection until `stop` (reconnecting only if the
/// proxy closed it, which counts as a failure).
fn keep_alive_client(port: u16, method: &str, stop: &AtomicBool, tally: &Tally) {
    let req = format!("{method} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    while !stop.load(SeqCst) {
        let (w, r) = match conn.as_mut() {
            Some(c) => c,
            None => {
                let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
                    tally.fail(format!("{method}: the proxy refused a connection"));
                    return;
                };
                s.set_read_timeout(Some(DEADLINE)).expect("timeout");
                let r = BufReader::new(s.try_clone().expect("clone"));
                conn.insert((s, r))
            }
        };
        let got = w.write_all(req.as_bytes()).and_then(|()| read_response(r));
        match got {
            Ok((200, _)) => {
                tally.ok.fetch_add(1, SeqCst);
            }
            Ok((status, body)) => tally.fail(format!("{method}: {status} {body}")),
            Err(e) => {
                tally.fail(format!("{method}: {e}"));
                conn = None;
            }
        }
    }
}

/// One request per new connection until `stop`: a visitor arriving at any moment.
fn fresh_client(port: u16, stop: &AtomicBool, tally: &Tally) {
    while !stop.load(SeqCst) {
        match helper::http_get(port, "/") {
            Ok((200, _)) => {
                tally.fresh_ok.fetch_add(1, SeqCst);
            }
            Ok((status, body)) => tally.fail(format!("fresh: {status} {body}")),
            Err(e) => tally.fail(format!("fresh: {e}")),
        }
    }
}

/// Runs `during` while 4 keep-alive clients (`GET`, plain path; bodiless `PUT`, full path)
/// and one fresh-connection client load the app; returns what they got.
fn under_load(port: u16, during: impl FnOnce(&Tally)) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for method in ["GET", "PUT", "GET", "PUT", "fresh"] {
        let (tally, stop) = (Arc::clone(&tally), Arc::clone(&stop));
        clients.push(std::thread::spawn(move || match method {
            "fresh" => fresh_client(port, &stop, &tally),
            m => keep_alive_client(port, m, &stop, &tally),
        }));
    }
    // Also when `during` panics: the clients stop with the test.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }
    let stopper = StopOnDrop(Arc::clone(&stop));
    during(&tally);
    drop(stopper);
    for c in clients {
        c.join().expect("client thread");
    }
    tally
}

/// Waits until the clients have had `n` more answers.
fn more_answers(tally: &Tally, n: u64) {
    let from = tally.ok.load(SeqCst);
    helper::wait_for("the clients to get answers", DEADLINE, || {
        (tally.ok.load(SeqCst) >= from + n).then_some(())
    });
}

#[test]
fn killing_one_of_two_instances_under_load_fails_no_request() {
    const KILLS: usize = 6;
    let app = start_app();
    let mut pids = app.both_running(&[]);
    let tally = under_load(app.port, |tally| {
        for k in 0..KILLS {
            more_answers(tally, 300);
            let pid = pids[k % 2];
            // SAFETY: kill(2) with a pid and a signal number; no memory is involved.
            assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
            pids = app.both_running(&[pid]);
        }
        more_answers(tally, 300);
    });
    let failed = tally.failed();
    let ok = tally.ok.load(SeqCst) + tally.fresh_ok.load(SeqCst);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across {KILLS} kills: {:?}",
        failed.len(),
        ok + failed.len() as u64,
        &failed[..failed.len().min(10)]
    );
    assert!(
        tally.fresh_ok.load(SeqCst) > 0,
        "the fresh client got answers"
    );
    let metrics = helper::scrape(app.admin);
    assert_eq!(
        helper::sample(
            &metrics,
            "windlass_proxy_poison_requests_total{app=\"web\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
}

#[test]
fn a_request_that_kills_its_instance_stops_at_the_second_one() {
    let app = start_app();
    let pids = app.both_running(&[]);
    let tally = under_load(app.port, |tally| {
        more_answers(tally, 300);
        let (status, body) = helper::http_request(
            app.port,
            "GET",
            "/die?user=secret",
            &[("X-Request-Id", "qod-1")],
        )
        .expect("an answer to /die");
        assert_eq!(status, 502, "{body}");
        assert!(
            body.contains("it was not retried again: its retry stopped another instance"),
            "{body}"
        );
        assert!(body.contains("Request id: qod-1"), "{body}");
        // Both instances died from it and came back.
        app.both_running(&pids);
        more_answers(tally, 300);
    });
    assert_eq!(app.deaths().len(), 2, "two instances died, no third");
    let failed = tally.failed();
    assert!(failed.is_empty(), "other clients failed: {failed:?}");
    let metrics = helper::scrape(app.admin);
    assert_eq!(
        helper::sample(
            &metrics,
            "windlass_proxy_poison_requests_total{app=\"web\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    let line = helper::wait_for("the poison request in the app's log", DEADLINE, || {
        app.p
            .log_lines("web")
            .into_iter()
            .find(|l| l.contains("(request id qod-1)"))
    });
    assert!(line.contains("502 Bad Gateway for GET /die "), "{line}");
    assert!(!line.contains("secret"), "{line}");
}
