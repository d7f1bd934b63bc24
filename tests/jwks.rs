//! `[[issuers]] jwks_url`: keys fetched from an identity provider's JWK
//! Set, refreshed every `jwks_refresh` and on an unknown `kid`, with
//! `/readyz` waiting for the first fetch (SPEC §2, §3); and `discovery`,
//! the set's URL read from the issuer's OpenID configuration.
mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use gatehouse::state::Snapshot;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use support::process::{Gatehouse, on_ports, trusting_only};
use support::*;

const ISS: &str = "https://idp.test/";

/// An RSA key of the identity provider: signs tokens, published as a JWK.
struct IdpKey {
    kid: String,
    signing: EncodingKey,
    jwk: Value,
    /// SubjectPublicKeyInfo PEM.
    public_pem: String,
}

impl IdpKey {
    fn new(kid: &str) -> IdpKey {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let jwk = json!({
            "kty": "RSA",
            "kid": kid,
            "use": "sig",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        });
        let der = pair.as_der().unwrap();
        let spki = public.as_der().unwrap();
        IdpKey {
            kid: kid.to_string(),
            signing: EncodingKey::from_rsa_pem(
                pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec())).as_bytes(),
            )
            .unwrap(),
            jwk,
            public_pem: pem::encode(&pem::Pem::new("PUBLIC KEY", spki.as_ref().to_vec())),
        }
    }

    /// An RS256 access token for `sub` from the identity provider.
    fn token(&self, sub: &str) -> String {
        self.token_as(&self.kid, Algorithm::RS256, sub)
    }

    fn token_as(&self, kid: &str, alg: Algorithm, sub: &str) -> String {
        self.token_of(ISS, kid, alg, sub)
    }

    /// A token of issuer `iss`.
    fn token_of(&self, iss: &str, kid: &str, alg: Algorithm, sub: &str) -> String {
        let mut header = Header::new(alg);
        header.kid = Some(kid.into());
        let claims = json!({"iss": iss, "aud": "api", "sub": sub, "exp": now() + 600});
        jsonwebtoken::encode(&header, &claims, &self.signing).unwrap()
    }
}

/// The identity provider's JWKS endpoint: answers `status` with the
/// published keys, and counts the fetches.
#[derive(Clone)]
struct Idp {
    /// Where it listens (plain HTTP).
    addr: std::net::SocketAddr,
    url: String,
    published: Arc<Mutex<(u16, Vec<Value>)>>,
    fetches: Arc<AtomicUsize>,
    /// How long each answer takes.
    delay: Arc<Mutex<Duration>>,
}

impl Idp {
    async fn start(keys: &[&IdpKey]) -> Idp {
        let published = Arc::new(Mutex::new((
            200,
            keys.iter().map(|k| k.jwk.clone()).collect(),
        )));
        let fetches = Arc::new(AtomicUsize::new(0));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (p, f, d) = (
            Arc::clone(&published),
            Arc::clone(&fetches),
            Arc::clone(&delay),
        );
        let addr = serve_upstream(move |_req: Request<Incoming>| {
            let (p, f, d) = (Arc::clone(&p), Arc::clone(&f), Arc::clone(&d));
            async move {
                let wait = *d.lock().unwrap();
                tokio::time::sleep(wait).await;
                // What is published when the answer leaves.
                let (status, keys) = p.lock().unwrap().clone();
                f.fetch_add(1, Ordering::SeqCst);
                let body = json!({ "keys": keys }).to_string();
                let mut rsp = Response::new(Full::new(Bytes::from(body)));
                *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(rsp)
            }
        })
        .await;
        Idp {
            addr,
            url: format!("http://{addr}/.well-known/jwks.json"),
            published,
            fetches,
            delay,
        }
    }

    fn publish(&self, keys: &[&IdpKey]) {
        self.published.lock().unwrap().1 = keys.iter().map(|k| k.jwk.clone()).collect();
    }

    fn answer(&self, status: u16) {
        self.published.lock().unwrap().0 = status;
    }

