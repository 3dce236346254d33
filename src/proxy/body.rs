//! Streaming bodies in both directions, frame by frame (never buffered whole, except a
//! small request body kept so the request can be replayed: [`RequestBody::kept`]).
//! [`RequestBody`] carries the client's body to the app and reports when it ended, so
//! the response timeout starts only once the upload is done (and a client whose body
//! broke off is blamed, not the app). [`ResponseBody`] carries the app's body (or a
//! proxy-made page) to the client and owns the request's [`Completion`]: when the body
//! is done the upstream connection goes back to the pool, the instance's in-flight count
//! drops (which is what a drain waits for) and status and latency are recorded.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::proxy::Shared;
use crate::proxy::backend::InFlight;
use crate::proxy::counters::UpstreamCause;
use crate::proxy::deadline::{HeadMark, Stall};
use crate::proxy::error::ErrorCause;
use crate::proxy::policy::Counted;
use crate::proxy::pool::Upstream;

/// How the client's request body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    Complete,
    Failed,
    /// Nothing came for this long (`proxy.body_timeout`).
    Stalled(Duration),
}

/// The request body sent upstream. When the client sends nothing of it for
/// `body_timeout`, it fails with [`BodyStalled`]: the exchange with the app fails (its
/// connection is closed, never pooled), the client gets a 408 if no response has
/// started, and the instance's in-flight count drops, so a drain is not held by it.
pub(crate) struct RequestBody {
    /// A body read whole before sending (see [`RequestBody::kept`]), sent as one frame.
    full: Option<Bytes>,
    inner: Option<Incoming>,
    end: Option<oneshot::Sender<BodyEnd>>,
    stall: Option<Stall>,
}

impl RequestBody {
    /// Wraps the client's body; the receiver (absent for an empty body) fires when the
    /// body has been read to its end or failed.
    pub(crate) fn new(
        incoming: Incoming,
        body_timeout: Duration,
    ) -> (RequestBody, Option<oneshot::Receiver<BodyEnd>>) {
        if incoming.is_end_stream() {
            return (RequestBody::empty(), None);
        }
        let (tx, rx) = oneshot::channel();
        let body = RequestBody {
            full: None,
            inner: Some(incoming),
            end: Some(tx),
            stall: Some(Stall::new(body_timeout)),
        };
        (body, Some(rx))
    }

    pub(crate) fn empty() -> RequestBody {
        RequestBody {
            full: None,
            inner: None,
            end: None,
            stall: None,
        }
    }

    /// A body already read whole (a small one, kept so the request can be sent again);
    /// empty when `body` is.
    pub(crate) fn kept(body: Bytes) -> RequestBody {
        RequestBody {
            full: (!body.is_empty()).then_some(body),
            ..RequestBody::empty()
        }
    }

    /// The whole body, if it was read whole before sending ([`RequestBody::kept`]) and not
    /// sent yet.
    pub(crate) fn whole(&self) -> Option<Bytes> {
        self.full.clone()
    }

