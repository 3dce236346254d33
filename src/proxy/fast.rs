//! The plain-request path: most requests a web app gets are a `GET` (or `HEAD`,
//! `OPTIONS`, `DELETE`) with no body, on a keep-alive HTTP/1.1 connection, and proxying
//! them is a byte job: parse the head, rewrite a few headers, write it to a pooled
//! connection of a ready instance, parse the response head, copy the body through. This
//! module does exactly that on raw sockets with reused buffers (no `HeaderMap`, no
//! per-request allocation, no per-request timer: the deadlines are two timers per
//! connection, moved forward lazily), the way nginx does it. It is what keeps windlass's
//! proxy as cheap as nginx per request (bench/README.md, "Proxy").
//!
//! Everything else (request bodies, upgrades and WebSockets, `Expect`, HTTP/1.0, absolute
//! URIs, a `Connection` header naming other headers, malformed or oversized heads) is
//! handed, at the request boundary and with the bytes already read, to the hyper path
//! ([`crate::proxy::forward`]) for the rest of the connection; that path is the reference
//! and this one behaves the same: hop-by-hop headers stripped, `X-Forwarded-*` set,
//! requests held while no instance is ready, refused connects retried, a request whose
//! connection broke before a response sent again by the shared replay rule
//! ([`Attempts::broke`]; all the methods taken here are idempotent, and the rewritten
//! head is kept in its own buffer until the response head arrives), the response timeout, the in-flight count that drains wait on, and
//! the same metrics. Responses keep their framing (`Content-Length`, chunked, or the end
//! of the connection, which then also ends the client's). Otherwise the upstream connection
//! lives independently of the client's: a client's `Connection: close` is not sent upstream
//! and closes only the client side, and the app's closes only the upstream side.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::proxy::Shared;
use crate::proxy::backend::InFlight;
use crate::proxy::counters::UpstreamCause;
use crate::proxy::deadline::Deadline;
use crate::proxy::error::{ProxyError, request_id, shows_detail};
use crate::proxy::forward::{note_error, request_line};
use crate::proxy::headers::Forwarding;
use crate::proxy::hold::{Attempts, Broke, Replay};
use crate::proxy::pool;

/// Largest request or response head taken here; a larger request goes to the hyper path
/// (which answers 431), a larger response is a 502.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a head taken here (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Upstream buffer kept between requests; a larger one (after a streamed body) is freed,
/// so an idle keep-alive connection holds little memory.
const KEEP_UPSTREAM_BUF: usize = 16 * 1024;
/// Read size while copying a body.
const BODY_CHUNK: usize = 64 * 1024;

/// How a connection left this path.
pub(crate) enum Served {
    /// It is finished (closed by either side, timed out, or the proxy is stopping).
    Closed,
    /// Its next request needs the hyper path; the bytes read so far are in the buffer,
    /// and the head they begin started at `head_since` (its `header_timeout` runs on
    /// from there, not again).
    Fallback { head_since: Option<Instant> },
}

/// The answer to a client that did not send a whole request head within
/// `header_timeout`; the connection is closed after it.
pub(crate) const HEAD_TIMEOUT_PAGE: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\nconnection: close\r\ncontent-length: 62\r\n\r\n408 Request Timeout\n\nThe request head did not arrive in time.\n";

/// What the request needs from here on, once its head is parsed.
struct RequestHead {
    /// Length of the head in the client buffer.
    len: usize,
    head_only: bool,
    /// The client asked to close after this response.
    close: bool,
    /// The client sent forwarding headers (it is, or claims to be, a proxy).
    forwarded: bool,
    /// Where the client's `X-Request-Id` value is in the head sent upstream.
    request_id: Option<std::ops::Range<usize>>,
}

enum Parsed {
    Complete(RequestHead),
    Partial,
    Unsupported,
}

