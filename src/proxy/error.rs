//! What can go wrong while proxying one request, and whose fault it is. Each
//! [`ProxyError`] knows its [`Fault`] (upstream app, downstream client, or the proxy
//! itself, as pingora's `ErrorSource`), which picks the status code the client sees
//! (503 no ready instance, 502 upstream failure, 504 upstream timeout) and the metric
//! label it is counted under.
//!
//! The error page is plain text: the status, one line saying what failed, and a request
//! id (also sent as `X-Request-Id`: the client's own when it sent a sane one, else a fresh
//! one). What exactly failed (the instance's address, the OS error, what to run next)
//! goes to the app's log with the same id, and into the page only for a client on the
//! same machine that came through no other proxy ([`Page::detail`]): the public page
//! tells a stranger nothing about the inside.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::proxy::counters::UpstreamCause;

/// Who caused a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The app: not ready, refused, timed out, or broke the exchange.
    Upstream,
    /// The client: e.g. its request body broke off.
    Downstream,
    /// The proxy itself.
    Internal,
}

impl Fault {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Upstream => "upstream",
            Fault::Downstream => "downstream",
            Fault::Internal => "internal",
        }
    }
}

/// What went wrong with one request, the `cause` label of
/// `windlass_proxy_errors_total{app,fault,cause}`; each belongs to one [`Fault`]. A request
/// is counted under at most one cause, once ([`crate::proxy::policy::Counted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCause {
    /// No instance became ready within `proxy.hold` (503).
    NoReadyInstance,
    /// The instance refused the connection (502).
    ConnectRefused,
    /// Connecting took longer than `proxy.connect_timeout` (504).
    ConnectTimeout,
    /// Connecting failed otherwise (502).
    Connect,
    /// No response head within `proxy.response_timeout`, or a longer pause in the body.
    ResponseTimeout,
    /// The connection broke: before a response (502, not sent again), or in the middle of
    /// its body (the client's connection is closed).
    Reset,
    /// A response that could not be parsed, or an unasked-for protocol switch (502).
    BadResponse,
    /// The instance closed the connection after it may have read the request, and the
    /// replay rule did not allow sending it again (502).
    NotReplayed,
    /// The client did not send its request head within `proxy.header_timeout` (408).
    HeadTimeout,
    /// The client paused its request body longer than `proxy.body_timeout` (408).
    BodyTimeout,
    /// The client's request body broke off.
    BodyBroken,
    /// The client went away (or stopped reading) before the response was delivered.
    ClientGone,
    /// The proxy itself failed (500).
    Internal,
}

impl ErrorCause {
    /// Every cause, in the order of the counters.
    pub const ALL: [ErrorCause; 13] = [
        ErrorCause::NoReadyInstance,
        ErrorCause::ConnectRefused,
        ErrorCause::ConnectTimeout,
        ErrorCause::Connect,
        ErrorCause::ResponseTimeout,
        ErrorCause::Reset,
        ErrorCause::BadResponse,
        ErrorCause::NotReplayed,
        ErrorCause::HeadTimeout,
        ErrorCause::BodyTimeout,
        ErrorCause::BodyBroken,
        ErrorCause::ClientGone,
        ErrorCause::Internal,
    ];