    fn signal(&mut self, end: BodyEnd) {
        if let Some(tx) = self.end.take() {
            // The receiver may be gone (response already arrived); nothing to tell then.
            let _ = tx.send(end);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(full) = this.full.take() {
            return Poll::Ready(Some(Ok(Frame::data(full))));
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) else {
            if let Some(stall) = this.stall.as_mut() {
                if stall.poll_expired(cx).is_ready() {
                    let within = stall.within();
                    this.signal(BodyEnd::Stalled(within));
                    this.inner = None;
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(within)))));
                }
            }
            return Poll::Pending;
        };
        if let Some(stall) = this.stall.as_mut() {
            stall.progressed();
        }
        let frame = frame.map(|f| f.map_err(Self::Error::from));
        match &frame {
            None => this.signal(BodyEnd::Complete),
            Some(Err(_)) => this.signal(BodyEnd::Failed),
            Some(Ok(_)) => {
                if this.inner.as_ref().is_none_or(Body::is_end_stream) {
                    this.signal(BodyEnd::Complete);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(full) = &self.full {
            return SizeHint::with_exact(full.len() as u64);
        }
        match &self.inner {
            None => SizeHint::with_exact(0),
            Some(b) => b.size_hint(),
        }
    }
}

/// Bookkeeping of one client request, settled when dropped: the upstream connection
/// back to the pool if the response ended, then the request counted ([`Counted`]).
pub(crate) struct Completion {
    pub(crate) counted: Counted<Arc<Shared>>,
    upstream: Option<(InFlight, Option<Upstream>)>,
    /// The exchange's place on its client connection (hyper path): ends with this.
    pub(crate) mark: Option<HeadMark>,
}

impl Completion {
    pub(crate) fn start(shared: Arc<Shared>, start: Instant) -> Completion {
        Completion {
            counted: Counted::start(shared, start),
            upstream: None,
            mark: None,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        self.counted.shared()
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some((guard, conn)) = self.upstream.take() {
            if let (true, Some(conn)) = (self.counted.delivered, conn) {
                guard.backend().pool.put(conn);
            }
            drop(guard);
        }
        // `counted` is dropped next, counting the request.
    }
}

enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

/// The response body sent to the client.
pub(crate) struct ResponseBody {
    kind: Kind,
    done: Completion,
    /// Fires when the app pauses longer than `response_timeout` between two parts of
    /// its body.
    stall: Stall,
}

/// The app stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the app sent nothing of its response body for {}ms", .0.as_millis())]
pub(crate) struct ResponseStalled(Duration);

/// The client stopped sending its request body.
#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of its request body for {}ms", .0.as_millis())]
pub(crate) struct BodyStalled(Duration);

impl ResponseBody {
    /// The app's body; `conn` goes back to the pool if the body is read to its end.
    pub(crate) fn upstream(
        body: Incoming,
        mut done: Completion,
        status: u16,
        guard: InFlight,
        conn: Option<Upstream>,
    ) -> ResponseBody {
        done.counted.status = status;
        done.upstream = Some((guard, conn));
        let stall = Stall::new(done.shared().cfg.response_timeout);
        ResponseBody {
            kind: Kind::Upstream(body),
            done,
            stall,
        }
    }

    /// A body made by the proxy (error page, or the empty body of a `101`).
    pub(crate) fn full(bytes: Bytes, mut done: Completion, status: u16) -> ResponseBody {
        done.counted.status = status;
        done.counted.delivered = true;
        let stall = Stall::new(done.shared().cfg.response_timeout);
        ResponseBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            done,
            stall,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => {
                // The body's bytes arrive through the connection: let it do its IO first.
                if let Some((_, Some(conn))) = this.done.upstream.as_mut() {
                    conn.poll_conn(cx);
                }
                let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) else {
                    // A pause: the app has `response_timeout` to send the next part.
                    if this.stall.poll_expired(cx).is_ready() {
                        let within = this.stall.within();
                        this.done
                            .shared()
                            .metrics
                            .upstream_error(UpstreamCause::ResponseTimeout);
                        this.done.counted.failed(ErrorCause::ResponseTimeout);
                        tracing::warn!(app = %this.done.shared().app, "the app stopped sending a response body for {}ms; closing the client connection", within.as_millis());
                        if let Some((_, conn)) = this.done.upstream.as_mut() {
                            *conn = None;
                        }
                        return Poll::Ready(Some(Err(Box::new(ResponseStalled(within)))));
                    }
                    return Poll::Pending;
                };
                this.stall.progressed();
                let frame = frame.map(|f| f.map_err(Self::Error::from));
                match &frame {
                    None => this.done.counted.delivered = true,
                    // A trailers frame is the last: hyper's server stops polling after it
                    // (the connection was neither returned nor the request counted whole).
                    Some(Ok(f)) => {
                        this.done.counted.delivered = f.is_trailers() || body.is_end_stream()
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "upstream response body failed");
                        this.done
                            .shared()
                            .metrics
                            .upstream_error(UpstreamCause::Reset);
                        this.done.counted.failed(ErrorCause::Reset);
                        // Never reuse a connection that failed mid-body.
                        if let Some((_, conn)) = this.done.upstream.as_mut() {
                            *conn = None;
                        }
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper may stop polling once `is_end_stream` says so, without a final `None`.
        if matches!(&self.kind, Kind::Upstream(body) if body.is_end_stream()) {
            self.done.counted.delivered = true;
        }
    }
}
