//! One `GET` of a JWK Set, over `http://` or `https://`.
//!
//! A connection of its own per fetch (`Connection: close`): a fetch happens
//! every `jwks_refresh` or on an unknown `kid`, so pooling would buy
//! nothing. HTTPS as `client_tls` says, with the issuer's `ca_file` or
//! the system's trusted roots, read at each fetch, so that a CA bundle
//! installed later is used without a restart. Redirects (301, 302, 303,
//! 307, 308) are followed, at most [`MAX_REDIRECTS`], as Go's client and
//! curl `-L` follow them, but never from `https://` to `http://` and never
//! to a URL with credentials.
//! An HTTP proxy from the environment (`https_proxy`...) is used as
//! [`proxy`] says: a tunnel for `https://`, a request in absolute form for
//! `http://`.

use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, LOCATION, USER_AGENT};
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

/// Redirects followed in one fetch.
pub const MAX_REDIRECTS: usize = 5;

/// What one request got.
enum Answer {
    Body(Bytes),
    /// A redirect to this URL (already resolved against the request's).
    Redirect(Uri),
}

/// The body of a 200 answer to `GET url`; an `https://` server is checked
/// against `ca_pem`'s certificates, or without it the system's roots.
///
/// # Errors
/// A description for the log: no connection, a TLS failure, another
/// status, a body over 1 MiB, or no whole answer within `limit`.
pub async fn get(url: &Uri, ca_pem: Option<&[u8]>, limit: Duration) -> Result<Bytes, String> {
    match tokio::time::timeout(limit, follow(url, ca_pem, limit)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// [`fetch`], and again where each redirect points.
async fn follow(url: &Uri, ca_pem: Option<&[u8]>, limit: Duration) -> Result<Bytes, String> {
    let mut url = url.clone();
    for _ in 0..=MAX_REDIRECTS {
        match fetch(&url, ca_pem, limit).await? {
            Answer::Body(body) => return Ok(body),
            Answer::Redirect(next) => url = next,
        }
    }
    Err(format!(
        "more than {MAX_REDIRECTS} redirects (the last to {url})"
    ))
}

/// Where a redirect from `from` with `Location: location` points.
///
/// # Errors
/// The location is not a URL, leaves `https://` for anything else, or
/// carries credentials.
fn redirect(from: &Uri, location: &str) -> Result<Uri, String> {
    let scheme = from.scheme_str().unwrap_or("http");
    let authority = from.authority().map_or("", |a| a.as_str());
    // A fragment is never sent.
    let location = location.split('#').next().unwrap_or_default();
    if location.is_empty() {
        return Err("redirected to itself (an empty Location)".into());
    }
    // RFC 3986 §3.1: a reference with a scheme is absolute; a `:` in its
    // path or query does not make one.
    let has_scheme = location.split_once(':').is_some_and(|(s, _)| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    let absolute = if has_scheme {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else if location.starts_with('?') {
        format!("{scheme}://{authority}{}{location}", from.path())
    } else {
        // Relative to the request's path, as a browser resolves it.
        let path = from.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{location}")
    };
    let to: Uri = absolute
        .parse()
        .map_err(|_| format!("redirected to `{location}`, which is not a URL"))?;
    match (scheme, to.scheme_str()) {
        (_, Some("https")) | ("http", Some("http")) => {}
        ("https", Some("http")) => {
            return Err(format!("redirected from https:// to {to}: refused"));
        }
        _ => return Err(format!("redirected to `{location}`, which is not http(s)")),
    }
    if to.authority().is_none_or(|a| a.as_str().contains('@')) {
        return Err(format!(
            "redirected to `{location}`, which has no host or carries credentials"
        ));
    }
    Ok(to)
}

async fn fetch(url: &Uri, ca_pem: Option<&[u8]>, limit: Duration) -> Result<Answer, String> {
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
    let status = rsp.status();
    if matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) {
        let location = rsp
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .ok_or_else(|| format!("answered {status} without a Location"))?;
        return redirect(url, location).map(Answer::Redirect);
    }
    if status != StatusCode::OK {
        return Err(format!("answered {status}"));
    }
    match Limited::new(rsp.into_body(), MAX_BODY).collect().await {
        Ok(body) => Ok(Answer::Body(body.to_bytes())),
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

    /// Serves `status` and `body` to every request on a new port; a 3xx
    /// names `body` as its `Location` (none when it is empty).
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
                    if rsp.status().is_redirection() && !body.is_empty() {
                        let to = http::HeaderValue::from_bytes(&body).unwrap();
                        rsp.headers_mut().insert(LOCATION, to);
                    }
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
    async fn redirects_are_followed_a_few_times() {
        let target = serve(200, b"{\"keys\":[]}".to_vec()).await;
        let mut url = target.clone();
        for status in [301, 302, 303, 307, 308] {
            url = serve(status, url.into_bytes()).await;
        }
        let body = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"keys\":[]}");
        // One more is too many.
        let url = serve(302, url.into_bytes()).await;
        let err = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("more than 5 redirects"), "{err}");
        let url = serve(302, b"ftp://example.com/jwks".to_vec()).await;
        let err = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("not http(s)"), "{err}");
        let url = serve(307, Vec::new()).await;
        let err = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            err.contains("307") && err.contains("without a Location"),
            "{err}"
        );
    }

    #[test]
    fn redirects_resolve_as_browsers_do_and_never_downgrade() {
        let from: Uri = "https://idp.test/realms/a/keys".parse().unwrap();
        for (location, to) in [
            ("https://other.test/jwks", "https://other.test/jwks"),
            ("//cdn.test/k", "https://cdn.test/k"),
            ("/certs", "https://idp.test/certs"),
            ("certs?v=2", "https://idp.test/realms/a/certs?v=2"),
            ("?v=2", "https://idp.test/realms/a/keys?v=2"),
            (
                "/certs?from=https://idp.test/old",
                "https://idp.test/certs?from=https://idp.test/old",
            ),
            (
                "certs?next=http://x",
                "https://idp.test/realms/a/certs?next=http://x",
            ),
            ("/certs#frag", "https://idp.test/certs"),
        ] {
            assert_eq!(
                redirect(&from, location).unwrap().to_string(),
                to,
                "{location}"
            );
        }
        for bad in [
            "",
            "#top",
            "http://idp.test/keys",
            "https://user:pw@idp.test/keys",
            "file:///etc/passwd",
            "https:///nohost",
        ] {
            assert!(redirect(&from, bad).is_err(), "{bad}");
        }
        let plain: Uri = "http://idp.test/keys".parse().unwrap();
        assert_eq!(
            redirect(&plain, "https://idp.test/keys")
                .unwrap()
                .to_string(),
            "https://idp.test/keys"
        );
    }

    #[tokio::test]
    async fn other_statuses_big_bodies_and_no_server_are_errors() {
        let url = serve(404, Vec::new()).await;
        let err = get(&url.parse().unwrap(), None, FETCH_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.contains("404"), "{err}");
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
