//! Process signals: SIGTERM/SIGINT start a graceful shutdown; SIGHUP reloads
//! the config and swaps the snapshot, keeping the old one if the new config
//! is invalid.

use std::path::PathBuf;
use tokio::signal::unix::{SignalKind, signal};

use crate::state::{Shared, Snapshot};

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown() {
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
    }
}

/// Reloads `path` into `shared` on every SIGHUP, for the life of the process.
pub fn reload_on_sighup(shared: Shared, path: PathBuf) {
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; reload disabled");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload(&shared, &path).await;
        }
    });
}

async fn reload(shared: &Shared, path: &std::path::Path) {
    let path_owned = path.to_path_buf();
    // Key files are read and parsed here: keep that off the async workers.
    let built = tokio::task::spawn_blocking(move || Snapshot::load(&path_owned)).await;
    match built {
        Ok(Ok(mut snap)) => {
            let old = shared.load();
            if let (Some(new), Some(old)) = (&mut snap.login, &old.login) {
                new.carry_limits_from(old);
            }
            if snap.config.server.listen != old.config.server.listen {
                tracing::warn!("SIGHUP: [server] listen changed; it takes effect on restart");
            }
            let (new_state, old_state) = (&snap.config.state, &old.config.state);
            let state = |s: &'_ crate::config::StateConfig| {
                (s.path.clone(), s.redis_url.clone(), s.redis_tls.clone())
            };
            if state(new_state) != state(old_state) {
                tracing::warn!("SIGHUP: [state] changed; it takes effect on restart");
            }
            if snap.tls.is_some() != old.tls.is_some() {
                let now = if snap.tls.is_some() {
                    "HTTPS"
                } else {
                    "plain HTTP"
                };
                tracing::warn!(
                    "SIGHUP: [server] tls turned on or off: new connections are {now}; open ones carry on as they were"
                );
            }
            shared.store_snapshot(snap);
            shared.metrics.reload(true);
            tracing::info!(config = %path.display(), "SIGHUP: config reloaded");
        }
        // Counted before anything is logged: what the log says, /metrics
        // already shows.
        Ok(Err(errors)) => {
            shared.metrics.reload(false);
            for d in &errors.0 {
                tracing::error!("{d}");
            }
            tracing::error!("SIGHUP: the new config is invalid; keeping the old one");
        }
        Err(e) => {
            shared.metrics.reload(false);
            tracing::error!(error = %e, "SIGHUP: reload failed; keeping the old config");
        }
    }
}
