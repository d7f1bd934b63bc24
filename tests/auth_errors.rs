//! SPEC §4's error table, one test per row: status, the exact
//! `WWW-Authenticate` value, and the JSON body's `error`; and after each
//! failure, the gateway still serves a good request.
mod support;

use std::net::SocketAddr;

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::*;

const REALM: &str = r#"Bearer realm="gatehouse""#;
const INVALID_REQUEST: &str = r#"Bearer realm="gatehouse", error="invalid_request""#;
const INSUFFICIENT_SCOPE: &str = r#"Bearer realm="gatehouse", error="insufficient_scope""#;

fn invalid_token(why: &str) -> String {
    format!(r#"Bearer realm="gatehouse", error="invalid_token", error_description="{why}""#)
}

/// One route per authorization rule, all in front of the test upstream.
const ROUTES: &str = r#"
[[routes]]
path_prefix = "/api/"
upstream = "up"

[[routes]]
path_prefix = "/admin/"
upstream = "up"
roles_any = ["admin", "ops"]

[[routes]]
path_prefix = "/scoped/"
upstream = "up"
scopes_all = ["read", "write"]

[[routes]]
path_prefix = "/acme/"
upstream = "up"
claims = { tenant = "acme" }

[[routes]]
path_prefix = "/maybe/"
upstream = "up"
auth = "optional"

[[routes]]
path_prefix = "/public/"
upstream = "up"
auth = "none"
"#;

/// A gateway in front of a test upstream, and a token it accepts.
struct Env {
    up: TestUpstream,
    gw: TestGateway,
    good: String,
}

async fn gateway() -> Env {
    let up = TestUpstream::start().await;
    Env::start(up, ROUTES).await
}

fn hs(claims: &Value) -> String {
    sign(Algorithm::HS256, Some("hs"), claims)
}

/// `claims(sub)` plus `extra`'s fields.
fn claims_with(sub: &str, extra: Value) -> Value {
    let mut c = claims(sub);
    for (k, v) in extra.as_object().expect("an object") {
        c[k] = v.clone();
    }
    c
}

fn body(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Status, `WWW-Authenticate` (exactly, or absent), and a JSON error body.
#[track_caller]
fn assert_error(r: &Reply, status: u16, www: Option<&str>, error: &str) {
    assert_eq!(r.status, status, "body: {}", body(r));
    assert_eq!(r.www_authenticate(), www, "body: {}", body(r));
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let json = r.json();
    assert_eq!(json["error"], error, "body: {json}");
    assert!(
        json["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "body: {json}"
    );
}

impl Env {
    /// `config_with(up, extra)`: tokens without `iss` are accepted.
    async fn start(up: TestUpstream, extra: &str) -> Env {
        let gw = TestGateway::start(&config_with(up.addr, extra)).await;
        let good = hs(&claims("alice"));
        Env { up, gw, good }
    }

    /// A good token on a protected route is still forwarded.
    async fn assert_still_serves(&self) {
        let r = get_with_token(&self.gw.url("/api/still-up"), &self.good).await;
        assert_eq!(r.status, 200, "body: {}", body(&r));
        assert_eq!(
            r.upstream_header("x-auth-subject").as_deref(),
            Some("alice")
        );
    }

    /// Sends `token` to a protected route and expects 401 `invalid_token`
    /// with `why` as its description, without reaching the upstream.
    async fn assert_invalid_token(&self, token: &str, why: &str) {
        let before = self.up.hits();
        let r = get_with_token(&self.gw.url("/api/x"), token).await;
        assert_error(&r, 401, Some(&invalid_token(why)), "invalid_token");
        assert_eq!(r.json()["error_description"], why);
        assert_eq!(
            self.up.hits(),
            before,
            "a refused token reached the upstream"
        );
        self.assert_still_serves().await;
    }

    /// 403 with the bare `insufficient_scope` challenge, not forwarded.
    async fn assert_forbidden(&self, path: &str, token: &str) {
        let before = self.up.hits();
        let r = get_with_token(&self.gw.url(path), token).await;
        assert_error(&r, 403, Some(INSUFFICIENT_SCOPE), "insufficient_scope");
        assert_eq!(
            self.up.hits(),
            before,
            "a forbidden request reached the upstream"
        );
        self.assert_still_serves().await;
    }

    async fn assert_allowed(&self, path: &str, token: &str) {
        let r = get_with_token(&self.gw.url(path), token).await;
        assert_eq!(r.status, 200, "{path}: {}", body(&r));
    }
}

// === 401 without a token ===

#[tokio::test]
async fn missing_token_on_protected_route_is_401_with_bare_realm() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    let r = get(&gw.url("/api/x"), &[]).await;
    assert_error(&r, 401, Some(REALM), "invalid_token");
    // Another scheme is no bearer token either (RFC 6750 §3: no `error` attribute).
    let r = get(
        &gw.url("/api/x"),
        &[("authorization", "Basic dXNlcjpwYXNz")],
    )
    .await;
    assert_error(&r, 401, Some(REALM), "invalid_token");
    // The query string is never a source of tokens.
    let token = hs(&claims("alice"));
    let r = get(&gw.url(&format!("/api/x?access_token={token}")), &[]).await;
    assert_error(&r, 401, Some(REALM), "invalid_token");
    assert_eq!(up.hits(), 0);
    env.assert_still_serves().await;
}

// === 400 malformed Authorization ===

#[tokio::test]
async fn malformed_authorization_header_is_400_invalid_request() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    for value in [
        "Bearer",
        "Bearer   ",
        "Bearer a b",
        "Bearer a,b",
        "Bearer ===",
        "bearer tok\"en",
    ] {
        let r = get(&gw.url("/api/x"), &[("authorization", value)]).await;
        assert_eq!(r.status, 400, "{value:?}: {}", body(&r));
        assert_error(&r, 400, Some(INVALID_REQUEST), "invalid_request");
    }
    assert_eq!(up.hits(), 0);
    env.assert_still_serves().await;
}

#[tokio::test]
async fn two_authorization_headers_are_400_invalid_request() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    let good = format!("Bearer {}", hs(&claims("alice")));
    let r = get(
        &gw.url("/api/x"),
        &[("authorization", &good), ("authorization", &good)],
    )
    .await;
    assert_error(&r, 400, Some(INVALID_REQUEST), "invalid_request");
    assert_eq!(up.hits(), 0);
    env.assert_still_serves().await;
}

