//! The admin listener (`[admin] listen`, default `127.0.0.1:9180`): `/metrics` for Prometheus,
//! `/dashboard` for people, and `/api/v1/...`, the control API of the socket, for both.
//!
//! Access rules (constant-time token comparison):
//! - every request must name this listener in its `Host`: `localhost`, a loopback address
//!   (127.0.0.0/8, `[::1]`), the address the connection came in on, or a name of
//!   `[admin] hosts`, each with or without a port; anything else is a `421 Misdirected
//!   Request`. A web page whose name was rebound to 127.0.0.1 (DNS rebinding) sends its own
//!   name, so it reaches nothing here, not even the dashboard;
//! - what shows what the apps print or lets one type into them (log reads, console attach
//!   and resize) needs `Authorization: Bearer TOKEN`; with no `token` configured it is not
//!   served here at all (`403`): `windlass logs` and `windlass attach` use the control socket;
//! - no `token`: other reads (`GET`, `HEAD`) are open, actions (`POST`) answer 401; the config
//!   refuses a non-loopback `listen` without a token, so this is loopback only. Open reads of
//!   the status leave out the instances' last stderr lines (app output, like the logs);
//! - `token` set: actions need it; reads on loopback are open as above (stderr lines with the
//!   token only); on a non-loopback address, every read of `/api` and `/metrics` needs it
//!   (Prometheus: `authorization: { credentials: TOKEN }`).
//!
//! The dashboard's own files are always served (to a right `Host`): they hold no data, and the
//! page asks for the token when the API wants one. `listen = "off"` disables the listener.
//!
//! Connections ([`serve`]): at most [`MAX_CONNECTIONS`] at once (more wait in the kernel's
//! listen backlog), and a request head, or the next one on a kept-alive connection, must
//! arrive within [`HEADER_TIMEOUT`]: idle or half-sent connections cannot pile up and take the
//! supervisor's open files.

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::serve::IncomingStream;

use crate::control;
use crate::metrics::Metrics;
use crate::protocol::ApiError;

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for the admin listener ([admin] listen): {source}{}", holder.as_ref().map(|h| format!("; {h} holds it")).unwrap_or_default())]
pub struct AdminError {
    pub addr: SocketAddr,
    /// "pid 123 (nginx)" when /proc tells who listens there.
    pub holder: Option<String>,
    #[source]
    pub source: std::io::Error,
}

impl AdminError {
    pub fn hint(&self) -> String {
        format!(
            "set another address in windlass.toml, e.g. [admin] listen = \"127.0.0.1:{}\", or listen = \"off\" to disable /metrics and the dashboard",
            self.addr.port().wrapping_add(1).max(1024)
        )
    }
}

/// Binds the admin address, saying who holds it when it is taken.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AdminError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError {
            addr,
            holder: (source.kind() == std::io::ErrorKind::AddrInUse)
                .then(|| crate::ports::who_holds_port(addr.port()))
                .flatten()
                .map(|(pid, cmd)| format!("pid {pid} ({cmd})")),
            source,
        })
}

/// Connections the admin listener serves at once; the next ones wait in the listen backlog.
/// Dashboards and scrapers use a handful; log follows and consoles one each.
pub const MAX_CONNECTIONS: usize = 64;
/// A request head (and, on a kept-alive connection, the next one) must arrive within this.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Pause after an accept error (EMFILE...), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown`, with the connection cap and head timeout
/// above (`axum::serve` has neither). Each request carries the connection's [`Local`]
/// address as `ConnectInfo`, for the `Host` check.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let (closing, _) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    let mut warned: Option<std::time::Instant> = None;
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if warned.is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "admin listener: cannot accept a connection; pausing");
                        warned = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let local = Local(stream.local_addr().ok());
        let service =
            TowerToHyperService::new(router.clone().layer(axum::Extension(ConnectInfo(local))));
        let mut closing = closing.subscribe();
        tokio::spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = async { closing.wait_for(|c| *c).await.is_ok() } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    closing.send_replace(true);
}

/// Everything the admin routes need.
#[derive(Clone)]
pub struct Admin {
    pub token: Option<String>,
    /// True when bound to a loopback address (reads are then open).
    pub loopback: bool,
    pub metrics: Metrics,
    /// Other names the `Host` header may give (`[admin] hosts`), lowercase.
    pub hosts: Vec<String>,
}

/// The local address a connection came in on: a `Host` naming it is this listener. Serve the
/// router with `into_make_service_with_connect_info::<Local>()`.
#[derive(Debug, Clone, Copy)]
pub struct Local(pub Option<SocketAddr>);

