//! Opening a connection to one target: TCP, TLS over it for `https://`
//! (rustls, as `client_tls` sets it up: the certificate checked, SNI the
//! target's host), then hyper's HTTP/1.1 or HTTP/2 client handshake. The
//! connection's I/O runs on a task of its own. Used by the upstream pools,
//! the health checks, the JWKS fetch and `verify_url`. The JWKS fetch may
//! go through an HTTP proxy's tunnel (`CONNECT`): still a TCP stream to
//! hyper, so no other instantiation of its client exists.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::auth::remote::proxy::HttpProxy;
use crate::body::{Body, BoxError};
use crate::client_tls;

/// Why no connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Refused(std::io::Error),
    TimedOut,
    /// The TLS handshake failed: most often a certificate that is not trusted
    /// or does not name the target.
    Tls(std::io::Error),
    Handshake(hyper::Error),
    /// The HTTP proxy did not open a tunnel.
    Proxy(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(e) => write!(f, "connect: {e}"),
            ConnectError::TimedOut => f.write_str("connect timed out"),
            ConnectError::Tls(e) => write!(f, "TLS: {e}"),
            ConnectError::Handshake(e) => write!(f, "handshake: {e}"),
            ConnectError::Proxy(e) => write!(f, "proxy: {e}"),
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
    /// Through this proxy's tunnel (the JWKS fetch only).
    proxy: Option<Box<HttpProxy>>,
}

/// The address and whether it is TLS: no keys or certificates.
impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dial")
            .field("authority", &self.authority)
            .field("tls", &self.tls.is_some())
            .field("http2", &self.http2)
            .field("proxy", &self.proxy)
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
            proxy: None,
        }
    }

    /// TLS to `authority` (port 443 unless it names one), the server checked
    /// as `config` says and named `name`.
    pub fn tls(authority: Authority, config: Arc<ClientConfig>, name: ServerName<'static>) -> Dial {
        Dial {
            authority,
            tls: Some((TlsConnector::from(config), name)),
            http2: false,
            proxy: None,
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

    /// The same target, reached through `proxy`'s tunnel.
    pub fn via(self, proxy: HttpProxy) -> Dial {
        Dial {
            proxy: Some(Box::new(proxy)),
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
            let port = port.unwrap_or(default_port);
            let tcp = match &self.proxy {
                None => TcpStream::connect((host, port))
                    .await
                    .map_err(ConnectError::Refused)?,
                Some(proxy) => tunnel(proxy, self.authority.host(), port).await?,
            };
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

/// The longest answer head read from a proxy.
const MAX_PROXY_HEAD: usize = 8 * 1024;

/// A TCP stream to `host:port` through `proxy` (RFC 9110 §9.3.6 `CONNECT`).
async fn tunnel(proxy: &HttpProxy, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let at = proxy.host_port();
    let mut tcp = TcpStream::connect(&at)
        .await
        .map_err(|e| ConnectError::Proxy(format!("cannot connect to {at}: {e}")))?;
    let mut head = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    if let Some(auth) = &proxy.authorization {
        head.push_str("Proxy-Authorization: ");
        head.push_str(auth.to_str().unwrap_or_default());
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let failed = |e: std::io::Error| ConnectError::Proxy(format!("{at}: {e}"));
    tcp.write_all(head.as_bytes()).await.map_err(failed)?;
    // A byte at a time: nothing of the tunnel after the head may be read
    // here (the proxy sends nothing more until the client speaks, but a
    // tunnel is a tunnel).
    let mut answer = Vec::with_capacity(256);
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_PROXY_HEAD {
            return Err(ConnectError::Proxy(format!("{at}: answer head too long")));
        }
        let byte = tcp.read_u8().await.map_err(failed)?;
        answer.push(byte);
    }
    let status_line = answer.split(|&b| b == b'\r').next().unwrap_or_default();
    let status = String::from_utf8_lossy(status_line);
    let code = status.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(200..=299) if status.starts_with("HTTP/1.") => Ok(tcp),
        _ => Err(ConnectError::Proxy(format!(
            "{at} answered `{}` to CONNECT {host}:{port}",
            // Escaped: the proxy's words go into a log line.
            status.trim().escape_debug()
        ))),
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