/// Serves requests on `client` until it closes or a request needs the hyper path.
pub(crate) async fn serve(
    shared: &Arc<Shared>,
    client_ip: &str,
    trusted: bool,
    client: &mut TcpStream,
    buf: &mut BytesMut,
    stop: &mut watch::Receiver<bool>,
) -> Served {
    let cfg = &shared.cfg;
    let mut idle = Deadline::new(cfg.idle_timeout);
    let mut head_deadline = Deadline::new(cfg.header_timeout);
    let mut respond = Deadline::new(cfg.response_timeout);
    // Allocated on first use, so a connection that sends nothing costs no buffers.
    let mut request = Vec::new();
    let mut response = Vec::new();
    let mut ubuf = BytesMut::new();
    loop {
        // Wait for a request: up to `idle_timeout` for its first byte (then the
        // connection is closed silently), then up to `header_timeout` from that byte for
        // the whole head (trickling bytes does not extend it; then a 408). Bytes already
        // read (pipelined) start the head now.
        let mut head_since = None;
        if buf.is_empty() {
            idle.arm();
        } else {
            head_since = Some(Instant::now());
            head_deadline.arm();
        }
        let head = loop {
            if !buf.is_empty() {
                match parse_request(buf, client_ip, trusted, &mut request) {
                    Parsed::Complete(head) => break head,
                    Parsed::Unsupported => return Served::Fallback { head_since },
                    Parsed::Partial if buf.len() >= MAX_HEAD => {
                        return Served::Fallback { head_since };
                    }
                    Parsed::Partial => {}
                }
            } else if *stop.borrow() {
                return Served::Closed;
            }
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let read = tokio::select! {
                biased;
                r = client.read_buf(buf) => r,
                () = idle.sleep.as_mut(), if head_since.is_none() => return Served::Closed,
                () = head_deadline.sleep.as_mut(), if head_since.is_some() => {
                    shared.metrics.downstream_error();
                    // Best effort and without waiting: a client this slow may not read.
                    let _ = client.try_write(HEAD_TIMEOUT_PAGE);
                    let _ = client.shutdown().await;
                    return Served::Closed;
                }
                r = stop.changed(), if buf.is_empty() => match r {
                    Ok(()) => continue,
                    Err(_) => return Served::Closed,
                },
            };
            match read {
                Ok(0) | Err(_) => return Served::Closed,
                Ok(_) => {
                    if head_since.is_none() {
                        head_since = Some(Instant::now());
                        head_deadline.arm();
                    }
                }
            }
        };
        buf.advance(head.len);

        let start = Instant::now();
        let mut finish = Finish::start(shared, start);
        let outcome = exchange(shared, &request, &mut ubuf, &mut respond, start).await;
        let (guard, mut upstream, resp) = match outcome {
            Ok(x) => x,
            Err(e) => {
                let id = request_id(head.request_id.clone().and_then(|r| request.get(r)));
                note_error(shared, &e, &id, &logged_request(&request));
                let detail = shows_detail(client_ip, head.forwarded);
                finish.status = e.status().as_u16();
                error_page(&mut response, shared, &e, &id, detail, &head);
                if send_all(client, &response, &mut idle).await.is_err() {
                    return Served::Closed;
                }
                finish.delivered = true;
                drop(finish);
                if head.close {
                    let _ = client.shutdown().await;
                    return Served::Closed;
                }
                continue;
            }
        };
        finish.status = resp.status;

        // The response head, and as much of the body as already came with it.
        let framing = if head.head_only {
            Framing::Empty
        } else {
            resp.framing
        };
        // The last response on this connection when the client or the app says so, or
        // when the proxy is stopping.
        let close = head.close || matches!(framing, Framing::UntilClose) || *stop.borrow();
        response.clear();
        write_response_head(&mut response, &ubuf[..resp.len], close);
        ubuf.advance(resp.len);
        let mut body = BodyState::new(framing);
        let mut reusable = resp.reusable;
        let taken = body.feed(&ubuf);
        response.extend_from_slice(&ubuf[..taken]);
        ubuf.advance(taken);
        if !ubuf.is_empty() && body.done() {
            reusable = false; // bytes beyond the response: do not trust the connection
        }
        if send_all(client, &response, &mut idle).await.is_err() {
            return Served::Closed;
        }
        // The rest of the body: the app may pause at most `response_timeout` between two
        // reads (nginx's proxy_read_timeout), the client `idle_timeout` per write.
        while !body.done() {
            ubuf.clear();
            ubuf.reserve(BODY_CHUNK);
            respond.arm();
            let read = tokio::select! {
                biased;
                r = upstream.read_buf(&mut ubuf) => r,
                () = respond.sleep.as_mut() => {
                    shared.metrics.upstream_error(UpstreamCause::ResponseTimeout);
                    tracing::warn!(app = %shared.app, backend = %guard.backend().id, "the app stopped sending a response body for {}ms; closing the client connection", respond.within.as_millis());
                    return Served::Closed;
                }
            };
            match read {
                Ok(0) if body.until_close() => {
                    body.close();
                    reusable = false;
                }
                Ok(0) | Err(_) => {
                    // Cut short by the app: the client can only learn it from the close.
                    shared.metrics.upstream_error(UpstreamCause::Reset);
                    return Served::Closed;
                }
                Ok(_) => {
                    let taken = body.feed(&ubuf);
                    if taken < ubuf.len() {
                        reusable = false;
                    }
                    if send_all(client, &ubuf[..taken], &mut idle).await.is_err() {
                        return Served::Closed;
                    }
                }
            }
        }
        if body.failed() {
            shared.metrics.upstream_error(UpstreamCause::Reset);
            return Served::Closed;
        }
        ubuf.clear();
        if ubuf.capacity() > KEEP_UPSTREAM_BUF {
            ubuf = BytesMut::new();
        }
        finish.delivered = true;
        // The upstream connection outlives the client's: a client that asked to close
        // (its `Connection` header never reaches the app) ends only its own connection.
        if reusable {
            guard.backend().raw.put(upstream);
        }
        drop(guard);
        drop(finish);
        if close {
            let _ = client.shutdown().await;
            return Served::Closed;
        }
    }
}

