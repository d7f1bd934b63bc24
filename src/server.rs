//! The listener: accept loop, connection limits, HTTP/1.1 + h2c on one port,
//! graceful shutdown.

pub mod admin;
mod dispatch;
pub mod signals;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::state::{Shared, Snapshot};
use admin::Health;

/// Binds the listeners of `snap`, serves until SIGTERM/SIGINT, reloads on SIGHUP.
///
/// # Errors
/// When a listener cannot be bound.
pub async fn serve(snap: Snapshot, config_path: PathBuf) -> std::io::Result<()> {
    let listen = snap.config.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let health = Arc::new(Health::default());
    if let Some(addr) = snap.config.server.admin_listen {
        let admin = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}"))
        })?;
        tokio::spawn(admin::serve(admin, Arc::clone(&health)));
        tracing::info!(%addr, "admin listener up");
    }
    if let Some(path) = &snap.generated_key {
        tracing::info!(path = %path.display(), "signing with the generated Ed25519 key");
    }
    tracing::info!(addr = %listen, "{}", snap.summary());
    let shared: Shared = Arc::new(ArcSwap::from_pointee(snap));
    signals::reload_on_sighup(Arc::clone(&shared), config_path);
    run(listener, shared, health, signals::shutdown()).await;
    Ok(())
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish for up to `shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    shared: Shared,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    let (builder, limit, grace) = {
        let snap = shared.load();
        let s = &snap.config.server;
        (builder(s), s.max_connections, s.shutdown_grace)
    };
    let builder = Arc::new(builder);
    // One permit per open connection: beyond the limit, connections wait in the backlog.
    let permits = Arc::new(Semaphore::new(limit));
    let graceful = GracefulShutdown::new();
    health.set_ready(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The service captures `Shared`, not a snapshot: keep-alive
        // connections see a reload on their next request.
        let shared = Arc::clone(&shared);
        let svc = service_fn(move |req| {
            let snap = shared.load_full();
            async move { Ok::<_, Infallible>(dispatch::dispatch(req, &snap, peer).await) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    health.set_ready(false);
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown_grace elapsed with connections still open"),
    }
}

fn builder(s: &crate::config::ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .max_buf_size(s.max_header_bytes);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
    b
}
