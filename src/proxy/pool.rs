//! Keep-alive HTTP/1.1 connections to one target: a small LIFO stack of
//! idle `hyper::client::conn::http1` senders.
//!
//! hyper-util's legacy `Client` does the same job with general machinery
//! (a pool keyed by a hashed scheme+authority, URI rebuilding, a checkout
//! future per request): about 7k instructions a request more than this,
//! measured in `../shared/bench/FLOOR.md`. A target here is one authority,
//! so the pool is a mutex around a `VecDeque`: the most recently used
//! connection first (its socket is warm), the oldest dropped once idle for
//! [`IDLE_TIMEOUT`] or beyond [`MAX_IDLE`].
//!
//! A connection goes back on the stack when its response body has been read
//! to the end; a response dropped half-read, an upgrade, or a connection the
//! upstream closed is never reused.
//!
//! A checkout judges idle ages by the time the exchange began, which the
//! caller has read already (`forward`); a checkin reads the clock once, to
//! stamp the connection and judge the oldest.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::{Body, BoxError};

/// Idle connections kept per target.
pub const MAX_IDLE: usize = 512;

/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The idle connections to one target.
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Refused(std::io::Error),
    TimedOut,
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(e) => write!(f, "connect: {e}"),
            ConnectError::TimedOut => f.write_str("connect timed out"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            idle: Mutex::new(VecDeque::new()),
        }
    }
}

impl Pool {
    /// The most recently used idle connection that is still open, if any.
    /// It may still be settling after its last exchange: await
    /// `SendRequest::ready` before sending on it.
    pub fn checkout(&self, now: Instant) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(Idle { sender, since }) = idle.pop_back() {
            if now.saturating_duration_since(since) < IDLE_TIMEOUT && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// A connection ready for a request begun at `now`: an idle one, else a new one.
    /// `true` with a reused one (which the upstream may close at any moment:
    /// a request it never saw may be retried on a new connection).
    ///
    /// # Errors
    /// See [`Pool::connect`].
    pub async fn get(
        &self,
        authority: &Authority,
        connect_timeout: Duration,
        mut now: Instant,
    ) -> Result<(SendRequest<Body>, bool), ConnectError> {
        while let Some(mut sender) = self.checkout(now) {
            if sender.ready().await.is_ok() {
                return Ok((sender, true));
            }
            // That wait may have been long: judge the next one by the clock.
            now = Instant::now();
        }
        // Boxed: new connections are rare, and their future would widen
        // every request's.
        Box::pin(Pool::connect(authority, connect_timeout))
            .await
            .map(|s| (s, false))
    }

    /// Puts a connection whose exchange has ended back on the stack.
    pub fn checkin(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // The oldest sit at the front: drop the stale ones and the excess.
        while idle.front().is_some_and(|i| {
            now.saturating_duration_since(i.since) >= IDLE_TIMEOUT || i.sender.is_closed()
        }) || idle.len() >= MAX_IDLE
        {
            idle.pop_front();
        }
        idle.push_back(Idle { sender, since: now });
    }

    /// Opens a new connection to `authority` within `timeout`; its I/O runs
    /// on a task of its own (which also carries an upgrade, if one happens).
    ///
    /// # Errors
    /// Refused, timed out, or the HTTP/1 handshake failed.
    pub async fn connect(
        authority: &Authority,
        timeout: Duration,
    ) -> Result<SendRequest<Body>, ConnectError> {
        let addr = (authority.host(), authority.port_u16().unwrap_or(80));
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::TimedOut),
            Ok(Err(e)) => return Err(ConnectError::Refused(e)),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            // As the server side does (see `server::builders`).
            .writev(false)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// A response body that hands its connection back to the pool once it has
/// been read to the end. Its error is already a `BoxError`, so it is boxed
/// as the gateway's `Body` without an error-mapping layer around it.
pub struct Pooled {
    inner: Incoming,
    back: Option<(SendRequest<Body>, Arc<Pool>)>,
}

impl Pooled {
    pub fn new(inner: Incoming, sender: SendRequest<Body>, pool: Arc<Pool>) -> Self {
        let mut body = Pooled {
            inner,
            back: Some((sender, pool)),
        };
        // A bodiless answer (204, HEAD, Content-Length: 0) is done already.
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some((sender, pool)) = self.back.take()
        {
            pool.checkin(sender);
        }
    }
}

impl HttpBody for Pooled {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some((sender, pool)) = self.back.take() {
                    pool.checkin(sender);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                self.release_if_done();
                Poll::Ready(Some(Ok(frame)))
            }
            // An error: the connection is not reused (dropped with `back`).
            Poll::Ready(Some(Err(e))) => {
                self.back = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
