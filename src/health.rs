//! Health checks of app instances, used by the supervisor to decide when an instance
//! enters the proxy's rotation and when it is unhealthy. [`probe`] is one check: an
//! HTTP `GET path` that passes on any 2xx/3xx, or a bare TCP connect when the app has
//! no health path. [`HealthCheck`] wraps it in the two loops the supervisor runs per
//! instance: [`HealthCheck::wait_healthy`] polls fast (every 20 ms by default) until
//! the first success or a start deadline, so a new instance enters rotation within
//! ~20 ms of listening; [`HealthCheck::watch`] then checks periodically and returns
//! once `unhealthy_threshold` checks in a row have failed. Both are plain futures:
//! drop them to stop checking. A check that cannot even open its socket because windlass
//! is out of descriptors ([`HealthError::is_local`]) is logged, rate-limited, and never
//! counts against the app: an idle-connection flood on the public port must not get a
//! healthy app stopped.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("no answer from {addr} within {}ms", after.as_millis())]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("HTTP exchange with {addr} failed")]
    Http {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("GET {path} on {addr} answered {status}")]
    Status {
        addr: SocketAddr,
        path: String,
        status: StatusCode,
    },
    #[error("invalid health check path {path:?} (it must look like /health)")]
    InvalidPath { path: String },
}

impl HealthError {
    /// The error with its cause (`cannot connect to ADDR: Too many open files`).
    pub fn detail(&self) -> String {
        match self {
            HealthError::Connect { source, .. } => format!("{self}: {source}"),
            HealthError::Http { source, .. } => format!("{self}: {source}"),
            other => other.to_string(),
        }
    }

    /// Whether the check could not run because windlass itself is out of descriptors,
    /// buffers, memory or local ports (EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL on
    /// its own socket): that says nothing about the app, so it never counts against it.
    pub fn is_local(&self) -> bool {
        match self {
            HealthError::Connect { source, .. } => {
                crate::limits::is_local_exhaustion(source)
                    || source.raw_os_error() == Some(libc::EADDRNOTAVAIL)
            }
            _ => false,
        }
    }
}

/// How often a check that cannot run for windlass's own lack of resources is logged.
const LOCAL_LOG_EVERY: Duration = Duration::from_secs(30);

/// Logs a check that could not run ([`HealthError::is_local`]), at most once per
/// [`LOCAL_LOG_EVERY`].
fn note_local(addr: SocketAddr, e: &HealthError, last: &mut Option<Instant>, held: &mut u64) {
    if last.is_some_and(|t| t.elapsed() < LOCAL_LOG_EVERY) {
        *held += 1;
        return;
    }
    *last = Some(Instant::now());
    let why = e.detail();
    tracing::warn!(
        %addr,
        held = std::mem::take(held),
        "health check could not run: windlass is out of resources ({why}); not counted against the app"
    );
}

/// One health check of the instance at `addr`, bounded by `timeout`: `GET path` (2xx and
/// 3xx pass) when a path is given; else `GET /`, where any HTTP answer passes. A bare TCP
/// connect is not enough for an app behind the HTTP proxy: a listening socket is not yet a
/// server that answers (Node, for one, builds its HTTP machinery on the first request, and
/// the first client would pay for it).
pub async fn probe(
    addr: SocketAddr,
    path: Option<&str>,
    timeout: Duration,
) -> Result<(), HealthError> {
    let uri = match path {
        None => None,
        Some(p) => Some(parse_path(p)?),
    };
    match tokio::time::timeout(timeout, check(addr, uri)).await {
        Ok(result) => result,
        Err(_) => Err(HealthError::Timeout {
            addr,
            after: timeout,
        }),
    }
}

fn parse_path(path: &str) -> Result<Uri, HealthError> {
    let invalid = || HealthError::InvalidPath {
        path: path.to_owned(),
    };
    if !path.starts_with('/') {
        return Err(invalid());
    }
    Uri::try_from(path).map_err(|_| invalid())
}