// === 401 invalid_token ===

#[tokio::test]
async fn bad_signature_is_401_invalid_token() {
    let env = gateway().await;
    let header = json!({ "alg": "HS256", "typ": "JWT", "kid": "hs" });
    let forged = hs256_raw(
        &header,
        &claims("alice"),
        b"not-the-secret-not-the-secret-00",
    );
    env.assert_invalid_token(&forged, "bad signature").await;
}

#[tokio::test]
async fn expired_token_is_401_invalid_token() {
    let env = gateway().await;
    let expired = hs(&json!({ "sub": "alice", "exp": now() - 60, "iat": now() - 660 }));
    env.assert_invalid_token(&expired, "token expired").await;
}

#[tokio::test]
async fn not_yet_valid_token_is_401_invalid_token() {
    let env = gateway().await;
    let early = hs(&claims_with("alice", json!({ "nbf": now() + 600 })));
    env.assert_invalid_token(&early, "token not yet valid")
        .await;
}

#[tokio::test]
async fn token_without_exp_is_401_invalid_token() {
    let env = gateway().await;
    let forever = hs(&json!({ "sub": "alice", "iat": now() }));
    env.assert_invalid_token(&forever, "missing exp").await;
}

#[tokio::test]
async fn unknown_kid_is_401_invalid_token() {
    let env = gateway().await;
    let header = json!({ "alg": "HS256", "typ": "JWT", "kid": "retired-2019" });
    let token = hs256_raw(&header, &claims("alice"), HS_SECRET.as_bytes());
    env.assert_invalid_token(&token, "unknown kid").await;
}

