//! Upgraded connections (WebSocket and any other `Upgrade`): once the app answered
//! `101 Switching Protocols` and that answer reached the client, both sides are taken
//! over from hyper (`hyper::upgrade::on`) and bytes are copied both ways until either
//! side closes. The tunnel counts as an open connection on its instance, so a drain
//! waits for it, and it closes when the drain's deadline passes.

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::proxy::Shared;
use crate::proxy::backend::UpgradeGuard;

/// Spawns the byte pump between the client and the app.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    guard: UpgradeGuard,
) {
    let mut close = guard.backend().close_signal();
    tokio::spawn(async move {
        shared.metrics.upgrade_opened();
        let addr = guard.backend().addr;
        let pump = async {
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                tracing::debug!(%addr, error = %e, "upgraded connection ended with an error");
            }
        };
        tokio::select! {
            () = pump => {}
            _ = close.wait_for(|closing| *closing) => {
                tracing::debug!(%addr, "closing upgraded connection: drain deadline");
            }
        }
        shared.metrics.upgrade_closed();
        drop(guard);
    });
}