    fn slow(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A gateway trusting the identity provider at `url`, in front of the
/// test upstream, every route needing a token.
fn config(upstream: std::net::SocketAddr, url: &str, refresh: &str) -> String {
    config_with(
        upstream,
        &format!(
            r#"
[[issuers]]
issuer = "{ISS}"
jwks_url = "{url}"
jwks_refresh = "{refresh}"
audiences = ["api"]
algorithms = ["RS256"]

[[routes]]
path_prefix = "/api"
upstream = "up"
"#
        ),
    )
}

async fn started(up: &TestUpstream, idp: &Idp, refresh: &str) -> TestGateway {
    let gw = TestGateway::start(&config(up.addr, &idp.url, refresh)).await;
    let fetched = eventually(Duration::from_secs(10), || async { gw.shared.keys_ready() });
    assert!(fetched.await, "the first JWKS fetch did not happen");
    gw
}

fn reason(r: &Reply) -> String {
    r.www_authenticate().unwrap_or_default().to_string()
}

/// A provider that moved its keys (a 301, as a CDN or a renamed realm
/// answers): the gateway follows the redirect to them.
#[tokio::test]
async fn a_jwks_url_that_redirects_is_followed() {
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    let to = idp.url.clone();
    let moved = serve_upstream(move |_req: Request<Incoming>| {
        let to = to.clone();
        async move {
            let mut rsp = Response::new(Full::new(Bytes::new()));
            *rsp.status_mut() = StatusCode::MOVED_PERMANENTLY;
            rsp.headers_mut().insert("location", to.parse().unwrap());
            Ok::<_, Infallible>(rsp)
        }
    })
    .await;
    let url = format!("http://{moved}/old/jwks.json");
    let gw = TestGateway::start(&config(up.addr, &url, "10m")).await;
    let fetched = eventually(Duration::from_secs(10), || async { gw.shared.keys_ready() });
    assert!(fetched.await, "the redirected fetch did not happen");
    let r = get_with_token(&gw.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 200);
    assert_eq!(idp.fetches(), 1);
}

#[tokio::test]
async fn tokens_signed_with_a_published_key_pass_and_others_do_not() {
    let up = TestUpstream::start().await;
    let (k1, stranger) = (IdpKey::new("k1"), IdpKey::new("k1"));
    let idp = Idp::start(&[&k1]).await;
    let gw = started(&up, &idp, "10m").await;

    let r = get_with_token(&gw.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );

    // Another key under the same kid: the signature does not check out.
    let r = get_with_token(&gw.url("/api"), &stranger.token("mallory")).await;
    assert_eq!(r.status, 401);
    assert!(reason(&r).contains("bad signature"), "{}", reason(&r));
    // The RSA key's public PEM as an HS256 secret: the key verifies RS256 only.
    let pem = &k1.public_pem;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let claims = json!({"iss": ISS, "aud": "api", "sub": "mallory", "exp": now() + 600});
    let confused =
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(pem.as_bytes())).unwrap();
    let r = get_with_token(&gw.url("/api"), &confused).await;
    assert_eq!(r.status, 401);
    assert!(
        reason(&r).contains("algorithm not allowed"),
        "{}",
        reason(&r)
    );
    // A token of this key for another issuer is not this issuer's.
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let claims =
        json!({"iss": "https://other.test/", "aud": "api", "sub": "x", "exp": now() + 600});
    let other = jsonwebtoken::encode(&header, &claims, &k1.signing).unwrap();
    let r = get_with_token(&gw.url("/api"), &other).await;
    assert_eq!(r.status, 401);
    assert!(reason(&r).contains("unknown issuer"), "{}", reason(&r));
    // gatehouse's own JWK Set does not republish the provider's keys.
    let own = get(&gw.url("/.well-known/jwks.json"), &[]).await.json();
    assert!(!own.to_string().contains("\"k1\""), "{own}");
}

#[tokio::test]
async fn a_key_rotated_in_is_fetched_on_its_first_token_at_most_once_per_cooldown() {
    let up = TestUpstream::start().await;
    let (k1, k2) = (IdpKey::new("k1"), IdpKey::new("k2"));
    let idp = Idp::start(&[&k1]).await;
    let gw = started(&up, &idp, "10m").await;
    let before = idp.fetches();

    // The provider rotates k2 in; its first token is the first gatehouse hears of it.
    idp.publish(&[&k1, &k2]);
    let r = get_with_token(&gw.url("/api"), &k2.token("bob")).await;
    assert_eq!(r.status, 200, "{}", reason(&r));
    assert_eq!(idp.fetches(), before + 1);

    // A made-up kid right after: refused without another fetch.
    let r = get_with_token(&gw.url("/api"), &k1.token_as("k9", Algorithm::RS256, "eve")).await;
    assert_eq!(r.status, 401);
    assert!(reason(&r).contains("unknown kid"), "{}", reason(&r));
    for _ in 0..20 {
        let t = k1.token_as("k9", Algorithm::RS256, "eve");
        assert_eq!(get_with_token(&gw.url("/api"), &t).await.status, 401);
    }
    assert_eq!(idp.fetches(), before + 1, "unknown kids are rate-limited");
}

#[tokio::test]
async fn a_dropped_key_is_refused_at_the_next_fetch_even_when_cached() {
    let up = TestUpstream::start().await;
    let (k1, k2) = (IdpKey::new("k1"), IdpKey::new("k2"));
    let idp = Idp::start(&[&k1, &k2]).await;
    let gw = started(&up, &idp, "1s").await;
    let token = k1.token("alice");
    // One keep-alive connection: it remembers its last token, in front of the cache.
    let mut conn = Conn::open(gw.addr).await;
    assert_eq!(conn.get_with_token("/api", &token).await.status, 200);
    let checks = gw.signature_checks();
    assert_eq!(conn.get_with_token("/api", &token).await.status, 200);
    assert_eq!(gw.signature_checks(), checks, "a cache hit");

    idp.publish(&[&k2]);
    let mut refused = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !refused && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        refused = conn.get_with_token("/api", &token).await.status == 401;
    }
    assert!(
        refused,
        "a token of a dropped key is still served from the cache"
    );
    let r = get_with_token(&gw.url("/api"), &token).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        get_with_token(&gw.url("/api"), &k2.token("bob"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn a_failing_provider_and_a_reload_keep_the_keys_fetched_before() {
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    let gw = started(&up, &idp, "1s").await;
    let token = k1.token("alice");
    assert_eq!(get_with_token(&gw.url("/api"), &token).await.status, 200);

    idp.answer(503);
    let failing_since = idp.fetches();
    let retried = eventually(Duration::from_secs(10), || async {
        idp.fetches() >= failing_since + 2
    });
    assert!(retried.await);
    let admin = gw.admin().await;
    let text = scrape(admin).await;
    let series = format!("gatehouse_jwks_keys{{issuer=\"{ISS}\"}}");
    assert_eq!(metric(&text, &series), Some(1), "{text}");
    let series = format!("gatehouse_jwks_fetch_failures{{issuer=\"{ISS}\"}}");
    assert!(metric(&text, &series).is_some_and(|n| n >= 2), "{text}");
    // Not from the cache: a new token of the same key.
    assert_eq!(
        get_with_token(&gw.url("/api"), &k1.token("bob"))
            .await
            .status,
        200
    );

    // A reload while the provider is down: the new snapshot keeps the keys.
    let snap = Snapshot::load(&gw.dir.path().join("gateway.toml")).unwrap();
    gw.shared.store_snapshot(snap);
    assert!(gw.shared.keys_ready());
    assert_eq!(
        get_with_token(&gw.url("/api"), &k1.token("carol"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn tokens_are_answered_503_while_the_first_fetch_fails() {
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    idp.answer(500);
    let gw = TestGateway::start(&config(up.addr, &idp.url, "10m")).await;
    // Not the token's fault: 503, so that the client keeps it.
    let r = get_with_token(&gw.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
    let why = r.json()["error_description"].to_string();
    assert!(why.contains("not fetched yet"), "{why}");
    assert!(!gw.shared.keys_ready());
    // A token no fetched key could ever verify is the token's fault: 401.
    let claims = json!({"iss": ISS, "aud": "api", "sub": "x", "exp": now() + 600});
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"a secret of thirty-two bytes or more"),
    )
    .unwrap();
    let r = get_with_token(&gw.url("/api"), &hs).await;
    assert_eq!(r.status, 401);
    assert!(
        reason(&r).contains("algorithm not allowed"),
        "{}",
        reason(&r)
    );
    let text = scrape(gw.admin().await).await;
    let series = "gatehouse_auth_total{outcome=\"unavailable\",reason=\"the issuer's keys are not fetched yet\"}";
    assert_eq!(metric(&text, series), Some(1), "{text}");
    // The provider recovers; the retries (1 s, 2 s, ...) pick the keys up.
    idp.answer(200);
    let ready = eventually(Duration::from_secs(10), || async { gw.shared.keys_ready() });
    assert!(ready.await);
    assert_eq!(
        get_with_token(&gw.url("/api"), &k1.token("alice"))
            .await
            .status,
        200
    );
}

/// The real binary: `/readyz` answers 503 until the JWK Set is fetched,
/// and an `https://` JWKS URL is checked against the system's roots, or
/// `SSL_CERT_FILE`'s.
#[tokio::test]
async fn readyz_waits_for_the_keys_and_https_urls_are_verified() {
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    let https_url = serve_tls(&idp).await;

    idp.answer(500);
    let dir = tempfile::tempdir().unwrap();
    // Only the test certificate: not the machine's roots.
    let env = trusting_only(dir.path(), "a");
    let gh = Gatehouse::start_with(dir.path(), &env, |listen, admin| {
        on_ports(&config(up.addr, &https_url, "10m"), listen, admin)
    })
    .await;
    let readyz = || async { get(&gh.admin_url("/readyz"), &[]).await.status };
    assert_eq!(readyz().await, 503);
    idp.answer(200);
    assert!(
        eventually(Duration::from_secs(10), || async { readyz().await == 200 }).await,
        "{}",
        gh.log()
    );
    let r = get_with_token(&gh.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 200, "{}", gh.log());

    // Trusting another certificate only: the provider's is not trusted.
    let dir = tempfile::tempdir().unwrap();
    let env = trusting_only(dir.path(), "b");
    let untrusting = Gatehouse::start_with(dir.path(), &env, |listen, admin| {
        on_ports(&config(up.addr, &https_url, "10m"), listen, admin)
    })
    .await;
    let failed = eventually(Duration::from_secs(10), || async {
        untrusting.log().contains("JWKS fetch failed")
    });
    assert!(failed.await, "{}", untrusting.log());
    assert_eq!(get(&untrusting.admin_url("/readyz"), &[]).await.status, 503);
    let r = get_with_token(&untrusting.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 503);
    // The log says why, and names no token.
    let log = untrusting.log();
    assert!(log.contains("invalid peer certificate"), "{log}");
    assert!(!log.contains(&k1.token("alice")[..40]));
}

/// Serves `idp`'s JWK Set over TLS with the test certificate `a`
/// (localhost and 127.0.0.1): its `https://localhost` URL.
async fn serve_tls(idp: &Idp) -> String {
    let https = tls_front(idp.addr, "a").await;
    format!("https://localhost:{}/.well-known/jwks.json", https.port())
}

#[tokio::test]
async fn requests_during_a_slow_first_fetch_wait_for_it() {
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    idp.slow(Duration::from_millis(700));
    let gw = TestGateway::start(&config(up.addr, &idp.url, "10m")).await;
    let r = get_with_token(&gw.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        idp.fetches(),
        1,
        "the request waited for the fetch under way"
    );
}

#[tokio::test]
async fn tokens_of_a_new_key_arriving_together_all_wait_for_one_fetch() {
    let up = TestUpstream::start().await;
    let (k1, k2) = (IdpKey::new("k1"), IdpKey::new("k2"));
    let idp = Idp::start(&[&k1]).await;
    let gw = started(&up, &idp, "10m").await;
    let before = idp.fetches();
    idp.slow(Duration::from_millis(500));
    idp.publish(&[&k1, &k2]);
    let url = gw.url("/api");
    let burst = (0..5).map(|i| {
        let (url, token) = (url.clone(), k2.token(&format!("user{i}")));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50 * i)).await;
            get_with_token(&url, &token).await.status
        })
    });
    for status in futures_util_join(burst).await {
        assert_eq!(status, 200);
    }
    assert_eq!(idp.fetches(), before + 1);
}

#[tokio::test]
async fn tokens_without_kid_are_checked_against_each_published_key() {
    let up = TestUpstream::start().await;
    let (k1, k2) = (IdpKey::new("k1"), IdpKey::new("k2"));
    let idp = Idp::start(&[&k1, &k2]).await;
    let gw = started(&up, &idp, "10m").await;
    let claims = json!({"iss": ISS, "aud": "api", "sub": "pyjwt", "exp": now() + 600});
    for key in [&k1, &k2] {
        let t =
            jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &key.signing).unwrap();
        assert_eq!(
            get_with_token(&gw.url("/api"), &t).await.status,
            200,
            "{}",
            key.kid
        );
    }
    let stranger = IdpKey::new("k3");
    let t =
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &stranger.signing).unwrap();
    let r = get_with_token(&gw.url("/api"), &t).await;
    assert_eq!(r.status, 401);
    assert!(reason(&r).contains("bad signature"), "{}", reason(&r));
}

