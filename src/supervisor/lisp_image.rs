//! Talking to the running images of Common Lisp apps through swank: in-place reload (the
//! Cookbook's hot reload: evaluate `reload_eval` in the live image) and metrics (heap, GC,
//! allocation, threads).
//!
//! Instance `i` of an app with `swank_port = P` has swank on 127.0.0.1:P+i. A reload returns
//! what the compiler said: the wrapper's warnings and diagnostics, and the app's own log lines
//! written meanwhile (read from the log broadcast up to a marker the image writes to its
//! stderr once the reload form returned, so no line is lost to the capture's lag).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::config::AppConfig;
use crate::lisp::swank::{self, SwankClient, SwankError};
use crate::protocol::LispMetrics;
use crate::protocol::{InPlaceReport, InstanceReload, LogLine, Stream};

/// How long a reload may take in one image (a big system recompiles for a while).
const RELOAD_DEADLINE: Duration = Duration::from_secs(600);
/// How long the log capture may lag behind the image.
const LOG_DEADLINE: Duration = Duration::from_secs(5);
/// Metrics are for a status page: answer quickly or not at all.
const METRICS_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum InPlaceError {
    #[error("app `{0}` is not a Common Lisp app: in-place reload evaluates a form through swank")]
    NotLisp(String),
    #[error("app `{0}` has no `swank_port`: in-place reload goes through swank")]
    NoSwank(String),
    #[error("instance {index} of `{app}`: {source}")]
    Swank {
        app: String,
        index: u32,
        #[source]
        source: SwankError,
    },
}

impl InPlaceError {
    pub fn hint(&self) -> Option<String> {
        match self {
            InPlaceError::NotLisp(_) => Some(
                "use reload = \"blue-green\" or \"restart\" (or reload_signal for apps that reload on a signal)".into(),
            ),
            InPlaceError::NoSwank(app) => Some(format!(
                "add swank_port = 4005 to [app.{app}] and restart it once"
            )),
            InPlaceError::Swank { .. } => Some("is the app running? see `windlass status`".into()),
        }
    }
}

