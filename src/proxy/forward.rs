//! Sending the rewritten request to a target and streaming the answer back.
//!
//! Connect errors are 502 (and eject the target), a connect or response
//! timeout is 504. Bodies stream both ways. A `101 Switching Protocols`
//! answer to an upgrade request joins the two upgraded connections.

use std::any::Any;
use std::sync::Arc;

use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use super::dial::{ConnectError, H2Body};
use super::headers::strip_hop_by_hop;
use super::pool::{Pool, Pooled};
use super::upstream::Upstream;
use crate::body::{self, Body, BodyState, ClientFailure};
use crate::error::GatewayError;
use crate::timer::SleepSlot;

/// Keeps what the client connection holds (its `max_connections` permit)
/// alive for as long as an upgraded tunnel made from it runs. Each
/// connection's `Peer` holds one; an upgrade takes a clone along.
#[derive(Clone)]
pub struct ConnGuard(pub Arc<dyn Any + Send + Sync>);

/// The client side of an upgrade request.
pub struct Upgrade {
    pub on: hyper::upgrade::OnUpgrade,
    pub guard: ConnGuard,
}

/// Sends `req` (headers already rewritten) to `target` of `upstream`;
/// `client_body` is the state of its body, when it has one.
///
/// # Errors
/// `UpstreamConnect` (502) or `UpstreamTimeout` (504); `RequestTimeout`
/// (408) or `BadRequest` when the client's body failed.
// Each argument is one thing the exchange needs; a struct made only to
// carry them to this one call would say less.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    mut req: Request<Body>,
    upstream: &Upstream,
    target_index: usize,
    pool: &Arc<Pool>,
    path_and_query: PathAndQuery,
    downstream_upgrade: Option<Upgrade>,
    timer: &Arc<SleepSlot>,
    client_body: Option<&BodyState>,
) -> Result<Response<Body>, GatewayError> {
    if pool.dial().is_http2() {
        // Boxed: its future would otherwise widen every HTTP/1.1 request's.
        let h2 = forward_h2(
            req,
            upstream,
            target_index,
            pool,
            path_and_query,
            timer,
            client_body,
        );
        return Box::pin(h2).await;
    }
    let authority = pool.dial().authority();
    // HTTP/1.1 upstreams get the origin form and a Host: the client's
    // (HTTP/2 clients send :authority, not Host), or the target's.
    *req.uri_mut() = Uri::from(path_and_query);
    if !upstream.preserve_host || !req.headers().contains_key(header::HOST) {
        let host = HeaderValue::from_str(authority.as_str())
            .expect("an authority is a valid header value");
        req.headers_mut().insert(header::HOST, host);
    }
    *req.version_mut() = http::Version::HTTP_11;

    // Read once: the exchange's deadline, and the idle ages at checkout.
    let began = tokio::time::Instant::now();
    let sent = timer
        .within(
            began + upstream.timeout,
            send(req, pool, upstream.connect_timeout, began.into_std()),
        )
        .await;
    let (mut rsp, sender) = settle(sent, upstream, target_index, pool, client_body, began)?;

    let upgraded = rsp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(downstream)) = (upgraded, downstream_upgrade) {
        let upstream_io = hyper::upgrade::on(&mut rsp);
        tokio::spawn(join_upgraded(downstream, upstream_io));
    }
    strip_hop_by_hop(rsp.headers_mut(), upgraded);
    if upgraded {
        // The connection now carries the tunnel: never reused.
        drop(sender);
        return Ok(rsp.map(body::stream::<Incoming>));
    }
    let pool = Arc::clone(pool);
    Ok(rsp.map(|b| Body::new(Pooled::new(b, sender, pool))))
}