/// Writes all of `bytes` to the client, which must take each part within the deadline
/// (a client that stops reading does not hold the connection, the app's connection and
/// the instance's in-flight count for ever).
async fn send_all(client: &mut TcpStream, bytes: &[u8], deadline: &mut Deadline) -> io::Result<()> {
    deadline.arm();
    tokio::select! {
        biased;
        r = client.write_all(bytes) => r,
        () = deadline.sleep.as_mut() => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Counts the request in the app's metrics, from its head to its last byte.
struct Finish<'a> {
    shared: &'a Shared,
    start: Instant,
    status: u16,
    delivered: bool,
}

impl<'a> Finish<'a> {
    fn start(shared: &'a Shared, start: Instant) -> Finish<'a> {
        shared.metrics.request_started();
        Finish {
            shared,
            start,
            status: 0,
            delivered: false,
        }
    }
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.shared
            .metrics
            .request_finished(self.status, self.start.elapsed(), self.delivered);
    }
}

/// Parses a request head at the start of `buf`; when the request is one for this path,
/// writes the head to send upstream into `out`, with the forwarding rule applied
/// ([`Forwarding`]; `trusted`: the client is one of the proxies in front of windlass).
fn parse_request(buf: &[u8], client_ip: &str, trusted: bool, out: &mut Vec<u8>) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Unsupported,
    };
    let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Unsupported;
    };
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE") || !path.starts_with('/') {
        return Parsed::Unsupported;
    }
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    let mut request_id = None;
    let mut fwd = Forwarding::new(trusted);
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value.trim_ascii();
        let n = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        if !fwd.pass(name, h.value) {
            continue;
        } else if n("content-length") {
            if value != b"0" {
                return Parsed::Unsupported;
            }
        } else if n("transfer-encoding") || n("upgrade") || n("expect") {
            return Parsed::Unsupported;
        } else if n("connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !(token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive")) {
                    // It names headers to strip, or asks for an upgrade.
                    return Parsed::Unsupported;
                }
            }
            continue;
        } else if n("keep-alive") || n("proxy-connection") || n("te") || n("trailer") {
            continue;
        } else if n("host") {
            if host.is_some() {
                return Parsed::Unsupported;
            }
            host = Some(value);
        } else if n("x-request-id") && request_id.is_none() {
            let at = out.len() + name.len() + 2;
            request_id = Some(at..at + h.value.len());
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let Some(host) = host else {
        return Parsed::Unsupported;
    };
    fwd.finish(client_ip.as_bytes(), Some(host), |name, parts| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        for part in parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
    });
    out.extend_from_slice(b"\r\n");
    Parsed::Complete(RequestHead {
        len,
        head_only: method == "HEAD",
        close,
        forwarded: fwd.seen(),
        request_id,
    })
}

