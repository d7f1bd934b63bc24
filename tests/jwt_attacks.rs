//! RFC 8725 attacks on the proxy path: every forged, confused or stale token
//! is a 401 `invalid_token` that never reaches the upstream, and the gateway
//! serves the next good request. Good tokens of every algorithm, and the
//! tokens other apps mint (PyJWT / python-jose), are the positive controls.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::*;

const INVALID_TOKEN: &str =
    r#"Bearer realm="gatehouse", error="invalid_token", error_description=""#;

/// `config_with`'s issuer for tokens without `iss` over all four keys, plus
/// an IdP with an audience, and one route in front of the upstream.
const EXTRA: &str = r#"
[[issuers]]
issuer = "https://idp.example/"
audiences = ["api"]
keys = ["rs", "es"]

[[routes]]
path_prefix = "/"
upstream = "up"
"#;

struct Env {
    up: TestUpstream,
    gw: TestGateway,
}

async fn gateway() -> Env {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, EXTRA)).await;
    Env { up, gw }
}

impl Env {
    /// 401 `invalid_token`, the upstream not reached, and the next good
    /// request still served. Returns how many signature checks the refused
    /// request cost.
    async fn assert_refused(&self, token: &str, what: &str) -> u64 {
        let before = self.up.hits();
        let checks = self.gw.signature_checks();
        let r = get_with_token(&self.gw.url("/api/x"), token).await;
        let checks = self.gw.signature_checks() - checks;
        assert_eq!(r.status, 401, "{what}: {}", body(&r));
        let www = r.www_authenticate().unwrap_or_default();
        assert!(www.starts_with(INVALID_TOKEN), "{what}: {www}");
        assert_eq!(r.json()["error"], "invalid_token", "{what}");
        assert_eq!(self.up.hits(), before, "{what}: reached the upstream");
        self.assert_still_serves().await;
        checks
    }

    /// Like [`Env::assert_refused`], with the exact `error_description`.
    async fn assert_refused_because(&self, token: &str, why: &str) {
        let before = self.up.hits();
        let r = get_with_token(&self.gw.url("/api/x"), token).await;
        assert_eq!(r.status, 401, "{why}: {}", body(&r));
        assert_eq!(r.json()["error_description"], why);
        assert_eq!(
            r.www_authenticate(),
            Some(format!("{INVALID_TOKEN}{why}\"").as_str())
        );
        assert_eq!(self.up.hits(), before, "{why}: reached the upstream");
        self.assert_still_serves().await;
    }

    async fn assert_still_serves(&self) {
        let good = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
        let r = get_with_token(&self.gw.url("/api/still-up"), &good).await;
        assert_eq!(r.status, 200, "body: {}", body(&r));
    }

    async fn assert_accepted(&self, token: &str, sub: &str) -> Reply {
        let r = get_with_token(&self.gw.url("/api/x"), token).await;
        assert_eq!(r.status, 200, "body: {}", body(&r));
        assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some(sub));
        r
    }
}

