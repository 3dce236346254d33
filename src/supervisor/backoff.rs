//! The restart policy's arithmetic, kept pure so it can be tested without processes.
//!
//! After an instance that stayed up at least `reset_after` exits, it is restarted at once (a
//! crash of a healthy app costs only its cold start). Each further exit that comes sooner
//! than `reset_after` is a *quick failure*: the delay before the next start is `initial`,
//! then doubles up to `max`; after `crashloop_after` quick failures in a row the instance is
//! flagged `crashloop` and keeps being retried at that pace (as Kubernetes does), so an app
//! that fails because a dependency is down comes back by itself once it returns.

use std::time::Duration;

use crate::config::{BackoffConfig, RestartPolicy};

/// What the policy says after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start again after this delay; `crashloop` flags a crash loop.
    Restart { delay: Duration, crashloop: bool },
    /// Do not restart: `failed` distinguishes `fatal` from a clean `exited`.
    GiveUp { failed: bool },
}

/// Restart bookkeeping of one instance.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    /// Quick failures in a row.
    pub quick_failures: u32,
}

impl Backoff {
    /// Records an exit after `uptime` and decides what to do next.
    pub fn on_exit(
        &mut self,
        cfg: &BackoffConfig,
        policy: RestartPolicy,
        success: bool,
        uptime: Duration,
    ) -> Decision {
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !success,
            RestartPolicy::Never => false,
        };
        if uptime >= cfg.reset_after {
            self.quick_failures = 0;
        } else {
            self.quick_failures = self.quick_failures.saturating_add(1);
        }
        if !restart {
            return Decision::GiveUp { failed: !success };
        }
        let delay = delay_for(cfg, self.quick_failures);
        Decision::Restart {
            delay,
            crashloop: self.quick_failures >= cfg.crashloop_after,
        }
    }

    /// A start requested by a person (`windlass restart`) forgives past failures.
    pub fn reset(&mut self) {
        self.quick_failures = 0;
    }
}

/// 0 quick failures: no delay; then initial, 2×initial, ... capped at max.
pub fn delay_for(cfg: &BackoffConfig, quick_failures: u32) -> Duration {
    if quick_failures == 0 {
        return Duration::ZERO;
    }
    let shift = (quick_failures - 1).min(30);
    cfg.initial
        .checked_mul(1u32 << shift)
        .map_or(cfg.max, |d| d.min(cfg.max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(5),
            crashloop_after: 3,
        }
    }

    #[test]
    fn quick_failures_double_the_delay_up_to_max_then_flag_a_crash_loop() {
        let mut b = Backoff::default();
        let quick = Duration::from_millis(10);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(b.on_exit(&cfg(), RestartPolicy::Always, false, quick));
        }
        let ms = |d: Duration| d.as_millis();
        let delays: Vec<u128> = seen
            .iter()
            .map(|d| match d {
                Decision::Restart { delay, .. } => ms(*delay),
                Decision::GiveUp { .. } => u128::MAX,
            })
            .collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert!(matches!(
            seen[1],
            Decision::Restart {
                crashloop: false,
                ..
            }
        ));
        assert!(matches!(
            seen[2],
            Decision::Restart {
                crashloop: true,
                ..
            }
        ));
    }

    #[test]
    fn a_long_run_resets_and_restarts_at_once() {
        let mut b = Backoff::default();
        b.on_exit(&cfg(), RestartPolicy::Always, false, Duration::ZERO);
        b.on_exit(&cfg(), RestartPolicy::Always, false, Duration::ZERO);
        let d = b.on_exit(
            &cfg(),
            RestartPolicy::Always,
            false,
            Duration::from_secs(60),
        );
        assert_eq!(
            d,
            Decision::Restart {
                delay: Duration::ZERO,
                crashloop: false
            }
        );
    }

    #[test]
    fn policies() {
        let up = Duration::from_secs(60);
        let mut b = Backoff::default();
        assert_eq!(
            b.on_exit(&cfg(), RestartPolicy::Never, false, up),
            Decision::GiveUp { failed: true }
        );
        assert_eq!(
            b.on_exit(&cfg(), RestartPolicy::Never, true, up),
            Decision::GiveUp { failed: false }
        );
        assert_eq!(
            b.on_exit(&cfg(), RestartPolicy::OnFailure, true, up),
            Decision::GiveUp { failed: false }
        );
        assert!(matches!(
            b.on_exit(&cfg(), RestartPolicy::OnFailure, false, up),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            b.on_exit(&cfg(), RestartPolicy::Always, true, up),
            Decision::Restart { .. }
        ));
    }
}