/// Whether `buf` is a complete head for this path, with the rewritten head in `out`
/// (for the forwarding-rule property test in `headers`).
#[cfg(test)]
pub(crate) fn parse_for_test(
    buf: &[u8],
    client_ip: &str,
    trusted: bool,
    out: &mut Vec<u8>,
) -> bool {
    matches!(
        parse_request(buf, client_ip, trusted, out),
        Parsed::Complete(_)
    )
}

/// How the response body ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

struct ResponseHead {
    /// Length of the head in the upstream buffer.
    len: usize,
    status: u16,
    framing: Framing,
    /// The app keeps the connection open after this response.
    reusable: bool,
}

/// Sends `request` to a ready instance, holding while there is none, and reads the
/// response head into `ubuf`.
async fn exchange(
    shared: &Shared,
    request: &[u8],
    ubuf: &mut BytesMut,
    respond: &mut Deadline,
    start: Instant,
) -> Result<(InFlight, TcpStream, ResponseHead), ProxyError> {
    let mut attempts = Attempts::new(shared, start);
    // Only bodiless requests with idempotent methods take this path.
    let replay = Replay::Allowed;
    let mut fresh = false;
    loop {
        let guard = attempts.pick().await?;
        let backend = guard.backend();
        let addr = backend.addr;
        let pooled = if fresh { None } else { backend.raw.take() };
        let mut upstream = match pooled {
            Some(conn) => conn,
            None => match Box::pin(pool::connect_tcp(addr, shared.cfg.connect_timeout)).await {
                Ok(conn) => conn,
                Err(e) => {
                    attempts.connect_failed(backend.id, e);
                    continue;
                }
            },
        };
        ubuf.clear();
        let (how, source) = match send(&mut upstream, request, ubuf, respond, addr).await {
            Ok(head) => return Ok((guard, upstream, head)),
            Err(Failure::NeverRead(source)) => (Broke::Unread, source),
            Err(Failure::Closed(source)) => (Broke::MaybeRead, source),
            Err(Failure::Io(source)) => {
                shared.metrics.upstream_error(UpstreamCause::Reset);
                return Err(ProxyError::UpstreamIo { addr, source });
            }
            Err(Failure::Proxy(e)) => {
                shared.metrics.upstream_failed(&e);
                return Err(e);
            }
        };
        let e = ProxyError::UpstreamIo { addr, source };
        attempts.broke(backend.id, addr, how, &replay, e).await?;
        fresh = true;
    }
}

enum Failure {
    /// Reset or a broken pipe before any byte of a response: the app never read it.
    NeverRead(io::Error),
    /// Closed, or another error, after the request was written and before any byte of a
    /// response: the app may have read it.
    Closed(io::Error),
    Io(io::Error),
    Proxy(ProxyError),
}

/// Writes the request and reads until a final response head is complete.
async fn send(
    upstream: &mut TcpStream,
    request: &[u8],
    ubuf: &mut BytesMut,
    respond: &mut Deadline,
    addr: SocketAddr,
) -> Result<ResponseHead, Failure> {
    let never_read = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Failure::NeverRead(e),
        _ => Failure::Io(e),
    };
    upstream.write_all(request).await.map_err(never_read)?;
    respond.arm();
    let mut got_any = false;
    loop {
        if !ubuf.is_empty() {
            match parse_response(ubuf, addr).map_err(Failure::Proxy)? {
                Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                    // An interim response (100 Continue, 103 Early Hints): skipped, as
                    // the hyper path does; the final one follows.
                    ubuf.advance(head.len);
                    continue;
                }
                Some(head) if head.status == 101 => {
                    return Err(Failure::Proxy(ProxyError::UnexpectedSwitch { addr }));
                }
                Some(head) => return Ok(head),
                None if ubuf.len() >= MAX_HEAD => {
                    return Err(Failure::Proxy(ProxyError::BadResponse {
                        addr,
                        what: "response head too large",
                    }));
                }
                None => {}
            }
        }
        if ubuf.capacity() - ubuf.len() < 1024 {
            ubuf.reserve(KEEP_UPSTREAM_BUF);
        }
        let read = tokio::select! {
            biased;
            r = upstream.read_buf(ubuf) => r,
            () = respond.sleep.as_mut() => {
                return Err(Failure::Proxy(ProxyError::ResponseTimeout {
                    addr,
                    after: respond.within,
                }));
            }
        };
        match read {
            Ok(0) if got_any => {
                return Err(Failure::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed in the middle of the response head",
                )));
            }
            Ok(0) => {
                return Err(Failure::Closed(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before a response",
                )));
            }
            Ok(_) => got_any = true,
            Err(e) if got_any => return Err(Failure::Io(e)),
            Err(e) => {
                return Err(match e.kind() {
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => {
                        Failure::NeverRead(e)
                    }
                    _ => Failure::Closed(e),
                });
            }
        }
    }
}