#[tokio::test]
async fn refresh_type_claim_is_401_invalid_token() {
    let env = gateway().await;
    let gw = &env.gw;
    let refresh = hs(&claims_with("alice", json!({ "type": "refresh" })));
    env.assert_invalid_token(&refresh, "not an access token")
        .await;
    // `type: access` is what an access token says: accepted.
    let access = hs(&claims_with("alice", json!({ "type": "access" })));
    let r = get_with_token(&gw.url("/api/x"), &access).await;
    assert_eq!(r.status, 200, "body: {}", body(&r));
}

#[tokio::test]
async fn token_from_an_unknown_issuer_is_401_invalid_token() {
    let env = gateway().await;
    let token = hs(&claims_with(
        "alice",
        json!({ "iss": "https://evil.example/" }),
    ));
    env.assert_invalid_token(&token, "unknown issuer").await;
}

// === issuers: iss picks the keys, aud is checked ===

/// The gateway's own issuer ("gatehouse", audience "api", signed by `hs`) and
/// one IdP whose tokens are signed by `rs` for audience "api".
fn issuers_config(up: SocketAddr) -> String {
    format!(
        r#"
[server]
admin_listen = ""

[tokens]
leeway = "0s"

[[keys]]
id = "hs"
algorithm = "HS256"
secret_file = "hs.secret"
sign = true

[[keys]]
id = "rs"
algorithm = "RS256"
public_key = "rs.pub.pem"

[[issuers]]
issuer = "https://idp.example/"
audiences = ["api"]
keys = ["rs"]

[[upstreams]]
name = "up"
targets = ["http://{up}"]
timeout = "2s"
{ROUTES}
"#
    )
}

async fn issuers_gateway() -> Env {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&issuers_config(up.addr)).await;
    let good = own(json!("api"));
    Env { up, gw, good }
}

fn idp(aud: Value) -> String {
    let c = claims_with(
        "idp-user",
        json!({ "iss": "https://idp.example/", "aud": aud }),
    );
    sign(Algorithm::RS256, Some("rs"), &c)
}

fn own(aud: Value) -> String {
    hs(&claims_with(
        "alice",
        json!({ "iss": "gatehouse", "aud": aud }),
    ))
}

#[tokio::test]
async fn tokens_from_each_configured_issuer_are_accepted() {
    let env = issuers_gateway().await;
    let gw = &env.gw;
    for (token, sub) in [
        (idp(json!("api")), "idp-user"),
        (idp(json!(["web", "api"])), "idp-user"),
        (own(json!("api")), "alice"),
    ] {
        let r = get_with_token(&gw.url("/api/x"), &token).await;
        assert_eq!(r.status, 200, "body: {}", body(&r));
        assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some(sub));
    }
}

#[tokio::test]
async fn wrong_audience_is_401_invalid_token() {
    let env = issuers_gateway().await;
    env.assert_invalid_token(&idp(json!("web")), "wrong audience")
        .await;
    env.assert_invalid_token(&own(json!("web")), "wrong audience")
        .await;
    env.assert_invalid_token(&idp(json!([])), "wrong audience")
        .await;
}

#[tokio::test]
async fn token_without_aud_is_refused_where_an_audience_is_required() {
    let env = issuers_gateway().await;
    let no_aud = claims_with("idp-user", json!({ "iss": "https://idp.example/" }));
    let token = sign(Algorithm::RS256, Some("rs"), &no_aud);
    env.assert_invalid_token(&token, "missing aud").await;
    let no_aud = claims_with("alice", json!({ "iss": "gatehouse" }));
    env.assert_invalid_token(&hs(&no_aud), "missing aud").await;
}

