//! `windlass top`: a live terminal view of every instance (state, pid, CPU%, memory, restarts,
//! requests per second), refreshed every interval, like `pm2 monit`.
//!
//! On a terminal it takes the alternate screen and quits on `q`, Esc or Ctrl-C. Without one
//! (a pipe, a test, `--once`) it prints a plain frame every interval, so it can be logged or
//! asserted on. Requests per second come from the admin listener's `/metrics` when the config
//! names a fixed `[admin] listen` address; the column shows `-` otherwise.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

use hyper::Method;

use super::output::{self, paint};
use super::{ProjectArg, Result, client, exit};
use crate::protocol::Status;

/// Watch every app instance live: CPU%, memory, restarts, requests per second.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass top                      live view; q or Ctrl-C quits
  windlass top --interval 500ms     refresh faster
  windlass top --once               print one frame and exit (scripts)
  windlass top --count 10 | tee top.log")]
pub struct Args {
    /// Time between frames.
    #[arg(long, default_value = "2s", value_parser = crate::config::raw::parse_positive_duration)]
    pub interval: Duration,
    /// Print one frame and exit.
    #[arg(long)]
    pub once: bool,
    /// Print this many frames, then exit.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    #[command(flatten)]
    pub project: ProjectArg,
}

/// What the previous frame saw, for rates.
#[derive(Default)]
struct Prev {
    at: Option<Instant>,
    /// (app, index) -> (pid, cpu seconds)
    cpu: HashMap<(String, u32), (Option<u32>, f64)>,
    /// app -> requests total
    requests: HashMap<String, f64>,
}

pub async fn run(args: Args) -> Result {
    let c = client(args.project.file.as_ref())?;
    let admin = super::load_config(args.project.file.as_ref())
        .ok()
        .and_then(|cfg| {
            let addr = cfg.admin.listen.filter(|a| a.port() != 0)?;
            Some((addr, cfg.admin.token))
        });
    let frames = if args.once { Some(1) } else { args.count };
    let live = frames.is_none() && std::io::stdout().is_terminal();
    let color = output::color_stdout();
    let _screen = live.then(Screen::enter);
    let mut keys = live.then(spawn_key_reader).flatten();
    let mut prev = Prev::default();
    let mut shown = 0u64;
    let mut ctrl_c = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let status: Status = c.json(Method::GET, "/v1/status").await?;
        let requests = match &admin {
            Some((addr, token)) => scrape_requests(*addr, token.as_deref()).await,
            None => None,
        };
        let frame = render(&status, requests.as_ref(), &mut prev, args.interval, color);
        let mut out = std::io::stdout().lock();
        let written = if live {
            write!(out, "\x1b[H\x1b[2J{}", frame.replace('\n', "\r\n"))
        } else {
            writeln!(out, "{frame}")
        };
        if written.and_then(|_| out.flush()).is_err() {
            return Ok(exit::OK); // stdout closed
        }
        drop(out);
        shown += 1;
        if frames.is_some_and(|n| shown >= n) {
            return Ok(exit::OK);
        }
        let tick = tokio::time::sleep(args.interval);
        tokio::select! {
            _ = tick => {}
            _ = &mut ctrl_c => return Ok(exit::OK),
            k = async { match keys.as_mut() { Some(k) => k.recv().await, None => std::future::pending().await } } => {
                if matches!(k, Some(b'q' | b'Q' | 0x03 | 0x1b) | None) {
                    return Ok(exit::OK);
                }
            }
        }
    }
}

