//! `windlass logs [APP] [-f] [-n N] [--json] [--raw]`: past lines from the log files, then
//! live ones. What apps wrote is shown with its control characters made visible
//! ([`output::sanitize`]), so app output cannot drive the terminal; `--raw` prints it as is.

use http_body_util::BodyExt;
use hyper::Method;
use std::io::Write;
use std::path::PathBuf;

use super::output::{self, paint};
use super::{Result, client, ctl::urlencode, exit};
use crate::protocol::{LogLine, Stream};

/// Show the logs of every app, or of one; -f follows.
///
/// Every line carries the app, the instance and the stream (out, err, or windlass for the
/// supervisor's own notes about the app).
#[derive(Debug, clap::Args)]
#[command(after_long_help = "Examples:
  windlass logs                 the last 100 lines of every app
  windlass logs web -f          follow app `web`
  windlass logs web -n 1000 --json | jq -r .line
  windlass logs web --raw > web.log   the lines exactly as written (escape sequences included)")]
pub struct Args {
    /// Only this app.
    pub app: Option<String>,
    /// Keep printing new lines as they come.
    #[arg(short, long)]
    pub follow: bool,
    /// How many past lines to show (per app), at most 10000.
    #[arg(short = 'n', long, default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(0..=crate::logs::tail::MAX_LINES as u64))]
    pub lines: u64,
    /// One JSON object per line: {ts, app, instance, stream, line}.
    #[arg(long)]
    pub json: bool,
    /// Print what the apps wrote as is: escape sequences reach the terminal. By default,
    /// control characters (ESC, other C0 but tab, DEL, C1) are shown as `\xNN`.
    #[arg(long)]
    pub raw: bool,
    /// The config file.
    #[arg(long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

pub async fn run(args: Args) -> Result {
    let c = client(args.file.as_ref())?;
    let mut path = format!("/v1/logs?n={}&follow={}", args.lines, args.follow);
    if let Some(a) = &args.app {
        path.push_str(&format!("&app={}", urlencode(a)));
    }
    let resp = c.send(Method::GET, &path).await?;
    let mut body = resp.into_body();
    let color = output::color_stdout();
    let mut pending: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout().lock();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let rec: Vec<u8> = pending.drain(..=i).collect();
            let out = if args.json {
                output::json_for_terminal(String::from_utf8_lossy(&rec).trim_end()).into_owned()
            } else {
                match serde_json::from_slice::<LogLine>(&rec) {
                    Ok(l) => human(&l, color, args.raw),
                    Err(_) => continue,
                }
            };
            if writeln!(stdout, "{out}").is_err() {
                // The reader went away (`| head`): not an error.
                return Ok(exit::OK);
            }
        }
        let _ = stdout.flush();
    }
    Ok(exit::OK)
}

fn human(l: &LogLine, color: bool, raw: bool) -> String {
    let app = output::sanitize(&l.app);
    let who = match l.instance {
        Some(i) => format!("{app}.{i}"),
        None => app.into_owned(),
    };
    let line = if raw {
        l.line.clone()
    } else {
        output::sanitize(&l.line).into_owned()
    };
    let ts = output::sanitize(l.ts.get(..23).unwrap_or(&l.ts)).replace('T', " ");
    let stream = match l.stream {
        Stream::Out => "out",
        Stream::Err => "err",
        Stream::Windlass => "windlass",
    };
    let text = match l.stream {
        Stream::Err => paint(color, output::YELLOW, &line),
        Stream::Windlass => paint(color, output::DIM, &line),
        Stream::Out => line,
    };
    format!(
        "{} {} {} {text}",
        paint(color, output::DIM, &ts),
        paint(color, output::app_color(&l.app), &who),
        paint(color, output::DIM, stream)
    )
}
