//! Chooses who answers a request: the gateway's own endpoints (issue #4 adds
//! `/auth/*` and `/.well-known/*` here), else the proxy path.

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::proxy::{self, Peer};
use crate::state::Snapshot;

pub async fn dispatch(req: Request<Incoming>, snap: &Snapshot, peer: &Peer) -> Response<Body> {
    proxy::handle(req, snap, peer).await
}
