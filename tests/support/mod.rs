//! Shared test harness: a real gateway on 127.0.0.1:0 in front of a real
//! hyper upstream, keys for every algorithm, token minting, and an HTTP client.
#![allow(dead_code)] // each test crate uses a different part of the harness

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use bytes::Bytes;
use gatehouse::server::admin::Health;
use gatehouse::state::{Gateway, Shared, Snapshot};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub mod process;
pub mod redis;

/// A 64-byte HS256 secret written to `hs.secret` in every gateway's directory.
pub const HS_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// === keys ===

/// PEM key pairs for every asymmetric family, generated once per test binary.
pub struct TestKeys {
    pub rsa_private: String,
    pub rsa_public: String,
    pub ec_private: String,
    pub ec_public: String,
    pub ed_private: String,
    pub ed_public: String,
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_pkcs8 = rsa.as_der().unwrap();
        let rsa_pub = rsa.public_key().as_der().unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let ec_pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec_pkcs8.as_ref()).unwrap();
        let ec_pub = ec.public_key().as_der().unwrap();
        let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
        let ed_pub = ed.public_key().as_der().unwrap();
        TestKeys {
            rsa_private: pem("PRIVATE KEY", rsa_pkcs8.as_ref()),
            rsa_public: pem("PUBLIC KEY", rsa_pub.as_ref()),
            ec_private: pem("PRIVATE KEY", ec_pkcs8.as_ref()),
            ec_public: pem("PUBLIC KEY", ec_pub.as_ref()),
            ed_private: pem("PRIVATE KEY", ed_pkcs8.as_ref()),
            ed_public: pem("PUBLIC KEY", ed_pub.as_ref()),
        }
    })
}

/// Signs `claims` with `alg` using the matching test key (HS*: [`HS_SECRET`]).
pub fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(Into::into);
    sign_with_header(&header, claims)
}

pub fn sign_with_header(header: &Header, claims: &Value) -> String {
    let k = keys();
    let key = match header.alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            EncodingKey::from_secret(HS_SECRET.as_bytes())
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(k.rsa_private.as_bytes()).unwrap(),
        Algorithm::ES256 | Algorithm::ES384 => {
            EncodingKey::from_ec_pem(k.ec_private.as_bytes()).unwrap()
        }
        Algorithm::EdDSA => EncodingKey::from_ed_pem(k.ed_private.as_bytes()).unwrap(),
    };
    jsonwebtoken::encode(header, claims, &key).unwrap()
}

