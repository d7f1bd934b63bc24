//! TLS termination (`[server] tls`): HTTP/1.1 and HTTP/2 chosen by ALPN,
//! `X-Forwarded-Proto: https`, a stalled handshake cut off, the
//! certificate replaced by a reload, bad files refused at load, and client
//! certificates (`client_ca`) asked for and described to the upstream.
//!
//! `tests/data/tls` holds two self-signed test certificates (P-256, for
//! `localhost` and 127.0.0.1, valid from 2020 to 2126, CA:FALSE,
//! serverAuth) and their keys, the first key encrypted (password `test`,
//! `openssl pkcs8`), and a client certificate (`client`, self-signed,
//! clientAuth, made with Python's cryptography) with its key, and `idp`
//! (self-signed P-256 for `idp.test` only, serverAuth, 2020 to 2126, also
//! made with Python's cryptography; `tests/jwks.rs` reaches it through a
//! proxy): test material only.
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse::state::Snapshot;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

const A_CERT: &str = include_str!("data/tls/a.cert.pem");
const A_KEY: &str = include_str!("data/tls/a.key.pem");
const B_CERT: &str = include_str!("data/tls/b.cert.pem");
const B_KEY: &str = include_str!("data/tls/b.key.pem");
const CLIENT_CERT: &str = include_str!("data/tls/client.cert.pem");
const CLIENT_KEY: &str = include_str!("data/tls/client.key.pem");

const TLS: &str = "tls = { cert = \"cert.pem\", key = \"key.pem\" }";

fn tls_config(upstream: std::net::SocketAddr) -> String {
    config_with(
        upstream,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n",
    )
    .replacen(
        "[server]\n",
        &format!("[server]\n{TLS}\nheader_read_timeout = \"1s\"\n"),
        1,
    )
}

async fn tls_gateway(upstream: std::net::SocketAddr) -> TestGateway {
    TestGateway::start_with_files(
        &tls_config(upstream),
        &[("cert.pem", A_CERT), ("key.pem", A_KEY)],
    )
    .await
}

/// A TLS client that trusts only `cert` and offers `alpn`.
fn connector(cert: &str, alpn: &[u8]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert.as_bytes()).unwrap())
        .unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(gw: &TestGateway, cert: &str, alpn: &[u8]) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(gw.addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    connector(cert, alpn).connect(name, tcp).await
}

/// An HTTP/1.1 client over an established TLS connection.
async fn http1_over(tls: Tls) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn get_x() -> Request<Empty<Bytes>> {
    let token = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
    Request::get("https://localhost/x")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::new())
        .unwrap()
}