/// What became of an exchange with target `target_index` of `upstream`
/// that began at `began`: its answer, or the error the client gets (each
/// logged, a refused connection also ejecting the target).
///
/// # Errors
/// See [`forward`].
fn settle<T>(
    sent: Result<Result<T, Failed>, crate::timer::Elapsed>,
    upstream: &Upstream,
    target_index: usize,
    pool: &Pool,
    client_body: Option<&BodyState>,
    began: tokio::time::Instant,
) -> Result<T, GatewayError> {
    match sent {
        // The upstream had no answer in time, but it was waiting for a
        // body the client stopped sending: the client's fault, whichever
        // of the two timers fired first.
        Err(_elapsed) if client_body.is_some_and(BodyState::waiting_on_client) => {
            tracing::debug!(target = %pool.dial(), "the client's request body stalled");
            Err(GatewayError::RequestTimeout)
        }
        Err(_elapsed) => {
            tracing::warn!(upstream = %upstream.name, target = %pool.dial(), "upstream timed out");
            Err(GatewayError::UpstreamTimeout)
        }
        Ok(Err(Failed::Exchange(e)))
            if let Some(blame) = client_body
                .and_then(BodyState::client_failure)
                .map(blame)
                .or_else(|| client_body_failed(&e)) =>
        {
            tracing::debug!(target = %pool.dial(), error = %e, "the client's request body failed");
            Err(blame)
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %upstream.name, target = %pool.dial(), error = %e, "upstream request failed");
            Err(match e {
                Failed::Connect(ConnectError::TimedOut) => GatewayError::UpstreamTimeout,
                Failed::Connect(_) => {
                    upstream.eject(target_index);
                    GatewayError::UpstreamConnect
                }
                Failed::Exchange(_) => GatewayError::UpstreamConnect,
            })
        }
        Ok(Ok(answer)) => {
            upstream.latency.observe(began.elapsed());
            Ok(answer)
        }
    }
}

/// [`forward`] to an HTTP/2 target (gRPC): the request becomes a stream of
/// the target's shared connection, with `:scheme` the target's and
/// `:authority` what `Host` would be for HTTP/1.1. No upgrades: HTTP/2 has
/// none, so the request goes as a plain one (its upgrade headers dropped).
///
/// # Errors
/// As [`forward`].
async fn forward_h2(
    mut req: Request<Body>,
    upstream: &Upstream,
    target_index: usize,
    pool: &Pool,
    path_and_query: PathAndQuery,
    timer: &Arc<SleepSlot>,
    client_body: Option<&BodyState>,
) -> Result<Response<Body>, GatewayError> {
    let headers = req.headers_mut();
    let client_host = headers.remove(header::HOST);
    headers.remove(header::CONNECTION);
    headers.remove(header::UPGRADE);
    let dial = pool.dial();
    let authority = client_host
        .filter(|_| upstream.preserve_host)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
        // HTTP/2 forbids userinfo in :authority.
        .filter(|a| !a.as_str().contains('@'))
        .unwrap_or_else(|| dial.authority().clone());
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(dial.scheme());
    uri.authority = Some(authority);
    uri.path_and_query = Some(path_and_query);
    *req.uri_mut() = Uri::from_parts(uri).expect("scheme, authority and path make a URI");
    *req.version_mut() = http::Version::HTTP_2;

    let began = tokio::time::Instant::now();
    let mut number = None;
    let exchange = send_h2(req, pool, upstream.connect_timeout, &mut number);
    let sent = timer.within(began + upstream.timeout, exchange).await;
    let upstreams_fault = !client_body.is_some_and(BodyState::waiting_on_client);
    if let (Err(_elapsed), Some(n), true) = (&sent, number, upstreams_fault) {
        // No answer in time on that connection: the next request opens
        // another (this one's stream stays on it until it is dropped).
        pool.retire_shared(n).await;
    }
    let mut rsp = settle(sent, upstream, target_index, pool, client_body, began)?;
    strip_hop_by_hop(rsp.headers_mut(), false);
    // The body's frames, trailers (gRPC's status) included, as they come.
    Ok(rsp.map(body::stream::<Incoming>))
}

