//! One `GET` of a JWK Set, over `http://` or `https://`.
//!
//! A connection of its own per fetch (`Connection: close`): a fetch happens
//! every `jwks_refresh` or on an unknown `kid`, so pooling would buy
//! nothing. HTTPS is rustls on aws-lc-rs with the system's trusted roots
//! (`rustls-native-certs`: `/etc/ssl/certs` on Debian, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` when set), read at each fetch so that a CA bundle
//! installed later is used without a restart. Redirects are not followed
//! and no HTTP proxy is used: the URL names the server that answers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::aws_lc_rs};

/// A whole fetch (connect, TLS, answer, body) takes at most this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest JWK Set read (a set of a few RSA keys is a few kilobytes).
const MAX_BODY: usize = 1 << 20;

/// The body of a 200 answer to `GET url`.
///
/// # Errors
/// A description for the log: no connection, a TLS failure, another
/// status, a body over 1 MiB, or no whole answer within [`FETCH_TIMEOUT`].
pub async fn get(url: &Uri) -> Result<Bytes, String> {
    match tokio::time::timeout(FETCH_TIMEOUT, fetch(url)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {}s", FETCH_TIMEOUT.as_secs())),
    }
}

async fn fetch(url: &Uri) -> Result<Bytes, String> {
    let authority = url.authority().ok_or("the URL has no host")?;
    let https = url.scheme_str() == Some("https");
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    // An IPv6 literal is written `[::1]` in a URL.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if https {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("`{host}` is not a name TLS can check"))?;
        let tls = connector()?
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {authority}: {e}"))?;
        exchange(TokioIo::new(Box::new(tls)), url).await
    } else {
        exchange(TokioIo::new(Box::new(tcp)), url).await
    }
}

/// Either stream, boxed: one more instantiation of hyper's client
/// connection, not two.
///
/// Even one costs the proxy path: with a second kind of client connection
/// beside the pool's, the compiler stops inlining hyper's response-head
/// parser and request-head encoder into the pool's (about 130 of the 170
/// instructions a cache hit gained with `jwks_url` support, callgrind,
/// 31,359 -> 31,533 Ir/req). A blocking client (ureq) instead moved the
/// same cost to `httparse`'s response parser (31,328 -> 31,460), and
/// sharing one `Stream` enum with the pool cost more (+270): kept as is.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn exchange(io: TokioIo<Box<dyn Stream>>, url: &Uri) -> Result<Bytes, String> {
    let authority = url.authority().ok_or("the URL has no host")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // Ends with the exchange (`Connection: close`) or when `get` gives up.
    tokio::spawn(conn);
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(HOST, authority.as_str())
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .header(USER_AGENT, concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let rsp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if rsp.status() != StatusCode::OK {
        let redirect = if rsp.status().is_redirection() {
            " (redirects are not followed: give the final URL)"
        } else {
            ""
        };
        return Err(format!("answered {}{redirect}", rsp.status()));
    }
    match Limited::new(rsp.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(body.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(format!("the answer is over {MAX_BODY} bytes"))
        }
        Err(e) => Err(format!("reading the answer: {e}")),
    }
}

/// A TLS client trusting the system's roots (see the module docs).
fn connector() -> Result<TlsConnector, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(String::new, |e| format!(" ({e})"));
        return Err(format!(
            "no trusted root certificates{why}: install ca-certificates or set SSL_CERT_FILE"
        ));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Response;
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// Serves `status` and `body` to every request on a new port.
    async fn serve(status: u16, body: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let body = body.clone();
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    assert_eq!(req.uri().path(), "/jwks");
                    let mut rsp = Response::new(Full::new(Bytes::from(body.clone())));
                    *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
                    async move { Ok::<_, Infallible>(rsp) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
            }
        });
        format!("http://{addr}/jwks")
    }

    #[tokio::test]
    async fn a_200_answer_is_its_body() {
        let url = serve(200, b"{\"keys\":[]}".to_vec()).await;
        let body = get(&url.parse().unwrap()).await.unwrap();
        assert_eq!(&body[..], b"{\"keys\":[]}");
    }

    #[tokio::test]
    async fn other_statuses_big_bodies_and_no_server_are_errors() {
        let url = serve(302, Vec::new()).await;
        let err = get(&url.parse().unwrap()).await.unwrap_err();
        assert!(err.contains("302") && err.contains("redirects"), "{err}");
        let url = serve(200, vec![b' '; MAX_BODY + 1]).await;
        let err = get(&url.parse().unwrap()).await.unwrap_err();
        assert!(err.contains("over"), "{err}");
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", closed.local_addr().unwrap());
        drop(closed);
        let err = get(&url.parse().unwrap()).await.unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