/// The upstream's echo of the request as JSON.
async fn echo(rsp: hyper::Response<hyper::body::Incoming>) -> serde_json::Value {
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_over_http1_and_h2_reaches_the_upstream_as_https() {
    let up = TestUpstream::start().await;
    let gw = tls_gateway(up.addr).await;

    let tls = handshake(&gw, A_CERT, b"http/1.1").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut sender = http1_over(tls).await;
    let rsp = sender.send_request(get_x()).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.version(), Version::HTTP_11);
    let seen = echo(rsp).await;
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(seen["headers"]["x-auth-subject"][0], "alice");

    let tls = handshake(&gw, A_CERT, b"h2").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let rsp = sender.send_request(get_x()).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(rsp.version(), Version::HTTP_2);
    let seen = echo(rsp).await;
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
    assert_eq!(seen["headers"]["x-auth-subject"][0], "alice");

    // The client's own X-Forwarded-Proto is replaced (it is no trusted proxy).
    let tls = handshake(&gw, A_CERT, b"http/1.1").await.unwrap();
    let mut sender = http1_over(tls).await;
    let mut req = get_x();
    req.headers_mut()
        .insert("x-forwarded-proto", "gopher".parse().unwrap());
    let seen = echo(sender.send_request(req).await.unwrap()).await;
    assert_eq!(seen["headers"]["x-forwarded-proto"][0], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_a_tls_listener_gets_no_answer() {
    let up = TestUpstream::start().await;
    let gw = tls_gateway(up.addr).await;
    let reply = raw(gw.addr, b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(!reply.contains("HTTP/1.1"), "{reply:?}");
    assert_eq!(up.hits(), 0);
    // A client that trusts another certificate does not get through.
    assert!(handshake(&gw, B_CERT, b"http/1.1").await.is_err());
}

/// A client that connects and never finishes its handshake is cut off
/// after `header_read_timeout`, as a plain client that sends nothing is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_is_cut_off_after_header_read_timeout() {
    let up = TestUpstream::start().await;
    let gw = tls_gateway(up.addr).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    // Three bytes of a TLS record header, then nothing.
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was still open after 8 s");
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// A reload that names another certificate serves it to the handshakes
/// that follow (certificate rotation without a restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_replaces_the_certificate() {
    let up = TestUpstream::start().await;
    let gw = tls_gateway(up.addr).await;
    assert!(handshake(&gw, A_CERT, b"http/1.1").await.is_ok());
    std::fs::write(gw.dir.path().join("b.cert.pem"), B_CERT).unwrap();
    std::fs::write(gw.dir.path().join("b.key.pem"), B_KEY).unwrap();
    let config = tls_config(up.addr)
        .replace("\"cert.pem\"", "\"b.cert.pem\"")
        .replace("\"key.pem\"", "\"b.key.pem\"");
    let path = write_config(gw.dir.path(), &config);
    gw.shared.store_snapshot(Snapshot::load(&path).unwrap());
    assert!(handshake(&gw, A_CERT, b"http/1.1").await.is_err());
    let tls = handshake(&gw, B_CERT, b"http/1.1").await.unwrap();
    let mut sender = http1_over(tls).await;
    assert_eq!(
        sender.send_request(get_x()).await.unwrap().status(),
        StatusCode::OK
    );
}

/// A reload that adds or removes `tls` applies to the connections that
/// follow (nginx and Envoy rebuild their listeners likewise); one already
/// open carries on as it began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_tls_on_and_off() {
    let up = TestUpstream::start().await;
    let gw = tls_gateway(up.addr).await;
    let open = http1_over(handshake(&gw, A_CERT, b"http/1.1").await.unwrap()).await;

    let plain = tls_config(up.addr).replace(TLS, "");
    let path = write_config(gw.dir.path(), &plain);
    gw.shared.store_snapshot(Snapshot::load(&path).unwrap());
    // The TLS connection opened before the reload still serves (asked
    // before `header_read_timeout`, 1 s here, closes it as idle).
    let mut open = open;
    assert_eq!(
        open.send_request(get_x()).await.unwrap().status(),
        StatusCode::OK
    );
    assert!(handshake(&gw, A_CERT, b"http/1.1").await.is_err());
    let reply = raw(gw.addr, b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 401 "), "{reply:?}");

    let path = write_config(gw.dir.path(), &tls_config(up.addr));
    gw.shared.store_snapshot(Snapshot::load(&path).unwrap());
    let mut sender = http1_over(handshake(&gw, A_CERT, b"http/1.1").await.unwrap()).await;
    let rsp = sender.send_request(get_x()).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::OK);
    assert_eq!(echo(rsp).await["headers"]["x-forwarded-proto"][0], "https");
    let reply = raw(gw.addr, b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    assert!(!reply.contains("HTTP/1.1"), "{reply:?}");
}

#[tokio::test]
async fn bad_certificate_files_are_refused_at_load_with_their_line() {
    let up = TestUpstream::start().await;
    let config = tls_config(up.addr);
    let line = config.lines().position(|l| l.starts_with("tls =")).unwrap() + 1;
    for (files, message) in [
        (
            vec![("cert.pem", A_CERT), ("key.pem", B_KEY)],
            "does not belong to the certificate",
        ),
        (
            vec![("cert.pem", "not a certificate"), ("key.pem", A_KEY)],
            "no CERTIFICATE",
        ),
        (
            vec![("cert.pem", A_CERT), ("key.pem", A_CERT)],
            "no PEM private key",
        ),
        (vec![("cert.pem", A_CERT)], "cannot read"),
        (
            vec![
                (
                    "cert.pem",
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                ),
                ("key.pem", A_KEY),
            ],
            "the first certificate is not usable",
        ),
        (
            vec![
                ("cert.pem", A_CERT),
                ("key.pem", include_str!("data/tls/encrypted.key.pem")),
            ],
            "encrypted keys are not supported",
        ),
    ] {
        let err = match TestGateway::try_start_with_files(&config, &files).await {
            Ok(_) => panic!("{message}: started"),
            Err(e) => e,
        };
        assert!(err.contains(message), "{message}: {err}");
        assert!(
            err.contains(&format!("gateway.toml:{line}:")),
            "{message}: {err}"
        );
    }
    // The table itself: both files named, nothing else.
    for (table, message) in [
        (
            config.replace(", key = \"key.pem\"", ""),
            "missing field `key`",
        ),
        (
            config.replace("key = \"key.pem\"", "key = \"key.pem\", chain = \"x\""),
            "unknown field `chain`",
        ),
    ] {
        let files = [("cert.pem", A_CERT), ("key.pem", A_KEY)];
        let err = match TestGateway::try_start_with_files(&table, &files).await {
            Ok(_) => panic!("{message}: started"),
            Err(e) => e,
        };
        assert!(err.contains(message), "{message}: {err}");
    }
}

/// OpenID discovery built from the request's Host names `https://` URLs
/// when the client came over TLS: a client that follows `token_endpoint`
/// must not send a password to plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_over_tls_advertises_https_urls() {
    let up = TestUpstream::start().await;
    let gw = tls_gateway(up.addr).await;
    let tls = handshake(&gw, A_CERT, b"http/1.1").await.unwrap();
    let mut sender = http1_over(tls).await;
    let req = Request::get("/.well-known/openid-configuration")
        .header("host", "gw.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let doc = echo(sender.send_request(req).await.unwrap()).await;
    assert_eq!(doc["token_endpoint"], "https://gw.example/auth/login");
    assert_eq!(doc["jwks_uri"], "https://gw.example/.well-known/jwks.json");
    assert_eq!(doc["userinfo_endpoint"], "https://gw.example/auth/me");
}

/// Behind a TLS proxy: a trusted proxy's `X-Forwarded-Proto: https` makes
/// the URLs `https://`; an untrusted client's does not.
#[tokio::test]
async fn discovery_behind_a_trusted_tls_proxy_advertises_https_urls() {
    let up = TestUpstream::start().await;
    let routes = "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n";
    let trusting = config_with(up.addr, routes).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        1,
    );
    let endpoint = |doc: &serde_json::Value| doc["token_endpoint"].as_str().unwrap().to_string();
    let path = "/.well-known/openid-configuration";
    let gw = TestGateway::start(&trusting).await;
    let doc = get(&gw.url(path), &[("x-forwarded-proto", "https")])
        .await
        .json();
    assert!(endpoint(&doc).starts_with("https://"), "{doc}");
    let doc = get(&gw.url(path), &[]).await.json();
    assert!(endpoint(&doc).starts_with("http://"), "{doc}");
    let gw = TestGateway::start(&config_with(up.addr, routes)).await;
    let doc = get(&gw.url(path), &[("x-forwarded-proto", "https")])
        .await
        .json();
    assert!(endpoint(&doc).starts_with("http://"), "untrusted: {doc}");
}

/// A gateway asking for client certificates issued by `client.cert.pem`
/// (itself), with `client_auth` when given.
async fn mtls_gateway(upstream: std::net::SocketAddr, client_auth: Option<&str>) -> TestGateway {
    let auth = client_auth.map_or(String::new(), |a| format!(", client_auth = \"{a}\""));
    let config = tls_config(upstream).replace(
        TLS,
        &format!(
            "tls = {{ cert = \"cert.pem\", key = \"key.pem\", client_ca = \"clients.pem\"{auth} }}"
        ),
    );
    let files = [
        ("cert.pem", A_CERT),
        ("key.pem", A_KEY),
        ("clients.pem", CLIENT_CERT),
    ];
    TestGateway::start_with_files(&config, &files).await
}

/// An HTTP/1.1 exchange over TLS presenting `identity` (certificate and
/// key PEM) or no certificate, sending `xfcc` as X-Forwarded-Client-Cert;
/// `Err` when the gateway refuses it.
async fn get_with_identity(
    gw: &TestGateway,
    identity: Option<(&str, &str)>,
    xfcc: Option<&str>,
) -> Result<serde_json::Value, String> {
    let config = client_config(identity, None);
    exchange(gw, &config, xfcc).await.map(|(echoed, _)| echoed)
}

/// A TLS client trusting the gateway's certificate, presenting `identity`
/// (certificate and key PEM) if any; TLS 1.2 only or 1.3 only with
/// `tls12`. Its session cache lives as long as the config.
fn client_config(identity: Option<(&str, &str)>, tls12: Option<bool>) -> Arc<ClientConfig> {
    use tokio_rustls::rustls::version::{TLS12, TLS13};
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(A_CERT.as_bytes()).unwrap())
        .unwrap();
    let provider = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::aws_lc_rs::default_provider(),
    ));
    let builder = match tls12 {
        None => provider.with_safe_default_protocol_versions(),
        Some(true) => provider.with_protocol_versions(&[&TLS12]),
        Some(false) => provider.with_protocol_versions(&[&TLS13]),
    };
    let builder = builder.unwrap().with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            use tokio_rustls::rustls::pki_types::PrivateKeyDer;
            let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    })
}