/// Evaluates the app's `reload_eval` in the images of instances `indices`, one after the
/// other; stops at the first instance whose reload fails (the others keep the old code).
/// `logs` must be subscribed before the call (`Supervisor::subscribe_logs`).
pub async fn reload_in_place(
    app: &AppConfig,
    indices: &[u32],
    mut logs: broadcast::Receiver<Arc<LogLine>>,
) -> Result<InPlaceReport, InPlaceError> {
    let lisp = app
        .lisp
        .as_ref()
        .ok_or_else(|| InPlaceError::NotLisp(app.name.clone()))?;
    if lisp.swank_port.is_none() {
        return Err(InPlaceError::NoSwank(app.name.clone()));
    }
    let swank_err = |index, source| InPlaceError::Swank {
        app: app.name.clone(),
        index,
        source,
    };
    let mut instances = Vec::new();
    for &index in indices {
        let addr = lisp
            .swank_addr(index)
            .ok_or_else(|| InPlaceError::NoSwank(app.name.clone()))?;
        let mut client = SwankClient::connect(addr)
            .await
            .map_err(|e| swank_err(index, e))?;
        client.set_timeout(RELOAD_DEADLINE);
        let report = swank::swank_eval_script(&mut client, &lisp.reload_eval)
            .await
            .map_err(|e| swank_err(index, e))?;
        let marker = format!("windlass-lisp: reload-done {}", std::process::id());
        let mark = format!(
            "(progn (format sb-sys:*stderr* \"~&{marker}~%\") (finish-output sb-sys:*stderr*))"
        );
        let mut log_lines = Vec::new();
        if client.eval(&mark, swank::DEFAULT_PACKAGE).await.is_ok() {
            let _ = tokio::time::timeout(LOG_DEADLINE, async {
                loop {
                    match logs.recv().await {
                        Ok(l) if l.app == app.name && l.instance == Some(index) => {
                            if l.line.contains(&marker) {
                                break;
                            }
                            if l.stream != Stream::Windlass {
                                log_lines.push(l.line.clone());
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            })
            .await;
        }
        let ok = report.ok;
        instances.push(InstanceReload {
            index,
            ok,
            error: report.error,
            warnings: report.warnings,
            diagnostics: report.diagnostics,
            output: report.output,
            log_lines,
        });
        if !ok {
            break;
        }
    }
    Ok(InPlaceReport {
        app: app.name.clone(),
        ok: instances.iter().all(|i| i.ok),
        instances,
    })
}

/// The report as lines for the user: per instance, what happened, the compiler's warnings
/// and the app's log lines written meanwhile (where the compiler's diagnostics appear; the
/// diagnostics text itself when the log had none), indented under the instance's line.
pub fn report_lines(report: &InPlaceReport) -> Vec<String> {
    let mut out = Vec::new();
    for i in &report.instances {
        let head = format!("{}.{}", report.app, i.index);
        match (&i.error, i.ok) {
            (Some(e), _) => out.push(format!("{head}: {e}")),
            (None, false) => out.push(format!("{head}: the reload form failed")),
            (None, true) => out.push(format!(
                "{head}: reloaded in place ({} warning{})",
                i.warnings.len(),
                if i.warnings.len() == 1 { "" } else { "s" }
            )),
        }
        for w in &i.warnings {
            out.push(format!("  warning: {}", w.trim_end()));
        }
        // What the form printed (ASDF's and the compiler's progress notes).
        out.extend(
            i.output
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("  > {l}")),
        );
        if i.log_lines.is_empty() {
            if !i.ok {
                out.extend(
                    i.diagnostics
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(|l| format!("  | {l}")),
                );
            }
        } else {
            out.extend(i.log_lines.iter().map(|l| format!("  | {l}")));
        }
    }
    out
}

/// Heap, GC, allocation and thread figures of instance `index`'s image; `None` when the app
/// is not a Lisp app with swank, or the image does not answer within 2 s.
pub async fn lisp_metrics(app: &AppConfig, index: u32) -> Option<LispMetrics> {
    let addr = app.lisp.as_ref()?.swank_addr(index)?;
    tokio::time::timeout(METRICS_DEADLINE, async {
        let mut client = SwankClient::connect(addr).await.ok()?;
        client.set_timeout(METRICS_DEADLINE);
        client.metrics().await.ok()
    })
    .await
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(ok: bool, error: Option<&str>, log: &[&str], diagnostics: &str) -> InstanceReload {
        InstanceReload {
            index: 0,
            ok,
            error: error.map(str::to_owned),
            warnings: vec!["STYLE-WARNING: x is unused".into()],
            diagnostics: diagnostics.into(),
            output: "; compiling file \"app.lisp\"\n".into(),
            log_lines: log.iter().map(|l| (*l).to_owned()).collect(),
        }
    }

    #[test]
    fn the_report_names_the_instance_the_error_warnings_and_log_lines() {
        let r = InPlaceReport {
            app: "hello".into(),
            ok: true,
            instances: vec![inst(true, None, &["; compiling app.lisp"], "; ignored")],
        };
        assert_eq!(
            report_lines(&r),
            [
                "hello.0: reloaded in place (1 warning)",
                "  warning: STYLE-WARNING: x is unused",
                "  > ; compiling file \"app.lisp\"",
                "  | ; compiling app.lisp",
            ]
        );
        // A failure without log lines shows the compiler's diagnostics instead.
        let r = InPlaceReport {
            app: "hello".into(),
            ok: false,
            instances: vec![inst(
                false,
                Some("END-OF-FILE: eof"),
                &[],
                "; line 1\n\n; line 2",
            )],
        };
        let lines = report_lines(&r);
        assert_eq!(lines[0], "hello.0: END-OF-FILE: eof");
        assert_eq!(lines[3..], ["  | ; line 1", "  | ; line 2"]);
    }
}
