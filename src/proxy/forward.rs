//! Sending the rewritten request to a target and streaming the answer back.
//!
//! Connect errors are 502 (and eject the target), a connect or response
//! timeout is 504. Bodies stream both ways. A `101 Switching Protocols`
//! answer to an upgrade request joins the two upgraded connections.

use std::any::Any;
use std::error::Error as _;
use std::io;
use std::sync::Arc;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::headers::strip_hop_by_hop;
use super::upstream::Upstream;
use crate::body::{self, Body};
use crate::config::Target;
use crate::error::GatewayError;

/// Keeps what the client connection holds (its `max_connections` permit)
/// alive for as long as an upgraded tunnel made from it runs. The server
/// puts one in the extensions of requests that ask for an upgrade.
#[derive(Clone)]
pub struct ConnGuard(pub Arc<dyn Any + Send + Sync>);

/// The client side of an upgrade request.
pub struct Upgrade {
    pub on: hyper::upgrade::OnUpgrade,
    pub guard: Option<ConnGuard>,
}

/// Sends `req` (headers already rewritten) to `target` of `upstream`.
///
/// # Errors
/// `UpstreamConnect` (502) or `UpstreamTimeout` (504).
pub async fn forward(
    mut req: Request<Body>,
    upstream: &Upstream,
    target_index: usize,
    authority: &http::uri::Authority,
    path_and_query: PathAndQuery,
    downstream_upgrade: Option<Upgrade>,
) -> Result<Response<Body>, GatewayError> {
    let uri = Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| GatewayError::BadRequest("the request target cannot be forwarded"))?;
    *req.uri_mut() = uri;
    // HTTP/2 clients send :authority, not Host; HTTP/1.1 upstreams need one.
    if !req.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        req.headers_mut().insert(header::HOST, host);
    }
    *req.version_mut() = http::Version::HTTP_11;

    let sent = tokio::time::timeout(upstream.timeout, upstream.client.request(req)).await;
    let mut rsp = match sent {
        Err(_elapsed) => {
            tracing::warn!(upstream = %upstream.name, target = %authority, "upstream timed out");
            return Err(GatewayError::UpstreamTimeout);
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %upstream.name, target = %authority, error = %e, "upstream request failed");
            if e.is_connect() {
                upstream.eject(target_index);
            }
            return Err(if is_timeout(&e) {
                GatewayError::UpstreamTimeout
            } else {
                GatewayError::UpstreamConnect
            });
        }
        Ok(Ok(rsp)) => rsp,
    };

    let upgraded = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(downstream)) = (upgraded, downstream_upgrade) {
        let upstream_io = hyper::upgrade::on(&mut rsp);
        tokio::spawn(join_upgraded(downstream, upstream_io));
    }
    strip_hop_by_hop(rsp.headers_mut(), upgraded);
    Ok(rsp.map(body::stream::<Incoming>))
}

/// Copies bytes both ways between the two upgraded connections until either closes.
async fn join_upgraded(down: Upgrade, up: hyper::upgrade::OnUpgrade) {
    let _guard = down.guard;
    let (down, up) = match tokio::try_join!(down.on, up) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended");
    }
}

fn is_timeout(e: &hyper_util::client::legacy::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        // hyper-util's connector reports its connect_timeout as io::ErrorKind::TimedOut.
        if s.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Where a target sends: `None` for the in-process echo.
pub fn authority(t: &Target) -> Option<&http::uri::Authority> {
    match t {
        Target::Echo => None,
        Target::Http { authority } => Some(authority),
    }
}