/// A request over a new connection of `config`, sending `xfcc` as
/// X-Forwarded-Client-Cert: the upstream's echo, and whether the TLS
/// session was resumed; `Err` when the gateway refuses.
async fn exchange(
    gw: &TestGateway,
    config: &Arc<ClientConfig>,
    xfcc: Option<&str>,
) -> Result<(serde_json::Value, bool), String> {
    use tokio_rustls::rustls::HandshakeKind;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("http: {e}"))?;
    tokio::spawn(conn);
    let mut req = get_x();
    if let Some(forged) = xfcc {
        req.headers_mut()
            .insert("x-forwarded-client-cert", forged.parse().unwrap());
    }
    // TLS 1.3: a refused certificate is reported after the client's
    // handshake is done, at its first read.
    let rsp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    assert_eq!(rsp.status(), StatusCode::OK);
    Ok((echo(rsp).await, resumed))
}

/// Waits (bounded) until `/metrics` counts each `(reason, n)` of
/// `gatehouse_tls_handshake_failures_total`.
async fn assert_failures(gw: &TestGateway, counts: &[(&str, u64)]) {
    let counted = eventually(Duration::from_secs(5), || async {
        let text = scrape(gw.admin().await).await;
        counts.iter().all(|(reason, n)| {
            let series = format!("gatehouse_tls_handshake_failures_total{{reason=\"{reason}\"}}");
            metric(&text, &series) == Some(*n)
        })
    });
    assert!(counted.await, "{}", scrape(gw.admin().await).await);
}