/// Parses a response head; `None` while incomplete.
fn parse_response(buf: &[u8], addr: SocketAddr) -> Result<Option<ResponseHead>, ProxyError> {
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
fn write_response_head(out: &mut Vec<u8>, head: &[u8], close: bool) {
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
        let hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "upgrade",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
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

/// A proxy-made error response (the same page as the hyper path's), framed for the
/// request: no body after the head of an answer to `HEAD` (its `content-length` is the
/// page's, as a `GET` would get), so the connection stays usable.
fn error_page(
    out: &mut Vec<u8>,
    shared: &Shared,
    e: &ProxyError,
    request_id: &str,
    detail: bool,
    head: &RequestHead,
) {
    let status = e.status();
    let page = e.page(&shared.app, request_id, detail);
    out.clear();
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncache-control: no-store\r\nx-request-id: {request_id}\r\n{}content-length: {}\r\n{}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error"),
            if status == http::StatusCode::SERVICE_UNAVAILABLE {
                "retry-after: 5\r\n"
            } else {
                ""
            },
            page.len(),
            if head.close { "connection: close\r\n" } else { "" },
        )
        .as_bytes(),
    );
    if !head.head_only {
        out.extend_from_slice(page.as_bytes());
    }
}

/// `METHOD /path` of a head sent upstream, for the log (see [`request_line`]).
fn logged_request(request: &[u8]) -> String {
    let line = request.split(|&b| b == b'\r').next().unwrap_or(b"");
    let mut words = line.split(|&b| b == b' ');
    request_line(words.next().unwrap_or(b""), words.next().unwrap_or(b""))
}

/// Where a response body stands: how many of the bytes that come next belong to it.
struct BodyState {
    framing: Framing,
    /// Bytes left of a `Length` body, or of the current chunk's data.
    left: u64,
    chunk: Chunk,
    /// The chunk-size line or trailer line read so far (bounded).
    line: usize,
    done: bool,
    failed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line (hex digits, then extensions, then CRLF).
    Size {
        digits: usize,
        size: u64,
        ext: bool,
    },
    /// Copying chunk data (`left` bytes), then its CRLF.
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, ended by an empty line.
    Trailer {
        empty: bool,
    },
}

/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;

impl BodyState {
    fn new(framing: Framing) -> BodyState {
        let (left, done) = match framing {
            Framing::Empty | Framing::Length(0) => (0, true),
            Framing::Length(n) => (n, false),
            Framing::Chunked | Framing::UntilClose => (0, false),
        };
        BodyState {
            framing,
            left,
            chunk: Chunk::Size {
                digits: 0,
                size: 0,
                ext: false,
            },
            line: 0,
            done,
            failed: false,
        }
    }

    fn done(&self) -> bool {
        self.done
    }

    fn failed(&self) -> bool {
        self.failed
    }

    fn until_close(&self) -> bool {
        self.framing == Framing::UntilClose
    }

    /// The close that ends an `UntilClose` body.
    fn close(&mut self) {
        self.done = true;
    }