/// HMAC-SHA256 JWT over arbitrary header JSON, for attacks the encoder refuses to build.
pub fn hs256_raw(header_json: &Value, claims: &Value, secret: &[u8]) -> String {
    use base64::Engine;
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let signing_input = format!(
        "{}.{}",
        b64(header_json.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, signing_input.as_bytes());
    format!("{signing_input}.{}", b64(tag.as_ref()))
}

/// Claims valid for ten minutes.
pub fn claims(sub: &str) -> Value {
    json!({ "sub": sub, "exp": now() + 600, "iat": now() })
}

// === the gateway ===

/// `[[keys]]` entries for every algorithm: `hs` (HS256), `rs` (RS256), `es`
/// (ES256), `ed` (EdDSA, private key), written beside the config.
pub const ALL_KEYS: &str = r#"
[[keys]]
id = "hs"
algorithm = "HS256"
secret_file = "hs.secret"

[[keys]]
id = "rs"
algorithm = "RS256"
public_key = "rs.pub.pem"

[[keys]]
id = "es"
algorithm = "ES256"
public_key = "es.pub.pem"

[[keys]]
id = "ed"
algorithm = "EdDSA"
private_key = "ed.pem"
"#;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub shared: Shared,
    pub dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TestGateway {
    /// Writes the test keys and `config` (with `{upstream}` replaced by
    /// `http://<upstream addr>` when given) to a new directory, then serves it.
    pub async fn start(config: &str) -> TestGateway {
        Self::try_start(config)
            .await
            .unwrap_or_else(|e| panic!("config invalid:\n{e}"))
    }

    pub async fn try_start(config: &str) -> Result<TestGateway, String> {
        Self::try_start_with_files(config, &[]).await
    }

    /// Like [`TestGateway::start`], with extra `(name, contents)` files (a
    /// `users.toml`, say) written beside the config before it is loaded.
    pub async fn start_with_files(config: &str, files: &[(&str, &str)]) -> TestGateway {
        Self::try_start_with_files(config, files)
            .await
            .unwrap_or_else(|e| panic!("config invalid:\n{e}"))
    }

    pub async fn try_start_with_files(
        config: &str,
        files: &[(&str, &str)],
    ) -> Result<TestGateway, String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        let path = write_config(dir.path(), config);
        let snap = Snapshot::load(&path).map_err(|e| e.to_string())?;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = Gateway::open(snap).await.map_err(|e| e.to_string())?;
        let shared: Shared = Arc::new(gateway);
        let (tx, rx) = oneshot::channel();
        let run = gatehouse::server::run(
            listener,
            Arc::clone(&shared),
            Arc::new(Health::default()),
            async {
                let _ = rx.await;
            },
        );
        tokio::spawn(run);
        Ok(TestGateway {
            addr,
            shared,
            dir,
            shutdown: Some(tx),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Serves this gateway's admin endpoints (`/metrics`) on a listener of
    /// their own; returns its address.
    pub async fn admin(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(Health::default());
        let serve = gatehouse::server::admin::serve(listener, health, Arc::clone(&self.shared));
        tokio::spawn(serve);
        addr
    }

    /// Tokens that reached a signature check (cache hits do not).
    pub fn signature_checks(&self) -> u64 {
        self.shared.load().verifier.signature_checks()
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Writes the key files and `config` as `gateway.toml` in `dir`; returns its path.
pub fn write_config(dir: &Path, config: &str) -> PathBuf {
    let k = keys();
    std::fs::write(dir.join("hs.secret"), HS_SECRET).unwrap();
    std::fs::write(dir.join("rs.pub.pem"), &k.rsa_public).unwrap();
    std::fs::write(dir.join("rs.pem"), &k.rsa_private).unwrap();
    std::fs::write(dir.join("es.pub.pem"), &k.ec_public).unwrap();
    std::fs::write(dir.join("es.pem"), &k.ec_private).unwrap();
    std::fs::write(dir.join("ed.pub.pem"), &k.ed_public).unwrap();
    std::fs::write(dir.join("ed.pem"), &k.ed_private).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A config with [`ALL_KEYS`], an issuer for tokens without `iss`, and
/// `routes` (TOML) in front of the upstream at `upstream`.
pub fn config_with(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
admin_listen = ""

[tokens]
leeway = "0s"
{ALL_KEYS}
[[issuers]]
keys = ["hs", "rs", "es", "ed"]

[[upstreams]]
name = "up"
targets = ["http://{upstream}"]
timeout = "2s"
{extra}
"#
    )
}

/// A config with one upstream, `pool`, of `targets` (URLs) behind a public
/// catch-all route; `extra` goes into the upstream's table.
pub fn pool_config(targets: &[String], extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"
[server]
admin_listen = ""

[[upstreams]]
name = "pool"
targets = [{}]
{extra}

[[routes]]
path_prefix = "/"
upstream = "pool"
auth = "none"
"#,
        targets.join(", ")
    )
}

/// `/metrics` of the admin listener at `admin`, as text.
pub async fn scrape(admin: SocketAddr) -> String {
    let r = get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(r.status, 200);
    String::from_utf8(r.body.to_vec()).unwrap()
}

/// The value of `series` (name and labels, as written) in a scrape.
pub fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// `tests/data/tls/<name>.cert.pem` and its key as a rustls server config.
pub fn tls_server_config(name: &str) -> Arc<tokio_rustls::rustls::ServerConfig> {
    tls_server_config_with(name, false)
}

/// [`tls_server_config`], requiring a client certificate (`client.cert.pem`)
/// when `mtls`.
pub fn tls_server_config_with(name: &str, mtls: bool) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::server::WebPkiClientVerifier;
    use tokio_rustls::rustls::{RootCertStore, ServerConfig};

    let dir = tls_dir();
    let certs = CertificateDer::pem_file_iter(dir.join(format!("{name}.cert.pem")))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key.pem"))).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if mtls {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(dir.join("client.cert.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    Arc::new(builder.with_single_cert(certs, key).unwrap())
}

/// TLS (the test certificate `name`) in front of the plain HTTP server at
/// `plain`: each connection is decrypted and relayed. Returns its address.
pub async fn tls_front(plain: SocketAddr, name: &str) -> SocketAddr {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config(name));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut inner) = TcpStream::connect(plain).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut inner).await;
            });
        }
    });
    addr
}

