//! The knobs of one app's proxy, with production defaults. The config room resolves
//! `windlass.toml` into this; tests shorten the timeouts.

use std::time::Duration;

/// Settings of one [`AppProxy`](crate::proxy::AppProxy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// How long a request waits for a ready instance before the 503 page (default 30 s).
    pub hold: Duration,
    /// Deadline of a TCP connect to an instance (default 5 s).
    pub connect_timeout: Duration,
    /// Deadline for the response head once the request was sent in full (default 60 s).
    pub response_timeout: Duration,
    /// Client keep-alive idle time and request-head read deadline (default 60 s).
    pub idle_timeout: Duration,
    /// Idle upstream connections older than this are not reused (default 4 s, below the
    /// usual 5 s keep-alive timeout of app servers, so the app never closes one under us).
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per instance and proxy thread (default 256).
    pub pool_max_idle: usize,
    /// On shutdown, how long `serve` waits for open client connections to finish
    /// (default 10 s).
    pub shutdown_timeout: Duration,
}

impl Default for ProxyConfig {
    fn default() -> ProxyConfig {
        ProxyConfig {
            hold: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            pool_idle_timeout: Duration::from_secs(4),
            pool_max_idle: 256,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}
