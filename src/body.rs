//! The one body type the gateway speaks, and small constructors for it.

use std::any::Any;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request and response bodies, streamed: nothing is collected whole.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// How long a refused request's body is still read (and thrown away) so
/// that the client, still sending it, reads its 413 rather than a reset
/// connection (nginx's lingering close).
pub const LINGER: Duration = Duration::from_secs(5);

/// Reads `body` to its end, or for [`LINGER`], throwing it away.
pub fn linger<B>(mut body: B)
where
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
{
    tokio::spawn(async move {
        let _ = tokio::time::timeout(LINGER, async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    });
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Any streaming body (hyper's `Incoming` both ways) as a [`Body`].
pub fn stream<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A request body on its way to the upstream that fails once it has kept
/// the gateway waiting on the client for `request_timeout` in all: the
/// `request_timeout` on a client that sends its body too slowly. Only time
/// spent asking the client for more counts: while the upstream is being
/// connected to, or reads slowly (hyper then does not ask), the budget
/// stands still, so a slow upstream never makes a fast client look slow.
pub struct Deadline<B> {
    /// `None` once the body passed `max_bytes`: handed to [`linger`].
    inner: Option<B>,
    /// Waiting time left.
    left: Duration,
    /// Since when the client has been waited on, if it is now.
    since: Option<Instant>,
    /// Armed to fire when `left` runs out, while waiting.
    sleep: Option<Pin<Box<Sleep>>>,
    state: Arc<BodyState>,
    /// Bytes the body may still carry (`max_body_bytes`).
    bytes_left: u64,
    _hold: Option<Hold>,
}

/// What the upstream exchange may ask of its request body.
#[derive(Default)]
pub struct BodyState {
    waiting_on_client: AtomicBool,
    /// The body failed on the client's side: [`TIMED_OUT`], [`BROKE`] or
    /// [`TOO_LARGE`].
    failed: AtomicU8,
}

const TIMED_OUT: u8 = 1;
const BROKE: u8 = 2;
const TOO_LARGE: u8 = 3;

/// How a request body failed on the client's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFailure {
    /// Not within `request_timeout` (408).
    TimedOut,
    /// Cut off or badly framed (400).
    Broke,
    /// Larger than `max_body_bytes` (413).
    TooLarge,
}

impl BodyState {
    /// Set once the body has failed on the client's side. An HTTP/2
    /// upstream's error does not carry the body's own (hyper resets the
    /// stream), so the exchange's outcome is judged by this too.
    pub fn client_failure(&self) -> Option<ClientFailure> {
        match self.failed.load(Ordering::Relaxed) {
            TIMED_OUT => Some(ClientFailure::TimedOut),
            BROKE => Some(ClientFailure::Broke),
            TOO_LARGE => Some(ClientFailure::TooLarge),
            _ => None,
        }
    }

    /// The body is stuck on the client: it was asked for more and the
    /// client has not sent it. When the upstream times out meanwhile, the
    /// client is the one to blame (408, not 504).
    pub fn waiting_on_client(&self) -> bool {
        self.waiting_on_client.load(Ordering::Relaxed)
    }
}

/// Something a request body keeps alive until it is dropped: the server
/// puts an HTTP/2 stream's open count in the request's extensions (see
/// `server::idle`), so an upload that outlasts its response keeps its
/// connection.
#[derive(Clone)]
pub struct Hold(pub Arc<dyn Any + Send + Sync>);

impl<B> Deadline<B> {
    /// `max_bytes`: the body fails once it carries more (`u64::MAX`: no limit).
    pub fn new(
        inner: B,
        timeout: Duration,
        max_bytes: u64,
        state: Arc<BodyState>,
        hold: Option<Hold>,
    ) -> Self {
        Deadline {
            inner: Some(inner),
            left: timeout,
            since: None,
            sleep: None,
            state,
            bytes_left: max_bytes,
            _hold: hold,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received within request_timeout")]
pub struct BodyTimeout;

#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_body_bytes")]
pub struct BodyTooLarge;

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Some(Err(BodyTooLarge.into())));
        };
        if let Poll::Ready(frame) = Pin::new(inner).poll_frame(cx) {
            if let Some(since) = this.since.take() {
                this.left = this.left.saturating_sub(since.elapsed());
                this.state.waiting_on_client.store(false, Ordering::Relaxed);
            }
            match &frame {
                Some(Err(_)) => this.state.failed.store(BROKE, Ordering::Relaxed),
                Some(Ok(f)) => {
                    let len = f.data_ref().map_or(0, |d| d.len() as u64);
                    if len > this.bytes_left {
                        // A body without a Content-Length (chunked), or
                        // longer than it said (HTTP/2): cut off here, the
                        // rest read and thrown away while the 413 goes out.
                        this.state.failed.store(TOO_LARGE, Ordering::Relaxed);
                        if let Some(rest) = this.inner.take() {
                            linger(rest);
                        }
                        return Poll::Ready(Some(Err(BodyTooLarge.into())));
                    }
                    this.bytes_left -= len;
                }
                None => {}
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if this.since.is_none() {
            let now = Instant::now();
            this.since = Some(now);
            this.state.waiting_on_client.store(true, Ordering::Relaxed);
            let until = now + this.left;
            match &mut this.sleep {
                Some(sleep) => sleep.as_mut().reset(until),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(until))),
            }
        }
        let sleep = this.sleep.as_mut().expect("armed while waiting");
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.state.failed.store(TIMED_OUT, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyTimeout.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(SizeHint::default, HttpBody::size_hint)
    }
}
