//! Forwarding one request (the hot path): rewrite the head, pick an instance (holding
//! while none is ready), get a pooled or new upstream connection, send, and hand the
//! response back with its body streaming. The request is only given to hyper once a
//! connection exists, so a refused or timed-out connect is retried on another instance
//! (or the same one after a short wait) without having touched the body; a pooled
//! connection that died before the request was written gives the request back
//! (`try_send_request`) and the request goes out on a fresh connection. Once bytes have
//! been written, whether the request is sent again is the shared replay rule
//! ([`Attempts::broke`]): only an idempotent request whose body (if any) is still at
//! hand, only when its connection broke before any response (reset: again on any
//! instance; closed: once, on another instance). So an idempotent request with a small
//! body of known length ([`policy::MAX_KEPT_BODY`], no `Expect: 100-continue`) is read whole
//! before it is sent (a stall is still cut off by `proxy.body_timeout`) and kept; any
//! other body streams to the app as it arrives. The response timeout starts when the
//! request body has been sent in full, so slow uploads are not cut off.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::proxy::Shared;
use crate::proxy::backend::{Backend, InFlight};
use crate::proxy::body::{BodyEnd, Completion, RequestBody, ResponseBody};
use crate::proxy::deadline::HeadMark;
use crate::proxy::error::ProxyError;
use crate::proxy::headers;
use crate::proxy::policy::{self, Attempts, Broke, ErrorAnswer, Failed, Replay};
use crate::proxy::pool::{self, Upstream};
use crate::proxy::tunnel;

/// How many times a request given back unsent is re-sent before giving up.
const MAX_UNSENT_RETRIES: u32 = 3;

