//! What can go wrong while proxying one request, and whose fault it is. Each
//! [`ProxyError`] knows its [`Fault`] (upstream app, downstream client, or the proxy
//! itself, as pingora's `ErrorSource`), which picks the status code the client sees
//! (503 no ready instance, 502 upstream failure, 504 upstream timeout) and the metric
//! label it is counted under. The error page is plain text that tells a human what to
//! check next.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use crate::proxy::metrics::UpstreamCause;

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
    #[error("internal proxy error: {what}")]
    Internal { what: &'static str },
}

impl ProxyError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::Downstream { .. } => Fault::Downstream,
            ProxyError::Internal { .. } => Fault::Internal,
            _ => Fault::Upstream,
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
            | ProxyError::UnexpectedSwitch { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Downstream { .. } => StatusCode::BAD_REQUEST,
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
            | ProxyError::UnexpectedSwitch { .. } => Some(UpstreamCause::Reset),
            ProxyError::Downstream { .. } | ProxyError::Internal { .. } => None,
        }
    }

    /// The plain-text page sent to the client.
    pub fn page(&self, app: &str) -> String {
        let status = self.status();
        let reason = status.canonical_reason().unwrap_or("Error");
        let what = match self {
            ProxyError::NoReadyBackend { held } => format!(
                "The app \"{app}\" has no ready instance: none became ready within {}s.\n\
                 It may be starting, restarting or crash-looping.",
                held.as_secs_f32()
            ),
            ProxyError::Downstream { .. } => {
                return format!(
                    "{} {reason}\n\nThe request body broke off.\n",
                    status.as_u16()
                );
            }
            ProxyError::Internal { .. } => {
                return format!("{} {reason}\n\nwindlass: {self}.\n", status.as_u16());
            }
            other => format!("The app \"{app}\" did not answer: {}.", chain(other)),
        };
        format!(
            "{} {reason}\n\nwindlass: {what}\n\nCheck:\n  windlass status\n  windlass logs {app}\n",
            status.as_u16()
        )
    }
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
        let page = ProxyError::NoReadyBackend {
            held: Duration::from_secs(30),
        }
        .page("web");
        assert!(page.starts_with("503 Service Unavailable"), "{page}");
        assert!(page.contains("no ready instance"), "{page}");
        assert!(page.contains("windlass status"), "{page}");
        assert!(page.contains("windlass logs web"), "{page}");
    }

    #[test]
    fn refused_page_names_the_instance_and_cause() {
        let page = ProxyError::ConnectRefused {
            addr: addr(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        }
        .page("web");
        assert!(page.starts_with("502 Bad Gateway"), "{page}");
        assert!(page.contains("127.0.0.1:4001 refused"), "{page}");
    }
}