fn body(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn b64_json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

/// A validly signed HS256 token (the gateway's own secret) with `header` as
/// its JOSE header: anything refused is refused for the header alone.
fn hs_with_header(header: Value) -> String {
    hs256_raw(&header, &claims("mallory"), HS_SECRET.as_bytes())
}

fn good_hs() -> String {
    sign(Algorithm::HS256, Some("hs"), &claims("alice"))
}

// === positive controls ===

#[tokio::test]
async fn good_tokens_of_every_algorithm_are_accepted() {
    let env = gateway().await;
    for (alg, kid) in [
        (Algorithm::HS256, "hs"),
        (Algorithm::RS256, "rs"),
        (Algorithm::ES256, "es"),
        (Algorithm::EdDSA, "ed"),
    ] {
        env.assert_accepted(&sign(alg, Some(kid), &claims("alice")), "alice")
            .await;
        env.assert_accepted(&sign(alg, None, &claims("bob")), "bob")
            .await;
    }
    let idp =
        json!({ "sub": "carol", "exp": now() + 600, "iss": "https://idp.example/", "aud": "api" });
    env.assert_accepted(&sign(Algorithm::RS256, Some("rs"), &idp), "carol")
        .await;
    env.assert_accepted(&sign(Algorithm::ES256, None, &idp), "carol")
        .await;
}

/// What PyJWT (`jwt.encode(claims, SECRET, algorithm="HS256")`) and
/// python-jose produce: no `kid`, no `iss`/`aud`/`type`, a `role` claim.
fn pyjwt_token(role: &str) -> String {
    let header = json!({ "alg": "HS256", "typ": "JWT" });
    let claims = json!({
        "sub": "42",
        "email": "alice@example.com",
        "role": role,
        "exp": now() + 600,
    });
    hs256_raw(&header, &claims, HS_SECRET.as_bytes())
}

#[tokio::test]
async fn pyjwt_style_token_is_accepted_with_identity_headers() {
    let env = gateway().await;
    let r = env.assert_accepted(&pyjwt_token("admin"), "42").await;
    assert_eq!(
        r.upstream_header("x-auth-email").as_deref(),
        Some("alice@example.com")
    );
    // The default roles claim is `roles`: a `role` claim is not a role.
    assert_eq!(r.upstream_header("x-auth-roles"), None);
}

#[tokio::test]
async fn pyjwt_style_role_claim_works_with_roles_claim_role() {
    let up = TestUpstream::start().await;
    let extra = r#"
[identity]
roles_claim = "role"

[[routes]]
path_prefix = "/admin/"
upstream = "up"
roles_any = ["admin"]

[[routes]]
path_prefix = "/root/"
upstream = "up"
roles_any = ["superuser"]
"#;
    let gw = TestGateway::start(&config_with(up.addr, extra)).await;
    let token = pyjwt_token("admin");
    let r = get_with_token(&gw.url("/admin/x"), &token).await;
    assert_eq!(r.status, 200, "body: {}", body(&r));
    assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some("42"));
    assert_eq!(
        r.upstream_header("x-auth-email").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(r.upstream_header("x-auth-roles").as_deref(), Some("admin"));
    let r = get_with_token(&gw.url("/root/x"), &token).await;
    assert_eq!(r.status, 403, "body: {}", body(&r));
    let r = get_with_token(&gw.url("/admin/x"), &pyjwt_token("user")).await;
    assert_eq!(r.status, 403, "body: {}", body(&r));
    assert_eq!(up.hits(), 1);
}

// === alg: none, stripped and edited tokens ===

#[tokio::test]
async fn alg_none_in_any_casing_is_refused() {
    let env = gateway().await;
    let payload = b64_json(&claims("mallory"));
    for alg in ["none", "None", "NONE", "nOnE"] {
        for kid in [None, Some("hs")] {
            let mut header = json!({ "alg": alg, "typ": "JWT" });
            if let Some(kid) = kid {
                header["kid"] = kid.into();
            }
            let unsigned = format!("{}.{payload}", b64_json(&header));
            for sig in ["", "Z2FyYmFnZQ", &b64(&[0u8; 32])] {
                let token = format!("{unsigned}.{sig}");
                let what = format!("alg {alg} kid {kid:?} sig {sig:?}");
                let checks = env.assert_refused(&token, &what).await;
                assert_eq!(checks, 0, "{what}: reached a signature check");
            }
        }
    }
}

#[tokio::test]
async fn stripped_signature_is_refused() {
    let env = gateway().await;
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::EdDSA] {
        let token = sign(alg, None, &claims("alice"));
        let (unsigned, _sig) = token.rsplit_once('.').unwrap();
        env.assert_refused(&format!("{unsigned}."), &format!("{alg:?} h.p."))
            .await;
        env.assert_refused(unsigned, &format!("{alg:?} h.p")).await;
    }
}