const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Proxies one client request. Never fails: errors become proxy-made responses (the
/// `Result` is what hyper's service wants, so no wrapper future is needed).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    client_ip: HeaderValue,
    trusted: bool,
    mark: HeadMark,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, std::convert::Infallible> {
    Ok(proxy(shared, client_ip, trusted, mark, req).await)
}

async fn proxy(
    shared: Arc<Shared>,
    client_ip: HeaderValue,
    trusted: bool,
    mark: HeadMark,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let mut done = Completion::start(Arc::clone(&shared), start);
    done.mark = Some(mark);

    let upgrade = headers::upgrade_protocol(req.headers());
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let keep = upgrade.is_none() && keeps_body(&parts, &body);
    let forwarded = headers::prepare_request(&mut parts, &client_ip, upgrade, trusted);
    // What an error page and its log line need; the request itself goes to the app.
    let failed = |e: ProxyError,
                  mut done: Completion,
                  method: &http::Method,
                  uri: &http::Uri,
                  id: Option<&HeaderValue>| {
        let answer = policy::fail(
            &mut done.counted,
            &e,
            &Failed {
                request_id: id.map(HeaderValue::as_bytes),
                method: method.as_str().as_bytes(),
                target: uri.path().as_bytes(),
                client_ip: client_ip.to_str().unwrap_or(""),
                forwarded,
                // hyper closes the connection of a client that asked to itself.
                client_close: false,
            },
        );
        error_response(done, answer)
    };
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let request_id = parts.headers.get(X_REQUEST_ID).cloned();
    let (mut body, mut body_end) = RequestBody::new(body, shared.cfg.body_timeout);
    if keep {
        match body.collect().await {
            Ok(whole) => {
                body = RequestBody::kept(whole.to_bytes());
                body_end = None;
            }
            Err(e) => {
                let stalled = body_end.as_mut().and_then(|end| end.try_recv().ok());
                let e = match (stalled, e.downcast::<hyper::Error>()) {
                    (Some(BodyEnd::Stalled(after)), _) => ProxyError::BodyTimeout { after },
                    (_, Ok(source)) => ProxyError::Downstream { source: *source },
                    (_, Err(_)) => ProxyError::Internal {
                        what: "reading a request body to keep failed",
                    },
                };
                return failed(e, done, &method, &uri, request_id.as_ref());
            }
        }
    }
    let req = Request::from_parts(parts, body);

    let Exchange {
        response,
        guard,
        conn,
    } = match exchange(&shared, req, body_end, start, client_upgrade.is_some()).await {
        Ok(x) => x,
        Err(e) => return failed(e, done, &method, &uri, request_id.as_ref()),
    };

    let status = response.status();
    match (status, client_upgrade) {
        (StatusCode::SWITCHING_PROTOCOLS, Some(client_upgrade)) => {
            let mut response = response;
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (mut parts, _empty) = response.into_parts();
            headers::prepare_response(&mut parts.headers, true);
            if let Some(mark) = done.mark.as_mut() {
                mark.upgraded();
            }
            drop(conn);
            tunnel::spawn(
                shared,
                client_upgrade,
                upstream_upgrade,
                guard.into_upgraded(),
            );
            Response::from_parts(
                parts,
                ResponseBody::full(Bytes::new(), done, status.as_u16()),
            )
        }
        (StatusCode::SWITCHING_PROTOCOLS, None) => {
            let addr = guard.backend().addr;
            drop((guard, conn, response));
            let e = ProxyError::UnexpectedSwitch { addr };
            shared
                .metrics
                .upstream_error(crate::proxy::UpstreamCause::Reset);
            failed(e, done, &method, &uri, request_id.as_ref())
        }
        (_, client_upgrade) => {
            let (mut parts, body) = response.into_parts();
            headers::prepare_response(&mut parts.headers, false);
            parts.version = Version::HTTP_11;
            // A connection that carried an upgrade request (even a refused one) is not reused.
            let conn = client_upgrade.is_none().then_some(conn);
            let body = ResponseBody::upstream(body, done, status.as_u16(), guard, conn);
            Response::from_parts(parts, body)
        }
    }
}

struct Exchange {
    response: Response<Incoming>,
    guard: InFlight,
    conn: Upstream,
}

enum SendError {
    /// Boxed: rare, and it would make every result of `send` large.
    Unsent(Box<Request<RequestBody>>, hyper::Error),
    Failed(ProxyError),
}

async fn exchange(
    shared: &Shared,
    mut req: Request<RequestBody>,
    mut body_end: Option<oneshot::Receiver<BodyEnd>>,
    start: Instant,
    upgrade: bool,
) -> Result<Exchange, ProxyError> {
    let cfg = &shared.cfg;
    let mut attempts = Attempts::new(shared, start);
    let replay = Replay::of(req.method(), body_end.is_some());
    // What it takes to send the request again, kept only where a replay is allowed.
    let kept = (replay == Replay::Allowed).then(|| {
        (
            req.method().clone(),
            req.uri().clone(),
            req.version(),
            req.headers().clone(),
            req.body().whole(),
        )
    });
    let mut unsent = 0;
    let mut fresh = upgrade;
    loop {
        let guard = attempts.pick().await?;
        let backend = guard.backend();
        let mut conn = match checkout(backend, fresh, cfg.connect_timeout).await {
            Ok(conn) => conn,
            Err(e) => {
                attempts.connect_failed(backend.id, e);
                continue;
            }
        };
        let addr = backend.addr;
        if upgrade {
            conn.spawn_with_upgrades();
        }
        match send(&mut conn, req, &mut body_end, cfg.response_timeout, addr).await {
            Ok(response) => {
                return Ok(Exchange {
                    response,
                    guard,
                    conn,
                });
            }
            Err(SendError::Unsent(back, source)) => {
                unsent += 1;
                fresh = true;
                if unsent > MAX_UNSENT_RETRIES {
                    shared
                        .metrics
                        .upstream_error(crate::proxy::UpstreamCause::Reset);
                    return Err(ProxyError::Upstream { addr, source });
                }
                req = *back;
            }
            Err(SendError::Failed(e)) => {
                let how = match &e {
                    ProxyError::Upstream { source, .. } => broke(source),
                    _ => None,
                };
                let Some(how) = how else {
                    shared.metrics.upstream_failed(&e);
                    return Err(e);
                };
                attempts.broke(backend.id, addr, how, &replay, e).await?;
                fresh = true;
                let Some((method, uri, version, headers, body)) = kept.clone() else {
                    return Err(ProxyError::Internal {
                        what: "a request that may not be replayed was about to be",
                    });
                };
                let body = body.map_or_else(RequestBody::empty, RequestBody::kept);
                let mut again = Request::new(body);
                *again.method_mut() = method;
                *again.uri_mut() = uri;
                *again.version_mut() = version;
                *again.headers_mut() = headers;
                req = again;
            }
        }
    }
}

/// Whether a request's body is read whole and kept before sending ([`policy::keeps_body`]).
fn keeps_body(parts: &http::request::Parts, body: &Incoming) -> bool {
    use hyper::body::Body;
    policy::keeps_body(
        &parts.method,
        parts.headers.contains_key(header::EXPECT),
        (!body.is_end_stream())
            .then(|| body.size_hint().exact())
            .flatten(),
    )
}

/// How an exchange that failed with `e` broke, if it broke before any response: reset or
/// a write into a closed socket (the kernel answers so when the app never read the
/// request), or the connection closed with no answer (the app may have read it).
fn broke(e: &hyper::Error) -> Option<Broke> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe => {
                    Broke::Unread
                }
                _ => Broke::MaybeRead,
            });
        }
        source = err.source();
    }
    // hyper's "connection closed before message completed": no byte of a response.
    e.is_incomplete_message().then_some(Broke::MaybeRead)
}

