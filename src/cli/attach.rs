//! `windlass attach APP`: the terminal joins the app's console (its PTY) through the control
//! socket, tmux-style; Ctrl-] detaches and leaves the app running.
//!
//! On a terminal, the local tty is put in raw mode (every key, Ctrl-C included, goes to the
//! app) and restored on exit, error or panic. Without a terminal (a pipe, `ssh host windlass
//! attach` without `-t`), input is forwarded as it comes and the command ends once input is
//! over and the app's output has settled.

use std::io::{IsTerminal, Read, Write};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{CliError, ProjectArg, Result, client, exit};
use crate::control::client::ClientError;
use crate::control::console::{PROTOCOL, ROLE_HEADER};

/// Ctrl-]: detach.
const DETACH: u8 = 0x1d;
/// Without a terminal: how long output may be quiet after the end of input before exiting.
const SETTLE: Duration = Duration::from_secs(1);

/// Attach the terminal to an app's console (console = true); detach with Ctrl-].
#[derive(Debug, clap::Args)]
#[command(
    after_long_help = "The app must have `console = true` (the default for Lisp apps,
whose console is the image's REPL). The last 64 KiB of console output is shown first.
Several terminals may attach; the first one types, the others watch (or pass --read-only).
Ctrl-C goes to the app (a Lisp REPL aborts the current form); Ctrl-] detaches.

Examples:
  windlass up -d && windlass attach hello
  windlass attach web --instance 1 --read-only
  ssh -t prod 'cd /srv/app && windlass attach hello'"
)]
pub struct Args {
    /// The app's name, as in the config.
    pub app: String,
    /// Which instance (0-based).
    #[arg(long, default_value_t = 0)]
    pub instance: u32,
    /// Watch only; never type.
    #[arg(long)]
    pub read_only: bool,
    #[command(flatten)]
    pub project: ProjectArg,
}

static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Puts stdin's terminal in raw mode until dropped (and on panic).
struct RawMode;

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let first = SAVED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(saved)
            .is_none();
        if first {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        }
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawMode)
    }
}

fn restore() {
    // try_lock: a panic while the lock is held must not deadlock the hook.
    if let Ok(saved) = SAVED.try_lock() {
        if let Some(saved) = saved.as_ref() {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

pub async fn run(args: Args) -> Result {
    let c = client(args.project.file.as_ref())?;
    let stream = UnixStream::connect(c.socket())
        .await
        .map_err(|_| CliError::from(ClientError::NoSupervisor(c.socket().to_path_buf())))?;
    let transport = |e: hyper::Error| CliError::new(exit::FAILURE, format!("control socket: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(transport)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let tty = std::io::stdin().is_terminal();
    let mut path = format!(
        "/v1/apps/{}/console?instance={}&read_only={}",
        super::ctl::urlencode(&args.app),
        args.instance,
        args.read_only
    );
    if let Some((rows, cols)) = window_size().filter(|_| tty) {
        path.push_str(&format!("&rows={rows}&cols={cols}"));
    }
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(hyper::header::HOST, "windlass")
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, PROTOCOL)
        .body(Empty::<Bytes>::new())
        .map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(transport)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let mut err = CliError::from(crate::control::client::api_error(status, &body));
        if status == 400 {
            err.code = exit::USAGE;
        }
        return Err(err);
    }
    let writer = resp
        .headers()
        .get(ROLE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"writer");
    let upgraded = hyper::upgrade::on(resp).await.map_err(transport)?;
    let (mut rd, mut wr) = tokio::io::split(TokioIo::new(upgraded));

    let nl = if tty { "\r\n" } else { "\n" };
    if tty && writer {
        follow_window_size(
            crate::control::client::Client::new(c.socket()),
            format!(
                "/v1/apps/{}/console/size?instance={}",
                super::ctl::urlencode(&args.app),
                args.instance
            ),
        );
    }
    let _raw = if tty {
        Some(RawMode::enter().map_err(|e| {
            CliError::new(
                exit::FAILURE,
                format!("cannot put the terminal in raw mode: {e}"),
            )
        })?)
    } else {
        None
    };
    eprint!(
        "[attached to {} instance {}{}; detach with Ctrl-]]{nl}",
        args.app,
        args.instance,
        if writer {
            ""
        } else {
            ", read-only (another terminal has the keyboard)"
        }
    );

    let (tx, mut keys) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let mut out = [0u8; 16 * 1024];
    let mut input_open = true;
    let reason = loop {
        let settle = tokio::time::sleep(SETTLE);
        tokio::select! {
            n = rd.read(&mut out) => match n {
                Ok(0) | Err(_) => break "the console closed (the supervisor stopped)",
                Ok(n) => {
                    let mut stdout = std::io::stdout().lock();
                    let _ = stdout.write_all(&out[..n]);
                    let _ = stdout.flush();
                }
            },
            k = keys.recv(), if input_open => match k {
                None => input_open = false,
                Some(bytes) => {
                    let (send, detach) = match bytes.iter().position(|b| *b == DETACH) {
                        Some(i) => (&bytes[..i], true),
                        None => (&bytes[..], false),
                    };
                    if writer && !send.is_empty() && wr.write_all(send).await.is_err() {
                        break "the console closed";
                    }
                    let _ = wr.flush().await;
                    if detach {
                        break "detached";
                    }
                }
            },
            _ = settle, if !input_open && !tty => break "end of input",
        }
    };
    drop(_raw);
    eprint!("{nl}[{reason}; {} keeps running]{nl}", args.app);
    Ok(exit::OK)
}

/// The size (rows, columns) of the terminal on stdin, if it is one.
fn window_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` through a valid pointer; fd 0 is stdin.
    let r = unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Passes the local window's new size to the app's terminal whenever it changes
/// (`SIGWINCH`), for as long as the command runs.
fn follow_window_size(client: crate::control::client::Client, path: String) {
    let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    else {
        return;
    };
    tokio::spawn(async move {
        while winch.recv().await.is_some() {
            if let Some((rows, cols)) = window_size() {
                // The console keeps working at the old size if this fails.
                let _ = client
                    .send(Method::POST, &format!("{path}&rows={rows}&cols={cols}"))
                    .await;
            }
        }
    });
}