#[tokio::test]
async fn payload_edited_after_signing_is_refused() {
    let env = gateway().await;
    let original = json!({ "sub": "alice", "roles": ["user"], "exp": now() + 600 });
    let edits = [
        json!({ "sub": "admin", "roles": ["user"], "exp": now() + 600 }),
        json!({ "sub": "alice", "roles": ["admin"], "exp": now() + 600 }),
        json!({ "sub": "alice", "roles": ["user"], "exp": now() + 86_400 }),
    ];
    for (alg, kid) in [
        (Algorithm::HS256, "hs"),
        (Algorithm::RS256, "rs"),
        (Algorithm::ES256, "es"),
        (Algorithm::EdDSA, "ed"),
    ] {
        let token = sign(alg, Some(kid), &original);
        let parts: Vec<&str> = token.split('.').collect();
        for edit in &edits {
            let forged = format!("{}.{}.{}", parts[0], b64_json(edit), parts[2]);
            env.assert_refused_because(&forged, "bad signature").await;
        }
        // The original is fine.
        env.assert_accepted(&token, "alice").await;
    }
}

// === key confusion ===

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_refused() {
    let env = gateway().await;
    let k = keys();
    let pem = k.rsa_public.as_bytes();
    let pem_trimmed = k.rsa_public.trim().as_bytes();
    let der = ::pem::parse(pem).unwrap().into_contents();
    for secret in [pem, pem_trimmed, &der[..]] {
        // Naming the RSA key: the key pins RS256, the header cannot change it.
        let header = json!({ "alg": "HS256", "typ": "JWT", "kid": "rs" });
        let token = hs256_raw(&header, &claims("mallory"), secret);
        env.assert_refused_because(&token, "algorithm not allowed")
            .await;
        // Without kid: checked with the HS256 key's own secret.
        let header = json!({ "alg": "HS256", "typ": "JWT" });
        let token = hs256_raw(&header, &claims("mallory"), secret);
        env.assert_refused_because(&token, "bad signature").await;
    }
    // The same with the Ed25519 and P-256 public keys.
    for (kid, pem) in [("ed", &k.ed_public), ("es", &k.ec_public)] {
        let header = json!({ "alg": "HS256", "typ": "JWT", "kid": kid });
        let token = hs256_raw(&header, &claims("mallory"), pem.as_bytes());
        env.assert_refused_because(&token, "algorithm not allowed")
            .await;
    }
}

#[tokio::test]
async fn kid_naming_a_key_of_another_algorithm_is_refused() {
    let env = gateway().await;
    // Validly signed HS256, but naming the RSA key.
    let token = hs_with_header(json!({ "alg": "HS256", "kid": "rs" }));
    env.assert_refused_because(&token, "algorithm not allowed")
        .await;
    // Validly signed RS256 / ES256 / EdDSA, each naming a key of another family.
    for (alg, kid) in [
        (Algorithm::RS256, "hs"),
        (Algorithm::RS256, "es"),
        (Algorithm::ES256, "rs"),
        (Algorithm::EdDSA, "hs"),
        (Algorithm::PS256, "rs"),
    ] {
        let token = sign(alg, Some(kid), &claims("mallory"));
        env.assert_refused_because(&token, "algorithm not allowed")
            .await;
    }
}

// === headers that would make us fetch or trust a key ===

#[tokio::test]
async fn jku_x5u_and_jwk_headers_are_refused_and_never_followed() {
    let env = gateway().await;
    // Something to be fetched from: nobody may connect to it.
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", bait.local_addr().unwrap());
    let connects = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&connects);
    let bait_task = tokio::spawn(async move {
        while bait.accept().await.is_ok() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });

    let (attacker_jwk, attacker_token) = attacker_es256_with_embedded_jwk(&url);
    let why = "jku, x5u and jwk headers are not accepted";
    for header in [
        json!({ "alg": "HS256", "kid": "hs", "jku": url }),
        json!({ "alg": "HS256", "jku": url }),
        json!({ "alg": "HS256", "kid": "hs", "x5u": url }),
        json!({ "alg": "HS256", "kid": "hs", "jwk": attacker_jwk }),
    ] {
        env.assert_refused_because(&hs_with_header(header), why)
            .await;
    }
    // The real attack: signed with the attacker's key, which the header carries.
    env.assert_refused(&attacker_token, "attacker jwk + jku")
        .await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        connects.load(Ordering::SeqCst),
        0,
        "the gateway fetched {url}"
    );
    bait_task.abort();
}