    /// Who is at fault.
    pub fn fault(self) -> Fault {
        match self {
            ErrorCause::HeadTimeout
            | ErrorCause::BodyTimeout
            | ErrorCause::BodyBroken
            | ErrorCause::ClientGone => Fault::Downstream,
            ErrorCause::Internal => Fault::Internal,
            _ => Fault::Upstream,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ErrorCause::NoReadyInstance => "no_ready_instance",
            ErrorCause::ConnectRefused => "connect_refused",
            ErrorCause::ConnectTimeout => "connect_timeout",
            ErrorCause::Connect => "connect",
            ErrorCause::ResponseTimeout => "response_timeout",
            ErrorCause::Reset => "reset",
            ErrorCause::BadResponse => "bad_response",
            ErrorCause::NotReplayed => "not_replayed",
            ErrorCause::HeadTimeout => "head_timeout",
            ErrorCause::BodyTimeout => "body_timeout",
            ErrorCause::BodyBroken => "body_broken",
            ErrorCause::ClientGone => "client_gone",
            ErrorCause::Internal => "internal",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no ready instance within the hold time ({}ms)", held.as_millis())]
    NoReadyBackend { held: Duration },
    #[error("instance {addr} refused the connection")]
    ConnectRefused {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("connecting to instance {addr} timed out after {}ms", after.as_millis())]
    ConnectTimeout { addr: SocketAddr, after: Duration },
    #[error("connecting to instance {addr} failed")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("instance {addr} sent no response within {}ms", after.as_millis())]
    ResponseTimeout { addr: SocketAddr, after: Duration },
    #[error("the exchange with instance {addr} failed")]
    Upstream {
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("the exchange with instance {addr} failed")]
    UpstreamIo {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("instance {addr} sent an invalid response: {what}")]
    BadResponse {
        addr: SocketAddr,
        what: &'static str,
    },
    #[error("instance {addr} switched protocols without being asked to")]
    UnexpectedSwitch { addr: SocketAddr },
    #[error("the client's request body broke off")]
    Downstream {
        #[source]
        source: hyper::Error,
    },
    #[error("the client sent nothing of its request body for {}ms", after.as_millis())]
    BodyTimeout { after: Duration },
    #[error(
        "instance {addr} closed the connection after it may have read the request, which was not sent again ({why})"
    )]
    NotReplayed {
        addr: SocketAddr,
        why: NotReplayed,
        #[source]
        source: Box<ProxyError>,
    },
    #[error("internal proxy error: {what}")]
    Internal { what: &'static str },
}

/// Why a request an instance may have read before closing its connection was not sent to
/// another instance (see [`crate::proxy::policy::Attempts::broke`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReplayed {
    /// Not idempotent (RFC 9110 §9.2.2): `POST` or `PATCH` may not be sent twice.
    Method(http::Method),
    /// Its body went to the app as it arrived and is not kept (over 64 KiB, of unknown
    /// length, or sent after `Expect: 100-continue`).
    Body,
    /// It was already sent again once, after the instance `first` closed on it, and the
    /// second instance closed on it too: a likely query of death.
    Poison { first: SocketAddr },
    /// Retried requests have been stopping instances: replays are paused for the app.
    Paused,
}

impl std::fmt::Display for NotReplayed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReplayed::Method(m) => write!(f, "a {m} may not be sent twice"),
            NotReplayed::Body => f.write_str(
                "its body was streamed to the app and is gone; only a body of at most 64 KiB \
                 with a Content-Length and no Expect: 100-continue is kept for a retry",
            ),
            NotReplayed::Poison { first } => write!(
                f,
                "it had already been sent again after instance {first} closed the connection \
                 on it: a request that stops every instance it reaches (a query of death?)"
            ),
            NotReplayed::Paused => f.write_str(
                "retried requests have been stopping instances, so retries are paused for a while",
            ),
        }
    }
}

