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
//!
//! A pool opens its connections through its [`Dial`] (`dial.rs`): plain
//! TCP for an `http://` target, TLS over it for `https://`.
//!
//! An upstream with `protocol = "http2"` (gRPC) has no stack: each target
//! has one HTTP/2 connection (h2c, or h2 by ALPN over TLS) that every
//! request shares as a stream, opened again when it has closed.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;

use crate::body::{Body, BoxError};

use super::dial::{ConnectError, Dial, H2Body};

/// Idle connections kept per target.
pub const MAX_IDLE: usize = 512;

/// An idle connection older than this is closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The idle connections to one target, and how to open more.
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    /// HTTP/2: the target's shared connection, once opened. Held while one
    /// is opened, so that requests arriving meanwhile wait for it.
    shared: tokio::sync::Mutex<Shared>,
    /// HTTP/2 connects begun: numbers the connections.
    h2_attempts: AtomicU64,
    dial: Dial,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// An HTTP/2 connection's state in its [`Pool`].
#[derive(Default)]
struct Shared {
    /// The connection in use and its number.
    current: Option<(u64, http2::SendRequest<H2Body>)>,
    /// How the last connect failed, for the requests that waited for it.
    failure: Option<Failure>,
}

/// A failed connect, kept to answer the requests that waited for it alike.
enum Failure {
    TimedOut,
    Other(String),
}

impl Failure {
    fn of(e: &ConnectError) -> Failure {
        match e {
            ConnectError::TimedOut => Failure::TimedOut,
            e => Failure::Other(e.to_string()),
        }
    }

    fn again(&self) -> ConnectError {
        match self {
            Failure::TimedOut => ConnectError::TimedOut,
            Failure::Other(why) => ConnectError::Refused(std::io::Error::other(why.clone())),
        }
    }
}

impl Pool {
    pub fn new(dial: Dial) -> Self {
        Pool {
            idle: Mutex::new(VecDeque::new()),
            shared: tokio::sync::Mutex::default(),
            h2_attempts: AtomicU64::new(0),
            dial,
        }
    }

    /// HTTP/2: the target's shared connection and its number, opened
    /// (within `timeout`) when there is none, it has closed, or it is
    /// number `stale` (it turned a request away, or a request on it timed
    /// out: it may be dead without knowing it).
    ///
    /// Connects happen one at a time. Requests that waited for one that
    /// failed get its failure, rather than each trying again in turn.
    ///
    /// # Errors
    /// See [`Dial::connect_h2`].
    pub async fn shared(
        &self,
        timeout: Duration,
        stale: Option<u64>,
    ) -> Result<(u64, http2::SendRequest<H2Body>), ConnectError> {
        let attempts_seen = self.h2_attempts.load(Ordering::Acquire);
        let mut shared = self.shared.lock().await;
        if let Some((number, sender)) = &shared.current
            && Some(*number) != stale
            && !sender.is_closed()
        {
            return Ok((*number, sender.clone()));
        }
        if self.h2_attempts.load(Ordering::Acquire) != attempts_seen
            && let Some(failure) = &shared.failure
        {
            return Err(failure.again());
        }
        let number = self.h2_attempts.fetch_add(1, Ordering::AcqRel) + 1;
        match self.dial.connect_h2(timeout).await {
            Ok(sender) => {
                shared.current = Some((number, sender.clone()));
                shared.failure = None;
                Ok((number, sender))
            }
            Err(e) => {
                shared.current = None;
                shared.failure = Some(Failure::of(&e));
                Err(e)
            }
        }
    }

    /// HTTP/2: stops handing out connection `number` (a request on it got
    /// no answer in time); the next request opens a new one. Streams open
    /// on it carry on.
    pub async fn retire_shared(&self, number: u64) {
        let mut shared = self.shared.lock().await;
        if shared.current.as_ref().is_some_and(|(n, _)| *n == number) {
            shared.current = None;
        }
    }

    pub fn dial(&self) -> &Dial {
        &self.dial
    }

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
    /// See [`Dial::connect`].
    pub async fn get(
        &self,
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
        Box::pin(self.dial.connect(connect_timeout))
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
