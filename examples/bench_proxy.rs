//! Throughput check (not a test): a trivial hyper upstream and the proxy in front of it,
//! both on 127.0.0.1, printing their ports; compare `wrk -t2 -c50 -d5s` direct vs proxied.
//!
//!     cargo run --release --example bench_proxy                       # upstream + proxy
//!     cargo run --release --example bench_proxy -- --upstream 127.0.0.1:18080   # proxy only
//!     cargo run --release --example bench_proxy -- --upstream-only    # upstream only
//!
//! `--threads N` sets the tokio worker threads (default: one per core). Runs until Ctrl-C.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::Response;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use windlass::proxy::{AppProxy, ProxyConfig};

struct Args {
    upstream: Option<SocketAddr>,
    upstream_only: bool,
    threads: Option<usize>,
    port: u16,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        upstream: None,
        upstream_only: false,
        threads: None,
        port: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--upstream" => {
                let v = value("--upstream")?;
                args.upstream = Some(v.parse().map_err(|e| format!("--upstream {v}: {e}"))?);
            }
            "--upstream-only" => args.upstream_only = true,
            "--threads" => {
                let v = value("--threads")?;
                args.threads = Some(v.parse().map_err(|e| format!("--threads {v}: {e}"))?);
            }
            "--port" => {
                let v = value("--port")?;
                args.port = v.parse().map_err(|e| format!("--port {v}: {e}"))?;
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

async fn upstream(port: u16) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    let body = Bytes::from(format!("ok pid={}\n", std::process::id()));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        let mut r = Response::new(Full::new(body));
                        r.headers_mut()
                            .insert("content-type", http::HeaderValue::from_static("text/plain"));
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    rt.build()?.block_on(async move {
        if args.upstream_only {
            let addr = upstream(args.port).await?;
            println!("upstream {addr}");
            tokio::signal::ctrl_c().await?;
            return Ok(());
        }
        let target = match args.upstream {
            Some(addr) => addr,
            None => {
                let addr = upstream(0).await?;
                println!("upstream {addr}");
                addr
            }
        };
        let proxy = AppProxy::new("bench", ProxyConfig::default());
        let id = proxy.add_backend(target);
        proxy.set_ready(id, true);
        let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
        println!("proxy {}", listener.local_addr()?);
        proxy
            .serve(listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await;
        let m = proxy.metrics();
        eprintln!(
            "requests by class {:?}, upstream errors {:?}",
            m.requests_by_class, m.upstream_errors
        );
        Ok(())
    })
}