impl ProxyError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        self.cause().fault()
    }

    /// What went wrong, as counted.
    pub fn cause(&self) -> ErrorCause {
        match self {
            ProxyError::NoReadyBackend { .. } => ErrorCause::NoReadyInstance,
            ProxyError::ConnectRefused { .. } => ErrorCause::ConnectRefused,
            ProxyError::ConnectTimeout { .. } => ErrorCause::ConnectTimeout,
            ProxyError::Connect { .. } => ErrorCause::Connect,
            ProxyError::ResponseTimeout { .. } => ErrorCause::ResponseTimeout,
            ProxyError::Upstream { source, .. } if source.is_parse() => ErrorCause::BadResponse,
            ProxyError::Upstream { .. } | ProxyError::UpstreamIo { .. } => ErrorCause::Reset,
            ProxyError::BadResponse { .. } | ProxyError::UnexpectedSwitch { .. } => {
                ErrorCause::BadResponse
            }
            ProxyError::NotReplayed { .. } => ErrorCause::NotReplayed,
            ProxyError::Downstream { .. } => ErrorCause::BodyBroken,
            ProxyError::BodyTimeout { .. } => ErrorCause::BodyTimeout,
            ProxyError::Internal { .. } => ErrorCause::Internal,
        }
    }

    /// The status code the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoReadyBackend { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::ConnectRefused { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamIo { .. }
            | ProxyError::BadResponse { .. }
            | ProxyError::UnexpectedSwitch { .. }
            | ProxyError::NotReplayed { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Downstream { .. } => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The upstream error label this is counted under, if the app is at fault.
    pub fn upstream_cause(&self) -> Option<UpstreamCause> {
        match self {
            ProxyError::NoReadyBackend { .. } => Some(UpstreamCause::NoReadyBackend),
            ProxyError::ConnectRefused { .. } => Some(UpstreamCause::ConnectRefused),
            ProxyError::ConnectTimeout { .. } => Some(UpstreamCause::ConnectTimeout),
            ProxyError::ResponseTimeout { .. } => Some(UpstreamCause::ResponseTimeout),
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamIo { .. }
            | ProxyError::BadResponse { .. }
            | ProxyError::UnexpectedSwitch { .. }
            | ProxyError::NotReplayed { .. } => Some(UpstreamCause::Reset),
            ProxyError::Downstream { .. }
            | ProxyError::BodyTimeout { .. }
            | ProxyError::Internal { .. } => None,
        }
    }

    /// What failed, in one line a stranger may read (no address, no OS error, no name).
    pub fn public_line(&self) -> &'static str {
        match self {
            ProxyError::NotReplayed { why, .. } => match why {
                NotReplayed::Method(m) if *m == http::Method::POST => {
                    "The app's instance stopped while handling this request; it was not retried: a POST may not be sent twice."
                }
                NotReplayed::Method(m) if *m == http::Method::PATCH => {
                    "The app's instance stopped while handling this request; it was not retried: a PATCH may not be sent twice."
                }
                NotReplayed::Method(_) => {
                    "The app's instance stopped while handling this request; it was not retried: this method may not be sent twice."
                }
                NotReplayed::Body => {
                    "The app's instance stopped while handling this request; it was not retried: its body (over 64 KiB, or of unknown length) is gone."
                }
                NotReplayed::Poison { .. } => {
                    "The app's instance stopped while handling this request, and it was not retried again: its retry stopped another instance."
                }
                NotReplayed::Paused => {
                    "The app's instance stopped while handling this request; it was not retried: retried requests have been stopping instances."
                }
            },
            ProxyError::NoReadyBackend { .. } => {
                "The app is not ready: no instance could take the request in time."
            }
            ProxyError::ConnectTimeout { .. } | ProxyError::ResponseTimeout { .. } => {
                "The app did not answer in time."
            }
            ProxyError::BadResponse { .. } | ProxyError::UnexpectedSwitch { .. } => {
                "The app sent an invalid response."
            }
            // hyper's word for a response head it could not parse.
            ProxyError::Upstream { source, .. } if source.is_parse() => {
                "The app sent an invalid response."
            }
            ProxyError::ConnectRefused { .. }
            | ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamIo { .. } => "The app did not answer.",
            ProxyError::Downstream { .. } => "The request body broke off.",
            ProxyError::BodyTimeout { .. } => "The request body stopped arriving.",
            ProxyError::Internal { .. } => "The proxy failed.",
        }
    }

    /// What exactly failed and what to check, for the app's log (and a local client).
    pub fn detail(&self, app: &str) -> String {
        match self {
            ProxyError::NoReadyBackend { held } => format!(
                "the app \"{app}\" has no ready instance: none became ready within {}s; \
                 it may be starting, restarting or crash-looping; check `windlass status` \
                 and `windlass logs {app}`",
                held.as_secs_f32()
            ),
            ProxyError::Downstream { .. } | ProxyError::BodyTimeout { .. } => {
                format!("{}: the client's fault, not the app's", chain(self))
            }
            ProxyError::Internal { .. } => format!("{self}; please report it"),
            other => format!(
                "the app \"{app}\" did not answer: {}; check `windlass status` and \
                 `windlass logs {app}`",
                chain(other)
            ),
        }
    }

    /// The page for this error: public, or with the detail for a local client.
    pub fn page(&self, app: &str, request_id: &str, detail: bool) -> String {
        let status = self.status();
        let mut page = format!(
            "{} {}\n\n{}\nRequest id: {request_id}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
            self.public_line(),
        );
        if detail {
            page.push_str("\nwindlass: ");
            page.push_str(&self.detail(app));
            page.push_str(".\n");
        }
        page
    }
}

