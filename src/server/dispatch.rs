//! Chooses who answers a request: `[cors]` for a preflight, else the
//! gateway's own endpoints (`/auth/*`, `/.well-known/*`), else the proxy
//! path.

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::cors::Class;
use crate::endpoints::{self, Endpoint};
use crate::proxy::{self, Peer};
use crate::state::{Gateway, Snapshot};

pub async fn dispatch(
    req: Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
    peer: &Peer,
) -> Response<Body> {
    let cors = snap.config.cors.as_ref();
    let mut allowed = None;
    if let Some(cors) = cors {
        match cors.classify(req.method(), req.headers()) {
            Class::Preflight(rsp) => {
                let id = proxy::request_id_of(&req, snap);
                tracing::info!(
                    target: "gatehouse::access",
                    method = "OPTIONS",
                    path = req.uri().path(),
                    route = "-",
                    preflight = true,
                    status = rsp.status().as_u16(),
                    request_id = id.as_ref().and_then(|v| v.to_str().ok()),
                );
                return rsp;
            }
            Class::Cross(origin) => allowed = origin,
            Class::Plain => {}
        }
    }
    // One async level for the proxy path: a second one (an `async fn`
    // around this match) cost 300 instructions a request, mostly moving
    // its future into this one's.
    let mut rsp = match Endpoint::at(req.uri().path()) {
        None => proxy::handle(req, snap, &gw.revocations, peer).await,
        // Boxed: the endpoints' futures (password hashing, store writes)
        // are larger than the proxy path's, and every request's future
        // would otherwise be as large as theirs (hyper moves it into place).
        Some(endpoint) => Box::pin(endpoint_logged(endpoint, req, gw, snap, peer)).await,
    };
    if let Some(cors) = cors {
        cors.mark(&mut rsp, allowed);
    }
    rsp
}

/// One of the gateway's own endpoints, with its access log line.
async fn endpoint_logged(
    endpoint: Endpoint,
    req: Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
    peer: &Peer,
) -> Response<Body> {
    let method = req.method().clone();
    let id = proxy::request_id_of(&req, snap);
    let started = Instant::now();
    let rsp = endpoints::serve(endpoint, req, gw, snap, peer).await;
    tracing::info!(
        target: "gatehouse::access",
        method = %method,
        endpoint = ?endpoint,
        status = rsp.status().as_u16(),
        total_us = started.elapsed().as_micros() as u64,
        request_id = id.as_ref().and_then(|v| v.to_str().ok()),
    );
    rsp
}