/// A fresh P-256 key (not one the gateway knows): its public JWK, and an
/// ES256 token signed with it whose header embeds that JWK and points `jku`
/// at `jku`.
fn attacker_es256_with_embedded_jwk(jku: &str) -> (Value, String) {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    // Uncompressed point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    let jwk = json!({
        "kty": "EC",
        "crv": "P-256",
        "x": b64(&point[1..33]),
        "y": b64(&point[33..65]),
    });
    let header = json!({ "alg": "ES256", "typ": "JWT", "kid": "es", "jwk": jwk, "jku": jku });
    let input = format!("{}.{}", b64_json(&header), b64_json(&claims("mallory")));
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    (jwk, format!("{input}.{}", b64(sig.as_ref())))
}

#[tokio::test]
async fn unknown_crit_header_is_refused() {
    let env = gateway().await;
    for crit in [
        json!(["exp"]),
        json!(["b64"]),
        json!(["x-unknown"]),
        json!([]),
    ] {
        let token = hs_with_header(json!({ "alg": "HS256", "kid": "hs", "crit": crit }));
        env.assert_refused_because(&token, "unsupported crit header")
            .await;
    }
}

#[tokio::test]
async fn refresh_token_typ_header_is_refused() {
    let env = gateway().await;
    for typ in ["rt+jwt", "RT+JWT", "application/rt+jwt"] {
        let token = hs_with_header(json!({ "alg": "HS256", "kid": "hs", "typ": typ }));
        env.assert_refused_because(&token, "refresh tokens are not accepted here")
            .await;
    }
    // An access token's `typ` is fine.
    let token = hs256_raw(
        &json!({ "alg": "HS256", "kid": "hs", "typ": "at+jwt" }),
        &claims("alice"),
        HS_SECRET.as_bytes(),
    );
    env.assert_accepted(&token, "alice").await;
}

// === odd kids ===

#[tokio::test]
async fn odd_kid_values_are_refused() {
    let env = gateway().await;
    for kid in [
        "../../etc/passwd",
        "",
        " hs",
        "hs ",
        "HS",
        "hs\u{0}",
        "\u{0}",
        "hs\u{0}rs",
        "ключ",
        "h\u{0455}", // Cyrillic dze, looks like "hs"
        "hs' OR '1'='1",
    ] {
        let token = hs_with_header(json!({ "alg": "HS256", "kid": kid }));
        env.assert_refused_because(&token, "unknown kid").await;
    }
    // A kid that is not a string at all.
    for kid in [json!(null), json!(1), json!(["hs"]), json!({ "id": "hs" })] {
        let header = json!({ "alg": "HS256", "kid": kid });
        let token = hs256_raw(&header, &claims("mallory"), HS_SECRET.as_bytes());
        if kid.is_null() {
            // `"kid": null` is the same as no kid: the HS256 key; good signature.
            env.assert_accepted(&token, "mallory").await;
        } else {
            env.assert_refused(&token, &format!("kid {kid}")).await;
        }
    }
}

#[tokio::test]
async fn ten_kilobyte_kid_is_refused() {
    let env = gateway().await;
    let token = hs_with_header(json!({ "alg": "HS256", "kid": "k".repeat(10 * 1024) }));
    let checks = env.assert_refused(&token, "10 KB kid").await;
    assert_eq!(checks, 0, "a 10 KB kid reached a signature check");
}

// === time, issuer, audience ===

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused() {
    let env = gateway().await;
    let t = now();
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::EdDSA] {
        let expired = json!({ "sub": "alice", "exp": t - 1, "iat": t - 601 });
        env.assert_refused_because(&sign(alg, None, &expired), "token expired")
            .await;
        let early = json!({ "sub": "alice", "exp": t + 1200, "nbf": t + 600 });
        env.assert_refused_because(&sign(alg, None, &early), "token not yet valid")
            .await;
    }
    // Non-numeric times are not read as "no limit".
    for c in [
        json!({ "sub": "alice", "exp": "9999999999" }),
        json!({ "sub": "alice", "exp": now() + 600, "nbf": "later" }),
        json!({ "sub": "alice" }),
    ] {
        env.assert_refused(&sign(Algorithm::HS256, Some("hs"), &c), &c.to_string())
            .await;
    }
}

