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
//! head is kept in its own buffer until the response head arrives), the response timeout,
//! the in-flight count that drains wait on, and the same metrics. Every such rule is the
//! request policy's ([`crate::proxy::policy`]), which both paths call; this module is only
//! the codec. Responses keep their framing (`Content-Length`, chunked, or the end of the
//! connection, which then also ends the client's). Otherwise the upstream connection lives
//! independently of the client's: a client's `Connection: close` is not sent upstream and
//! closes only the client side, and the app's closes only the upstream side.
//!
//! Files: this one is the connection loop and the exchange with the app; `request` the
//! request codec, `response` the response codec, `framing` where a response body ends
//! (chunked framing). `proxy.plain_path = false` turns this path off.

mod framing;
mod request;
mod response;

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
use crate::proxy::error::{ErrorCause, ProxyError};
use crate::proxy::plain::framing::{BodyState, Framing};
use crate::proxy::plain::request::{Parsed, method_and_target, parse_request};
use crate::proxy::plain::response::{
    ResponseHead, error_page, parse_response, write_response_head,
};
use crate::proxy::policy::{self, Attempts, Broke, Counted, Failed, Replay};
use crate::proxy::pool;

#[cfg(test)]
pub(crate) use crate::proxy::plain::request::parse_for_test;
pub(crate) use crate::proxy::plain::response::HEAD_TIMEOUT_PAGE;

/// Largest request or response head taken here; a larger request goes to the hyper path
/// (which answers 431), a larger response is a 502.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a head taken here (hyper's limit too).
pub(super) const MAX_HEADERS: usize = 100;
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
                    shared.metrics.error(ErrorCause::HeadTimeout);
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
        let mut finish = Counted::start(&**shared, start);
        let outcome = exchange(shared, &request, &mut ubuf, &mut respond, start).await;
        let (guard, mut upstream, resp) = match outcome {
            Ok(x) => x,
            Err(e) => {
                let (method, target) = method_and_target(&request);
                let answer = policy::fail(
                    &mut finish,
                    &e,
                    &Failed {
                        request_id: head.request_id.clone().and_then(|r| request.get(r)),
                        method,
                        target,
                        client_ip,
                        forwarded: head.forwarded,
                        client_close: head.close,
                    },
                );
                finish.status = answer.status.as_u16();
                error_page(&mut response, &answer, head.head_only);
                if send_all(client, &response, &mut idle).await.is_err() {
                    return Served::Closed;
                }
                finish.delivered = true;
                drop(finish);
                if answer.close {
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
        let mut filled = false;
        while !body.done() {
            ubuf.clear();
            // The rest of a small body (most are) is read into the buffer the connection
            // keeps; only one that is larger, or of unknown length and filling it, grows
            // it to BODY_CHUNK (before, every response reallocated 64 KiB and freed it).
            let large = body
                .length_left()
                .map_or(filled, |left| left > ubuf.capacity() as u64);
            if large {
                ubuf.reserve(BODY_CHUNK);
            } else if ubuf.capacity() < 1024 {
                ubuf.reserve(KEEP_UPSTREAM_BUF);
            }
            respond.arm();
            let read = tokio::select! {
                biased;
                r = upstream.read_buf(&mut ubuf) => r,
                () = respond.sleep.as_mut() => {
                    shared.metrics.upstream_error(UpstreamCause::ResponseTimeout);
                    finish.failed(ErrorCause::ResponseTimeout);
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
                    finish.failed(ErrorCause::Reset);
                    return Served::Closed;
                }
                Ok(_) => {
                    filled = ubuf.len() == ubuf.capacity();
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
            finish.failed(ErrorCause::BadResponse);
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

#[cfg(test)]
mod tests {
    use super::framing::{BodyState, Framing};
    use super::request::{Parsed, parse_request};
    use super::response::{parse_response, write_response_head};
    use std::net::SocketAddr;

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9))
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
}
