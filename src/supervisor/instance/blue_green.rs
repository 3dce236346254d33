//! The blue-green switch of one instance: a new process beside the old, traffic switched in
//! one step once it is healthy, the old one drained and stopped. Commands keep being
//! answered while the new process starts: a stop, restart or shutdown abandons the start at
//! once (the new process is stopped, the reload answered) instead of waiting up to
//! `health.start_timeout`.

use std::time::{Instant, SystemTime};

use super::spawn::{Proc, spawn_proc};
use super::stop::{self, Stop, drained, stop_proc};
use super::{Health, InstanceError, Next, Phase, Request, Task, human, spawn_error};
use crate::protocol::State;

/// How a blue-green reload ended.
pub(super) enum Reloaded {
    /// Switched, or failed with the old process still serving (the request is answered).
    Done,
    /// A command abandoned it (answered as interrupted): the old process must now obey this
    /// request (none: the channel closed).
    Interrupted(Option<Request>),
}

/// Why the new process did not take over.
enum Failure {
    Failed(String),
    Interrupted(Option<Request>),
}

impl Task {
    /// The blue-green switch for one instance. On success `proc` is the new process.
    pub(super) async fn blue_green(&mut self, proc: &mut Proc, req: Request) -> Reloaded {
        let app = self.ctx.app();
        let Some(proxy) = self.ctx.proxy.clone() else {
            // Never sent: a reload reaches only instances behind the proxy.
            let _ = req.done.send(Err(InstanceError::Health(
                "blue-green needs the app behind the proxy (a `port`)".into(),
            )));
            return Reloaded::Done;
        };
        // A Lisp app from source: compiled once for every instance, before the new process.
        let (compiler, log, app2, after) = (
            self.ctx.compiler.clone(),
            self.ctx.log.clone(),
            app.clone(),
            req.after,
        );
        let compiled = async move { compiler.ensure(&app2, &log, Some(after)).await };
        tokio::pin!(compiled);
        let compiled = loop {
            tokio::select! {
                r = &mut compiled => break r,
                r = self.rx.recv() => match self.on_command(Phase::Reloading, r) {
                    Next::Stop(r) => return self.interrupted(req, Some(r), None).await,
                    Next::Closed => return self.interrupted(req, None, None).await,
                    _ => {}
                },
            }
        };
        if let Err(e) = compiled {
            self.ctx.note(&format!(
                "reload failed: {e}; the old version keeps serving"
            ));
            let _ = req.done.send(Err(InstanceError::ReloadCompile(e)));
            return Reloaded::Done;
        }
        self.generation += 1;
        let mut new = match spawn_proc(&self.ctx, &app, self.generation, &self.health_tx) {
            Ok(p) => p,
            Err(e) => {
                let _ = req.done.send(Err(spawn_error(&app, &e)));
                return Reloaded::Done;
            }
        };
        let t0 = Instant::now();
        self.ctx.note(&format!(
            "reload: started pid {} on private port {}; waiting until healthy (up to {})",
            new.pid,
            new.port.unwrap_or(0),
            human(app.health.start_timeout)
        ));
        let failure = loop {
            tokio::select! {
                s = new.process.wait() => {
                    let how = s.map(|st| super::process::exit_info(st, new.started.elapsed()).to_string()).unwrap_or_else(|e| e.to_string());
                    break Failure::Failed(format!("the new process exited before it was healthy ({how})"));
                }
                h = self.health_rx.recv() => match h {
                    Some(Health::Ready(g, took)) if g == new.generation => {
                        let (old_b, new_b) = (proc.backend.expect("behind the proxy"), new.backend.expect("behind the proxy"));
                        proxy.replace(&[old_b], &[new_b]);
                        let switched = t0.elapsed();
                        self.ctx.cell.set_tail(new.tail.clone());
                        self.ctx.set(|s| {
                            s.pid = Some(new.pid);
                            s.port = new.port;
                            s.started = Some((SystemTime::now(), new.started));
                            s.reloads += 1;
                            s.state = State::Running;
                        });
                        let mut old = std::mem::replace(proc, new);
                        self.ctx.note(&format!("reload: pid {} healthy after {}; traffic switched from pid {}; draining it", proc.pid, human(took), old.pid));
                        let report = stop::drain(&proxy, old_b, app.stop.timeout, self.ctx.force.clone()).await;
                        old.backend = None;
                        let _ = stop_proc(&self.ctx, &app, &mut old, Stop::Replaced).await;
                        let msg = format!(
                            "pid {} → {}: healthy and switched in {}, old drained ({})",
                            old.pid,
                            proc.pid,
                            human(switched),
                            drained(report.as_ref())
                        );
                        self.ctx.note(&format!("reload: done; {msg}"));
                        let _ = req.done.send(Ok(msg));
                        return Reloaded::Done;
                    }
                    Some(Health::StartFailed(g, e)) if g == new.generation => break Failure::Failed(format!("the new process did not become healthy: {e}")),
                    // Traffic never goes to a process nobody could check.
                    Some(Health::Unverified(g, e)) if g == new.generation => break Failure::Failed(format!("windlass could not run the new process's health check ({e})")),
                    Some(Health::Unhealthy(g, e)) if g == proc.generation => {
                        // The old one is failing meanwhile: take it out; the new one will take over.
                        if let Some(b) = proc.backend { proxy.set_ready(b, false); }
                        self.ctx.note(&format!("unhealthy during reload ({e}); taken out of rotation"));
                    }
                    Some(_) => {}
                    None => break Failure::Failed("health channel closed".to_owned()),
                },
                r = self.rx.recv() => match self.on_command(Phase::Reloading, r) {
                    Next::Stop(r) => break Failure::Interrupted(Some(r)),
                    Next::Closed => break Failure::Interrupted(None),
                    _ => {}
                },
            }
        };
        match failure {
            Failure::Interrupted(then) => self.interrupted(req, then, Some(new)).await,
            Failure::Failed(failure) => {
                // The new process failed: the old one keeps serving.
                let _ = stop_proc(&self.ctx, &app, &mut new, Stop::Dead).await;
                new.drain_output().await;
                self.ctx.note(&format!(
                    "reload failed: {failure}; the old version keeps serving"
                ));
                let _ = req.done.send(Err(InstanceError::NewVersionFailed {
                    failure,
                    last_output: new.last_output(),
                }));
                Reloaded::Done
            }
        }
    }

    /// A command arrived during the start: the new process (if any) goes at once, the
    /// reload is answered, and the old process is left for `then` to deal with.
    async fn interrupted(
        &mut self,
        reload: Request,
        then: Option<Request>,
        new: Option<Proc>,
    ) -> Reloaded {
        let cmd = then.as_ref().map_or(super::Cmd::Shutdown, |r| r.cmd);
        if let Some(mut new) = new {
            let app = self.ctx.app();
            let _ = stop_proc(&self.ctx, &app, &mut new, Stop::Dead).await;
            new.drain_output().await;
            self.ctx.note(&format!(
                "reload interrupted by `{cmd}`: new pid {} stopped",
                new.pid
            ));
        } else {
            self.ctx.note(&format!("reload interrupted by `{cmd}`"));
        }
        let _ = reload.done.send(Err(InstanceError::Interrupted(cmd)));
        Reloaded::Interrupted(then)
    }
}