#[tokio::test]
async fn wrong_issuer_is_401_invalid_token() {
    let env = issuers_gateway().await;
    // An `iss` no issuer is configured for (here without the trailing slash).
    let c = claims_with(
        "idp-user",
        json!({ "iss": "https://idp.example", "aud": "api" }),
    );
    let token = sign(Algorithm::RS256, Some("rs"), &c);
    env.assert_invalid_token(&token, "unknown issuer").await;
    // No issuer without `iss` is configured here.
    let token = hs(&claims("alice"));
    env.assert_invalid_token(&token, "unknown issuer").await;
    // A non-string `iss`.
    let token = hs(&claims_with("alice", json!({ "iss": 42, "aud": "api" })));
    env.assert_invalid_token(&token, "wrong issuer").await;
}

#[tokio::test]
async fn an_issuers_key_cannot_sign_for_another_issuer() {
    let env = issuers_gateway().await;
    // The IdP's key claiming to be the gateway...
    let c = claims_with("mallory", json!({ "iss": "gatehouse", "aud": "api" }));
    let token = sign(Algorithm::RS256, Some("rs"), &c);
    env.assert_invalid_token(&token, "unknown kid").await;
    // ...and the gateway's key claiming to be the IdP.
    let c = claims_with(
        "mallory",
        json!({ "iss": "https://idp.example/", "aud": "api" }),
    );
    env.assert_invalid_token(&hs(&c), "unknown kid").await;
}

// === 403 insufficient_scope ===

#[tokio::test]
async fn missing_role_is_403_insufficient_scope() {
    let env = gateway().await;
    for roles in [json!(["user"]), json!([]), json!("user"), json!(null)] {
        let t = hs(&claims_with("alice", json!({ "roles": roles })));
        env.assert_forbidden("/admin/x", &t).await;
    }
    env.assert_forbidden("/admin/x", &hs(&claims("alice")))
        .await;
    // Role names are exact: no case folding, no prefix match.
    let t = hs(&claims_with(
        "alice",
        json!({ "roles": ["Admin", "admins"] }),
    ));
    env.assert_forbidden("/admin/x", &t).await;
    for roles in [json!(["user", "ops"]), json!("admin"), json!("user,admin")] {
        let t = hs(&claims_with("alice", json!({ "roles": roles })));
        env.assert_allowed("/admin/x", &t).await;
    }
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope() {
    let env = gateway().await;
    for scope in [json!("read"), json!("write"), json!(""), json!("readwrite")] {
        let t = hs(&claims_with("alice", json!({ "scope": scope })));
        env.assert_forbidden("/scoped/x", &t).await;
    }
    env.assert_forbidden("/scoped/x", &hs(&claims("alice")))
        .await;
    for scope in [json!("read write"), json!("write admin read")] {
        let t = hs(&claims_with("alice", json!({ "scope": scope })));
        env.assert_allowed("/scoped/x", &t).await;
    }
}

#[tokio::test]
async fn claim_mismatch_is_403_insufficient_scope() {
    let env = gateway().await;
    for tenant in [json!("acme2"), json!("ACME"), json!(["other"]), json!(1)] {
        let t = hs(&claims_with("alice", json!({ "tenant": tenant })));
        env.assert_forbidden("/acme/x", &t).await;
    }
    env.assert_forbidden("/acme/x", &hs(&claims("alice"))).await;
    let t = hs(&claims_with("alice", json!({ "tenant": "acme" })));
    env.assert_allowed("/acme/x", &t).await;
}

// === auth = "optional" / "none" ===

#[tokio::test]
async fn optional_auth_without_token_forwards_without_identity() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    let r = get(
        &gw.url("/maybe/x"),
        &[("x-auth-subject", "forged"), ("x-auth-roles", "admin")],
    )
    .await;
    assert_eq!(r.status, 200, "body: {}", body(&r));
    assert_eq!(r.upstream_header("x-auth-subject"), None);
    assert_eq!(r.upstream_header("x-auth-roles"), None);
    assert_eq!(r.upstream_header("x-auth-claims"), None);
    assert_eq!(up.hits(), 1);
    // With a good token the caller is identified.
    let t = hs(&claims_with("alice", json!({ "roles": ["user"] })));
    let r = get_with_token(&gw.url("/maybe/x"), &t).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("alice")
    );
}