async fn check(addr: SocketAddr, uri: Option<Uri>) -> Result<(), HealthError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HealthError::Connect { addr, source })?;
    let any_answer = uri.is_none();
    let uri = uri.unwrap_or_else(|| Uri::from_static("/"));
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%addr, error = %e, "cannot set TCP_NODELAY on health check connection");
    }
    let http = |source| HealthError::Http { addr, source };
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    // The connection task ends when `tx` and the response are dropped below.
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!(%addr, error = %e, "health check connection ended with an error");
        }
    });
    let path = uri.to_string();
    let req = Request::get(uri)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "windlass-health")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .expect("a GET with a parsed URI and constant headers is valid");
    let response = tx.send_request(req).await.map_err(http)?;
    let status = response.status();
    if any_answer || status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(HealthError::Status { addr, path, status })
    }
}

/// How long after a start [`HealthCheck::wait_healthy`] polls at `initial_interval`.
const FAST_POLLING: Duration = Duration::from_secs(2);
/// Its polling period after that.
const SLOW_POLL: Duration = Duration::from_millis(50);

/// The failure that ended [`HealthCheck::wait_healthy`].
#[derive(Debug, thiserror::Error)]
#[error("not healthy within {}ms", after.as_millis())]
pub struct StartError {
    pub after: Duration,
    /// The last check's failure.
    #[source]
    pub last: HealthError,
}

/// How to check one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub addr: SocketAddr,
    /// `GET` this path; `None` checks that the port accepts connections.
    pub path: Option<String>,
    /// Deadline of each check (default 2 s).
    pub timeout: Duration,
    /// Polling period until the first success for the first 2 s (default 5 ms; then at
    /// least 50 ms).
    pub initial_interval: Duration,
    /// Period of checks once healthy (default 1 s).
    pub interval: Duration,
    /// Consecutive failures that make an instance unhealthy (default 3, at least 1).
    pub unhealthy_threshold: u32,
}

impl HealthCheck {
    /// A check of `addr` with the default periods.
    pub fn new(addr: SocketAddr, path: Option<String>) -> HealthCheck {
        HealthCheck {
            addr,
            path,
            timeout: Duration::from_secs(2),
            initial_interval: Duration::from_millis(5),
            interval: Duration::from_secs(1),
            unhealthy_threshold: 3,
        }
    }

    /// One check.
    pub async fn probe(&self) -> Result<(), HealthError> {
        probe(self.addr, self.path.as_deref(), self.timeout).await
    }