/// The app-log lines about failed requests an app gets: a burst of [`NOTE_BURST`], then
/// [`NOTE_RATE`] a second, so a flood of failing requests cannot rotate the app's own
/// lines out of its log; the lines left out are counted and the count is told with the
/// next line written.
pub(crate) struct NoteBudget(std::sync::Mutex<Budget>);

pub(crate) const NOTE_BURST: f64 = 50.0;
pub(crate) const NOTE_RATE: f64 = 20.0;

pub(crate) struct Budget {
    tokens: f64,
    at: std::time::Instant,
    skipped: u64,
}

impl NoteBudget {
    pub(crate) fn new() -> NoteBudget {
        NoteBudget(std::sync::Mutex::new(Budget {
            tokens: NOTE_BURST,
            at: std::time::Instant::now(),
            skipped: 0,
        }))
    }

    /// `Some(lines left out before this one)` if a line may be written now.
    pub(crate) fn take(&self) -> Option<u64> {
        self.take_at(std::time::Instant::now())
    }

    fn take_at(&self, now: std::time::Instant) -> Option<u64> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * NOTE_RATE;
        b.tokens = (b.tokens + refill).min(NOTE_BURST);
        b.at = b.at.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.skipped))
        } else {
            b.skipped += 1;
            None
        }
    }
}

/// Longest `X-Request-Id` from a client that is reused.
const MAX_REQUEST_ID: usize = 128;

/// The request id of a failed request: the client's `X-Request-Id` when it is sane (1 to
/// 128 of `A-Z a-z 0-9 - _ . : / + = @`), else a fresh one (16 hex digits).
pub(crate) fn request_id(client: Option<&[u8]>) -> String {
    if let Some(id) = client.map(<[u8]>::trim_ascii) {
        let sane = |b: &u8| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b);
        if !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.iter().all(sane) {
            return String::from_utf8_lossy(id).into_owned();
        }
    }
    fresh_id()
}

/// 64 bits that differ per call and per process: a counter mixed with a per-process
/// random key (splitmix64), so ids are not guessable from one another.
fn fresh_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static KEY: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let key = *KEY.get_or_init(|| RandomState::new().hash_one(std::process::id()));
    let mut z = key.wrapping_add(
        NEXT.fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    format!("{:016x}", z ^ (z >> 31))
}

