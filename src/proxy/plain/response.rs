//! The plain response codec: parses an app's response head in place (status, framing,
//! whether the connection stays reusable), writes the head the client gets (HTTP/1.1,
//! hop-by-hop headers dropped, framing kept), and writes the policy's error answers in
//! bytes.

use std::net::SocketAddr;

use crate::proxy::error::ProxyError;
use crate::proxy::plain::MAX_HEADERS;
use crate::proxy::plain::framing::Framing;
use crate::proxy::policy::{self, ErrorAnswer};

/// The answer to a client that did not send a whole request head within
/// `header_timeout`; the connection is closed after it.
pub(crate) const HEAD_TIMEOUT_PAGE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: 62\r\n\r\n408 Request Timeout\n\nThe request head did not arrive in time.\n";

pub(super) struct ResponseHead {
    /// Length of the head in the upstream buffer.
    pub(super) len: usize,
    pub(super) status: u16,
    pub(super) framing: Framing,
    /// The app keeps the connection open after this response.
    pub(super) reusable: bool,
}

/// Parses a response head; `None` while incomplete.
pub(super) fn parse_response(
    buf: &[u8],
    addr: SocketAddr,
) -> Result<Option<ResponseHead>, ProxyError> {
    let bad = |what| ProxyError::BadResponse { addr, what };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(bad("too many headers")),
        Err(_) => return Err(bad("malformed response head")),
    };
    let status = resp.code.unwrap_or(0);
    let http11 = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    let mut reusable = http11;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| bad("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length headers"));
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // The last coding decides; a later header line continues the list.
            let last = value
                .rsplit(|&b| b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    reusable = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    reusable = true;
                }
            }
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }
    Ok(Some(ResponseHead {
        len,
        status,
        framing,
        reusable,
    }))
}

/// Writes the response head for the client: HTTP/1.1, hop-by-hop headers (and those
/// `Connection` names) dropped, framing headers kept (the body goes through as it came;
/// `Content-Length` goes when `Transfer-Encoding` is present, RFC 9112 §6.3), and
/// `Connection: close` when this is the connection's last response.
pub(super) fn write_response_head(out: &mut Vec<u8>, head: &[u8], close: bool) {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    // Parsed once already, so this cannot fail.
    let _ = resp.parse(head);
    let status = resp.code.unwrap_or(502);
    out.extend_from_slice(b"HTTP/1.1 ");
    let digit = |d: u16| b'0' + u8::try_from(d % 10).unwrap_or(0);
    out.extend_from_slice(&[digit(status / 100), digit(status / 10), digit(status)]);
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // Headers named by `Connection` (more than 8 is unheard of; the rest would pass).
    let mut named: [&[u8]; 8] = [b""; 8];
    let mut n_named = 0;
    let mut has_te = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if !token.is_empty() && n_named < named.len() {
                    named[n_named] = token;
                    n_named += 1;
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            has_te = true;
        }
    }
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // The body goes through as it came, so its framing header goes with it.
        let hop = (policy::is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"transfer-encoding"))
            || named[..n_named]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            || (has_te && name.eq_ignore_ascii_case(b"content-length"));
        if hop {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}
/// A proxy-made error response ([`policy::fail`]'s answer, as the hyper path writes it
/// too), framed for the request: no body after the head of an answer to `HEAD`
/// (`head_only`; its `content-length` is the page's, as a `GET` would get), so the
/// connection stays usable.
pub(super) fn error_page(out: &mut Vec<u8>, answer: &ErrorAnswer, head_only: bool) {
    let status = answer.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in answer.headers() {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", answer.page.len()).as_bytes());
    if !head_only {
        out.extend_from_slice(answer.page.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_timeout_page_is_framed_right() {
        let page = std::str::from_utf8(HEAD_TIMEOUT_PAGE).expect("utf8");
        let (head, body) = page.split_once("\r\n\r\n").expect("head");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{page}"
        );
        assert!(head.starts_with("HTTP/1.1 408 ") && head.contains("connection: close"));
    }
    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
    }

    fn head(raw: &str) -> ResponseHead {
        parse_response(raw.as_bytes(), addr())
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Length(12), true));
        let h = head(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        let h = head("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n");
        assert!(!h.reusable);
        let h = head("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n");
        assert!(h.reusable);
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n",
            "HTTQ/1.1 200 OK\r\n\r\n",
        ] {
            assert!(parse_response(bad.as_bytes(), addr()).is_err(), "{bad:?}");
        }
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", addr())
                .expect("valid so far")
                .is_none()
        );
    }

    #[test]
    fn the_client_head_drops_hop_by_hop_headers() {
        let raw = "HTTP/1.0 200 Fine\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n";
        let mut out = Vec::new();
        write_response_head(&mut out, raw.as_bytes(), false);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 200 Fine\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n"
        );
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n";
        let mut out = Vec::new();
        write_response_head(&mut out, raw.as_bytes(), true);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn an_error_page_has_the_policys_headers_and_no_body_for_head() {
        let answer = ErrorAnswer {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            request_id: "r-1".into(),
            page: "503 Service Unavailable\n".into(),
            close: false,
        };
        let mut out = Vec::new();
        error_page(&mut out, &answer, false);
        assert_eq!(
            String::from_utf8(out.clone()).expect("utf8"),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\nx-request-id: r-1\r\nretry-after: 5\r\ncontent-length: 24\r\n\r\n503 Service Unavailable\n"
        );
        error_page(&mut out, &answer, true);
        assert!(out.ends_with(b"content-length: 24\r\n\r\n"));
    }
}