/// Sends `req` as a stream of the target's shared HTTP/2 connection. One
/// that turned it away unsent (closing, a GOAWAY) gets it again on a new
/// one. A request without a body that the server refused unprocessed
/// (`REFUSED_STREAM`, RFC 9113 §8.7: safe to send again, whatever the
/// method) is sent once more; one with a body cannot be, its body is gone.
async fn send_h2(
    req: Request<Body>,
    pool: &Pool,
    connect_timeout: std::time::Duration,
    number: &mut Option<u64>,
) -> Result<Response<Incoming>, Failed> {
    let (n, mut sender) = pool
        .shared(connect_timeout, None)
        .await
        .map_err(Failed::Connect)?;
    *number = Some(n);
    let again = hyper::body::Body::is_end_stream(req.body()).then(|| {
        let mut copy = Request::new(body::empty());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        copy
    });
    let mut err = match sender.try_send_request(req.map(H2Body)).await {
        Ok(rsp) => return Ok(rsp),
        Err(e) => e,
    };
    let req = match (err.take_message(), again) {
        (Some(req), _) => req,
        (None, Some(copy)) if refused_stream(err.error()) => {
            tracing::debug!(target = %pool.dial(), "stream refused unprocessed: sent again");
            copy.map(H2Body)
        }
        (None, _) => return Err(Failed::Exchange(err.into_error())),
    };
    // Only if no other request has replaced that connection already.
    let (n, mut sender) = pool
        .shared(connect_timeout, Some(n))
        .await
        .map_err(Failed::Connect)?;
    *number = Some(n);
    sender.send_request(req).await.map_err(Failed::Exchange)
}

/// The server reset the stream with `REFUSED_STREAM`: it did not process it.
fn refused_stream(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|cause| cause.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        == Some(h2::Reason::REFUSED_STREAM)
}

/// The answer to a request whose body failed on the client's side.
fn blame(failure: ClientFailure) -> GatewayError {
    match failure {
        ClientFailure::TimedOut => GatewayError::RequestTimeout,
        ClientFailure::Broke => GatewayError::BadRequest("the request body could not be read"),
        ClientFailure::TooLarge => GatewayError::PayloadTooLarge,
    }
}

/// The client's fault, not the upstream's: the request body failed on its
/// way through. 408 when it came too slowly (`request_timeout`, see
/// [`body::Deadline`]); 400 when the client's side of it broke (cut off,
/// bad chunked framing). `None` for every other failure, the upstream's.
fn client_body_failed(e: &hyper::Error) -> Option<GatewayError> {
    // hyper marks a failure of the body it was sending as the user's, with
    // the body's own error as the source.
    if !e.is_user() {
        return None;
    }
    let cause = std::error::Error::source(e)?;
    if cause.is::<body::BodyTimeout>() {
        Some(GatewayError::RequestTimeout)
    } else if cause.is::<body::BodyTooLarge>() {
        Some(GatewayError::PayloadTooLarge)
    } else if cause.is::<hyper::Error>() {
        Some(GatewayError::BadRequest(
            "the request body could not be read",
        ))
    } else {
        None
    }
}

/// Why an exchange with the upstream failed.
#[derive(Debug)]
pub(crate) enum Failed {
    Connect(ConnectError),
    Exchange(hyper::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Connect(e) => e.fmt(f),
            Failed::Exchange(e) => e.fmt(f),
        }
    }
}

/// Sends `req` on a pooled connection, or a new one. A reused connection
/// that the upstream closed before taking the request (the keep-alive race)
/// gets the request retried once on a new connection.
pub(crate) async fn send(
    req: Request<Body>,
    pool: &Pool,
    connect_timeout: std::time::Duration,
    began: std::time::Instant,
) -> Result<(Response<Incoming>, SendRequest<Body>), Failed> {
    let (mut sender, reused) = pool
        .get(connect_timeout, began)
        .await
        .map_err(Failed::Connect)?;
    let mut err = match sender.try_send_request(req).await {
        Ok(rsp) => return Ok((rsp, sender)),
        Err(e) => e,
    };
    match err.take_message() {
        // Boxed, as the rare path: its futures would otherwise widen every
        // request's future (see `timer::SleepSlot::within`).
        Some(req) if reused => {
            Box::pin(async move {
                let mut sender = pool
                    .dial()
                    .connect(connect_timeout)
                    .await
                    .map_err(Failed::Connect)?;
                match sender.send_request(req).await {
                    Ok(rsp) => Ok((rsp, sender)),
                    Err(e) => Err(Failed::Exchange(e)),
                }
            })
            .await
        }
        _ => Err(Failed::Exchange(err.into_error())),
    }
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