/// Whether a client at `ip` that came through no other proxy (`forwarded`: it sent no
/// forwarding header) may see the detail of an error: only one on this machine.
pub(crate) fn shows_detail(ip: &str, forwarded: bool) -> bool {
    !forwarded
        && ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The error and its sources, joined with ": ".
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 4001))
    }

    #[test]
    fn status_and_labels_follow_the_fault() {
        let e = ProxyError::NoReadyBackend {
            held: Duration::from_secs(30),
        };
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.fault(), Fault::Upstream);
        assert_eq!(e.upstream_cause(), Some(UpstreamCause::NoReadyBackend));

        let e = ProxyError::ConnectRefused {
            addr: addr(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.upstream_cause(), Some(UpstreamCause::ConnectRefused));

        let e = ProxyError::ResponseTimeout {
            addr: addr(),
            after: Duration::from_secs(1),
        };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.upstream_cause(), Some(UpstreamCause::ResponseTimeout));

        let e = ProxyError::Internal { what: "x" };
        assert_eq!(e.fault(), Fault::Internal);
        assert_eq!(e.upstream_cause(), None);
    }

    #[test]
    fn no_ready_page_says_what_to_check() {
        let e = ProxyError::NoReadyBackend {
            held: Duration::from_secs(30),
        };
        let page = e.page("web", "abc", true);
        assert!(page.starts_with("503 Service Unavailable"), "{page}");
        assert!(page.contains("Request id: abc\n"), "{page}");
        assert!(page.contains("no ready instance"), "{page}");
        assert!(page.contains("windlass status"), "{page}");
        assert!(page.contains("windlass logs web"), "{page}");
        let public = e.page("web", "abc", false);
        assert!(
            !public.contains("web") && !public.contains("windlass"),
            "{public}"
        );
    }

    #[test]
    fn refused_page_names_the_instance_and_cause_only_in_the_detail() {
        let e = ProxyError::ConnectRefused {
            addr: addr(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        };
        let page = e.page("web", "abc", true);
        assert!(page.starts_with("502 Bad Gateway"), "{page}");
        assert!(page.contains("127.0.0.1:4001 refused"), "{page}");
        assert!(page.contains("connection refused"), "{page}");
        let public = e.page("web", "abc", false);
        assert_eq!(
            public,
            "502 Bad Gateway\n\nThe app did not answer.\nRequest id: abc\n"
        );
    }

    #[test]
    fn request_ids_are_the_clients_when_sane_else_fresh() {
        assert_eq!(request_id(Some(b" req-1.a:b ")), "req-1.a:b");
        let fresh = [
            request_id(None),
            request_id(Some(b"")),
            request_id(Some(b"a b")),
            request_id(Some(b"<script>")),
            request_id(Some("x".repeat(129).as_bytes())),
            request_id(Some(b"\xff")),
        ];
        for (i, id) in fresh.iter().enumerate() {
            assert_eq!(id.len(), 16, "{id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(!fresh[..i].contains(id), "ids repeat: {fresh:?}");
        }
    }

    #[test]
    fn app_log_lines_are_rationed_and_the_rest_counted() {
        let budget = NoteBudget::new();
        let t0 = std::time::Instant::now();
        for _ in 0..50 {
            assert_eq!(budget.take_at(t0), Some(0));
        }
        assert_eq!(budget.take_at(t0), None);
        assert_eq!(budget.take_at(t0), None);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(budget.take_at(t1), Some(2), "the two left out are told");
        assert_eq!(budget.take_at(t1), Some(0));
        assert_eq!(budget.take_at(t1), None);
    }

    #[test]
    fn only_a_direct_local_client_sees_the_detail() {
        assert!(shows_detail("127.0.0.1", false));
        assert!(shows_detail("::1", false));
        assert!(shows_detail("::ffff:127.0.0.1", false));
        assert!(!shows_detail("127.0.0.1", true), "came through a proxy");
        assert!(!shows_detail("192.0.2.7", false));
        assert!(!shows_detail("unknown", false));
    }

    #[test]
    fn a_poison_request_page_names_the_cause_and_only_the_log_names_the_instances() {
        let first = SocketAddr::from(([127, 0, 0, 1], 4002));
        let e = ProxyError::NotReplayed {
            addr: addr(),
            why: NotReplayed::Poison { first },
            source: Box::new(ProxyError::UpstreamIo {
                addr: addr(),
                source: io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
            }),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.upstream_cause(), Some(UpstreamCause::Reset));
        let page = e.page("web", "id-1", false);
        assert!(
            page.contains("its retry stopped another instance"),
            "{page}"
        );
        assert!(!page.contains("127.0.0.1"), "{page}");
        let detail = e.detail("web");
        assert!(detail.contains("127.0.0.1:4001") && detail.contains("127.0.0.1:4002"));
        assert!(detail.contains("query of death"), "{detail}");
    }
}