/// An idle pooled connection (unless `fresh`), or a new one.
async fn checkout(
    backend: &Backend,
    fresh: bool,
    timeout: Duration,
) -> Result<Upstream, ProxyError> {
    if !fresh {
        while let Some(mut conn) = backend.pool.take() {
            // Returned at the end of its last response; the connection catches up with
            // that (or notices it was closed) when first polled, which nearly always
            // settles it at once: only the rare rest pays for a timer.
            let ready = {
                let ready = conn.ready();
                tokio::pin!(ready);
                match std::future::poll_fn(|cx| Poll::Ready(ready.as_mut().poll(cx))).await {
                    Poll::Ready(r) => Ok(r),
                    Poll::Pending => tokio::time::timeout(timeout, ready).await,
                }
            };
            if let Ok(Ok(())) = ready {
                return Ok(conn);
            }
        }
    }
    // Boxed: opening a connection is rare, and its future is large; inline, it would
    // make every request's future (moved around by hyper) that much bigger.
    Box::pin(pool::connect(backend.addr, timeout)).await
}

async fn send(
    conn: &mut Upstream,
    req: Request<RequestBody>,
    body_end: &mut Option<oneshot::Receiver<BodyEnd>>,
    timeout: Duration,
    addr: std::net::SocketAddr,
) -> Result<Response<Incoming>, SendError> {
    let fut = conn.send(req);
    tokio::pin!(fut);
    // While the body is still uploading the response timeout does not run.
    let mut ended = None;
    let early = match body_end.as_mut() {
        None => None,
        Some(end) => tokio::select! {
            biased;
            r = &mut fut => Some(r),
            e = end => {
                ended = Some(e.unwrap_or(BodyEnd::Complete));
                None
            }
        },
    };
    if ended.is_some() {
        *body_end = None;
    }
    let result = match early {
        Some(r) => r,
        None => match tokio::time::timeout(timeout, &mut fut).await {
            Ok(r) => r,
            Err(_) => {
                return Err(SendError::Failed(ProxyError::ResponseTimeout {
                    addr,
                    after: timeout,
                }));
            }
        },
    };
    match result {
        Ok(response) => Ok(response),
        Err(mut e) => {
            if let Some(req) = e.take_message() {
                return Err(SendError::Unsent(Box::new(req), e.into_error()));
            }
            let source = e.into_error();
            let ended = ended.or_else(|| body_end.as_mut().and_then(|end| end.try_recv().ok()));
            Err(SendError::Failed(match ended {
                Some(BodyEnd::Failed) => ProxyError::Downstream { source },
                Some(BodyEnd::Stalled(after)) => ProxyError::BodyTimeout { after },
                _ => ProxyError::Upstream { addr, source },
            }))
        }
    }
}

/// A proxy-made error response: the policy's page and headers.
fn error_response(done: Completion, answer: ErrorAnswer) -> Response<ResponseBody> {
    let page = Bytes::from(answer.page.clone());
    let mut response = Response::new(ResponseBody::full(page, done, answer.status.as_u16()));
    *response.status_mut() = answer.status;
    let h = response.headers_mut();
    for (name, value) in answer.headers() {
        if let Ok(value) = HeaderValue::from_str(value) {
            h.insert(header::HeaderName::from_static(name), value);
        }
    }
    response
}