/// Awaits every task, in order.
async fn futures_util_join<T>(tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_request_waiting_for_a_fetch_across_a_reload_gets_its_key() {
    let up = TestUpstream::start().await;
    let (k1, k2) = (IdpKey::new("k1"), IdpKey::new("k2"));
    let idp = Idp::start(&[&k1]).await;
    let gw = started(&up, &idp, "10m").await;
    idp.slow(Duration::from_millis(800));
    idp.publish(&[&k1, &k2]);
    let (url, token) = (gw.url("/api"), k2.token("bob"));
    let waiting = tokio::spawn(async move { get_with_token(&url, &token).await.status });
    // The reload lands while the request's fetch is under way.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let snap = Snapshot::load(&gw.dir.path().join("gateway.toml")).unwrap();
    gw.shared.store_snapshot(snap);
    assert_eq!(waiting.await.unwrap(), 200);
}

/// `[[issuers]] ca_file`: an `https://` JWK Set on a private CA, trusted
/// without touching the process's roots; another CA's server is not.
#[tokio::test]
async fn an_https_jwks_url_may_name_its_ca_file() {
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    let url = serve_tls(&idp).await;
    let with_ca = |url: &str, name: &str| {
        let ca = tls_dir().join(format!("{name}.cert.pem"));
        config(up.addr, url, "10m").replace(
            "jwks_refresh = \"10m\"",
            &format!("jwks_refresh = \"10m\"\nca_file = \"{}\"", ca.display()),
        )
    };
    let gw = TestGateway::start(&with_ca(&url, "a")).await;
    let fetched = eventually(Duration::from_secs(10), || async { gw.shared.keys_ready() });
    assert!(fetched.await, "the JWKS fetch over TLS did not succeed");
    let r = get_with_token(&gw.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 200);

    let before = idp.fetches();
    let gw = TestGateway::start(&with_ca(&url, "b")).await;
    // Retried after 1 s: two failed tries, and no key.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!gw.shared.keys_ready());
    assert_eq!(
        idp.fetches(),
        before,
        "no request got past the TLS handshake"
    );
    let r = get_with_token(&gw.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 503);

    let err = TestGateway::try_start(&with_ca(&idp.url, "a"))
        .await
        .err()
        .unwrap();
    assert!(err.contains("ca_file needs an https:// jwks_url"), "{err}");
}

/// An OpenID provider's configuration endpoint: answers
/// `/.well-known/openid-configuration` with `status` and `doc`, and
/// counts the reads. Its issuer is its own `http://` address.
#[derive(Clone)]
struct Oidc {
    issuer: String,
    answer: Arc<Mutex<(u16, Value)>>,
    reads: Arc<AtomicUsize>,
    /// How long each answer takes.
    delay: Arc<Mutex<Duration>>,
}

impl Oidc {
    /// A provider whose configuration names the JWK Set at `jwks_uri`.
    async fn start(jwks_uri: &str) -> Oidc {
        let answer = Arc::new(Mutex::new((200, Value::Null)));
        let reads = Arc::new(AtomicUsize::new(0));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (a, n, d) = (Arc::clone(&answer), Arc::clone(&reads), Arc::clone(&delay));
        let addr = serve_upstream(move |req: Request<Incoming>| {
            let (a, n, d) = (Arc::clone(&a), Arc::clone(&n), Arc::clone(&d));
            async move {
                assert_eq!(req.uri().path(), "/.well-known/openid-configuration");
                n.fetch_add(1, Ordering::SeqCst);
                let wait = *d.lock().unwrap();
                tokio::time::sleep(wait).await;
                let (status, doc) = a.lock().unwrap().clone();
                let mut rsp = Response::new(Full::new(Bytes::from(doc.to_string())));
                *rsp.status_mut() = StatusCode::from_u16(status).unwrap();
                Ok::<_, Infallible>(rsp)
            }
        })
        .await;
        let oidc = Oidc {
            issuer: format!("http://{addr}"),
            answer,
            reads,
            delay,
        };
        oidc.describe(&oidc.issuer.clone(), jwks_uri);
        oidc
    }

    fn describe(&self, issuer: &str, jwks_uri: &str) {
        let doc = json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "token_endpoint": format!("{issuer}/token"),
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        self.answer.lock().unwrap().1 = doc;
    }

    fn answer(&self, status: u16) {
        self.answer.lock().unwrap().0 = status;
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }

    /// A gateway that discovers this provider's keys.
    fn config(&self, upstream: std::net::SocketAddr, refresh: &str) -> String {
        config_with(
            upstream,
            &format!(
                r#"
[[issuers]]
issuer = "{}"
discovery = true
jwks_refresh = "{refresh}"
audiences = ["api"]
algorithms = ["RS256"]

[[routes]]
path_prefix = "/api"
upstream = "up"
"#,
                self.issuer
            ),
        )
    }
}

/// A gateway that has discovered `oidc`'s keys.
async fn discovered(up: &TestUpstream, oidc: &Oidc) -> TestGateway {
    let gw = TestGateway::start(&oidc.config(up.addr, "10m")).await;
    let fetched = eventually(Duration::from_secs(10), || async { gw.shared.keys_ready() });
    assert!(fetched.await, "the keys were not discovered");
    gw
}

/// A gateway that has discovered `k1` from `oidc`'s set at `idp`, which
/// is about to take `k2` too.
struct Rotation {
    _up: TestUpstream,
    k1: IdpKey,
    k2: IdpKey,
    idp: Idp,
    oidc: Oidc,
    gw: TestGateway,
}

impl Rotation {
    async fn start() -> Rotation {
        let up = TestUpstream::start().await;
        let (k1, k2) = (IdpKey::new("k1"), IdpKey::new("k2"));
        let idp = Idp::start(&[&k1]).await;
        let oidc = Oidc::start(&idp.url).await;
        let gw = discovered(&up, &oidc).await;
        Rotation {
            _up: up,
            k1,
            k2,
            idp,
            oidc,
            gw,
        }
    }
}

/// `discovery = true`: the JWK Set named by the issuer's configuration
/// (on another server here, as Google's is) verifies the issuer's tokens.
#[tokio::test]
async fn discovery_reads_the_jwks_uri_from_the_openid_configuration() {
    let up = TestUpstream::start().await;
    let (k1, stranger) = (IdpKey::new("k1"), IdpKey::new("k1"));
    let idp = Idp::start(&[&k1]).await;
    let oidc = Oidc::start(&idp.url).await;
    let gw = discovered(&up, &oidc).await;
    assert_eq!((oidc.reads(), idp.fetches()), (1, 1));

    let token = k1.token_of(&oidc.issuer, "k1", Algorithm::RS256, "alice");
    let r = get_with_token(&gw.url("/api"), &token).await;
    assert_eq!(r.status, 200, "{}", reason(&r));
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
    let forged = stranger.token_of(&oidc.issuer, "k1", Algorithm::RS256, "mallory");
    let r = get_with_token(&gw.url("/api"), &forged).await;
    assert_eq!(r.status, 401);
    // The configured issuer, not the discovery document, decides `iss`.
    let r = get_with_token(&gw.url("/api"), &k1.token("bob")).await;
    assert_eq!(r.status, 401);
    assert!(reason(&r).contains("unknown issuer"), "{}", reason(&r));
}

/// A configuration that names another issuer is not followed (OpenID
/// Discovery §4.3): its `jwks_uri` is never fetched and tokens get 503.
#[tokio::test]
async fn a_configuration_of_another_issuer_is_refused() {
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    let oidc = Oidc::start(&idp.url).await;
    oidc.describe("https://attacker.test/", &idp.url);
    let gw = TestGateway::start(&oidc.config(up.addr, "10m")).await;
    // Retried after 1 s: two reads, and no key.
    let retried = eventually(Duration::from_secs(10), || async { oidc.reads() >= 2 });
    assert!(retried.await);
    assert!(!gw.shared.keys_ready());
    assert_eq!(
        idp.fetches(),
        0,
        "the jwks_uri of another issuer was fetched"
    );
    let token = k1.token_of(&oidc.issuer, "k1", Algorithm::RS256, "alice");
    let r = get_with_token(&gw.url("/api"), &token).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
}

/// The configuration is read again before each fetch; while it cannot be
/// read, the `jwks_uri` it gave last is used, so a key rotated in is still
/// picked up.
#[tokio::test]
async fn a_failing_configuration_keeps_the_jwks_uri_it_gave_before() {
    let rot = Rotation::start().await;

    rot.oidc.answer(500);
    rot.idp.publish(&[&rot.k1, &rot.k2]);
    let (reads, fetches) = (rot.oidc.reads(), rot.idp.fetches());
    let token = rot
        .k2
        .token_of(&rot.oidc.issuer, "k2", Algorithm::RS256, "bob");
    let r = get_with_token(&rot.gw.url("/api"), &token).await;
    assert_eq!(r.status, 200, "{}", reason(&r));
    assert_eq!(
        (rot.oidc.reads(), rot.idp.fetches()),
        (reads + 1, fetches + 1)
    );

    // Moved: the next fetch follows the configuration to the new set.
    let (k3, moved) = (IdpKey::new("k3"), Idp::start(&[]).await);
    moved.publish(&[&k3]);
    rot.oidc.describe(&rot.oidc.issuer.clone(), &moved.url);
    rot.oidc.answer(200);
    tokio::time::sleep(REFETCH_COOLDOWN_AND_A_BIT).await;
    let token = k3.token_of(&rot.oidc.issuer, "k3", Algorithm::RS256, "carol");
    let r = get_with_token(&rot.gw.url("/api"), &token).await;
    assert_eq!(r.status, 200, "{}", reason(&r));
    assert_eq!(moved.fetches(), 1);
}

/// A configuration that is read and refused (another issuer here) is a
/// failed fetch that `/metrics` counts, not a reason to keep using the
/// `jwks_uri` it gave before.
#[tokio::test]
async fn a_refused_configuration_is_a_failed_fetch_not_the_fallback() {
    let rot = Rotation::start().await;

    let elsewhere = Idp::start(&[&rot.k2]).await;
    rot.oidc.describe("https://attacker.test/", &elsewhere.url);
    rot.idp.publish(&[&rot.k1, &rot.k2]);
    let fetches = rot.idp.fetches();
    let token = rot
        .k2
        .token_of(&rot.oidc.issuer, "k2", Algorithm::RS256, "bob");
    let r = get_with_token(&rot.gw.url("/api"), &token).await;
    assert_eq!(r.status, 401, "{}", reason(&r));
    assert_eq!((rot.idp.fetches(), elsewhere.fetches()), (fetches, 0));
    let text = scrape(rot.gw.admin().await).await;
    let series = format!(
        "gatehouse_jwks_fetch_failures{{issuer=\"{}\"}}",
        rot.oidc.issuer
    );
    assert_eq!(metric(&text, &series), Some(1), "{text}");
    // The keys fetched before stay in use.
    let r = get_with_token(
        &rot.gw.url("/api"),
        &rot.k1
            .token_of(&rot.oidc.issuer, "k1", Algorithm::RS256, "al"),
    )
    .await;
    assert_eq!(r.status, 200);
}

/// A reload keeps the `jwks_uri` discovered before: with the configuration
/// down, a key rotated in is still fetched after it.
#[tokio::test]
async fn a_reload_keeps_the_jwks_uri_discovered_before() {
    let rot = Rotation::start().await;

    rot.oidc.answer(500);
    rot.idp.publish(&[&rot.k1, &rot.k2]);
    let snap = Snapshot::load(&rot.gw.dir.path().join("gateway.toml")).unwrap();
    rot.gw.shared.store_snapshot(snap);
    let token = rot
        .k2
        .token_of(&rot.oidc.issuer, "k2", Algorithm::RS256, "bob");
    let r = get_with_token(&rot.gw.url("/api"), &token).await;
    assert_eq!(r.status, 200, "{}", reason(&r));
}

/// A configuration that accepts and never answers is given half of a
/// fetch's 10 s: the rest fetches the set at the `jwks_uri` it gave before.
#[tokio::test]
async fn a_configuration_that_never_answers_keeps_the_jwks_uri_it_gave_before() {
    let rot = Rotation::start().await;

    *rot.oidc.delay.lock().unwrap() = Duration::from_secs(3600);
    rot.idp.publish(&[&rot.k1, &rot.k2]);
    let fetches = rot.idp.fetches();
    let token = rot
        .k2
        .token_of(&rot.oidc.issuer, "k2", Algorithm::RS256, "bob");
    let r = get_with_token(&rot.gw.url("/api"), &token).await;
    assert_eq!(r.status, 200, "{}", reason(&r));
    assert_eq!(rot.idp.fetches(), fetches + 1);
}

/// On-demand fetches are one per `REFETCH_COOLDOWN` (10 s).
const REFETCH_COOLDOWN_AND_A_BIT: Duration = Duration::from_millis(10_200);

#[tokio::test]
async fn discovery_needs_an_issuer_and_no_jwks_url() {
    let up = TestUpstream::start().await;
    let issuer = |extra: &str| {
        config_with(
            up.addr,
            &format!("[[issuers]]\n{extra}\ndiscovery = true\nalgorithms = [\"RS256\"]\n"),
        )
    };
    let err = TestGateway::try_start(&issuer("audiences = [\"api\"]"))
        .await
        .err()
        .unwrap();
    assert!(err.contains("discovery needs an `issuer`"), "{err}");
    let both = "issuer = \"https://idp.test\"\njwks_url = \"https://idp.test/k\"";
    let err = TestGateway::try_start(&issuer(both)).await.err().unwrap();
    assert!(err.contains("not both"), "{err}");
    for (iss, why) in [
        ("idp", "is not an http:// or https:// URL"),
        // An OpenID issuer has no query or fragment (Discovery §3).
        (
            "https://idp.test/?tenant=a",
            "is not an http:// or https:// URL",
        ),
        ("https://idp.test/#a", "is not an http:// or https:// URL"),
        ("https://u:p@idp.test", "must not carry credentials"),
    ] {
        let err = TestGateway::try_start(&issuer(&format!("issuer = \"{iss}\"")))
            .await
            .err()
            .unwrap();
        assert!(err.contains(why), "{iss}: {err}");
    }
    let ca = tls_dir().join("a.cert.pem");
    let plain = format!(
        "issuer = \"http://127.0.0.1:9\"\nca_file = \"{}\"",
        ca.display()
    );
    let err = TestGateway::try_start(&issuer(&plain)).await.err().unwrap();
    assert!(err.contains("ca_file needs an https://"), "{err}");
}

/// An HTTP proxy that resolves `idp.test` (and nothing else: 403): a
/// `CONNECT` to its port `tls.port()` is a tunnel to `tls`, a `GET` in
/// absolute form for its port `plain.port()` is passed on to `plain`.
/// It records each request head it gets.
async fn http_proxy(
    tls: std::net::SocketAddr,
    plain: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let Ok(byte) = client.read_u8().await else {
                        return;
                    };
                    head.push(byte);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(head.clone());
                let tunnel = format!("CONNECT idp.test:{} HTTP/1.1\r\n", tls.port());
                let absolute = format!("GET http://idp.test:{}/", plain.port());
                if head.starts_with(&tunnel) {
                    let Ok(mut up) = tokio::net::TcpStream::connect(tls).await else {
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                } else if let Some(rest) = head.strip_prefix(&absolute) {
                    let Ok(mut up) = tokio::net::TcpStream::connect(plain).await else {
                        return;
                    };
                    // The same request in origin form.
                    let _ = up.write_all(format!("GET /{rest}").as_bytes()).await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                } else {
                    let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                }
            });
        }
    });
    (addr, heads)
}