impl Connected<IncomingStream<'_, tokio::net::TcpListener>> for Local {
    fn connect_info(stream: IncomingStream<'_, tokio::net::TcpListener>) -> Self {
        Local(stream.io().local_addr().ok())
    }
}

/// `/metrics`, `/dashboard`, and the control API under `/api`.
pub fn router(admin: Admin, ctx: control::Ctx) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .with_state(admin.clone())
        .nest("/api", control::public_router(ctx.clone()))
        .layer(middleware::from_fn_with_state(admin.clone(), guard));
    let private = Router::new()
        .nest("/api", control::private_router(ctx))
        .layer(middleware::from_fn_with_state(admin.clone(), guard_private));
    Router::new()
        .route("/", get(|| async { Redirect::temporary("/dashboard") }))
        .merge(crate::dashboard::routes())
        .merge(guarded)
        .merge(private)
        .layer(middleware::from_fn_with_state(admin, check_host))
}

/// Answers 421 unless the request's `Host` (and its URI's authority, if any) names this
/// listener.
async fn check_host(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let local = req
        .extensions()
        .get::<ConnectInfo<Local>>()
        .and_then(|c| c.0.0);
    let hosts = req.headers().get_all(header::HOST);
    let mut named: Vec<&str> = Vec::new();
    for h in hosts.iter() {
        named.push(h.to_str().unwrap_or("\u{fffd}"));
    }
    if let Some(a) = req.uri().authority() {
        named.push(a.as_str());
    }
    let bad = match named.as_slice() {
        [] => Some(""),
        all => all
            .iter()
            .find(|h| !host_allowed(h, local, &admin.hosts))
            .copied(),
    };
    let Some(bad) = bad else {
        if req.headers().get_all(header::HOST).iter().count() > 1 {
            return misdirected("more than one `Host` header", local);
        }
        return next.run(req).await;
    };
    let shown: String = bad.chars().take(100).collect();
    misdirected(
        &if shown.is_empty() {
            "the request names no host (no `Host` header)".to_owned()
        } else {
            format!("this listener does not answer for host `{shown}`")
        },
        local,
    )
}

fn misdirected(error: &str, local: Option<SocketAddr>) -> Response {
    let port = local.map(|a| a.port()).unwrap_or(9180);
    (
        StatusCode::MISDIRECTED_REQUEST,
        axum::Json(ApiError {
            error: error.to_owned(),
            hint: Some(format!(
                "open it as http://127.0.0.1:{port}/ or http://localhost:{port}/; to use another name, list it in windlass.toml: [admin] hosts = [\"NAME\"]"
            )),
        }),
    )
        .into_response()
}

/// True when `authority` (`name`, `name:port`, `[v6]`, `[v6]:port`) names this listener:
/// `localhost`, a loopback address, the `local` address, or one of `hosts`.
pub fn host_allowed(authority: &str, local: Option<SocketAddr>, hosts: &[String]) -> bool {
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return false;
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        match inside.parse::<std::net::Ipv6Addr>() {
            Ok(_) => (inside, port),
            Err(_) => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((_, p)) if p.contains(':') => return false,
            Some((n, p)) => (n, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if p.parse::<u16>().is_err() {
            return false;
        }
    }
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    if name == "localhost" {
        return true;
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        // An IPv6 listener sees IPv4 clients as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        if ip.is_loopback() || local.is_some_and(|l| l.ip().to_canonical() == ip) {
            return true;
        }
        // `[admin] hosts` holds addresses in this (canonical) spelling.
        let ip = ip.to_string();
        return hosts.contains(&ip);
    }
    hosts.contains(&name)
}

/// Compares in time independent of where the strings differ (length is not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn unauthorized(error: &str, hint: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"windlass\"")],
        axum::Json(ApiError {
            error: error.to_owned(),
            hint: Some(hint.to_owned()),
        }),
    )
        .into_response()
}

/// Log reads and consoles: the token, always; without one configured, not here at all.
async fn guard_private(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let (what, needs, command) = if req.uri().path().contains("/console") {
        ("the console is", "the console needs", "windlass attach APP")
    } else {
        ("log lines are", "log reads need", "windlass logs")
    };
    let Some(token) = &admin.token else {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(ApiError {
                error: format!("{what} not served on the admin listener: no token is configured"),
                hint: Some(format!(
                    "use `{command}` on this host (it talks to the control socket), or set `token` in [admin] of windlass.toml and send `Authorization: Bearer TOKEN`"
                )),
            }),
        )
            .into_response();
    };
    match bearer(&req) {
        Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => unauthorized(
            "wrong token",
            "send the `token` of [admin] in windlass.toml as `Authorization: Bearer TOKEN`",
        ),
        None => unauthorized(
            &format!("{needs} the admin token"),
            "send the `token` of [admin] in windlass.toml as `Authorization: Bearer TOKEN`",
        ),
    }
}