#[tokio::test]
async fn wrong_issuer_and_audience_are_refused() {
    let env = gateway().await;
    let with = |iss: Value, aud: Value| json!({ "sub": "alice", "exp": now() + 600, "iss": iss, "aud": aud });
    let rs = |c: &Value| sign(Algorithm::RS256, Some("rs"), c);
    env.assert_accepted(
        &rs(&with(json!("https://idp.example/"), json!("api"))),
        "alice",
    )
    .await;
    for iss in [
        json!("https://idp.example"),
        json!("https://IDP.example/"),
        json!("https://evil.example/"),
        json!(""),
    ] {
        env.assert_refused_because(&rs(&with(iss, json!("api"))), "unknown issuer")
            .await;
    }
    env.assert_refused_because(
        &rs(&with(json!(["https://idp.example/"]), json!("api"))),
        "wrong issuer",
    )
    .await;
    for aud in [json!("web"), json!(["web"]), json!("API"), json!([])] {
        let c = with(json!("https://idp.example/"), aud);
        env.assert_refused_because(&rs(&c), "wrong audience").await;
    }
    // The IdP's audience rule cannot be sidestepped by leaving `aud` out.
    let no_aud = json!({ "sub": "alice", "exp": now() + 600, "iss": "https://idp.example/" });
    env.assert_refused_because(&rs(&no_aud), "missing aud")
        .await;
}

// === size and garbage ===

#[tokio::test]
async fn huge_token_is_refused_and_the_gateway_keeps_serving() {
    let env = gateway().await;
    // Over max_header_bytes (16 KiB): 431 from the header limit, or 401.
    let header = json!({ "alg": "HS256", "kid": "hs" });
    let huge = json!({ "sub": "alice", "exp": now() + 600, "pad": "x".repeat(100 * 1024) });
    let token = hs256_raw(&header, &huge, HS_SECRET.as_bytes());
    let req = format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\r\n");
    let rsp = raw_unchecked(env.gw.addr, req.as_bytes()).await;
    assert!(
        rsp.starts_with("HTTP/1.1 431") || rsp.starts_with("HTTP/1.1 401"),
        "got: {rsp:.300}"
    );
    // Under the header limit but over any sane token size: 401.
    let big = json!({ "sub": "alice", "exp": now() + 600, "pad": "x".repeat(9 * 1024) });
    let token = hs256_raw(&header, &big, HS_SECRET.as_bytes());
    env.assert_refused(&token, "9 KB token").await;
    assert_eq!(
        env.up.hits(),
        1,
        "only assert_still_serves reached the upstream"
    );
    env.assert_still_serves().await;
}

#[tokio::test]
async fn token_that_is_not_base64_json_is_refused() {
    let env = gateway().await;
    let good = good_hs();
    let (h, rest) = good.split_once('.').unwrap();
    let (p, s) = rest.split_once('.').unwrap();
    for token in [
        "notatoken".to_string(),
        "a.b".to_string(),
        "a.b.c".to_string(),
        "a.b.c.d".to_string(),
        "...".to_string(),
        "abc.def.ghi".to_string(),
        // JSON, but not objects.
        format!("{}.{}.{}", b64(b"[]"), b64(b"[]"), b64(b"[]")),
        format!("{}.{}.{s}", b64(b"\"HS256\""), b64(b"42")),
        // A good header and signature around a payload that is not JSON.
        format!("{h}.{}.{s}", b64(b"not json")),
        // Standard base64 (with + and /) instead of base64url.
        format!("{h}.{}.{s}", p.replace('-', "+").replace('_', "/") + "+/"),
        // Padding.
        format!("{good}=="),
        // Parts swapped.
        format!("{p}.{h}.{s}"),
        // Two tokens glued together.
        format!("{good}.{good}"),
    ] {
        env.assert_refused(&token, &token).await;
    }
    assert_eq!(
        env.up.hits(),
        13,
        "only assert_still_serves reached the upstream"
    );
}

/// Writes `bytes` (the server may stop reading and close early) and returns
/// whatever it answered.
async fn raw_unchecked(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
