//! The long-running side of `windlass up`: the project lock, the pid file, the control socket,
//! signal handling and the orderly shutdown that leaves no app process behind. Where those
//! files are is [`crate::layout`]'s business; this module owns what happens with them.
//!
//! At start the supervisor raises its open-files soft limit to the hard limit
//! ([`crate::limits`]); the apps get the limit it was started with.
//!
//! One supervisor per project: an exclusive `flock` on `.windlass/lock` (released by the kernel
//! however windlass dies, so a stale pid file never blocks a restart) guards the socket and the
//! pid file. Ctrl-C, SIGTERM, SIGHUP or `POST /v1/down` stop every app gracefully; a second
//! Ctrl-C or SIGTERM turns that into SIGKILL at once.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

use crate::admin;
use crate::config::Config;
use crate::control;
use crate::layout::{Layout, write_atomic};
use crate::metrics::Metrics;
use crate::proxy::Workers;
use crate::supervisor::{Options, Supervisor, SupervisorError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("a supervisor is already running for this project{}", pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    AlreadyRunning { pid: Option<u32> },
    #[error("cannot use {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error("cannot listen on {addr} for app `{app}`: {source}")]
    Bind {
        app: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
}

impl DaemonError {
    pub fn hint(&self) -> Option<String> {
        match self {
            DaemonError::AlreadyRunning { .. } => {
                Some("see it with `windlass status`, stop it with `windlass down`".into())
            }
            DaemonError::Supervisor(e) => e.hint(),
            DaemonError::Bind { addr, source, .. }
                if source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                let port = addr.port();
                Some(match crate::ports::who_holds_port(port) {
                    Some((pid, cmd)) => format!(
                        "another process holds port {port}: pid {pid} ({cmd}); stop it, or change `port` in the config"
                    ),
                    None => format!(
                        "another process holds port {port}; find it with `ss -ltnp 'sport = :{port}'`, or change `port` in the config"
                    ),
                })
            }
            DaemonError::Bind { .. } => Some("check `port` and `bind` in the config".into()),
            DaemonError::Admin(e) => Some(e.hint()),
            DaemonError::Io { .. } | DaemonError::Watch(_) => None,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Takes the project lock, or says who holds it.
pub fn lock(paths: &Layout) -> Result<Flock<File>, DaemonError> {
    std::fs::create_dir_all(paths.dir()).map_err(io_err(paths.dir()))?;
    let lock_path = paths.lock_file();
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| DaemonError::AlreadyRunning {
        pid: std::fs::read_to_string(paths.pid_file())
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    })
}

/// Listen backlog of the apps' public ports: nginx's 511 rather than the 128 of a plain
/// `bind`, so a burst of new clients waits in the kernel (capped by `net.core.somaxconn`)
/// while the proxy is at `max_connections` instead of being refused.
const PUBLIC_BACKLOG: u32 = 511;

/// Binds an app's public port (`SO_REUSEADDR`, as `std` does) with [`PUBLIC_BACKLOG`].
fn bind_public(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(PUBLIC_BACKLOG)
}

/// Hooks for the foreground `up`: called once the supervisor runs.
pub type OnStarted = Box<dyn FnOnce(&Supervisor) + Send>;

/// Runs the supervisor until a signal or `windlass down`; returns once every app is gone.
pub async fn run(
    config: Config,
    mut opts: Options,
    on_started: Option<OnStarted>,
) -> Result<(), DaemonError> {
    let paths = config.layout();
    let _lock = lock(&paths)?;
    // Every client connection is a descriptor: take what the hard limit allows (the apps
    // keep the limit windlass was started with).
    match crate::limits::raise() {
        Ok(r) if r.soft != r.original => tracing::info!(
            from = r.original,
            to = r.soft,
            "open-files limit raised to the hard limit; apps keep {}",
            r.original
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit; keeping it"),
    }
    // Public ports are bound first (before the control socket announces a running supervisor,
    // and before any app starts), and stay bound across restarts and reloads.
    let mut listeners = Vec::new();
    for app in config.apps.iter() {
        if let Some(port) = app.port {
            let addr = std::net::SocketAddr::new(app.bind, port);
            let l = bind_public(addr).map_err(|source| DaemonError::Bind {
                app: app.name.clone(),
                addr,
                source,
            })?;
            listeners.push((app.name.clone(), l));
        }
    }
    let admin_cfg = config.admin.clone();
    let admin_listener = match admin_cfg.listen {
        Some(addr) => Some(match admin::bind(addr).await {
            Ok(l) => l,
            // Only the default address falls back: one the user wrote must be honoured.
            Err(e) if !admin_cfg.explicit && e.source.kind() == std::io::ErrorKind::AddrInUse => {
                let fallback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                let l = admin::bind(fallback).await?;
                tracing::warn!(taken = %addr, "admin listener: the default port is taken (another windlass?); using a free port; `windlass status` shows it");
                l
            }
            Err(e) => return Err(e.into()),
        }),
        None => None,
    };
    opts.admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let pid_file = paths.pid_file();
    write_atomic(&pid_file, format!("{}\n", std::process::id()).as_bytes())
        .map_err(io_err(&pid_file))?;
    let socket = paths.socket();
    let listener = control::bind(&socket).map_err(io_err(&socket))?;

    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io_err(Path::new("signal handler")))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io_err(Path::new("signal handler")))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io_err(Path::new("signal handler")))?;

    let watched: Vec<(String, Vec<String>)> = config
        .apps
        .iter()
        .map(|a| (a.name.clone(), a.watch.clone()))
        .collect();
    let root = config.root.clone();

    // Orphans of the apps come to windlass (PID 1 in a container gets them anyway).
    crate::supervisor::reaper::become_subreaper();
    let _reaper =
        crate::supervisor::reaper::spawn().map_err(io_err(Path::new("SIGCHLD handler")))?;
    let only = opts.only.clone();
    let supervisor = Supervisor::start(config, opts)?;
    // Under systemd: READY=1 once the apps are up, STATUS=, RELOADING=1, watchdog pings.
    let notifier = crate::notify::Notifier::start(&supervisor, &only);
    let (proxy_stop_tx, proxy_stop_rx) = watch::channel(false);
    let mut proxy_tasks = Vec::new();
    let workers = if listeners.is_empty() {
        None
    } else {
        Some(
            Workers::start(Workers::default_count())
                .map_err(io_err(Path::new("proxy worker threads")))?,
        )
    };
    for (name, _, proxy) in supervisor.proxies() {
        if let Some(i) = listeners.iter().position(|(n, _)| *n == name) {
            let (_, listener) = listeners.swap_remove(i);
            let mut stop = proxy_stop_rx.clone();
            let workers = workers
                .clone()
                .expect("workers start when there is a listener");
            proxy_tasks.push(tokio::spawn(async move {
                proxy
                    .serve_on(workers, listener, async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await
            }));
        }
    }
    let (fire_tx, mut fire_rx) = tokio::sync::mpsc::channel::<String>(16);
    let _watcher = crate::watch::spawn(&root, watched, crate::watch::DEBOUNCE, fire_tx)?;
    let reloader = supervisor.clone();
    tokio::spawn(async move {
        while let Some(app) = fire_rx.recv().await {
            // The outcome is in the app's log either way (reload notes it).
            let _ = reloader.reload(&app).await;
        }
    });
    let metrics = Metrics::new(&supervisor);
    let _lisp_refresh = metrics.spawn_lisp_refresh(&supervisor);
    let down = Arc::new(Notify::new());
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let ctx = control::Ctx {
        supervisor: supervisor.clone(),
        down: down.clone(),
        stopped: stopped_rx,
    };
    let (server_stop_tx, mut server_stop_rx) = watch::channel(false);
    let admin_server = admin_listener.map(|l| {
        let admin = admin::Admin {
            token: admin_cfg.token.clone(),
            loopback: l.local_addr().is_ok_and(|a| a.ip().is_loopback()),
            metrics: metrics.clone(),
            hosts: admin_cfg.hosts.clone(),
        };
        if let Ok(a) = l.local_addr() {
            tracing::info!(%a, "admin listener: http://{a}/dashboard, http://{a}/metrics");
        }
        let router = admin::router(admin, ctx.clone());
        let mut stop = server_stop_rx.clone();
        tokio::spawn(async move {
            admin::serve(l, router, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        })
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, control::router(ctx))
            .with_graceful_shutdown(async move {
                let _ = server_stop_rx.wait_for(|s| *s).await;
            })
            .await
    });
    if let Some(f) = on_started {
        f(&supervisor);
    }

    let reason = tokio::select! {
        _ = sigint.recv() => "interrupt",
        _ = sigterm.recv() => "SIGTERM",
        _ = sighup.recv() => "SIGHUP",
        _ = down.notified() => "windlass down",
    };
    tracing::info!(reason, "stopping every app");
    if let Some(n) = notifier {
        n.stopping();
    }
    // New connections are refused from now on; requests in flight finish while the apps drain.
    proxy_stop_tx.send_replace(true);
    let shutdown = supervisor.shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = sigint.recv() => supervisor.force_kill(),
            _ = sigterm.recv() => supervisor.force_kill(),
        }
    }
    stopped_tx.send_replace(true);
    server_stop_tx.send_replace(true);
    for t in proxy_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
    }
    if let Some(w) = workers {
        // Joining blocks; the connections are done or given up on by now.
        let _ = tokio::task::spawn_blocking(move || w.shutdown()).await;
    }
    // Give `down` its answer; streaming clients are cut after a short grace.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    if let Some(a) = admin_server {
        // Dashboards hold log streams open; they are cut after the same grace.
        let _ = tokio::time::timeout(Duration::from_millis(500), a).await;
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pid_file);
    Ok(())
}
