//! End-to-end tests of the proxy with real sockets on 127.0.0.1 (port 0): real hyper
//! upstreams, real clients. Waits are on conditions with deadlines, never bare sleeps.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot};

use windlass::health;
use windlass::proxy::{AppProxy, BackendId, ErrorCause, ProxyConfig, UpstreamCause};

// ---------------------------------------------------------------- helpers

/// Generous deadline for every condition wait: only reached when something is broken.
const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` until it holds; panics with `what` after [`DEADLINE`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A body of `remaining` bytes generated in 64 KiB chunks (nothing buffered).
struct Generated {
    remaining: u64,
    chunk: Bytes,
}

impl Generated {
    fn new(len: u64) -> Generated {
        Generated {
            remaining: len,
            chunk: Bytes::from(vec![b'x'; 64 * 1024]),
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

type ClientBody = BoxBody<Bytes, Infallible>;

fn empty() -> ClientBody {
    Full::new(Bytes::new()).boxed()
}

/// Counters of a test upstream.
#[derive(Default)]
struct Stats {
    accepted: AtomicUsize,
    open: AtomicUsize,
    started: AtomicUsize,
    finished: AtomicUsize,
}

/// A hyper server on 127.0.0.1:0 answering with its `version`. Routes:
/// `/` (optional `?delay_ms=N` of simulated work), `/gate` (waits for a permit),
/// `/close` (answers with `Connection: close`),
/// `/headers` (echoes request headers), `/status/N`, `/upload` (counts body bytes),
/// `/download/N` (N bytes), `/ws` (101 then echo), `/never` (no answer).
struct Upstream {
    addr: SocketAddr,
    stats: Arc<Stats>,
    gate: Arc<Semaphore>,
    stop: Option<oneshot::Sender<()>>,
}

impl Upstream {
    async fn start(version: &'static str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let stats = Arc::new(Stats::default());
        let gate = Arc::new(Semaphore::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (s, g) = (Arc::clone(&stats), Arc::clone(&gate));
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stopped => return,
                    r = listener.accept() => r.expect("upstream accept"),
                };
                stream.set_nodelay(true).expect("nodelay");
                s.accepted.fetch_add(1, SeqCst);
                s.open.fetch_add(1, SeqCst);
                let (s, g) = (Arc::clone(&s), Arc::clone(&g));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn({
                        let s = Arc::clone(&s);
                        move |req| route(version, Arc::clone(&s), Arc::clone(&g), req)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                    s.open.fetch_sub(1, SeqCst);
                });
            }
        });
        Upstream {
            addr,
            stats,
            gate,
            stop: Some(stop),
        }
    }

    /// Stops accepting (open connections live on until their peer closes them).
    fn stop_accepting(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn route(
    version: &'static str,
    stats: Arc<Stats>,
    gate: Arc<Semaphore>,
    mut req: Request<Incoming>,
) -> Result<Response<ClientBody>, Infallible> {
    stats.started.fetch_add(1, SeqCst);
    let path = req.uri().path().to_owned();
    let text = |status: u16, body: String| {
        Response::builder()
            .status(status)
            .header("x-version", version)
            .body(Full::new(Bytes::from(body)).boxed())
            .expect("valid response")
    };
    let response = if path == "/gate" {
        gate.acquire().await.expect("gate open").forget();
        text(200, version.into())
    } else if path == "/headers" {
        let mut out = String::new();
        for (k, v) in req.headers() {
            out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
        }
        let mut r = text(200, out);
        let h = r.headers_mut();
        h.insert("keep-alive", "timeout=5".parse().expect("hv"));
        h.insert("connection", "x-resp-hop".parse().expect("hv"));
        h.insert("x-resp-hop", "1".parse().expect("hv"));
        h.insert("x-resp-kept", "1".parse().expect("hv"));
        r
    } else if path == "/close" {
        let mut r = text(200, version.into());
        r.headers_mut()
            .insert("connection", "close".parse().expect("hv"));
        r
    } else if let Some(code) = path.strip_prefix("/status/") {
        text(code.parse().expect("status code"), version.into())
    } else if path == "/upload" {
        let mut n = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.expect("upload frame").into_data() {
                n += data.len() as u64;
            }
        }
        text(200, n.to_string())
    } else if let Some(n) = path.strip_prefix("/download/") {
        Response::new(Generated::new(n.parse().expect("length")).boxed())
    } else if path == "/ws" {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let upgraded = on_upgrade.await.expect("upstream upgrade");
            let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(empty())
            .expect("valid 101")
    } else if path == "/never" {
        std::future::pending::<()>().await;
        unreachable!()
    } else {
        if let Some(ms) = req.uri().query().and_then(|q| q.strip_prefix("delay_ms=")) {
            // Simulated work, so requests overlap with switches.
            tokio::time::sleep(Duration::from_millis(ms.parse().expect("ms"))).await;
        }
        text(200, version.into())
    };
    stats.finished.fetch_add(1, SeqCst);
    Ok(response)
}

/// A proxy for app "web" serving on 127.0.0.1:0 until the test ends.
async fn start_proxy(cfg: ProxyConfig) -> (AppProxy, SocketAddr) {
    let proxy = AppProxy::new("web", on_path(cfg));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let p = proxy.clone();
    tokio::spawn(async move { p.serve(listener, std::future::pending()).await });
    (proxy, addr)
}

fn quick_cfg() -> ProxyConfig {
    ProxyConfig {
        hold: Duration::from_secs(20),
        ..ProxyConfig::default()
    }
}

/// Registers `up` and puts it in rotation.
fn add_ready(proxy: &AppProxy, up: &Upstream) -> BackendId {
    let id = proxy.add_backend(up.addr);
    assert!(proxy.set_ready(id, true));
    id
}

/// A keep-alive HTTP/1.1 client connection.
async fn client(addr: SocketAddr) -> SendRequest<ClientBody> {
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    stream.set_nodelay(true).expect("nodelay");
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    tx
}

async fn send(
    tx: &mut SendRequest<ClientBody>,
    req: Request<ClientBody>,
) -> (StatusCode, http::HeaderMap, String) {
    tx.ready().await.expect("client connection ready");
    let resp = tx.send_request(req).await.expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

async fn get(tx: &mut SendRequest<ClientBody>, path: &str) -> (StatusCode, String) {
    let req = Request::get(path)
        .header("host", "example.test")
        .body(empty())
        .expect("request");
    let (status, _, body) = send(tx, req).await;
    (status, body)
}

/// One request on a new connection.
async fn get_once(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    get(&mut client(addr).await, path).await
}

// ---------------------------------------------------------------- the two paths

tokio::task_local! {
    /// Which request path the scenario being run takes (`proxy.plain_path`).
    static PLAIN: bool;
}

/// `cfg` with `plain_path` set for the scenario being run; only a scenario (listed in
/// [`scenarios!`]) starts a proxy, so each runs on both paths.
/// Whether the scenario being run takes the plain path.
fn on_plain_path() -> bool {
    PLAIN.get()
}

fn on_path(cfg: ProxyConfig) -> ProxyConfig {
    let plain_path = PLAIN
        .try_with(|p| *p)
        .expect("a proxy test is a scenario: list it in `scenarios!`");
    ProxyConfig { plain_path, ..cfg }
}

/// The table of proxy scenarios: each runs twice, as `NAME::plain_path` (plain requests
/// on the raw-socket path, the default) and `NAME::full_path` (`proxy.plain_path = false`:
/// every request through hyper), so the two codecs are held to one behaviour.
macro_rules! scenarios {
    (current: [$($c:ident),* $(,)?], multi: [$($m:ident),* $(,)?] $(,)?) => {
        $(mod $c {
            #[tokio::test]
            async fn plain_path() {
                super::PLAIN.scope(true, super::$c()).await
            }
            #[tokio::test]
            async fn full_path() {
                super::PLAIN.scope(false, super::$c()).await
            }
        })*
        $(mod $m {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn plain_path() {
                super::PLAIN.scope(true, super::$m()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn full_path() {
                super::PLAIN.scope(false, super::$m()).await
            }
        })*
    };
}

scenarios! {
    current: [
        basic_get_reuses_one_upstream_connection,
        forwards_x_forwarded_headers_and_strips_hop_by_hop,
        drain_waits_for_a_slow_in_flight_request,
        websocket_style_upgrade_echoes_through_the_proxy,
        drain_deadline_closes_a_lingering_upgraded_connection,
        held_request_succeeds_once_a_backend_becomes_ready,
        the_longest_hold_does_not_overflow,
        the_longest_drain_does_not_overflow,
        hold_timeout_answers_503_with_a_clear_page,
        refused_connection_is_retried_on_another_backend,
        refused_connection_waits_within_the_hold_for_a_ready_backend,
        metrics_count_classes_and_classify_upstream_errors,
        shutdown_stops_accepting_and_returns,
        upstream_connection_close_is_not_reused,
        unready_backend_gets_no_new_requests,
        least_outstanding_sends_new_requests_around_a_busy_backend,
        idle_client_connection_is_closed_after_the_idle_timeout,
        garbage_requests_get_an_error_not_a_crash,
        pooled_connection_closed_by_the_app_is_not_used,
        plain_path_passes_chunked_length_and_empty_bodies_on_one_upstream_connection,
        plain_path_head_responses_have_no_body_and_pipelined_requests_keep_their_order,
        plain_path_body_ended_by_the_app_closing_ends_the_client_connection,
        plain_path_sends_a_reset_request_again_but_not_one_a_single_instance_read,
        plain_path_rejects_a_malformed_response_with_a_502_page,
        a_connection_moves_to_the_full_path_at_its_first_request_with_a_body,
        plain_path_head_deadline_is_not_extended_by_trickling_bytes,
        only_trusted_proxies_pass_on_their_forwarded_proto_and_host,
        an_app_that_stops_sending_its_body_is_cut_off_after_the_response_timeout,
        a_client_that_stops_reading_does_not_hold_the_instance,
        untrusted_clients_cannot_spoof_forwarding_headers_on_either_path,
        an_error_answer_to_head_has_no_body_and_the_connection_stays_usable,
        a_head_that_never_ends_gets_a_408_on_the_plain_path,
        a_head_that_never_ends_gets_a_408_on_the_full_path,
        a_stalled_request_body_gets_a_408_and_lets_go_of_the_app_and_the_drain,
        a_request_the_app_read_before_dying_is_sent_once_to_the_other_instance,
        a_request_whose_replay_also_dies_is_a_poison_502_and_not_sent_a_third_time,
        a_put_with_a_small_body_the_app_read_before_dying_is_sent_with_it_to_the_other_instance,
        a_put_with_a_body_over_64_kib_the_app_read_before_dying_is_not_sent_again,
        a_small_put_body_read_to_be_kept_still_gets_a_408_when_it_stalls,
        a_post_whose_instance_died_after_reading_it_is_not_sent_again,
        no_request_is_smuggled_past_the_proxy,
        a_client_connection_close_does_not_close_the_upstream_connection,
        every_failure_is_counted_once_by_fault_and_cause,
    ],
    multi: [
        switch_under_concurrent_load_fails_no_request,
        large_streaming_upload_and_download_do_not_buffer,
    ],
}

// ---------------------------------------------------------------- tests

async fn basic_get_reuses_one_upstream_connection() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    let mut tx = client(addr).await;
    for _ in 0..50 {
        assert_eq!(get(&mut tx, "/").await, (StatusCode::OK, "a".into()));
    }
    assert_eq!(
        up.stats.accepted.load(SeqCst),
        1,
        "upstream keep-alive not reused"
    );
    wait_until("in-flight back to 0", || proxy.metrics().in_flight == 0).await;
    let m = proxy.metrics();
    assert_eq!(m.requests_of_class(2), 50);
    assert_eq!(m.backends[0].idle_connections, 1);
}

async fn forwards_x_forwarded_headers_and_strips_hop_by_hop() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    let req = Request::get("/headers")
        .header("host", "example.test")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-custom", "kept")
        .body(empty())
        .expect("request");
    let (status, headers, body) = send(&mut client(addr).await, req).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = body.lines().collect();
    for want in [
        "host: example.test",
        // An untrusted client's own X-Forwarded-For is dropped, not extended.
        "x-forwarded-for: 127.0.0.1",
        "x-forwarded-proto: http",
        "x-forwarded-host: example.test",
        "x-real-ip: 127.0.0.1",
        "x-custom: kept",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in {lines:?}");
    }
    for gone in [
        "x-hop",
        "keep-alive",
        "te",
        "proxy-connection",
        "connection",
        "upgrade",
    ] {
        assert!(
            !lines.iter().any(|l| l.starts_with(&format!("{gone}:"))),
            "{gone} forwarded: {lines:?}"
        );
    }
    assert!(!headers.contains_key("keep-alive"), "{headers:?}");
    assert!(!headers.contains_key("x-resp-hop"), "{headers:?}");
    assert_eq!(headers["x-resp-kept"], "1");
}

async fn switch_under_concurrent_load_fails_no_request() {
    const CLIENTS: usize = 8;
    const REQUESTS: usize = 150;
    const SWITCHES: usize = 6;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let mut current = Upstream::start("a").await;
    let mut current_id = add_ready(&proxy, &current);

    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let done = Arc::clone(&done);
        clients.push(tokio::spawn(async move {
            let mut tx = client(addr).await;
            let mut bad = Vec::new();
            for _ in 0..REQUESTS {
                let (status, body) = get(&mut tx, "/?delay_ms=1").await;
                if status != StatusCode::OK || !(body == "a" || body == "b") {
                    bad.push((status, body));
                }
                done.fetch_add(1, SeqCst);
            }
            bad
        }));
    }

    for k in 0..SWITCHES {
        // Switch while requests are flowing: wait for progress since the last switch.
        let seen = done.load(SeqCst);
        let target = (seen + 60).min(CLIENTS * REQUESTS);
        wait_until("clients made progress", || done.load(SeqCst) >= target).await;

        let version = if k % 2 == 0 { "b" } else { "a" };
        let next = Upstream::start(version).await;
        let next_id = proxy.add_backend(next.addr);
        health::HealthCheck::new(next.addr, Some("/".into()))
            .wait_healthy(DEADLINE)
            .await
            .expect("new instance healthy");
        proxy.replace(&[current_id], &[next_id]);
        let report = proxy.drain(current_id, DEADLINE).await;
        assert!(report.found && report.is_clean(), "{report:?}");
        let old = &current.stats;
        assert_eq!(
            old.started.load(SeqCst),
            old.finished.load(SeqCst),
            "drained backend still had requests running"
        );
        // Its pooled keep-alive connections are dropped, not kept for reuse.
        wait_until("old upstream connections closed", || {
            old.open.load(SeqCst) == 0
        })
        .await;
        current.stop_accepting();
        current = next;
        current_id = next_id;
    }

    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.expect("client task"));
    }
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(done.load(SeqCst), CLIENTS * REQUESTS);
    // A request is counted when its exchange ends, which may be just after the client has
    // read the answer: wait until every request is counted, whatever its class.
    let counted = || {
        (1..=5)
            .map(|c| proxy.metrics().requests_of_class(c))
            .sum::<u64>()
    };
    wait_until("every request counted", || {
        counted() >= (CLIENTS * REQUESTS) as u64
    })
    .await;
    let m = proxy.metrics();
    assert_eq!(m.requests_of_class(2), (CLIENTS * REQUESTS) as u64);
    assert_eq!(m.requests_of_class(5), 0);
}

async fn drain_waits_for_a_slow_in_flight_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let a_id = add_ready(&proxy, &a);
    let slow = tokio::spawn(get_once(addr, "/gate"));
    wait_until("slow request reached the upstream", || {
        a.stats.started.load(SeqCst) == 1
    })
    .await;

    let b_id = proxy.add_backend(b.addr);
    proxy.replace(&[a_id], &[b_id]);
    let drain = tokio::spawn(proxy.drain(a_id, DEADLINE));
    // New requests go to the new instance while the old one drains.
    assert_eq!(get_once(addr, "/").await, (StatusCode::OK, "b".into()));
    assert!(!drain.is_finished(), "drain ended with a request in flight");
    assert_eq!(
        proxy.backends().len(),
        1,
        "drained backend still registered"
    );

    a.gate.add_permits(1);
    assert_eq!(slow.await.expect("slow task"), (StatusCode::OK, "a".into()));
    let report = drain.await.expect("drain task");
    assert!(report.found, "{report:?}");
    assert_eq!(report.in_flight_at_start, 1, "{report:?}");
    assert!(report.is_clean(), "{report:?}");
}

/// Sends an upgrade request on a raw socket and returns it after the 101 head.
async fn upgrade(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: example.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .expect("write handshake");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.expect("read head");
        assert_eq!(
            n,
            1,
            "EOF in response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    s
}

async fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.expect("write");
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).await.expect("read echo");
    assert_eq!(buf, msg);
}

async fn websocket_style_upgrade_echoes_through_the_proxy() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    let mut s = upgrade(addr).await;
    echo(&mut s, b"hello").await;
    echo(&mut s, &[7u8; 100_000]).await;
    wait_until("upgrade counted", || proxy.metrics().upgraded_open == 1).await;
    drop(s);
    wait_until("upgrade closed", || proxy.metrics().upgraded_open == 0).await;
    let m = proxy.metrics();
    assert_eq!(m.upgrades_total, 1);
    assert_eq!(m.requests_of_class(1), 1);
    assert_eq!(m.backends[0].upgraded, 0);
}

async fn drain_deadline_closes_a_lingering_upgraded_connection() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let id = add_ready(&proxy, &up);
    let mut s = upgrade(addr).await;
    echo(&mut s, b"ping").await;
    let report = proxy.drain(id, Duration::from_millis(100)).await;
    assert!(report.timed_out, "{report:?}");
    assert_eq!(report.upgraded_at_start, 1, "{report:?}");
    assert_eq!(report.closed_upgraded, 1, "{report:?}");
    assert_eq!(report.remaining_requests, 0, "{report:?}");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("connection closed by the drain")
        .unwrap_or(0);
    assert_eq!(n, 0, "tunnel still open after the drain deadline");
}

async fn held_request_succeeds_once_a_backend_becomes_ready() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let id = proxy.add_backend(up.addr);
    let held = tokio::spawn(get_once(addr, "/"));
    wait_until("request is held", || proxy.metrics().in_flight == 1).await;
    assert!(!held.is_finished());
    proxy.set_ready(id, true);
    assert_eq!(held.await.expect("task"), (StatusCode::OK, "a".into()));
}

/// The library takes any `Duration` (validation caps the config's): the longest hold
/// saturates instead of overflowing the deadline.
async fn the_longest_hold_does_not_overflow() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(ProxyConfig {
        hold: Duration::MAX,
        ..quick_cfg()
    })
    .await;
    let id = proxy.add_backend(up.addr);
    let held = tokio::spawn(get_once(addr, "/"));
    wait_until("request is held", || proxy.metrics().in_flight == 1).await;
    proxy.set_ready(id, true);
    assert_eq!(held.await.expect("task"), (StatusCode::OK, "a".into()));
}

async fn the_longest_drain_does_not_overflow() {
    let up = Upstream::start("a").await;
    let (proxy, _addr) = start_proxy(quick_cfg()).await;
    let id = add_ready(&proxy, &up);
    let report = tokio::time::timeout(DEADLINE, proxy.drain(id, Duration::MAX))
        .await
        .expect("an idle backend drains at once");
    assert!(!report.timed_out, "{report:?}");
}

async fn hold_timeout_answers_503_with_a_clear_page() {
    let (proxy, addr) = start_proxy(ProxyConfig {
        hold: Duration::from_millis(100),
        ..ProxyConfig::default()
    })
    .await;
    let (status, body) = get_once(addr, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("no ready instance"), "{body}");
    assert!(body.contains("windlass status"), "{body}");
    assert!(body.contains("windlass logs web"), "{body}");
    let m = proxy.metrics();
    assert_eq!(m.upstream_errors.get(UpstreamCause::NoReadyBackend), 1);
    assert_eq!(m.requests_of_class(5), 1);
}

/// An address on which nothing listens.
async fn refusing_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

async fn refused_connection_is_retried_on_another_backend() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let dead = proxy.add_backend(refusing_addr().await);
    proxy.set_ready(dead, true);
    add_ready(&proxy, &up);
    let mut tx = client(addr).await;
    for _ in 0..10 {
        assert_eq!(get(&mut tx, "/").await, (StatusCode::OK, "a".into()));
    }
    let m = proxy.metrics();
    assert!(
        m.upstream_errors.connect_refused >= 1,
        "{:?}",
        m.upstream_errors
    );
    assert_eq!(m.requests_of_class(2), 10);
}

async fn refused_connection_waits_within_the_hold_for_a_ready_backend() {
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let dead = proxy.add_backend(refusing_addr().await);
    proxy.set_ready(dead, true);
    let req = tokio::spawn(async move {
        let mut tx = client(addr).await;
        // A body that must survive the failed attempts untouched.
        let req = Request::post("/upload")
            .header("host", "example.test")
            .body(Full::new(Bytes::from_static(b"0123456789")).boxed())
            .expect("request");
        send(&mut tx, req).await
    });
    wait_until("a refused attempt", || {
        proxy.metrics().upstream_errors.connect_refused >= 1
    })
    .await;
    let up = Upstream::start("a").await;
    let id = proxy.add_backend(up.addr);
    proxy.replace(&[dead], &[id]);
    let (status, _, body) = req.await.expect("task");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "10"));
}

async fn metrics_count_classes_and_classify_upstream_errors() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(ProxyConfig {
        hold: Duration::from_millis(100),
        response_timeout: Duration::from_millis(100),
        ..ProxyConfig::default()
    })
    .await;
    let id = add_ready(&proxy, &up);
    let mut tx = client(addr).await;
    for (path, code) in [
        ("/status/200", 200),
        ("/status/204", 204),
        ("/status/302", 302),
    ] {
        assert_eq!(get(&mut tx, path).await.0.as_u16(), code);
    }
    for (path, code) in [("/status/404", 404), ("/status/500", 500), ("/never", 504)] {
        assert_eq!(get(&mut tx, path).await.0.as_u16(), code);
    }
    proxy.drain(id, DEADLINE).await;
    let (status, _) = get(&mut tx, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    wait_until("in-flight back to 0", || proxy.metrics().in_flight == 0).await;
    let m = proxy.metrics();
    assert_eq!(m.requests_by_class, [0, 2, 1, 1, 3]);
    assert_eq!(m.upstream_errors.response_timeout, 1);
    assert_eq!(m.upstream_errors.no_ready_backend, 1);
    assert_eq!(m.upstream_errors.connect_refused, 0);
    assert_eq!(m.latency.count(), 7);
    assert_eq!(*m.latency.cumulative().last().expect("buckets"), 7);
    assert!(m.latency.sum_seconds > 0.0);
    assert!(m.backends.is_empty());
}

/// Peak RSS since the last reset, and current RSS, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("memory field")
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn large_streaming_upload_and_download_do_not_buffer() {
    const SIZE: u64 = 512 * 1024 * 1024;
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    // Reset the peak-RSS mark (Linux: "5" > clear_refs) so VmHWM covers this test only.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (_, rss_before) = memory_kib();

    let mut tx = client(addr).await;
    let req = Request::post("/upload")
        .header("host", "example.test")
        .body(Generated::new(SIZE).boxed())
        .expect("request");
    let (status, _, body) = send(&mut tx, req).await;
    assert_eq!((status, body), (StatusCode::OK, SIZE.to_string()));

    tx.ready().await.expect("ready");
    let req = Request::get(format!("/download/{SIZE}"))
        .header("host", "example.test")
        .body(empty())
        .expect("request");
    let resp = tx.send_request(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("download frame").into_data() {
            received += data.len() as u64;
        }
    }
    assert_eq!(received, SIZE);

    let (peak, _) = memory_kib();
    let growth_mib = peak.saturating_sub(rss_before) / 1024;
    eprintln!(
        "peak RSS growth while streaming: {growth_mib} MiB (before {rss_before} KiB, peak {peak} KiB)"
    );
    assert!(
        growth_mib < 64,
        "peak RSS grew by {growth_mib} MiB while streaming 2 x 512 MiB"
    );
}

async fn shutdown_stops_accepting_and_returns() {
    let up = Upstream::start("a").await;
    let proxy = AppProxy::new("web", on_path(quick_cfg()));
    add_ready(&proxy, &up);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let p = proxy.clone();
    let server = tokio::spawn(async move {
        p.serve(listener, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut tx = client(addr).await;
    assert_eq!(get(&mut tx, "/").await.0, StatusCode::OK);
    stop.send(()).expect("server running");
    tokio::time::timeout(DEADLINE, server)
        .await
        .expect("serve returned after shutdown")
        .expect("serve task");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

async fn upstream_connection_close_is_not_reused() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    let mut tx = client(addr).await;
    for _ in 0..5 {
        assert_eq!(get(&mut tx, "/close").await, (StatusCode::OK, "a".into()));
    }
    assert_eq!(up.stats.accepted.load(SeqCst), 5);
    assert_eq!(proxy.metrics().upstream_errors, Default::default());
}

async fn unready_backend_gets_no_new_requests() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let a_id = add_ready(&proxy, &a);
    add_ready(&proxy, &b);
    proxy.set_ready(a_id, false);
    let mut tx = client(addr).await;
    for _ in 0..10 {
        assert_eq!(get(&mut tx, "/").await, (StatusCode::OK, "b".into()));
    }
    assert_eq!(a.stats.started.load(SeqCst), 0);
}

async fn least_outstanding_sends_new_requests_around_a_busy_backend() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &a);
    add_ready(&proxy, &b);
    // Park one request on whichever backend it lands on, then the rest avoid it.
    let slow = tokio::spawn(get_once(addr, "/gate"));
    wait_until("gate request arrived", || {
        a.stats.started.load(SeqCst) + b.stats.started.load(SeqCst) == 1
    })
    .await;
    let (busy, free) = if a.stats.started.load(SeqCst) == 1 {
        (&a, "b")
    } else {
        (&b, "a")
    };
    let mut tx = client(addr).await;
    for _ in 0..10 {
        assert_eq!(get(&mut tx, "/").await, (StatusCode::OK, free.into()));
    }
    busy.gate.add_permits(1);
    assert_eq!(slow.await.expect("task").0, StatusCode::OK);
}

async fn idle_client_connection_is_closed_after_the_idle_timeout() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(ProxyConfig {
        idle_timeout: Duration::from_millis(100),
        ..quick_cfg()
    })
    .await;
    add_ready(&proxy, &up);
    // A connection that sends nothing, and one idle after a request (on each path): both
    // closed silently, as nginx does (a head that has begun gets a 408 instead).
    let silent = TcpStream::connect(addr).await.expect("connect");
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut full = TcpStream::connect(addr).await.expect("connect");
    full.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        .await
        .expect("write");
    for (what, mut s) in [("silent", silent), ("plain", plain), ("full", full)] {
        let mut buf = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{what}: connection closed by the proxy"))
            .expect("read");
        let got = String::from_utf8_lossy(&buf);
        assert!(!got.contains("408"), "{what}: {got}");
        if what != "silent" {
            assert!(got.starts_with("HTTP/1.1 200"), "{what}: {got}");
        }
    }
}

async fn garbage_requests_get_an_error_not_a_crash() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    for garbage in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: ,,\xff\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(garbage).await.expect("write");
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{:?} not closed: got {:?}",
                    String::from_utf8_lossy(garbage),
                    String::from_utf8_lossy(&buf)
                )
            });
    }
    // The proxy still serves.
    assert_eq!(get_once(addr, "/").await, (StatusCode::OK, "a".into()));
}

/// An upstream that answers one request per connection and then closes it without
/// saying so (as an app's keep-alive timeout firing right after a response).
async fn one_shot_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, SeqCst);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nz")
                    .await;
            });
        }
    });
    (addr, accepted)
}

async fn pooled_connection_closed_by_the_app_is_not_used() {
    let (up, accepted) = one_shot_upstream().await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let id = proxy.add_backend(up);
    proxy.set_ready(id, true);
    let mut tx = client(addr).await;
    for _ in 0..5 {
        assert_eq!(get(&mut tx, "/").await, (StatusCode::OK, "z".into()));
    }
    assert_eq!(accepted.load(SeqCst), 5);
    assert_eq!(proxy.metrics().upstream_errors, Default::default());
}

// ---------------------------------------------------------------- the plain-request path
// Bodiless GET/HEAD/OPTIONS/DELETE requests are proxied on raw sockets (src/proxy/fast.rs);
// these tests pin its framing, reuse and failure rules against scripted upstreams.

/// What a scripted upstream does with the next request head on a connection.
#[derive(Clone, Copy)]
enum Act {
    /// Writes these bytes and reads the next request.
    Reply(&'static [u8]),
    /// Writes these bytes and closes the connection.
    ReplyAndClose(&'static [u8]),
    /// Closes the connection without reading the request: the kernel resets it.
    Reset,
    /// Reads the request, then closes the connection cleanly without answering.
    Hangup,
}

/// An upstream that plays `script[i]` on its i-th connection; counts connections and
/// request heads read.
async fn scripted_upstream(script: Vec<Vec<Act>>) -> (SocketAddr, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(Stats::default());
    let st = Arc::clone(&stats);
    tokio::spawn(async move {
        let mut script = script.into_iter();
        while let Ok((mut s, _)) = listener.accept().await {
            st.accepted.fetch_add(1, SeqCst);
            let acts = script.next().unwrap_or_default();
            let st = Arc::clone(&st);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                for act in acts {
                    if let Act::Reset = act {
                        // Wait for the request to arrive, and leave it unread.
                        let _ = s.readable().await;
                        return;
                    }
                    // Read one request head (the requests here have no body).
                    let mut buf = [0u8; 4096];
                    let end = loop {
                        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    };
                    pending.drain(..end);
                    st.started.fetch_add(1, SeqCst);
                    match act {
                        Act::Reply(bytes) => s.write_all(bytes).await.expect("reply"),
                        Act::ReplyAndClose(bytes) => {
                            s.write_all(bytes).await.expect("reply");
                            return;
                        }
                        Act::Hangup | Act::Reset => return,
                    }
                }
                // Script done: keep the connection open until the proxy closes it.
                let _ = s.read(&mut [0u8; 1]).await;
            });
        }
    });
    (addr, stats)
}

async fn proxy_to(up: SocketAddr) -> (AppProxy, SocketAddr) {
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    let id = proxy.add_backend(up);
    assert!(proxy.set_ready(id, true));
    (proxy, addr)
}

async fn request(
    tx: &mut SendRequest<ClientBody>,
    method: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "example.test")
        .body(empty())
        .expect("request");
    send(tx, req).await
}

async fn plain_path_passes_chunked_length_and_empty_bodies_on_one_upstream_connection() {
    let (up, stats) = scripted_upstream(vec![vec![
        Act::Reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nWiki\r\n6;ext=1\r\npedia!\r\n0\r\nx-trailer: 1\r\n\r\n"),
        Act::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nkeep-alive: timeout=5\r\nconnection: keep-alive\r\n\r\nhello"),
        Act::Reply(b"HTTP/1.1 204 No Content\r\n\r\n"),
        Act::Reply(b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ]])
    .await;
    let (proxy, addr) = proxy_to(up).await;
    let mut tx = client(addr).await;
    let (status, _, body) = request(&mut tx, "GET", "/chunked").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Wikipedia!"));
    let (status, headers, body) = request(&mut tx, "GET", "/length").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    assert!(headers.get("keep-alive").is_none(), "{headers:?}");
    assert!(headers.get("connection").is_none(), "{headers:?}");
    let (status, _, body) = request(&mut tx, "DELETE", "/empty").await;
    assert_eq!((status, body.as_str()), (StatusCode::NO_CONTENT, ""));
    let (status, _, body) = request(&mut tx, "GET", "/hints").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(
        stats.accepted.load(SeqCst),
        1,
        "one upstream connection for all"
    );
    assert_eq!(stats.started.load(SeqCst), 4);
    assert_eq!(proxy.metrics().upstream_errors, Default::default());
}

async fn plain_path_head_responses_have_no_body_and_pipelined_requests_keep_their_order() {
    let (up, stats) = scripted_upstream(vec![vec![
        Act::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        Act::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\none"),
        Act::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\ntwo"),
    ]])
    .await;
    let (_proxy, addr) = proxy_to(up).await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // Three requests in one write; the last asks to close, so the proxy ends the stream.
    s.write_all(
        b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("the proxy closes after the last request")
        .expect("read");
    let got = String::from_utf8_lossy(&got);
    let parts: Vec<&str> = got.split("HTTP/1.1 200 OK\r\n").collect();
    assert_eq!(parts.len(), 4, "{got}");
    assert_eq!(
        parts[1], "content-length: 5\r\n\r\n",
        "HEAD: no body: {got}"
    );
    assert_eq!(parts[2], "content-length: 3\r\n\r\none", "{got}");
    assert_eq!(
        parts[3], "content-length: 3\r\nconnection: close\r\n\r\ntwo",
        "{got}"
    );
    assert_eq!(stats.accepted.load(SeqCst), 1);
}

async fn plain_path_body_ended_by_the_app_closing_ends_the_client_connection() {
    let (up, stats) = scripted_upstream(vec![
        vec![Act::ReplyAndClose(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
        )],
        vec![Act::Reply(
            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext",
        )],
    ])
    .await;
    let (_proxy, addr) = proxy_to(up).await;
    if on_plain_path() {
        // The plain path relays the bytes as they come, so it can end such a body for the
        // client only the way the app did: by closing.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut got = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
            .await
            .expect("closed after a close-delimited body")
            .expect("read");
        assert_eq!(
            String::from_utf8_lossy(&got),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nuntil the end"
        );
    } else {
        // hyper re-frames it (chunked), and the client's connection carries on.
        let mut tx = client(addr).await;
        let (status, _, body) = request(&mut tx, "GET", "/").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "until the end"));
    }
    assert_eq!(get_once(addr, "/").await, (StatusCode::OK, "next".into()));
    assert_eq!(
        stats.accepted.load(SeqCst),
        2,
        "that connection was not reused"
    );
}

async fn plain_path_sends_a_reset_request_again_but_not_one_a_single_instance_read() {
    // Reset before reading: sent again on a fresh connection, the client sees nothing.
    let (up, stats) = scripted_upstream(vec![
        vec![Act::Reset],
        vec![Act::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nz")],
    ])
    .await;
    let (proxy, addr) = proxy_to(up).await;
    assert_eq!(get_once(addr, "/").await, (StatusCode::OK, "z".into()));
    assert_eq!(stats.accepted.load(SeqCst), 2);
    assert_eq!(proxy.metrics().upstream_errors.reset, 1);

    // Read, then a clean close without an answer, by the app's only instance: maybe a
    // query of death, and the only other instance is its restart; a 502.
    let (up, stats) = scripted_upstream(vec![
        vec![Act::Hangup],
        vec![Act::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nz")],
    ])
    .await;
    let (proxy, addr) = proxy_to(up).await;
    let (status, body) = get_once(addr, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("did not answer"), "{body}");
    assert_eq!(stats.accepted.load(SeqCst), 1, "not sent again");
    assert_eq!(proxy.metrics().upstream_errors.reset, 1);
    assert_eq!(proxy.metrics().poison_requests, 0);
}

async fn plain_path_rejects_a_malformed_response_with_a_502_page() {
    let (up, _stats) = scripted_upstream(vec![vec![Act::Reply(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nzz",
    )]])
    .await;
    let (_proxy, addr) = proxy_to(up).await;
    let mut tx = client(addr).await;
    let (status, headers, body) = request(&mut tx, "GET", "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("The app sent an invalid response."), "{body}");
    // The detail names the fault in each codec's words ("conflicting Content-Length
    // headers", hyper's "invalid content-length parsed").
    assert!(body.to_lowercase().contains("content-length"), "{body}");
    assert!(body.contains("windlass logs web"), "{body}");
    assert_eq!(headers["cache-control"], "no-store");
}

async fn a_connection_moves_to_the_full_path_at_its_first_request_with_a_body() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    let mut tx = client(addr).await;
    assert_eq!(get(&mut tx, "/").await, (StatusCode::OK, "a".into()));
    let req = Request::post("/upload")
        .header("host", "example.test")
        .body(Full::new(Bytes::from_static(b"0123456789")).boxed())
        .expect("request");
    let (status, _, body) = send(&mut tx, req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "10"));
    // Plain requests after it are still served on the same connection.
    for _ in 0..3 {
        assert_eq!(get(&mut tx, "/").await, (StatusCode::OK, "a".into()));
    }
}

async fn plain_path_head_deadline_is_not_extended_by_trickling_bytes() {
    let (_proxy, addr) = start_proxy(ProxyConfig {
        header_timeout: Duration::from_millis(300),
        ..quick_cfg()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // One byte every 50 ms would keep a per-read deadline alive for ever.
    let closed = async {
        for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            let mut probe = [0u8; 1];
            if let Ok(Ok(0) | Err(_)) =
                tokio::time::timeout(Duration::from_millis(50), s.read(&mut probe)).await
            {
                return;
            }
        }
    };
    // A per-read deadline would never fire, and this would hit the test deadline.
    tokio::time::timeout(DEADLINE, closed)
        .await
        .expect("the proxy closes a head that never ends");
}

async fn only_trusted_proxies_pass_on_their_forwarded_proto_and_host() {
    let up = Upstream::start("a").await;
    for trusted in [false, true] {
        let (proxy, addr) = start_proxy(ProxyConfig {
            trusted_proxies: if trusted {
                vec!["127.0.0.0/8".parse().expect("range")]
            } else {
                vec!["10.0.0.0/8".parse().expect("range")]
            },
            ..quick_cfg()
        })
        .await;
        add_ready(&proxy, &up);
        let mut tx = client(addr).await;
        // A plain GET (raw path), then a request with a body (hyper path).
        for body in ["", "a body"] {
            let req = Request::builder()
                .method(if body.is_empty() { "GET" } else { "POST" })
                .uri("/headers")
                .header("host", "internal:8080")
                .header("x-forwarded-proto", "https")
                .header("x-forwarded-host", "example.com")
                .header("x-forwarded-for", "203.0.113.9")
                .body(Full::new(Bytes::from(body)).boxed())
                .expect("request");
            let (status, _, echoed) = send(&mut tx, req).await;
            assert_eq!(status, StatusCode::OK);
            let lines: Vec<&str> = echoed.lines().collect();
            let want: &[&str] = if trusted {
                &["x-forwarded-proto: https", "x-forwarded-host: example.com"]
            } else {
                &["x-forwarded-proto: http", "x-forwarded-host: internal:8080"]
            };
            let forwarded_for: &[&str] = if trusted {
                &["x-forwarded-for: 203.0.113.9, 127.0.0.1"]
            } else {
                &["x-forwarded-for: 127.0.0.1"]
            };
            for w in want.iter().chain(forwarded_for) {
                assert!(
                    lines.contains(w),
                    "trusted={trusted} body={body:?}: missing {w:?} in {lines:?}"
                );
            }
            assert_eq!(
                lines
                    .iter()
                    .filter(|l| l.starts_with("x-forwarded-proto:"))
                    .count(),
                1,
                "{lines:?}"
            );
        }
    }
}

async fn an_app_that_stops_sending_its_body_is_cut_off_after_the_response_timeout() {
    // The same partial response for a plain GET (raw path) and a POST (hyper path).
    const PARTIAL: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello";
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
    ] {
        let (up, _stats) = scripted_upstream(vec![vec![Act::Reply(PARTIAL)]]).await;
        let (proxy, addr) = start_proxy(ProxyConfig {
            response_timeout: Duration::from_millis(300),
            ..quick_cfg()
        })
        .await;
        let id = proxy.add_backend(up);
        assert!(proxy.set_ready(id, true));
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        let mut got = Vec::new();
        // Without the body timeout this would wait for ever (the app keeps its socket open).
        let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
            .await
            .expect("the proxy closes the stalled response");
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 200 OK") && got.ends_with("hello"),
            "{got}"
        );
        assert_eq!(proxy.metrics().upstream_errors.response_timeout, 1, "{got}");
    }
}

async fn a_client_that_stops_reading_does_not_hold_the_instance() {
    // A plain GET (raw path), then a POST (hyper path), each for 1 GiB that the client
    // never reads: the socket buffers fill and the proxy's writes stall.
    for (n, request) in [
        &b"GET /download/1073741824 HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"POST /download/1073741824 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
    ]
    .into_iter()
    .enumerate()
    {
        let up = Upstream::start("a").await;
        let (proxy, addr) = start_proxy(ProxyConfig {
            idle_timeout: Duration::from_millis(300),
            ..quick_cfg()
        })
        .await;
        add_ready(&proxy, &up);
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(request).await.expect("write");
        wait_until("the request reached the app", || {
            up.stats.started.load(SeqCst) == 1
        })
        .await;
        wait_until(
            &format!("request {n}: the stalled client was let go"),
            || proxy.backends().iter().all(|b| b.in_flight == 0),
        )
        .await;
        drop(s);
    }
}

// ---------------------------------------------------------------- issue 10: request-level hardening

/// The forwarding headers a client may try to spoof, with the values it claims.
const SPOOFED: [(&str, &str); 19] = [
    (
        "forwarded",
        "for=203.0.113.66;proto=https;host=evil.example",
    ),
    ("x-forwarded-for", "203.0.113.66"),
    ("x-forwarded-port", "8443"),
    ("x-forwarded-ssl", "on"),
    ("x-forwarded-scheme", "https"),
    ("x-forwarded-prefix", "/admin"),
    ("x-forwarded-server", "evil.example"),
    ("x-real-ip", "203.0.113.66"),
    ("x_forwarded_proto", "https"),
    ("client-ip", "203.0.113.66"),
    ("true-client-ip", "203.0.113.66"),
    ("cf-connecting-ip", "203.0.113.66"),
    ("x-client-ip", "203.0.113.66"),
    ("x-cluster-client-ip", "203.0.113.66"),
    ("fastly-client-ip", "203.0.113.66"),
    ("x-original-forwarded-for", "203.0.113.66"),
    ("x-originating-ip", "203.0.113.66"),
    ("x-remote-ip", "203.0.113.66"),
    ("x-remote-addr", "203.0.113.66"),
];

async fn untrusted_clients_cannot_spoof_forwarding_headers_on_either_path() {
    let up = Upstream::start("a").await;
    for trusted in [false, true] {
        let (proxy, addr) = start_proxy(ProxyConfig {
            trusted_proxies: if trusted {
                vec!["127.0.0.0/8".parse().expect("range")]
            } else {
                vec!["10.0.0.0/8".parse().expect("range")]
            },
            ..quick_cfg()
        })
        .await;
        add_ready(&proxy, &up);
        let mut tx = client(addr).await;
        // A plain GET (raw path), then a POST with a body (hyper path), then a GET again
        // (the connection stays on the hyper path).
        for body in ["", "a body", ""] {
            let mut req = Request::builder()
                .method(if body.is_empty() { "GET" } else { "POST" })
                .uri("/headers")
                .header("host", "example.test");
            for (name, value) in SPOOFED {
                req = req.header(name, value).header(name.to_uppercase(), value);
            }
            let req = req
                .body(Full::new(Bytes::from(body)).boxed())
                .expect("request");
            let (status, _, echoed) = send(&mut tx, req).await;
            assert_eq!(status, StatusCode::OK);
            let lines: Vec<&str> = echoed.lines().collect();
            let ctx = format!("trusted={trusted} body={body:?}: {lines:#?}");
            if trusted {
                for want in [
                    "forwarded: for=203.0.113.66;proto=https;host=evil.example",
                    "x-forwarded-port: 8443",
                    "x-forwarded-ssl: on",
                    "x-forwarded-scheme: https",
                    "x-forwarded-prefix: /admin",
                    "x-real-ip: 203.0.113.66",
                    "x-forwarded-for: 203.0.113.66, 203.0.113.66, 127.0.0.1",
                    "true-client-ip: 203.0.113.66",
                    "cf-connecting-ip: 203.0.113.66",
                ] {
                    assert!(lines.contains(&want), "missing {want:?}; {ctx}");
                }
            } else {
                for want in [
                    "x-forwarded-for: 127.0.0.1",
                    "x-real-ip: 127.0.0.1",
                    "x-forwarded-proto: http",
                    "x-forwarded-host: example.test",
                ] {
                    assert!(lines.contains(&want), "missing {want:?}; {ctx}");
                }
                assert!(!echoed.contains("203.0.113.66"), "{ctx}");
                assert!(!echoed.contains("evil.example"), "{ctx}");
                for gone in [
                    "forwarded:",
                    "x-forwarded-port:",
                    "x-forwarded-ssl:",
                    "x-forwarded-scheme:",
                    "x-forwarded-prefix:",
                    "x-forwarded-server:",
                    "x_forwarded_proto:",
                ] {
                    assert!(
                        !lines.iter().any(|l| l.starts_with(gone)),
                        "{gone} reached the app; {ctx}"
                    );
                }
                for once in ["x-forwarded-for:", "x-real-ip:", "x-forwarded-proto:"] {
                    let n = lines.iter().filter(|l| l.starts_with(once)).count();
                    assert_eq!(n, 1, "{once}; {ctx}");
                }
            }
        }
    }
}

/// Reads one response from `s` (head, then a `content-length` body unless `head_only`);
/// returns the head and the body.
async fn read_response(
    s: &mut TcpStream,
    pending: &mut Vec<u8>,
    head_only: bool,
) -> (String, String) {
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a whole head: {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
    pending.drain(..end);
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().expect("length"))
        })
        .unwrap_or(0);
    let len = if head_only { 0 } else { len };
    while pending.len() < len {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("a body in time")
            .expect("read");
        assert!(n > 0, "closed in the body");
        pending.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&pending[..len]).into_owned();
    pending.drain(..len);
    (head, body)
}

async fn an_error_answer_to_head_has_no_body_and_the_connection_stays_usable() {
    // No instance: each request is held, then answered by the proxy's 503 page.
    let (_proxy, addr) = start_proxy(ProxyConfig {
        hold: Duration::from_millis(50),
        ..quick_cfg()
    })
    .await;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: mine-1\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut pending = Vec::new();
    let (head_answer, _) = read_response(&mut s, &mut pending, true).await;
    assert!(head_answer.starts_with("HTTP/1.1 503 "), "{head_answer}");
    // Right after the HEAD answer's head comes the GET's answer, not a page.
    let (head, body) = read_response(&mut s, &mut pending, false).await;
    assert!(
        head.starts_with("HTTP/1.1 503 "),
        "HEAD answer had a body? {head}{body}"
    );
    assert!(head.contains("x-request-id: mine-1\r\n"), "{head}");
    assert!(body.starts_with("503 Service Unavailable\n"), "{body}");
    assert!(body.contains("Request id: mine-1\n"), "{body}");
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("closed after the last answer")
        .expect("read");
    assert_eq!(pending, b"", "bytes after the last answer");
    assert!(
        rest.is_empty(),
        "bytes after the last answer: {:?}",
        String::from_utf8_lossy(&rest)
    );
    assert!(head_answer.contains("x-request-id: "), "{head_answer}");
}

/// Sends `head` a byte at a time (every 20 ms) until the proxy closes the connection;
/// returns everything it answered.
async fn trickle(s: TcpStream, head: &'static [u8]) -> String {
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        for b in head.iter().cycle() {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, r.read_to_end(&mut got))
        .await
        .expect("the proxy closes a head that never ends");
    writer.abort();
    String::from_utf8_lossy(&got).into_owned()
}

fn slow_head_cfg() -> ProxyConfig {
    ProxyConfig {
        header_timeout: Duration::from_millis(500),
        ..quick_cfg()
    }
}

async fn a_head_that_never_ends_gets_a_408_on_the_plain_path() {
    let (_proxy, addr) = start_proxy(slow_head_cfg()).await;
    let s = TcpStream::connect(addr).await.expect("connect");
    let got = trickle(s, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    assert!(
        got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{got:?}"
    );
    assert!(got.contains("connection: close\r\n"), "{got:?}");
}

async fn a_head_that_never_ends_gets_a_408_on_the_full_path() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(slow_head_cfg()).await;
    add_ready(&proxy, &up);
    // A request with a body moves the connection to the hyper path; the next head trickles.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        .await
        .expect("write");
    let (head, body) = read_response(&mut s, &mut Vec::new(), false).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "3");
    let got = trickle(s, b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    assert!(
        got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{got:?}"
    );

    // A head too large for the plain path moves there unfinished, and still times out.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    while big.len() < 70 * 1024 {
        big.extend_from_slice(b"X-Filler: ");
        big.extend_from_slice(&[b'f'; 4000]);
        big.extend_from_slice(b"\r\n");
    }
    s.write_all(&big).await.expect("write");
    let got = trickle(s, b"X-More: 1\r\n").await;
    assert!(
        got.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{got:?}"
    );
}

/// An upstream that reads a request head and the part of its body that came with it, then
/// waits for the proxy to close the connection, and reports that it saw the end.
async fn body_waiting_upstream() -> (SocketAddr, Arc<Stats>, oneshot::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stats = Arc::new(Stats::default());
    let st = Arc::clone(&stats);
    let (eof_tx, eof_rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        st.accepted.fetch_add(1, SeqCst);
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        st.started.store(1, SeqCst);
                    }
                }
            }
        }
        let _ = eof_tx.send(());
    });
    (addr, stats, eof_rx)
}

async fn a_stalled_request_body_gets_a_408_and_lets_go_of_the_app_and_the_drain() {
    let (up, stats, upstream_eof) = body_waiting_upstream().await;
    // Long enough for the drain below to start while the request is still in flight.
    let (proxy, addr) = start_proxy(ProxyConfig {
        body_timeout: Duration::from_secs(1),
        ..quick_cfg()
    })
    .await;
    let id = proxy.add_backend(up);
    assert!(proxy.set_ready(id, true));
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // 3 bytes of 10, then nothing.
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .expect("write");
    wait_until("the request reached the app", || {
        stats.started.load(SeqCst) == 1
    })
    .await;
    // A reload's drain of this instance waits for the request, and only until it ends.
    let report = tokio::spawn(proxy.drain(id, DEADLINE * 2));
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("the proxy ends the stalled exchange")
        .expect("read");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    tokio::time::timeout(DEADLINE, upstream_eof)
        .await
        .expect("the app's connection is closed")
        .expect("upstream task");
    let report = tokio::time::timeout(DEADLINE, report)
        .await
        .expect("the drain ends")
        .expect("drain task");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.in_flight_at_start, 1, "{report:?}");
    assert_eq!(proxy.metrics().in_flight, 0);
}

/// A network namespace joined to this one by a veth pair with addresses from
/// 198.18.0.0/15 (RFC 2544 benchmarking): a client that is not on loopback. Removed when
/// dropped, also on a panic. Not TEST-NET-1: this machine's own eth0 is 192.0.2.2/24, and
/// a /30 there took its address (and could shadow its gateway).
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id() % 10_000;
        // A /30 per test process, so parallel runs do not collide.
        let (third, fourth) = (id / 64, 4 * (id % 64));
        let ns = Netns {
            name: format!("wl-req-{id}"),
            host_if: format!("wlq{id}h"),
            host_ip: format!("198.18.{third}.{}", fourth + 1),
        };
        let peer_if = format!("wlq{id}n");
        let peer_ip = format!("198.18.{third}.{}", fourth + 2);
        let taken = std::process::Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .expect("run `ip` (package iproute2)");
        let taken = String::from_utf8_lossy(&taken.stdout);
        for addr in [&ns.host_ip, &peer_ip] {
            assert!(
                !taken.contains(&format!(" {addr}/")),
                "{addr} is already an address of this machine: {taken}"
            );
        }
        // Left over from a run that was killed: removed first.
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &ns.host_if])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns.name])
            .output();
        for args in [
            vec!["netns", "add", &ns.name],
            vec![
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &peer_if,
            ],
            vec!["link", "set", &peer_if, "netns", &ns.name],
            vec![
                "addr",
                "add",
                &format!("{}/30", ns.host_ip),
                "dev",
                &ns.host_if,
            ],
            vec!["link", "set", &ns.host_if, "up"],
        ] {
            ns.ip(&args);
        }
        for args in [
            vec!["addr", "add", &format!("{peer_ip}/30"), "dev", &peer_if],
            vec!["link", "set", &peer_if, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend(args);
            ns.ip(&all);
        }
        ns
    }

    fn ip(&self, args: &[&str]) {
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .expect("run `ip` (package iproute2)");
        assert!(
            out.status.success(),
            "ip {}: {} (this test needs root, as CI runs it)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `curl -i` from inside the namespace; returns (status, headers, body).
    fn curl(&self, url: &str) -> (u16, String, String) {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.name,
                "curl",
                "-sS",
                "-i",
                "--max-time",
                "60",
                url,
            ])
            .output()
            .expect("run curl in the namespace");
        let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or_else(|| {
            panic!(
                "curl {url}: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("curl {url}: {text:?}"));
        (status, head.to_ascii_lowercase(), body.to_owned())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// An app whose health check passes and which resets every other request after reading
/// it, so the proxy's answer is a 502 whose cause is an OS error.
const RESETTING_APP: &str = r#"
import os, socket, struct, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(64)
def serve(c):
    buf = b""
    while True:
        while b"\r\n\r\n" not in buf:
            d = c.recv(65536)
            if not d:
                c.close()
                return
            buf += d
        head, _, buf = buf.partition(b"\r\n\r\n")
        if head.startswith(b"GET /health "):
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        else:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            return
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

#[test]
fn error_pages_tell_a_stranger_only_what_failed_and_a_request_id() {
    use crate::helper;
    let port = helper::free_port();
    let p = helper::Project::new(&format!(
        "[app.secretapp]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\nbind = \"0.0.0.0\"\n\
         health = {{ path = \"/health\" }}\n"
    ));
    p.write("app.py", RESETTING_APP);
    let _sup = p.up(&[]);
    helper::wait_for("the app behind the proxy", helper::DEADLINE, || {
        helper::http_get(port, "/health")
            .ok()
            .filter(|(c, _)| *c == 200)
    });
    let ns = Netns::new();

    // From another machine (the namespace): one line and a request id, nothing inside.
    let (status, head, body) = ns.curl(&format!("http://{}:{port}/boom", ns.host_ip));
    assert_eq!(status, 502, "{head}{body}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no x-request-id: {head}"))
        .trim()
        .to_owned();
    assert_eq!(
        body,
        format!("502 Bad Gateway\n\nThe app did not answer.\nRequest id: {id}\n")
    );
    for secret in ["127.0.0.1", "os error", "reset", "secretapp", "windlass"] {
        assert!(!body.to_lowercase().contains(secret), "{secret} in {body}");
    }

    // From this machine: the detail too, with its own request id (the client's here).
    let (status, local) =
        helper::http_request(port, "GET", "/boom", &[("X-Request-Id", "local-1")])
            .expect("request");
    assert_eq!(status, 502, "{local}");
    assert!(local.contains("Request id: local-1\n"), "{local}");
    assert!(local.contains("127.0.0.1:"), "{local}");
    assert!(local.contains("os error"), "{local}");
    assert!(local.contains("windlass logs secretapp"), "{local}");
    // A query (which may carry a token) is left out of the log, on both paths (a POST
    // goes the full way).
    for (method, rid) in [("GET", "local-q1"), ("POST", "local-q2")] {
        let (status, _) = helper::http_request(
            port,
            method,
            "/boom?token=sk_live_QUERYSECRET",
            &[("X-Request-Id", rid)],
        )
        .expect("request");
        assert_eq!(status, 502);
    }

    // The app's log has the detail of each, under the ids the clients saw.
    for id in [id.as_str(), "local-1", "local-q1", "local-q2"] {
        let line = helper::wait_for("the failure in the app's log", helper::DEADLINE, || {
            p.log_lines("secretapp")
                .into_iter()
                .find(|l| l.contains(&format!("(request id {id})")))
        });
        assert!(line.contains(" windlass "), "{line}");
        assert!(line.contains(" Bad Gateway for "), "{line}");
        assert!(line.contains(" /boom "), "{line}");
        assert!(!line.contains("QUERYSECRET"), "{line}");
        assert!(
            line.contains("127.0.0.1:") && line.contains("os error"),
            "{line}"
        );
    }
}

/// An app that answers its health check, and for a POST says so on stdout and reads the
/// body (a stalled upload holds one of its threads).
const UPLOAD_APP: &str = r#"
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def do_POST(self):
        print(f"upload started pid={os.getpid()}", flush=True)
        n = len(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.send_header("Content-Length", str(len(str(n))))
        self.end_headers()
        self.wfile.write(str(n).encode())
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

#[test]
fn a_stalled_upload_does_not_hold_a_reload() {
    use crate::helper;
    use std::io::{Read, Write};
    let port = helper::free_port();
    // The drain would wait up to the stop timeout (80 s) for the request; the body timeout
    // leaves the new instance time to start while the request is still in flight.
    let p = helper::Project::new(&format!(
        "[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\n\
         health = {{ path = \"/health\" }}\nstop = {{ timeout = \"80s\" }}\n\
         proxy = {{ body_timeout = \"5s\" }}\n"
    ));
    p.write("app.py", UPLOAD_APP);
    let _sup = p.up(&[]);
    helper::wait_for("the app behind the proxy", helper::DEADLINE, || {
        helper::http_get(port, "/health")
            .ok()
            .filter(|(c, _)| *c == 200)
    });
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(helper::DEADLINE)).expect("timeout");
    // 3 bytes of 10, then nothing.
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .expect("write");
    helper::wait_for("the upload reached the app", helper::DEADLINE, || {
        p.log_lines("web")
            .into_iter()
            .find(|l| l.contains("upload started"))
    });
    let o = p.run(&["reload", "web"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("old drained (1 request(s) in flight)"),
        "{out}"
    );
    assert!(!out.contains("deadline reached"), "{out}");
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("the proxy closes the stalled upload");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{got}");
}

// ---------------------------------------------------------------- replays (issue 18)

/// Two instances sharing one count of request heads read: the first `deaths` requests
/// read (over both) are answered by closing the connection cleanly after reading the whole
/// request (an instance that died while handling it), the rest with `200 ok`. Returns the
/// addresses and the requests each instance read.
async fn dying_pair(deaths: usize) -> ([SocketAddr; 2], Arc<[AtomicUsize; 2]>) {
    let (addrs, read, _) = dying_pair_bodies(deaths).await;
    (addrs, read)
}

/// The request bodies each instance of a [`dying_pair`] read, in order.
type ReadBodies = Arc<[std::sync::Mutex<Vec<Vec<u8>>>; 2]>;

/// [`dying_pair`], also keeping the bodies each instance read.
async fn dying_pair_bodies(deaths: usize) -> ([SocketAddr; 2], Arc<[AtomicUsize; 2]>, ReadBodies) {
    let read = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let bodies: ReadBodies = Arc::new(Default::default());
    let total = Arc::new(AtomicUsize::new(0));
    let mut addrs = Vec::new();
    for i in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addrs.push(listener.local_addr().expect("addr"));
        let (read, total, bodies) = (Arc::clone(&read), Arc::clone(&total), Arc::clone(&bodies));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (read, total, bodies) =
                    (Arc::clone(&read), Arc::clone(&total), Arc::clone(&bodies));
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    loop {
                        let mut buf = [0u8; 4096];
                        let end = loop {
                            if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&buf[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&pending[..end]).to_lowercase();
                        let body: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        while pending.len() < end + body {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => pending.extend_from_slice(&buf[..n]),
                            }
                        }
                        let got = pending.drain(..end + body).skip(end).collect();
                        bodies[i].lock().expect("bodies").push(got);
                        read[i].fetch_add(1, SeqCst);
                        if total.fetch_add(1, SeqCst) < deaths {
                            // Everything was read: the kernel closes with a FIN, not a reset.
                            let _ = s.shutdown().await;
                            return;
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
    }
    ([addrs[0], addrs[1]], read, bodies)
}

async fn proxy_to_pair(addrs: [SocketAddr; 2]) -> (AppProxy, SocketAddr) {
    let (proxy, addr) = start_proxy(ProxyConfig {
        instances: 2,
        ..quick_cfg()
    })
    .await;
    for up in addrs {
        let id = proxy.add_backend(up);
        assert!(proxy.set_ready(id, true));
    }
    (proxy, addr)
}

/// `GET` takes the plain path, a bodiless `PUT` the full one: both follow the same rule.
const BOTH_PATHS: [&str; 2] = ["GET", "PUT"];

async fn a_request_the_app_read_before_dying_is_sent_once_to_the_other_instance() {
    for method in BOTH_PATHS {
        let (ups, read) = dying_pair(1).await;
        let (proxy, addr) = proxy_to_pair(ups).await;
        let (status, _, body) = request(&mut client(addr).await, method, "/x").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "{method}");
        assert_eq!(
            [read[0].load(SeqCst), read[1].load(SeqCst)],
            [1, 1],
            "{method}: read once by each instance"
        );
        assert_eq!(proxy.metrics().poison_requests, 0, "{method}");
    }
}

async fn a_request_whose_replay_also_dies_is_a_poison_502_and_not_sent_a_third_time() {
    for method in BOTH_PATHS {
        let (ups, read) = dying_pair(usize::MAX).await;
        let (proxy, addr) = proxy_to_pair(ups).await;
        let (status, headers, body) = request(&mut client(addr).await, method, "/die").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{method}: {body}");
        assert!(headers.contains_key("x-request-id"), "{method}");
        assert!(
            body.contains("it was not retried again: its retry stopped another instance"),
            "{method}: {body}"
        );
        assert_eq!(
            [read[0].load(SeqCst), read[1].load(SeqCst)],
            [1, 1],
            "{method}: each instance read it once, no third time"
        );
        assert_eq!(proxy.metrics().poison_requests, 1, "{method}");
        // A second one is stopped the same way; then replays keep killing instances, and
        // the app's replays stop for a while: the third is read once, not replayed.
        let (status, _, _) = request(&mut client(addr).await, method, "/die").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{method}");
        assert_eq!(proxy.metrics().poison_requests, 2, "{method}");
        let (status, _, body) = request(&mut client(addr).await, method, "/x").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{method}");
        assert!(
            body.contains("not retried: retried requests have been stopping instances"),
            "{method}: {body}"
        );
        assert_eq!(read[0].load(SeqCst) + read[1].load(SeqCst), 5, "{method}");
        assert_eq!(proxy.metrics().poison_requests, 2, "{method}");
    }
}

/// A `PUT` with `len` bytes of body and its `Content-Length`.
fn put_with_body(len: usize) -> (Request<ClientBody>, Vec<u8>) {
    let body: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
    let req = Request::put("/doc")
        .header("host", "example.test")
        .header("content-length", len)
        .body(Full::new(Bytes::from(body.clone())).boxed())
        .expect("request");
    (req, body)
}

async fn a_put_with_a_small_body_the_app_read_before_dying_is_sent_with_it_to_the_other_instance() {
    let (ups, read, bodies) = dying_pair_bodies(1).await;
    let (proxy, addr) = proxy_to_pair(ups).await;
    // 64 KiB exactly: the largest body kept.
    let (req, sent) = put_with_body(64 * 1024);
    let (status, _, body) = send(&mut client(addr).await, req).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!([read[0].load(SeqCst), read[1].load(SeqCst)], [1, 1]);
    for (i, b) in bodies.iter().enumerate() {
        let b = b.lock().expect("bodies");
        assert!(
            b.len() == 1 && b[0] == sent,
            "instance {i} read the whole body"
        );
    }
    assert_eq!(proxy.metrics().poison_requests, 0);
}

async fn a_put_with_a_body_over_64_kib_the_app_read_before_dying_is_not_sent_again() {
    let (ups, read) = dying_pair(1).await;
    let (proxy, addr) = proxy_to_pair(ups).await;
    let (req, _) = put_with_body(64 * 1024 + 1);
    let (status, _, body) = send(&mut client(addr).await, req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains("not retried: its body (over 64 KiB, or of unknown length) is gone")
            && body.contains("its body was streamed to the app and is gone;"),
        "{body}"
    );
    assert_eq!(read[0].load(SeqCst) + read[1].load(SeqCst), 1, "read once");
    assert_eq!(proxy.metrics().poison_requests, 0);
}

async fn a_small_put_body_read_to_be_kept_still_gets_a_408_when_it_stalls() {
    let (ups, read) = dying_pair(0).await;
    let (proxy, addr) = start_proxy(ProxyConfig {
        instances: 2,
        body_timeout: Duration::from_secs(1),
        ..quick_cfg()
    })
    .await;
    for up in ups {
        let id = proxy.add_backend(up);
        assert!(proxy.set_ready(id, true));
    }
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // 3 bytes of 10, then nothing.
    s.write_all(b"PUT /doc HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("the proxy ends the stalled upload")
        .expect("read");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 Request Timeout\r\n"), "{got}");
    assert!(got.contains("connection: close\r\n"), "{got}");
    assert_eq!(read[0].load(SeqCst) + read[1].load(SeqCst), 0);
    assert_eq!(proxy.metrics().in_flight, 0);
}

async fn a_post_whose_instance_died_after_reading_it_is_not_sent_again() {
    let (ups, read) = dying_pair(1).await;
    let (proxy, addr) = proxy_to_pair(ups).await;
    let req = Request::post("/orders")
        .header("host", "example.test")
        .body(Full::new(Bytes::from_static(b"{\"n\":1}")).boxed())
        .expect("request");
    let (status, _, body) = send(&mut client(addr).await, req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body.contains("not retried: a POST may not be sent twice"),
        "{body}"
    );
    assert_eq!(read[0].load(SeqCst) + read[1].load(SeqCst), 1, "read once");
    assert_eq!(proxy.metrics().poison_requests, 0);
}

// ------------------------------------------------------- request smuggling

/// What a recording upstream saw: every request it parsed (strictly: one framing header at
/// most, `Transfer-Encoding` only `chunked`), and every head that broke that rule.
#[derive(Default)]
struct Recorded {
    targets: Vec<String>,
    ambiguous: Vec<String>,
}

/// An upstream that records the exact bytes it receives and parses them as a strict
/// HTTP/1.1 server would, answering `200 ok` to each request.
async fn recording_upstream() -> (SocketAddr, Arc<std::sync::Mutex<Recorded>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let rec = Arc::new(std::sync::Mutex::new(Recorded::default()));
    let r = Arc::clone(&rec);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let rec = Arc::clone(&r);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 16384];
                loop {
                    // One head.
                    let (len, target, framing) = loop {
                        let mut headers = [httparse::EMPTY_HEADER; 128];
                        let mut req = httparse::Request::new(&mut headers);
                        match req.parse(&pending) {
                            Ok(httparse::Status::Complete(len)) => {
                                let get = |n: &str| -> Vec<String> {
                                    req.headers
                                        .iter()
                                        .filter(|h| h.name.eq_ignore_ascii_case(n))
                                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                                        .collect()
                                };
                                let (cl, te) = (get("content-length"), get("transfer-encoding"));
                                let head = String::from_utf8_lossy(&pending[..len]).into_owned();
                                let framing = match (&cl[..], &te[..]) {
                                    ([], []) => Some(0),
                                    ([n], []) => n.trim().parse::<usize>().ok(),
                                    ([], [t]) if t.trim().eq_ignore_ascii_case("chunked") => {
                                        Some(usize::MAX)
                                    }
                                    _ => None,
                                };
                                let Some(framing) = framing else {
                                    rec.lock().expect("lock").ambiguous.push(head);
                                    return;
                                };
                                break (len, req.path.unwrap_or("").to_owned(), framing);
                            }
                            Ok(httparse::Status::Partial) => {}
                            Err(e) => {
                                rec.lock().expect("lock").ambiguous.push(format!(
                                    "unparsable ({e}): {:?}",
                                    String::from_utf8_lossy(&pending)
                                ));
                                return;
                            }
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    };
                    pending.drain(..len);
                    // Its body: a length, or chunks up to the last one (the bodies here
                    // have no trailers and no "0\r\n\r\n" inside their data).
                    loop {
                        let end = if framing == usize::MAX {
                            pending
                                .windows(5)
                                .position(|w| w == b"0\r\n\r\n")
                                .map(|i| i + 5)
                        } else {
                            (pending.len() >= framing).then_some(framing)
                        };
                        if let Some(end) = end {
                            pending.drain(..end);
                            break;
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                    rec.lock().expect("lock").targets.push(target);
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (addr, rec)
}

/// Classic desync attempts (CL.TE, TE.CL, TE.TE, obfuscated and duplicated framing,
/// obs-fold, bare CR, NUL, HTTP/1.0 with chunked) on a fresh connection, each alone and
/// after a plain GET (so that both request paths see them): the app never receives a
/// request with two framings or a request the client got no answer for, and nothing
/// panics.
async fn no_request_is_smuggled_past_the_proxy() {
    const ATTACKS: [&[u8]; 16] = [
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n35\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 3\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\nContent-Length: 3\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3, 40\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabcGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: a\rContent-Length: 40\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer_Encoding: chunked\r\n\r\nabc",
        b"GET /a HTTP/1.1\nHost: h\nContent-Length: 0\n\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",
    ];
    let (up, rec) = recording_upstream().await;
    // Short client timeouts: the proxy closes each connection soon after its last answer
    // (or a body that never completes), which is when the client has read everything.
    let (proxy, addr) = start_proxy(ProxyConfig {
        idle_timeout: Duration::from_millis(300),
        header_timeout: Duration::from_millis(300),
        body_timeout: Duration::from_millis(300),
        ..quick_cfg()
    })
    .await;
    let id = proxy.add_backend(up);
    assert!(proxy.set_ready(id, true));
    for attack in ATTACKS {
        for after_a_get in [false, true] {
            rec.lock().expect("lock").targets.clear();
            let mut sent = Vec::new();
            if after_a_get {
                sent.extend_from_slice(b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n");
            }
            sent.extend_from_slice(attack);
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(&sent).await.expect("send");
            let mut got = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
                .await
                .expect("the proxy answers and closes");
            let got = String::from_utf8_lossy(&got).into_owned();
            let ctx = format!("sent {:?}\ngot {got:?}", String::from_utf8_lossy(&sent));
            // Every request the app answered was answered to the client, in order.
            let answered = got.matches("HTTP/1.1 200 OK").count();
            let r = rec.lock().expect("lock");
            assert!(r.ambiguous.is_empty(), "{:?}\n{ctx}", r.ambiguous);
            assert_eq!(r.targets.len(), answered, "{:?}\n{ctx}", r.targets);
            assert!(
                got.starts_with("HTTP/1.1 "),
                "no answer at all (dropped?)\n{ctx}"
            );
        }
    }
}

// ------------------------------------------------- upstream keep-alive (issue 11)

/// Sends `raw` on a new client connection and reads until windlass closes it.
async fn one_request_then_closed(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(raw).await.expect("send");
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("windlass closes the client connection after its response")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

/// A client's `Connection: close` (or HTTP/1.0 without keep-alive) ends the client
/// connection only: the upstream request is keep-alive, and its connection goes back to
/// the pool, on both request paths (nginx's upstream keep-alive; the app counted one new
/// connection per request before).
async fn a_client_connection_close_does_not_close_the_upstream_connection() {
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    let accepted = || up.stats.accepted.load(SeqCst);

    // The plain path: bodiless GETs.
    for i in 0..200 {
        let got = one_request_then_closed(
            addr,
            b"GET / HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "GET {i}: {got:?}");
        assert!(
            got.contains("\r\nconnection: close\r\n"),
            "GET {i}: {got:?}"
        );
        assert!(got.ends_with("\r\n\r\na"), "GET {i}: {got:?}");
    }
    let plain = accepted();
    assert!(
        plain <= 2,
        "plain path: {plain} upstream connections for 200 requests"
    );

    // The full path: PUTs with a small body.
    for i in 0..50 {
        let got = one_request_then_closed(
            addr,
            b"PUT /upload HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "PUT {i}: {got:?}");
        assert!(
            got.contains("\r\nconnection: close\r\n"),
            "PUT {i}: {got:?}"
        );
        assert!(got.ends_with("\r\n\r\n5"), "PUT {i}: {got:?}");
    }
    let full = accepted() - plain;
    assert!(
        full <= 2,
        "full path: {full} upstream connections for 50 requests"
    );

    // HTTP/1.0 without keep-alive (the full path).
    for i in 0..50 {
        let got = one_request_then_closed(
            addr,
            b"PUT /upload HTTP/1.0\r\nHost: example.test\r\nContent-Length: 5\r\n\r\nhello",
        )
        .await;
        assert!(
            got.starts_with("HTTP/1.0 200 OK\r\n"),
            "HTTP/1.0 {i}: {got:?}"
        );
        assert!(got.ends_with("\r\n\r\n5"), "HTTP/1.0 {i}: {got:?}");
    }
    let old = accepted() - plain - full;
    assert!(
        old <= 2,
        "HTTP/1.0: {old} upstream connections for 50 requests"
    );

    // The app never saw the client's `Connection: close`.
    let got = one_request_then_closed(
        addr,
        b"GET /headers HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        !got.to_ascii_lowercase().contains("connection: close\n"),
        "{got:?}"
    );
    assert_eq!(up.stats.started.load(SeqCst), 301);

    // And the other way round: an app's `Connection: close` ends only its connection; the
    // client's (keep-alive, responses framed by length) carries on, on both paths.
    let before = accepted();
    let mut tx = client(addr).await;
    for _ in 0..3 {
        assert_eq!(get(&mut tx, "/close").await, (StatusCode::OK, "a".into()));
        let req = Request::put("/close")
            .header("host", "example.test")
            .header("content-length", 5)
            .body(Full::new(Bytes::from_static(b"hello")).boxed())
            .expect("request");
        let (status, headers, body) = send(&mut tx, req).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "a"));
        assert!(headers.get("connection").is_none(), "{headers:?}");
    }
    // The first request on each path's pool took a pooled connection (with the plain path
    // off, the GETs share the full path's pool); the app closed each one.
    let pools = if on_plain_path() { 2 } else { 1 };
    assert_eq!(
        accepted() - before,
        6 - pools,
        "closed upstream connections were reused"
    );
    assert_eq!(proxy.metrics().upstream_errors, Default::default());
}

// ------------------------------------------------- errors by fault (issue 11, point 5)

/// Waits until `proxy` has no request in flight and counted a failure, then checks that
/// exactly one was counted, under `cause`.
async fn counted_once_as(proxy: &AppProxy, cause: ErrorCause) {
    wait_until("the failure counted and the request ended", || {
        let m = proxy.metrics();
        m.in_flight == 0 && m.errors.total() > 0
    })
    .await;
    let errors = proxy.metrics().errors;
    assert_eq!(
        (errors.get(cause), errors.total()),
        (1, 1),
        "{cause:?}: {errors:?}"
    );
}

/// Each way a request fails, provoked for real (a missing, refusing, silent, lying or
/// breaking app; a slow, stalling, vanishing client) is counted once, under its cause and
/// so its fault, however many attempts it took.
async fn every_failure_is_counted_once_by_fault_and_cause() {
    let short = |cfg: ProxyConfig| ProxyConfig {
        hold: Duration::from_millis(300),
        ..cfg
    };

    // Upstream: no instance ready within the hold.
    let (proxy, addr) = start_proxy(short(quick_cfg())).await;
    assert_eq!(get_once(addr, "/").await.0, StatusCode::SERVICE_UNAVAILABLE);
    counted_once_as(&proxy, ErrorCause::NoReadyInstance).await;

    // Upstream: refused, retried within the hold: many attempts, one failed request.
    let (proxy, addr) = start_proxy(short(quick_cfg())).await;
    let id = proxy.add_backend(refusing_addr().await);
    assert!(proxy.set_ready(id, true));
    assert_eq!(get_once(addr, "/").await.0, StatusCode::BAD_GATEWAY);
    counted_once_as(&proxy, ErrorCause::ConnectRefused).await;
    assert!(proxy.metrics().upstream_errors.connect_refused >= 2);

    // Upstream: no response head within the response timeout.
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(ProxyConfig {
        response_timeout: Duration::from_millis(200),
        ..quick_cfg()
    })
    .await;
    add_ready(&proxy, &up);
    assert_eq!(
        get_once(addr, "/never").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    counted_once_as(&proxy, ErrorCause::ResponseTimeout).await;

    // Upstream: a response head that cannot be parsed.
    let (up, _) = scripted_upstream(vec![vec![Act::Reply(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nzz",
    )]])
    .await;
    let (proxy, addr) = proxy_to(up).await;
    assert_eq!(get_once(addr, "/").await.0, StatusCode::BAD_GATEWAY);
    counted_once_as(&proxy, ErrorCause::BadResponse).await;

    // Upstream: the body breaks off after the head reached the client (the client sees
    // its connection close; not also counted as the client's going away).
    let (up, _) = scripted_upstream(vec![vec![Act::ReplyAndClose(
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
    )]])
    .await;
    let (proxy, addr) = proxy_to(up).await;
    let got = one_request_then_closed(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // The plain path has sent the head on; hyper may not have flushed it yet.
    assert!(
        got.starts_with("HTTP/1.1 200 OK\r\n") || (got.is_empty() && !on_plain_path()),
        "{got:?}"
    );
    counted_once_as(&proxy, ErrorCause::Reset).await;

    // Downstream: a head that never ends.
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(slow_head_cfg()).await;
    add_ready(&proxy, &up);
    let s = TcpStream::connect(addr).await.expect("connect");
    let got = trickle(s, b"GET / HTTP/1.1\r\nX-Slow: 1\r\n").await;
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    wait_until("the head timeout counted", || {
        proxy.metrics().errors.total() > 0
    })
    .await;
    let errors = proxy.metrics().errors;
    assert_eq!(
        (errors.get(ErrorCause::HeadTimeout), errors.total()),
        (1, 1),
        "{errors:?}"
    );

    // Downstream: a request body that stops arriving.
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(ProxyConfig {
        body_timeout: Duration::from_millis(200),
        ..quick_cfg()
    })
    .await;
    add_ready(&proxy, &up);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("closed after the 408")
        .expect("read");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
    counted_once_as(&proxy, ErrorCause::BodyTimeout).await;

    // Downstream: the client goes away in the middle of its request body.
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .expect("write");
    wait_until("the upload reached the app", || {
        up.stats.started.load(SeqCst) == 1
    })
    .await;
    drop(s);
    counted_once_as(&proxy, ErrorCause::BodyBroken).await;

    // Downstream: the client leaves after the response head of a large body.
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /download/200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.expect("the response head");
    assert_eq!(&head, b"HTTP/1.1 200");
    drop(s);
    counted_once_as(&proxy, ErrorCause::ClientGone).await;
    // The requests that failed are the only ones counted as failed: a good one is not.
    let up = Upstream::start("a").await;
    let (proxy, addr) = start_proxy(quick_cfg()).await;
    add_ready(&proxy, &up);
    assert_eq!(get_once(addr, "/").await.0, StatusCode::OK);
    wait_until("in-flight back to 0", || proxy.metrics().in_flight == 0).await;
    assert_eq!(proxy.metrics().errors.total(), 0);
}

/// `/metrics` has `windlass_proxy_errors_total{app,fault,cause}`, every cause at 0 from the
/// start, failed requests counted once each on both paths (a GET on the plain path, a POST
/// on the full one; the resets of the GET's retries are attempts, not requests), and
/// promtool accepts the exposition.
#[test]
fn metrics_count_each_failed_request_once_by_fault_and_cause() {
    use crate::helper;
    use std::io::Write;
    let (port, admin) = (helper::free_port(), helper::free_port());
    let p = helper::Project::new(&format!(
        "[app.web]\ncommand = [\"python3\", \"app.py\"]\nport = {port}\n\
         health = {{ path = \"/health\" }}\n\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n"
    ));
    p.write("app.py", RESETTING_APP);
    let _sup = p.up(&[]);
    helper::wait_for("the app behind the proxy", helper::DEADLINE, || {
        helper::http_get(port, "/health")
            .ok()
            .filter(|(c, _)| *c == 200)
    });
    let series = |cause: ErrorCause| {
        format!(
            "windlass_proxy_errors_total{{app=\"web\",fault=\"{}\",cause=\"{}\"}}",
            cause.fault().label(),
            cause.label()
        )
    };
    let before = helper::scrape(admin);
    for cause in ErrorCause::ALL {
        assert_eq!(
            helper::sample(&before, &series(cause)),
            Some(0.0),
            "{before}"
        );
    }
    for method in ["GET", "POST"] {
        let (status, _) = helper::http_request(port, method, "/boom", &[]).expect("request");
        assert_eq!(status, 502);
    }
    let text = helper::wait_for("two resets counted", helper::DEADLINE, || {
        let text = helper::scrape(admin);
        (helper::sample(&text, &series(ErrorCause::Reset)) == Some(2.0)).then_some(text)
    });
    for cause in ErrorCause::ALL
        .into_iter()
        .filter(|c| *c != ErrorCause::Reset)
    {
        assert_eq!(helper::sample(&text, &series(cause)), Some(0.0), "{text}");
    }
    let attempts = helper::sample(
        &text,
        "windlass_proxy_upstream_errors_total{app=\"web\",cause=\"reset\"}",
    );
    assert!(attempts.is_some_and(|n| n > 2.0), "{text}");
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let o = promtool.wait_with_output().expect("promtool");
    assert!(
        o.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}