#[tokio::test]
async fn optional_auth_with_invalid_token_is_401() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    let expired = hs(&json!({ "sub": "alice", "exp": now() - 60 }));
    let r = get_with_token(&gw.url("/maybe/x"), &expired).await;
    assert_error(
        &r,
        401,
        Some(&invalid_token("token expired")),
        "invalid_token",
    );
    let r = get(&gw.url("/maybe/x"), &[("authorization", "Bearer a b")]).await;
    assert_error(&r, 400, Some(INVALID_REQUEST), "invalid_request");
    assert_eq!(up.hits(), 0);
    env.assert_still_serves().await;
}

#[tokio::test]
async fn auth_none_ignores_tokens() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    let checks = gw.signature_checks();
    let good = hs(&claims_with("alice", json!({ "roles": ["admin"] })));
    let expired = hs(&json!({ "sub": "alice", "exp": now() - 60 }));
    for auth in [
        format!("Bearer {good}"),
        format!("Bearer {expired}"),
        "Bearer not.a.token".to_string(),
        "Bearer a b".to_string(),
    ] {
        let r = get(
            &gw.url("/public/x"),
            &[("authorization", &auth), ("x-auth-subject", "forged")],
        )
        .await;
        assert_eq!(r.status, 200, "{auth:?}: {}", body(&r));
        // Public routes carry no identity, and forged identity headers are stripped.
        assert_eq!(r.upstream_header("x-auth-subject"), None);
        assert_eq!(r.upstream_header("x-auth-roles"), None);
    }
    assert_eq!(up.hits(), 4);
    assert_eq!(
        gw.signature_checks(),
        checks,
        "auth = none verified a token"
    );
}

// === 404, 502, 504 ===

#[tokio::test]
async fn no_route_is_404_json() {
    let up = TestUpstream::start().await;
    let routes = "[[routes]]\npath_prefix = \"/api/\"\nupstream = \"up\"\n";
    let env = Env::start(up, routes).await;
    let (up, gw) = (&env.up, &env.gw);
    let t = hs(&claims("alice"));
    for path in ["/", "/other", "/apix", "/API/x"] {
        let r = get_with_token(&gw.url(path), &t).await;
        assert_error(&r, 404, None, "not_found");
    }
    assert_eq!(up.hits(), 0);
    env.assert_still_serves().await;
}

/// A port nobody listens on (bound, then released).
async fn dead_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

#[tokio::test]
async fn upstream_connection_refused_is_502() {
    let up = TestUpstream::start().await;
    let dead = dead_port().await;
    let extra = format!(
        r#"
[[upstreams]]
name = "dead"
targets = ["http://{dead}"]
connect_timeout = "2s"

[[routes]]
path_prefix = "/dead/"
upstream = "dead"

{ROUTES}"#
    );
    let env = Env::start(up, &extra).await;
    let gw = &env.gw;
    let t = hs(&claims("alice"));
    for _ in 0..3 {
        let r = get_with_token(&gw.url("/dead/x"), &t).await;
        assert_error(&r, 502, None, "bad_gateway");
    }
    env.assert_still_serves().await;
}