/// The real binary: with `HTTPS_PROXY` set, the JWK Set is fetched through
/// the proxy's tunnel (the proxy resolves the name, its credentials go in
/// `Proxy-Authorization`, TLS is end to end); `NO_PROXY` goes direct, and a
/// proxy that refuses is a failed fetch that says so.
#[tokio::test]
async fn jwks_fetches_go_through_the_environments_https_proxy() {
    use base64::engine::general_purpose::STANDARD;
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    // A certificate for idp.test, a name only the proxy resolves.
    let https = tls_front(idp.addr, "idp").await;
    let (proxy, heads) = http_proxy(https, idp.addr).await;
    let url = |host: &str| format!("https://{host}:{}/.well-known/jwks.json", https.port());
    let start = |host: &'static str, extra: &'static [(&'static str, &'static str)]| {
        let (up, url) = (up.addr, url(host));
        async move {
            let dir = tempfile::tempdir().unwrap();
            let mut env: Vec<(&str, String)> = trusting_only(dir.path(), "idp")
                .into_iter()
                .map(|(k, v)| (k, v.display().to_string()))
                .collect();
            env.push(("HTTPS_PROXY", format!("http://gw:s%40cret@{proxy}")));
            env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
            let gh = Gatehouse::start_with(dir.path(), &env, |listen, admin| {
                on_ports(&config(up, &url, "10m"), listen, admin)
            })
            .await;
            (gh, dir)
        }
    };

    let (gh, _dir) = start("idp.test", &[]).await;
    let ready = eventually(Duration::from_secs(10), || async {
        get(&gh.admin_url("/readyz"), &[]).await.status == 200
    });
    assert!(ready.await, "{}", gh.log());
    let r = get_with_token(&gh.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 200, "{}", gh.log());
    let head = heads.lock().unwrap()[0].clone();
    let basic = STANDARD.encode("gw:s@cret");
    assert!(
        head.contains(&format!("Proxy-Authorization: Basic {basic}\r\n")),
        "{head}"
    );
    assert!(!gh.log().contains("cret"), "{}", gh.log());
    assert!(!gh.log().contains(&basic), "{}", gh.log());

    // NO_PROXY names the provider: straight to idp.test, which does not resolve.
    let asked = heads.lock().unwrap().len();
    let (direct, _dir) = start("idp.test", &[("NO_PROXY", "localhost,.test")]).await;
    let failed = eventually(Duration::from_secs(15), || async {
        direct.log().contains("JWKS fetch failed")
    });
    assert!(failed.await, "{}", direct.log());
    assert_eq!(
        heads.lock().unwrap().len(),
        asked,
        "NO_PROXY went through the proxy"
    );

    // A proxy that refuses the tunnel: a failed fetch, and the log says why.
    let (refused, _dir) = start("other.test", &[]).await;
    let failed = eventually(Duration::from_secs(10), || async {
        refused
            .log()
            .contains("answered `HTTP/1.1 403 Forbidden` to CONNECT other.test")
    });
    assert!(failed.await, "{}", refused.log());
    assert_eq!(get(&refused.admin_url("/readyz"), &[]).await.status, 503);
}