/// The test certificates: `a` and `b`, each self-signed for localhost and 127.0.0.1.
pub fn tls_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls")
}

// === the upstream ===

/// An upstream written for the tests. Paths:
/// - `/stream/N`: a chunked response of N chunks of 1 KiB, `tokio::task::yield_now` between;
/// - `/upload`: reads the body frame by frame, answers `{"bytes": n, "frames": f}`;
/// - `/slow/MS`: waits MS milliseconds, then echoes;
/// - anything else: `{"method", "path", "query", "headers"}` as JSON.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    /// Connections served (for TLS: handshakes completed).
    pub connections: Arc<AtomicUsize>,
    /// The name (SNI) each completed TLS handshake asked for, "" for none.
    pub server_names: Arc<Mutex<Vec<String>>>,
}

impl TestUpstream {
    pub async fn start() -> TestUpstream {
        Self::serve("127.0.0.1:0", None).await
    }

    /// The same upstream over TLS on `bind`, with the test certificate
    /// `name` (`"a"` or `"b"`: both for localhost and 127.0.0.1, each its
    /// own self-signed key) from `tests/data/tls`.
    pub async fn start_tls(bind: &str, name: &str) -> TestUpstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config(name));
        Self::serve(bind, Some(acceptor)).await
    }

    /// [`TestUpstream::start_tls`] that also requires a client certificate
    /// issued by `tests/data/tls/client.cert.pem` (itself).
    pub async fn start_mtls(bind: &str, name: &str) -> TestUpstream {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config_with(name, true));
        Self::serve(bind, Some(acceptor)).await
    }

    async fn serve(bind: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> TestUpstream {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let server_names = Arc::new(Mutex::new(Vec::new()));
        let (h, c, n) = (
            Arc::clone(&hits),
            Arc::clone(&connections),
            Arc::clone(&server_names),
        );
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (h, c, n, tls) = (Arc::clone(&h), Arc::clone(&c), Arc::clone(&n), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        h.fetch_add(1, Ordering::SeqCst);
                        upstream_respond(req)
                    });
                    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            c.fetch_add(1, Ordering::SeqCst);
                            let io = TokioIo::new(stream);
                            let _ = server.serve_connection_with_upgrades(io, svc).await;
                        }
                        Some(acceptor) => {
                            let Ok(stream) = acceptor.accept(stream).await else {
                                return;
                            };
                            c.fetch_add(1, Ordering::SeqCst);
                            let sni = stream.get_ref().1.server_name().unwrap_or_default();
                            n.lock().unwrap().push(sni.to_string());
                            let io = TokioIo::new(stream);
                            let _ = server.serve_connection_with_upgrades(io, svc).await;
                        }
                    }
                });
            }
        });
        TestUpstream {
            addr,
            hits,
            connections,
            server_names,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_respond(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_string();
    if let Some(n) = path.strip_prefix("/stream/") {
        let n: usize = n.parse().unwrap_or(1);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        tokio::spawn(async move {
            for _ in 0..n {
                if tx
                    .send(Ok(Frame::data(Bytes::from(vec![b'x'; 1024]))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let body = StreamBody::new(tokio_stream_from(rx));
        return Ok(Response::new(BodyExt::boxed(body)));
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let (mut bytes, mut frames) = (0usize, 0usize);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Some(d) = frame.data_ref() {
                bytes += d.len();
                frames += 1;
            }
        }
        return Ok(json_rsp(json!({ "bytes": bytes, "frames": frames })));
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<Value> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().into(), Value::Array(values));
    }
    Ok(json_rsp(json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    })))
}

pub fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_core_stream::Stream<Item = T> {
    futures_core_stream::from_fn(move |cx| rx.poll_recv(cx))
}

/// A minimal `Stream` over a poll function, so the harness needs no futures crate.
pub mod futures_core_stream {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub use futures_core::Stream;

    pub struct FromFn<F>(F);
    impl<T, F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin> Stream for FromFn<F> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            (self.0)(cx)
        }
    }
    pub fn from_fn<T, F: FnMut(&mut Context<'_>) -> Poll<Option<T>> + Unpin>(f: F) -> FromFn<F> {
        FromFn(f)
    }
}

