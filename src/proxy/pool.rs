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
//! A pool opens its connections through its [`Dial`]: plain TCP for an
//! `http://` target, TLS over it (rustls, HTTP/1.1 by ALPN) for `https://`.
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
use http::uri::Authority;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::body::{Body, BoxError};
use crate::client_tls;

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

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Refused(std::io::Error),
    TimedOut,
    /// The TLS handshake failed: most often a certificate that is not trusted
    /// or does not name the target.
    Tls(std::io::Error),
    Handshake(hyper::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(e) => write!(f, "connect: {e}"),
            ConnectError::TimedOut => f.write_str("connect timed out"),
            ConnectError::Tls(e) => write!(f, "TLS: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
        }
    }
}

/// How to open a connection to one target: its address, and for an
/// `https://` target the TLS client and the name its certificate must carry
/// (the target's host, also sent as SNI).
#[derive(Clone)]
pub struct Dial {
    authority: Authority,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// Speak HTTP/2 (`protocol = "http2"`).
    http2: bool,
}

/// The address and whether it is TLS: no keys or certificates.
impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dial")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .finish()
    }
}

/// The target as `/metrics` and the log name it: `host:port` for plain
/// HTTP (as before `https://` targets existed), `https://host:port` for TLS,
/// so that the two never share a name.
impl std::fmt::Display for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tls.is_some() {
            f.write_str("https://")?;
        }
        f.write_str(self.authority.as_str())
    }
}

impl Dial {
    /// Plain TCP to `authority` (port 80 unless it names one).
    pub fn plain(authority: Authority) -> Dial {
        Dial {
            authority,
            tls: None,
            http2: false,
        }
    }

    /// TLS to `authority` (port 443 unless it names one), the server checked
    /// as `config` says and named `name`.
    pub fn tls(authority: Authority, config: Arc<ClientConfig>, name: ServerName<'static>) -> Dial {
        Dial {
            authority,
            tls: Some((TlsConnector::from(config), name)),
            http2: false,
        }
    }

    /// The same target, spoken to in HTTP/2: prior knowledge (h2c) over
    /// plain TCP; over TLS, the `config` given to [`Dial::tls`] must offer
    /// `h2` by ALPN (`client_tls::config`), and the server must take it.
    pub fn http2(self) -> Dial {
        Dial {
            http2: true,
            ..self
        }
    }

    pub fn is_http2(&self) -> bool {
        self.http2
    }

    /// `https` or `http`: the `:scheme` of HTTP/2 requests.
    pub fn scheme(&self) -> http::uri::Scheme {
        if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }

    /// To the server of an `http://` or `https://` URL; for `https://`, the
    /// server checked against `roots`, or without them the system's, read now.
    ///
    /// # Errors
    /// The URL has no host, its host is no name TLS can check, or the system
    /// has no trusted roots.
    pub fn for_url(url: &http::Uri, roots: Option<RootCertStore>) -> Result<Dial, String> {
        let authority = url.authority().ok_or("the URL has no host")?.clone();
        if url.scheme_str() != Some("https") {
            return Ok(Dial::plain(authority));
        }
        let name = server_name(&authority)?;
        let roots = match roots {
            Some(roots) => roots,
            None => client_tls::system_roots()?,
        };
        Ok(Dial::tls(
            authority,
            client_tls::config(roots, None, false)?,
            name,
        ))
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// Opens a connection and completes its TLS handshake (if any) within
    /// `timeout`; its I/O runs on a task of its own (which also carries an
    /// upgrade, if one happens).
    ///
    /// # Errors
    /// Refused, timed out, the TLS handshake failed, or the HTTP/1 one did.
    pub async fn connect(&self, timeout: Duration) -> Result<SendRequest<Body>, ConnectError> {
        match self.open(timeout).await? {
            // Two kinds of connection, two instantiations of hyper's client:
            // plain TCP keeps its own, so the common case stays as cheap
            // as before TLS existed.
            Opened::Plain(tcp) => handshake(tcp).await,
            Opened::Tls(tls) => handshake(tls).await,
        }
    }

    /// [`Dial::connect`] for HTTP/2: a connection that carries many
    /// requests at once, driven by a task of its own.
    ///
    /// # Errors
    /// As [`Dial::connect`]; over TLS, also a server that did not take `h2`.
    pub async fn connect_h2(
        &self,
        timeout: Duration,
    ) -> Result<http2::SendRequest<H2Body>, ConnectError> {
        match self.open(timeout).await? {
            Opened::Plain(tcp) => handshake_h2(tcp).await,
            Opened::Tls(tls) if tls.get_ref().1.alpn_protocol() == Some(b"h2") => {
                handshake_h2(tls).await
            }
            Opened::Tls(_) => Err(ConnectError::Tls(std::io::Error::other(
                "the server did not take HTTP/2 (ALPN h2)",
            ))),
        }
    }

    /// TCP, and TLS over it for `https://`, within `timeout`.
    async fn open(&self, timeout: Duration) -> Result<Opened, ConnectError> {
        let port = self.authority.port_u16();
        let host = unbracketed(&self.authority);
        let opened = tokio::time::timeout(timeout, async {
            let default_port = if self.tls.is_some() { 443 } else { 80 };
            let tcp = TcpStream::connect((host, port.unwrap_or(default_port)))
                .await
                .map_err(ConnectError::Refused)?;
            let _ = tcp.set_nodelay(true);
            match &self.tls {
                None => Ok(Opened::Plain(tcp)),
                Some((connector, name)) => connector
                    .connect(name.clone(), tcp)
                    .await
                    .map(|tls| Opened::Tls(Box::new(tls)))
                    .map_err(ConnectError::Tls),
            }
        });
        opened.await.unwrap_or(Err(ConnectError::TimedOut))
    }
}

/// The name an `https://` server's certificate must carry: the host of
/// `authority` (an IPv6 literal without its brackets).
///
/// # Errors
/// The host is neither a DNS name nor an IP address.
pub fn server_name(authority: &Authority) -> Result<ServerName<'static>, String> {
    let host = unbracketed(authority);
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("`{host}` is not a name TLS can check"))
}

/// The host of `authority`; an IPv6 literal is written `[::1]` in a URL.
fn unbracketed(authority: &Authority) -> &str {
    authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

enum Opened {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

async fn handshake<T>(io: T) -> Result<SendRequest<Body>, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        // As the server side does (see `server::builders`).
        .writev(false)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A request body sent over HTTP/2: the gateway's [`Body`] under a type of
/// its own, so that hyper's client internals (its dispatch channel) are
/// built once for HTTP/1.1 and once for HTTP/2. With one type for both, the
/// compiler stopped inlining the channel's receive into HTTP/1.1 requests:
/// about 250 instructions a cache hit (callgrind, one-token run).
pub struct H2Body(pub Body);

impl HttpBody for H2Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
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

/// An idle HTTP/2 connection is pinged this often, and dropped when a ping
/// goes unanswered for [`H2_PING_TIMEOUT`]: a peer that vanished without a
/// word (a node gone, NAT state lost) is found within half a minute, not
/// when the kernel gives up retransmitting.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

async fn handshake_h2<T>(io: T) -> Result<http2::SendRequest<H2Body>, ConnectError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .keep_alive_while_idle(true)
        // Until the server's SETTINGS say how many streams it takes, open
        // one: more could be refused unprocessed (REFUSED_STREAM), which
        // would be a 502 for a request the server never saw.
        .initial_max_send_streams(1)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
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