/// The real binary: an `http://` JWK Set URL is asked of `HTTP_PROXY` in
/// absolute form, with the proxy's credentials (proxies commonly allow
/// `CONNECT` to port 443 only).
#[tokio::test]
async fn an_http_jwks_url_is_asked_of_the_proxy_in_absolute_form() {
    use base64::engine::general_purpose::STANDARD;
    let up = TestUpstream::start().await;
    let k1 = IdpKey::new("k1");
    let idp = Idp::start(&[&k1]).await;
    let plain = idp.addr;
    let (proxy, heads) = http_proxy(plain, plain).await;
    let url = format!("http://idp.test:{}/.well-known/jwks.json", plain.port());
    let dir = tempfile::tempdir().unwrap();
    let env = [("HTTP_PROXY", format!("http://gw:pw@{proxy}"))];
    let gh = Gatehouse::start_with(dir.path(), &env, |listen, admin| {
        on_ports(&config(up.addr, &url, "10m"), listen, admin)
    })
    .await;
    let ready = eventually(Duration::from_secs(10), || async {
        get(&gh.admin_url("/readyz"), &[]).await.status == 200
    });
    assert!(ready.await, "{}", gh.log());
    let r = get_with_token(&gh.url("/api"), &k1.token("alice")).await;
    assert_eq!(r.status, 200, "{}", gh.log());
    let head = heads.lock().unwrap()[0].clone();
    assert!(
        head.starts_with(&format!("GET {url} HTTP/1.1\r\n")),
        "{head}"
    );
    let basic = STANDARD.encode("gw:pw");
    assert!(
        head.contains(&format!("proxy-authorization: Basic {basic}\r\n")),
        "{head}"
    );
}