async fn guard(State(admin): State<Admin>, mut req: Request, next: Next) -> Response {
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let given = bearer(&req);
    let valid = match (&admin.token, given) {
        (Some(token), Some(t)) => constant_time_eq(t.as_bytes(), token.as_bytes()),
        _ => false,
    };
    if valid {
        return next.run(req).await;
    }
    let Some(_) = &admin.token else {
        if read {
            req.extensions_mut().insert(control::WithoutAppOutput);
            return next.run(req).await;
        }
        return unauthorized(
            "actions are disabled on the admin listener: no token is configured",
            "set `token` in [admin] of windlass.toml and send `Authorization: Bearer TOKEN`, or use the windlass command line",
        );
    };
    if read && admin.loopback {
        req.extensions_mut().insert(control::WithoutAppOutput);
        return next.run(req).await;
    }
    match given {
        Some(_) => unauthorized(
            "wrong token",
            "send the `token` of [admin] in windlass.toml as `Authorization: Bearer TOKEN`",
        ),
        None => unauthorized(
            "this needs the admin token",
            "send the `token` of [admin] in windlass.toml as `Authorization: Bearer TOKEN`",
        ),
    }
}

type Encoder = fn(&Metrics) -> Result<String, std::fmt::Error>;

/// OpenMetrics when the scraper asks for it (Prometheus does), else Prometheus text 0.0.4.
async fn metrics(State(admin): State<Admin>, headers: axum::http::HeaderMap) -> Response {
    let m = admin.metrics.clone();
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let (kind, encode): (_, Encoder) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Metrics::encode,
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            Metrics::encode_prometheus,
        )
    };
    match tokio::task::spawn_blocking(move || encode(&m)).await {
        Ok(Ok(text)) => Response::builder()
            .header(header::CONTENT_TYPE, kind)
            .body(Body::from(text))
            .unwrap_or_else(|e| internal(&e.to_string())),
        Ok(Err(e)) => internal(&format!("cannot encode the metrics: {e}")),
        Err(e) => internal(&format!("the metrics task failed: {e}")),
    }
}

fn internal(msg: &str) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(ApiError {
            error: msg.to_owned(),
            hint: Some("this is a bug in windlass; please report it".into()),
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"s3cret", b"s3cret"));
        assert!(!constant_time_eq(b"s3cret", b"s3creT"));
        assert!(!constant_time_eq(b"s3cret", b"s3cre"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn only_names_of_this_listener_are_hosts() {
        let local = Some(SocketAddr::from(([10, 1, 2, 3], 9180)));
        let hosts = vec!["windlass.internal".to_owned(), "192.168.7.7".to_owned()];
        for ok in [
            "localhost",
            "localhost:9180",
            "LOCALHOST.",
            "127.0.0.1",
            "127.0.0.1:1",
            "127.200.3.4:65535",
            "[::1]",
            "[::1]:9180",
            "10.1.2.3:9180",
            "windlass.internal",
            "Windlass.Internal:80",
            "192.168.7.7:9180",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(host_allowed(ok, local, &hosts), "{ok} is allowed");
        }
        for bad in [
            "",
            ":9180",
            "rebind.evil.example",
            "rebind.evil.example:9180",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:",
            "localhost:99999",
            "localhost:+80",
            "localhost:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[evil]",
            "10.1.2.4",
            "0.0.0.0",
            "sub.windlass.internal",
        ] {
            assert!(!host_allowed(bad, local, &hosts), "{bad:?} is refused");
        }
        assert!(!host_allowed("10.1.2.3", None, &[]));
        let mapped = Some("[::ffff:10.1.2.3]:9180".parse().expect("addr"));
        assert!(host_allowed("10.1.2.3:9180", mapped, &[]));
    }

    #[tokio::test]
    async fn a_taken_port_names_its_holder() {
        let held = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 0");
        let addr = held.local_addr().expect("addr");
        let e = bind(addr).await.expect_err("the port is taken");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(e.hint().contains("[admin] listen"), "{}", e.hint());
    }
}
