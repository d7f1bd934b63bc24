//! Chooses who answers a request: the gateway's own endpoints (`/auth/*`,
//! `/.well-known/*`), else the proxy path.

use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::endpoints::{self, Endpoint};
use crate::proxy::{self, Peer};
use crate::state::{Gateway, Snapshot};

pub async fn dispatch(
    req: Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
    peer: &Peer,
) -> Response<Body> {
    let Some(endpoint) = Endpoint::at(req.uri().path()) else {
        return proxy::handle(req, snap, &gw.revocations, peer).await;
    };
    let method = req.method().clone();
    let started = Instant::now();
    // Boxed: the endpoints' futures (password hashing, store writes) are
    // larger than the proxy path's, and every request's future would
    // otherwise be as large as theirs (hyper moves it into place).
    let rsp = Box::pin(endpoints::serve(endpoint, req, gw, snap, peer)).await;
    tracing::info!(
        target: "gatehouse::access",
        method = %method,
        endpoint = ?endpoint,
        status = rsp.status().as_u16(),
        total_us = started.elapsed().as_micros() as u64,
    );
    rsp
}