fn render(
    status: &Status,
    requests: Option<&HashMap<String, f64>>,
    prev: &mut Prev,
    interval: Duration,
    color: bool,
) -> String {
    let now = Instant::now();
    let dt = prev.at.map(|t| now.duration_since(t).as_secs_f64());
    let sup = &status.supervisor;
    let mut out = format!(
        "{} · supervisor pid {} · up {} · {} · every {} · q quits\n\n",
        paint(color, output::BOLD, "windlass top"),
        sup.pid,
        output::since(crate::unix_now() - sup.started_at),
        output::bytes(sup.memory_bytes),
        output::dur(interval),
    );
    let mut rows = vec![
        [
            "APP", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "MEM", "REQ/S",
        ]
        .iter()
        .map(|h| paint(color, output::BOLD, h))
        .collect::<Vec<_>>(),
    ];
    for app in &status.apps {
        let rps = match (requests.and_then(|r| r.get(&app.name)), dt) {
            (Some(total), Some(dt)) if dt > 0.0 => prev
                .requests
                .get(&app.name)
                .filter(|p| **p <= *total)
                .map(|p| format!("{:.1}", (total - p) / dt)),
            _ => None,
        };
        if let Some(total) = requests.and_then(|r| r.get(&app.name)) {
            prev.requests.insert(app.name.clone(), *total);
        }
        for (k, i) in app.instances.iter().enumerate() {
            let name = if app.instances.len() > 1 {
                format!("{}.{}", output::sanitize(&app.name), i.index)
            } else {
                output::sanitize(&app.name).into_owned()
            };
            let key = (app.name.clone(), i.index);
            let cpu = i.cpu_seconds.and_then(|c| {
                let pct = match (prev.cpu.get(&key), dt) {
                    (Some((pid, p)), Some(dt)) if *pid == i.pid && dt > 0.0 => (c - p) / dt,
                    _ => c / i.uptime_secs.filter(|u| *u > 0.0)?,
                };
                Some(format!("{:.1}", (pct * 100.0).max(0.0)))
            });
            if let Some(c) = i.cpu_seconds {
                prev.cpu.insert(key, (i.pid, c));
            }
            rows.push(vec![
                name,
                paint(color, output::state_color(i.state), i.state.as_str()),
                i.pid.map_or("-".into(), |p| p.to_string()),
                i.uptime_secs.map_or("-".into(), output::since),
                i.restarts.to_string(),
                cpu.unwrap_or_else(|| "-".into()),
                i.memory_bytes.map_or("-".into(), output::bytes),
                // The app's rate, on its first instance's row.
                if k == 0 {
                    rps.clone().unwrap_or_else(|| "-".into())
                } else {
                    String::new()
                },
            ]);
        }
    }
    prev.at = Some(now);
    out.push_str(&output::table(&rows));
    out
}

/// `windlass_proxy_requests_total` summed per app, from the admin listener.
async fn scrape_requests(
    addr: std::net::SocketAddr,
    token: Option<&str>,
) -> Option<HashMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req =
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut out = HashMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("windlass_proxy_requests_total{") else {
            continue;
        };
        let app = rest
            .split_once("app=\"")
            .and_then(|(_, r)| r.split_once('"'))
            .map(|(a, _)| a.to_owned());
        let v = rest
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok());
        if let (Some(app), Some(v)) = (app, v) {
            *out.entry(app).or_insert(0.0) += v;
        }
    }
    Some(out)
}

/// The alternate screen and raw keyboard input, restored when dropped.
struct Screen {
    termios: Option<nix::sys::termios::Termios>,
}

impl Screen {
    fn enter() -> Screen {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let termios = stdin
            .is_terminal()
            .then(|| tcgetattr(&stdin).ok())
            .flatten();
        if let Some(t) = &termios {
            let mut raw = t.clone();
            cfmakeraw(&mut raw);
            let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        }
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Screen { termios }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(t) = &self.termios {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                t,
            );
        }
    }
}

/// Key presses from the terminal, one byte each; `None` once stdin closes.
fn spawn_key_reader() -> Option<tokio::sync::mpsc::Receiver<u8>> {
    if !std::io::stdin().is_terminal() {
        return None;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        while let Ok(1) = std::io::stdin().read(&mut b) {
            if tx.blocking_send(b[0]).is_err() {
                break;
            }
        }
    });
    Some(rx)
}
