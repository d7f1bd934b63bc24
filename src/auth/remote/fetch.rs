//! One `GET` of a JWK Set, over `http://` or `https://`.
//!
//! A connection of its own per fetch (`Connection: close`): a fetch happens
//! every `jwks_refresh` or on an unknown `kid`, so pooling would buy
//! nothing. HTTPS as `client_tls` says, with the issuer's `ca_file` or
//! the system's trusted roots, read at each fetch, so that a CA bundle
//! installed later is used without a restart. Redirects are not followed.
//! An HTTP proxy from the environment (`https_proxy`...) is used as
//! [`proxy`] says: a tunnel for `https://`, a request in absolute form for
//! `http://`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};

use super::proxy;
use crate::body;
use crate::client_tls;
use crate::proxy::dial::{ConnectError, Dial};

/// A whole fetch round (connect, TLS, answer, body; with discovery, both
/// requests) takes at most this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest JWK Set read (a set of a few RSA keys is a few kilobytes).
const MAX_BODY: usize = 1 << 20;

/// The body of a 200 answer to `GET url`; an `https://` server is checked
/// against `ca_pem`'s certificates, or without it the system's roots.
///
/// # Errors
/// A description for the log: no connection, a TLS failure, another
/// status, a body over 1 MiB, or no whole answer within `limit`.
pub async fn get(url: &Uri, ca_pem: Option<&[u8]>, limit: Duration) -> Result<Bytes, String> {
    match tokio::time::timeout(limit, fetch(url, ca_pem, limit)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

async fn fetch(url: &Uri, ca_pem: Option<&[u8]>, limit: Duration) -> Result<Bytes, String> {
    let authority = url.authority().ok_or("the URL has no host")?;
    // Read at each fetch: a CA bundle installed later is used.
    let roots = ca_pem.map(client_tls::roots_from_pem).transpose()?;
    // Read at each fetch too, as curl and Go read it. An `https://` URL goes
    // through the proxy's tunnel; an `http://` one is asked of the proxy
    // itself, in absolute form, as curl does (proxies commonly allow
    // CONNECT to port 443 only).
    let proxy = proxy::for_url(url, |name| std::env::var(name).ok())?;
    // `Some`: the request is asked of this proxy itself.
    let (dial, asked_of) = match proxy {
        Some(proxy) if url.scheme_str() == Some("http") => {
            let at = proxy.host_port();
            let at = at.parse().map_err(|_| format!("proxy address `{at}`"))?;
            (Dial::plain(at), Some(proxy))
        }
        Some(proxy) => (Dial::for_url(url, roots)?.via(proxy), None),
        None => (Dial::for_url(url, roots)?, None),
    };
    // The same connections as the proxy's upstreams: no client of its own
    // (a second kind of hyper client connection beside the pool's made the
    // compiler stop inlining hyper's head parser and encoder into the
    // pool's: about 130 instructions a cache hit, callgrind).
    let through = asked_of.as_ref().map_or_else(String::new, |p| {
        format!(" through the proxy {}", p.host_port())
    });
    let mut sender = dial.connect(limit).await.map_err(|e| match e {
        ConnectError::Refused(e) => format!("cannot connect to {authority}{through}: {e}"),
        ConnectError::Tls(e) => format!("TLS with {authority}: {e}"),
        ConnectError::Proxy(e) => format!("{authority} through the proxy: {e}"),
        e => format!("{authority}{through}: {e}"),
    })?;
    let mut req = match &asked_of {
        // Absolute form, as a proxy is asked.
        Some(_) => Request::get(url.to_string()),
        None => Request::get(url.path_and_query().map_or("/", |p| p.as_str())),
    };
    if let Some(authorization) = asked_of.and_then(|p| p.authorization) {
        req = req.header(http::header::PROXY_AUTHORIZATION, authorization);
    }
    let req = req
        .header(HOST, authority.as_str())
        .header(ACCEPT, "application/jwk-set+json, application/json")
        .header(USER_AGENT, concat!("gatehouse/", env!("CARGO_PKG_VERSION")))
        .header(CONNECTION, "close")
        .body(body::empty())
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Response;
    use http_body_util::Full;
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
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
        let body = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"keys\":[]}");
    }

    #[tokio::test]
    async fn other_statuses_big_bodies_and_no_server_are_errors() {
        let url = serve(302, Vec::new()).await;
        let err = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("302") && err.contains("redirects"), "{err}");
        let url = serve(200, vec![b' '; MAX_BODY + 1]).await;
        let err = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("over"), "{err}");
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", closed.local_addr().unwrap());
        drop(closed);
        let err = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