fn json_rsp(v: Value) -> Response<UpBody> {
    let mut rsp = Response::new(BodyExt::boxed(Full::new(Bytes::from(v.to_string()))));
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    rsp
}

/// Polls `probe` every 50 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut probe: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if probe().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === the client ===

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// For an echo from [`TestUpstream`]: the first value of request header `name`.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name][0].as_str().map(String::from)
    }

    pub fn www_authenticate(&self) -> Option<&str> {
        self.headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// Sends one request and reads the whole answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    read_reply(client().request(req)).await
}

/// Awaits an answer (for at most 30 s) and reads the whole of it.
async fn read_reply<E: std::fmt::Debug>(
    answer: impl std::future::Future<Output = Result<Response<Incoming>, E>>,
) -> Reply {
    let rsp = tokio::time::timeout(Duration::from_secs(30), answer)
        .await
        .expect("the gateway answered within 30 s")
        .expect("request sent");
    let (parts, body) = rsp.into_parts();
    let body = body.collect().await.expect("body read").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// `GET url` with `Authorization: Bearer token`.
pub async fn get_with_token(url: &str, token: &str) -> Reply {
    let auth = format!("Bearer {token}");
    get(url, &[("authorization", &auth)]).await
}

/// `POST url` with a JSON body (`Content-Type: application/json`) and `headers`.
pub async fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    send(Method::POST, url, &h, body.to_string()).await
}

/// `POST url` with an HTML-form body (`application/x-www-form-urlencoded`) and `headers`.
pub async fn post_form(url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    send(Method::POST, url, &h, body.to_string()).await
}

/// One keep-alive HTTP/1.1 connection to the gateway: every request on it
/// reaches the same client connection (and what the gateway keeps per
/// connection, such as the last token).
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    /// `GET path`, with `Authorization: Bearer token` unless `token` is empty.
    pub async fn get_with_token(&mut self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        let headers: &[(&str, &str)] = if token.is_empty() {
            &[]
        } else {
            &[("authorization", &auth)]
        };
        self.get(path, headers).await
    }

    /// `GET path` with `headers`.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut req = Request::get(path).header("host", "gatehouse.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::new())).unwrap();
        self.sender
            .ready()
            .await
            .expect("the connection stays open");
        read_reply(self.sender.send_request(req)).await
    }
}

/// Writes `raw` bytes to `addr` and reads until the server closes or 5 s pass.
pub async fn raw(addr: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves `handler` as an HTTP/1.1 upstream (upgrades allowed) on
/// 127.0.0.1:0 for the rest of the test; for upstreams with one behaviour.
pub async fn serve_upstream<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handler.clone()))
                .with_upgrades();
            tokio::spawn(conn);
        }
    });
    addr
}

// === the token service ===

/// An access + refresh token pair from a 200 of `/auth/login` or `/auth/refresh`.
#[derive(Clone, Debug)]
pub struct Pair {
    pub access: String,
    pub refresh: String,
}

impl Pair {
    pub fn of(r: &Reply) -> Pair {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        Pair {
            access: j["access_token"].as_str().unwrap().to_string(),
            refresh: j["refresh_token"].as_str().unwrap().to_string(),
        }
    }
}

// === log capture ===

thread_local! {
    /// Where this thread's log lines go while a [`Capture`] lives.
    static CAPTURE: std::cell::RefCell<Option<Arc<std::sync::Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Stops this thread's capture when dropped.
pub struct Capture;

impl Drop for Capture {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

/// Writes to the capture buffer of the thread that logs, if it has one.
struct ThreadSink;

impl std::io::Write for ThreadSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(buf) = &*c.borrow() {
                buf.lock().unwrap().extend_from_slice(b);
            }
        });
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything logged on this thread while the returned guard lives (use a
/// current-thread runtime, where the in-process gateway runs too).
///
/// This installs one *global* subscriber (writing to the logging thread's
/// buffer) rather than a thread-local one:
/// with only a thread-local subscriber registered, tracing-core caches a
/// callsite's interest as "never" when another test's thread hits that
/// callsite first (`Dispatchers::has_just_one`), and the capture misses the
/// gateway's lines (seen: 8 of 15 runs of this binary).
pub fn capture_logs() -> (Arc<std::sync::Mutex<Vec<u8>>>, Capture) {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| ThreadSink)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
    });
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    CAPTURE.with(|c| *c.borrow_mut() = Some(Arc::clone(&buf)));
    (buf, Capture)
}