#[tokio::test]
async fn upstream_slower_than_timeout_is_504() {
    let up = TestUpstream::start().await;
    let extra = format!(
        r#"
[[upstreams]]
name = "sluggish"
targets = ["http://{}"]
timeout = "300ms"

[[routes]]
path_prefix = "/slow/"
upstream = "sluggish"

{ROUTES}"#,
        up.addr
    );
    let env = Env::start(up, &extra).await;
    let gw = &env.gw;
    let t = hs(&claims("alice"));
    let r = get_with_token(&gw.url("/slow/5000"), &t).await;
    assert_error(&r, 504, None, "gateway_timeout");
    // The same upstream within its timeout answers.
    let r = get_with_token(&gw.url("/slow/0"), &t).await;
    assert_eq!(r.status, 200, "body: {}", body(&r));
    env.assert_still_serves().await;

    // On one keep-alive connection, after fast requests spread over more
    // than the timeout (each moved the connection's upstream timer later,
    // and the first deadline it was armed for passes in between): still
    // 504, at the timeout, neither earlier nor much later.
    let mut conn = Conn::open(gw.addr).await;
    for _ in 0..4 {
        let r = conn.get_with_token("/slow/0", &t).await;
        assert_eq!(r.status, 200, "body: {}", body(&r));
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    let started = std::time::Instant::now();
    let r = conn.get_with_token("/slow/5000", &t).await;
    assert_error(&r, 504, None, "gateway_timeout");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_millis(280) && took < std::time::Duration::from_secs(3),
        "{took:?}"
    );
}

// === framing and header limits ===

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    let token = hs(&claims("alice"));
    let heads = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ];
    for path in ["/api/x", "/public/x"] {
        for framing in heads {
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n\
                 {framing}Connection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            );
            let rsp = raw(gw.addr, req.as_bytes()).await;
            assert!(rsp.starts_with("HTTP/1.1 400"), "{path} {framing:?}: {rsp}");
            assert!(rsp.contains(r#""error":"invalid_request""#), "{rsp}");
        }
    }
    assert_eq!(up.hits(), 0, "an ambiguous request reached the upstream");
    env.assert_still_serves().await;
}

const SMUGGLED: &str = "POST /public/smuggled HTTP/1.1\r\nHost: gw\r\n\
    Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

#[tokio::test]
async fn content_length_with_transfer_encoding_later_on_a_keep_alive_connection_is_400() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    let first = "GET /public/first HTTP/1.1\r\nHost: gw\r\n\r\n";
    let rsp = raw(gw.addr, format!("{first}{SMUGGLED}").as_bytes()).await;
    let ok = rsp.find("HTTP/1.1 200").expect(&rsp);
    let refused = rsp.find("HTTP/1.1 400").expect(&rsp);
    assert!(ok < refused, "{rsp}");
    assert_eq!(up.hits(), 1, "only the first request is forwarded");
    env.assert_still_serves().await;
}

#[tokio::test]
async fn bodies_that_look_like_smuggled_requests_are_forwarded() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    // The ambiguous head is body data here, framed by Content-Length or by
    // chunks: nothing to refuse.
    let by_length = format!(
        "POST /public/a HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    let chunked = format!(
        "POST /public/b HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{SMUGGLED}\r\n0\r\n\r\n",
        SMUGGLED.len()
    );
    let last = "GET /public/c HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
    let rsp = raw(gw.addr, format!("{by_length}{chunked}{last}").as_bytes()).await;
    assert_eq!(rsp.matches("HTTP/1.1 200").count(), 3, "{rsp}");
    assert!(!rsp.contains("HTTP/1.1 400"), "{rsp}");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn headers_larger_than_max_header_bytes_are_431() {
    let env = gateway().await;
    let (up, gw) = (&env.up, &env.gw);
    let huge = "a".repeat(100 * 1024);
    let req = format!("GET /api/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {huge}\r\n\r\n");
    let rsp = raw_unchecked(gw.addr, req.as_bytes()).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "got: {rsp:.200}");
    // Many small headers adding up.
    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("x-filler-{i}"), "b".repeat(1000)))
        .collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (&**k, &**v)).collect();
    let rsp = raw_unchecked(gw.addr, &head_with(&many)).await;
    assert!(rsp.starts_with("HTTP/1.1 431"), "got: {rsp:.200}");
    assert_eq!(up.hits(), 0);
    env.assert_still_serves().await;
}

fn head_with(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut s = String::from("GET /public/x HTTP/1.1\r\nHost: gw\r\n");
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Like `raw`, but the server may stop reading (and reset) before the whole
/// request is written: what it answered before that is still returned.
async fn raw_unchecked(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