    /// Polls every `initial_interval` until a check passes (returns how long it took)
    /// or `start_timeout` has passed (returns the last failure). Checks that could not run
    /// for windlass's own lack of resources ([`HealthError::is_local`]) are logged
    /// (rate-limited); if the last one was such a check, the caller should not hold it
    /// against the app (the supervisor keeps the process and checks again).
    pub async fn wait_healthy(&self, start_timeout: Duration) -> Result<Duration, StartError> {
        let start = Instant::now();
        let deadline = crate::proxy::instant_after(start, start_timeout);
        let (mut logged, mut held) = (None, 0);
        loop {
            let attempt = Instant::now();
            let budget = self
                .timeout
                .min(deadline.saturating_duration_since(attempt));
            let result = probe(self.addr, self.path.as_deref(), budget).await;
            let last = match result {
                Ok(()) => return Ok(start.elapsed()),
                Err(e @ HealthError::InvalidPath { .. }) => {
                    return Err(StartError {
                        after: start.elapsed(),
                        last: e,
                    });
                }
                Err(e) => e,
            };
            // Fast polling while a quick start is likely; a slow starter (a Lisp image
            // compiling for a minute) is polled more gently.
            let period = if start.elapsed() < FAST_POLLING {
                self.initial_interval
            } else {
                self.initial_interval.max(SLOW_POLL)
            };
            let next = attempt + period;
            if last.is_local() {
                note_local(self.addr, &last, &mut logged, &mut held);
            }
            if next >= deadline {
                return Err(StartError {
                    after: start.elapsed(),
                    last,
                });
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// Checks every `interval`; returns the last failure once `unhealthy_threshold`
    /// checks in a row have failed. Runs forever while the instance stays healthy. A check
    /// that could not run for windlass's own lack of resources ([`HealthError::is_local`])
    /// is logged (rate-limited) and counts neither way.
    pub async fn watch(&self) -> HealthError {
        let mut failures = 0;
        let (mut logged, mut held) = (None, 0);
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the instance was just found healthy.
        ticks.tick().await;
        loop {
            ticks.tick().await;
            match self.probe().await {
                Ok(()) => failures = 0,
                Err(e) if e.is_local() => note_local(self.addr, &e, &mut logged, &mut held),
                Err(e) => {
                    failures += 1;
                    tracing::debug!(addr = %self.addr, failures, error = %e, "health check failed");
                    if failures >= self.unhealthy_threshold.max(1) {
                        return e;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server answering every connection with `status` (raw HTTP/1.1).
    async fn answering(status: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        addr
    }

    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn without_a_path_any_http_answer_passes_but_a_silent_socket_does_not() {
        for status in ["200 OK", "404 Not Found", "500 Internal Server Error"] {
            let addr = answering(status).await;
            probe(addr, None, T).await.expect(status);
        }
        // Listening, accepting, but never answering: not a server yet.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr");
        let e = probe(addr, None, Duration::from_millis(300))
            .await
            .expect_err("silent");
        assert!(matches!(e, HealthError::Timeout { .. }), "{e:?}");
    }

    #[test]
    fn only_windlass_running_out_of_resources_is_local() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let connect = |errno| HealthError::Connect {
            addr,
            source: io::Error::from_raw_os_error(errno),
        };
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(connect(errno).is_local(), "{errno}");
        }
        assert!(!connect(libc::ECONNREFUSED).is_local());
        let timeout = HealthError::Timeout {
            addr,
            after: Duration::from_secs(1),
        };
        assert!(!timeout.is_local());
    }

    #[tokio::test]
    async fn tcp_probe_fails_on_a_closed_port() {
        let addr = closed_port().await;
        let e = probe(addr, None, T).await.expect_err("closed");
        assert!(matches!(e, HealthError::Connect { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn http_probe_accepts_2xx_and_3xx() {
        for status in ["200 OK", "204 No Content", "302 Found"] {
            let addr = answering(status).await;
            probe(addr, Some("/health"), T).await.expect(status);
        }
    }

    #[tokio::test]
    async fn http_probe_reports_the_failing_status() {
        let addr = answering("503 Service Unavailable").await;
        let e = probe(addr, Some("/health"), T).await.expect_err("503");
        assert!(
            matches!(&e, HealthError::Status { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE),
            "{e:?}"
        );
        assert!(e.to_string().contains("503"), "{e}");
    }

    #[tokio::test]
    async fn http_probe_times_out_on_a_silent_server() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let e = probe(addr, Some("/health"), Duration::from_millis(50))
            .await
            .expect_err("no answer");
        assert!(matches!(e, HealthError::Timeout { .. }), "{e:?}");
        drop(listener);
    }

    #[tokio::test]
    async fn invalid_paths_are_rejected() {
        let addr = answering("200 OK").await;
        for p in ["health", "/a b"] {
            let e = probe(addr, Some(p), T).await.expect_err(p);
            assert!(matches!(e, HealthError::InvalidPath { .. }), "{e:?}");
        }
    }

    #[tokio::test]
    async fn wait_healthy_detects_a_late_listener() {
        let addr = closed_port().await;
        let check = HealthCheck::new(addr, Some("/health".into()));
        let waiter = tokio::spawn(async move { check.wait_healthy(Duration::from_secs(20)).await });
        // Let it fail at least once, then start listening on the port.
        tokio::task::yield_now().await;
        let listener = TcpListener::bind(addr).await.expect("rebind the port");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        waiter.await.expect("join").expect("healthy");
    }

    #[tokio::test]
    async fn wait_healthy_gives_up_with_the_last_error() {
        let addr = closed_port().await;
        let mut check = HealthCheck::new(addr, None);
        check.initial_interval = Duration::from_millis(5);
        let e = check
            .wait_healthy(Duration::from_millis(50))
            .await
            .expect_err("nothing listens");
        assert!(matches!(e.last, HealthError::Connect { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn watch_reports_unhealthy_after_the_threshold() {
        let addr = answering("500 Internal Server Error").await;
        let mut check = HealthCheck::new(addr, Some("/".into()));
        check.interval = Duration::from_millis(5);
        check.unhealthy_threshold = 2;
        let e = check.watch().await;
        assert!(matches!(e, HealthError::Status { .. }), "{e:?}");
    }
}
