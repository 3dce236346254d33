//! One request policy, two codecs (pingora's shape: `proxy_h1`/`proxy_h2` under one
//! loop). The plain codec ([`crate::proxy::plain`]: raw sockets, bodiless requests) and
//! the full one ([`crate::proxy::forward`]: hyper, everything else) only move bytes;
//! every rule about a request is written here, once, and both call it:
//!
//! - which instance, and whether an exchange that broke is sent again: [`Attempts`] and
//!   the replay rule ([`Replay`], [`Broke`], `replay.rs`), and which request bodies are
//!   read whole and kept so that the request may be replayed ([`keeps_body`]);
//! - what a failed request answers and where it is told ([`fail`]: the error page, its
//!   headers, the app-log line, the error counted once by fault);
//! - the request's place in the metrics, from its head to its last byte ([`Counted`]);
//! - which headers are hop-by-hop ([`is_hop_by_hop`]).

mod replay;

use std::ops::Deref;

use http::StatusCode;
use tokio::time::Instant;

use crate::proxy::Shared;
use crate::proxy::error::{self, ErrorCause, Fault, ProxyError};

pub(crate) use crate::proxy::policy::replay::{Attempts, Broke, Replay, ReplayGuard};

/// The hop-by-hop headers (RFC 9110 §7.6.1, plus the old `Keep-Alive` and
/// `Proxy-Connection`), besides those a `Connection` header names: never forwarded as
/// they came. `Transfer-Encoding` is framing: the plain codec relays a response body as it
/// came and so keeps that header with it; hyper re-frames.
pub(crate) const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` (any case) is one of [`HOP_BY_HOP`].
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// The largest request body (by its `Content-Length`) of an idempotent request read whole
/// and kept before sending, so that the request can be replayed; larger ones stream.
pub(crate) const MAX_KEPT_BODY: u64 = 64 * 1024;

/// Whether a request's body is read whole and kept before sending, so the request may be
/// replayed: an idempotent method (the replay rule's), a body whose length is known
/// (`length`) and at most [`MAX_KEPT_BODY`], and no `Expect: 100-continue` (the client
/// waits for the app's word before sending it; reading it early would answer for the
/// app). A request without a body has nothing to keep.
pub(crate) fn keeps_body(method: &http::Method, expect: bool, length: Option<u64>) -> bool {
    Replay::of(method, false) == Replay::Allowed
        && !expect
        && length.is_some_and(|n| n > 0 && n <= MAX_KEPT_BODY)
}

/// Counts one request in the app's metrics: in flight from its head (`start`) until
/// this is dropped, then by its `status` (0: no response head was sent) and whether the
/// response was `delivered` whole, and, if it failed, once: under the first `error` set
/// (by [`fail`] or a codec whose response broke off), else as the client's going away. `S` is how the codec holds the app's state (a borrow
/// on the plain path, an `Arc` where the response body outlives the request's task).
pub(crate) struct Counted<S: Deref<Target = Shared>> {
    shared: S,
    start: Instant,
    pub(crate) status: u16,
    pub(crate) delivered: bool,
    error: Option<ErrorCause>,
}

impl<S: Deref<Target = Shared>> Counted<S> {
    pub(crate) fn start(shared: S, start: Instant) -> Counted<S> {
        shared.metrics.request_started();
        Counted {
            shared,
            start,
            status: 0,
            delivered: false,
            error: None,
        }
    }

    pub(crate) fn shared(&self) -> &S {
        &self.shared
    }

    /// The request failed with `cause` (the first cause given is the one counted).
    pub(crate) fn failed(&mut self, cause: ErrorCause) {
        self.error.get_or_insert(cause);
    }
}

impl<S: Deref<Target = Shared>> Drop for Counted<S> {
    fn drop(&mut self) {
        self.shared.metrics.request_finished(
            self.status,
            self.start.elapsed(),
            self.delivered,
            self.error,
        );
    }
}

/// What the policy needs to know of a request that failed, as either codec has it.
pub(crate) struct Failed<'a> {
    /// The client's `X-Request-Id`, if it sent one.
    pub(crate) request_id: Option<&'a [u8]>,
    pub(crate) method: &'a [u8],
    /// The request target (its query is never logged).
    pub(crate) target: &'a [u8],
    pub(crate) client_ip: &'a str,
    /// The client sent forwarding headers (it came through another proxy).
    pub(crate) forwarded: bool,
    /// The client asked to close after this response.
    pub(crate) client_close: bool,
}

/// The proxy-made answer to a failed request, for a codec to write out.
#[derive(Debug)]
pub(crate) struct ErrorAnswer {
    pub(crate) status: StatusCode,
    pub(crate) request_id: String,
    /// The plain-text page: public, or with the detail for a local client.
    pub(crate) page: String,
    /// The client connection closes after it.
    pub(crate) close: bool,
}

impl ErrorAnswer {
    /// The headers of the answer besides its framing (`content-length`), in order.
    pub(crate) fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            Some(("content-type", "text/plain; charset=utf-8")),
            Some(("cache-control", "no-store")),
            Some(("x-request-id", self.request_id.as_str())),
            (self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(("retry-after", "5")),
            self.close.then_some(("connection", "close")),
        ]
        .into_iter()
        .flatten()
    }
}

/// A request failed with `e`: logs it (the app's log gets its detail, rationed), marks it
/// failed by its cause in `counted` (so it is counted once, when it ends), and returns the
/// answer for the client.
pub(crate) fn fail<S: Deref<Target = Shared>>(
    counted: &mut Counted<S>,
    e: &ProxyError,
    req: &Failed<'_>,
) -> ErrorAnswer {
    counted.failed(e.cause());
    let shared: &Shared = counted.shared();
    let request_id = error::request_id(req.request_id);
    note_error(
        shared,
        e,
        &request_id,
        &request_line(req.method, req.target),
    );
    let detail = error::shows_detail(req.client_ip, req.forwarded);
    ErrorAnswer {
        status: e.status(),
        page: e.page(&shared.app, &request_id, detail),
        request_id,
        // A client whose body timed out is not read further.
        close: req.client_close || matches!(e, ProxyError::BodyTimeout { .. }),
    }
}

/// Logs a failed request; one the app or the proxy caused also goes to the app's log
/// with its request id and the detail (`request`: the method and path, without the
/// query, which may hold secrets).
fn note_error(shared: &Shared, e: &ProxyError, request_id: &str, request: &str) {
    match e.fault() {
        Fault::Upstream => {
            tracing::warn!(app = %shared.app, error = %e, source = ?std::error::Error::source(&e), request_id, "proxy error")
        }
        Fault::Downstream => {
            tracing::debug!(app = %shared.app, error = %e, request_id, "client error");
            return;
        }
        Fault::Internal => {
            tracing::error!(app = %shared.app, error = %e, request_id, "internal proxy error");
        }
    }
    let Some(notes) = shared.notes.get() else {
        return;
    };
    let Some(skipped) = shared.note_budget.take() else {
        return;
    };
    let status = e.status();
    let mut line = format!(
        "proxy: {} {} for {request} (request id {request_id}): {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        e.detail(&shared.app)
    );
    if skipped > 0 {
        line.push_str(&format!(
            " ({skipped} failed request(s) before this one not logged: too many at once)"
        ));
    }
    notes(&line);
}

/// `METHOD /path` of a request for the log: the query left out, at most 200 bytes.
pub(crate) fn request_line(method: &[u8], target: &[u8]) -> String {
    let path = target.split(|&b| b == b'?').next().unwrap_or(b"");
    let path = &path[..path.len().min(200)];
    format!(
        "{} {}",
        String::from_utf8_lossy(method),
        String::from_utf8_lossy(path)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn hop_by_hop_names_match_in_any_case() {
        for name in [
            "Connection",
            "KEEP-ALIVE",
            "te",
            "Transfer-Encoding",
            "upgrade",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        for name in ["content-length", "x-te", "connections", ""] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn only_small_bodies_of_idempotent_requests_without_expect_are_kept() {
        assert!(keeps_body(&Method::PUT, false, Some(5)));
        assert!(keeps_body(&Method::GET, false, Some(MAX_KEPT_BODY)));
        assert!(!keeps_body(&Method::PUT, false, Some(MAX_KEPT_BODY + 1)));
        assert!(!keeps_body(&Method::PUT, false, None), "unknown length");
        assert!(!keeps_body(&Method::PUT, false, Some(0)), "nothing to keep");
        assert!(!keeps_body(&Method::PUT, true, Some(5)), "Expect");
        assert!(!keeps_body(&Method::POST, false, Some(5)));
        assert!(!keeps_body(&Method::PATCH, false, Some(5)));
    }

    #[test]
    fn an_error_answer_carries_its_headers_in_order() {
        let a = ErrorAnswer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            request_id: "r-1".into(),
            page: String::new(),
            close: true,
        };
        let names: Vec<_> = a.headers().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "content-type",
                "cache-control",
                "x-request-id",
                "retry-after",
                "connection"
            ]
        );
        let a = ErrorAnswer {
            status: StatusCode::BAD_GATEWAY,
            close: false,
            ..a
        };
        assert_eq!(a.headers().count(), 3);
    }

    #[test]
    fn the_logged_request_line_leaves_out_the_query() {
        assert_eq!(request_line(b"GET", b"/a/b?token=x"), "GET /a/b");
        assert_eq!(request_line(b"GET", &[b'a'; 300]).len(), 204);
    }
}
