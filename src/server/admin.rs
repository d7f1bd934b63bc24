//! The admin listener: `/healthz` (200 while the process serves),
//! `/readyz` (200 while the gateway accepts traffic, every `jwks_url`
//! issuer has its keys and the state store answers; 503 otherwise, and
//! once it drains)
//! and `/metrics` (Prometheus text format; see `crate::metrics`).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::header::CONTENT_TYPE;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::metrics::Gauges;
use crate::state::Shared;

/// Readiness, shared by the main listener (which clears it when draining) and the admin one.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Serves the admin endpoints until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>, shared: Shared) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let health = Arc::clone(&health);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let rsp = respond(&req, &health, &shared);
                async move { Ok::<_, Infallible>(rsp) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(req: &Request<Incoming>, health: &Health, shared: &Shared) -> Response<Body> {
    if req.uri().path() == "/metrics" {
        let snap = shared.load();
        let gauges = Gauges {
            cache_entries: snap.cache.entry_count(),
            targets: snap
                .upstreams
                .iter()
                .flat_map(|u| {
                    u.target_states()
                        .map(|(target, up)| (u.name.clone(), target, up))
                })
                .collect(),
            jwks: snap
                .verifier
                .remotes()
                .map(|r| (r.issuer.clone(), r.keys().len(), r.failures()))
                .collect(),
        };
        let mut rsp = Response::new(body::full(shared.metrics.render(&gauges)));
        rsp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return rsp;
    }
    let (status, text) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, "ok\n"),
        "/readyz" if !health.is_ready() => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/readyz" if !shared.keys_ready() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: an issuer's jwks_url has not been fetched yet\n",
        ),
        "/readyz" if !shared.store_ready() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the state store does not answer\n",
        ),
        "/readyz" => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found\n"),
    };
    let mut rsp = Response::new(body::full(text));
    *rsp.status_mut() = status;
    rsp
}