/// Envoy's `Hash=` of the client certificate: SHA-256 of its DER, in hex.
fn client_cert_hash() -> String {
    let der = CertificateDer::from_pem_slice(CLIENT_CERT.as_bytes()).unwrap();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ca_requires_a_certificate_and_describes_it_upstream() {
    let up = TestUpstream::start().await;
    let gw = mtls_gateway(up.addr, None).await;
    let seen = get_with_identity(&gw, Some((CLIENT_CERT, CLIENT_KEY)), Some("Hash=forged"))
        .await
        .unwrap();
    let xfcc = &seen["headers"]["x-forwarded-client-cert"];
    assert_eq!(xfcc.as_array().unwrap().len(), 1, "{xfcc}");
    assert_eq!(
        xfcc[0],
        format!(
            "Hash={};Subject=\"CN=gatehouse test client\"",
            client_cert_hash()
        )
    );
    assert_eq!(seen["headers"]["x-auth-subject"][0], "alice");

    // No certificate, or one of another issuer (the server's own): refused.
    let hits = up.hits();
    let err = get_with_identity(&gw, None, None).await.unwrap_err();
    assert!(
        err.contains("request") || err.contains("handshake"),
        "{err}"
    );
    let err = get_with_identity(&gw, Some((A_CERT, A_KEY)), None)
        .await
        .unwrap_err();
    assert!(
        err.contains("request") || err.contains("handshake"),
        "{err}"
    );
    assert_eq!(up.hits(), hits, "a refused client reached the upstream");
    // Counted by reason in /metrics.
    assert_failures(
        &gw,
        &[("no_client_certificate", 1), ("bad_client_certificate", 1)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_auth_serves_clients_without_a_certificate() {
    let up = TestUpstream::start().await;
    let gw = mtls_gateway(up.addr, Some("optional")).await;
    // No certificate: served, and a forged header does not reach the upstream.
    let seen = get_with_identity(&gw, None, Some("Hash=forged;Subject=\"CN=admin\""))
        .await
        .unwrap();
    assert!(
        seen["headers"].get("x-forwarded-client-cert").is_none(),
        "{seen}"
    );
    let seen = get_with_identity(&gw, Some((CLIENT_CERT, CLIENT_KEY)), None)
        .await
        .unwrap();
    let xfcc = seen["headers"]["x-forwarded-client-cert"][0]
        .as_str()
        .unwrap();
    assert!(
        xfcc.starts_with(&format!("Hash={};", client_cert_hash())),
        "{xfcc}"
    );
    // A certificate that does not chain to client_ca is still refused.
    assert!(
        get_with_identity(&gw, Some((A_CERT, A_KEY)), None)
            .await
            .is_err()
    );
}

/// `client_ca` follows reloads, as the certificate does; a listener
/// without it never asks and strips the header a client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_client_certificates_on() {
    let up = TestUpstream::start().await;
    let gw = tls_gateway(up.addr).await;
    let seen = get_with_identity(&gw, Some((CLIENT_CERT, CLIENT_KEY)), Some("Hash=forged"))
        .await
        .unwrap();
    assert!(
        seen["headers"].get("x-forwarded-client-cert").is_none(),
        "{seen}"
    );

    std::fs::write(gw.dir.path().join("clients.pem"), CLIENT_CERT).unwrap();
    let config = tls_config(up.addr).replace(
        TLS,
        "tls = { cert = \"cert.pem\", key = \"key.pem\", client_ca = \"clients.pem\" }",
    );
    let path = write_config(gw.dir.path(), &config);
    gw.shared.store_snapshot(Snapshot::load(&path).unwrap());
    assert!(get_with_identity(&gw, None, None).await.is_err());
    let seen = get_with_identity(&gw, Some((CLIENT_CERT, CLIENT_KEY)), None)
        .await
        .unwrap();
    assert!(seen["headers"]["x-forwarded-client-cert"][0].is_string());
}

#[tokio::test]
async fn bad_client_ca_settings_are_refused_at_load() {
    let up = TestUpstream::start().await;
    let with = |tls: &str| tls_config(up.addr).replace(TLS, tls);
    let files = [
        ("cert.pem", A_CERT),
        ("key.pem", A_KEY),
        ("bad.pem", "not a certificate"),
    ];
    for (tls, message) in [
        (
            "tls = { cert = \"cert.pem\", key = \"key.pem\", client_auth = \"optional\" }",
            "client_auth needs a client_ca",
        ),
        (
            "tls = { cert = \"cert.pem\", key = \"key.pem\", client_ca = \"bad.pem\" }",
            "client_ca:",
        ),
        (
            "tls = { cert = \"cert.pem\", key = \"key.pem\", client_ca = \"cert.pem\", client_auth = \"sometimes\" }",
            "unknown variant",
        ),
    ] {
        let err = TestGateway::try_start_with_files(&with(tls), &files)
            .await
            .err()
            .unwrap();
        assert!(err.contains(message), "{tls}: {err}");
    }
}

/// A client config, and with it one TLS session cache, to use for several
/// connections; TLS 1.2 only or TLS 1.3 only.
fn resuming_client(identity: Option<(&str, &str)>, tls12: bool) -> Arc<ClientConfig> {
    client_config(identity, Some(tls12))
}

/// A request over a new connection of `config`: the upstream's echo, and
/// whether the TLS session was resumed; `Err` when the gateway refuses.
async fn get_resuming(
    gw: &TestGateway,
    config: &Arc<ClientConfig>,
) -> Result<(serde_json::Value, bool), String> {
    exchange(gw, config, None).await
}

/// Reloads `gw` with `tls` in place of the default `tls = ...` line.
fn reload_tls(gw: &TestGateway, up: std::net::SocketAddr, tls: &str) {
    let config = tls_config(up).replace(TLS, tls);
    let path = write_config(gw.dir.path(), &config);
    gw.shared.store_snapshot(Snapshot::load(&path).unwrap());
}

/// rustls does not check a resumed session's certificate again: a session
/// made before `client_ca` was turned on must not be resumed after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_from_before_client_ca_is_not_resumed_after_it() {
    for tls12 in [true, false] {
        let up = TestUpstream::start().await;
        let gw = tls_gateway(up.addr).await;
        let anonymous = resuming_client(None, tls12);
        get_resuming(&gw, &anonymous).await.unwrap();
        let (_, resumed) = get_resuming(&gw, &anonymous).await.unwrap();
        assert!(resumed, "tls12={tls12}: sessions are resumed at all");
        std::fs::write(gw.dir.path().join("clients.pem"), CLIENT_CERT).unwrap();
        reload_tls(
            &gw,
            up.addr,
            "tls = { cert = \"cert.pem\", key = \"key.pem\", client_ca = \"clients.pem\" }",
        );
        let hits = up.hits();
        let got = get_resuming(&gw, &anonymous).await;
        assert!(
            got.is_err(),
            "tls12={tls12}: served without a certificate: {got:?}"
        );
        assert_eq!(up.hits(), hits);
    }
}

/// A session verified under one `client_ca` is not resumed under another;
/// without a reload it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_resumed_only_under_the_client_ca_that_verified_it() {
    for tls12 in [true, false] {
        let up = TestUpstream::start().await;
        let gw = mtls_gateway(up.addr, None).await;
        let client = resuming_client(Some((CLIENT_CERT, CLIENT_KEY)), tls12);
        get_resuming(&gw, &client).await.unwrap();
        let (seen, resumed) = get_resuming(&gw, &client).await.unwrap();
        assert!(resumed, "tls12={tls12}: not resumed without a reload");
        assert!(seen["headers"]["x-forwarded-client-cert"][0].is_string());
        // client_ca now names another CA.
        std::fs::write(gw.dir.path().join("other-ca.pem"), B_CERT).unwrap();
        reload_tls(
            &gw,
            up.addr,
            "tls = { cert = \"cert.pem\", key = \"key.pem\", client_ca = \"other-ca.pem\" }",
        );
        let got = get_resuming(&gw, &client).await;
        assert!(got.is_err(), "tls12={tls12}: served: {got:?}");
    }
}

/// HTTP/2 over TLS (ALPN `h2`) carries the client certificate's header too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_described_over_http2_too() {
    let up = TestUpstream::start().await;
    let gw = mtls_gateway(up.addr, None).await;
    let mut config = (*resuming_client(Some((CLIENT_CERT, CLIENT_KEY)), false)).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..2 {
        let mut req = get_x();
        req.headers_mut()
            .insert("x-forwarded-client-cert", "Hash=forged".parse().unwrap());
        let rsp = sender.send_request(req).await.unwrap();
        assert_eq!(rsp.version(), Version::HTTP_2);
        let seen = echo(rsp).await;
        let xfcc = &seen["headers"]["x-forwarded-client-cert"];
        assert_eq!(xfcc.as_array().unwrap().len(), 1, "{xfcc}");
        assert!(
            xfcc[0]
                .as_str()
                .unwrap()
                .starts_with(&format!("Hash={};Subject=", client_cert_hash())),
            "{xfcc}"
        );
    }
}

/// The reasons are the same over TLS 1.2; plain HTTP on the TLS port is
/// `other`; a TCP connection that closes without a word (a load
/// balancer's probe) is no failed handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_failures_over_tls12_and_what_other_counts() {
    let up = TestUpstream::start().await;
    let gw = mtls_gateway(up.addr, None).await;
    assert!(
        get_resuming(&gw, &resuming_client(None, true))
            .await
            .is_err()
    );
    let bad = resuming_client(Some((A_CERT, A_KEY)), true);
    assert!(get_resuming(&gw, &bad).await.is_err());
    let _ = raw(gw.addr, b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    for _ in 0..5 {
        drop(TcpStream::connect(gw.addr).await.unwrap());
    }
    let counts = [
        ("no_client_certificate", 1),
        ("bad_client_certificate", 1),
        ("other", 1),
    ];
    assert_failures(&gw, &counts).await;
    // The probes have long been handled: still one `other`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let text = scrape(gw.admin().await).await;
    let other = "gatehouse_tls_handshake_failures_total{reason=\"other\"}";
    assert_eq!(metric(&text, other), Some(1), "{text}");
}