    /// How many bytes at the start of `data` belong to the body (all of them until it
    /// ends). A malformed chunked body ends it as failed.
    fn feed(&mut self, data: &[u8]) -> usize {
        if self.done {
            return 0;
        }
        match self.framing {
            Framing::Empty => 0,
            Framing::UntilClose => data.len(),
            Framing::Length(_) => {
                let take = usize::try_from(self.left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.left -= take as u64;
                self.done = self.left == 0;
                take
            }
            Framing::Chunked => self.feed_chunked(data),
        }
    }

    fn fail(&mut self, at: usize) -> usize {
        self.failed = true;
        self.done = true;
        at
    }

    fn feed_chunked(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() && !self.done {
            match &mut self.chunk {
                Chunk::Data => {
                    let take = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(data.len() - i);
                    i += take;
                    self.left -= take as u64;
                    if self.left == 0 {
                        self.chunk = Chunk::DataCr;
                    }
                    continue;
                }
                Chunk::DataCr => {
                    if data[i] != b'\r' {
                        return self.fail(i);
                    }
                    self.chunk = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if data[i] != b'\n' {
                        return self.fail(i);
                    }
                    self.chunk = Chunk::Size {
                        digits: 0,
                        size: 0,
                        ext: false,
                    };
                    self.line = 0;
                }
                Chunk::Size { digits, size, ext } => {
                    let b = data[i];
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return self.fail(i);
                    }
                    if b == b'\n' {
                        if *digits == 0 {
                            return self.fail(i);
                        }
                        if *size == 0 {
                            self.chunk = Chunk::Trailer { empty: true };
                        } else {
                            self.left = *size;
                            self.chunk = Chunk::Data;
                        }
                        self.line = 0;
                    } else if b == b'\r' || *ext {
                        // The CR before LF, and extensions: passed through as they are.
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        *ext = true;
                    } else if let Some(d) = char::from(b).to_digit(16) {
                        if *digits >= 15 {
                            return self.fail(i);
                        }
                        *digits += 1;
                        *size = *size * 16 + u64::from(d);
                    } else {
                        return self.fail(i);
                    }
                }
                Chunk::Trailer { empty } => {
                    let b = data[i];
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return self.fail(i);
                    }
                    if b == b'\n' {
                        if *empty {
                            self.done = true;
                        } else {
                            *empty = true;
                            self.line = 0;
                        }
                    } else if b != b'\r' {
                        *empty = false;
                    }
                }
            }
            i += 1;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> (Parsed, String) {
        let mut out = Vec::new();
        let p = parse_request(raw.as_bytes(), "192.0.2.7", false, &mut out);
        (p, String::from_utf8(out).expect("utf8"))
    }

    #[test]
    fn a_plain_get_is_rewritten_for_the_app() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Forwarded-Proto: https\r\nAccept: */*\r\n\r\nGET /next";
        let (p, out) = parse(raw);
        let Parsed::Complete(head) = p else {
            panic!("complete")
        };
        assert_eq!(head.len, raw.len() - "GET /next".len());
        assert!(!head.close && !head.head_only);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: example.test\r\nx-real-ip: 192.0.2.7\r\n\r\n"
        );
    }

    #[test]
    fn a_trusted_proxys_forwarded_for_values_are_joined_with_the_client_last() {
        let raw = "GET / HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nHost: h\r\nx-forwarded-for: 10.0.0.2, 10.0.0.3\r\nConnection: close\r\nAccept: */*\r\n\r\n";
        let mut out = Vec::new();
        let p = parse_request(raw.as_bytes(), "192.0.2.7", true, &mut out);
        let out = String::from_utf8(out).expect("utf8");
        let Parsed::Complete(head) = p else {
            panic!("complete: {out}")
        };
        assert!(head.close && !head.head_only && head.forwarded);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nAccept: */*\r\nx-forwarded-for: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: h\r\nx-real-ip: 192.0.2.7\r\n\r\n"
        );
        let (p, _) = parse("HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(matches!(
            p,
            Parsed::Complete(RequestHead {
                head_only: true,
                forwarded: false,
                ..
            })
        ));
    }

    #[test]
    fn a_trusted_proxy_keeps_its_forwarding_headers() {
        let raw = "GET / HTTP/1.1\r\nHost: internal\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\nForwarded: for=203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-Port: 443\r\nX-Request-Id: r-1\r\n\r\n";
        let mut out = Vec::new();
        let Parsed::Complete(head) = parse_request(raw.as_bytes(), "10.0.0.1", true, &mut out)
        else {
            panic!("complete")
        };
        let id = head.request_id.clone().expect("request id");
        assert_eq!(&out[id], b"r-1");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "GET / HTTP/1.1\r\nHost: internal\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: example.com\r\nForwarded: for=203.0.113.9\r\nX-Real-IP: 203.0.113.9\r\nX-Forwarded-Port: 443\r\nX-Request-Id: r-1\r\nx-forwarded-for: 10.0.0.1\r\n\r\n"
        );
        let (_, out) = parse(raw);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: internal\r\nX-Request-Id: r-1\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: internal\r\nx-real-ip: 192.0.2.7\r\n\r\n"
        );
    }

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

    #[test]
    fn everything_unusual_goes_to_the_hyper_path() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            "GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\nx-secret: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            "GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GE\x01T / HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            assert!(matches!(parse(raw).0, Parsed::Unsupported), "{raw:?}");
        }
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: h\r\n").0,
            Parsed::Partial
        ));
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

    /// Feeds `body` in pieces of `step` bytes; returns the bytes taken and the state.
    fn feed_all(framing: Framing, body: &[u8], step: usize) -> (usize, BodyState) {
        let mut s = BodyState::new(framing);
        let mut taken = 0;
        for piece in body.chunks(step) {
            let t = s.feed(piece);
            taken += t;
            if t < piece.len() {
                break;
            }
        }
        (taken, s)
    }

    #[test]
    fn chunked_bodies_end_exactly_at_their_last_chunk() {
        let body = b"4\r\nWiki\r\n5;name=v\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        for step in [1, 2, 3, 7, body.len()] {
            let mut with_extra = body.to_vec();
            with_extra.extend_from_slice(b"HTTP/1.1 200 OK");
            let (taken, s) = feed_all(Framing::Chunked, &with_extra, step);
            assert!(s.done() && !s.failed(), "step {step}");
            assert_eq!(taken, body.len(), "step {step}");
        }
        let (_, s) = feed_all(Framing::Chunked, b"0\r\n\r\n", 1);
        assert!(s.done() && !s.failed());
        for bad in [
            &b"zz\r\n"[..],
            b"4\r\nWikiXX",
            b"\r\n",
            b"10000000000000000\r\n",
        ] {
            let (_, s) = feed_all(Framing::Chunked, bad, 1);
            assert!(s.failed(), "{:?}", String::from_utf8_lossy(bad));
        }
        let (_, s) = feed_all(Framing::Chunked, b"4\r\nWi", 1);
        assert!(!s.done());
    }

    /// Any bytes from a client or an app: no panic, and the parsers stay within them.
    #[test]
    fn arbitrary_bytes_never_panic() {
        // xorshift64*: deterministic, so a failure reproduces.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        // Pieces that make the parsers go deep, mixed with random bytes.
        const PIECES: [&[u8]; 14] = [
            b"GET / HTTP/1.1\r\n",
            b"HTTP/1.1 200 OK\r\n",
            b"Host: h\r\n",
            b"Content-Length: 3\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Connection: close, x\r\n",
            b"X-Forwarded-For: 1.2.3.4\r\n",
            b"\r\n",
            b"0\r\n",
            b"5;a=b\r\nhello\r\n",
            b"ffffffffffffffff\r\n",
            b"\n",
            b"\r",
            b";",
        ];
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..next() % 12 {
                if next() % 3 == 0 {
                    for _ in 0..next() % 8 {
                        input.push(next() as u8);
                    }
                } else {
                    input.extend_from_slice(PIECES[(next() % PIECES.len() as u64) as usize]);
                }
            }
            let mut out = Vec::new();
            if let Parsed::Complete(head) =
                parse_request(&input, "192.0.2.7", next() % 2 == 0, &mut out)
            {
                assert!(head.len <= input.len());
                assert!(out.ends_with(b"\r\n\r\n"));
            }
            if let Ok(Some(head)) = parse_response(&input, addr()) {
                assert!(head.len <= input.len());
                let mut out = Vec::new();
                write_response_head(&mut out, &input[..head.len], next() % 2 == 0);
                assert!(out.starts_with(b"HTTP/1.1 ") && out.ends_with(b"\r\n\r\n"));
            }
            for framing in [
                Framing::Chunked,
                Framing::Length(next() % 64),
                Framing::UntilClose,
            ] {
                let step = 1 + (next() % 16) as usize;
                let mut s = BodyState::new(framing);
                for piece in input.chunks(step) {
                    let taken = s.feed(piece);
                    assert!(taken <= piece.len());
                    if s.done() {
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn length_bodies_take_exactly_their_length() {
        let (taken, s) = feed_all(Framing::Length(5), b"helloEXTRA", 3);
        assert_eq!(taken, 5);
        assert!(s.done());
        let s = BodyState::new(Framing::Length(0));
        assert!(s.done());
        let mut s = BodyState::new(Framing::UntilClose);
        assert_eq!(s.feed(b"abc"), 3);
        assert!(!s.done());
        s.close();
        assert!(s.done());
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    fn prng(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed;
        move || {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    /// Generated valid chunked bodies (sizes in any case with leading zeros, extensions,
    /// trailers), followed by the next message, fed in random pieces: the parser takes
    /// exactly the body, never fails, and is done exactly at its last byte.
    #[test]
    fn generated_chunked_bodies_end_exactly_at_their_end() {
        let mut next = prng(0xD1B5_4A32_D192_ED03);
        for _ in 0..2_000 {
            let mut body = Vec::new();
            for _ in 0..next() % 6 {
                let size = (next() % 300 + 1) as usize;
                let hex = format!("{:0width$x}", size, width = (next() % 4) as usize);
                let hex = if next() % 2 == 0 {
                    hex.to_uppercase()
                } else {
                    hex
                };
                body.extend_from_slice(hex.as_bytes());
                if next() % 3 == 0 {
                    body.extend_from_slice(b";name=\"v;x\"");
                }
                body.extend_from_slice(b"\r\n");
                body.extend((0..size).map(|_| next() as u8));
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n");
            for _ in 0..next() % 3 {
                body.extend_from_slice(b"X-Trailer: a\r\n");
            }
            body.extend_from_slice(b"\r\n");
            let mut input = body.clone();
            input.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
            let mut s = BodyState::new(Framing::Chunked);
            let mut taken = 0;
            let mut at = 0;
            while at < input.len() && !s.done() {
                let step = (1 + next() % 64) as usize;
                let piece = &input[at..(at + step).min(input.len())];
                let t = s.feed(piece);
                assert!(t <= piece.len());
                taken += t;
                at += piece.len();
                assert_eq!(s.done(), taken == body.len(), "done exactly at the end");
            }
            assert!(
                s.done() && !s.failed(),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(taken, body.len());
        }
    }

    /// Generated plain requests, cut anywhere: partial before their last byte, complete
    /// with their exact length at it, whatever follows (a pipelined request).
    #[test]
    fn generated_heads_are_partial_until_their_last_byte() {
        let mut next = prng(0x94D0_49BB_1331_11EB);
        const METHODS: [&str; 4] = ["GET", "HEAD", "OPTIONS", "DELETE"];
        const HEADERS: [&str; 8] = [
            "Accept: */*",
            "Connection: keep-alive",
            "Connection: close",
            "Content-Length: 0",
            "X-Forwarded-For: 10.0.0.1",
            "Forwarded: for=1.2.3.4",
            "X-Request-Id: abc",
            "Cookie: a=b; c=d",
        ];
        for _ in 0..2_000 {
            let method = METHODS[(next() % 4) as usize];
            let mut head = format!(
                "{method} /p{}?q={} HTTP/1.1\r\n",
                next() % 100,
                next() % 100
            );
            let host_at = next() % 4;
            for i in 0..next() % 6 {
                if i == host_at {
                    head.push_str("Host: example.test\r\n");
                }
                head.push_str(HEADERS[(next() % HEADERS.len() as u64) as usize]);
                head.push_str(if next() % 2 == 0 { "\r\n" } else { "\n" });
            }
            if !head.contains("Host:") {
                head.push_str("Host: h\r\n");
            }
            head.push_str("\r\n");
            let mut input = head.clone().into_bytes();
            input.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            let trusted = next() % 2 == 0;
            let mut out = Vec::new();
            for cut in 1..head.len() {
                assert!(
                    matches!(
                        parse_request(&input[..cut], "192.0.2.7", trusted, &mut out),
                        Parsed::Partial
                    ),
                    "{head:?} cut at {cut}"
                );
            }
            for end in [head.len(), input.len()] {
                match parse_request(&input[..end], "192.0.2.7", trusted, &mut out) {
                    Parsed::Complete(h) => {
                        assert_eq!(h.len, head.len(), "{head:?}");
                        assert_eq!(h.head_only, method == "HEAD");
                        assert_eq!(h.close, head.contains("Connection: close"));
                        let sent = String::from_utf8(out.clone()).expect("utf8");
                        assert!(sent.starts_with(&format!("{method} /p")), "{sent}");
                        assert!(
                            sent.ends_with("x-real-ip: 192.0.2.7\r\n\r\n") || trusted,
                            "{sent}"
                        );
                    }
                    _ => panic!("{head:?} not complete"),
                }
            }
        }
    }
}
